"""Causal video VAE: causality, first frame = image, windowed = full, bad input, sequence sharding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from seedjax.models import video_vae as vv
from seedjax.parallel import mesh as meshlib, sharding
from seedjax.schema.models import video_vae_config

TINY = dict(base_channels=8, channel_mult=(1, 2, 2, 2), norm_groups=4, layers_per_block=1, latent_channels=8)


def rngs(seed=0):
    # 'rbg' keys: threefry initialisers cost a slow XLA compile per parameter shape on CPU.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


@functools.lru_cache(maxsize=None)
def tiny_vae(name="t4s8c8"):
    return vv.VideoVAE(video_vae_config(name, **TINY), rngs=rngs())


@functools.lru_cache(maxsize=None)
def jitted(vae, method):
    graphdef, state = nnx.split(vae)
    fn = jax.jit(lambda s, x: getattr(nnx.merge(graphdef, s), method)(x))
    return lambda x: fn(state, x)


def video(frames, size=16, batch=1, seed=0):
    return jax.random.uniform(jax.random.key(seed), (batch, frames, size, size, 3), minval=-1, maxval=1)


def max_rel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


def test_config_presets():
    cfg = video_vae_config()
    assert (cfg.temporal_factor, cfg.spatial_factor, cfg.latent_channels) == (4, 16, 48)
    assert video_vae_config("t8s8c16").temporal_downsample == (True, True, True)
    assert cfg.latent_frames(33) == 9
    with pytest.raises(ValueError, match="t4s16c48"):
        video_vae_config("s16t4")


def test_shapes_and_encoder_causality():
    vae = tiny_vae()
    encode = jitted(vae, "encode")
    x = video(9)
    mean, logvar = encode(x)
    assert mean.shape == logvar.shape == (1, 3, 2, 2, 8)
    # Latent frame i covers input frames 4(i-1)+1 .. 4i; changing frame 5 (latent 2) must
    # leave latents 0 and 1 bit-identical and change latent 2.
    changed, _ = encode(x.at[:, 5].set(0.5))
    np.testing.assert_array_equal(changed[:, :2], mean[:, :2])
    assert float(jnp.abs(changed[:, 2] - mean[:, 2]).max()) > 1e-3


def test_decoder_causality():
    vae = tiny_vae()
    decode = jitted(vae, "decode")
    z = jax.random.normal(jax.random.key(1), (1, 3, 2, 2, 8))
    out = decode(z)
    assert out.shape == (1, 9, 16, 16, 3)
    changed = decode(z.at[:, 2].add(1.0))
    np.testing.assert_array_equal(changed[:, :5], out[:, :5])  # frames of latents 0 and 1
    assert float(jnp.abs(changed[:, 5:] - out[:, 5:]).max()) > 1e-3


def test_first_frame_is_encoded_like_an_image():
    vae = tiny_vae()
    x = video(9, seed=2)
    mean, _ = jitted(vae, "encode")(x)
    image_mean, _ = jitted(vae, "encode_images")(x[:, 0])
    assert max_rel(image_mean, mean[:, 0]) < 1e-5
    # ...and the first latent frame decodes to the same image as a one-frame latent.
    decoded = jitted(vae, "decode")(mean)
    single = jitted(vae, "decode")(mean[:, :1])
    assert single.shape[1] == 1
    assert max_rel(single[:, 0], decoded[:, 0]) < 1e-5


@pytest.mark.parametrize("window", [1, 2])
def test_windowed_encode_and_decode_equal_full(window):
    vae = tiny_vae()
    x = video(9, seed=3)  # 3 latent frames: the first, then windows of 1 + 1 or 2
    mean, _ = jitted(vae, "encode")(x)
    assert max_rel(vv.encode_in_chunks(vae, x, window), mean) < 1e-5
    full = jitted(vae, "decode")(mean)
    assert max_rel(vv.decode_in_chunks(vae, mean, window), full) < 1e-5


def test_frame_by_frame_decoding_equals_full():
    """Streaming (seedjax.tools.stream): latent frames decoded one at a time as they arrive."""
    vae = tiny_vae()
    mean, _ = jitted(vae, "encode")(video(9, seed=4))
    decoder = vv.FrameDecoder(vae)
    parts = [decoder(mean[:, f:f + 1]) for f in range(mean.shape[1])]
    assert [p.shape[1] for p in parts] == [1, 4, 4]
    assert max_rel(jnp.concatenate(parts, axis=1), jitted(vae, "decode")(mean)) < 1e-5


def test_bad_input_names_the_shape():
    vae = tiny_vae()
    with pytest.raises(ValueError, match=r"\(1, 9, 16, 16, 4\)"):
        vae.encode(jnp.zeros((1, 9, 16, 16, 4)))
    with pytest.raises(ValueError, match=r"\(1, 8, 16, 16, 3\).*temporal compression 4"):
        vae.encode(jnp.zeros((1, 8, 16, 16, 3)))
    with pytest.raises(ValueError, match=r"\(1, 5, 4, 16, 3\).*height 4.*factor 8"):
        vae.encode(jnp.zeros((1, 5, 4, 16, 3)))
    with pytest.raises(ValueError, match=r"latents .*8\].*\(1, 2, 2, 2, 4\)"):
        vae.decode(jnp.zeros((1, 2, 2, 2, 4)))


def test_sequence_sharded_forward_matches_one_device():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices; tests/conftest.py sets them")
    vae = tiny_vae()
    x = video(5, size=32, batch=2, seed=4)
    graphdef, state = nnx.split(vae)
    forward = lambda s, v: nnx.merge(graphdef, s)(v)
    reference = jax.jit(forward)(state, x)

    mesh = meshlib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, "sequence": 8})
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.rules_from_config(None)):
        split_rows = NamedSharding(mesh, P(None, None, "sequence"))
        sharded_fn = jax.jit(forward, in_shardings=(NamedSharding(mesh, P()), split_rows))
        out = sharded_fn(state, x)
        compiled = sharded_fn.lower(state, x).compile().as_text()
    # Rows really are split: convolutions exchange halos between neighbouring devices,
    # and the reconstruction comes back split the same way.
    assert "collective-permute" in compiled
    assert out[0].sharding.spec == P(None, None, "sequence")
    for a, b in zip(out, reference):
        assert max_rel(a, b) < 1e-4


def test_moving_digit_clips():
    from data_pipelines.sources.moving_digits import moving_digit_clips

    clips = moving_digit_clips("test", num=3, frames=5, size=32, seed=7)
    assert clips.shape == (3, 5, 32, 32, 1) and clips.min() == -1.0 and clips.max() <= 1.0
    np.testing.assert_array_equal(clips, moving_digit_clips("test", num=3, frames=5, size=32, seed=7))
    ink = (clips > 0).sum(axis=(2, 3, 4))
    assert (ink > 20).all()  # a digit is visible in every frame...
    assert all(not np.array_equal(c[0], c[-1]) for c in clips)  # ...and it moves
