"""Flow matching and the sampler against independent references (diffusers, closed forms)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seedjax.diffusion import flow
from seedjax.diffusion.sampling import Sampler, flow_sigmas
from seedjax.schema.training import diffusion_config


@pytest.mark.parametrize("steps, shift", [(1, 1.0), (6, 3.0), (28, 1.0), (50, 3.0), (30, 0.5)])
def test_sigmas_match_diffusers_flow_match_euler(steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(steps)
    np.testing.assert_allclose(flow_sigmas(steps, shift), ref.sigmas.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(flow_sigmas(steps, shift)[:-1] * 1000, ref.timesteps.numpy(), rtol=1e-6)


def test_euler_steps_match_diffusers_scheduler_step():
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(2, 5, 3)).astype(np.float32)
    velocity = lambda x, t: np.sin(3 * x) * (1 + t[:, None, None])  # any smooth field

    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=2.0)
    ref.set_timesteps(8)
    x = torch.from_numpy(x0.copy())
    for t in ref.timesteps:
        v = torch.from_numpy(velocity(x.numpy(), np.full(2, t.item() / 1000, np.float32)).astype(np.float32))
        x = ref.step(v, t, x).prev_sample

    sampler = Sampler.make(8, shift=2.0)
    ours = sampler(lambda x, t: jnp.sin(3 * x) * (1 + t[:, None, None]), jnp.asarray(x0))
    np.testing.assert_allclose(np.asarray(ours), x.numpy(), rtol=1e-5, atol=1e-5)


def test_shift_and_interpolation():
    t = jnp.linspace(0, 1, 11)
    np.testing.assert_allclose(flow.shift_time(t, 1.0), t, atol=1e-7)
    s = flow.shift_time(t, 3.0)
    assert bool(jnp.all(s >= t)) and float(s[0]) == 0.0 and float(s[-1]) == 1.0
    x0, eps = jnp.ones((2, 3)), jnp.zeros((2, 3))
    np.testing.assert_allclose(flow.interpolate(x0, eps, jnp.array([0.0, 0.25])), [[1] * 3, [0.75] * 3])
    np.testing.assert_allclose(flow.x0_from_velocity(flow.interpolate(x0, eps, jnp.array([0.3, 0.9])),
                                                     flow.velocity_target(x0, eps), jnp.array([0.3, 0.9])), x0,
                               rtol=1e-6)


def test_resolution_shift_grows_with_sqrt_tokens():
    cfg = diffusion_config(shift_mode="resolution", shift=1.0, base_tokens=256)
    assert flow.resolution_shift(256, cfg) == 1.0
    assert flow.resolution_shift(1024, cfg) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shift_mode"):
        flow.resolution_shift(10, diffusion_config(shift_mode="bogus"))


def test_logit_normal_timesteps_have_the_right_distribution():
    cfg = diffusion_config(logit_mean=0.5, logit_std=0.8)
    t = np.asarray(flow.sample_t(jax.random.key(0), 200_000, cfg))
    logit = np.log(t / (1 - t))
    assert abs(logit.mean() - 0.5) < 0.01 and abs(logit.std() - 0.8) < 0.01


def test_token_mask_is_min_pool_in_patchify_order():
    mask = np.ones((1, 8, 8), np.float32)
    mask[0, 5, 1] = 0.0  # one pixel in patch row 1 (rows 4-7), patch col 0 (cols 0-3)
    tm = np.asarray(flow.token_mask(jnp.asarray(mask), 4))
    np.testing.assert_array_equal(tm, [[1, 1, 0, 1]])
    with pytest.raises(ValueError, match="patch size 3"):
        flow.token_mask(jnp.ones((1, 8, 8)), 3)


def test_masked_mse_ignores_masked_tokens_and_keeps_example_weight():
    pred = jnp.zeros((2, 4, 3))
    target = jnp.ones((2, 4, 3)).at[0, 0].set(100.0)
    w = jnp.array([[0, 1, 1, 1], [1, 1, 1, 1]], jnp.float32)
    assert float(flow.masked_mse(pred, target, w)) == pytest.approx(1.0)
    assert float(flow.masked_mse(pred, target)) > 100
