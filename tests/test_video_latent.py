"""Latent-space video: a causal video VAE -> video latent shards -> the video DiT on latents.

The latent part of experiments/seedance/pipeline.py:tiny runs as a user runs it (`python -m
seedjax.pipeline`): prepare encodes moving-digit clips with the video VAE, latent_t2v trains on the
shards (text- and image-to-video), and its sample GIF and the video judges get clips decoded by
the frozen VAE, with the pixel frame count (5 pixel frames from 3 latent frames at temporal
factor 2); the judges' first frames are encoded by it. The VAE workdir is a
random-initialised tiny vae_video (its config.json and a checkpoint), not a trained one: compiling
the video VAE's train step alone costs CI minutes, and nothing here needs good reconstructions.
A VAE that did not make the latents, or clips that do not fit its temporal factor, exit 2 with
one line before anything is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from seedjax import config as config_lib
from seedjax.models import codec
from seedjax.models.geometry import Geometry
from seedjax.train.params import latent_factors
from tests.runner import ROOT, env_for, read_metrics

pytestmark = pytest.mark.slow  # end-to-end runs: tests/conftest.py starts this file first

PIPELINE = "experiments/seedance/pipeline.py:tiny"
LATENT_T2V = "experiments/seedance/latent_t2v.py:tiny"


def vae_workdir(path: str, preset: str = "", with_weights: bool = True) -> str:
    """A vae_video:tiny stage workdir (config.json; with_weights: a checkpoint of random weights)."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    arg = "variant=tiny" + (f",preset={preset}" if preset else "")
    cfg = config_lib.load_config(f"experiments/seedance/vae_video.py:{arg}")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config_lib.to_json(cfg))
    if with_weights:
        # rbg keys: threefry's initialisers compile for minutes on a 2-core CPU.
        vae = codec.build_vae(cfg.vae, nnx.Rngs(jax.random.key(0, impl="rbg")))
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(os.path.abspath(path), "checkpoints", str(cfg.total_steps), "state"),
                          {"vae": nnx.to_pure_dict(nnx.state(vae))})
        checkpointer.wait_until_finished()
    return path


def run(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env_for(1), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("seedance"))
    vae_workdir(os.path.join(root, "vae_video"))
    # Image-to-video too (as latent_t2v.py:i2v=True): training conditions on clean latent frame 0,
    # the sample grid on its clips' first latent frames, the judges on first frames encoded by the VAE.
    i2v = ["--config.diffusion.i2v_fraction=0.4", "--config.sampling.i2v=True", "--config.evals.video.i2v=True"]
    proc = run("seedjax.pipeline", f"--pipeline={PIPELINE}", f"--workdir={root}", "--only=latents,latent_t2v", *i2v)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_geometry_of_a_latent_video_run_counts_latent_frames(tmp_path):
    # Hand table: a causal VAE with temporal factor t makes 1 + (F - 1) / t latent frames of
    # F pixel frames, and (H / s, W / s, c) latent grids.
    cases = {("t2s2c4", 5): (3, 8, 4), ("t2s2c4", 9): (5, 8, 4), ("t4s4c8", 17): (5, 4, 8), ("t4s4c8", 1): (1, 4, 8)}
    for (preset, frames), (latent_frames, side, channels) in cases.items():
        cfg = config_lib.load_config(LATENT_T2V, {"input.vae_workdir": vae_workdir(
            str(tmp_path / preset), preset, with_weights=False), "data.video.num_frames": str(frames)})
        geometry = Geometry.of(cfg)
        assert geometry.shape == (latent_frames, side, side, channels), (preset, frames)


def test_latent_pipeline_decodes_samples_to_pixel_frames(latent_run):
    with open(os.path.join(latent_run, "latents", "metadata.json")) as f:
        header = json.load(f)
    assert header["video"] and header["shapes"]["latent"] == [-1, -1, -1, 4]
    assert (header["vae"]["temporal_factor"], header["vae"]["spatial_factor"]) == (2, 2)
    with Image.open(os.path.join(latent_run, "latent_t2v", "samples", "step_8.gif")) as gif:
        assert gif.n_frames == 5  # 3 latent frames decoded: 1 + 2 * 2 pixel frames
        assert gif.size[1] >= 16  # 16x16 pixel frames, not 8x8 latents
    evals = [row for row in read_metrics(os.path.join(latent_run, "latent_t2v")) if "eval/video/motion_accuracy" in row]
    assert evals and 0.0 <= evals[-1]["eval/video/frame_accuracy"] <= 1.0
    assert evals[-1]["eval/video/first_frame_psnr"] > 0  # the decoded frame 0 against the given pixels


def test_latents_of_another_vae_are_refused_with_exit_2(latent_run, tmp_path):
    other = vae_workdir(str(tmp_path / "t4"), "t4s4c4", with_weights=False)
    workdir = str(tmp_path / "run")
    proc = run("seedjax.main", f"--config={LATENT_T2V}", f"--workdir={workdir}",
               f"--config.data.path={latent_run}/latents", f"--config.input.vae_workdir={other}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert "\n" not in err and "t4s4c4" in err and "t2s2c4" in err and "did not make" in err, err
    assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_latent_factor_checks(latent_run, tmp_path):
    good = {"data.path": f"{latent_run}/latents", "input.vae_workdir": f"{latent_run}/vae_video"}
    assert latent_factors(config_lib.load_config(LATENT_T2V, good))["scaling_factor"] > 0
    refused = {
        # 4 pixel frames are not 1 + 2k: the VAE cannot have made them.
        "data.video.num_frames": ("4", "does not fit the video VAE's temporal factor 2"),
        # latents are [f, 8, 8, 4]; 3x3 patches do not tile an 8x8 grid
        "input.patch_size": ("3", "does not divide the 8x8 latent grid"),
    }
    for key, (value, message) in refused.items():
        with pytest.raises(ValueError, match=message):
            latent_factors(config_lib.load_config(LATENT_T2V, {**good, key: value}))


def test_latent_video_exports_with_the_vae_inside_and_samples_image_to_video(latent_run, tmp_path, monkeypatch):
    """The StableHLO program of a latent run holds the frozen video VAE: its encoder for the first
    frame (image-to-video), its decoder for the clip; its clips equal the sample tool's. The
    bundle carries the VAE too: loading it reads neither the VAE run nor the latent shards. The
    sample tool takes a first-frame image at the pixel size (not the latent grid's)."""
    import jax
    import numpy as np

    from seedjax import export, inference
    from seedjax.serving.run_exported import ExportedGenerator

    workdir, out = os.path.join(latent_run, "latent_t2v"), str(tmp_path / "export")
    assert export.main([f"--workdir={workdir}", f"--out={out}", "--formats=bundle,stablehlo", "--platforms=cpu"]) == 0
    bundle = inference.load(workdir)
    fn, params = bundle.generate_fn()
    model = ExportedGenerator(out)
    first = np.linspace(-1.0, 1.0, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)
    for given in (None, first):
        batch = bundle.prompts(["a red 3 moving left"] * 2)
        if given is not None:
            batch["first_frame"] = np.repeat(given[None], 2, 0)
        want = np.asarray(jax.jit(fn)(params, batch, jax.random.key(3)))
        got = model.sample(["a red 3 moving left"], 2, 3, (5, 16, 16), None, given)
        assert got.shape == (2, 5, 16, 16, 3)  # 3 latent frames decoded to 5 pixel frames
        np.testing.assert_allclose(got, want, atol=1e-5)
    from seedjax.train import params as params_lib

    def elsewhere(*args, **kwargs):
        raise AssertionError(f"the export's bundle read outside the export: {args}")

    params_lib._cached_codec.cache_clear()
    monkeypatch.setattr(params_lib, "read_metadata", elsewhere)  # the latent shards' header
    monkeypatch.setattr(params_lib.ckpt_lib, "load_state_tree", elsewhere)  # the VAE run's checkpoint
    loaded = inference.load(out)
    assert loaded.config.input.vae_workdir == os.path.join(os.path.abspath(out), "vae")
    fn_loaded, params_loaded = loaded.generate_fn()
    np.testing.assert_allclose(np.asarray(jax.jit(fn_loaded)(params_loaded, batch, jax.random.key(3))), want, atol=1e-5)
    monkeypatch.undo()
    image = tmp_path / "first.png"
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(image)
    proc = run("seedjax.tools.sample", f"--workdir={workdir}", "--prompt=a red 3 moving left", "--num=1",
               f"--first_frame={image}", f"--out={tmp_path / 'clip.gif'}")
    assert proc.returncode == 0 and "5-frame clip" in proc.stdout, proc.stderr[-3000:]


def test_stream_tool_decodes_each_latent_frame_as_it_comes(latent_run, tmp_path):
    """A latent run streams through its causal video VAE frame by frame (1 pixel frame, then 2 per
    latent frame): the same clip as decoding the whole streamed latent clip at once."""
    import jax
    import numpy as np

    from seedjax import inference
    from seedjax.diffusion.autoregressive import Stream
    from seedjax.tools import stream as stream_tool
    from tests.runner import causal_copy

    causal, out = causal_copy(os.path.join(latent_run, "latent_t2v"), str(tmp_path / "causal")), tmp_path / "out"
    assert stream_tool.main([f"--workdir={causal}", "--prompt=a red 3 moving left", "--frames=3", "--seed=2",
                             f"--out={out}"]) == 0
    got = np.load(out / "frames.npy")
    bundle = inference.load(causal)
    stream = Stream(bundle.model, bundle.geometry, bundle.sampler.sigmas)
    state, latents = stream.start(bundle.prompts(["a red 3 moving left"]), max_frames=3), []
    for _ in range(3):
        tokens, state = stream.next(state, jax.random.key(2))
        latents.append(stream.geometry.frames_of(tokens))
    want = np.clip(np.asarray(jax.jit(bundle.codec.decode_jax)(jax.numpy.concatenate(latents, axis=1))), -1, 1)
    assert got.shape == want.shape == (1, 5, 16, 16, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert len([name for name in os.listdir(out) if name.startswith("frame_")]) == 5
