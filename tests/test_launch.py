"""launch/tpu_vm.sh and launch/gpu.sh: the commands they print and run.

The scripts run under bash with fake `gcloud`, `ssh`, `python` and `python3`
first on PATH, which record their arguments; a printed line is split into words
by bash itself, and a remote command string is run by bash the way a worker's
shell would run it, so quoting is checked end to end.
"""

import os
import pathlib
import stat
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = REPO / "launch" / "tpu_vm.sh"
GPU = REPO / "launch" / "gpu.sh"

# A roar_jax command with arguments that need quoting on the way to a worker.
USER_CMD = ["python", "-m", "roar_jax.main",
            "--config=configs/imagenet_resnet50.py", "--workdir=gs://b/w x",
            "--config.roar.thresholds=(0.1, 0.5, 0.9)", "--mode=roar",
            "it's", '"double"', "$HOME", "a;b&&c", "*", ""]
TPU_BASE = ["--name", "roar-v4", "--zone", "us-central2-b",
            "--accelerator_type", "v4-32", "--project", "my-proj"]

# Records "$PWD" and the arguments, NUL-separated, one file per call.
_RECORDER = """#!/bin/bash
n=$(ls "$LOG" | wc -l)
printf '%s\\0' "$PWD" "$@" > "$LOG/$(printf '%03d' "$n")-$$-NAME"
"""
_FAKE_GCLOUD_EXTRA = """
if [[ "$*" == *"queued-resources describe"* ]]; then echo ACTIVE; fi
"""
# ssh -o BatchMode=yes HOST COMMAND: runs COMMAND in a per-host home folder.
_FAKE_SSH = """
host=$3
mkdir -p "$HOMES/$host"
cd "$HOMES/$host" && HOME="$HOMES/$host" exec bash -c "$4"
"""
# The roar_jax command: fails for the process id in $FAIL_PROCESS, if set.
_FAKE_PYTHON_EXTRA = """
if [[ -n "${FAIL_PROCESS:-}" && " $* " == *" --process_id=$FAIL_PROCESS "* ]]
then
  exit 3
fi
"""


def _write_exe(path: pathlib.Path, text: str):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fakes(tmp_path):
  """A PATH with recording fakes, and where their records go."""
  bin_dir, log, homes = (tmp_path / n for n in ("bin", "log", "homes"))
  for d in (bin_dir, log, homes):
    d.mkdir()
  _write_exe(bin_dir / "gcloud",
             _RECORDER.replace("NAME", "gcloud") + _FAKE_GCLOUD_EXTRA)
  _write_exe(bin_dir / "ssh", _RECORDER.replace("NAME", "ssh") + _FAKE_SSH)
  _write_exe(bin_dir / "python",
             _RECORDER.replace("NAME", "python") + _FAKE_PYTHON_EXTRA)
  _write_exe(bin_dir / "python3", _RECORDER.replace("NAME", "python3"))
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log),
             HOMES=str(homes), TMPDIR=str(tmp_path))
  return env, log


def calls(log: pathlib.Path, name: str) -> list[list[str]]:
  """[cwd, *argv] of every recorded call of `name`, in call order."""
  out = []
  for f in sorted(log.glob(f"*-{name}")):
    out.append(f.read_bytes().decode().split("\0")[:-1])
  return out


def run(script, args, env=None):
  return subprocess.run(["bash", str(script), *args], capture_output=True,
                        text=True, env=env, timeout=60, check=False)


def dry_run(script, args, env=None) -> list[str]:
  result = run(script, ["--dry_run", *args], env)
  assert result.returncode == 0, result.stderr
  return result.stdout.splitlines()


def words(line: str) -> list[str]:
  """The argv bash makes of one printed command line."""
  out = subprocess.run(["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"',
                        "_", line], capture_output=True, text=True, check=True)
  return out.stdout.split("\0")[:-1]


def flag(argv: list[str], name: str) -> str:
  values = [a[len(name) + 1:] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def run_remote(command: str, fakes_env, log, home: pathlib.Path) -> list[str]:
  """Runs a worker's --command string with bash; returns the roar_jax argv."""
  (home / "roar_jax").mkdir(parents=True, exist_ok=True)
  subprocess.run(["bash", "-c", command], cwd=home, check=True,
                 env=dict(fakes_env, HOME=str(home)))
  recorded = calls(log, "python")[-1]
  assert recorded[0] == str(home / "roar_jax")  # Ran in the project dir.
  return ["python"] + recorded[1:]


def test_tpu_dry_run_creates_installs_and_runs_on_all_workers(fakes, tmp_path):
  env, log = fakes
  lines = dry_run(TPU, TPU_BASE + ["--", *USER_CMD], env)
  assert calls(log, "gcloud") == []  # Nothing ran.
  argvs = [words(line) for line in lines]
  assert [a[:5] for a in argvs if a[0] == "gcloud"] == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create"],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  create, tar, scp, install, launch = argvs
  assert create[5] == "roar-v4"
  assert flag(create, "--accelerator-type") == "v4-32"
  assert flag(create, "--version") == "tpu-ubuntu2204-base"
  for argv in (create, scp, install, launch):
    assert flag(argv, "--zone") == "us-central2-b"
    assert flag(argv, "--project") == "my-proj"
  for argv in (scp, install, launch):
    assert "--worker=all" in argv
  assert tar[0] == "tar" and tar[tar.index("-C") + 1] == str(REPO)
  assert scp[5:7] == [tar[2], "roar-v4:roar_jax_src.tar.gz"]
  assert install[5] == launch[5] == "roar-v4"
  setup = flag(install, "--command")
  assert "tar -xzf roar_jax_src.tar.gz -C roar_jax" in setup
  assert "pip install --upgrade 'jax[tpu]'" in setup and " -e ." in setup
  # The command arrives intact, plus --multihost (v4-32 has 4 workers).
  remote = run_remote(flag(launch, "--command"), env, log, tmp_path / "w0")
  assert remote == USER_CMD + ["--multihost"]
  assert not (tmp_path / "roar_jax_src_roar-v4.tar.gz").exists()


def test_tpu_queued_resource(fakes):
  env, _ = fakes
  lines = dry_run(TPU, ["--name", "qr", "--zone", "z", "--accelerator_type",
                        "v5litepod-16", "--queued", "--spot", "--skip_install",
                        "--", "python", "-m", "roar_jax.main"], env)
  create, describe, launch = (words(line) for line in lines)
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources",
                        "create", "qr"]
  assert flag(create, "--node-id") == "qr"
  assert flag(create, "--accelerator-type") == "v5litepod-16"
  assert flag(create, "--runtime-version") == "v2-alpha-tpuv5-lite"
  assert "--spot" in create
  assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources",
                          "describe", "qr"]
  assert flag(describe, "--format") == "value(state.state)"
  assert launch[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "qr"]
  assert flag(launch, "--command").endswith(
      "python -m roar_jax.main --multihost")


@pytest.mark.parametrize("accelerator,workers", [
    ("v3-8", 1), ("v3-32", 4), ("v4-8", 1), ("v4-16", 2), ("v5p-8", 1),
    ("v5p-16", 2), ("v5litepod-8", 1), ("v5litepod-16", 4), ("v6e-4", 1),
    ("v6e-64", 16)])
def test_tpu_multihost_flag_only_on_multi_worker_slices(accelerator, workers):
  lines = dry_run(TPU, ["--name", "n", "--zone", "z", "--accelerator_type",
                        accelerator, "--skip_create", "--skip_install", "--",
                        "python", "-m", "roar_jax.main", "--mode=train"])
  assert len(lines) == 1
  command = flag(words(lines[0]), "--command")
  assert command.endswith("--mode=train --multihost") == (workers > 1)
  assert command.endswith("--mode=train") == (workers == 1)


def test_tpu_keeps_a_given_multihost_and_num_workers():
  base = ["--name", "n", "--zone", "z", "--skip_create", "--skip_install"]
  lines = dry_run(TPU, base + ["--accelerator_type", "v4-32", "--", "python",
                               "-m", "roar_jax.main", "--multihost"])
  assert flag(words(lines[0]), "--command").count("--multihost") == 1
  lines = dry_run(TPU, base + ["--accelerator_type", "v9-3",
                               "--runtime_version", "r", "--num_workers", "2",
                               "--", "python", "x"])
  assert flag(words(lines[0]), "--command").endswith("python x --multihost")


def test_tpu_repo_url_clones_on_every_worker():
  lines = dry_run(TPU, TPU_BASE + ["--skip_create", "--repo_url",
                                   "https://example.com/roar_jax.git",
                                   "--branch", "v1", "--", "python", "x"])
  install, _ = (words(line) for line in lines)  # No tar, no scp.
  assert "--worker=all" in install
  assert ("git clone --depth 1 --branch v1 https://example.com/roar_jax.git "
          "roar_jax") in flag(install, "--command")


@pytest.mark.parametrize("args,message", [
    (["--zone", "z", "--accelerator_type", "v4-8", "--", "x"], "--name"),
    (["--name", "n", "--accelerator_type", "v4-8", "--", "x"], "--zone"),
    (["--name", "n", "--zone", "z", "--", "x"], "--accelerator_type"),
    (["--name", "n", "--zone", "z", "--accelerator_type", "v4-8"],
     "no command"),
    (["--name", "n", "--zone", "z", "--accelerator_type", "v4-8", "--repo_url",
      "u", "--source_dir", ".", "--", "x"], "exclude each other"),
    (["--name", "n", "--zone", "z", "--accelerator_type", "v9-8", "--", "x"],
     "--runtime_version"),
    (["--name", "n", "--zone", "z", "--accelerator_type", "v9-8",
      "--runtime_version", "r", "--", "x"], "--num_workers"),
    (["--name", "n", "--zone", "--accelerator_type", "v4-8", "--", "x"],
     "--zone needs a value"),
    (["--name", "n", "--zone", "z", "--accelerator_type", "v4-8", "--bogus",
      "1", "--", "x"], "unknown flag --bogus"),
])
def test_tpu_bad_flags_fail_with_a_message(args, message, fakes):
  env, log = fakes
  result = run(TPU, args, env)
  assert result.returncode == 2
  assert message in result.stderr
  assert "--help" in result.stderr and result.stdout == ""
  assert calls(log, "gcloud") == []


def test_tpu_runs_exactly_what_dry_run_prints(fakes, tmp_path):
  env, log = fakes
  source = tmp_path / "src"
  source.mkdir()
  (source / "setup.py").write_text("# the project\n")
  args = TPU_BASE + ["--queued", "--poll_seconds", "0", "--source_dir",
                     str(source), "--", *USER_CMD]
  printed = [words(line) for line in dry_run(TPU, args, env)]
  result = run(TPU, args, env)
  assert result.returncode == 0, result.stderr
  executed = [c[1:] for c in calls(log, "gcloud")]
  assert [["gcloud"] + c for c in executed] == [
      a for a in printed if a[0] == "gcloud"]
  archive = tmp_path / "roar_jax_src_roar-v4.tar.gz"
  listing = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True,
                           text=True, check=True).stdout.split()
  assert "./setup.py" in listing


def test_gpu_one_host_installs_and_runs_the_command_unchanged(fakes, tmp_path):
  env, log = fakes
  install, launch = dry_run(GPU, ["--", *USER_CMD], env)
  assert words(install) == ["python3", "-m", "pip", "install", "--upgrade",
                            "jax[cuda12]", "-e", str(REPO)]
  assert calls(log, "python3") == [] and calls(log, "python") == []
  result = run(GPU, ["--", *USER_CMD], env)
  assert result.returncode == 0, result.stderr
  assert calls(log, "python3") == [[os.getcwd()] + words(install)[1:]]
  assert calls(log, "python") == [[str(REPO)] + USER_CMD[1:]]


def test_gpu_hosts_get_process_ids_and_the_coordinator(fakes, tmp_path):
  env, log = fakes
  hosts = ["me@gpu-a", "gpu-b", "gpu-c"]
  args = ["--hosts", ",".join(hosts), "--port", "9999", "--", *USER_CMD]
  lines = dry_run(GPU, args, env)
  assert calls(log, "ssh") == []
  copies, launches = lines[:3], [words(line) for line in lines[3:]]
  for host, line in zip(hosts, copies):
    tar, ssh = line.split(" | ")
    assert words(tar)[:3] == ["tar", "-czf", "-"]
    assert words(ssh)[:4] == ["ssh", "-o", "BatchMode=yes", host]
    assert "pip install --upgrade 'jax[cuda12]' -e ." in words(ssh)[4]
  flags = ["--coordinator_address=gpu-a:9999", "--num_processes=3"]
  for i, (host, argv) in enumerate(zip(hosts, launches)):
    assert argv[:4] == ["ssh", "-o", "BatchMode=yes", host]
    remote = run_remote(argv[4], env, log, tmp_path / f"host{i}")
    assert remote == USER_CMD + flags + [f"--process_id={i}"]


def test_gpu_hosts_run_copies_install_and_launch(fakes, tmp_path):
  env, log = fakes
  source = tmp_path / "src"
  (source / "configs").mkdir(parents=True)
  (source / "setup.py").write_text("# the project\n")
  (source / "configs" / "c.py").write_text("# a config\n")
  args = ["--hosts", "h1,h2", "--source_dir", str(source), "--", *USER_CMD]
  result = run(GPU, args, env)
  assert result.returncode == 0, result.stderr
  homes = tmp_path / "homes"
  for host in ("h1", "h2"):
    assert (homes / host / "roar_jax" / "configs" / "c.py").exists()
  installs = calls(log, "python3")
  assert sorted(c[0] for c in installs) == [str(homes / h / "roar_jax")
                                            for h in ("h1", "h2")]
  assert all(c[1:] == ["-m", "pip", "install", "--upgrade", "jax[cuda12]",
                       "-e", "."] for c in installs)
  by_dir = {c[0]: c[1:] for c in calls(log, "python")}
  for i, host in enumerate(("h1", "h2")):
    assert by_dir[str(homes / host / "roar_jax")] == USER_CMD[1:] + [
        "--coordinator_address=h1:8476", "--num_processes=2",
        f"--process_id={i}"]
  # One failing process fails the launch and names its host.
  result = run(GPU, ["--skip_install", *args], dict(env, FAIL_PROCESS="1"))
  assert result.returncode == 1
  assert "h2 (process 1)" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["python", "x"], "the roar_jax command goes after --"),
    (["--dry_run"], "no command"),
    (["--repo_url", "u", "--", "x"], "--repo_url needs --hosts"),
    (["--hosts", "a,b", "--", "x", "--process_id=0"], "must not set"),
    (["--hosts", "a,,b", "--", "x"], "empty or blank"),
    (["--port", "http", "--", "x"], "--port must be an integer"),
    (["--source_dir", "/nonexistent", "--", "x"], "has no setup.py"),
])
def test_gpu_bad_flags_fail_with_a_message(args, message, fakes):
  env, log = fakes
  result = run(GPU, args, env)
  assert result.returncode == 2
  assert message in result.stderr
  assert calls(log, "ssh") == [] and calls(log, "python3") == []
