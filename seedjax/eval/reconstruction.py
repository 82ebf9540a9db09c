"""`type=reconstruction`: how well the VAE stage's autoencoder reconstructs held-out images.

On `num_images` held-out images (the data config's eval split; 0 = config.vae.eval_images),
encoded to the posterior mean and decoded, with the EMA weights when the run keeps them:

    psnr         peak signal-to-noise ratio (images in [-1, 1], peak-to-peak 2), mean over images
    ssim         structural similarity (scikit-image), mean over images
    latent_std   standard deviation of the latents (what the diffusion model's inputs will be)

Image VAEs only (a video VAE reports nothing). Encode and decode run as one compiled function
over chunks of `batch_size` images (the last one padded).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

import data_pipelines
from seedjax.eval import image_quality, samples
from seedjax.stages.vae import eval_vae


class Evaluator:
    def __init__(self, config, *, num_images: int = 0, batch_size: int = 64):
        if "vae" not in config:
            raise ValueError("type reconstruction evaluates the VAE stage's autoencoder (config.vae)")
        self.num = int(num_images or config.vae.eval_images)
        self.batch_size = min(int(batch_size), self.num)
        if self.num < 1 or self.batch_size < 1:
            raise ValueError("type reconstruction: num_images (0 = config.vae.eval_images) and batch_size must be >= 1")
        self.config = config
        self._images = None
        self._reconstruct = None  # (graphdef, jitted encode + decode): compiled once

    def held_out(self) -> np.ndarray:
        if self._images is None:
            batch = data_pipelines.make_eval_batch(self.config.data, num=self.num, seed=self.config.seed)
            self._images = np.asarray(batch["image"], np.float32)
        return self._images

    def reconstructor(self, graphdef):
        if self._reconstruct is None or self._reconstruct[0] != graphdef:

            def reconstruct(params, x):
                vae = nnx.merge(graphdef, params)
                latents = vae.encode(x)[0]
                return {"latents": latents, "recon": jax.numpy.clip(vae.decode(latents), -1.0, 1.0)}

            self._reconstruct = (graphdef, jax.jit(reconstruct))
        return self._reconstruct[1]

    def run(self, state, stage, rng):
        if self.config.vae.kind != "image":
            return
        images = self.held_out()
        graphdef, params = nnx.split(eval_vae(state, self.config))
        reconstruct = self.reconstructor(graphdef)
        out = samples.map_chunks(lambda part, _: reconstruct(params, part["image"]), {"image": images},
                                 self.batch_size)
        recon, latents = out["recon"], out["latents"]
        yield "psnr", image_quality.psnr(recon, images)
        yield "ssim", image_quality.ssim(recon, images)
        yield "latent_std", float(np.std(latents))
