"""SeedVR restoration's pieces (seedjax/diffusion/tasks.py, seedjax/stages/restore_adversarial.py,
seedjax/distill/restoration_discriminator.py, seedjax/inference/restoration.py) against references.

- the restoration task puts the degraded clip on every frame with an all-ones mask, and a model
  with 'concat' then reads it (another degraded clip, another velocity);
- the one-step generator is one Euler step of the sampler from t = 1;
- feature matching against a numpy L1, with no gradient into the real features;
- the discriminator's features are the backbone's block outputs, and its logits read the last one;
- config refusals are one line; tiles and ramps cover every pixel with positive weight.
The chain end to end, the restore tool and the quality benchmark: tests/test_restore_e2e.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments.seedvr import restore, restore_adversarial
from seedjax.diffusion import tasks
from seedjax.diffusion.sampling import Sampler
from seedjax.distill.restoration_discriminator import RestorationDiscriminator, feature_block_indices
from seedjax.inference.restoration import ramp, tile_starts
from seedjax.models import generator
from seedjax.models.geometry import Geometry
from seedjax.schema.models import text_config, video_dit_config
from seedjax.stages import restore_adversarial as stage

GEOMETRY = Geometry.video(2, 8, 8, 3, patch=4)


def _config():
    config = ml_collections.ConfigDict()
    config.text = text_config()
    config.text.update(width=32, depth=1, num_heads=2, max_len=8)
    config.model = video_dit_config("tiny", num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6), text_dim=32,
                                    pooled_dim=32, depth=2, in_channels=48, attention="window")
    config.model.window.update(counts=(1, 2, 2), reference=(2, 2))
    return config


def _random(make, seed=0, scale=0.2):
    graphdef, state = nnx.split(nnx.eval_shape(make))
    leaves, tree = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    return nnx.merge(graphdef, jax.tree.unflatten(tree, [jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype)
                                                         for x in leaves]))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"tokens": jnp.asarray(rng.integers(3, 200, (2, 8)), jnp.int32), "text_mask": jnp.ones((2, 8), bool),
            tasks.DEGRADED: jnp.asarray(rng.uniform(-1, 1, (2, *GEOMETRY.shape)), jnp.float32)}


def test_restoration_task_conditions_every_frame_and_the_model_reads_it():
    batch = tasks.restoration_task(_batch(0))
    np.testing.assert_array_equal(batch["cond_frames"], _batch(0)[tasks.DEGRADED])
    np.testing.assert_array_equal(batch["cond_mask"], np.ones((2, 2)))
    model = _random(lambda: generator.build(_config(), nnx.Rngs(0)))
    x, t = GEOMETRY.noise(jax.random.key(1), 2), jnp.array([0.4, 0.9])
    run = jax.jit(lambda b: model(x, t, model.condition(b), GEOMETRY))
    other = tasks.restoration_task(_batch(0) | {tasks.DEGRADED: _batch(1)[tasks.DEGRADED]})
    assert float(jnp.abs(run(batch) - run(other)).max()) > 1e-3


def test_one_step_is_the_samplers_single_euler_step():
    model = _random(lambda: generator.build(_config(), nnx.Rngs(0)))
    batch = tasks.restoration_task(_batch(2))
    noise = GEOMETRY.noise(jax.random.key(3), 2)
    got = jax.jit(lambda n: stage.one_step(model, batch, n, GEOMETRY))(noise)
    sampler = Sampler.make(1, schedule="uniform")
    assert sampler.sigmas == (1.0, 0.0)
    want = jax.jit(lambda n: sampler(sampler.velocity(model, batch, GEOMETRY), n))(noise)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_feature_matching_is_l1_with_fixed_real_features():
    rng = np.random.default_rng(0)
    fake = [jnp.asarray(rng.standard_normal((2, 5, 4))) for _ in range(2)]
    real = [jnp.asarray(rng.standard_normal((2, 5, 4))) for _ in range(2)]
    want = np.mean([np.mean(np.abs(np.asarray(f) - np.asarray(r))) for f, r in zip(fake, real)])
    np.testing.assert_allclose(stage.feature_matching(fake, real), want, rtol=1e-6)
    grad_real = jax.grad(lambda r: stage.feature_matching(fake, r))(real)
    assert all(float(jnp.abs(g).max()) == 0 for g in grad_real)


def test_discriminator_features_are_the_backbones_blocks():
    config = _config()
    assert feature_block_indices(2, (0, -1)) == (0, 1)
    with pytest.raises(ValueError, match="feature_blocks"):
        feature_block_indices(2, (2,))
    disc = _random(lambda: RestorationDiscriminator(config, nnx.Rngs(0), 8, (0, -1)))
    batch = tasks.restoration_task(_batch(4))
    x = GEOMETRY.tokens(jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (2, *GEOMETRY.shape)), jnp.float32))
    logits, features = jax.jit(lambda x: disc(x, batch, GEOMETRY))(x)
    assert logits.shape == (2, GEOMETRY.num_tokens) and len(features) == 2
    t = jnp.zeros((2,))
    _, last = jax.jit(lambda x: disc.backbone(x, t, disc.backbone.condition(batch), GEOMETRY,
                                              return_features=True))(x)
    np.testing.assert_allclose(features[-1], last, atol=1e-5)
    np.testing.assert_allclose(logits, disc.head(last), atol=1e-5)


def test_config_refusals_are_one_line():
    cfg = restore.get_config("variant=tiny")
    tasks.validate_restore(cfg)
    cfg.data.degradations.enabled = False
    with pytest.raises(ValueError, match="degradations.enabled"):
        tasks.validate_restore(cfg)
    cfg = restore.get_config("variant=tiny")
    cfg.diffusion.i2v_fraction = 0.5
    with pytest.raises(ValueError, match="i2v_fraction"):
        tasks.validate_restore(cfg)
    cfg = restore_adversarial.get_config("variant=tiny")
    stage.validate_config(cfg)
    cfg.sampling.num_steps = 4
    with pytest.raises(ValueError, match="one-step"):
        stage.validate_config(cfg)


@pytest.mark.parametrize("size,tile,overlap", [(37, 16, 4), (16, 16, 4), (9, 0, 8), (50, 20, 6)])
def test_tiles_cover_every_pixel_with_positive_weight(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    side = min(tile or size, size)
    covered = np.zeros(size)
    for i, s in enumerate(starts):
        assert 0 <= s and s + side <= size
        covered[s:s + side] += ramp(side, overlap, i == 0, i == len(starts) - 1)
    assert covered.min() > 0
    if len(starts) > 1:  # neighbours share at least `overlap` pixels
        assert all(b - a <= side - overlap for a, b in zip(starts, starts[1:]))


def test_residual_model_predicts_the_degraded_clip_plus_its_output():
    """model.residual: x0 = degraded tokens + the network's output. With the output layer at zero
    (how it is initialised) one step restores to the degraded clip exactly, whatever the noise; a
    velocity config asking for it is refused."""
    config = _config()
    config.model.update(prediction="x0", residual=True)
    model = _random(lambda: generator.build(config, nnx.Rngs(0)))
    model.dit.proj_out.kernel[...] = jnp.zeros_like(model.dit.proj_out.kernel[...])
    model.dit.proj_out.bias[...] = jnp.zeros_like(model.dit.proj_out.bias[...])
    batch = tasks.restoration_task(_batch(6))
    for seed in (0, 1):
        noise = GEOMETRY.noise(jax.random.key(seed), 2)
        got = jax.jit(lambda n: stage.one_step(model, batch, n, GEOMETRY))(noise)
        np.testing.assert_allclose(got, GEOMETRY.tokens(batch["cond_frames"]), atol=1e-5)
    config.model.prediction = "velocity"
    with pytest.raises(ValueError, match="model.residual"):
        generator.build(config, nnx.Rngs(0))
