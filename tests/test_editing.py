"""Instruction editing (issue 17): reference images packed after the target, against diffusers'
FLUX.1 Kontext, a hand-packed sampler, the edit judge on real triples, and the T2I -> edit pipeline."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines.core.tokenizer import tokenize
from data_pipelines.sources import edit_triples
from seedjax.config import ConfigError, load_config
from seedjax.diffusion import tasks
from seedjax.diffusion.sampling import Sampler
from seedjax.models import generator, mmdit, rope, text
from seedjax.models.geometry import Geometry, PackedGeometry
from seedjax.train.stage import load_stage
from seedjax.train.validate import validate_config, validate_data
from tests.runner import ROOT, check_reference_losses, env_for, read_metrics
from tests.test_mmdit import randomized


def edit_config(**overrides):
    return load_config(f"{ROOT}/experiments/seedream/edit.py:variant=tiny", {k: str(v) for k, v in overrides.items()})


def edit_batch(cfg, n=2, num_references=(1, 2), seed=0):
    rng = np.random.default_rng(seed)
    size = cfg.data.image_size
    tokens, mask = tokenize(["make the red 3 blue", "put the 2 of image 1 at the top left"][:n], cfg.data.max_text_len)
    return {"tokens": jnp.asarray(tokens), "text_mask": jnp.asarray(mask),
            "source": jnp.asarray(rng.uniform(-1, 1, (n, 2, size, size, 3)), jnp.float32),
            "num_sources": jnp.asarray(num_references, jnp.int32)}


# ----------------------------------------------------------------------------- FLUX.1 Kontext


def kontext_id_preparation():
    """diffusers' FluxKontextPipeline._prepare_latent_image_ids, read from the installed file: the
    pipeline module imports transformers (text encoders), which the tests do not install, and the
    id preparation needs only torch. Also checks that the pipeline still sets the image's first
    id axis to 1."""
    import ast
    import importlib.util

    import torch

    path = os.path.join(importlib.util.find_spec("diffusers").submodule_search_locations[0],
                        "pipelines", "flux", "pipeline_flux_kontext.py")
    source = open(path).read()
    assert "image_ids[..., 0] = 1" in source, "FluxKontextPipeline no longer marks the image with id 1"
    tree = ast.parse(source)
    pipeline = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FluxKontextPipeline")
    fn = next(n for n in pipeline.body if isinstance(n, ast.FunctionDef) and n.name == "_prepare_latent_image_ids")
    fn.decorator_list = []
    scope = {"torch": torch}
    exec(compile(ast.Module([fn], []), path, "exec"), scope)
    return scope["_prepare_latent_image_ids"]


def test_kontext_packing_and_output_match_diffusers():
    """A target + one reference: seedjax's packed ids equal FluxKontextPipeline's (latent ids, then
    the image's with the first axis set to 1), and the MMDiT on the packed sequence equals
    diffusers' FluxTransformer2DModel with the same weights, with seedjax's text ids and with
    Flux's all-zero ones."""
    torch = pytest.importorskip("torch")
    from seedjax.interop import flux
    from tests.test_flux_parity import small_flux

    grid_h, grid_w, text_len, batch = 3, 4, 5, 2
    target = Geometry.image(grid_h, grid_w, 8, 1)  # patch 1: a token is one 8-channel latent pixel
    prepare = kontext_id_preparation()
    latent_ids = prepare(batch, grid_h, grid_w, "cpu", torch.float32)
    image_ids = prepare(batch, grid_h, grid_w, "cpu", torch.float32)
    image_ids[..., 0] = 1
    theirs = torch.cat([latent_ids, image_ids]).numpy()

    ref_model = small_flux(guidance_embeds=True)
    cfg = flux.config_from_diffusers(ref_model.config, reference_rope="kontext")
    model = flux.load_state_dict(mmdit.MMDiT(cfg, nnx.Rngs(0)), ref_model.state_dict())
    rng = np.random.default_rng(3)
    x = rng.normal(size=(batch, target.num_tokens, 8)).astype(np.float32)
    cond = {"references": rng.normal(size=(batch, 1, grid_h, grid_w, 8)).astype(np.float32),
            "num_references": np.ones(batch, np.int32),
            "text_embeddings": rng.normal(size=(batch, text_len, 24)).astype(np.float32)}
    packed, image_mask, img_ids, txt_ids = generator.pack_references(jnp.asarray(x), cond, target, cfg)
    np.testing.assert_array_equal(img_ids, theirs)
    assert bool(jnp.all(image_mask)) and packed.shape == (batch, 2 * target.num_tokens, 8)
    pooled = rng.normal(size=(batch, 20)).astype(np.float32)
    t, guidance = np.array([0.3, 0.9], np.float32), np.array([2.5, 4.0], np.float32)
    for text_ids in (np.asarray(txt_ids), np.zeros((text_len, 3), np.float32)):
        with torch.no_grad():
            ref = ref_model(hidden_states=torch.from_numpy(np.array(packed)),
                            encoder_hidden_states=torch.from_numpy(cond["text_embeddings"]),
                            pooled_projections=torch.from_numpy(pooled), timestep=torch.from_numpy(t),
                            img_ids=torch.from_numpy(theirs), txt_ids=torch.from_numpy(text_ids),
                            guidance=torch.from_numpy(guidance), return_dict=False)[0].numpy()
        ours = np.asarray(model(packed, jnp.asarray(t), jnp.asarray(cond["text_embeddings"]), jnp.asarray(pooled),
                                image_mask=image_mask, img_ids=img_ids, txt_ids=text_ids, guidance=jnp.asarray(guidance)))
        rel = np.abs(ours - ref).max() / np.abs(ref).max()
        assert np.abs(ref).max() > 0.1 and rel < 1e-4, f"max relative error {rel:.2e}"


# ----------------------------------------------------------------------------- the generator with references


@pytest.fixture(scope="module")
def tiny_model():
    cfg = edit_config()
    return cfg, randomized(generator.build(cfg, nnx.Rngs(0)), scale=0.05)


def test_an_unused_reference_slot_is_the_same_as_no_slot(tiny_model):
    """Example 0 uses one of two slots: its velocity equals that of a batch with one slot, whatever
    the unused slot holds; example 1 uses both, so changing slot 2 changes it. Only the target's
    tokens come back."""
    cfg, model = tiny_model
    geometry = Geometry.of(cfg)
    batch = tasks.edit_task(edit_batch(cfg))
    x = geometry.noise(jax.random.key(1), 2)
    t = jnp.array([0.7, 0.4])
    v = model(x, t, model.condition(batch), geometry)
    assert v.shape == x.shape
    other = batch | {"references": batch["references"].at[:, 1].set(0.5)}
    v_other = model(x, t, model.condition(other), geometry)
    np.testing.assert_array_equal(np.asarray(v[0]), np.asarray(v_other[0]))
    assert np.abs(np.asarray(v[1] - v_other[1])).max() > 1e-3
    one_slot = batch | {"references": batch["references"][:, :1], "num_references": jnp.ones(2, jnp.int32)}
    np.testing.assert_allclose(np.asarray(model(x, t, model.condition(one_slot), geometry))[0], np.asarray(v[0]),
                               atol=1e-5)


@pytest.mark.parametrize("reference_scale", [1.0, 1.5])
def test_edit_sampling_equals_a_hand_packed_euler_loop_with_cfg(tiny_model, reference_scale):
    """Sampler.generate on an edit batch (true CFG: the empty instruction keeps the references;
    reference guidance: a third branch with neither) against Euler steps written out here, the
    MMDiT called on [target | used references] with ids from rope.image_position_ids and an index
    per reference."""
    cfg, model = tiny_model
    geometry = Geometry.of(cfg)
    batch = tasks.edit_task(edit_batch(cfg))
    sampler = Sampler.make(3, shift=1.0, cfg_scale=2.5, reference_scale=reference_scale)
    assert sampler.nfe == 3 * (2 if reference_scale == 1 else 3)
    ours = np.asarray(sampler.generate(model, batch, geometry, jax.random.key(7)))

    grid = geometry.grid_hw
    noise = geometry.noise(jax.random.key(7), 2)
    empty_tokens, empty_mask = text.empty_caption(cfg.data.max_text_len)
    sigmas = np.asarray(sampler.sigmas)
    rows = []
    for i in range(2):
        used = int(batch["num_references"][i])
        _, txt_ids = rope.seedream_position_ids(*grid, cfg.data.max_text_len)

        def velocity(x, s, tokens, mask, used):
            refs = [geometry.tokens(batch["references"][i:i + 1, r]) for r in range(used)]
            ids = np.concatenate([rope.image_position_ids(*grid) + [r, 0, 0] for r in range(used + 1)])
            emb, pooled = model.text(tokens[None], mask[None].astype(bool))
            out = model.dit(jnp.concatenate([x, *refs], 1), jnp.full((1,), s), emb, pooled,
                            text_mask=mask[None].astype(bool), img_ids=ids, txt_ids=txt_ids)
            return out[:, :geometry.num_tokens]

        x = noise[i:i + 1]
        empty = jnp.asarray(empty_tokens), jnp.asarray(empty_mask)
        for k in range(len(sigmas) - 1):
            v_c = velocity(x, sigmas[k], batch["tokens"][i], batch["text_mask"][i], used)
            v_u = velocity(x, sigmas[k], *empty, used)
            v = v_u + 2.5 * (v_c - v_u)
            if reference_scale != 1:
                v_none = velocity(x, sigmas[k], *empty, 0)
                v = v_none + reference_scale * (v_u - v_none) + 2.5 * (v_c - v_u)
            x = x + (sigmas[k + 1] - sigmas[k]) * v
        rows.append(np.asarray(geometry.frames_of(x)))
    np.testing.assert_allclose(ours, np.concatenate(rows), atol=2e-5)


def test_reference_dropout_masks_every_reference_of_a_fraction_of_the_examples():
    batch = edit_batch(edit_config(), num_references=(2, 1))
    batch = {k: jnp.repeat(v, 500, axis=0) for k, v in batch.items()}
    kept = tasks.edit_task(batch, jax.random.key(0), 0.0)["num_references"]
    np.testing.assert_array_equal(kept, batch["num_sources"])
    dropped = np.asarray(tasks.edit_task(batch, jax.random.key(0), 0.3)["num_references"])
    assert set(np.unique(dropped)) == {0, 1, 2} and abs(np.mean(dropped == 0) - 0.3) < 0.05
    assert np.all((dropped == 0) | (dropped == np.asarray(batch["num_sources"])))


def test_empty_captions_keep_the_references():
    batch = tasks.edit_task(edit_batch(edit_config()))
    uncond = generator.empty_captions(batch)
    assert set(generator.REFERENCE_KEYS) <= set(uncond)
    np.testing.assert_array_equal(uncond["references"], batch["references"])


# ----------------------------------------------------------------------------- the judge


def test_edit_judge_passes_real_targets_and_fails_the_unedited_sources():
    from seedjax.eval.judges import classifier, edits

    cfg = edit_triples.EditConfig()
    rows = [edit_triples.make_edit(i, cfg, seed=0, split="test") for i in range(40)]
    keys = [k for k in rows[0] if isinstance(rows[0][k], np.ndarray) or isinstance(rows[0][k], np.generic)]
    batch = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in keys}
    batch["source"] = batch["source"].astype(np.float32) / 127.5 - 1.0
    targets = batch["target"].astype(np.float32) / 127.5 - 1.0
    judge = classifier.get_classifier(32)
    real = edits.judge_edits(targets, batch, judge)
    summary = edits.summarize(real)
    assert summary["edit_success"] >= 0.9 and summary["untouched_kept"] >= 0.95, summary
    assert summary["preserved_psnr"] == 60.0  # the real target equals its source outside the changed boxes
    unedited = edits.judge_edits(batch["source"][:, 0], batch, judge)  # "edit" = hand back the source
    assert np.mean(unedited["success"]) <= 0.1 and np.mean(unedited["edit"]) <= 0.2
    blurred = edits.judge_edits(np.clip(targets + 0.2, -1, 1), batch, judge)
    assert edits.summarize(blurred)["preserved_psnr"] < 25


# ----------------------------------------------------------------------------- configs


def test_edit_batches_only_for_stages_that_read_them():
    cfg = edit_config()
    validate_config(cfg)
    assert load_stage("pretrain").reads_edits and not load_stage("sft").reads_edits
    with pytest.raises(ConfigError, match="edit_triples makes editing batches .* this stage does not read"):
        validate_data(cfg.data, "config.data", reads_edits=False)
    with pytest.raises(ConfigError, match=r"editing data \(data.source=edit_triples or edit_jsonl\) trains the MMDiT on pixel"):
        validate_config(edit_config(**{"input.key": "latent"}))


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow(minutes=2)
def test_text_to_image_then_edit_pipeline(tmp_path):
    """The recipe's pipeline as a user runs it: a T2I run, then joint generation and editing from its
    weights; losses as recorded, the edit judges on held-out triples (the real targets judged
    right) and the scene judges on held-out prompts; then the edit tool on a user's image."""
    root = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "seedjax.pipeline", "--pipeline=experiments/seedream/edit_pipeline.py:"
                           "variant=tiny", f"--workdir={root}", "--config.sample_every=0"],
                          cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    edit = os.path.join(root, "edit")
    check_reference_losses("edit_tiny", edit)
    evals = [r for r in read_metrics(edit) if "eval/edit_success" in r][-1]
    assert evals["eval/edit_success_real"] >= 0.85 and 0 <= evals["eval/edit_success"] <= 1
    assert 0 <= evals["eval/prompt_accuracy"] <= 1 and evals["eval/classifier_test_accuracy"] > 0.9  # T2I, same step
    assert np.isfinite(evals["eval/preserved_psnr"]) and evals["eval/preserved_psnr_real"] == 60.0
    config = json.load(open(os.path.join(edit, "config.json")))
    assert config["init_from"] == os.path.join(root, "t2i")
    assert {c["source"] for c in config["data"]["mixture"].values()} == {"edit_triples", "digit_scenes"}
    assert json.load(open(os.path.join(root, "t2i", "config.json")))["data"]["max_text_len"] == 64

    # The edit tool on a user's image: the input and two edits in one row; bad input exits 2, writes nothing.
    from PIL import Image

    image, out = str(tmp_path / "scene.png"), str(tmp_path / "out" / "edited.png")
    Image.fromarray(edit_triples.make_edit(0, split="test")["source"][0]).resize((48, 40)).save(image)
    tool = lambda *flags: subprocess.run([sys.executable, "-m", "seedjax.tools.edit", *flags], cwd=ROOT,
                                         env=env_for(1), capture_output=True, text=True, timeout=300)
    proc = tool(f"--workdir={edit}", f"--image={image}", "--instruction=make the red 3 blue", f"--out={out}", "--num=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Image.open(out).size[1] == 32 + 2 * 2 and "2 edit(s)" in proc.stdout  # one row at the run's size
    (tmp_path / "broken.png").write_bytes(b"not a png")
    for flags, message in (([f"--workdir={root}/t2i", f"--image={image}"], "not an editing run"),
                           ([f"--workdir={edit}", f"--image={tmp_path}/broken.png"], "not a readable image"),
                           ([f"--workdir={edit}"] + [f"--image={image}"] * 3, "takes 1 to 2")):
        bad = str(tmp_path / "bad" / "x.png")
        proc = tool(*flags, "--instruction=remove the 3", f"--out={bad}")
        assert proc.returncode == 2 and message in proc.stderr and not os.path.exists(bad), proc.stderr[-2000:]


# ----------------------------------------------------------------------------- your own edit triples


def write_manifest(tmp_path) -> str:
    """A manifest of your own edits: five usable lines (sizes 40x48 and 32x32, one or two sources)
    and one line of each kind that is skipped."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, (h, w) in {"a": (40, 48), "b": (40, 48), "c": (32, 32), "d": (32, 32), "e": (20, 24)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    lines = [{"source": "a.png", "instruction": "make it red", "target": "b.png"},
             {"source": ["a.png", "c.png"], "instruction": "the cat of image 2 into image 1", "target": "b.png"},
             {"source": "c.png", "instruction": "keep it", "target": "c.png"},
             {"source": ["d.png"], "instruction": "blur it", "target": "c.png"},
             {"source": "d.png", "instruction": "sharpen it", "target": "d.png"},
             "not json {",
             {"source": "a.png", "target": "b.png"},                                      # missing_caption
             {"source": "broken.png", "instruction": "x", "target": "b.png"},             # unreadable_image
             {"source": "e.png", "instruction": "x", "target": "b.png"},                  # wrong_shape
             {"source": ["a.png", "c.png", "d.png"], "instruction": "x", "target": "b.png"}]  # bad_manifest_line
    manifest = tmp_path / "edits.jsonl"
    manifest.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(manifest)


def test_your_own_edit_triples_are_read_and_bad_lines_skipped_and_counted(tmp_path):
    import data_pipelines
    from data_pipelines.sources.user_edits import EditManifestSource

    source = EditManifestSource(write_manifest(tmp_path))
    assert len(source) == 5
    assert {k: n for k, (n, _) in source.scan_skips.items()} == \
        {"bad_manifest_line": 2, "missing_caption": 1, "unreadable_image": 1, "wrong_shape": 1}
    cfg = data_pipelines.default_config()
    cfg.source, cfg.path, cfg.image_size, cfg.read_buffer, cfg.max_text_len = "edit_jsonl", source.name, 32, 0, 64
    batch = data_pipelines.make_eval_batch(cfg, num=5, seed=0, allow_fewer=True)
    assert batch["source"].shape == (5, 2, 32, 32, 3) and batch["target"].shape == (5, 32, 32, 3)
    assert sorted(batch["num_sources"].tolist()) == [1, 1, 1, 1, 2]
    one = batch["num_sources"] == 1
    assert not batch["source"][one, 1].any()  # an unused slot is empty
    same = [i for i in range(5) if np.array_equal(batch["source"][i, 0], batch["target"][i])]
    assert len(same) == 2  # c -> c and d -> d: fit alike, so still equal


def test_your_own_edits_mix_with_generated_edits_and_images(tmp_path):
    """A joint mixture of your edits, generated triples and scene images: every row has the keys
    your edits have (no generated edit labels), an image row is an edit without sources, and the
    scene labels are the target's where known."""
    import data_pipelines

    cfg = data_pipelines.default_config()
    cfg.image_size, cfg.read_buffer, cfg.max_text_len = 32, 0, 64
    cfg.mixture = {"mine": {"source": "edit_jsonl", "path": write_manifest(tmp_path)},
                   "triples": {"source": "edit_triples"}, "scenes": {"source": "digit_scenes"}}
    cfg.edits.num_samples = cfg.scenes.num_samples = 64
    batch = next(data_pipelines.make_train_iterator(cfg, global_batch_size=24, seed=0, process_index=0,
                                                    process_count=1))
    assert {"source", "target", "image", "num_sources", "scene_count", "tokens"} <= set(batch)
    assert not {"edit_type_id", "changed_boxes", "target_digit"} & set(batch)
    images = batch["num_sources"] == 0
    np.testing.assert_array_equal(batch["image"], batch["target"])
    assert not batch["source"][images].any() and (batch["scene_count"][images] > 0).all()
    yours = (batch["num_sources"] > 0) & (batch["scene_count"] == 0)
    generated = (batch["num_sources"] > 0) & (batch["scene_count"] > 0)
    assert images.any() and yours.any() and generated.any(), batch["num_sources"]
    assert (batch["scene_digit"][yours] == -1).all()
    bad = cfg.copy_and_resolve_references()
    bad.mixture = {"mine": {"source": "edit_jsonl", "path": cfg.mixture.mine.path}, "clips": {"source": "moving_digits"}}
    with pytest.raises(ValueError, match="edit_jsonl mixes with image sources .* not with moving_digits"):
        data_pipelines.make_eval_batch(bad, num=2, seed=0)


@pytest.mark.slow(minutes=1)
def test_training_on_your_own_edits_with_text_to_image_samples_and_edits(tmp_path):
    """Joint training on your edits and scene captions (edit.py's manifest and t2i_share), cached
    references and meta-info on, the text-to-image judge at the end, then the edit tool on the run."""
    manifest = write_manifest(tmp_path)
    workdir = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "seedjax.main",
                           f"--config=experiments/seedream/edit.py:variant=tiny,t2i_share=0.3,manifest={manifest}",
                           f"--workdir={workdir}", "--config.model.reference_attention=cached",
                           "--config.model.meta_embed=true", "--config.total_steps=4", "--config.log_every=2",
                           "--config.checkpoint_every=4", "--config.sample_every=4", "--config.eval_every=4"],
                          cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert {c["source"] for c in config["data"]["mixture"].values()} == {"edit_jsonl", "digit_scenes"}
    assert 0 <= [r for r in read_metrics(workdir) if "eval/prompt_accuracy" in r][-1]["eval/prompt_accuracy"] <= 1
    from PIL import Image

    grid = Image.open(os.path.join(workdir, "samples", "step_4.png"))
    assert grid.size[0] >= 3 * 32 > grid.size[1] / 4  # a row per edit: source(s), the edit, the target
    assert np.isfinite([r["loss"] for r in read_metrics(workdir) if "loss" in r]).all()
    out = str(tmp_path / "edited.png")
    proc = subprocess.run([sys.executable, "-m", "seedjax.tools.edit", f"--workdir={workdir}",
                           f"--image={tmp_path}/a.png", "--instruction=make it red", f"--out={out}"],
                          cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and os.path.exists(out), proc.stderr[-2000:]
