"""`python -m seedjax.tools.summary`: what the quickstart prints at the end, on tiny fake workdirs."""

import json
import os
import subprocess
import sys

import pytest

from seedjax.tools import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_run(workdir, rows, grids=(), mtime=None):
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"stage": "pretrain"}, f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    if grids:
        os.makedirs(os.path.join(workdir, "samples"))
        for name in grids:
            open(os.path.join(workdir, "samples", name), "wb").close()
    if mtime is not None:
        os.utime(os.path.join(workdir, "config.json"), (mtime, mtime))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "seedjax.tools.summary", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def pipeline_root(tmp_path):
    root = tmp_path / "qs"
    fake_run(str(root / "pretrain"), [
        {"step": 100, "loss": 0.5, "lr": 1e-3},
        {"step": 600, "loss": 0.25, "lr": 1e-4},
        {"step": 600, "eval/prompt_accuracy": 0.975, "eval/frechet_distance": 12.5},
    ], grids=("step_300.png", "step_600.png", "step_1000.txt"), mtime=1_000_000)
    # Written later than pretrain: listed after it although "reward" < "sft" < "pretrain" is not the order.
    fake_run(str(root / "reward"), [{"step": 50, "loss": 0.7}, {"step": 50, "eval/alignment/accuracy": 0.9}],
             mtime=2_000_000)
    os.makedirs(root / "not_a_run")
    return root


def test_prints_prompt_accuracy_and_newest_grid_per_stage(pipeline_root):
    proc = run_cli(str(pipeline_root))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.index("== pretrain") < out.index("== reward")
    assert "== pretrain  (step 600, loss 0.2500)" in out
    assert "prompt accuracy: 0.9750" in out and "eval at step 600" in out
    assert "frechet_distance: 12.5000" in out
    # step 600 is the newest grid (numeric, not lexicographic order); files that are not grids are ignored
    assert f"sample grid: {pipeline_root / 'pretrain' / 'samples' / 'step_600.png'}" in out
    assert "alignment/accuracy: 0.9000" in out
    assert "sample grid: none" in out  # the reward stage writes no samples
    assert "not_a_run" not in out


def test_timings_give_order_and_seconds(pipeline_root):
    (pipeline_root / "pipeline_timings.json").write_text(json.dumps({"reward": 12.3, "pretrain": 371.8}))
    out = run_cli(str(pipeline_root)).stdout
    assert out.index("== reward") < out.index("== pretrain")
    assert "== pretrain  (step 600, loss 0.2500, 372 s)" in out


def test_single_workdir_and_torn_last_line(tmp_path):
    workdir = tmp_path / "run"
    fake_run(str(workdir), [{"step": 10, "loss": 1.0}, {"step": 10, "eval/prompt_accuracy": 0.5}],
             grids=("step_10.png",))
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "lo')  # killed mid-write
    lines = summary.format_stage("run", str(workdir))
    assert lines[0] == "== run  (step 10, loss 1.0000)"
    assert summary.main([str(workdir)]) == 0


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_zero(flag):
    proc = run_cli(flag)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m seedjax.tools.summary ROOT")


def test_missing_or_empty_root_exits_2_with_one_line(tmp_path):
    proc = run_cli(str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"seedjax.tools.summary: {tmp_path / 'nope'} does not exist "
                                                "(nothing has run there yet)"]
    (tmp_path / "empty").mkdir()
    proc = run_cli(str(tmp_path / "empty"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "no run in" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("args", [[], ["a", "b"], ["--bogus"]])
def test_bad_arguments_exit_2(args):
    assert summary.main(args) == 2
