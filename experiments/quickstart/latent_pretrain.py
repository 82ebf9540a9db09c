"""Quickstart in latent space: the MMDiT on cached latents of the quickstart VAE, on CPU.

    python -m seedjax.main --config=experiments/quickstart/vae.py --workdir=runs/qs/vae
    python -m data_pipelines.cli.prepare --source=digits --data.image_size=32 --vae=runs/qs/vae --out=runs/qs/latents
    python -m seedjax.main --config=experiments/quickstart/latent_pretrain.py --workdir=runs/qs/latent_pretrain \
        --config.data.path=runs/qs/latents --config.input.vae_workdir=runs/qs/vae

or all three at once: experiments/quickstart/latent_pipeline.py. The 32x32 digits are 8x8x4
latents of the f4c4 VAE; 2x2 patches make 16 image tokens of 16 channels, the same sequence
as the pixel quickstart's 16x16 digits in 4x4 patches (experiments/quickstart/pretrain.py,
whose model and schedule this reuses). Sample grids and evaluation decode the latents with
the frozen VAE; the held-out prompts and real images are the digits' test split at 32x32
(`eval.data`), so prompt accuracy and FD score the decoded images against real pixels.

Variants: `quickstart` (default) and `tiny` (seconds; CI; evaluates at its last step).
"""

import copy

from experiments.quickstart import pretrain as pixel_pretrain
from seedjax.config import parse_arg

LATENT_CHANNELS = 4  # the f4c4 quickstart VAE (experiments/quickstart/vae.py); checked at start


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1)
    cfg = pixel_pretrain.get_config(f"variant={arg.variant},steps={arg.steps}")
    cfg.data.image_size = 32  # pixels, as the VAE saw them; the latent grid is 32 / 4 = 8
    cfg.eval.data = copy.deepcopy(cfg.data)  # held-out prompts and real images: digits' test split
    cfg.data.source = "shards"  # data.path: the cached latents (the pipeline passes it)
    cfg.input.key = "latent"
    cfg.input.patch_size = 2
    cfg.model.in_channels = cfg.input.patch_size**2 * LATENT_CHANNELS
    if arg.variant == "tiny":
        cfg.eval_every = cfg.total_steps  # exercise decoding in evaluation too
    return cfg
