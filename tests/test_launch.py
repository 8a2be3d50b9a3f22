"""The launchers in launch/: argument checking, the gcloud / srun commands they issue (against
recording stand-ins on PATH), and a real two-process run through launch/local.sh."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = ["local.sh", "tpu_pod.sh", "slurm_gpu.sbatch"]

# A stand-in for gcloud: records each call (one line, arguments separated by '|'), says the queued
# resource is ACTIVE, and fails the ssh that runs the user's command when FAIL_RUN is set.
FAKE_GCLOUD = r"""#!/usr/bin/env bash
(IFS='|'; echo "$*") >> "$GCLOUD_LOG"
case "$*" in
  *"queued-resources describe"*) echo ACTIVE ;;
  *"tpu-vm scp"*) cp "$5" "$GCLOUD_LOG.tar.gz" ;;  # keep what would be copied to the workers
  *"tpu-vm ssh"*"var-jax train"*) [[ -n "${FAIL_RUN:-}" ]] && exit 5 ;;
esac
exit 0
"""
FAKE_SRUN = r"""#!/usr/bin/env bash
(IFS='|'; echo "srun|$*") >> "$SRUN_LOG"
"""


def _stand_in(directory: pathlib.Path, name: str, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)


def _run(args, env=None, cwd=None, timeout=120):
    return subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd,
                          timeout=timeout)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_pass_shellcheck(script):
    assert _run(["bash", "-n", str(LAUNCH / script)]).returncode == 0
    assert os.access(LAUNCH / script, os.X_OK), f"{script} is not executable"
    usage = _run(["bash", str(LAUNCH / script), "--help"])
    assert usage.returncode == 0 and "Usage:" in usage.stdout
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    check = _run(["shellcheck", str(LAUNCH / script)])
    assert check.returncode == 0, check.stdout


# -- TPU pods ---------------------------------------------------------------------------------------
@pytest.fixture
def gcloud(tmp_path):
    """PATH and log for the recording gcloud; → (env, function reading the calls)."""
    _stand_in(tmp_path / "bin", "gcloud", FAKE_GCLOUD)
    log = tmp_path / "gcloud.log"
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "GCLOUD_LOG": str(log), "TPU_NAME": "",
           "TPU_ZONE": "", "TPU_TYPE": "", "TMPDIR": str(tmp_path)}
    return env, lambda: [line.split("|") for line in log.read_text().splitlines()] if log.exists() else []


def log_path(env) -> str:
    return env["GCLOUD_LOG"] + ".tar.gz"


def test_tpu_pod_all_creates_installs_runs_everywhere_and_deletes(gcloud):
    env, calls = gcloud
    proc = _run([str(LAUNCH / "tpu_pod.sh"), "all", "--name", "var-test", "--zone", "us-west4-a", "--type",
                 "v5litepod-16", "--", "var-jax", "train", "--config", "configs/var_d16.py",
                 "--workdir", "gs://b/run one"], env=env)
    assert proc.returncode == 0, proc.stderr
    log = calls()
    verbs = [" ".join(c[:4]) for c in log]
    assert verbs == ["compute tpus tpu-vm create", "compute tpus tpu-vm scp", "compute tpus tpu-vm ssh",
                     "compute tpus tpu-vm ssh", "compute tpus tpu-vm delete"]
    create, scp, install, run, delete = log
    assert create[4] == "var-test" and "--accelerator-type=v5litepod-16" in create
    assert "--version=v2-alpha-tpuv5-lite" in create and "--zone=us-west4-a" in create
    assert "--worker=all" in scp and scp[5] == "var-test:var-jax.tar.gz"
    with tarfile.open(log_path(env)) as tar:  # the repository as git sees it, without ignored files
        names = set(tar.getnames())
    assert {"setup.py", "var_jax/parallel.py", "launch/tpu_pod.sh"} <= names
    assert not any(n.startswith((".venv", ".git/")) for n in names)
    assert "--worker=all" in install and any("uv pip install" in a and "'jax[tpu]'" in a for a in install)
    command = next(a for a in run if a.startswith("--command="))
    assert "--worker=all" in run
    # the user's arguments reach the workers quoted: the space in the work directory survives
    assert "var-jax train --config configs/var_d16.py --workdir gs://b/run\\ one" in command
    assert delete[4] == "var-test" and "--quiet" in delete


def test_tpu_pod_all_deletes_the_slice_when_the_run_fails(gcloud):
    env, calls = gcloud
    proc = _run([str(LAUNCH / "tpu_pod.sh"), "all", "--name", "var-test", "--zone", "z", "--type", "v5p-32",
                 "--", "var-jax", "train"], env={**env, "FAIL_RUN": "1"})
    assert proc.returncode == 5  # the failing step's status, not the clean-up's
    assert calls()[-1][:5] == ["compute", "tpus", "tpu-vm", "delete", "var-test"]
    assert "--version=v2-alpha-tpuv5" in calls()[0]


def test_tpu_pod_multislice_uses_a_queued_resource_and_every_slice(gcloud):
    env, calls = gcloud
    base = ["--name", "ms", "--zone", "z", "--slices", "2"]
    assert _run([str(LAUNCH / "tpu_pod.sh"), "create", *base, "--type", "v5p-64", "--spot"], env=env).returncode == 0
    assert _run([str(LAUNCH / "tpu_pod.sh"), "run", *base, "--", "var-jax", "train"], env=env).returncode == 0
    assert _run([str(LAUNCH / "tpu_pod.sh"), "delete", *base], env=env).returncode == 0
    create, describe, *runs, delete = calls()
    assert create[:5] == ["compute", "tpus", "queued-resources", "create", "ms"]
    assert "--node-count=2" in create and "--node-prefix=ms" in create and "--spot" in create
    assert describe[3] == "describe"
    assert sorted(r[4] for r in runs) == ["ms-0", "ms-1"] and all("--worker=all" in r for r in runs)
    assert delete[:4] == ["compute", "tpus", "queued-resources", "delete"] and "--force" in delete


@pytest.mark.parametrize("args, message", [
    (["launch"], "unknown action 'launch'"),
    (["run", "--zone", "z", "--", "x"], "--name is required"),
    (["run", "--name", "n", "--", "x"], "--zone is required"),
    (["run", "--name", "n", "--zone", "z"], "run needs a COMMAND after --"),
    (["create", "--name", "n", "--zone", "z"], "--type is required"),
    (["create", "--name", "n", "--zone", "z", "--type", "v9-8"], "no default --runtime for --type v9-8"),
    (["create", "--name", "Bad_Name", "--zone", "z", "--type", "v5p-8"], "--name must be lower-case"),
    (["delete", "--name", "n", "--zone", "z", "--slices", "0"], "--slices must be a whole number"),
])
def test_tpu_pod_rejects_bad_arguments_before_calling_gcloud(gcloud, args, message):
    env, calls = gcloud
    proc = _run([str(LAUNCH / "tpu_pod.sh"), *args], env=env)
    assert proc.returncode == 2 and message in proc.stderr
    assert calls() == []


# -- SLURM ------------------------------------------------------------------------------------------
def test_slurm_script_runs_the_command_in_every_task_with_the_venv(tmp_path):
    _stand_in(tmp_path / "bin", "srun", FAKE_SRUN)
    venv = tmp_path / "venv"
    _stand_in(venv / "bin", "python", "#!/bin/sh\n")
    log = tmp_path / "srun.log"
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "SRUN_LOG": str(log), "VAR_JAX_VENV": str(venv)}
    script = str(LAUNCH / "slurm_gpu.sbatch")

    outside = _run([script, "var-jax", "train"], env={**env, "SLURM_JOB_ID": ""})
    assert outside.returncode == 2 and "not inside a SLURM job" in outside.stderr
    bare = _run([script], env={**env, "SLURM_JOB_ID": "42"})
    assert bare.returncode == 2 and "no COMMAND given" in bare.stderr
    no_venv = _run([script, "x"], env={**env, "SLURM_JOB_ID": "42", "VAR_JAX_VENV": str(tmp_path / "none")})
    assert no_venv.returncode == 2 and "no virtual environment" in no_venv.stderr
    assert not log.exists()

    ok = _run([script, "var-jax", "train", "--workdir", "a b"], env={**env, "SLURM_JOB_ID": "42",
                                                                     "SLURM_SUBMIT_DIR": str(tmp_path)})
    assert ok.returncode == 0, ok.stderr
    assert log.read_text().splitlines() == ["srun|--kill-on-bad-exit=1|var-jax|train|--workdir|a b"]
    directives = [line for line in (LAUNCH / "slurm_gpu.sbatch").read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --nodes=2" in directives and "#SBATCH --gpus-per-node=8" in directives


# -- one machine, several processes ----------------------------------------------------------------
def test_local_launcher_joins_two_processes(tmp_path):
    script = ("from var_jax.cluster import initialize_distributed; mode = initialize_distributed(); import jax; "
              "print('joined', mode, jax.process_index(), jax.process_count(), jax.device_count())")
    env = {"PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = _run([str(LAUNCH / "local.sh"), "-n", "2", "--cpu-devices", "2", "--log-dir", str(tmp_path), "--",
                 sys.executable, "-c", script], env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "joined env 0 2 4" in proc.stdout
    assert "joined env 1 2 4" in (tmp_path / "process_1.log").read_text()


def test_local_launcher_stops_the_others_when_one_fails():
    fail_second = 'if [ "$JAX_PROCESS_ID" = 1 ]; then exit 3; fi; sleep 60'
    proc = _run([str(LAUNCH / "local.sh"), "-n", "2", "--", "sh", "-c", fail_second], timeout=30)
    assert proc.returncode == 3 and "exited with status 3; stopping the others" in proc.stderr
    bad = _run([str(LAUNCH / "local.sh"), "-n", "two", "--", "true"])
    assert bad.returncode == 2 and "-n must be a whole number >= 1, got 'two'" in bad.stderr
    assert _run([str(LAUNCH / "local.sh"), "-n", "2"]).returncode == 2  # no command
