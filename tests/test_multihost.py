"""Multi-process runs on one machine (`launch.local`, gloo collectives) behave like one process.

Sampling and evaluation stay on (every shipped config samples); the references are the
one-process losses of tests/test_train_e2e.py's command. Moving a run between process counts
changes the reduction order of the mean over devices, so losses agree to 1e-4 on the first
step after a move and to 2e-3 later (Adam amplifies float noise on this tiny model; a wrong
restore or wrong data is off by more than 10% at once).
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.runner import ROOT, env_for, losses, read_metrics, run_main

CONFIG = "experiments/quickstart/pretrain.py:tiny"
pytestmark = pytest.mark.slow(minutes=15)


def launch(workdir: str, processes: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launch.local", f"--num_processes={processes}", "--", sys.executable, "-m",
           "seedjax.main", f"--config={CONFIG}", f"--workdir={workdir}", "--config.log_every=1", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def reference(straight):
    return losses(straight)


def test_restore_across_process_counts_2_to_4_to_1(reference, tmp_path):
    workdir = str(tmp_path / "moving")
    launch(workdir, 2, "--stop_at_step=4", "--config.sample_every=4")
    launch(workdir, 4, "--stop_at_step=8", "--config.sample_every=4", "--config.eval_every=8")
    one = run_main(CONFIG, workdir, "log_every=1", extra_flags=("--stop_at_step=12",))
    assert one.returncode == 0, one.stderr[-3000:]
    got = losses(workdir)
    assert sorted(got) == list(range(1, 13))
    for step, loss in got.items():
        assert loss == pytest.approx(reference[step], rel=1e-4 if step in (1, 5, 9) else 2e-3), step
    assert {f"step_{s}.png" for s in (4, 8)} <= set(os.listdir(os.path.join(workdir, "samples")))
    assert [r["step"] for r in read_metrics(workdir) if "eval/prompt_accuracy" in r] == [8]


@pytest.mark.parametrize("axis", ["tensor", "sequence"])
def test_model_axis_across_processes_loads_the_same_rows(reference, tmp_path, axis):
    # 2 processes x 1 device with the batch replicated across them: both must feed the same samples.
    workdir = str(tmp_path / axis)
    launch(workdir, 2, "--config.mesh.data=1", f"--config.mesh.{axis}=2", "--config.sharding.replicated_params=ignore",
           "--config.sample_every=5", "--stop_at_step=5")
    for step, loss in losses(workdir).items():
        assert loss == pytest.approx(reference[step], rel=1e-4), step
    assert os.path.isfile(os.path.join(workdir, "samples", "step_5.png"))


def test_preemption_of_two_processes_checkpoints_and_exits_with_the_preemption_code(tmp_path):
    workdir = str(tmp_path / "preempted")
    cmd = [sys.executable, "-m", "launch.local", "--num_processes=2", "--", sys.executable, "-m", "seedjax.main",
           f"--config={CONFIG}", f"--workdir={workdir}", "--config.total_steps=100000",
           "--config.checkpoint_every=100000", "--config.log_every=1", "--config.sample_every=0"]
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env_for(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 2):
        time.sleep(0.5)
    launcher.send_signal(signal.SIGTERM)  # forwarded to both processes, as SLURM or a JobSet would
    out, _ = launcher.communicate(timeout=180)
    assert launcher.returncode == 143, out[-3000:]
    saved = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
    assert len(saved) == 1 and saved[0] >= 2, out[-2000:]
    assert not os.path.exists(os.path.join(workdir, "done.json"))
    # Both processes stopped at the same step (JAX's preemption sync point), then checkpointed.
    assert out.count(f"stopping at step {saved[0]} (SIGTERM)") == 2, out[-3000:]
