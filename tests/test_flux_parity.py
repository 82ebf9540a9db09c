"""seedjax MMDiT vs diffusers' FluxTransformer2DModel with the same (random, perturbed) weights."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from seedjax.interop import flux  # noqa: E402
from seedjax.models import mmdit  # noqa: E402
from seedjax.schema.models import mmdit_preset  # noqa: E402

GRID_H, GRID_W, TEXT_LEN, BATCH = 3, 4, 5, 2


def small_flux(guidance_embeds: bool, seed: int = 0):
    torch.manual_seed(seed)
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    ).eval()
    with torch.no_grad():  # non-trivial values everywhere, including norm scales (ones at init)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def inputs(guidance_embeds: bool, seed: int = 1):
    rng = np.random.default_rng(seed)
    img_ids, txt_ids = mmdit.seedream_position_ids(GRID_H, GRID_W, TEXT_LEN)
    return dict(
        x=rng.normal(size=(BATCH, GRID_H * GRID_W, 8)).astype(np.float32),
        text=rng.normal(size=(BATCH, TEXT_LEN, 24)).astype(np.float32),
        pooled=rng.normal(size=(BATCH, 20)).astype(np.float32),
        t=np.array([0.25, 0.8], np.float32),
        guidance=np.array([3.5, 1.5], np.float32) if guidance_embeds else None,
        img_ids=img_ids,
        txt_ids=txt_ids,
    )


def torch_forward(model, a):
    t = lambda x: None if x is None else torch.from_numpy(x)
    with torch.no_grad():
        return model(
            hidden_states=t(a["x"]), encoder_hidden_states=t(a["text"]), pooled_projections=t(a["pooled"]),
            timestep=t(a["t"]), img_ids=t(a["img_ids"]), txt_ids=t(a["txt_ids"]), guidance=t(a["guidance"]),
            return_dict=False,
        )[0].numpy()


def seedjax_forward(model, a, **kw):
    guidance = None if a["guidance"] is None else jnp.asarray(a["guidance"])
    return np.asarray(model(
        jnp.asarray(a["x"]), jnp.asarray(a["t"]), jnp.asarray(a["text"]), jnp.asarray(a["pooled"]),
        text_mask=jnp.ones((BATCH, TEXT_LEN), bool), guidance=guidance, **kw,
    ))


def assert_close(ours, ref):
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, f"max relative error {rel:.2e}"


@pytest.mark.parametrize("guidance_embeds", [False, True])
def test_matches_diffusers(guidance_embeds):
    ref_model = small_flux(guidance_embeds)
    cfg = flux.config_from_diffusers(ref_model.config)
    model = flux.load_state_dict(mmdit.MMDiT(cfg, nnx.Rngs(0)), ref_model.state_dict())
    a = inputs(guidance_embeds)
    ref = torch_forward(ref_model, a)
    assert np.abs(ref).max() > 0.1  # the comparison is not between two near-zero outputs
    # Default ids from grid_hw are the Seedream cross-modal ids fed to diffusers.
    assert_close(seedjax_forward(model, a, grid_hw=(GRID_H, GRID_W)), ref)
    # Flux's own layout (all-zero text ids) given explicitly.
    a["txt_ids"] = np.zeros((TEXT_LEN, 3), np.float32)
    assert_close(seedjax_forward(model, a, img_ids=a["img_ids"], txt_ids=a["txt_ids"]), torch_forward(ref_model, a))


def test_export_import_round_trip_and_diffusers_loads_export(tmp_path):
    cfg = mmdit_preset("tiny")
    cfg.guidance_embed = True
    model = mmdit.MMDiT(cfg, nnx.Rngs(3))
    # Fresh models have zero-initialised layers; fill everything so the round trip is meaningful.
    params = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(0)
    nnx.update(model, jax_tree_random_like(params, rng))
    exported = flux.export_state_dict(model)

    clone = flux.load_state_dict(mmdit.MMDiT(cfg, nnx.Rngs(99)), exported)
    for a, b in zip(leaves(model), leaves(clone)):
        np.testing.assert_array_equal(a, b)
    again = flux.export_state_dict(clone)
    assert exported.keys() == again.keys()
    for key in exported:
        np.testing.assert_array_equal(exported[key], again[key])

    # The saved folder is a real diffusers checkpoint with the same function.
    flux.save_pretrained(model, str(tmp_path))
    ref_model = diffusers.FluxTransformer2DModel.from_pretrained(str(tmp_path)).eval()
    reloaded = flux.from_pretrained(str(tmp_path))
    rng = np.random.default_rng(5)
    a = dict(
        x=rng.normal(size=(BATCH, 4, 16)).astype(np.float32),
        text=rng.normal(size=(BATCH, 3, 128)).astype(np.float32),
        pooled=rng.normal(size=(BATCH, 128)).astype(np.float32),
        t=np.array([0.5, 0.1], np.float32), guidance=np.array([2.0, 4.0], np.float32),
    )
    a["img_ids"], a["txt_ids"] = mmdit.seedream_position_ids(2, 2, 3)
    ref = torch_forward(ref_model, a)
    ours = np.asarray(reloaded(jnp.asarray(a["x"]), jnp.asarray(a["t"]), jnp.asarray(a["text"]),
                               jnp.asarray(a["pooled"]), grid_hw=(2, 2), guidance=jnp.asarray(a["guidance"])))
    assert_close(ours, ref)


def jax_tree_random_like(state, rng):
    return jax.tree.map(lambda x: jnp.asarray(0.05 * rng.standard_normal(x.shape), x.dtype), state)


def leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_conversion_errors_name_the_problem():
    ref_model = small_flux(guidance_embeds=True)
    state = dict(ref_model.state_dict())
    cfg = flux.config_from_diffusers(ref_model.config)

    missing = dict(state)
    del missing["transformer_blocks.1.attn.norm_added_k.weight"]
    with pytest.raises(ValueError, match=r"missing keys \[transformer_blocks\.1\.attn\.norm_added_k\.weight\]"):
        flux.load_state_dict(mmdit.MMDiT(cfg, nnx.Rngs(0)), missing)

    extra = dict(state, **{"transformer_blocks.2.attn.to_q.weight": torch.zeros(32, 32)})
    with pytest.raises(ValueError, match=r"unexpected keys \[transformer_blocks\.2\.attn\.to_q\.weight\]"):
        flux.load_state_dict(mmdit.MMDiT(cfg, nnx.Rngs(0)), extra)

    wrong = dict(state, **{"proj_out.weight": torch.zeros(7, 32)})
    with pytest.raises(ValueError, match=r"shape mismatches \[proj_out\.weight: got \(7, 32\), model needs \(8, 32\)\]"):
        flux.load_state_dict(mmdit.MMDiT(cfg, nnx.Rngs(0)), wrong)

    # A guidance-distilled checkpoint into a model without the guidance embedder.
    cfg.guidance_embed = False
    with pytest.raises(ValueError, match=r"unexpected keys \[time_text_embed\.guidance_embedder\.linear_1\.bias"):
        flux.load_state_dict(mmdit.MMDiT(cfg, nnx.Rngs(0)), state)

    sized = mmdit_preset("tiny")
    sized.size_embed = True
    with pytest.raises(ValueError, match="size embedding"):
        flux.export_state_dict(mmdit.MMDiT(sized, nnx.Rngs(0)))
    x0 = mmdit_preset("tiny")
    x0.prediction = "x0"
    with pytest.raises(ValueError, match="predicts a velocity, config predicts 'x0'"):
        flux.export_state_dict(mmdit.MMDiT(x0, nnx.Rngs(0)))
