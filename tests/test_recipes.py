"""The cluster recipes run: launch/slurm.sbatch, launch/tpu_vm.sh, launch/gke_jobset.yaml, the Dockerfile.

No cluster is needed. The shell recipes run for real with fake `srun`/`scontrol`/`gcloud` on
PATH that record what they were asked to run and answer with scripted exit codes (so the
requeue / rerun / report logic is exercised); the seedjax command each recipe would start
(the recorded srun line, the recorded `--command` of the TPU ssh, the JobSet's container
command and args) then runs with `--dry_run` on 8 fake CPU devices: it must exit 0, write
nothing and resolve to the config the recipe promises. The README's "Running on a cluster"
commands must be the recipes' own. The Dockerfile cannot be built here (no access to base
images), so its structure is checked: what it copies exists, what it installs is a pyproject
extra, and its entrypoint is the JobSet's command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib

import pytest
import yaml

from tests.runner import ROOT, env_for

SLURM, TPU, GKE = "launch/slurm.sbatch", "launch/tpu_vm.sh", "launch/gke_jobset.yaml"
MAIN = ["python", "-m", "seedjax.main"]
DEVICES = 8


def read(rel: str) -> str:
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def usage_lines(rel: str) -> list[str]:
    """The example commands of a recipe's header comment (`#   <command>   (note)` lines)."""
    return [re.split(r"\s{3,}", line[4:].strip())[0] for line in read(rel).splitlines() if line.startswith("#   ")]


def usage(rel: str, contains: str) -> str:
    lines = [line for line in usage_lines(rel) if contains in line]
    assert lines, f"{rel}: no example command containing {contains!r}"
    return lines[0]


def write_exe(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


RECORDER = f"""#!{sys.executable}
# Fake {{name}}: append argv (JSON) to $FAKE_LOG; exit/answer as scripted.
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(["{{name}}", *sys.argv[1:]]) + "\\n")
{{body}}
"""


@pytest.fixture
def images(tmp_path):
    """A folder of two captioned images: the data path every recipe's dry run points at."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(folder / f"im{i}.png")
        (folder / f"im{i}.txt").write_text(f"a flat picture {i}")
    return str(folder)


def dry_run(argv: list[str], tmp_path, images: str) -> tuple[dict, str]:
    """Run a recipe's seedjax command with --dry_run, its workdir and data path moved into
    tmp (the cluster paths do not exist here); returns (the printed JSON, the workdir)."""
    assert argv[:3] == MAIN, argv
    workdir = str(tmp_path / "run" / "never_created")
    args = []
    for a in argv[3:]:
        if a.startswith("--workdir="):
            a = f"--workdir={workdir}"
        elif a.startswith("--config.data.path="):
            a = f"--config.data.path={images}"
        args.append(a)
    assert any(a.startswith("--workdir=") for a in args), argv
    proc = subprocess.run([sys.executable, "-m", "seedjax.main", *args, "--dry_run"], cwd=ROOT,
                          env=env_for(DEVICES), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not os.path.exists(workdir) and not os.path.exists(os.path.dirname(workdir))
    return json.loads(proc.stdout[proc.stdout.index("{"):]), workdir


def check_cluster_config(out: dict, images: str) -> None:
    """What every recipe promises: own-image pretraining, the cluster-sized model, parameters
    sharded over every device, the preemption code the recipe reacts to."""
    config = out["config"]
    assert config["stage"] == "pretrain"
    assert config["data"]["source"] == "folder" and config["data"]["path"] == images
    assert config["model"]["depth_double"] == 12 and config["model"]["depth_single"] == 24  # `base`
    assert config["preemption_exit_code"] == 143
    assert out["mesh"]["fsdp"] == DEVICES and out["devices"] == DEVICES


# --------------------------------------------------------------------------- shell and packaging


@pytest.mark.parametrize("script", ["launch/slurm.sbatch", "launch/tpu_vm.sh", "launch/env.sh",
                                    "launch/quickstart.sh", "launch/test.sh"])
def test_shell_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", os.path.join(ROOT, script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_pyproject_has_the_accelerator_and_storage_extras():
    extras = pyproject()["project"]["optional-dependencies"]
    assert any(r.replace(" ", "").startswith("jax[cuda12]") for r in extras["cuda12"])
    assert any(r.replace(" ", "").startswith("jax[tpu]") for r in extras["tpu"])
    assert any(r.startswith("gcsfs") for r in extras["gcs"])
    assert "ray" in extras and "test" in extras


def test_env_sh_installs_the_requested_extras_once(tmp_path):
    """A fake venv whose python logs what it was asked: env.sh installs `.[extras]` (argument
    and $SEEDJAX_EXTRAS merged), then nothing more while pyproject.toml is unchanged."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "python.log"
    write_exe(str(venv / "bin" / "python"), f'#!/bin/sh\necho "$*" >> {log}\n')
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')

    def env_sh(*args, extras=""):
        # Only the fake python is reachable: nothing can install into a real environment.
        env = dict(os.environ, SEEDJAX_VENV=str(venv), SEEDJAX_EXTRAS=extras, PATH=f"{venv}/bin:/usr/bin:/bin")
        env.pop("VIRTUAL_ENV", None)
        proc = subprocess.run(["bash", os.path.join(ROOT, "launch/env.sh"), *args], env=env, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr
        lines = log.read_text().splitlines() if log.exists() else []
        log.write_text("")
        return [line for line in lines if "-e" in line.split()]

    assert env_sh(extras="cuda12") == [f"-m pip install -q -e {ROOT}[cuda12]"]
    assert env_sh(extras="cuda12") == []  # installed: nothing to do
    assert env_sh("test", extras="gcs,cuda12") == [f"-m pip install -q -e {ROOT}[cuda12,gcs,test]"]
    assert env_sh() == []  # a plain install is satisfied by any install of this pyproject.toml


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", read("Dockerfile"))
    return [(m.group(1).upper(), m.group(2).strip()) for m in
            (re.match(r"(\w+)\s+(.*)", line) for line in text.splitlines() if line.strip() and not line.startswith("#"))
            if m]


def test_dockerfile_copies_what_exists_and_installs_pyproject_extras():
    instructions = dockerfile()
    base = [rest for op, rest in instructions if op == "FROM"]
    assert len(base) == 1 and re.fullmatch(r"python:3\.(\d+)-slim", base[0])
    minimum = re.search(r">=\s*3\.(\d+)", pyproject()["project"]["requires-python"]).group(1)
    assert int(re.search(r"3\.(\d+)", base[0]).group(1)) >= int(minimum)
    copied = [src for op, rest in instructions if op == "COPY" for src in rest.split()[:-1]]
    assert copied and all(os.path.exists(os.path.join(ROOT, src)) for src in copied), copied
    # Everything setuptools packages, and the readme pyproject names, is in the image.
    for pattern in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, pattern
    assert "pyproject.toml" in copied and pyproject()["project"]["readme"] in copied
    ignored = {line.strip() for line in read(".dockerignore").splitlines() if line.strip() and not line.startswith("#")}
    assert not ignored & set(copied)
    # The extras it installs (the default and the documented TPU build arg) are pyproject extras.
    default = [rest.split("=", 1)[1] for op, rest in instructions if op == "ARG" and rest.startswith("EXTRAS=")]
    documented = re.findall(r"--build-arg EXTRAS=(\S+)", read("Dockerfile"))
    assert default == ["cuda12,gcs"] and documented == ["tpu,gcs"]
    extras = pyproject()["project"]["optional-dependencies"]
    for spec in default + documented:
        assert all(e in extras for e in spec.split(",")), spec
    assert ("RUN", 'pip install ".[${EXTRAS}]"') in instructions
    entry = [json.loads(rest) for op, rest in instructions if op == "ENTRYPOINT"]
    assert entry == [MAIN]


# --------------------------------------------------------------------------- SLURM


def run_sbatch(tmp_path, srun_rc: int, gpu_jax: bool = True):
    """`bash launch/slurm.sbatch <the header example's arguments>` with fake srun/scontrol and a
    fake venv; returns (process, recorded calls)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    write_exe(str(fake / "srun"), RECORDER.format(name="srun", body=f"sys.exit({srun_rc})"))
    write_exe(str(fake / "scontrol"), RECORDER.format(name="scontrol", body=""))
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    write_exe(str(venv / "bin" / "python"), f'#!/bin/sh\n[ "$2" = "import jax_cuda12_plugin" ] && exit {0 if gpu_jax else 1}\n'
                                            f'exec {sys.executable} "$@"\n')
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    words = shlex.split(usage(SLURM, "sbatch "))
    args = words[words.index(SLURM) + 1:]
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", FAKE_LOG=str(log), SLURM_JOB_ID="4242",
               SLURM_SUBMIT_DIR=ROOT, SEEDJAX_VENV=str(venv))
    proc = subprocess.run(["bash", os.path.join(ROOT, SLURM), *args], env=env, capture_output=True, text=True,
                          timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def test_slurm_requeues_a_preempted_run_and_runs_the_right_command(tmp_path, images):
    text = read(SLURM)
    assert re.search(r"^#SBATCH --signal=TERM@\d+\s*$", text, re.M) and re.search(r"^#SBATCH --requeue\s*$", text, re.M)
    proc, calls = run_sbatch(tmp_path, srun_rc=143)
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls] == ["srun", "scontrol"] and calls[1][1:] == ["requeue", "4242"]
    srun = calls[0][1:]
    out, _ = dry_run(srun[srun.index("python"):], tmp_path, images)
    check_cluster_config(out, images)


@pytest.mark.parametrize("srun_rc", [0, 1, 2])
def test_slurm_finished_or_failed_runs_are_not_requeued(tmp_path, srun_rc):
    proc, calls = run_sbatch(tmp_path, srun_rc=srun_rc)
    assert proc.returncode == srun_rc, proc.stderr
    assert [c[0] for c in calls] == ["srun"]


def test_slurm_refuses_an_environment_without_gpu_jax(tmp_path):
    proc, calls = run_sbatch(tmp_path, srun_rc=0, gpu_jax=False)
    assert proc.returncode == 2 and calls == []
    assert "SEEDJAX_EXTRAS=cuda12 bash launch/env.sh" in proc.stderr.strip().splitlines()[-1]


# --------------------------------------------------------------------------- TPU VM


def run_tpu(tmp_path, answers: list[tuple[str, int]], state: str = "READY", restarts: int = 3):
    """`launch/tpu_vm.sh <the header example's arguments>` with a fake gcloud whose ssh calls
    answer `answers` in turn (output, exit code) and whose describe says `state`."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    script = tmp_path / "answers.json"
    script.write_text(json.dumps(answers))
    body = f"""
if "ssh" in sys.argv:
    answers = json.load(open({str(script)!r}))
    out, rc = answers.pop(0)
    json.dump(answers, open({str(script)!r}, "w"))
    print(out)
    sys.exit(rc)
if "describe" in sys.argv:
    print({state!r})
"""
    write_exe(str(fake / "gcloud"), RECORDER.format(name="gcloud", body=body))
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    line = usage(TPU, "launch/tpu_vm.sh")
    words = shlex.split(line)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", FAKE_LOG=str(log), SEEDJAX_POLL_SECONDS="0",
               SEEDJAX_MAX_RESTARTS=str(restarts))
    env.update(w.split("=", 1) for w in words[:words.index("bash")])  # the example's VAR=value prefix
    args = words[words.index(TPU) + 1:]
    proc = subprocess.run(["bash", os.path.join(ROOT, TPU), *args], env=env, capture_output=True, text=True,
                          timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return proc, calls, args


def remote_command(call: list[str]) -> str:
    return [a for a in call if a.startswith("--command=")][0][len("--command="):]


def test_tpu_vm_reruns_after_preemption_and_runs_the_right_command(tmp_path, images):
    answers = [("seedjax-exit: w-0 143\nseedjax-exit: w-1 143", 1), ("seedjax-exit: w-0 0\nseedjax-exit: w-1 0", 0)]
    proc, calls, args = run_tpu(tmp_path, answers)
    assert proc.returncode == 0, proc.stderr
    ssh = [c for c in calls if "ssh" in c]
    assert len(ssh) == 2 and [c for c in calls if "describe" in c]
    tpu, zone = args[:2]
    assert ssh[0][1:6] == ["compute", "tpus", "tpu-vm", "ssh", tpu] and f"--zone={zone}" in ssh[0]
    assert "--worker=all" in ssh[0] and remote_command(ssh[0]) == remote_command(ssh[1])
    remote = remote_command(ssh[0])
    assert "SEEDJAX_EXTRAS=tpu,gcs bash launch/env.sh" in remote and args[-1].split("=", 1)[0] in remote
    mains = [line for line in remote.splitlines() if line.startswith("python -m seedjax.main ")]
    assert len(mains) == 1
    argv = shlex.split(mains[0])
    assert f"--workdir={args[3]}" in argv and argv[3] == f"--config={args[2]}"
    out, _ = dry_run(argv, tmp_path, images)
    check_cluster_config(out, images)


def test_tpu_vm_reports_what_it_cannot_fix(tmp_path):
    # A bad config on a worker: exit 2 at once, no rerun.
    proc, calls, _ = run_tpu(tmp_path, [("seedjax-exit: w-0 2\nseedjax-exit: w-1 2", 1)])
    assert proc.returncode == 2 and len([c for c in calls if "ssh" in c]) == 1
    # Still preempted after the last allowed try: 143 and how to resume.
    proc, calls, _ = run_tpu(tmp_path, [("seedjax-exit: w-0 143", 1)], restarts=0)
    assert proc.returncode == 143 and "rerun this command to resume" in proc.stderr
    # The TPU itself was preempted (the connection dropped, no worker reported): recreate it.
    proc, calls, _ = run_tpu(tmp_path, [("ssh: connection closed", 255)], state="PREEMPTED")
    assert proc.returncode == 143 and "PREEMPTED" in proc.stderr and "recreate" in proc.stderr
    # A runtime failure on one worker is reported with its code.
    proc, calls, _ = run_tpu(tmp_path, [("seedjax-exit: w-0 1\nseedjax-exit: w-1 143", 1)])
    assert proc.returncode == 1 and "exit code 1" in proc.stderr


# --------------------------------------------------------------------------- GKE JobSet


def jobset() -> dict:
    with open(os.path.join(ROOT, GKE)) as f:
        return yaml.safe_load(f)


def test_jobset_restarts_on_preemption_and_runs_the_right_command(tmp_path, images):
    spec = jobset()["spec"]
    job = spec["replicatedJobs"][0]["template"]["spec"]
    pod = job["template"]["spec"]
    container = pod["containers"][0]
    argv = container["command"] + container["args"]
    out, _ = dry_run(argv, tmp_path, images)
    check_cluster_config(out, images)
    # One process per pod, all pods of one indexed Job, the process count they are told.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["SEEDJAX_NUM_PROCESSES"]) == job["parallelism"] == job["completions"]
    assert job["completionMode"] == "Indexed" and pod["restartPolicy"] == "Never" and job["backoffLimit"] == 0
    assert env["SEEDJAX_COORDINATOR"].startswith(f"{jobset()['metadata']['name']}-{spec['replicatedJobs'][0]['name']}-0-0.")
    # Exit 143 (the preemption code the args set) fails the Job through its podFailurePolicy,
    # and the JobSet restarts on that reason without counting it against maxRestarts.
    code = out["config"]["preemption_exit_code"]
    rules = job["podFailurePolicy"]["rules"]
    on_code = [r for r in rules if "onExitCodes" in r]
    assert on_code[0]["action"] == "FailJob" and on_code[0]["onExitCodes"]["operator"] == "In"
    assert on_code[0]["onExitCodes"]["values"] == [code] and on_code[0]["onExitCodes"]["containerName"] == container["name"]
    assert any(r["action"] == "FailJob" and r.get("onPodConditions", [{}])[0].get("type") == "DisruptionTarget"
               for r in rules)
    restart = spec["failurePolicy"]["rules"][0]
    assert restart == {"action": "RestartJobSetAndIgnoreMaxRestarts", "onJobFailureReasons": ["PodFailurePolicy"]}
    assert pod["terminationGracePeriodSeconds"] >= 60


# --------------------------------------------------------------------------- README


def readme_section(title: str) -> str:
    text = read("README.md")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def readme_commands(title: str) -> list[str]:
    """The command lines of a README section's code blocks (continuations joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", readme_section(title), re.S)
    text = re.sub(r"\\\n\s*", "", "\n".join(blocks))
    return [line.split("   #")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_cluster_commands_are_the_recipes():
    commands = readme_commands("Running on a cluster")
    recipe_lines = [line for rel in (SLURM, TPU, GKE, "Dockerfile", "launch/env.sh") for line in usage_lines(rel)]
    # Every install and launch line of a recipe's header is in the README, and nothing else is.
    for rel, needle in [(SLURM, "launch/env.sh"), (SLURM, "sbatch "), (TPU, "tpu-vm create"), (TPU, "launch/tpu_vm.sh"),
                        (GKE, "docker build"), ("Dockerfile", "--build-arg"), (GKE, "kubectl apply"),
                        (GKE, "kubectl logs")]:
        assert usage(rel, needle) in commands, (rel, needle)
    container = jobset()["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    in_pod = shlex.join(container["command"] + container["args"])
    assert in_pod in commands
    for command in commands:
        assert command in recipe_lines or command == in_pod, f"README command not in any recipe: {command}"
