"""PAROAttention: permutations, calibration statistics, mask selection, plans, backends."""

import dataclasses
import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.kernels import paro
from seedjax.models import mmdit
from seedjax.schema.models import mmdit_preset

# These tests are dominated by XLA compile time and need no optimized code.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_jit = functools.partial(jax.jit, compiler_options=_FAST_COMPILE)


@pytest.mark.parametrize("layout", [paro.SequenceLayout(5, (3, 4)), paro.SequenceLayout(0, (4, 3)),
                                    paro.SequenceLayout(7, (2, 3, 4))])
def test_permutations_round_trip_and_keep_text_in_place(layout):
    perms = paro.sequence_permutations(layout)
    assert perms.shape == (len(layout.orders), layout.length)
    assert len(layout.orders) == (2 if len(layout.grid) == 2 else 6)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, layout.length, len(layout.orders), 3)))
    perm = jnp.broadcast_to(jnp.asarray(perms), (2, *perms.shape))  # head h uses order h
    back = paro.permute_tokens(paro.permute_tokens(x, perm), paro.inverse_permutation(perm))
    np.testing.assert_array_equal(np.asarray(back), np.asarray(x))
    for p in perms:
        np.testing.assert_array_equal(np.sort(p), np.arange(layout.length))
        np.testing.assert_array_equal(p[: layout.num_text], np.arange(layout.num_text))


def test_orders_read_the_grid_in_the_named_axis_order():
    # 2 x 3 image, row-major ids [[0, 1, 2], [3, 4, 5]]: 'wh' reads column by column.
    np.testing.assert_array_equal(paro.visual_permutation((2, 3), "hw"), [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(paro.visual_permutation((2, 3), "wh"), [0, 3, 1, 4, 2, 5])
    # 2 frames of 1 x 2: 'whf' puts the frame axis innermost.
    np.testing.assert_array_equal(paro.visual_permutation((2, 1, 2), "whf"), [0, 2, 1, 3])
    with pytest.raises(ValueError, match="not a permutation of 'hw'"):
        paro.visual_permutation((2, 3), "hf")


def _local_attention_maps(grid, axis_of_head, reach=1, across=1):
    """Softmax-like maps where head h attends to a strip of neighbours: along
    `axis_of_head[h]` within `reach` ('h' = up/down, 'w' = left/right) and within `across`
    across it, plus a little everywhere."""
    hh, ww = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    hh, ww = hh.reshape(-1), ww.reshape(-1)
    dh, dw = abs(hh[:, None] - hh[None]), abs(ww[:, None] - ww[None])
    maps = []
    for axis in axis_of_head:
        near = (dh <= reach) & (dw <= across) if axis == "h" else (dw <= reach) & (dh <= across)
        m = np.where(near, 1.0, 1e-6)
        maps.append(m / m.sum(-1, keepdims=True))
    return np.stack(maps)


def test_block_statistics_on_a_known_map():
    layout = paro.SequenceLayout(0, (8, 8))
    # 1 x 3 windows along rows: block-diagonal in 'hw' order with 8 x 8 blocks.
    probs = _local_attention_maps(layout.grid, ["w"], reach=1, across=0)
    stats = np.asarray(paro.block_statistics(jnp.asarray(probs), layout, block_q=8, block_k=8))
    hw = stats[layout.orders.index("hw"), 0]
    np.testing.assert_allclose(hw[..., paro.MASS].sum(-1), 8.0, rtol=1e-5)  # each block row holds 8 rows of mass 1
    np.testing.assert_array_equal(hw[..., paro.SPARSE], 1 - np.eye(8))  # only diagonal blocks are dense
    # Diagonal block: a 8x8 tridiagonal of ~1/3 (1/2 at the ends); max / mean = (1/2) / (1/8) = 4 (up to the 1e-6s).
    np.testing.assert_allclose(np.diag(hw[..., paro.INCOHERENCE]), 4.0, rtol=1e-3)
    wh = stats[layout.orders.index("wh"), 0]
    assert wh[..., paro.SPARSE].mean() < hw[..., paro.SPARSE].mean()


def test_calibration_picks_the_order_that_makes_each_head_block_sparse():
    """Head 0 attends to vertical strips (9 rows x 3 columns), head 1 to horizontal ones.
    Read column by column ('wh'), a vertical strip falls into 3 blocks per block row
    instead of 9; the calibration must find that order for head 0 and 'hw' for head 1."""
    layout = paro.SequenceLayout(0, (16, 16))
    probs = jnp.asarray(_local_attention_maps(layout.grid, ["h", "w"], reach=4))
    calib = paro.Calibration(layout, num_layers=1, num_heads=2, bucket_edges=(), block_q=16, block_k=16)
    stats = np.asarray(paro.block_statistics(probs, layout, block_q=16, block_k=16))
    calib.add(0, 0, stats)
    plan = calib.plan(density=3 / 16)
    assert [plan.orders[i] for i in plan.order_ids[0, 0]] == ["wh", "hw"]
    natural = calib.plan(density=3 / 16, reorder=False)
    kept = lambda p, h, order: float((stats[layout.orders.index(order), h, ..., paro.MASS] * p.masks[0, 0, h]).sum())
    # 3/16 of the blocks keep (nearly) all attention in the chosen order, about a third in the natural one.
    assert kept(plan, 0, "wh") / 256 > 0.99 and kept(plan, 1, "hw") / 256 > 0.99
    assert kept(natural, 0, "hw") / 256 < 0.5


def test_select_mask_density_forced_blocks_and_rows():
    rng = np.random.default_rng(0)
    mass = rng.random((3, 6, 6))
    forced = np.zeros((6, 6), bool)
    forced[0, :] = forced[:, 0] = True  # a text block row and column
    mask = paro.select_mask(mass, forced, density=0.3)
    free = ~forced
    assert np.all(mask[:, forced])
    np.testing.assert_array_equal(mask[:, free].sum(-1), round(0.3 * free.sum()))
    assert np.all((mask & free).any(-1)[:, 1:])  # every visual row keeps a block of its own
    for h in range(3):
        # Beyond each row's own heaviest block, the kept blocks are the heaviest of the rest.
        row_top = np.zeros((6, 6), bool)
        row_top[np.arange(1, 6), 1 + np.argmax(mass[h, 1:, 1:], -1)] = True
        extra = mask[h] & free & ~row_top
        dropped = ~mask[h] & free
        assert mass[h][extra].min() >= mass[h][dropped].max()
    with pytest.raises(ValueError, match="density"):
        paro.select_mask(mass, forced, 0.0)


def _plan(layout=paro.SequenceLayout(3, (6, 8)), layers=2, heads=2, edges=(0.8,), density=0.5, seed=0, block=16):
    nq = -(-layout.length // block)
    rng = np.random.default_rng(seed)
    order_ids = rng.integers(0, len(layout.orders), (layers, len(edges) + 1, heads))
    forced = paro.text_blocks(layout, block, block)
    masks = np.stack([paro.select_mask(rng.random((heads, nq, nq)), forced, density)
                      for _ in range(layers * (len(edges) + 1))]).reshape(layers, len(edges) + 1, heads, nq, nq)
    shape = dict(num_layers=layers, num_heads=heads, num_text=layout.num_text, grid=list(layout.grid),
                 block_q=block, block_k=block)
    return paro.ParoPlan(shape, edges, order_ids, masks, {"note": "test"})


def test_plan_file_round_trip_and_refusals(tmp_path):
    plan = _plan()
    path = str(tmp_path / "plan.safetensors")
    plan.save(path)
    loaded = paro.ParoPlan.load(path)
    np.testing.assert_array_equal(loaded.order_ids, plan.order_ids)
    np.testing.assert_array_equal(loaded.masks, plan.masks)
    assert (loaded.model_shape, loaded.bucket_edges, loaded.info) == (plan.model_shape, plan.bucket_edges, plan.info)

    loaded.check(num_heads=2, num_text=3, grid=(6, 8), num_layers=2)
    with pytest.raises(ValueError, match=r"plan.safetensors was made for another model shape: grid \[6, 8\] \(plan\) "
                                         r"vs \[8, 8\] \(model\)"):
        loaded.check(num_heads=2, num_text=3, grid=(8, 8), source=path)
    with pytest.raises(ValueError, match=r"num_heads 2 \(plan\) vs 4 \(model\)"):
        loaded.check(num_heads=4, num_text=3, grid=(6, 8))

    from safetensors.numpy import save_file
    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no 'paro_plan' header"):
        paro.ParoPlan.load(str(tmp_path / "other.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read it as safetensors"):
        paro.ParoPlan.load(str(tmp_path / "junk.safetensors"))
    with pytest.raises(ValueError, match=r"bucket_edges must decrease"):
        paro.ParoPlan(plan.model_shape, (0.2, 0.8), np.zeros((2, 3, 2)), np.zeros((2, 3, 2, 4, 4), bool))


def _elementwise_reference(q, k, v, plan, layer, buckets, key_mask=None):
    """Dense attention in the original token order with the plan's block mask mapped back
    through each head's permutation (independent of the reorder-then-attend path)."""
    b, length, heads, d = q.shape
    block = plan.model_shape["block_q"]
    perms = paro.sequence_permutations(plan.layout)
    mask = np.zeros((b, heads, length, length), bool)
    for i in range(b):
        for h in range(heads):
            perm = perms[plan.order_ids[layer, buckets[i], h]]
            blocks = plan.masks[layer, buckets[i], h]
            permuted = np.repeat(np.repeat(blocks, block, 0), block, 1)[:length, :length]
            mask[i, h][np.ix_(perm, perm)] = permuted
    if key_mask is not None:
        mask &= key_mask[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(mask))


@pytest.mark.parametrize("impl", ["xla", "triton"])
def test_paro_attention_matches_elementwise_masked_dense(impl):
    plan = _plan()
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((2, plan.layout.length, 2, 16)), jnp.float32) for _ in range(3))
    t = jnp.asarray([0.9, 0.3])  # buckets 0 and 1: each sample uses its own masks and orders
    key_mask = np.ones((2, plan.layout.length), bool)
    key_mask[1, 1] = False  # a padded text token
    out = _jit(lambda q, k, v: paro.paro_attention(q, k, v, plan, 1, t, key_mask=key_mask, impl=impl,
                                                   interpret=impl != "xla"))(q, k, v)
    ref = _elementwise_reference(q, k, v, plan, 1, [0, 1], key_mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-6)


def test_full_density_plan_equals_dense_attention():
    plan = _plan(density=1.0)
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.standard_normal((1, plan.layout.length, 2, 16)), jnp.float32) for _ in range(3))
    out = _jit(lambda q, k, v: paro.paro_attention(q, k, v, plan, 0, 0.5, impl="xla"))(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(jax.nn.dot_product_attention(q, k, v)), atol=2e-6)


def _tiny_model(backend):
    """A tiny MMDiT with the given attention backend and fixed random parameters (built
    abstractly and filled from numpy: no initializer runs)."""
    cfg = mmdit_preset("tiny")
    cfg.update(num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6), depth_double=1, depth_single=1,
               text_dim=24, pooled_dim=20, in_channels=8, attention_backend=backend)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: mmdit.MMDiT(cfg, nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype), state)
    return nnx.merge(graphdef, state)


def test_mmdit_capture_calibrate_and_run_with_plan(tmp_path):
    """Capture statistics through the MMDiT under jit, make a plan, run the 'paro' backend."""
    grid, num_text = (4, 8), 3
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 32, 8)), jnp.float32)
    txt = jnp.asarray(rng.standard_normal((2, num_text, 24)), jnp.float32)
    pooled = jnp.asarray(rng.standard_normal((2, 20)), jnp.float32)
    text_mask = jnp.asarray([[True, True, True], [True, True, False]])
    layout = paro.SequenceLayout(num_text, grid)
    calib = paro.Calibration(layout, num_layers=2, num_heads=2, bucket_edges=(0.5,), block_q=8, block_k=8)

    def forward(backend, t, **kw):
        graphdef, state = nnx.split(_tiny_model(backend))
        fn = _jit(lambda state, t: nnx.merge(graphdef, state)(
            x, t, txt, pooled, text_mask=text_mask, grid_hw=grid,
            attention_kwargs=dict(timestep=t, **kw) if backend != "dense" else None))
        return np.asarray(fn(state, t))

    t = jnp.asarray([0.9, 0.2])  # one sample in each bucket
    dense = forward("dense", t)
    np.testing.assert_allclose(forward("paro_capture", t, calibration=calib), dense, rtol=1e-5, atol=1e-5)
    jax.effects_barrier()
    np.testing.assert_array_equal(calib.counts, [[1, 1], [1, 1]])  # (layer, bucket): one map each

    path = str(tmp_path / "plan.safetensors")
    calib.plan(density=1.0).save(path)
    np.testing.assert_allclose(forward("paro", t, plan=path, impl="xla"), dense, rtol=1e-5, atol=1e-5)
    path2 = str(tmp_path / "sparse.safetensors")
    calib.plan(density=0.3).save(path2)
    sparse = forward("paro", t, plan=path2, impl="xla")
    assert np.all(np.isfinite(sparse)) and not np.allclose(sparse, dense, rtol=1e-3, atol=1e-3)

    with pytest.raises(ValueError, match=r"was made for another model shape: grid \[4, 8\] \(plan\) vs \[8, 4\]"):
        nnx.jit(lambda m: m(x, t, txt, pooled, grid_hw=(8, 4), attention_kwargs=dict(plan=path2, timestep=t)))(
            _tiny_model("paro"))


@pytest.mark.slow
def test_calibrate_paro_cli_on_a_trained_run(tmp_path):
    """`python -m seedjax.tools.calibrate_paro` on a (briefly) trained quickstart run."""
    from tests.runner import ROOT, env_for, run_main

    workdir = str(tmp_path / "run")
    done = run_main("experiments/quickstart/pretrain.py:tiny", workdir, "total_steps=2", "sample_every=0",
                    "checkpoint_every=2", "data.image_size=32")  # 8x8 patches: several 16-token blocks
    assert done.returncode == 0, done.stderr[-2000:]
    out = str(tmp_path / "plan.safetensors")
    cmd = [sys.executable, "-m", "seedjax.tools.calibrate_paro", f"--workdir={workdir}", "--density=0.5",
           "--block=16", "--num_prompts=2", "--num_steps=3", "--early_buckets=1", f"--out={out}"]
    result = subprocess.run(cmd, cwd=ROOT, env=env_for(1), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = paro.ParoPlan.load(out)
    assert plan.model_shape == {"num_layers": 2, "num_heads": 3, "num_text": 32, "grid": [8, 8], "block_q": 16,
                                "block_k": 16}
    assert len(plan.bucket_edges) == 1 and abs(plan.density() - 0.5) < 0.05
    assert "wrote" in result.stdout

    bad = subprocess.run(cmd[:3] + ["--workdir=" + str(tmp_path / "missing")] + cmd[4:], cwd=ROOT, env=env_for(1),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no config.json" in bad.stderr


def test_plan_computed_fraction_counts_active_blocks_not_padded_rows():
    """20 text tokens (query and key blocks 0-1 hold text) + a 2 x 4 x 8 video, blocks of
    16: 84 tokens, 6 x 6 blocks, 20 of them forced by text. At visual density 1/4 each
    head keeps 4 of the 16 visual blocks: 24 blocks per head. The text rows are dense,
    so the widest row is all 6 blocks, but the XLA path's work is 24 / 36."""
    plan = _plan(layout=paro.SequenceLayout(20, (2, 4, 8)), layers=2, heads=3, density=0.25)
    assert plan.max_active_blocks(0) == 6
    assert plan.max_blocks_per_head(0) == plan.max_blocks_per_head(1) == 24
    assert plan.computed_fraction() == plan.computed_fraction(1) == 24 / 36


def _temporal_video_map(grid):
    """[1, L, L]: each token of a (f, h, w) video attends to its own (h, w) in every frame."""
    _, h, w = (a.reshape(-1) for a in np.meshgrid(*map(np.arange, grid), indexing="ij"))
    probs = np.where((h[:, None] == h[None]) & (w[:, None] == w[None]), 1.0, 1e-6)
    return (probs / probs.sum(-1, keepdims=True))[None]


def test_calibration_on_a_video_grid_puts_the_attended_axis_innermost():
    """A temporal head is block-sparse only when frames are read innermost: with 16-token
    blocks on a 8 x 4 x 4 video, an order ending in 'f' holds each position's 8 frames in
    one diagonal block (1/8 of the blocks keep all the attention), while in the natural
    'fhw' order every block holds the same mass (1/8 of the blocks keep 1/8 of it)."""
    layout = paro.SequenceLayout(0, (8, 4, 4))
    stats = np.asarray(paro.block_statistics(jnp.asarray(_temporal_video_map(layout.grid)), layout, block_q=16,
                                             block_k=16))
    calib = paro.Calibration(layout, num_layers=1, num_heads=1, bucket_edges=(), block_q=16, block_k=16)
    calib.add(0, 0, stats)
    plan, natural = calib.plan(density=1 / 8), calib.plan(density=1 / 8, reorder=False)
    chosen = [plan.orders[i] for i in plan.order_ids[0, 0]]
    assert chosen[0] in ("hwf", "whf"), chosen
    kept = lambda p, h, order: float((stats[layout.orders.index(order), h, ..., paro.MASS] * p.masks[0, 0, h]).sum())
    assert kept(plan, 0, chosen[0]) / 128 > 0.99
    np.testing.assert_allclose(kept(natural, 0, "fhw") / 128, 1 / 8, rtol=1e-3)


@dataclasses.dataclass(frozen=True)
class _VideoTokenLayout:
    """What the video DiT passes as `layout` (seedjax.models.attention.TokenLayout with `grid`)."""

    num_text: int
    grid: tuple[int, ...]
    grid_hw: tuple[int, int] | None = None


def test_video_layout_capture_plan_and_backend_with_partial_blocks():
    """5 text tokens + a 3 x 4 x 5 video = 65 tokens, blocks of 16 (the last one holds one
    token). Capture under jit through the backend, plan, then the 'paro' backend: forward
    and gradients equal float64 dense attention under the plan's mask mapped back to the
    original token order, each sample in its own timestep bucket, with a key mask on a
    text token and on a padded last frame (keys that move with their tokens)."""
    layout, heads = _VideoTokenLayout(5, (3, 4, 5)), 2
    seq = paro.SequenceLayout(5, (3, 4, 5))
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.standard_normal((2, seq.length, heads, 16)), jnp.float32) for _ in range(3))
    t = jnp.asarray([0.9, 0.2])
    key_mask = np.ones((2, seq.length), bool)
    key_mask[0, [1, 17]] = False  # a text token and visual token (0, 2, 2)
    key_mask[1, -20:] = False  # sample 1's last frame is padding
    calib = paro.Calibration(seq, num_layers=1, num_heads=heads, bucket_edges=(0.5,), block_q=16, block_k=16)
    dense = _jit(lambda q, k, v: paro.capture_backend(q, k, v, key_mask=key_mask, layer_index=0, layout=layout,
                                                      calibration=calib, timestep=t))(q, k, v)
    jax.effects_barrier()
    np.testing.assert_array_equal(calib.counts, [[1, 1]])
    want = _jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=key_mask[:, None, None, :]))(q, k, v)
    np.testing.assert_allclose(np.asarray(dense), np.asarray(want), atol=2e-6)

    plan = calib.plan(density=0.4)
    assert plan.masks.shape[-2:] == (5, 5) and set(plan.orders) == set(paro.VIDEO_ORDERS)
    # Orders that move the masked keys, whichever the calibration preferred on random inputs.
    plan.order_ids[0] = [[plan.orders.index("whf"), plan.orders.index("hfw")],
                         [plan.orders.index("hwf"), plan.orders.index("wfh")]]
    weights = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)

    def out_and_grads(attend, q, k, v):
        out, vjp = jax.vjp(attend, q, k, v)
        return out, vjp(weights.astype(out.dtype))

    got = _jit(lambda q, k, v: out_and_grads(lambda q, k, v: paro.paro_backend(
        q, k, v, key_mask=key_mask, layer_index=0, layout=layout, plan=plan, timestep=t, impl="xla"), q, k, v))(
        q, k, v)
    with jax.enable_x64(True):
        to64 = lambda x: jnp.asarray(np.asarray(x), jnp.float64)
        reference = lambda q, k, v: _elementwise_reference(q, k, v, plan, 0, [0, 1], key_mask)
        want = _jit(lambda q, k, v: out_and_grads(reference, q, k, v))(to64(q), to64(k), to64(v))
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), atol=3e-6, rtol=0)
    for name, g, w in zip("qkv", got[1], want[1]):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=0, err_msg=f"d{name}")


# ----------------------------------------------------------------------------------------
# seedjax.tools.calibrate_paro: one calibration per attention layer, a plan per layout
# ----------------------------------------------------------------------------------------


def _tiny_video_dit(attention, backend):
    """A one-block video DiT (attention layers: the block's spatial 0, temporal 1) with fixed
    random parameters."""
    from seedjax.models import video_dit
    from seedjax.schema.models import video_dit_config

    cfg = video_dit_config("tiny", num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6), depth=1, text_dim=16,
                           pooled_dim=16, in_channels=4, attention=attention, attention_backend=backend)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: video_dit.VideoDiT(cfg, nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    return nnx.merge(graphdef, jax.tree.map(lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype), state))


def test_calibrate_paro_per_layer_layouts_on_the_video_dit(tmp_path):
    """2 x (2 x 4) video, 3 text tokens, blocks of 8, one sample per timestep bucket.
    full_3d: the spatial layer 0 attends over 3 + 16 tokens, the temporal layer 1 over the 16
    visual ones: two plans, each dense (natural order) on the other's layer. decoupled: per-frame
    spatial calls (3 + 8 tokens, each frame in its own sample's bucket) on layer 0, whose plan
    at density 1 reproduces the dense model."""
    from seedjax.tools import calibrate_paro as tool

    grid, num_text = (2, 2, 4), 3
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 16, 4)), jnp.float32)
    txt = jnp.asarray(rng.standard_normal((2, num_text, 16)), jnp.float32)
    pooled = jnp.asarray(rng.standard_normal((2, 16)), jnp.float32)
    t = jnp.asarray([0.9, 0.2])

    def forward(attention, backend, **kw):
        graphdef, state = nnx.split(_tiny_video_dit(attention, backend))
        fn = _jit(lambda state: nnx.merge(graphdef, state)(x, t, txt, pooled, grid=grid, attention_kwargs=kw or None))
        return np.asarray(fn(state))

    calibs = tool.LayerCalibrations((0.5,), block=8)
    forward("full_3d", tool.CAPTURE_BACKEND, calibrations=calibs, timestep=t)
    jax.effects_barrier()
    joint, visual = paro.SequenceLayout(num_text, grid), paro.SequenceLayout(0, grid)
    assert {i: c.layout for i, c in calibs.layers.items()} == {0: joint, 1: visual}
    assert all(c.counts.tolist() == [[1, 1]] for c in calibs.layers.values())
    spatial, temporal = calibs.plans(0.5)
    assert (spatial.layout, spatial.info["layers"], temporal.layout, temporal.info["layers"]) == (
        joint, [0], visual, [1])
    for plan, own, other in ((spatial, 0, 1), (temporal, 1, 0)):
        assert plan.model_shape["num_layers"] == 2 and plan.masks[other].all() and not plan.masks[own].all()
        assert (plan.order_ids[other] == plan.orders.index("fhw")).all()
        # Density and work count the calibrated layer only, not the other layout's dense filler.
        visual = ~paro.text_blocks(plan.layout, 8, 8)
        assert plan.density() == plan.masks[own][..., visual].mean() < 1.0
        assert plan.density(visual_only=False) == plan.masks[own].mean()
        assert plan.computed_fraction() == plan.computed_fraction(own) < 1.0
    assert tool.plan_paths("p/plan.safetensors", [spatial, temporal]) == [
        "p/plan.safetensors", "p/plan_visual_2x2x4.safetensors"]
    with pytest.raises(ValueError, match="2 layouts"):
        calibs.plan(0.5)

    calibs = tool.LayerCalibrations((0.5,), block=8)
    dense = forward("decoupled", "dense")
    np.testing.assert_allclose(forward("decoupled", tool.CAPTURE_BACKEND, calibrations=calibs, timestep=t), dense,
                               rtol=1e-5, atol=1e-5)
    jax.effects_barrier()
    assert sorted(calibs.layers) == [0]
    assert all(c.layout == paro.SequenceLayout(num_text, (2, 4)) and c.counts.tolist() == [[2, 2]]
               for c in calibs.layers.values())
    path = str(tmp_path / "decoupled.safetensors")
    calibs.plan(1.0).save(path)
    np.testing.assert_allclose(forward("decoupled", "paro", plan=path, timestep=0.5, impl="xla"), dense,
                               rtol=1e-5, atol=1e-5)


def test_calibrate_paro_per_layer_plan_equals_the_whole_model_calibration():
    """On the MMDiT (every layer one layout), calibrating layer by layer gives the plan of
    one `paro.Calibration` over all layers (the 'paro_capture' backend)."""
    from seedjax.tools import calibrate_paro as tool

    grid, num_text = (4, 8), 3
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((2, 32, 8)), jnp.float32)
    txt = jnp.asarray(rng.standard_normal((2, num_text, 24)), jnp.float32)
    pooled = jnp.asarray(rng.standard_normal((2, 20)), jnp.float32)
    t = jnp.asarray([0.9, 0.2])
    whole = paro.Calibration(paro.SequenceLayout(num_text, grid), 2, 2, (0.5,), block_q=8, block_k=8)
    per_layer = tool.LayerCalibrations((0.5,), block=8)
    for backend, kw in (("paro_capture", dict(calibration=whole)),
                        (tool.CAPTURE_BACKEND, dict(calibrations=per_layer))):
        graphdef, state = nnx.split(_tiny_model(backend))
        _jit(lambda state: nnx.merge(graphdef, state)(x, t, txt, pooled, grid_hw=grid,
                                                      attention_kwargs=dict(timestep=t, **kw)))(state)
    jax.effects_barrier()
    want, got = whole.plan(0.3), per_layer.plan(0.3)
    assert got.model_shape == want.model_shape and got.info["layers"] == [0, 1]
    np.testing.assert_array_equal(got.order_ids, want.order_ids)
    np.testing.assert_array_equal(got.masks, want.masks)
