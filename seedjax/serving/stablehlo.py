"""The whole text-to-image generator as one StableHLO program per image size (`jax.export`).

    fn(params, tokens int32 [b, L], text_mask bool [b, L], noise f32 [b, N, D], guidance f32 [b])
        -> pixels f32 [b, H, W, C] in [-1, 1]

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

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.diffusion import guidance as guidance_lib
from seedjax.inference import weights_file
from seedjax.inference.bundle import Bundle
from seedjax.models import generator
from seedjax.models.geometry import Geometry
from seedjax.train.params import to_pixels

PLATFORMS = ("cpu", "cuda", "tpu")


def geometry_at(bundle: Bundle, height: int, width: int) -> Geometry:
    """The geometry the generator denoises for HxW images (a latent run: the VAE's grid)."""
    default, size = bundle.geometry, int(bundle.config.data.image_size)
    factor = size // default.height  # 1 in pixel space, the VAE's spatial factor in latent space
    step = factor * default.patch
    if height % step or width % step:
        raise ValueError(f"size {height}x{width}: height and width must be multiples of {step} "
                         f"(patch {default.patch}" + (f" x VAE factor {factor})" if factor > 1 else ")"))
    return Geometry.image(height // factor, width // factor, default.channels, default.patch)


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


def image_function(bundle: Bundle, flat_params: dict, height: int, width: int):
    """fn(flat_params, tokens, text_mask, noise, guidance) -> pixels [b, H, W, C] (module docstring)."""
    if bundle.model.is_video:
        raise ValueError("StableHLO export of video generators is not supported yet (image generators only)")
    geometry = geometry_at(bundle, height, width)
    graphdef, state = nnx.split(bundle.model)
    template = nnx.to_pure_dict(state)
    dtypes = {name: leaf.dtype for name, leaf in weights_file.flat_names(template)}
    config, sampler, kind = bundle.config, bundle.sampler, guidance_kind(bundle)
    attention = functools.partial(generator.attention_kwargs, config)
    names = set(flat_params)

    def fn(flat, tokens, text_mask, noise, guidance):
        if set(flat) != names:
            raise ValueError("fn: the parameter names differ from the exported ones")
        params = weights_file.unflatten(weights_file.dequantize(flat, dtypes), template)
        filled = jax.tree.map(lambda leaf: leaf, state)  # a fresh State to fill: `state` stays the template
        nnx.replace_by_pure_dict(filled, params)
        model = nnx.merge(graphdef, filled)
        n = tokens.shape[0]
        batch = {"tokens": tokens, "text_mask": text_mask,
                 "target_size": jnp.broadcast_to(jnp.asarray([height, width], jnp.int32), (n, 2))}
        velocity = guidance_lib.bind(model, batch, geometry, attention=attention,
                                     guidance=guidance if kind == "embedded" else sampler.guidance,
                                     cfg_scale=guidance if kind == "cfg" else 1.0)
        x = sampler(velocity, model.start(noise, batch, geometry))
        pixels = to_pixels(geometry.frames_of(x), config)
        return jnp.clip(pixels, -1.0, 1.0)[:, 0]

    return fn, geometry


def export(bundle: Bundle, flat_params: dict, height: int, width: int,
           platforms: tuple[str, ...] = PLATFORMS) -> tuple[bytes, dict]:
    """(serialized jax.export artifact, its signature for the manifest) at HxW, symbolic batch."""
    fn, geometry = image_function(bundle, flat_params, height, width)
    (b,) = jax.export.symbolic_shape("b")
    length = int(bundle.config.data.max_text_len)
    specs = ({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat_params.items()},
             jax.ShapeDtypeStruct((b, length), jnp.int32), jax.ShapeDtypeStruct((b, length), jnp.bool_),
             jax.ShapeDtypeStruct((b, *geometry.token_shape), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.float32))
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(*specs)
    channels = int(exported.out_avals[0].shape[-1])
    signature = {"height": height, "width": width, "max_text_len": length, "noise_shape": list(geometry.token_shape),
                 "channels": channels, "platforms": list(exported.platforms)}
    return bytes(exported.serialize()), signature


def reference_noise(seed: int, n: int, token_shape) -> np.ndarray:
    """The noise `seedjax.tools.sample --seed=seed` starts n images from."""
    return np.asarray(jax.random.normal(jax.random.key(seed), (n, *token_shape), jnp.float32))
