"""AAPT's distillation pieces: the R3GAN objective, student forcing, the frame discriminator and the
consistency pairs (seedjax/distill/r3gan.py, causal.py, frame_discriminator.py, stages/aapt_*.py).

- the relativistic pairing losses against float64; the exact R1/R2 against the analytic Jacobian
  of a tiny discriminator; the approximate R1/R2 (AAPT's finite difference) against the exact
  penalty, in value and in its gradient on the discriminator's parameters;
- student forcing: one block-causal pass over the rolled-out video recomputes the rollout's frames
  (the KV-cached recurrence), in both attention modes, and sends gradients to the parameters;
- the frame discriminator gives one logit a frame, and a change to frame k changes no earlier logit;
- the consistency pairs: on a one-step grid the target is the teacher's Euler step to t = 0 and a
  student equal to the teacher has zero loss; configs the AAPT stages cannot run are refused.
The end-to-end chain (experiments/seedance/aapt_pipeline.py:tiny) runs in tests/test_video_e2e.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.config import load_config
from seedjax.distill import causal, r3gan
from seedjax.distill.frame_discriminator import FrameDiscriminator
from seedjax.models import generator
from seedjax.models.geometry import Geometry
from tests.test_causal_video import BATCH, FRAMES, KEY, _config, _model
from tests.test_video_dit import _random

CLIP = Geometry.video(FRAMES, 4, 8, 3, patch=2)

# --------------------------------------------------------------------------- R3GAN


def _softplus64(x):
    return np.logaddexp(0.0, x)


def test_relativistic_losses_match_float64():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(3, 1, 4)) * 3, rng.normal(size=(3, 2, 4)) * 3  # real paired with 2 segments
    d = r3gan.relativistic_d_loss(jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32))
    g = r3gan.relativistic_g_loss(jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32))
    np.testing.assert_allclose(d, np.mean(_softplus64(fake - real)), rtol=1e-6)
    np.testing.assert_allclose(g, np.mean(_softplus64(real - fake)), rtol=1e-6)
    # The generator's gradient raises every fake logit by sigmoid(real - fake) / count: toward "real".
    grad = jax.grad(r3gan.relativistic_g_loss, argnums=1)(jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32))
    np.testing.assert_allclose(grad, -1.0 / (1.0 + np.exp(fake - real)) / fake.size, rtol=1e-5)


def _disc(params, x):
    """A tiny discriminator with two logits: x [B, 5] -> [B, 2]."""
    w1, b1, w2 = params
    return jnp.tanh(x @ w1 + b1) @ w2


def _disc_params(seed: int = 0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=s) * 0.7, jnp.float32) for s in ((5, 7), (7,), (7, 2)))


def test_exact_penalty_is_the_squared_jacobian_norm():
    params = _disc_params()
    x = np.random.default_rng(1).normal(size=(4, 5))
    w1, b1, w2 = (np.asarray(p, np.float64) for p in params)
    slope = 1.0 - np.tanh(x @ w1 + b1) ** 2  # [B, 7]
    jacobians = np.einsum("ij,bj,jk->bki", w1, slope, w2)  # d logit k / d x_i
    expected = np.mean(np.sum(jacobians**2, axis=(1, 2)))
    got = r3gan.exact_penalty(lambda v: _disc(params, v), jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_approximate_penalty_tends_to_the_exact_one_with_its_gradient():
    params = _disc_params(2)
    x = jnp.asarray(np.tile(np.random.default_rng(3).normal(size=(4, 5)), (4096, 1)), jnp.float32)  # many noise draws
    sigma, key = 1e-2, jax.random.key(0)
    exact = lambda p: r3gan.exact_penalty(lambda v: _disc(p, v), x[:4])
    approx = lambda p: r3gan.approximate_penalty(lambda v: _disc(p, v), x, key, sigma)
    np.testing.assert_allclose(approx(params), exact(params), rtol=0.03)
    g_exact = jnp.concatenate([g.ravel() for g in jax.jit(jax.grad(exact))(params)])
    g_approx = jnp.concatenate([g.ravel() for g in jax.jit(jax.grad(approx))(params)])
    cosine = jnp.dot(g_exact, g_approx) / (jnp.linalg.norm(g_exact) * jnp.linalg.norm(g_approx))
    assert cosine > 0.99 and abs(jnp.linalg.norm(g_approx) / jnp.linalg.norm(g_exact) - 1) < 0.05
    with pytest.raises(ValueError, match="sigma > 0"):
        r3gan.approximate_penalty(lambda v: _disc(params, v), x, key, 0.0)


# --------------------------------------------------------------------------- student forcing


@pytest.mark.parametrize("mode", ["decoupled", "full_3d"])
def test_student_forcing_pass_recomputes_the_rollout(mode):
    graphdef, params = nnx.split(_model(mode))

    @jax.jit
    def run(params):
        model = nnx.merge(graphdef, params)
        out = causal.student_forcing(model, BATCH, KEY, CLIP)
        return out, causal.forced_frames(model, BATCH, out["noise"], out["rollout"], CLIP)

    out, again = run(params)
    # FRAMES = 6 frames through a causal window of 3: the ring buffer's frames are the mask's.
    np.testing.assert_allclose(again, out["rollout"], atol=1e-5)
    late = lambda p: jnp.sum(causal.forced_frames(nnx.merge(graphdef, p), BATCH, out["noise"], out["rollout"],
                                                  CLIP)[:, -8:] ** 2)
    grads = jax.tree.leaves(jax.jit(jax.grad(late))(params))
    assert sum(float(jnp.sum(jnp.abs(g))) for g in grads) > 0


def test_frame_discriminator_gives_a_causal_logit_per_frame():
    disc = _random(lambda: FrameDiscriminator(_config("decoupled"), nnx.Rngs(0), 16), scale=0.1)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, CLIP.num_tokens, CLIP.token_dim)), jnp.float32)
    logits = disc(x, BATCH, CLIP)
    assert logits.shape == (2, FRAMES)
    changed = disc(x.at[:, 3 * 8:4 * 8].add(1.0), BATCH, CLIP)  # frame 3's tokens (8 a frame)
    np.testing.assert_allclose(changed[:, :3], logits[:, :3], atol=1e-6)
    assert np.abs(np.asarray(changed[:, 3:] - logits[:, 3:])).min() > 1e-6


# --------------------------------------------------------------------------- consistency pairs and configs


def _tiny_stage_config(**overrides):
    return load_config("experiments/seedance/aapt_consistency.py:tiny", {k: str(v) for k, v in overrides.items()})


def test_one_step_consistency_target_is_the_teachers_step_to_clean():
    from seedjax.stages import aapt_consistency

    config = _tiny_stage_config(**{"aapt.grid_steps": 1})
    model = _random(lambda: generator.build(config, nnx.Rngs(0)), scale=0.05)
    rng = np.random.default_rng(5)
    frames = config.data.video.num_frames
    batch = {"tokens": jnp.asarray(rng.integers(3, 200, (2, 48)), jnp.int32),
             "video": jnp.asarray(rng.uniform(-1, 1, (2, frames, 16, 16, 3)), jnp.float32)}
    pairs = aapt_consistency.consistency_pairs(model, model, batch, jax.random.key(1), config)
    np.testing.assert_array_equal(pairs["t"], np.ones((2, frames)))
    x0, geometry = causal.clean_clip(batch, config)
    one_step = pairs["x_t"] - causal.teacher_forced(model, batch, pairs["x_t"], pairs["t"], x0, geometry)
    np.testing.assert_allclose(pairs["target"], one_step, atol=1e-6)
    loss, _ = aapt_consistency.student_loss(model, batch | pairs, config)
    assert float(loss) < 1e-10  # the student is the teacher: one step is already consistent


def test_aapt_stages_refuse_bidirectional_or_guided_configs():
    from seedjax.stages import aapt_adversarial

    aapt_adversarial.validate_config(load_config("experiments/seedance/aapt_adversarial.py:tiny"))
    for overrides, message in [({"model.causal": False}, "model.causal=True"),
                               ({"model.recycle": False}, "model.recycle=True"),
                               ({"sampling.guidance_scale": 3.0}, "no guidance"),
                               ({"aapt.sigma": 0.0}, "sigma"),
                               ({"init_from": ""}, "init_from")]:
        config = load_config("experiments/seedance/aapt_adversarial.py:tiny",
                             {k: str(v) for k, v in overrides.items()})
        with pytest.raises(ValueError, match=message):
            aapt_adversarial.validate_config(config)
