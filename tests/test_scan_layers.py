"""model.scan_layers: stacked block parameters run under nnx.scan give the unrolled model's
outputs, REPA features and gradients; the layout converter carries checkpoints both ways;
config errors are clear; stacked parameters shard."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from seedjax.models import attention as attention_lib
from seedjax.models import block_layout, mmdit
from seedjax.parallel import sharding
from seedjax.schema.models import mmdit_preset

B, GRID, T = 2, (2, 3), 5


def tiny_config(**overrides):
    cfg = mmdit_preset("tiny")
    cfg.update(num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6), depth_double=2, depth_single=2,
               text_dim=24, pooled_dim=20, in_channels=8, repa_layer=2)
    cfg.update(overrides)
    return cfg


def build(cfg, seed=0, scale=0.1, noise=True):
    """MMDiT(cfg), built abstractly and filled from numpy (eager random init is slow on a CPU):
    with `noise`, every parameter (zero-initialised ones too) is noise so outputs are non-trivial."""
    model = nnx.eval_shape(lambda: mmdit.MMDiT(cfg, nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    fill = (lambda x: scale * rng.standard_normal(x.shape)) if noise else (lambda x: np.full(x.shape, np.nan))
    nnx.update(model, jax.tree.map(lambda x: jnp.asarray(fill(x), x.dtype), nnx.state(model, nnx.Param)))
    return model


def make_inputs(cfg, seed=1):
    rng = np.random.default_rng(seed)
    a = dict(
        x=jnp.asarray(rng.normal(size=(B, GRID[0] * GRID[1], cfg.in_channels)), jnp.float32),
        t=jnp.asarray([0.3, 0.9], jnp.float32),
        text_embeddings=jnp.asarray(rng.normal(size=(B, T, cfg.text_dim)), jnp.float32),
        pooled=jnp.asarray(rng.normal(size=(B, cfg.pooled_dim)), jnp.float32),
        text_mask=jnp.asarray([[True] * 3 + [False] * 2, [True] * 5]),
    )
    if cfg.guidance_embed:
        a["guidance"] = jnp.asarray([3.0, 5.5], jnp.float32)
    if cfg.size_embed:
        a["target_size"] = jnp.asarray([[64.0, 96.0], [32.0, 48.0]], jnp.float32)
    return a


def run(model, a, **kw):
    extra = {k: a[k] for k in ("guidance", "target_size", "text_mask") if k in a}
    return model(a["x"], a["t"], a["text_embeddings"], a["pooled"], grid_hw=GRID, **extra, **kw)


_COMPILED = {}


def jitted(model, a):
    """run(model, a, return_features=True) -> (velocity, REPA features), compiled once per model
    structure and shared by the tests (eager execution and XLA compiles are slow on a CPU)."""
    graph, state = nnx.split(model)
    if graph not in _COMPILED:
        _COMPILED[graph] = jax.jit(lambda state, a: run(nnx.merge(graph, state), a, return_features=True))
    return _COMPILED[graph](state, a)


def velocity(model, a):
    return np.asarray(jitted(model, a)[0])


@functools.lru_cache(maxsize=None)
def _pair(overrides):
    unrolled = build(tiny_config(**dict(overrides)))
    scanned = build(tiny_config(scan_layers=True, **dict(overrides)), noise=False)
    nnx.update(scanned, block_layout.match_block_layout(nnx.to_pure_dict(nnx.state(unrolled)), scanned))
    return unrolled, scanned


def pair(**overrides):
    """(unrolled, scanned) models of one config holding the same random weights (shared: do not modify)."""
    return _pair(tuple(sorted(overrides.items())))


def as_checkpoint(tree):
    """A pure tree as orbax restores it: numpy leaves, list entries named '0', '1', ..."""
    if isinstance(tree, dict):
        return {str(k): as_checkpoint(v) for k, v in tree.items()}
    return np.asarray(tree)


def assert_trees_close(a, b, **tol):
    flat_a, flat_b = nnx.traversals.flatten_mapping(a), nnx.traversals.flatten_mapping(b)
    assert sorted(flat_a) == sorted(flat_b)
    for key in flat_a:
        np.testing.assert_allclose(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=str(key), **tol)


def test_stacked_parameter_layout_and_names():
    _, scanned = pair()
    kernel = scanned.double_blocks.img.q.kernel
    assert kernel.shape == (2, 32, 32)
    assert kernel.get_metadata()["out_sharding"] == (mmdit.LAYER_AXIS, "embed", "heads")
    assert scanned.single_blocks.mlp_in.kernel.shape[0] == 2
    for path, var in nnx.to_flat_state(nnx.state(scanned, nnx.Param)):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(var.shape), (path, names)
        assert all(n is None or n in sharding.DEFAULT_RULES for n in names), (path, names)


@pytest.mark.parametrize("overrides", [dict(), dict(guidance_embed=True, size_embed=True, repa_layer=1)])
def test_scanned_forward_and_repa_features_equal_unrolled(overrides):
    unrolled, scanned = pair(**overrides)
    a = make_inputs(unrolled.cfg)
    out_u, feat_u = jitted(unrolled, a)
    out_s, feat_s = jitted(scanned, a)
    assert np.abs(np.asarray(out_u)).max() > 1e-2 and np.abs(np.asarray(feat_u)).max() > 1e-2
    np.testing.assert_allclose(np.asarray(out_s), np.asarray(out_u), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(feat_s), np.asarray(feat_u), rtol=0, atol=1e-6)
    if not overrides:  # a jit closing over the module works too
        np.testing.assert_allclose(np.asarray(jax.jit(lambda a: run(scanned, a))(a)), np.asarray(out_u), rtol=0,
                                   atol=1e-6)


def test_features_of_every_layer_and_truncated_stacks():
    """run_blocks (the discriminator's trunk) stops after `last_layer` and returns the features
    of any set of layers, scanned (a sliced stack) as unrolled."""
    unrolled, scanned = pair()
    a = make_inputs(unrolled.cfg)

    def trunk(model, a, levels, last):
        cond = model._conditioning(a["t"], a["pooled"], None, None, B)
        cos, sin = model._rope_tables(GRID[0] * GRID[1], T, GRID, None, None)
        attend_at = lambda i: (lambda q, k, v, m: attention_lib.attention(q, k, v, key_mask=m))
        img = model.x_embedder(a["x"])
        txt = model.context_embedder(a["text_embeddings"])
        return model.run_blocks(img, txt, cond, cos, sin, None, attend_at, levels, last_layer=last)[1]

    for last, levels in ((2, (0, 1, 2)),):  # the single stack truncated to its first layer
        feats = [jax.jit(functools.partial(trunk, levels=levels, last=last))(m, a) for m in (unrolled, scanned)]
        assert len(feats[0]) == len(feats[1]) == len(levels)
        for f_u, f_s in zip(*feats):
            np.testing.assert_allclose(np.asarray(f_s), np.asarray(f_u), rtol=0, atol=1e-6)


def grads(model, a, **kw):
    graph, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        out, feat = run(nnx.merge(graph, p, rest), a, return_features=True, **kw)
        return jnp.mean(out**2) + jnp.mean(feat**2)

    return nnx.to_pure_dict(jax.jit(jax.grad(loss))(params))


@pytest.fixture
def fast_compiles():
    """Most XLA optimisations off: a third less compile time for the backward passes (the
    forward tests above compare with them on)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def test_scanned_gradients_equal_unrolled(fast_compiles):
    unrolled, scanned = pair()
    a = make_inputs(unrolled.cfg)
    g_u = grads(unrolled, a)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(g_u))
    remat = build(tiny_config(scan_layers=True, remat=True, remat_policy="dots_saveable"), noise=False)
    nnx.update(remat, nnx.state(scanned))
    for model in (scanned, remat):  # the remat policy applies to the scanned body
        g_s = block_layout.unstack_block_params(grads(model, a), int_keys=True)
        assert_trees_close(g_s, g_u, rtol=1e-4, atol=1e-6)


def test_checkpoint_tree_converts_both_ways():
    unrolled, scanned = pair()
    a = make_inputs(unrolled.cfg)
    ref = velocity(unrolled, a)
    ckpt = as_checkpoint(nnx.to_pure_dict(nnx.state(unrolled)))
    assert "0" in ckpt["double_blocks"] and "1" in ckpt["single_blocks"]
    stacked = block_layout.stack_block_params(ckpt)
    assert stacked["double_blocks"]["img"]["q"]["kernel"].shape == (2, 32, 32)
    assert block_layout.match_block_layout(stacked, scanned.cfg)["single_blocks"]["q"]["kernel"].shape[0] == 2
    fresh = build(tiny_config(scan_layers=True), noise=False)
    nnx.update(fresh, block_layout.match_block_layout(ckpt, fresh))
    np.testing.assert_allclose(velocity(fresh, a), np.asarray(ref), rtol=0, atol=1e-6)
    # ... and back: a scanned run's checkpoint into an unrolled model.
    saved = as_checkpoint(nnx.to_pure_dict(nnx.state(fresh)))
    back = build(tiny_config(), noise=False)
    converted = block_layout.match_block_layout(saved, back)
    assert sorted(converted["double_blocks"]) == [0, 1]  # the live module's int keys
    nnx.update(back, converted)
    np.testing.assert_allclose(velocity(back, a), np.asarray(ref), rtol=0, atol=1e-6)
    # String keys (checkpoint style) by default; layouts that already match pass through.
    assert sorted(block_layout.unstack_block_params(saved)["single_blocks"]) == ["0", "1"]
    assert block_layout.match_block_layout(saved, True)["double_blocks"] is saved["double_blocks"]
    assert block_layout.match_block_layout({"other": 1}, fresh) == {"other": 1}
    # Nested trees (a whole state: model/dit/...) convert where the stacks are.
    nested = block_layout.stack_block_params({"model": {"dit": ckpt}, "step": 3})
    assert nested["step"] == 3 and nested["model"]["dit"]["double_blocks"]["txt"]["k"]["kernel"].shape[0] == 2


def test_load_params_and_ema_convert_the_layout():
    from seedjax.train.params import load_params
    from seedjax.train.state import EMA

    unrolled, scanned = pair()
    a = make_inputs(unrolled.cfg)
    ckpt = as_checkpoint(nnx.to_pure_dict(nnx.state(unrolled, nnx.Param)))
    target = build(tiny_config(scan_layers=True), noise=False)
    load_params(target, ckpt, "unrolled checkpoint")
    ref = velocity(unrolled, a)
    np.testing.assert_allclose(velocity(target, a), np.asarray(ref), rtol=0, atol=1e-6)
    ema = EMA(target, 0.9)
    ema.load(ckpt)
    sampler = build(tiny_config(scan_layers=True), noise=False)
    ema.copy_into(sampler)
    np.testing.assert_allclose(velocity(sampler, a), np.asarray(ref), rtol=0, atol=1e-6)


def test_bad_config_values_fail_clearly():
    def check(**kw):  # validate_config is what MMDiT(cfg) runs first
        mmdit.validate_config(ml_collections.ConfigDict({**tiny_config().to_dict(), **kw}))

    with pytest.raises(ValueError, match=r"model.scan_layers must be true or false"):
        check(scan_layers="yes")
    with pytest.raises(ValueError, match=r"model.remat must be true or false"):
        check(remat=1)
    with pytest.raises(ValueError, match=r"model.remat_policy 'sometimes' is not a named remat policy"):
        check(remat_policy="sometimes")
    with pytest.raises(ValueError, match=r"model.remat_policy 'none'.*model.remat"):
        check(remat_policy="none")
    with pytest.raises(ValueError, match=r"not a named remat policy"):
        check(remat_policy="save_only_these_names")  # a policy factory, not a policy
    for backend in mmdit.STATIC_LAYER_INDEX_BACKENDS:
        with pytest.raises(ValueError, match=rf"model.scan_layers=true cannot run attention backend '{backend}'"):
            check(scan_layers=True, attention_backend=backend)
    check(remat=True, remat_policy="full", scan_layers=True)  # valid
    check(remat=True, remat_policy="dots_with_no_batch_dims_saveable")
    # A config saved before scan_layers existed builds the unrolled model it was trained as.
    old = ml_collections.ConfigDict({k: v for k, v in tiny_config().to_dict().items() if k != "scan_layers"})
    assert isinstance(build(old, noise=False).double_blocks, nnx.List)


def test_layer_index_reaches_the_backend_traced(fast_compiles):
    seen = []

    def recording(q, k, v, *, key_mask, layer_index, layout):
        seen.append(layer_index)
        return attention_lib.dense_attention(q, k, v, key_mask=key_mask) * (1.0 + 0.01 * layer_index)

    attention_lib.register_backend("scan_index_test", recording, overwrite=True)
    unrolled, scanned = pair(attention_backend="scan_index_test")
    a = make_inputs(unrolled.cfg)
    ref = velocity(unrolled, a)
    assert seen == [0, 1, 2, 3]
    seen.clear()
    np.testing.assert_allclose(velocity(scanned, a), np.asarray(ref), rtol=0, atol=1e-6)
    assert len(seen) == 2 and all(isinstance(i, jax.core.Tracer) for i in seen)  # one trace per stack


def test_sharded_scanned_forward_matches_single_device(fast_compiles):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices; tests/conftest.py sets them up")
    unrolled, scanned = pair(num_heads=4, axes_dims_rope=(4, 6, 6))
    a = make_inputs(unrolled.cfg)
    ref = velocity(unrolled, a)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    rules = sharding.rules_from_config(None)
    graph, state = nnx.split(scanned)
    shardings = sharding.state_shardings(state, mesh, rules)
    spec = nnx.to_pure_dict(shardings)["double_blocks"]["img"]["mlp"]["up"]["kernel"].spec
    assert spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    with jax.set_mesh(mesh), sharding.axis_rules(rules):
        state = jax.device_put(state, shardings)
        out = jax.jit(lambda s, a: run(nnx.merge(graph, s), a))(state, a)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_flux_state_dict_round_trips_through_a_scanned_model():
    from seedjax.interop import flux

    unrolled, scanned = pair()
    state_dict = flux.export_state_dict(unrolled)
    exported = flux.export_state_dict(scanned)
    assert sorted(exported) == sorted(state_dict)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    loaded = flux.load_state_dict(nnx.eval_shape(lambda: mmdit.MMDiT(scanned.cfg, nnx.Rngs(0))), state_dict)
    a = make_inputs(unrolled.cfg)
    np.testing.assert_allclose(velocity(loaded, a), velocity(unrolled, a), rtol=0, atol=1e-6)
