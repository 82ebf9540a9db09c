"""The distillation pipeline's tiny variant end to end, as a user runs it.

teacher -> cfg -> tscd -> dmdo -> ode_pairs -> adp -> adm (+ dmd2) through
`python -m seedjax.pipeline`, then the `sample` tool and `python -m seedjax.eval.report` on the
result. The checkpoints are then read back to check what must hold across the chain: frozen
teachers never change, every network is updated by its own optimizer, ODE pairs round-trip.
One shared run (a module fixture) keeps this within a few CPU minutes: one double block, no
single block (and tests/runner.py's cheaper XLA code generation: compilation dominates at this size).
"""

import functools
import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from tests.bundles import assert_bundle_loads
from tests.runner import ROOT, check_reference_losses, env_for, read_metrics

pytestmark = pytest.mark.slow(minutes=12)  # end-to-end runs: tests/conftest.py starts this file first

PIPELINE = "experiments/quickstart/distill_pipeline.py:tiny"
STAGES = ("teacher", "cfg", "tscd", "dmdo", "adp", "adm", "dmd2")
SMALL = ("--config.model.depth_single=0", "--config.disc.levels=(0,)", "--config.sample_every=0")


def run(*args, timeout=1500):
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env_for(1), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("distill"))
    run("seedjax.pipeline", f"--pipeline={PIPELINE}", f"--workdir={workdir}", *SMALL)
    for stage in STAGES:
        check_reference_losses(f"distill_tiny/{stage}", os.path.join(workdir, stage))
    return workdir


@functools.lru_cache(maxsize=None)
def state_at(root, stage):
    from seedjax.train.checkpoint import load_state_tree

    return load_state_tree(os.path.join(root, stage))


def flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_same(a, b, what):
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys(), what
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what}: {k}")


def test_every_stage_trains_to_its_last_step(root):
    with open(os.path.join(root, "pipeline_timings.json")) as f:
        assert set(json.load(f)) == set(STAGES) | {"ode_pairs"}
    for stage in STAGES:
        with open(os.path.join(root, stage, "config.json")) as f:
            total = json.load(f)["total_steps"]
        rows = [r for r in read_metrics(os.path.join(root, stage)) if "loss" in r]
        assert rows[-1]["step"] == total and all(np.isfinite(r["loss"]) for r in rows), stage
        assert str(total) in os.listdir(os.path.join(root, stage, "checkpoints")), stage


def test_the_frozen_teacher_never_changes_along_the_chain(root):
    # CFG distillation's teacher is the pretrained EMA; from TSCD on it is the CFG student's EMA,
    # carried forward stage after stage, bit for bit.
    assert_same(state_at(root, "cfg")["teacher"], state_at(root, "teacher")["ema"]["params"], "cfg teacher")
    cfg_student = state_at(root, "cfg")["ema"]["params"]
    for stage in ("tscd", "dmdo", "adp", "adm", "dmd2"):
        assert_same(state_at(root, stage)["teacher"], cfg_student, f"{stage} teacher")
    # ADM's discriminator backbone is a frozen copy of the teacher too.
    assert_same(state_at(root, "adm")["disc"]["backbone"], cfg_student, "adm discriminator backbone")


def test_each_network_has_its_own_optimizer(root):
    steps = lambda stage, opt: int(np.asarray(state_at(root, stage)[opt]["step"]))
    # dmdo / adm tiny: 4 generator steps, 2 fake-score (and discriminator) updates per generator step.
    assert steps("dmdo", "optimizer") == 4 and steps("dmdo", "fake_optimizer") == 8
    assert steps("adm", "optimizer") == 4 and steps("adm", "fake_optimizer") == 8 and steps("adm", "disc_optimizer") == 4
    assert steps("adp", "optimizer") == 4 and steps("adp", "disc_optimizer") == 4
    # The fake score has moved away from the teacher it started as; the student from its init.
    fake = flat(state_at(root, "dmdo")["fake_score"]["model"])
    teacher = flat(state_at(root, "dmdo")["teacher"])
    assert any(np.any(fake[k] != teacher[k]) for k in teacher)


def test_ode_pairs_round_trip(root):
    """The stored pairs read back through the data pipeline are the 6-NFE student's exact (noise, sample)."""
    import data_pipelines
    from seedjax import inference
    from seedjax.distill.teachers import split_pairs
    from seedjax.tools.ode_pairs import ode_solution

    with open(os.path.join(root, "ode_pairs", "metadata.json")) as f:
        meta = json.load(f)
    assert meta["num_records"] == 16 and meta["ode_pairs"]["nfe"] == 6 and meta["ode_pairs"]["stage"] == "distill_dmd"
    bundle = inference.load(os.path.join(root, "dmdo"))
    data = data_pipelines.default_config()
    data.update(source="shards", path=os.path.join(root, "ode_pairs"), channels=1, max_text_len=32)
    batch = next(data_pipelines.make_train_iterator(data, global_batch_size=4, seed=0, process_index=0,
                                                    process_count=1))
    x0, noise = split_pairs(batch, 1)
    geo = bundle.geometry
    solved = jax.jit(lambda b, z: geo.images_of(ode_solution(bundle, b, geo.tokens(z))))(
        {k: batch[k] for k in ("tokens", "text_mask", "target_size")}, noise)
    np.testing.assert_allclose(np.asarray(solved), x0, rtol=1e-4, atol=1e-4)


def test_inference_bundle_of_every_stage(root):
    """Each stage's bundle holds only the generator (no optimizer, teacher, fake score or
    discriminator is built), with the checkpoint's EMA parameters and the stage's sampler."""
    nfe = {}
    for stage in STAGES:
        bundle = assert_bundle_loads(os.path.join(root, stage))
        nfe[stage] = bundle.nfe
        assert bundle.model.guidance_embedded == (stage != "teacher")
    assert nfe == {"teacher": 8, "cfg": 4, "tscd": 6, "dmdo": 6, "adp": 1, "adm": 1, "dmd2": 1}
    step = os.path.join(root, "adm", "checkpoints", sorted(os.listdir(os.path.join(root, "adm", "checkpoints")))[-1])
    assert assert_bundle_loads(step).step_path == step


def test_sample_tool_runs_a_stage_at_its_nfe(root, tmp_path):
    out = str(tmp_path / "grid.png")
    proc = run("seedjax.tools.sample", f"--workdir={os.path.join(root, 'tscd')}", "--prompt=a handwritten 7",
               "--prompt=the number 3", "--num=2", f"--out={out}")
    assert "at 6 NFE" in proc.stdout
    from PIL import Image

    width, height = Image.open(out).size
    assert width == height >= 2 * 16  # 2 prompts x 2 seeds of 16x16 images
    bad = subprocess.run([sys.executable, "-m", "seedjax.tools.sample", f"--workdir={tmp_path}", "--prompt=x"],
                         cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no config.json" in bad.stderr


def test_report_evaluates_every_stage_on_the_same_prompts(root):
    proc = run("seedjax.eval.report", f"--workdir={root}", f"--pipeline={PIPELINE}", "--num_prompts=8",
               "--diversity_prompts=2", "--samples_per_prompt=2", "--teacher_steps=4", "--grid_prompts=3", "--batch=8")
    with open(os.path.join(root, "report", "report.json")) as f:
        stages = json.load(f)["stages"]
    assert list(stages) == list(STAGES)
    nfe = {name: r["nfe"] for name, r in stages.items()}
    assert nfe == {"teacher": 8, "cfg": 4, "tscd": 6, "dmdo": 6, "adp": 1, "adm": 1, "dmd2": 1}  # CFG counts twice
    for r in stages.values():
        assert 0 <= r["prompt_accuracy"] <= 1 and r["frechet_distance"] >= 0 and r["diversity"] >= 0
    assert "| adm | 1 |" in proc.stdout
    from PIL import Image

    assert Image.open(os.path.join(root, "report", "grid.png")).size[1] >= 7 * 16  # one row per stage of 16x16 images


@pytest.mark.parametrize("stage", ["dmdo", "adp"])
def test_a_distilled_student_exports_to_stablehlo_that_samples_like_the_checkpoint(root, tmp_path, stage):
    """`seedjax.export` of the 6- and 1-NFE students (guidance embedded, their own sampler): the
    StableHLO program gives the images that `seedjax.tools.sample` computes from the checkpoint."""
    from seedjax import export, inference
    from seedjax.serving.run_exported import ExportedGenerator

    out = str(tmp_path / stage)
    assert export.main([f"--workdir={os.path.join(root, stage)}", f"--out={out}", "--formats=bundle,stablehlo",
                        "--platforms=cpu"]) == 0
    model = ExportedGenerator(out)
    assert model.manifest["nfe"] == {"dmdo": 6, "adp": 1}[stage] and model.guidance_kind == "embedded"
    got = model.sample(["a handwritten 7", "the number 3"], num=2, seed=3, size=(16, 16))
    bundle = inference.load(os.path.join(root, stage))
    fn, params = bundle.generate_fn()
    batch = bundle.prompts(["a handwritten 7"] * 2 + ["the number 3"] * 2)
    want = np.asarray(jax.jit(fn)(params, batch, jax.random.key(3)))[:, 0]
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_ode_pair_prompts_wrap_around_the_split_as_often_as_needed():
    # The full chain asks for 4096 pairs of a 1497-prompt split (it used to stop at two passes).
    import data_pipelines
    from seedjax.tools import ode_pairs

    config = types.SimpleNamespace(data=data_pipelines.default_config())
    config.data.update(source="digits", image_size=16)
    rows = ode_pairs.prompts(config, "train", 4096, seed=0)
    assert len(rows) == 4096 and rows[:10] == ode_pairs.prompts(config, "train", 10, seed=0)
    assert len({r["caption"] for r in rows}) < 4096 and {r["label"] for r in rows} == set(range(10))
