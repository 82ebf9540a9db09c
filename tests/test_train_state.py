"""Shared training pieces: gradient accumulation, the non-finite guard, EMA, LR schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.schema.training import optimizer_config
from seedjax.train import state as st


class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(3, 8, rngs=rngs)
        self.b = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


def loss_fn(model, batch):
    err = jnp.mean(jnp.square(model(batch["x"]) - batch["y"]))
    return err, {"err": err}


def test_grad_accumulation_equals_full_batch_gradient():
    model = Tiny(nnx.Rngs(0))
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), "y": jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)}
    (l1, a1), g1 = st.value_and_grad(loss_fn, model, batch, 1)
    (l4, a4), g4 = st.value_and_grad(loss_fn, model, batch, 4)
    np.testing.assert_allclose(l1, l4, rtol=1e-6)
    np.testing.assert_allclose(a1["err"], a4["err"], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        st.value_and_grad(loss_fn, model, batch, 3)


def test_nonfinite_update_is_skipped_and_counted():
    model = Tiny(nnx.Rngs(0))
    opt = st.make_optimizer(model, optimizer_config(lr=0.1), 100)
    batch = {"x": jnp.ones((4, 3)), "y": jnp.zeros((4, 2))}
    _, grads = st.value_and_grad(loss_fn, model, batch)
    before = jax.tree.map(lambda v: np.asarray(v), nnx.state(model, nnx.Param))
    bad = jax.tree.map(lambda g: g.at[...].set(jnp.nan), grads)
    opt.update(model, bad)
    opt.update(model, bad)
    after = nnx.state(model, nnx.Param)
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(x, y)
    assert int(st.nonfinite_streak(opt)) == 2 and int(st.total_nonfinite(opt)) == 2
    opt.update(model, grads)
    assert int(st.nonfinite_streak(opt)) == 0 and int(st.total_nonfinite(opt)) == 2
    assert not np.array_equal(np.asarray(model.a.kernel[...]), before["a"]["kernel"][...])


def test_ema_tracks_parameters_with_its_decay():
    model = Tiny(nnx.Rngs(0))
    ema = st.EMA(model, decay=0.9)
    start = np.asarray(model.a.kernel[...])
    model.a.kernel[...] = model.a.kernel[...] + 1.0
    ema.update(model)
    np.testing.assert_allclose(ema.params["a"]["kernel"][...], start + 0.1, rtol=1e-6)
    copy = nnx.clone(model)
    ema.copy_into(copy)
    np.testing.assert_allclose(copy.a.kernel[...], start + 0.1, rtol=1e-6)


def test_lr_schedule_warmup_then_cosine():
    cfg = optimizer_config(lr=1.0, warmup_steps=10, schedule="cosine", end_lr_factor=0.1)
    sched = st.lr_schedule(cfg, total_steps=110)
    assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(1.0)
    assert float(sched(60)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)
    assert float(sched(110)) == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(ValueError, match="schedule"):
        st.lr_schedule(optimizer_config(schedule="steps"), 10)


def test_traced_init_and_ema_update_never_ask_a_tracer_for_its_error_origin(monkeypatch):
    """Flax's indexed set (`var[...] = x`) compares x's sharding; a tracer answers with an error
    message whose origin JAX finds by walking every equation traced so far. Once per parameter in
    model init and in the EMA update, that made tracing quadratic in the parameter count (seconds
    of every train step's trace): neither may do it. The keys stay those of Flax's own stream."""
    from jax._src.interpreters import partial_eval

    from seedjax.models.layers import Linear, next_key

    a, b = nnx.Rngs(3), nnx.Rngs(3)
    for _ in range(3):
        np.testing.assert_array_equal(jax.random.key_data(a.params()), jax.random.key_data(next_key(b.params)))
    assert int(b.params.count[...]) == 3

    asked = []
    origin = partial_eval.DynamicJaxprTracer._origin_msg
    monkeypatch.setattr(partial_eval.DynamicJaxprTracer, "_origin_msg", lambda self: asked.append(1) or origin(self))
    stack = lambda rngs: nnx.List([Linear(4, 4, rngs=rngs) for _ in range(6)])
    abstract = nnx.eval_shape(lambda: stack(nnx.Rngs(0)))
    assert len(jax.tree.leaves(nnx.state(abstract, nnx.Param))) == 12 and not asked

    model = stack(nnx.Rngs(0))
    ema = st.EMA(model, decay=0.5)

    @nnx.jit
    def step(model, ema):
        for layer in model:
            layer.kernel.set_value(layer.kernel[...] + 1.0)
        ema.update(model)

    start = np.asarray(model[0].kernel[...])
    step(model, ema)
    assert not asked
    np.testing.assert_allclose(ema.params[0]["kernel"][...], start + 0.5, rtol=1e-6)
    # The probe itself works: an indexed set of a traced value does ask.
    nnx.jit(lambda m: m[0].kernel.__setitem__(..., m[0].kernel[...] * 2))(model)
    assert asked
