"""Distillation pieces on a tiny model: loss signs, gradient flow, frozen teachers, NFE, schedules.

The end-to-end chain (every stage through the real loop) is tests/test_distill_pipeline.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.config import load_config
from seedjax.diffusion import guidance as guidance_lib
from seedjax.diffusion import sampling
from seedjax.diffusion.sampling import Sampler, uniform_sigmas
from seedjax.distill import dmd, losses, student, teachers
from seedjax.models import generator as models_generator
from seedjax.models.frozen import Frozen, freeze
from seedjax.models.generator import drop_captions
from seedjax.models.geometry import Geometry
from seedjax.train.params import load_params


def tiny(spec: str, **overrides):
    """A stage config shrunk to a 16x16 image, 2 heads of 16, one double block, 32-wide text (fast compiles)."""
    cfg = load_config(f"experiments/quickstart/{spec}")
    with cfg.unlocked():
        cfg.init_from = "unused"
        cfg.data.image_size = cfg.eval.data.image_size = 16
        cfg.data.max_text_len = cfg.eval.data.max_text_len = cfg.text.max_len = 16
        cfg.text.width = cfg.model.text_dim = cfg.model.pooled_dim = 32
        cfg.text.num_heads = cfg.model.num_heads = 2
        cfg.model.head_dim = 16
        cfg.model.axes_dims_rope = (4, 6, 6)
        cfg.model.depth_double, cfg.model.depth_single = 1, 0
        if "disc" in cfg:
            cfg.disc.levels = (0,)
        cfg.batch_size = 2
        for key, value in overrides.items():
            node = cfg
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return cfg


def batch_for(cfg, n=2, seed=0):
    import data_pipelines

    b = data_pipelines.make_eval_batch(cfg.eval.data if "data" in cfg.eval else cfg.data, num=n, seed=seed)
    return {k: jnp.asarray(v) for k, v in b.items()}


def params_of(module, kind=nnx.Param):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(module, kind))}


def perturb(module, kind=nnx.Param, scale=0.05, seed=0):
    """Random offsets on every weight (zero-initialised output layers would hide all signal)."""
    rng = np.random.default_rng(seed)
    values = nnx.to_pure_dict(nnx.state(module, kind))
    nnx.update(module, jax.tree.map(lambda v: np.asarray(v) + scale * rng.standard_normal(v.shape, np.float32), values))


# --------------------------------------------------------------------------- GAN and DMD losses


def test_hinge_and_logistic_losses_have_the_right_sign():
    real, fake = jnp.array([2.0, 0.5, -0.5]), jnp.array([-2.0, 0.3, 1.5])
    # hinge by hand: relu(1 - real) = [0, .5, 1.5], relu(1 + fake) = [0, 1.3, 2.5]
    np.testing.assert_allclose(losses.discriminator_loss(real, fake, "hinge"), 2.0 / 3 + 3.8 / 3, rtol=1e-6)
    np.testing.assert_allclose(losses.generator_loss(fake, "hinge"), -(-2.0 + 0.3 + 1.5) / 3, rtol=1e-6)
    for kind in ("hinge", "logistic"):
        d_real, d_fake = jax.grad(losses.discriminator_loss, argnums=(0, 1))(real, fake, kind)
        assert np.all(np.asarray(d_real) <= 0) and np.all(np.asarray(d_fake) >= 0)  # D: real up, fake down
        assert np.all(np.asarray(jax.grad(losses.generator_loss)(fake, kind)) < 0)  # G: fake logits up
    with pytest.raises(ValueError, match="GAN loss"):
        losses.generator_loss(fake, "wasserstein")


def test_dmd_loss_gradient_is_the_normalised_score_difference():
    rng = np.random.default_rng(0)
    x0, real, fake = (jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32) for _ in range(3))
    grad = np.asarray(jax.grad(losses.dmd_loss)(x0, real, fake), np.float64)
    x0_, real_, fake_ = (np.asarray(a, np.float64) for a in (x0, real, fake))
    norm = np.abs(x0_ - real_).mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(grad, (fake_ - real_) / norm / x0.size, rtol=1e-5)
    # Descent moves the sample toward the real score's prediction, away from the fake one's.
    stepped = x0_ - 0.1 * x0.size * grad
    assert np.abs(stepped - real_).sum() < np.abs(x0_ - real_).sum()
    # No gradient reaches the score predictions.
    g_real, g_fake = jax.grad(losses.dmd_loss, argnums=(1, 2))(x0, real, fake)
    assert not np.any(np.asarray(g_real)) and not np.any(np.asarray(g_fake))


# --------------------------------------------------------------------------- frozen teachers, loading


def test_freeze_keeps_values_and_names_but_leaves_no_trainable_param():
    cfg = tiny("distill_cfg.py:tiny")
    model = models_generator.build(cfg, nnx.Rngs(0), guidance_embed=False)
    before = params_of(model)
    frozen = freeze(model)
    assert not jax.tree.leaves(nnx.state(frozen, nnx.Param))
    after = params_of(frozen, Frozen)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    kernel = frozen.dit.x_embedder.kernel
    assert isinstance(kernel, Frozen) and kernel.get_metadata()["out_sharding"] == ("in_features", "embed")


def test_load_params_names_the_mismatch():
    cfg = tiny("distill_cfg.py:tiny")
    model = models_generator.build(cfg, nnx.Rngs(0), guidance_embed=False)
    tree = nnx.to_pure_dict(nnx.state(model))
    bad = jax.tree.map(lambda x: x, tree)
    del bad["dit"]["proj_out"]["bias"]
    with pytest.raises(ValueError, match="dit/proj_out/bias is missing"):
        load_params(model, bad, "test")
    bad = jax.tree.map(lambda x: x, tree)
    bad["dit"]["proj_out"]["bias"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"dit/proj_out/bias has shape \(3,\)"):
        load_params(model, bad, "test")
    guided = models_generator.build(cfg, nnx.Rngs(1), guidance_embed=True)
    assert load_params(guided, tree, "test", allow_missing=("guidance_embedder",))  # reported, not fatal
    with pytest.raises(ValueError, match="does not"):
        load_params(model, nnx.to_pure_dict(nnx.state(guided)), "test")  # an extra embedder


# --------------------------------------------------------------------------- velocity, NFE, trajectories


def test_bind_cfg_matches_two_evaluations_and_counts_them():
    cfg = tiny("distill_cfg.py:tiny")
    geo = Geometry.of(cfg)
    model = models_generator.build(cfg, nnx.Rngs(0), guidance_embed=False)
    perturb(model)
    b = batch_for(cfg)
    x = jax.random.normal(jax.random.key(0), (2, *geo.token_shape))
    t = jnp.array([0.3, 0.8])

    calls = []
    original = type(model.dit).__call__

    def counting(self, x, *a, **k):
        calls.append(x.shape[0])
        return original(self, x, *a, **k)

    @nnx.jit
    def three_ways(model):
        empty = {k: v for k, v in b.items() if k in ("tokens", "text_mask")}
        uncond = guidance_lib.bind(model, drop_captions(empty, jax.random.key(0), 1.0), geo)(x, t)
        cond = guidance_lib.bind(model, b, geo)(x, t)
        calls.clear()
        guided = guidance_lib.bind(model, b, geo, cfg_scale=jnp.array([1.5, 4.0]))(x, t)
        return guided, cond, uncond

    type(model.dit).__call__ = counting
    try:
        guided, cond, uncond = three_ways(model)
    finally:
        type(model.dit).__call__ = original
    assert calls == [4]  # one batched call of cond + uncond: 2 evaluations per example
    expected = uncond + jnp.array([1.5, 4.0])[:, None, None] * (cond - uncond)
    np.testing.assert_allclose(guided, expected, rtol=1e-4, atol=1e-5)
    assert teachers.teacher_nfe_per_call(model, 3.0) == 2


def test_nfe_counts_cfg_twice_and_students_once():
    assert Sampler.make(50, 1.0, 3.0).nfe == 100
    cfg = tiny("distill_cfg.py:tiny")
    assert student.nfe(cfg) == cfg.sampling.num_steps  # the guidance is embedded
    tscd = tiny("distill_tscd.py:tiny")
    assert student.nfe(tscd) == 6
    with tscd.unlocked():
        tscd.sampling.guidance_scale = 2.0
    assert student.nfe(tscd) == 12


def test_rollout_and_one_step_x0_match_a_float64_euler_reference():
    sigmas = uniform_sigmas(4, 3.0)
    a = np.array([0.5, -1.0])[:, None, None]

    def velocity(x, t):  # a linear field: v = a x + t
        return jnp.asarray(a, jnp.float32) * x + t[:, None, None]

    noise = np.random.default_rng(0).normal(size=(2, 3, 2))
    states = np.asarray(sampling.rollout(velocity, jnp.asarray(noise, jnp.float32), sigmas))
    ref = [noise]
    for i in range(4):
        x = ref[-1]
        ref.append(x + (float(sigmas[i + 1]) - float(sigmas[i])) * (a * x + float(sigmas[i])))
    np.testing.assert_allclose(states, np.stack(ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sampling.integrate(velocity, jnp.asarray(noise, jnp.float32), sigmas), ref[-1],
                               rtol=1e-5, atol=1e-5)
    x0 = sampling.x0_prediction(velocity, jnp.asarray(ref[1], jnp.float32), jnp.full((2,), sigmas[1]))
    np.testing.assert_allclose(x0, ref[1] - sigmas[1] * (a * ref[1] + sigmas[1]), rtol=1e-5, atol=1e-5)


def test_high_noise_timesteps_follow_the_cubic_schedule():
    t = np.asarray(teachers.high_noise_t(jax.random.key(0), 200_000))
    assert t.min() >= 0 and t.max() <= 1
    # t = 1 - u^3: E[t] = 3/4, P(t > 1/2) = P(u < 2^(-1/3)) = 0.7937
    assert abs(t.mean() - 0.75) < 3e-3
    assert abs((t > 0.5).mean() - 2 ** (-1 / 3)) < 3e-3


def test_tscd_segments_end_on_the_student_grid():
    from seedjax.stages import distill_tscd

    cfg = tiny("distill_tscd.py:tiny", **{"tscd.grid_steps": 6, "sampling.shift": 3.0})
    sigmas, ends = distill_tscd.segment_grid(cfg)
    np.testing.assert_allclose(ends, sigmas[[2, 2, 4, 4, 6, 6]])
    assert set(np.round(ends, 6)) <= set(np.round(uniform_sigmas(6, 3.0), 6))  # the 6-NFE sampling grid
    with cfg.unlocked():
        cfg.tscd.grid_steps = 7
    with pytest.raises(ValueError, match="multiple of segments"):
        distill_tscd.validate_config(cfg)


# --------------------------------------------------------------------------- stages on a tiny model


def descent(loss_fn, module, lr=1e-2):
    """The loss before and after one plain gradient step on `module`'s Params (one compiled function)."""

    @nnx.jit
    def step(m):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        nnx.update(m, jax.tree.map(lambda p, g: p - lr * g, nnx.state(m, nnx.Param), grads))
        return loss, loss_fn(m)

    before, after = step(module)
    return float(before), float(after)


def test_cfg_distillation_student_learns_and_teacher_stays():
    from seedjax.stages import distill_cfg

    cfg = tiny("distill_cfg.py:tiny")
    state = distill_cfg.init(cfg, nnx.Rngs(0))
    assert not jax.tree.leaves(nnx.state(state.teacher, nnx.Param))
    perturb(state.teacher, Frozen)  # a teacher whose guided velocity is not zero
    b, rng = batch_for(cfg), jax.random.key(1)
    teacher, model = params_of(state.teacher, Frozen), params_of(state.model)
    step = nnx.jit(lambda s: distill_cfg.train_step(s, b, rng, cfg))  # the real step: its optimizer, its EMA
    losses_seen = [float(step(state)["loss"]) for _ in range(3)]
    assert losses_seen[2] < losses_seen[0] and int(state.optimizer.step[...]) == 3
    assert any(np.any(v != model[k]) for k, v in params_of(state.model).items())
    for k, v in params_of(state.teacher, Frozen).items():
        np.testing.assert_array_equal(v, teacher[k])


def test_dmd_generator_gradient_never_reaches_the_fake_score_and_fake_score_learns():
    from seedjax.stages import distill_dmd

    cfg = tiny("distill_dmd.py:variant=tiny,dmd=dmdo", **{"sampling.num_steps": 2, "dmd.segments": 2})
    state = distill_dmd.init(cfg, nnx.Rngs(0))
    for i, module in enumerate((state.model, state.fake_score)):
        perturb(module, seed=i)
    perturb(state.teacher, Frozen, seed=2)
    b = batch_for(cfg)
    work = dict(b, **nnx.jit(lambda m: dmd.student_rollout(m, b, jax.random.key(0), cfg))(state.model))
    assert work["states"].shape[:2] == (2, 3)
    np.testing.assert_array_equal(work["states"][:, 0], work["noise"])
    # The DMD loss differentiated with respect to the fake score: exactly zero everywhere.
    grads = nnx.jit(nnx.grad(lambda f: distill_dmd.dmd_generator_loss(state.model, state.teacher, f, work,
                                                                     jax.random.key(2), cfg)[0]))(state.fake_score)
    leaves = jax.tree.leaves(grads)
    assert leaves and not any(np.any(np.asarray(g)) for g in leaves)
    # The generator's step moves its sample along the DMD direction, toward the real score's
    # prediction and away from the fake score's (first order in the step size).
    rng_step, rng_noise = jax.random.split(jax.random.key(2))
    geo, guidance = Geometry.of(cfg), cfg.distill.teacher_guidance

    @nnx.jit
    def sample_and_direction(model, teacher, fake):
        x0 = dmd.generator_x0(model, work, rng_step, cfg)
        x_t, t, _ = dmd.renoise(x0, rng_noise, cfg.dmd.t_min, cfg.dmd.t_max)
        real = sampling.x0_prediction(teachers.teacher_velocity(teacher, work, geo, guidance), x_t, t)
        return x0, real - sampling.x0_prediction(fake.velocity(work, geo, guidance), x_t, t)

    x0_before, direction = sample_and_direction(state.model, state.teacher, state.fake_score)
    descent(lambda m: distill_dmd.dmd_generator_loss(m, state.teacher, state.fake_score, work, jax.random.key(2),
                                                     cfg)[0], state.model, lr=0.1)
    x0_after, _ = sample_and_direction(state.model, state.teacher, state.fake_score)
    assert float(jnp.vdot(x0_after - x0_before, direction)) > 0
    # The fake score's flow-matching loss on the student's samples goes down along its gradient.
    before, after = descent(lambda f: dmd.fake_score_loss(f, work, jax.random.key(3), cfg)[0], state.fake_score)
    assert after < before


def test_adm_discriminator_and_generator_pull_in_opposite_directions():
    from seedjax.stages import distill_adm

    cfg = tiny("distill_adm.py:tiny")
    state = distill_adm.init(cfg, nnx.Rngs(0))
    for i, module in enumerate((state.model, state.fake_score, state.disc)):
        perturb(module, seed=i)
    perturb(state.teacher, Frozen, seed=3)
    assert not jax.tree.leaves(nnx.state(state.disc.backbone, nnx.Param))  # frozen teacher backbone
    b = batch_for(cfg)
    work = dict(b, **nnx.jit(lambda m: dmd.student_rollout(m, b, jax.random.key(0), cfg))(state.model))
    d_loss = lambda d: distill_adm.adm_disc_loss(d, state.teacher, state.fake_score, work, jax.random.key(1), cfg)[0]
    before, after = descent(d_loss, state.disc, lr=1e-2)
    assert after < before
    g_loss = lambda m: distill_adm.adm_generator_loss(m, state.fake_score, state.disc, work, jax.random.key(2), cfg)[0]
    before, after = descent(g_loss, state.model, lr=1.0)
    assert after < before  # -D(fake) went down: the fake branch looks more real to D


def test_repeat_runs_updates_in_one_loop_and_averages_metrics():
    counter = nnx.Variable(jnp.zeros(()))

    class Holder(nnx.Module):
        def __init__(self):
            self.count = counter

    holder = Holder()

    def update(h, i):
        h.count[...] = h.count[...] + 1.0
        return {"i": jnp.asarray(i, jnp.float32)}

    metrics = dmd.repeat(5, update, holder)
    assert float(holder.count[...]) == 5.0 and float(metrics["i"]) == 2.0


def test_dmdo_steps_from_the_start_of_trajectory_segments():
    cfg = tiny("distill_dmd.py:variant=tiny,dmd=dmdo")  # 6 student steps in TSCD's 3 segments
    np.testing.assert_array_equal(dmd.segment_starts(cfg), [0, 2, 4])
    with cfg.unlocked():
        cfg.dmd.segments = 0
    np.testing.assert_array_equal(dmd.segment_starts(cfg), np.arange(6))
    with cfg.unlocked():
        cfg.dmd.segments = 4
    with pytest.raises(ValueError, match="must divide"):
        dmd.validate_config(cfg)
