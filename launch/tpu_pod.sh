#!/usr/bin/env bash
# Create a Cloud TPU VM slice (or several, for multi-slice), install this repository on every
# worker, run one command on all workers at once, and tear the slice down.  Every worker runs the
# same program; var_jax.cluster.initialize_distributed() finds the others through the TPU metadata.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh ACTION --name NAME --zone ZONE [options] [-- COMMAND [ARGS...]]

Actions:
  create    create the slice (--slices N > 1: N slices as one queued resource) and wait until ready
  install   copy this repository's working tree (tracked and new files, not ignored ones) to every
            worker and install it with jax[tpu] in ~/var-jax/.venv (Python 3.11 through uv)
  run       run COMMAND in ~/var-jax on every worker of every slice at once (--worker=all)
  delete    delete the slice(s)
  all       create, install, run, then delete (the slice is deleted even when a step fails)

Options:
  --name NAME         TPU VM name, or name prefix of the slices (default: $TPU_NAME)
  --zone ZONE         e.g. us-west4-a (default: $TPU_ZONE)
  --project PROJECT   Google Cloud project (default: gcloud's configured project)
  --type TYPE         accelerator type for create, e.g. v5litepod-16, v5p-32 (default: $TPU_TYPE)
  --runtime VERSION   TPU VM software version (default from the type: v5litepod → v2-alpha-tpuv5-lite,
                      v5p → v2-alpha-tpuv5, v6e → v2-alpha-tpuv6e, v4 → tpu-ubuntu2204-base)
  --slices N          number of slices (default 1); the mesh's dcn_data should then be N
  --spot              use Spot capacity
  --jax-version V     pin jax[tpu]==V at install (default: the newest that setup.py allows)
  -h, --help          this message

Examples:
  launch/tpu_pod.sh all --name var-d16 --zone us-west4-a --type v5litepod-32 -- \
      var-jax train --config configs/var_d16.py --workdir /gcs/BUCKET/runs/d16
  launch/tpu_pod.sh create --name var-d30 --zone us-east5-a --type v5p-128
  launch/tpu_pod.sh run --name var-d30 --zone us-east5-a -- var-jax sample --ckpt /gcs/BUCKET/d30 ...

The work directory must be one path that every worker sees: a bucket mounted with gcsfuse at the
same place on each worker (e.g. `gcsfuse --implicit-dirs BUCKET /gcs/BUCKET`), or a Filestore share.
EOF
}

die() {
  echo "launch/tpu_pod.sh: $*" >&2
  echo "Run launch/tpu_pod.sh --help for the options." >&2
  exit 2
}

(($#)) || { usage >&2; exit 2; }
action=$1
shift
case "$action" in
  create|install|run|delete|all) ;;
  -h|--help) usage; exit 0 ;;
  *) die "unknown action '$action'; use create, install, run, delete or all" ;;
esac

name=${TPU_NAME:-}
zone=${TPU_ZONE:-}
type=${TPU_TYPE:-}
project=""
runtime=""
slices=1
spot=0
jax_version=""
while (($#)); do
  case "$1" in
    --name|--zone|--project|--type|--runtime|--slices|--jax-version)
      (($# >= 2)) || die "$1 needs a value"
      case "$1" in
        --name) name=$2 ;;
        --zone) zone=$2 ;;
        --project) project=$2 ;;
        --type) type=$2 ;;
        --runtime) runtime=$2 ;;
        --slices) slices=$2 ;;
        --jax-version) jax_version=$2 ;;
      esac
      shift 2 ;;
    --spot) spot=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the command to run goes after --)" ;;
  esac
done
command_args=("$@")

[[ -n "$name" ]] || die "--name is required (or set TPU_NAME)"
[[ "$name" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name must be lower-case letters, digits and '-', got '$name'"
[[ -n "$zone" ]] || die "--zone is required (or set TPU_ZONE)"
[[ "$slices" =~ ^[1-9][0-9]*$ ]] || die "--slices must be a whole number >= 1, got '$slices'"
if [[ "$action" == run || "$action" == all ]]; then
  ((${#command_args[@]})) || die "$action needs a COMMAND after -- (e.g. -- var-jax train --config ...)"
fi
if [[ "$action" == create || "$action" == all ]]; then
  [[ -n "$type" ]] || die "--type is required to create a slice (e.g. v5litepod-16, v5p-32)"
  if [[ -z "$runtime" ]]; then
    case "$type" in
      v5litepod-*|v5e-*) runtime=v2-alpha-tpuv5-lite ;;
      v5p-*) runtime=v2-alpha-tpuv5 ;;
      v6e-*) runtime=v2-alpha-tpuv6e ;;
      v4-*) runtime=tpu-ubuntu2204-base ;;
      *) die "no default --runtime for --type $type; give one (see 'gcloud compute tpus versions list')" ;;
    esac
  fi
fi
command -v gcloud >/dev/null || die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"

where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")

nodes=()  # the TPU VMs to reach: the slice itself, or NAME-0 ... NAME-(N-1) for a multi-slice
if ((slices == 1)); then
  nodes=("$name")
else
  for ((i = 0; i < slices; i++)); do nodes+=("$name-$i"); done
fi

create() {
  local extra=()
  ((spot)) && extra+=(--spot)
  if ((slices == 1)); then
    gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type="$type" --version="$runtime" \
      ${extra[@]+"${extra[@]}"}
    return
  fi
  gcloud compute tpus queued-resources create "$name" "${where[@]}" --accelerator-type="$type" \
    --runtime-version="$runtime" --node-count="$slices" --node-prefix="$name" ${extra[@]+"${extra[@]}"}
  local state="" waited=0
  while [[ "$state" != ACTIVE ]]; do
    state=$(gcloud compute tpus queued-resources describe "$name" "${where[@]}" --format='value(state.state)')
    case "$state" in
      FAILED|SUSPENDED) echo "launch/tpu_pod.sh: the queued resource $name is $state" >&2; return 1 ;;
      ACTIVE) ;;
      *) echo "waiting for $name ($state, ${waited}s)"; sleep 30; waited=$((waited + 30)) ;;
    esac
  done
}

on_all_workers() {  # COMMAND_STRING: run it on every worker of every node, at once; fail if any fails
  local pids=() node status=0
  for node in "${nodes[@]}"; do
    gcloud compute tpus tpu-vm ssh "$node" "${where[@]}" --worker=all --command="$1" &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
  done
  return "$status"
}

install() {
  local repo tarball jax_spec="jax[tpu]"
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  [[ -n "$jax_version" ]] && jax_spec="jax[tpu]==$jax_version"
  tarball=$(mktemp "${TMPDIR:-/tmp}/var-jax.XXXXXX.tar.gz")
  # The working tree as git sees it: tracked and new files, nothing ignored (no .venv, no outputs).
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do if [[ -e "$f" ]]; then printf '%s\0' "$f"; fi; done |
    tar --null -czf "$tarball" -T -)
  local node
  for node in "${nodes[@]}"; do
    gcloud compute tpus tpu-vm scp "$tarball" "$node:var-jax.tar.gz" "${where[@]}" --worker=all
  done
  rm -f "$tarball"
  local steps=(
    "rm -rf \$HOME/var-jax" "mkdir \$HOME/var-jax" "tar -xzf \$HOME/var-jax.tar.gz -C \$HOME/var-jax"
    "cd \$HOME/var-jax" "python3 -m pip install --user --quiet uv"
    "\$HOME/.local/bin/uv venv --quiet --python 3.11 .venv"
    "\$HOME/.local/bin/uv pip install --quiet --python .venv/bin/python -e . '$jax_spec'")
  local joined
  printf -v joined ' && %s' "${steps[@]}"
  on_all_workers "${joined# && }"
}

run() {
  local quoted
  printf -v quoted '%q ' "${command_args[@]}"
  on_all_workers "cd \$HOME/var-jax && PATH=\$HOME/var-jax/.venv/bin:\$PATH $quoted"
}

delete() {
  if ((slices == 1)); then
    gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  else
    gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  fi
}

case "$action" in
  create) create ;;
  install) install ;;
  run) run ;;
  delete) delete ;;
  all)
    trap 'echo "launch/tpu_pod.sh: deleting $name" >&2; delete' EXIT
    create
    install
    run ;;
esac
