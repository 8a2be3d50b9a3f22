#!/usr/bin/env bash
# Run one command as N cooperating JAX processes on this machine (a coordinator on 127.0.0.1).
# Each process gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, which
# var_jax.cluster.initialize_distributed() reads; with N = 1 the command simply runs.
set -euo pipefail
set -m  # each process in its own process group, so stopping it also stops what it started

usage() {
  cat <<'EOF'
Usage: launch/local.sh [options] [--] COMMAND [ARGS...]

Run COMMAND as N JAX processes on this machine, joined through a coordinator on 127.0.0.1.

Options:
  -n, --processes N        number of processes (default 1)
  -p, --port PORT          coordinator port (default: a free port)
      --cpu-devices K      CPU only: K fake devices per process (JAX_PLATFORMS=cpu); for trying
                           multi-host code on a laptop
      --gpus-per-process G give each process its own G GPUs (CUDA_VISIBLE_DEVICES); default: all
                           processes see all GPUs
      --log-dir DIR        also write process i's output to DIR/process_i.log
  -h, --help               this message

Process 0's output goes to the terminal; the others' to --log-dir (or nowhere).  If one process
fails, the others are stopped and its exit status is returned.

Examples:
  launch/local.sh -n 2 --cpu-devices 4 -- var-jax sample --ckpt runs/d16 --num 1000 --npz s.npz
  launch/local.sh -n 2 --gpus-per-process 4 -- python my_script.py
EOF
}

die() {
  echo "launch/local.sh: $*" >&2
  echo "Run launch/local.sh --help for the options." >&2
  exit 2
}

positive() {  # NAME VALUE: VALUE must be a whole number >= 1
  [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a whole number >= 1, got '$2'"
}

processes=1
port=""
cpu_devices=""
gpus_per_process=""
log_dir=""
while (($#)); do
  case "$1" in
    -n|--processes) (($# >= 2)) || die "$1 needs a value"; positive "$1" "$2"; processes=$2; shift 2 ;;
    -p|--port) (($# >= 2)) || die "$1 needs a value"; positive "$1" "$2"; port=$2; shift 2 ;;
    --cpu-devices) (($# >= 2)) || die "$1 needs a value"; positive "$1" "$2"; cpu_devices=$2; shift 2 ;;
    --gpus-per-process) (($# >= 2)) || die "$1 needs a value"; positive "$1" "$2"; gpus_per_process=$2; shift 2 ;;
    --log-dir) (($# >= 2)) || die "$1 needs a value"; log_dir=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option '$1'" ;;
    *) break ;;
  esac
done
(($#)) || die "no COMMAND given (e.g. launch/local.sh -n 2 -- var-jax sample ...)"
if [[ -n "$cpu_devices" && -n "$gpus_per_process" ]]; then
  die "--cpu-devices and --gpus-per-process exclude each other"
fi

if [[ -n "$cpu_devices" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$cpu_devices"
fi
if ((processes == 1)) && [[ -z "$gpus_per_process" ]]; then
  exec "$@"
fi

if [[ -z "$port" ]]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
if [[ -n "$log_dir" ]]; then
  mkdir -p "$log_dir"
fi

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill -- "-$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < processes; i++)); do
  env_vars=("JAX_COORDINATOR_ADDRESS=127.0.0.1:$port" "JAX_NUM_PROCESSES=$processes" "JAX_PROCESS_ID=$i")
  if [[ -n "$gpus_per_process" ]]; then
    env_vars+=("CUDA_VISIBLE_DEVICES=$(seq -s, $((i * gpus_per_process)) $(((i + 1) * gpus_per_process - 1)))")
  fi
  log=/dev/null
  [[ -n "$log_dir" ]] && log="$log_dir/process_$i.log"
  if ((i == 0)); then
    if [[ -n "$log_dir" ]]; then
      env "${env_vars[@]}" "$@" > >(tee "$log") 2>&1 &
    else
      env "${env_vars[@]}" "$@" &
    fi
  else
    env "${env_vars[@]}" "$@" >"$log" 2>&1 &
  fi
  pids+=("$!")
done

status=0
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501)); then  # no `wait -n -p` before bash 5.1: in order
  for pid in "${pids[@]}"; do
    if ! wait "$pid"; then
      code=$?
      ((status != 0)) || status=$code
    fi
  done
  exit "$status"
fi
# Wait for every process; the first failure stops the rest.
live=("${pids[@]}")
while ((${#live[@]})); do
  finished=""
  if wait -n -p finished "${live[@]}"; then code=0; else code=$?; fi
  [[ -n "$finished" ]] || break  # nothing left to wait for
  rest=()
  for pid in "${live[@]}"; do
    [[ "$pid" == "$finished" ]] || rest+=("$pid")
  done
  live=("${rest[@]}")
  if ((code != 0 && status == 0)); then
    status=$code
    echo "launch/local.sh: a process (pid $finished) exited with status $code; stopping the others" >&2
    stop_all
  fi
done
exit "$status"
