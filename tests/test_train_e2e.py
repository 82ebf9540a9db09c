"""The training loop end to end, through `python -m seedjax.main` as a user runs it.

Exact resume, SIGTERM, a second mesh and a second process count must all reproduce the
losses (and, where the mesh is the same, the parameters bitwise) of one uninterrupted run.
Multi-process runs go through `launch.local` (gloo collectives on one machine) with sampling
and evaluation on, as every shipped config has them.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.runner import ROOT, check_reference_losses, env_for, losses, read_metrics, run_main

pytestmark = pytest.mark.slow(minutes=16)  # end-to-end runs: tests/conftest.py starts this file first

CONFIG = "experiments/quickstart/pretrain.py:tiny"
FAST = ("sample_every=0", "log_every=1")


def params_at(workdir: str, step: int) -> dict:
    import orbax.checkpoint as ocp

    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(state)}


def assert_ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_workdir_contract(straight):
    check_reference_losses("pretrain_tiny", straight)
    rows = read_metrics(straight)
    for key in ("step", "loss", "lr", "grad_norm", "steps_per_sec", "examples_per_sec", "tflops_per_device", "mfu"):
        assert key in rows[-1], key
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 21))
    assert os.path.isfile(os.path.join(straight, "config.json"))
    assert sorted(os.listdir(os.path.join(straight, "checkpoints"))) == ["10", "20"]
    assert os.listdir(os.path.join(straight, "tb"))
    assert rows[-1]["loss"] < rows[0]["loss"]
    with open(os.path.join(straight, "done.json")) as f:  # the completion marker
        assert json.load(f) == {"step": 20, "total_steps": 20, "stage": "pretrain"}


def test_metric_writer_writes_tensorboard_events_without_importing_torch(tmp_path):
    # tensorboardX tries torch at import, 2 s of every training process's start where torch is
    # installed (as in this test environment); seedjax logs no torch tensors.
    code = ("import sys; from seedjax.train.metrics import MetricWriter\n"
            "w = MetricWriter(sys.argv[1], 1, enabled=True); w.write(1, {'loss': 1.0}); w.close()\n"
            "assert 'torch' not in sys.modules; import torch")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env_for(1), capture_output=True,
                          text=True, timeout=120)
    assert_ok(proc)
    assert os.listdir(tmp_path / "tb") and read_metrics(str(tmp_path))[0]["loss"] == 1.0


def test_exact_resume_after_stop_is_bitwise_equal(straight, tmp_path):
    workdir = str(tmp_path / "resumed")
    assert_ok(run_main(CONFIG, workdir, *FAST, extra_flags=("--stop_at_step=10",)))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10"]
    assert not os.path.exists(os.path.join(workdir, "done.json"))  # stopped, not finished
    second = run_main(CONFIG, workdir, *FAST)
    assert_ok(second)
    assert "resumed from" in second.stderr
    assert losses(workdir) == losses(straight)  # exact float equality, every step
    a, b = params_at(straight, 20), params_at(workdir, 20)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sigterm_saves_checkpoint_and_next_run_resumes(tmp_path):
    workdir = str(tmp_path / "preempted")
    cmd = [sys.executable, "-m", "seedjax.main", f"--config={CONFIG}", f"--workdir={workdir}",
           "--config.total_steps=100000", "--config.checkpoint_every=100000", *[f"--config.{o}" for o in FAST]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env_for(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # An unfinished run that checkpointed exits with the preemption code (SLURM requeues on it).
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM" in err
    assert not os.path.exists(os.path.join(workdir, "done.json"))
    saved = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
    assert len(saved) == 1 and saved[0] >= 3
    again = run_main(CONFIG, workdir, *FAST, f"total_steps={saved[0] + 2}")
    assert_ok(again)
    assert f"at step {saved[0]}" in again.stderr
    assert max(losses(workdir)) == saved[0] + 2
    assert os.path.exists(os.path.join(workdir, "done.json"))


def test_mesh_parity_and_restore_onto_another_mesh(straight, tmp_path):
    sharded = str(tmp_path / "sharded")
    mesh = ("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "sharding.replicated_params=ignore")
    assert_ok(run_main(CONFIG, sharded, *FAST, *mesh, "total_steps=5", devices=8))
    ref = losses(straight)
    for step, loss in losses(sharded).items():
        assert loss == pytest.approx(ref[step], rel=1e-4), step
    # The 1-device run's checkpoint at step 10 continues on the 8-device mesh.
    moved = str(tmp_path / "moved")
    shutil.copytree(straight, moved)
    shutil.rmtree(os.path.join(moved, "checkpoints", "20"))
    os.remove(os.path.join(moved, "done.json"))
    with open(os.path.join(moved, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in read_metrics(straight) if row["step"] <= 10)
    proc = run_main(CONFIG, moved, *FAST, *mesh, devices=8)
    assert_ok(proc)
    assert "at step 10" in proc.stderr, proc.stderr[-2000:]
    # The first steps after the move match to 1e-4; later steps drift apart only by the
    # reduction order of a different mesh, amplified ~10x a step by Adam on this tiny model
    # (a wrong restore is off by >10% at once).
    for step in range(11, 14):
        assert losses(moved)[step] == pytest.approx(ref[step], rel=1e-4), step
    for step in range(14, 21):
        assert losses(moved)[step] == pytest.approx(ref[step], rel=2e-3), step


def launch(workdir: str, processes: int, *args: str, devices: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    """`processes` processes of the tiny quickstart through launch.local (gloo collectives), each
    with `devices` CPU devices."""
    cmd = [sys.executable, "-m", "launch.local", f"--num_processes={processes}", "--", sys.executable, "-m",
           "seedjax.main", f"--config={CONFIG}", f"--workdir={workdir}", "--config.log_every=1", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_for(devices), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc


def test_two_processes_sample_evaluate_match_one_and_restore_across_process_counts(straight, tmp_path):
    """2 processes (steps 1-4), then 1 (5-8), then 2 again (9-12), sampling and evaluating as every
    shipped config does (each gathers global arrays; only process 0 writes). The first leg must give
    the one-process losses; a move between process counts changes the reduction order of the mean
    over devices, so losses agree to 1e-4 on the first step after a move and to 2e-3 later (Adam
    amplifies float noise on this tiny model; a wrong restore or wrong data is off by more than 10%)."""
    workdir = str(tmp_path / "moving")
    proc = launch(workdir, 2, "--config.sample_every=4", "--config.eval_every=4", "--stop_at_step=4")
    assert "[rank 1]" in proc.stdout
    one = run_main(CONFIG, workdir, "log_every=1", "sample_every=4", extra_flags=("--stop_at_step=8",))
    assert one.returncode == 0, one.stderr[-3000:]
    launch(workdir, 2, "--config.sample_every=4", "--config.eval_every=12", "--stop_at_step=12")
    reference, got = losses(straight), losses(workdir)
    assert sorted(got) == list(range(1, 13))
    for step, loss in got.items():
        assert loss == pytest.approx(reference[step], rel=1e-4 if step <= 5 or step == 9 else 2e-3), step
    assert {f"step_{s}.png" for s in (4, 8, 12)} <= set(os.listdir(os.path.join(workdir, "samples")))
    # written once (process 0), not once per process
    assert [r["step"] for r in read_metrics(workdir) if "eval/prompt_accuracy" in r] == [4, 12]


def test_a_dead_process_fails_the_launch(tmp_path):
    """Kill one of two processes mid-run: the launcher stops the other and exits non-zero."""
    workdir = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "launch.local", "--num_processes=2", "--", sys.executable, "-m", "seedjax.main",
           f"--config={CONFIG}", f"--workdir={workdir}", "--config.total_steps=100000", "--config.log_every=1",
           "--config.sample_every=0"]
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env_for(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.exists(metrics):
        time.sleep(0.5)
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    t0 = time.time()
    os.kill(int(children[1]), signal.SIGKILL)
    launcher.wait(timeout=90)
    assert launcher.returncode != 0
    assert time.time() - t0 < 60


def test_model_axes_across_processes_load_the_same_rows(straight, tmp_path):
    """2 processes x 2 devices, the batch replicated over a tensor=2 x sequence=2 mesh (the tensor
    axis across the processes, the sequence axis within each): both processes must feed the same
    samples, and the losses are one device's."""
    workdir = str(tmp_path / "model_axes")
    proc = launch(workdir, 2, "--config.mesh.data=1", "--config.mesh.tensor=2", "--config.mesh.sequence=2",
                  "--config.sharding.replicated_params=ignore", "--config.sample_every=5", "--stop_at_step=5", devices=2)
    assert "'tensor': 2, 'sequence': 2" in proc.stdout + proc.stderr
    reference = losses(straight)
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


def test_init_from_loads_parameters_only(straight, tmp_path):
    # Both paths relative to the working directory, as users type them.
    workdir = os.path.relpath(tmp_path / "child", ROOT)
    proc = run_main(CONFIG, workdir, *FAST, f"init_from={os.path.relpath(straight, ROOT)}", "total_steps=1",
                    "optimizer.lr=0.0", "ema_decay=0.0")
    assert_ok(proc)
    a, b = params_at(straight, 20), params_at(str(tmp_path / "child"), 1)
    model_keys = [k for k in a if k.startswith("['model']")]
    assert model_keys
    for k in model_keys:  # lr = 0: the child's parameters are exactly the parent's
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert read_metrics(str(tmp_path / "child"))[0]["step"] == 1  # the step count starts over


def test_checkpoint_with_grain_per_process_data_files_still_resumes(straight, tmp_path):
    """Checkpoints saved before the iterator/ item held Grain's data/process_<i>-of-<n>.json."""
    import shutil

    workdir = str(tmp_path / "legacy")
    shutil.copytree(straight, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))
    os.remove(os.path.join(workdir, "done.json"))
    step_dir = os.path.join(workdir, "checkpoints", "10")
    with open(os.path.join(step_dir, "iterator", "metadata")) as f:
        position = f.read()
    shutil.rmtree(os.path.join(step_dir, "iterator"))
    os.makedirs(os.path.join(step_dir, "data"))
    with open(os.path.join(step_dir, "data", "process_0-of-1.json"), "w") as f:
        f.write(position)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        kept = [line for line in f if json.loads(line)["step"] <= 10]
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(kept)
    assert_ok(run_main(CONFIG, workdir, *FAST))
    assert losses(workdir) == losses(straight)


def test_half_written_checkpoint_is_skipped(straight, tmp_path):
    import shutil

    workdir = str(tmp_path / "half")
    shutil.copytree(straight, workdir)
    ckpts = os.path.join(workdir, "checkpoints")
    shutil.copytree(os.path.join(ckpts, "20"), os.path.join(ckpts, "30.orbax-checkpoint-tmp-1234"))
    proc = run_main(CONFIG, workdir, *FAST, "total_steps=21")
    assert_ok(proc)
    assert "half-written" in proc.stderr
    assert "resumed from" in proc.stderr and "at step 20" in proc.stderr
    assert max(losses(workdir)) == 21


def test_damaged_checkpoint_stops_the_run_instead_of_starting_over(straight, tmp_path):
    import shutil

    workdir = str(tmp_path / "damaged")
    shutil.copytree(straight, workdir)
    state_dir = os.path.join(workdir, "checkpoints", "20", "state")
    for name in os.listdir(state_dir):  # damage the newest finished checkpoint
        if os.path.isdir(os.path.join(state_dir, name)):
            shutil.rmtree(os.path.join(state_dir, name))
    before = read_metrics(workdir)
    proc = run_main(CONFIG, workdir, *FAST, "total_steps=30")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "checkpoint 20" in last and "could not be restored" in last, last
    assert read_metrics(workdir) == before  # nothing trained, nothing appended
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]


def test_checkpoint_of_another_model_exits_2_naming_the_changed_keys(straight, tmp_path):
    import shutil

    workdir = str(tmp_path / "changed")
    shutil.copytree(straight, workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        config_before = f.read()
    proc = run_main(CONFIG, workdir, *FAST, "model.depth_double=2", "total_steps=30")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "holds another model" in last and "model.depth_double: 1 -> 2" in last, last
    assert f"--config.init_from={workdir}" in last
    with open(os.path.join(workdir, "config.json")) as f:
        assert f.read() == config_before  # the workdir's config is not overwritten
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]


def test_nonfinite_updates_abort_with_a_clear_message(tmp_path):
    workdir = str(tmp_path / "nan")
    proc = run_main(CONFIG, workdir, *FAST, "optimizer.lr=1e30", "optimizer.grad_clip=0.0",
                    "optimizer.warmup_steps=0", "optimizer.max_nonfinite_steps=3")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "consecutive non-finite updates" in last
