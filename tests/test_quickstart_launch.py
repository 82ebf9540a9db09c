"""`bash launch/quickstart.sh [full|tiny|video]`: arguments are checked before anything is installed or trained.

The chains themselves run elsewhere (tests/test_rlhf.py::test_tiny_post_training_pipeline runs the
tiny chain); here only the argument handling and the plan each variant prints.
"""

import os
import subprocess

import pytest

from seedjax.pipeline import load_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart(tmp_path, *args):
    env = dict(os.environ, SEEDJAX_VENV=str(tmp_path / "venv"), SEEDJAX_QUICKSTART_DIR=str(tmp_path / "runs"))
    proc = subprocess.run(["bash", "launch/quickstart.sh", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    # Nothing is installed and nothing is trained on any of these calls.
    assert not (tmp_path / "venv").exists() and not (tmp_path / "runs").exists()
    return proc


@pytest.mark.parametrize("args", [["bogus"], ["tiny", "full"], ["--tiny"], ["full", "extra"], ["Full"]])
def test_rejects_other_arguments_with_exit_2(tmp_path, args):
    proc = quickstart(tmp_path, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()
    assert len(last) == 1 and "usage: bash launch/quickstart.sh [full|tiny|video]" in last[0]


@pytest.mark.parametrize("args, pipeline_variant, stages", [
    ([], "fast", ["pretrain"]),
    (["full"], "full", ["pretrain", "sft", "reward", "rlhf"]),
    (["tiny"], "tiny", ["pretrain", "sft", "reward", "rlhf"]),
    (["video"], "video", ["t2v"]),
])
def test_accepts_default_full_and_tiny(tmp_path, args, pipeline_variant, stages):
    proc = quickstart(tmp_path, *args, "--dry_run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    spec = f"experiments/quickstart/pipeline.py:variant={pipeline_variant}"
    assert lines[0].endswith(f"{spec} -> {tmp_path / 'runs'}")
    # One progress line per stage with its expected duration, the same stages as the pipeline file.
    assert [line.split(":")[0] for line in lines[1:]] == [f"[{i + 1}/{len(stages)}] {s}" for i, s in enumerate(stages)]
    assert all(" min on 2 CPU cores" in line for line in lines[1:])
    assert [s["name"] for s in load_pipeline(os.path.join(ROOT, spec))] == stages


def test_default_pretrains_briefly_and_full_keeps_the_long_schedule():
    from seedjax.config import load_config

    fast = load_pipeline(os.path.join(ROOT, "experiments/quickstart/pipeline.py:fast"))
    full = load_pipeline(os.path.join(ROOT, "experiments/quickstart/pipeline.py:full"))
    fast_cfg = load_config(os.path.join(ROOT, fast[0]["config"]))
    full_cfg = load_config(os.path.join(ROOT, full[0]["config"]))
    assert full_cfg.total_steps == 1200
    assert fast_cfg.total_steps < full_cfg.total_steps
    # The default still ends with one sample grid and the prompt accuracy, also with a shorter `steps`.
    assert fast_cfg.eval_every == fast_cfg.sample_every == fast_cfg.total_steps
    short = load_config(os.path.join(ROOT, "experiments/quickstart/pretrain.py:fast,steps=40"))
    assert short.total_steps == short.eval_every == short.sample_every == 40


def test_help_exits_0(tmp_path):
    proc = quickstart(tmp_path, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: bash launch/quickstart.sh")


def test_quickstart_variables_survive_sourcing_env_sh():
    """env.sh is sourced into quickstart.sh: a variable both assign is clobbered when env.sh installs
    (a fresh clone once ran the pipeline file named by env.sh's $spec, the repository root)."""
    import re

    def assigned(path):
        text = open(os.path.join(ROOT, path)).read()
        return set(re.findall(r"(?:^|[\s;(])([A-Za-z_][A-Za-z0-9_]*)=", text, re.M))

    ours = assigned("launch/quickstart.sh") - {"SEEDJAX_QUICKSTART_DIR", "JAX_PLATFORMS"}
    assert not ours & assigned("launch/env.sh")
    # env.sh reads its extras from $1: quickstart.sh sources it with an explicit empty argument.
    assert re.search(r'^source "\$\(dirname "\$0"\)/env.sh" ""', open(os.path.join(ROOT, "launch/quickstart.sh")).read(),
                     re.M)
