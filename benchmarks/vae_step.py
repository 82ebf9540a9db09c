"""seedjax's image VAE vs diffusers' AutoencoderKL (PyTorch): one training step, equal work, interleaved.

    python -m benchmarks.vae_step [--sizes=small,sd] [--steps=5] [--warmup=1] [--block=1]
        [--max_load=1.0] [--no-append]

The conv-heavy counterpart of `benchmarks.train_step` (issue 20, item 5). Both sides run the same
step in one process:

- the same model: `ImageVAE` of the size's `VAEConfig` and the AutoencoderKL of
  `seedjax.interop.autoencoder_kl.diffusers_config`, loaded with the seedjax model's initial
  weights (`export_state_dict`); parameter counts are checked equal;
- the same inputs (one NumPy draw of images in [-1, 1]) and loss: the mean squared error of the
  reconstruction from the posterior mean, plus `KL_WEIGHT` x the KL term (no sampling, so both
  sides compute the same number; the VAE stage's perceptual and adversarial terms are left out:
  they would add a VGG and a discriminator to both sides);
- the same AdamW (`benchmarks.train_step.OPTIMIZER`), float32, no EMA; seedjax's step is jitted
  with its state donated.

Equal work is checked before timing: the first loss must agree within 1e-4 relative, and the loss
decrease over two updates within 1%. Timing alternates the sides in turns of `--block` steps
(`benchmarks.protocol.interleave`); medians, min and max per step, the load before and after.
Peak memory is not measured: both frameworks share one process, whose peak RSS mixes them.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks import protocol
from benchmarks.train_step import OPTIMIZER, PARITY_RTOL

KL_WEIGHT = 1e-6
SIZES = {
    # the quickstart-scale VAE of experiments/quickstart/latent_pipeline.py's shapes, 64 x 64 images
    "small": dict(config=dict(base_channels=32, channel_mult=(1, 2, 4), latent_channels=4, norm_groups=8),
                  image=64, batch=8),
    # Stable Diffusion's VAE widths (128-512, f8), 128 x 128 images
    "sd": dict(config=dict(base_channels=128, channel_mult=(1, 2, 4, 4), latent_channels=4, norm_groups=32),
               image=128, batch=2),
    # for the tests: seconds, not minutes
    "tiny": dict(config=dict(base_channels=8, channel_mult=(1, 2), layers_per_block=1, latent_channels=4,
                             norm_groups=4), image=16, batch=2),
}


def vae_config(size: dict):
    from seedjax.schema.models import VAEConfig

    return VAEConfig(**size["config"])


def make_images(size: dict) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (size["batch"], size["image"], size["image"], 3)).astype(np.float32)  # NHWC


class SeedjaxVAE:
    def __init__(self, cfg, images: np.ndarray):
        import jax
        import jax.numpy as jnp
        import optax
        from flax import nnx

        from seedjax.models.vae import ImageVAE, kl_divergence
        from seedjax.train import perf

        # 'rbg' keys: threefry initialisers cost a slow XLA compile per parameter shape on CPU.
        self.model = ImageVAE(cfg, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
        o = OPTIMIZER
        opt = nnx.Optimizer(self.model, optax.adamw(o["lr"], b1=o["b1"], b2=o["b2"], eps=o["eps"],
                                                    weight_decay=o["weight_decay"]), wrt=nnx.Param)
        self.params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(self.model, nnx.Param)))
        graphdef, self.state = nnx.split((self.model, opt))
        self.arrays = jnp.asarray(images)

        def step(state, x):
            model, opt = nnx.merge(graphdef, state)

            def loss_fn(m):
                recon, mean, logvar = m(x)
                return jnp.mean(jnp.square(recon - x)) + KL_WEIGHT * jnp.mean(kl_divergence(mean, logvar))

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            opt.update(model, grads)
            return nnx.state((model, opt)), loss

        # the options of seedjax's own training step (seedjax.train.perf: no YNNPACK convolutions on CPUs)
        self.step_fn = jax.jit(step, donate_argnums=0, compiler_options=perf.compiler_options())
        self._block = jax.block_until_ready

    def export_weights(self) -> dict:
        from seedjax.interop import autoencoder_kl

        return autoencoder_kl.export_state_dict(self.model)

    def step(self):
        self.state, loss = self.step_fn(self.state, self.arrays)
        self._block((self.state, loss))
        return loss

    def __call__(self):
        self.step()


class TorchVAE:
    def __init__(self, cfg, images: np.ndarray, weights: dict):
        import torch
        from diffusers import AutoencoderKL

        from seedjax.interop.autoencoder_kl import diffusers_config

        self.torch = torch
        config = {k: v for k, v in diffusers_config(cfg).items() if not k.startswith("_")}
        self.model = AutoencoderKL(**config).float().train()
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, strict=True)
        self.params = sum(p.numel() for p in self.model.parameters())
        o = OPTIMIZER
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"],
                                     weight_decay=o["weight_decay"])
        self.x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # NCHW

    def step(self):
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        dist = self.model.encode(self.x).latent_dist
        recon = self.model.decode(dist.mean).sample
        kl = 0.5 * (dist.mean.square() + dist.logvar.exp() - 1.0 - dist.logvar).sum(dim=(1, 2, 3))
        loss = torch.mean((recon - self.x) ** 2) + KL_WEIGHT * kl.mean()
        loss.backward()
        self.opt.step()
        return loss.detach()

    def __call__(self):
        self.step()


HEADER = ("| size | batch x image | parameters | seedjax s/step median (min-max) | torch s/step median (min-max) "
          "| throughput ratio (torch time / seedjax time) | load before-after |\n|---|---|---|---|---|---|---|")


def run_size(name: str, args) -> str:
    size = SIZES[name]
    cfg = vae_config(size)
    images = make_images(size)
    load_before = protocol.load_average()
    sj = SeedjaxVAE(cfg, images)
    th = TorchVAE(cfg, images, sj.export_weights())
    if sj.params != th.params:
        raise SystemExit(f"{name}: not the same model: {sj.params} (seedjax) vs {th.params} (torch) parameters")
    sj_losses = [float(sj.step()) for _ in range(3)]
    th_losses = [float(th.step()) for _ in range(3)]
    first = abs(sj_losses[0] - th_losses[0]) / abs(th_losses[0])
    drop = abs((sj_losses[0] - sj_losses[2]) - (th_losses[0] - th_losses[2])) / max(abs(th_losses[0] - th_losses[2]), 1e-30)
    print(f"{name}: parameters {sj.params:,} on both sides; first three losses seedjax "
          f"{' '.join(f'{x:.6f}' for x in sj_losses)}, torch {' '.join(f'{x:.6f}' for x in th_losses)}; first loss "
          f"relative difference {first:.1e}, decrease over two updates {drop:.1e}", flush=True)
    if first > 1e-4 or drop > PARITY_RTOL:
        raise SystemExit(f"{name}: the two steps do not compute the same loss and update (first loss {first:.1e} "
                         f"> 1e-4 or decrease {drop:.1e} > {PARITY_RTOL})")
    stats = protocol.interleave({"seedjax": sj, "torch": th}, rounds=args.steps, warmup=args.warmup, block=args.block)
    sj_t, th_t = stats["seedjax"], stats["torch"]
    return (f"| {name} | {size['batch']} x {size['image']}x{size['image']} | {sj.params:,} | {protocol.spread(sj_t)} "
            f"| {protocol.spread(th_t)} | {th_t['median'] / sj_t['median']:.2f}x | "
            f"{load_before:.2f}-{protocol.load_average():.2f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.vae_step", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--sizes", default="small,sd", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--steps", type=int, default=5, help="timed turns per side")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--block", type=int, default=1, help="steps per turn (times are per step)")
    p.add_argument("--no-append", action="store_true")
    protocol.add_max_load(p)
    args = p.parse_args(argv)
    sizes = [x for x in args.sizes.split(",") if x]
    unknown = [x for x in sizes if x not in SIZES]
    if unknown or not sizes or args.steps < 1 or args.warmup < 0 or args.block < 1:
        p.error(f"bad --sizes (unknown: {unknown}) or --steps/--block < 1 or --warmup < 0")
    load_before = protocol.begin(args.max_load, args.no_append)
    import jax
    import torch

    print(HEADER, flush=True)
    rows = []
    for name in sizes:
        rows.append(run_size(name, args))
        print(rows[-1], flush=True)
    table = "\n".join([
        "\n### VAE train step: seedjax ImageVAE vs diffusers AutoencoderKL (benchmarks/vae_step.py)\n",
        f"Machine: {protocol.machine_header(load_before)}; jax {jax.__version__}, torch {torch.__version__}; "
        f"loss MSE + {KL_WEIGHT:g} KL from the posterior mean, AdamW, float32; {args.steps} timed turns of "
        f"{args.block} step(s) per side after {args.warmup} warm-up turn(s), sides alternating.\n", HEADER, *rows, ""])
    protocol.append(table, load_before, args.max_load, args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
