"""The pretraining stage in-process: loss pieces, REPA, the defect mask, sampling and NFE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.config import load_config
from seedjax.diffusion.objectives import flow_matching_loss
from seedjax.models.generator import drop_captions
from seedjax.stages import pretrain
from seedjax.train import repa
from tests.runner import ROOT


def tiny(**overrides):
    cfg = load_config(f"{ROOT}/experiments/quickstart/pretrain.py:tiny")
    with cfg.unlocked():
        for key, value in overrides.items():
            node = cfg
            *path, last = key.split(".")
            for p in path:
                node = node[p]
            node[last] = value
    return cfg


def batch_for(cfg, n=4, seed=0):
    rng = np.random.default_rng(seed)
    s = cfg.data.image_size
    from data_pipelines.core.tokenizer import tokenize

    tokens, mask = tokenize([f"a handwritten digit {w}" for w in ("one", "two", "three", "four")][:n],
                            cfg.data.max_text_len)
    return {"image": jnp.asarray(rng.uniform(-1, 1, (n, s, s, 1)), jnp.float32), "tokens": jnp.asarray(tokens),
            "text_mask": jnp.asarray(mask), "loss_mask": jnp.ones((n, s, s), jnp.float32),
            "target_size": jnp.full((n, 2), s, jnp.int32)}


def test_defect_mask_removes_masked_pixels_from_the_loss():
    cfg = tiny(**{"diffusion.cfg_dropout": 0.0})
    state = pretrain.init(cfg, nnx.Rngs(0))
    batch = batch_for(cfg)
    masked = dict(batch, loss_mask=batch["loss_mask"].at[:, :16].set(0.0))
    poisoned = dict(masked, image=masked["image"].at[:, :16].set(50.0))  # only inside the masked rows
    loss = nnx.jit(lambda model, batch: flow_matching_loss(model, batch, jax.random.key(1), cfg)[0])
    loss_masked, loss_poisoned = loss(state.model, masked), loss(state.model, poisoned)
    loss_unmasked_poisoned = loss(state.model, dict(poisoned, loss_mask=batch["loss_mask"]))
    # The poisoned pixels shift the model input (attention sees everything) but their targets are
    # excluded, so the masked loss stays in the normal range while the unmasked one explodes.
    assert float(loss_unmasked_poisoned) > 20 * float(loss_poisoned)
    assert float(loss_masked) < 5.0


def test_caption_dropout_uses_the_empty_caption():
    cfg = tiny()
    batch = batch_for(cfg)
    dropped = drop_captions(batch, jax.random.key(0), 1.0)
    from data_pipelines.core.tokenizer import tokenize

    empty, empty_mask = tokenize([""], cfg.data.max_text_len)
    np.testing.assert_array_equal(dropped["tokens"], np.repeat(empty, 4, 0))
    np.testing.assert_array_equal(dropped["text_mask"], np.repeat(empty_mask, 4, 0))
    kept = drop_captions(batch, jax.random.key(0), 0.0)
    np.testing.assert_array_equal(kept["tokens"], batch["tokens"])


def test_train_step_lowers_loss_and_updates_ema():
    cfg = tiny(**{"optimizer.lr": 3e-3, "optimizer.warmup_steps": 0, "ema_decay": 0.9})
    state = pretrain.init(cfg, nnx.Rngs(0))
    graphdef, st = nnx.split(state)
    batch = batch_for(cfg)

    @jax.jit
    def step(st, i):
        s = nnx.merge(graphdef, st)
        m = pretrain.STAGE.train_step(s, batch, jax.random.fold_in(jax.random.key(0), i % 2), cfg)
        return nnx.state(s), m

    first = None
    for i in range(30):
        st, m = step(st, i)
        first = first if first is not None else float(m["loss"])
    assert float(m["loss"]) < 0.7 * first
    s = nnx.merge(graphdef, st)
    ema, live = s.ema.params["dit"]["proj_out"]["kernel"][...], s.model.dit.proj_out.kernel[...]
    assert not np.allclose(ema, live) and np.isfinite(np.asarray(ema)).all()


def test_repa_loss_trains_the_projector_and_the_blocks_below_its_layer(tmp_path, monkeypatch):
    # An empty cache: the frozen encoder is trained on first use, inside the jitted loss, as on a
    # user's first REPA run (its fit, a jit of its own, used to fail there).
    monkeypatch.setenv("SEEDJAX_CACHE", str(tmp_path))
    repa._load_encoder.cache_clear()
    cfg = tiny(**{"repa.weight": 0.5, "repa.encoder_steps": 20, "model.repa_layer": 0})
    state = pretrain.init(cfg, nnx.Rngs(0))
    assert state.repa is not None
    batch = batch_for(cfg)

    def repa_only(mods):
        _, aux = flow_matching_loss(mods[0], batch, jax.random.key(0), cfg, mods[1])
        return aux["repa_loss"]

    mods = nnx.List([state.model, state.repa])
    loss, grads = nnx.jit(nnx.value_and_grad(repa_only))(mods)  # the trace trains the REPA encoder on first use
    assert 0.0 < float(loss) <= 2.0
    norm = lambda tree: float(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))
    assert norm(grads[1]) > 0  # projector
    assert norm(grads[0]["dit"]["double_blocks"][0]) > 0  # the block REPA reads
    assert norm(grads[0]["dit"]["proj_out"]) == 0  # nothing after it
    with pytest.raises(ValueError, match="repa_layer"):
        pretrain.init(tiny(**{"repa.weight": 0.5, "model.repa_layer": -1}), nnx.Rngs(0))


def test_sample_shapes_and_nfe_counted_by_model_calls():
    """The sample hook gives [N, 1, H, W, C] in [-1, 1]; the sampler's NFE equals the generator
    evaluations counted while the compiled sampler runs (a host callback in the wrapped call fires
    once per evaluation, inside the scan): true CFG counts twice, a guidance-embedded student once."""
    from seedjax.diffusion.sampling import Sampler
    from seedjax.models.generator import DiffusionModel
    from seedjax.models.geometry import Geometry

    cfg = tiny(**{"sampling.num_steps": 2})
    state = pretrain.init(cfg, nnx.Rngs(0))
    batch = {k: v[:2] for k, v in batch_for(cfg).items() if k in ("tokens", "text_mask")}
    images = pretrain.sample(state, cfg, jax.random.key(0), batch)
    s = cfg.data.image_size
    assert images.shape == (2, 1, s, s, 1) and float(jnp.abs(images).max()) <= 1.0

    evaluations = []
    original = DiffusionModel.__call__

    def counted(self, x, *args, **kwargs):
        # examples evaluated / prompts: 2 under CFG's doubled batch
        jax.debug.callback(lambda rows: evaluations.append(int(rows) // 2), x.shape[0])
        return original(self, x, *args, **kwargs)

    embedded = pretrain.init(tiny(**{"model.guidance_embed": True}), nnx.Rngs(0)).model
    geometry = Geometry.of(cfg)
    cases = [(state.model, Sampler.make(2, cfg_scale=1.0)), (state.model, Sampler.make(2, cfg_scale=3.0)),
             (embedded, Sampler.make(2, guidance=3.0))]
    try:
        DiffusionModel.__call__ = counted
        for model, sampler in cases:
            evaluations.clear()
            generate = jax.jit(lambda key: sampler.generate(model, batch, geometry, key))
            jax.block_until_ready(generate(jax.random.key(0)))
            jax.effects_barrier()
            assert sum(evaluations) == sampler.nfe, (sampler, evaluations)
    finally:
        DiffusionModel.__call__ = original
    assert [sampler.nfe for _, sampler in cases] == [2, 4, 2]


def test_paro_backend_without_a_plan_is_a_clear_error():
    cfg = tiny(**{"model.attention_backend": "paro"})
    state = pretrain.init(cfg, nnx.Rngs(0))
    with pytest.raises(ValueError, match="paro_plan"):
        flow_matching_loss(state.model, batch_for(cfg), jax.random.key(0), cfg)
