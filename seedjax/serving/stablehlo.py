"""The whole text-to-image (or text-to-video) generator as one StableHLO program per size (`jax.export`).

Images (sizes HxW):

    fn(params, tokens int32 [b, L], text_mask bool [b, L], noise f32 [b, N, D], guidance f32 [b])
        -> pixels f32 [b, H, W, C] in [-1, 1]

Videos (sizes FxHxW, a video DiT; S shots per prompt at most (`seedjax.export --max_shots`, by
default the run's data.video.max_shots), F' its frames in model space: F, or a video VAE's
1 + (F - 1) / temporal factor):

    fn(params, shot_tokens int32 [b, S, L], shot_mask bool [b, S, L], frame_shot int32 [b, F'],
       first_frame f32 [b, H, W, C], first_mask f32 [b], noise f32 [b, N, D], guidance f32 [b])
        -> pixels f32 [b, F, H, W, C] in [-1, 1]

One caption per shot (unused shots: all-False mask), the shot of every frame, and image-to-video
as data: where first_mask is 1 the clip starts from first_frame (pixels; a latent run's program
encodes it with the frozen video VAE), where it is 0 the first frame is generated (text-to-video).

`b` is symbolic: one artifact serves every batch size. The program holds the text encoder,
every sampler step with its classifier-free guidance (or the guidance embedder's scale), and
the decoder of a latent run (the frozen VAE's weights are constants of the program); the
generator's parameters are its first argument (the flat dict of `weights_file`, int8 arrays
and their scales when quantized: they are dequantized inside the program), so weights live
once on disk, in `params.safetensors`.

The starting noise is an input, not a seed: `noise = jax.random.normal(jax.random.key(seed),
(b, N, D))` is exactly what `seedjax.tools.sample` starts from, so the runner reproduces its
images, and a server can draw each request's noise from the request's own seed, whatever the
batch it joins.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.diffusion import guidance as guidance_lib
from seedjax.inference import weights_file
from seedjax.inference.bundle import Bundle
from seedjax.models import generator
from seedjax.models.geometry import Geometry
from seedjax.train.params import latent_codec, to_pixels

PLATFORMS = ("cpu", "cuda", "tpu")


def geometry_at(bundle: Bundle, size: tuple[int, ...]) -> tuple[Bundle, Geometry]:
    """The bundle at `size` (HxW images; FxHxW videos: the bundle sampling F frames) and the
    geometry its generator denoises there (a latent run: the VAE's grid). Raises ValueError
    on a size the model cannot make."""
    name = "x".join(map(str, size))
    if bundle.model.is_video != (len(size) == 3):
        raise ValueError(f"size {name}: this run generates " + ("videos (sizes are FxHxW, e.g. 9x16x16)"
                                                               if bundle.model.is_video else "images (sizes are HxW)"))
    if len(size) == 3:
        bundle = bundle.with_sampling(frames=size[0])  # raises on frames its video VAE cannot make
    height, width = size[-2:]
    default, pixels = bundle.geometry, int(bundle.config.data.image_size)
    factor = pixels // default.height  # 1 in pixel space, the VAE's spatial factor in latent space
    step = factor * default.patch
    if height % step or width % step:
        raise ValueError(f"size {name}: height and width must be multiples of {step} "
                         f"(patch {default.patch}" + (f" x VAE factor {factor})" if factor > 1 else ")"))
    return bundle, dataclasses.replace(default, height=height // factor, width=width // factor)


def guidance_kind(bundle: Bundle) -> str | None:
    """What the request's guidance scale drives: 'cfg' (two evaluations a step), 'embedded'
    (a CFG-distilled student's guidance embedder) or None (the run samples unguided)."""
    if bundle.sampler.guided:
        return "cfg"
    if bundle.model.guidance_embedded:
        return "embedded"
    return None


def default_guidance(bundle: Bundle) -> float:
    if bundle.sampler.guided:
        return float(bundle.sampler.cfg_scale)
    return float(bundle.sampler.guidance if bundle.sampler.guidance is not None else 1.0)


def generator_function(bundle: Bundle, flat_params: dict, size: tuple[int, ...]):
    """(fn, its bundle at `size`, geometry): fn as in the module docstring, images or videos."""
    bundle, geometry = geometry_at(bundle, size)
    graphdef, state = nnx.split(bundle.model)
    template = nnx.to_pure_dict(state)
    dtypes = {name: leaf.dtype for name, leaf in weights_file.flat_names(template)}
    config, sampler, kind = bundle.config, bundle.sampler, guidance_kind(bundle)
    attention = functools.partial(generator.attention_kwargs, config)
    names = set(flat_params)

    def sample(flat, batch, noise, guidance):
        if set(flat) != names:
            raise ValueError("fn: the parameter names differ from the exported ones")
        params = weights_file.unflatten(weights_file.dequantize(flat, dtypes), template)
        filled = jax.tree.map(lambda leaf: leaf, state)  # a fresh State to fill: `state` stays the template
        nnx.replace_by_pure_dict(filled, params)
        model = nnx.merge(graphdef, filled)
        velocity = guidance_lib.bind(model, batch, geometry, attention=attention,
                                     guidance=guidance if kind == "embedded" else sampler.guidance,
                                     cfg_scale=guidance if kind == "cfg" else 1.0)
        x = sampler(velocity, model.start(noise, batch, geometry))
        return jnp.clip(to_pixels(geometry.frames_of(x), config), -1.0, 1.0)

    def image_fn(flat, tokens, text_mask, noise, guidance):
        target = jnp.broadcast_to(jnp.asarray(size, jnp.int32), (tokens.shape[0], 2))
        batch = {"tokens": tokens, "text_mask": text_mask, "target_size": target}
        return sample(flat, batch, noise, guidance)[:, 0]

    def video_fn(flat, shot_tokens, shot_mask, frame_shot, first_frame, first_mask, noise, guidance):
        # The image-to-video condition of `generation.with_first_frame`, for every row; rows with
        # first_mask 0 get a zero condition, which the video DiT reads as none.
        first = first_frame
        if config.input.key == "latent":
            first = latent_codec(config).encode_jax(first[:, None])[:, 0]
        n = first.shape[0]
        cond_frames = jnp.zeros((n, *geometry.shape), jnp.float32).at[:, 0].set(first * first_mask[:, None, None, None])
        cond_mask = jnp.zeros((n, geometry.frames), jnp.float32).at[:, 0].set(first_mask)
        batch = {"tokens": shot_tokens[:, 0], "text_mask": shot_mask[:, 0], "shot_tokens": shot_tokens,
                 "shot_mask": shot_mask, "frame_shot": frame_shot, "cond_frames": cond_frames, "cond_mask": cond_mask}
        return sample(flat, batch, noise, guidance)

    return (video_fn if bundle.model.is_video else image_fn), bundle, geometry


def export(bundle: Bundle, flat_params: dict, size: tuple[int, ...], platforms: tuple[str, ...] = PLATFORMS,
           max_shots: int = 0) -> tuple[bytes, dict]:
    """(serialized jax.export artifact, its signature for the manifest) at `size`, symbolic batch.
    A video program takes up to `max_shots` shots per prompt (0: the run's data.video.max_shots)."""
    fn, bundle, geometry = generator_function(bundle, flat_params, size)
    (b,) = jax.export.symbolic_shape("b")
    length = int(bundle.config.data.max_text_len)
    spec = jax.ShapeDtypeStruct
    params = {k: spec(v.shape, v.dtype) for k, v in flat_params.items()}
    noise, guidance = spec((b, *geometry.token_shape), jnp.float32), spec((b,), jnp.float32)
    signature = {"height": size[-2], "width": size[-1], "max_text_len": length, "noise_shape": list(geometry.token_shape)}
    if len(size) == 3:
        shots = max_shots or int(bundle.config.data.video.max_shots)
        frame = (b, size[1], size[2], bundle.pixel_shape[-1])
        specs = (params, spec((b, shots, length), jnp.int32), spec((b, shots, length), jnp.bool_),
                 spec((b, geometry.frames), jnp.int32), spec(frame, jnp.float32), spec((b,), jnp.float32),
                 noise, guidance)
        signature |= {"frames": size[0], "model_frames": geometry.frames, "max_shots": shots}
    else:
        specs = (params, spec((b, length), jnp.int32), spec((b, length), jnp.bool_), noise, guidance)
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(*specs)
    signature |= {"channels": int(exported.out_avals[0].shape[-1]), "platforms": list(exported.platforms)}
    return bytes(exported.serialize()), signature
