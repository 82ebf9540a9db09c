"""python -m seedjax.export on the tiny quickstart run (the session's `straight` run): each format
against an independent reference (the checkpoint read by seedjax.inference, diffusers itself)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from seedjax import export, inference
from seedjax.inference import weights_file
from seedjax.parallel import mesh as mesh_lib
from tests.runner import ROOT, env_for

PROMPTS = ["a handwritten 7", "the number 3"]


@pytest.fixture(scope="module")
def exports(straight, tmp_path_factory):
    """{'float': dir with bundle+stablehlo+diffusers, 'int8': dir with bundle+stablehlo, int8 weights}."""
    root = tmp_path_factory.mktemp("exports")
    dirs = {"float": str(root / "float"), "int8": str(root / "int8")}
    assert export.main([f"--workdir={straight}", f"--out={dirs['float']}", "--formats=bundle,stablehlo,diffusers",
                        "--platforms=cpu"]) == 0
    assert export.main([f"--workdir={straight}", f"--out={dirs['int8']}", "--quantize=int8",
                        "--platforms=cpu"]) == 0
    return dirs


@pytest.fixture(scope="module")
def sample_reference(straight):
    """sample(prompts, num, seed): what `python -m seedjax.tools.sample --prompt=... --num --seed` computes
    from the checkpoint before writing its PNG grid (one compile per batch size, kept for the module)."""
    bundle = inference.load(straight)
    fn, params = bundle.generate_fn()
    jitted, cache = jax.jit(fn), {}

    def sample(prompts: list[str], num: int, seed: int) -> np.ndarray:
        key = (tuple(prompts), num, seed)
        if key not in cache:
            batch = bundle.prompts([p for p in prompts for _ in range(num)])
            cache[key] = np.asarray(jitted(params, batch, jax.random.key(seed)))[:, 0]
        return cache[key]

    return sample


def test_stablehlo_in_a_fresh_jax_only_process_matches_sample_at_two_batch_sizes(exports, sample_reference,
                                                                                  tmp_path):
    one, four = str(tmp_path / "one.npy"), str(tmp_path / "four.npy")
    script = (
        "import sys; from seedjax.serving import run_exported as r\n"
        f"assert r.main(['--model={exports['float']}', '--prompt={PROMPTS[0]}', '--seed=5', '--out={one}']) == 0\n"
        f"assert r.main(['--model={exports['float']}', '--prompt={PROMPTS[0]}', '--prompt={PROMPTS[1]}', '--num=2', "
        f"'--seed=7', '--out={four}']) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'orbax', 'torch', 'optax', 'grain') "
        "or m.startswith(('seedjax.models', 'seedjax.inference', 'seedjax.config')))\n"
        "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env_for(1), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got_one, got_four = np.load(one), np.load(four)
    assert got_one.shape == (1, 16, 16, 1) and got_four.shape == (4, 16, 16, 1)
    ref_one = sample_reference(PROMPTS[:1], 1, 5)
    ref_four = sample_reference(PROMPTS, 2, 7)
    assert np.abs(ref_four).max() > 0.1  # not two blank images
    np.testing.assert_allclose(got_one, ref_one, atol=1e-5)
    np.testing.assert_allclose(got_four, ref_four, atol=1e-5)


def test_manifest_records_source_sampler_and_checksums(straight, exports):
    manifest = json.load(open(os.path.join(exports["float"], "manifest.json")))
    assert manifest["source"] == {"workdir": straight, "checkpoint": os.path.join(straight, "checkpoints", "20"),
                                  "step": 20, "entry": "ema"}
    assert manifest["nfe"] == 8 and manifest["sampler"]["num_steps"] == 4  # 4 steps of true CFG
    assert manifest["sampler"]["guidance_kind"] == "cfg" and manifest["sizes"] == [[16, 16]]
    written = {os.path.relpath(os.path.join(r, n), exports["float"]) for r, _, ns in os.walk(exports["float"])
               for n in ns} - {"manifest.json"}
    assert written == set(manifest["files"])
    from seedjax.serving.run_exported import ExportError, ExportedGenerator, sha256

    for name, entry in manifest["files"].items():
        assert sha256(os.path.join(exports["float"], name)) == entry["sha256"]
    # A damaged file is refused by the runner.
    broken = os.path.join(os.path.dirname(exports["float"]), "broken")
    os.makedirs(broken)
    for name in ("manifest.json", "params.safetensors", "stablehlo"):
        os.symlink(os.path.join(exports["float"], name), os.path.join(broken, name))
    manifest["files"]["params.safetensors"]["sha256"] = "0" * 64
    os.remove(os.path.join(broken, "manifest.json"))
    json.dump(manifest, open(os.path.join(broken, "manifest.json"), "w"))
    with pytest.raises(ExportError, match="sha256"):
        ExportedGenerator(broken)


def test_bundle_reloads_the_checkpoint_params_onto_1_and_8_devices(straight, exports, sample_reference, caplog):
    with caplog.at_level(logging.WARNING):
        original = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(inference.load(straight).model)))
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # orbax's stray warnings reach users
    one = inference.load(exports["float"], mesh=mesh_lib.make_mesh({"data": 1}, jax.devices()[:1]))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(one.model))), original)
    assert one.nfe == 8 and one.entry == "ema" and len(jax.tree.leaves(one.model)[0].sharding.device_set) == 1
    eight = inference.load(exports["float"], mesh=mesh_lib.make_mesh({"data": 1, "fsdp": 8}))
    kernel = eight.model.dit.double_blocks[0].img.mlp.up.kernel[...]
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(eight.model))), original)
    fn, params = eight.generate_fn()
    captions = [p for p in PROMPTS for _ in range(2)]
    sharded = np.asarray(jax.jit(fn)(params, eight.prompts(captions), jax.random.key(7)))[:, 0]
    np.testing.assert_allclose(sharded, sample_reference(PROMPTS, 2, 7), atol=1e-5)


def test_int8_files_are_smaller_and_images_close_to_float(exports, sample_reference):
    sizes = {k: os.path.getsize(os.path.join(d, "params.safetensors")) for k, d in exports.items()}
    assert sizes["int8"] < 0.3 * sizes["float"], sizes  # measured 0.27: int8 + a float scale per channel
    manifest = json.load(open(os.path.join(exports["int8"], "manifest.json")))
    q = manifest["quantization"]
    assert q["dit_stored_bytes"] < 0.27 * q["dit_float_bytes"], q
    flat = weights_file.load(os.path.join(exports["int8"], "params.safetensors"))
    assert flat["dit/double_blocks/0/img/q/kernel"].dtype == np.int8
    assert flat["dit/double_blocks/0/img/q/kernel:scale"].shape == (96,)  # one scale per output channel
    from seedjax.serving.run_exported import ExportedGenerator

    int8 = ExportedGenerator(exports["int8"]).sample(PROMPTS, 2, 7, (16, 16))
    floats = sample_reference(PROMPTS, 2, 7)
    # Stated tolerance: within 0.02 of float (1% of the [-1, 1] range) everywhere; measured 7e-5 on this
    # barely trained model (BENCHMARKS.md has the trained quickstart's numbers).
    assert 0 < np.abs(int8 - floats).max() < 0.02
    # The int8 bundle is dequantized at load: int8 values times their per-channel scale, by hand here.
    loaded = weights_file.flatten(nnx.to_pure_dict(nnx.state(inference.load(exports["int8"]).model)))
    q_kernel, scale = flat["dit/double_blocks/0/img/q/kernel"], flat["dit/double_blocks/0/img/q/kernel:scale"]
    np.testing.assert_array_equal(loaded["dit/double_blocks/0/img/q/kernel"],
                                  q_kernel.astype(np.float32) * scale[None, :])
    np.testing.assert_array_equal(loaded["dit/double_blocks/0/img/q/bias"], flat["dit/double_blocks/0/img/q/bias"])


def test_diffusers_folder_loads_in_diffusers_and_matches(exports):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from seedjax.models import mmdit

    bundle = inference.load(exports["float"])
    folder = os.path.join(exports["float"], "diffusers", "transformer")
    reference = diffusers.FluxTransformer2DModel.from_pretrained(folder).eval()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 16, 16)).astype(np.float32)
    text = rng.normal(size=(2, 32, 96)).astype(np.float32)
    pooled = rng.normal(size=(2, 96)).astype(np.float32)
    t = np.array([0.3, 0.9], np.float32)
    img_ids, txt_ids = mmdit.seedream_position_ids(4, 4, 32)
    with torch.no_grad():
        ref = reference(hidden_states=torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(text),
                        pooled_projections=torch.from_numpy(pooled), timestep=torch.from_numpy(t),
                        img_ids=torch.from_numpy(img_ids), txt_ids=torch.from_numpy(txt_ids),
                        return_dict=False)[0].numpy()
    ours = np.asarray(bundle.model.dit(x, t, text, pooled, text_mask=np.ones((2, 32), bool), grid_hw=(4, 4)))
    assert np.abs(ref).max() > 0.01  # the barely trained model's output is small
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


def test_diffusers_refuses_what_it_cannot_express():
    from seedjax.schema.models import mmdit_config
    from seedjax.serving import diffusers_export

    cfg = mmdit_config()
    cfg.prediction = "x0"
    fake = types.SimpleNamespace(model=types.SimpleNamespace(is_video=False, dit=types.SimpleNamespace(cfg=cfg)),
                                 codec=None)
    with pytest.raises(ValueError, match="^diffusers: .*x0"):
        diffusers_export.check(fake)


@pytest.mark.parametrize("flags, message", [
    (["--formats=bundle,onnx"], "--formats"),
    (["--sizes=15x16"], "multiples of 4"),
    (["--sizes=big"], "--sizes"),
    (["--quantize=int4"], "--quantize"),
    (["--batch=0"], "--batch"),
])
def test_bad_flags_exit_2_with_one_line_and_write_nothing(straight, tmp_path, capsys, flags, message):
    out = str(tmp_path / "out")
    assert export.main([f"--workdir={straight}", f"--out={out}", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not os.path.exists(out)


def test_the_runner_splits_shots_as_the_bundle_does():
    """run_exported cannot import the bundle (jax and numpy only), so it has its own copy of the
    multi-shot caption rule; the two must agree or an export's clips differ from the sample tool's."""
    from seedjax.inference.bundle import split_shots as bundle_split
    from seedjax.serving.run_exported import split_shots as runner_split

    captions = ["a red 3 moving left", "shot 1: a red 3 moving left; shot 2: a blue 5 moving up",
                "  shot 1: a 7;shot 2: a 1 ; shot 3: a 2  ", "shot 1: only one shot", "a shot 1: not a shot list",
                "shot 1: a 3; shot 2:", ""]
    for caption in captions:
        assert runner_split(caption) == bundle_split(caption), caption
    assert runner_split(captions[2]) == ["a 7", "a 1", "a 2"]
