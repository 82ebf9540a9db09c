"""What an edit is conditioned on beyond the packed references (issue 17): cached reference
images (model.reference_attention='cached') against one packed sequence with a per-query mask
and against recomputing them at every sampler step; the meta-info embedding (model.meta_embed)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from seedjax.config import ConfigError, load_config
from seedjax.diffusion import guidance as guidance_lib
from seedjax.diffusion import objectives, sampling, tasks
from seedjax.models import attention, generator, mmdit
from seedjax.models.geometry import Geometry
from tests.runner import ROOT
from tests.test_editing import edit_batch, edit_config
from tests.test_mmdit import randomized


def cached_model(scan_layers=False, scale=0.05):
    cfg = edit_config(**{"model.reference_attention": "cached", "model.scan_layers": scan_layers})
    return cfg, randomized(generator.build(cfg, nnx.Rngs(0)), scale=scale)


@pytest.fixture(scope="module")
def cached():
    return cached_model()


def one_sequence_attention(num_txt, num_target):
    """Dense attention over [text | target | references] where a reference query sees the valid
    reference keys only, and a text or target query every valid key: what 'cached' computes in
    two passes, written as one mask."""

    def attend(q, k, v, *, key_mask=None, layer_index=None, layout=None):
        length = k.shape[1]
        is_reference = np.arange(length) >= num_txt + num_target
        allowed = ~is_reference[:, None] | is_reference[None, :]  # [query, key]
        mask = jnp.asarray(allowed)[None] & key_mask.astype(bool)[:, None, :]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        probs = jax.nn.softmax(jnp.where(mask[:, None], logits, -1e30), axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

    return attend


@pytest.mark.parametrize("scan_layers", [False, True])
def test_two_passes_equal_one_sequence_with_a_per_query_mask(scan_layers):
    """At t = 0 every token is modulated alike, so the cached model's target velocity must equal the
    MMDiT on the packed [target | references] sequence (the same weights, the same RoPE ids) under
    a mask that keeps reference queries off the text and the target. Example 0 uses one of its two
    reference slots."""
    cfg, model = cached_model(scan_layers, scale=0.2)  # weights large enough that RoPE ids and masks show
    assert not (cfg.model.size_embed or cfg.model.guidance_embed)  # else t = 0 is not the whole conditioning
    geometry = Geometry.of(cfg)
    batch = tasks.edit_task(edit_batch(cfg))
    cond = model.condition(batch)
    x = geometry.noise(jax.random.key(1), 2)
    t = jnp.zeros((2,))
    ours = model(x, t, cond, geometry)

    attention.register_backend("one_sequence", one_sequence_attention(cfg.data.max_text_len, geometry.num_tokens),
                               overwrite=True)
    packed, image_mask, img_ids, txt_ids = generator.pack_references(x, cond, geometry, cfg.model)
    joint_cfg = ml_collections.ConfigDict(cfg.model.to_dict())
    joint_cfg.update(reference_attention="joint", attention_backend="one_sequence")
    joint = mmdit.MMDiT(joint_cfg, nnx.Rngs(0))
    nnx.update(joint, nnx.state(model.dit))
    theirs = joint(packed, t, cond["text_embeddings"], cond["pooled"], text_mask=cond["text_mask"],
                   image_mask=image_mask, img_ids=img_ids, txt_ids=txt_ids)[:, :geometry.num_tokens]
    assert np.abs(np.asarray(theirs)).max() > 1e-2
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=2e-5, rtol=1e-4)

    # The references do reach the target, and example 0's unused slot does not.
    other = batch | {"references": batch["references"].at[:, 1].multiply(-1.0)}
    changed = np.asarray(model(x, t, model.condition(other), geometry))
    np.testing.assert_array_equal(changed[0], np.asarray(ours)[0])
    assert np.abs(changed[1] - np.asarray(ours)[1]).max() > 1e-3


def test_sampling_with_the_cache_equals_recomputing_every_step(cached):
    """The sampler encodes the references once per CFG branch (three: the instruction's, the empty
    instruction's, and reference guidance's without images); a velocity that re-encodes them at
    every step (the conditioning without the target's geometry) must give the same samples."""
    cfg, model = cached
    geometry = Geometry.of(cfg)
    batch = tasks.edit_task(edit_batch(cfg))
    sampler = sampling.Sampler.make(3, cfg_scale=2.5, reference_scale=1.5)
    noise = geometry.noise(jax.random.key(7), 2)

    def sample(geometry_for_cache):
        c = guidance_lib.condition(model, batch, cfg_scale=2.5, reference_scale=1.5, geometry=geometry_for_cache)
        assert all(("reference_kv" in b) == (geometry_for_cache is not None) for b in (c.cond, c.uncond, c.bare))
        return np.asarray(sampler(lambda x, t: guidance_lib.velocity(model, c, x, t, geometry), noise))

    cached = sample(geometry)
    np.testing.assert_allclose(cached, sample(None), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(sampler.generate(model, batch, geometry, jax.random.key(7))),
                                  np.asarray(geometry.frames_of(jnp.asarray(cached))))


def test_gradients_flow_through_the_reference_pass(cached):
    """Training runs the reference pass inside the step: the target's output has finite gradients
    with respect to every used reference, and none through example 0's unused slot."""
    cfg, model = cached
    geometry = Geometry.of(cfg)
    batch = tasks.edit_task(edit_batch(cfg))
    x = geometry.noise(jax.random.key(1), 2)

    def target_output(references):
        return jnp.sum(model(x, jnp.array([0.6, 0.3]), model.condition(batch | {"references": references}),
                             geometry) ** 2)

    grad = np.asarray(jax.jit(jax.grad(target_output))(batch["references"]))
    assert np.all(np.isfinite(grad))
    assert np.abs(grad[0, 0]).max() > 0 and np.abs(grad[1]).max() > 0
    np.testing.assert_array_equal(grad[0, 1], 0.0)  # example 0's unused slot


@pytest.mark.parametrize("override, message", [
    ({"model.reference_attention": "kv"}, "reference_attention must be one of joint, cached"),
    ({"model.reference_attention": "cached", "model.attention_backend": "paro"}, "needs attention_backend 'dense'"),
])
def test_bad_reference_attention_settings_are_refused(override, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        generator.build(edit_config(**override), nnx.Rngs(0))


# ----------------------------------------------------------------------------- meta-info


def test_meta_info_features_by_hand():
    """present, task one-hot (t2i | edit | multi_ref), log(h / w) of the target, reference count;
    zeros where the caption is the empty one."""
    cond = {"num_references": jnp.array([0, 1, 2, 3]), "meta_dropped": jnp.array([False, False, False, True])}
    got = np.asarray(generator.meta_info(cond, Geometry.image(4, 8, 3, 2), 4))
    a = np.log(0.5)
    np.testing.assert_allclose(got, [[1, 1, 0, 0, a, 0], [1, 0, 1, 0, a, 1], [1, 0, 0, 1, a, 2], [0] * 6], atol=1e-7)
    assert got.shape[1] == mmdit.META_FEATURES
    t2i = {"meta_dropped": jnp.array([False])}  # a text-to-image batch has no reference keys
    np.testing.assert_allclose(np.asarray(generator.meta_info(t2i, Geometry.image(6, 6, 3, 2), 1)), [[1, 1, 0, 0, 0, 0]])


def meta_model():
    """A randomized tiny edit model with a meta embedder as initialised (its output layer zero)."""
    cfg = edit_config(**{"model.meta_embed": True})
    model = randomized(generator.build(cfg, nnx.Rngs(0)), scale=0.05)
    down = model.dit.meta_embedder.down
    nnx.update(down, jax.tree.map(jnp.zeros_like, nnx.state(down, nnx.Param)))
    return cfg, model


def test_meta_info_is_dropped_with_the_caption():
    """CFG's unconditional branches and caption dropout drop the meta-info; real captions keep it."""
    cfg, model = meta_model()
    batch = tasks.edit_task(edit_batch(cfg))
    c = guidance_lib.condition(model, batch, cfg_scale=2.0, reference_scale=1.5)
    assert not np.any(c.cond["meta_dropped"]) and np.all(c.uncond["meta_dropped"]) and np.all(c.bare["meta_dropped"])
    dropped = generator.drop_captions(batch, jax.random.key(0), 1.0)
    assert np.all(model.condition(dropped)["meta_dropped"])


def test_meta_info_starts_as_a_no_op_and_trains():
    """A zero-initialised meta embedder leaves the velocity bit for bit that of the same weights
    without one; the flow-matching loss has gradients in its output layer; once that is non-zero,
    an edit's velocity changes."""
    cfg, model = meta_model()
    plain = generator.build(edit_config(), nnx.Rngs(0))
    nnx.update(plain, nnx.state(model, lambda path, _: "meta_embedder" not in path))
    geometry = Geometry.of(cfg)
    batch = tasks.edit_task(edit_batch(cfg))
    x, t = geometry.noise(jax.random.key(1), 2), jnp.array([0.7, 0.4])
    ours = lambda: np.asarray(model(x, t, model.condition(batch), geometry))
    theirs = np.asarray(plain(x, t, plain.condition(batch), geometry))
    np.testing.assert_array_equal(ours(), theirs)

    train_batch = edit_batch(cfg) | {"image": jnp.zeros((2, cfg.data.image_size, cfg.data.image_size, 3))}
    grads = nnx.jit(nnx.grad(lambda m: objectives.flow_matching_loss(m, train_batch, jax.random.key(3), cfg)[0]))(model)
    assert np.abs(np.asarray(grads.dit.meta_embedder.down.kernel[...])).max() > 0

    randomized(model.dit.meta_embedder, scale=0.5)
    assert np.abs(ours() - theirs).max() > 1e-3


def test_distillation_refuses_a_meta_info_model():
    """The distillation discriminators' trunk reads no meta-info: refused before anything runs."""
    from seedjax.distill import student

    cfg = load_config(f"{ROOT}/experiments/quickstart/distill_cfg.py:tiny",
                      {"init_from": "runs/teacher", "model.meta_embed": "true"})
    with pytest.raises(ValueError, match="meta-info embedding"):
        student.validate_config(cfg)
