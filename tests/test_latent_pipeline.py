"""The latent-space quickstart end to end: VAE -> cached latents -> MMDiT on latents.

`python -m seedjax.pipeline --pipeline=experiments/quickstart/latent_pipeline.py:tiny` as a
user runs it (one shared run, a module fixture), then what must hold: the MMDiT trained on
8x8x4 latents, its sample grid and its evaluation are decoded 32x32 pixels, and a latent
config that cannot work exits 2 with one line naming the key before anything runs.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.bundles import assert_bundle_loads, assert_no_generator
from tests.runner import ROOT, check_reference_losses, env_for, read_metrics

pytestmark = pytest.mark.slow  # end-to-end runs: tests/conftest.py starts this file first

PIPELINE = "experiments/quickstart/latent_pipeline.py:tiny"
LATENT = "experiments/quickstart/latent_pretrain.py:tiny"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("latent"))
    env = env_for(1)
    proc = subprocess.run([sys.executable, "-m", "seedjax.pipeline", f"--pipeline={PIPELINE}", f"--workdir={workdir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for stage in ("vae", "latent_pretrain"):
        check_reference_losses(f"latent_tiny/{stage}", os.path.join(workdir, stage))
    return workdir


def test_latents_are_cached_with_the_vae_factors(root):
    with open(os.path.join(root, "latents", "metadata.json")) as f:
        header = json.load(f)
    assert header["kind"] == "latents" and header["shapes"]["latent"][-1] == 4
    assert header["vae"]["downsample_factor"] == 4 and header["vae"]["scaling_factor"] > 0
    with open(os.path.join(root, "latent_pretrain", "config.json")) as f:
        config = json.load(f)
    assert config["input"]["key"] == "latent" and config["input"]["vae_workdir"] == os.path.join(root, "vae")


def test_latent_pretrain_trains_and_samples_decoded_pixels(root):
    from PIL import Image

    workdir = os.path.join(root, "latent_pretrain")
    rows = [r for r in read_metrics(workdir) if "loss" in r]
    assert rows[-1]["step"] == 20 and all(np.isfinite(r["loss"]) for r in rows)
    # 4 samples in a 2x2 grid with 2-pixel padding: 32x32 decoded digits, not 8x8 latents.
    with Image.open(os.path.join(workdir, "samples", "step_20.png")) as grid:
        assert grid.size == (2 * (32 + 2) + 2,) * 2


def test_latent_pretrain_evaluates_decoded_images(root):
    evals = [r for r in read_metrics(os.path.join(root, "latent_pretrain")) if "eval/prompt_accuracy" in r]
    assert evals and evals[-1]["step"] == 20
    assert 0.0 <= evals[-1]["eval/prompt_accuracy"] <= 1.0 and np.isfinite(evals[-1]["eval/frechet_distance"])


def test_sampling_decodes_with_the_factors_the_latents_were_made_with(root):
    from seedjax.config import load_config
    from seedjax.models.geometry import Geometry
    from seedjax.train.params import latent_codec, to_pixels

    cfg = load_config(LATENT)
    cfg.data.path, cfg.input.vae_workdir = os.path.join(root, "latents"), os.path.join(root, "vae")
    assert Geometry.of(cfg).shape == (1, 8, 8, 4)
    codec = latent_codec(cfg)
    with open(os.path.join(root, "latents", "metadata.json")) as f:
        made_with = json.load(f)["vae"]
    assert (codec.scaling_factor, codec.shift_factor) == (made_with["scaling_factor"], made_with["shift_factor"])
    latents = np.random.default_rng(0).normal(size=(2, 1, 8, 8, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(to_pixels(latents, cfg))[:, 0], codec.decode(latents[:, 0]), atol=1e-5)


def test_inference_bundle_of_a_latent_run_decodes_pixels(root):
    """The latent generator's bundle carries its VAE and samples decoded 32x32 pixels; the VAE
    run itself has no generator to load."""
    bundle = assert_bundle_loads(os.path.join(root, "latent_pretrain"))
    assert bundle.codec is not None and bundle.geometry.shape == (1, 8, 8, 4)
    images = bundle.generate(bundle.prompts(["a handwritten 3"]), jax.random.key(0))
    assert images.shape[:4] == (1, 1, 32, 32)
    assert_no_generator(os.path.join(root, "vae"))


@pytest.mark.parametrize("config, overrides, key", [
    (LATENT, ["data.path={root}/latents"], "config.input.vae_workdir"),
    (LATENT, ["data.path={root}/latents", "input.vae_workdir={root}"], "config.input.vae_workdir"),
    (LATENT, ["input.vae_workdir={root}/vae"], "config.data.path"),
    (LATENT, ["data.path={root}/vae", "input.vae_workdir={root}/vae"], "config.data.path"),
    (LATENT, ["data.source=digits", "input.vae_workdir={root}/vae"], "config.data.path"),
    (LATENT, ["data.path={root}/latents", "input.vae_workdir={root}/vae", "model.in_channels=12"],
     "config.model.in_channels"),
    ("experiments/quickstart/pretrain.py:tiny", ["input.key=latents"], "config.input.key"),
    ("experiments/quickstart/sft.py:tiny", ["init_from={root}/latent_pretrain", "input.key=latent"],
     "config.input.key"),
])
def test_latent_configs_that_cannot_work_exit_2_naming_the_key(root, tmp_path, capsys, config, overrides, key):
    from seedjax.main import main

    workdir = str(tmp_path / "run")
    code = main([f"--config={config}", f"--workdir={workdir}",
                 *[f"--config.{o.replace('{root}', root)}" for o in overrides]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and key in err and "\n" not in err, err
    assert not os.path.exists(workdir)
