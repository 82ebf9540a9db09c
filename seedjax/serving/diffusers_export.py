"""The `diffusers` export format: the DiT as FluxTransformer2DModel, a latent run's VAE as AutoencoderKL.

Weights go through `seedjax.interop` (one parameter table each way); this module decides what
diffusers can express, writes the folders and checks each against diffusers itself on random
inputs (relative error < PARITY_RTOL) when torch and diffusers are installed. What diffusers
cannot express is refused before anything is written (`check`): the video DiT, a velocity-free
target (x0 prediction), the size embedding, other MLP ratios or RoPE bases, a video VAE. The
byte-level text encoder has no diffusers class: it is written as seedjax weights
(`text_encoder/params.safetensors`); a diffusers pipeline must compute its embeddings with seedjax.

What the folders do not carry: FluxTransformer2DModel attends to every text token (no mask), so
its output equals seedjax's only for captions that fill the text length; and it must get
seedjax's position ids (`seedjax.models.mmdit.seedream_position_ids`), not Flux's all-zero text ids.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.inference import weights_file
from seedjax.inference.bundle import Bundle
from seedjax.interop import autoencoder_kl, flux
from seedjax.models import mmdit

PARITY_RTOL = 1e-4


def check(bundle: Bundle) -> None:
    """Raise ValueError (one line, 'diffusers: ...') if the generator has no diffusers form."""
    if bundle.model.is_video:
        raise ValueError("diffusers: the video DiT has no diffusers counterpart (export formats bundle, stablehlo)")
    try:
        flux.check_exportable(bundle.model.dit.cfg)
    except ValueError as e:
        raise ValueError(f"diffusers: {e}") from None
    if bundle.codec is not None and bundle.codec.is_video:
        raise ValueError("diffusers: a video VAE has no AutoencoderKL form")


def write(bundle: Bundle, out: str) -> list[str]:
    """Write transformer/, text_encoder/ and (latent runs) vae/ under `out`; return notes for the manifest."""
    check(bundle)
    transformer = os.path.join(out, "transformer")
    flux.save_pretrained(bundle.model.dit, transformer)
    text = os.path.join(out, "text_encoder")
    os.makedirs(text, exist_ok=True)
    weights_file.save(os.path.join(text, "params.safetensors"),
                      weights_file.flatten(nnx.to_pure_dict(nnx.state(bundle.model.text))))
    with open(os.path.join(text, "config.json"), "w") as f:
        json.dump({"_class_name": "seedjax.models.text.TextEncoder", **bundle.config.text.to_dict()}, f, indent=1)
    notes = ["diffusers/text_encoder holds seedjax weights: diffusers has no byte-level text encoder",
             "diffusers/transformer attends to all text tokens (no mask) and needs seedjax's position ids "
             "(mmdit.seedream_position_ids)"]
    vae = None
    if bundle.codec is not None:
        vae = os.path.join(out, "vae")
        autoencoder_kl.save_diffusers(bundle.codec.vae, vae)
        with open(os.path.join(vae, "config.json")) as f:
            cfg = json.load(f)
        cfg.update(scaling_factor=float(bundle.codec.scaling_factor), shift_factor=float(bundle.codec.shift_factor))
        with open(os.path.join(vae, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    try:
        import diffusers  # noqa: F401  (optional heavy dependencies: only the parity check needs them)
        import torch  # noqa: F401
    except ImportError:
        return notes + ["parity with diffusers NOT checked: torch and diffusers are not installed"]
    errors = [f"transformer max relative error {transformer_parity(bundle, transformer):.1e}"]
    if vae is not None:
        errors.append(f"vae decoder max relative error {vae_parity(bundle, vae):.1e}")
    return notes + ["checked against diffusers on random inputs: " + ", ".join(errors)]


def _relative(ours: np.ndarray, ref: np.ndarray, what: str) -> float:
    rel = float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))
    if not rel < PARITY_RTOL:
        raise RuntimeError(f"diffusers parity: {what} differs from seedjax (max relative error {rel:.2e})")
    return rel


def transformer_parity(bundle: Bundle, folder: str, batch: int = 2, seed: int = 0) -> float:
    import diffusers
    import torch

    model, geometry = bundle.model.dit, bundle.geometry
    cfg, length = model.cfg, int(bundle.config.data.max_text_len)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *geometry.token_shape)).astype(np.float32)
    text = rng.normal(size=(batch, length, cfg.text_dim)).astype(np.float32)
    pooled = rng.normal(size=(batch, cfg.pooled_dim)).astype(np.float32)
    t = rng.uniform(0.05, 1.0, size=(batch,)).astype(np.float32)
    guidance = np.full((batch,), 3.0, np.float32) if cfg.guidance_embed else None
    grid_h, grid_w = geometry.grid_hw
    img_ids, txt_ids = mmdit.seedream_position_ids(grid_h, grid_w, length)
    ours = np.asarray(jax.jit(lambda: model(jnp.asarray(x), jnp.asarray(t), jnp.asarray(text), jnp.asarray(pooled),
                                            text_mask=jnp.ones((batch, length), bool), grid_hw=(grid_h, grid_w),
                                            guidance=None if guidance is None else jnp.asarray(guidance)))())
    reference = diffusers.FluxTransformer2DModel.from_pretrained(folder).eval()
    as_torch = lambda a: None if a is None else torch.from_numpy(np.asarray(a))
    with torch.no_grad():
        ref = reference(hidden_states=as_torch(x), encoder_hidden_states=as_torch(text),
                        pooled_projections=as_torch(pooled), timestep=as_torch(t), img_ids=as_torch(img_ids),
                        txt_ids=as_torch(txt_ids), guidance=as_torch(guidance), return_dict=False)[0].numpy()
    return _relative(ours, ref, "FluxTransformer2DModel")


def vae_parity(bundle: Bundle, folder: str, seed: int = 0) -> float:
    import diffusers
    import torch

    vae = bundle.codec.vae
    latent_shape = bundle.geometry.shape[1:]  # [h, w, c] of one latent frame
    z = np.random.default_rng(seed).normal(size=(1, *latent_shape)).astype(np.float32)
    ours = np.asarray(vae.decode(jnp.asarray(z)))
    reference = diffusers.AutoencoderKL.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = reference.decode(torch.from_numpy(z.transpose(0, 3, 1, 2))).sample.numpy().transpose(0, 2, 3, 1)
    return _relative(ours, ref, "AutoencoderKL decoder")
