"""MMDiT behaviour: position ids, patchify, attention dispatch, masking, remat, dtypes, FLOPs, sharding."""

import math

import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from seedjax.diffusion import flow
from seedjax.models import attention as attention_lib
from seedjax.models import mmdit
from seedjax.parallel import sharding
from seedjax.schema.models import mmdit_preset

B, GRID, T = 2, (2, 3), 5


def tiny_config(**overrides):
    cfg = mmdit_preset("tiny")
    cfg.update(num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6), depth_double=1, depth_single=1,
               text_dim=24, pooled_dim=20, in_channels=8)
    cfg.update(overrides)
    return cfg


def randomized(model, seed=0, scale=0.1):
    """Fill every parameter (zero-initialised ones too) with noise so outputs are non-trivial."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), state))
    return model


def make_inputs(cfg, seed=1):
    rng = np.random.default_rng(seed)
    return dict(
        x=jnp.asarray(rng.normal(size=(B, GRID[0] * GRID[1], cfg.in_channels)), jnp.float32),
        t=jnp.asarray([0.3, 0.9], jnp.float32),
        text_embeddings=jnp.asarray(rng.normal(size=(B, T, cfg.text_dim)), jnp.float32),
        pooled=jnp.asarray(rng.normal(size=(B, cfg.pooled_dim)), jnp.float32),
    )


def run(model, a, **kw):
    return model(a["x"], a["t"], a["text_embeddings"], a["pooled"], grid_hw=GRID, **kw)


def test_seedream_position_ids():
    img_ids, txt_ids = mmdit.seedream_position_ids(3, 4, 5)
    assert img_ids.shape == (12, 3) and txt_ids.shape == (5, 3)
    np.testing.assert_array_equal(img_ids[:, 0], 0)
    np.testing.assert_array_equal(img_ids[:, 1], np.repeat(np.arange(3), 4))  # row-major grid
    np.testing.assert_array_equal(img_ids[:, 2], np.tile(np.arange(4), 3))
    # Text: a [1, L] grid, row 0, columns continue after the image's last column.
    np.testing.assert_array_equal(txt_ids[:, 0], 0)
    np.testing.assert_array_equal(txt_ids[:, 1], 0)
    np.testing.assert_array_equal(txt_ids[:, 2], [4, 5, 6, 7, 8])
    assert txt_ids[:, 2].min() == img_ids[:, 2].max() + 1


def test_patchify_matches_flux_packing_and_round_trips():
    torch = pytest.importorskip("torch")
    images = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
    tokens = mmdit.patchify(jnp.asarray(images), 2)
    assert tokens.shape == (2, 4 * 6, 12)
    # FluxPipeline._pack_latents on NCHW latents (diffusers' pipeline needs transformers, so inlined).
    packed = torch.from_numpy(images.transpose(0, 3, 1, 2)).view(2, 3, 4, 2, 6, 2).permute(0, 2, 4, 1, 3, 5)
    packed = packed.reshape(2, 4 * 6, 3 * 4)
    np.testing.assert_array_equal(np.asarray(tokens), packed.numpy())
    np.testing.assert_array_equal(np.asarray(mmdit.unpatchify(tokens, 2, 8, 12, 3)), images)
    with pytest.raises(ValueError, match=r"7x12.*not divisible by patch size 2"):
        mmdit.patchify(jnp.zeros((1, 7, 12, 3)), 2)
    with pytest.raises(ValueError, match=r"shape \(2, 24, 12\).*6x12x3"):
        mmdit.unpatchify(tokens, 2, 6, 12, 3)


def test_dense_attention_matches_float64_reference_with_key_mask():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 7, 3, 8)) for _ in range(3))
    mask = np.ones((2, 7), bool)
    mask[0, 2:4] = False
    out = attention_lib.attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), key_mask=jnp.asarray(mask))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out), np.einsum("bhqk,bkhd->bqhd", probs, v), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"key_mask must have shape \(2, 7\)"):
        attention_lib.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), key_mask=jnp.ones((2, 6), bool))


def test_backend_registry_routes_every_layer():
    calls = []

    def recording(q, k, v, *, key_mask, layer_index, layout, tag):
        calls.append((layer_index, layout, tag))
        return attention_lib.dense_attention(q, k, v, key_mask=key_mask)

    attention_lib.register_backend("recording_test", recording, overwrite=True)
    cfg = tiny_config(attention_backend="recording_test")
    model = mmdit.MMDiT(cfg, nnx.Rngs(0))
    a = make_inputs(cfg)
    assert run(model, a, attention_kwargs={"tag": "x"}).shape == (B, GRID[0] * GRID[1], cfg.in_channels)
    assert [c[0] for c in calls] == [0, 1]
    assert all(c[1] == attention_lib.TokenLayout(T, GRID) and c[2] == "x" for c in calls)
    with pytest.raises(ValueError, match="unknown attention backend 'no_such_backend'"):
        run(mmdit.MMDiT(tiny_config(attention_backend="no_such_backend"), nnx.Rngs(0)), a)
    with pytest.raises(ValueError, match="already registered"):
        attention_lib.register_backend("dense", recording)


def test_text_mask_removes_padded_tokens():
    cfg = tiny_config()
    model = randomized(mmdit.MMDiT(cfg, nnx.Rngs(0)))
    a = make_inputs(cfg)
    text_mask = jnp.asarray([[True] * 3 + [False] * 2, [True] * 5])
    changed = dict(a, text_embeddings=a["text_embeddings"].at[0, 3:].set(7.0))
    out = run(model, a, text_mask=text_mask)
    np.testing.assert_allclose(np.asarray(run(model, changed, text_mask=text_mask)), np.asarray(out), atol=1e-6)
    # Without the mask the same change reaches the image tokens of example 0 only.
    diff = np.abs(np.asarray(run(model, changed)) - np.asarray(run(model, a)))
    assert diff[0].max() > 1e-3 and diff[1].max() == 0


def test_position_ids_default_explicit_and_batched_agree():
    cfg = tiny_config()
    model = randomized(mmdit.MMDiT(cfg, nnx.Rngs(0)))
    a = make_inputs(cfg)
    img_ids, txt_ids = mmdit.seedream_position_ids(*GRID, T)
    out = run(model, a)
    batched = model(a["x"], a["t"], a["text_embeddings"], a["pooled"],
                    img_ids=jnp.broadcast_to(img_ids, (B, *img_ids.shape)), txt_ids=txt_ids)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(out), rtol=1e-6, atol=1e-6)
    flux_style = run(model, a, txt_ids=np.zeros_like(txt_ids))  # Flux's all-zero text ids differ
    assert np.abs(np.asarray(flux_style) - np.asarray(out)).max() > 1e-4
    with pytest.raises(ValueError, match=r"grid_hw \(3, 3\) has 9 tokens but x has 6"):
        model(a["x"], a["t"], a["text_embeddings"], a["pooled"], grid_hw=(3, 3))


def grads_and_output(cfg, a):
    model = randomized(mmdit.MMDiT(cfg, nnx.Rngs(0)))
    graph, params = nnx.split(model, nnx.Param)

    def loss(p):
        out = run(nnx.merge(graph, p), a)
        return jnp.mean(out**2), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out, grads


def test_remat_gives_same_output_and_gradients():
    cfg = tiny_config()
    a = make_inputs(cfg)
    out, grads = grads_and_output(cfg, a)
    out_r, grads_r = grads_and_output(tiny_config(remat=True), a)
    np.testing.assert_allclose(np.asarray(out_r), np.asarray(out), rtol=1e-5, atol=1e-6)
    flat, flat_r = jax.tree.leaves(grads), jax.tree.leaves(grads_r)
    assert len(flat) == len(flat_r) and any(np.abs(np.asarray(g)).max() > 0 for g in flat)
    for g, g_r in zip(flat, flat_r):
        np.testing.assert_allclose(np.asarray(g_r), np.asarray(g), rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32():
    a = make_inputs(tiny_config())
    ref = run(randomized(mmdit.MMDiT(tiny_config(), nnx.Rngs(0))), a)
    model = randomized(mmdit.MMDiT(tiny_config(dtype="bfloat16"), nnx.Rngs(0)))
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
    out = nnx.jit(run)(model, a)  # the model (frozen config included) is a valid nnx.jit argument
    assert out.dtype == jnp.float32
    rel = np.abs(np.asarray(out) - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max()
    assert 0 < rel < 5e-2, rel


def test_size_embedding_starts_as_a_no_op_and_then_matters():
    cfg = tiny_config(size_embed=True)
    model = mmdit.MMDiT(cfg, nnx.Rngs(0))
    plain = mmdit.MMDiT(tiny_config(), nnx.Rngs(0))
    randomized(plain)
    # Same random weights everywhere except the (freshly zero-initialised) size embedder.
    nnx.update(model, nnx.state(plain, nnx.Param))
    a = make_inputs(cfg)
    sizes = jnp.asarray([[256, 256], [512, 1024]], jnp.int32)
    np.testing.assert_array_equal(np.asarray(run(model, a, target_size=sizes)), np.asarray(run(plain, a)))
    randomized(model.size_embedder, seed=4)
    other = jnp.asarray([[1024, 512], [256, 256]], jnp.int32)
    assert np.abs(np.asarray(run(model, a, target_size=sizes)) - np.asarray(run(model, a, target_size=other))).max() > 1e-3
    with pytest.raises(ValueError, match=r"size_embed is on, pass target_size \[2, 2\]"):
        run(model, a)
    with pytest.raises(ValueError, match="guidance was given but cfg.guidance_embed is off"):
        run(model, a, target_size=sizes, guidance=jnp.ones((2,)))


def test_x0_prediction_returns_the_velocity_its_clean_estimate_implies():
    plain = randomized(mmdit.MMDiT(tiny_config(), nnx.Rngs(0)))
    model = mmdit.MMDiT(tiny_config(prediction="x0"), nnx.Rngs(0))
    nnx.update(model, nnx.state(plain, nnx.Param))
    a = make_inputs(tiny_config())
    a["t"] = jnp.asarray([0.3, 0.01], jnp.float32)  # the second is below x0_min_t
    x0 = np.asarray(run(plain, a), np.float64)  # what proj_out predicts, now read as a clean image
    t = np.maximum(np.asarray(a["t"], np.float64), 0.05)[:, None, None]
    want = (np.asarray(a["x"], np.float64) - x0) / t
    np.testing.assert_allclose(np.asarray(run(model, a)), want, rtol=1e-5, atol=1e-4)
    # Above the clamp the flow's own inverse recovers the prediction.
    back = flow.x0_from_velocity(a["x"][:1], run(model, a)[:1], a["t"][:1])
    np.testing.assert_allclose(np.asarray(back), x0[:1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prediction 'eps' must be"):
        mmdit.MMDiT(tiny_config(prediction="eps"), nnx.Rngs(0))
    # A config saved before the option existed (an older workdir's config.json) predicts a velocity.
    old = ml_collections.ConfigDict({k: v for k, v in tiny_config().items() if k not in ("prediction", "x0_min_t")})
    legacy = mmdit.MMDiT(old, nnx.Rngs(0))
    nnx.update(legacy, nnx.state(plain, nnx.Param))
    np.testing.assert_array_equal(np.asarray(run(legacy, a)), np.asarray(run(plain, a)))


def test_repa_features_come_from_the_chosen_block():
    cfg = tiny_config(depth_single=2, repa_layer=1)  # the first single-stream block
    model = randomized(mmdit.MMDiT(cfg, nnx.Rngs(0)))
    a = make_inputs(cfg)
    out, feats = run(model, a, return_features=True)
    assert feats.shape == (B, GRID[0] * GRID[1], cfg.num_heads * cfg.head_dim)
    randomized(model.single_blocks[1], seed=9)  # a later block: features unchanged, output changed
    out2, feats2 = run(model, a, return_features=True)
    np.testing.assert_array_equal(np.asarray(feats2), np.asarray(feats))
    assert np.abs(np.asarray(out2) - np.asarray(out)).max() > 1e-3
    randomized(model.single_blocks[0], seed=10)  # the chosen block itself: features change
    assert np.abs(np.asarray(run(model, a, return_features=True)[1]) - np.asarray(feats)).max() > 1e-3
    with pytest.raises(ValueError, match="repa_layer"):
        run(mmdit.MMDiT(tiny_config(), nnx.Rngs(0)), a, return_features=True)


def _matmul_flops(jaxpr) -> float:
    """2 x multiply-adds of every dot_general in a jaxpr, sub-jaxprs included."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _matmul_flops(sub)
    return total


@pytest.mark.parametrize("guidance_embed,size_embed", [(False, False), (True, True)])
def test_train_flops_count_every_matmul(guidance_embed, size_embed):
    cfg = tiny_config(guidance_embed=guidance_embed, size_embed=size_embed, mlp_ratio=3.0)
    model = mmdit.MMDiT(cfg, nnx.Rngs(0))
    a = {k: v[:1] for k, v in make_inputs(cfg).items()}
    kw = dict(guidance=jnp.ones((1,)) if guidance_embed else None,
              target_size=jnp.ones((1, 2), jnp.int32) if size_embed else None)
    jaxpr = jax.make_jaxpr(lambda: run(model, a, **kw))()
    forward = _matmul_flops(jaxpr.jaxpr)
    expected = mmdit.train_flops_per_example(cfg, GRID[0] * GRID[1], T)
    assert expected == pytest.approx(3 * forward, rel=1e-9)


def test_sharded_forward_matches_single_device():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices; tests/conftest.py sets them up")
    cfg = tiny_config(num_heads=4, head_dim=16, axes_dims_rope=(4, 6, 6))
    model = randomized(mmdit.MMDiT(cfg, nnx.Rngs(0)))
    a = make_inputs(cfg)
    mask = jnp.asarray([[True] * 4 + [False], [True] * 5])
    ref = run(model, a, text_mask=mask)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    rules = sharding.rules_from_config(None)
    graph, state = nnx.split(model)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(var.shape), f"{path} has logical names {names}"
        assert all(n is None or n in sharding.DEFAULT_RULES for n in names), (path, names)
    shardings = sharding.state_shardings(state, mesh, rules)
    assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(shardings))

    with jax.set_mesh(mesh), sharding.axis_rules(rules):
        state = jax.device_put(state, shardings)
        fn = jax.jit(lambda s, a, m: run(nnx.merge(graph, s), a, text_mask=m))
        out = fn(state, a, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
