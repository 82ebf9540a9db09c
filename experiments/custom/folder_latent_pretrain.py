"""Text-to-image pretraining in the latent space of your own VAE, on your own images' cached latents.

    python -m seedjax.main --config=experiments/custom/folder_vae.py:path=/data/images --workdir=runs/mine/vae
    python -m data_pipelines.cli.prepare --source=folder --path=/data/images --data.image_size=64 \
        --vae=runs/mine/vae --out=runs/mine/latents
    python -m seedjax.main --config=experiments/custom/folder_latent_pretrain.py --workdir=runs/mine/latent_pretrain \
        --config.data.path=runs/mine/latents --config.input.vae_workdir=runs/mine/vae

or all three at once: experiments/custom/folder_latent_pipeline.py. The model and schedule are
folder_pretrain.py's (same `variant`s), trained on the VAE's latents instead of pixels: it
predicts a velocity, in `patch` x `patch` latent patches (-1: 2, or 1 when the latent grid is
smaller than 16). Sample grids are decoded by the frozen VAE. Nothing is scored on these
images (no digit classifier), so `eval_every` is 0.

Args: `variant` (default | tiny | base), `size`, `factor`, `latents` (-1 = the variant's, as
in folder_vae.py; they must be the VAE's: checked at start against `input.vae_workdir`),
`patch`, `steps`.
"""

from experiments.custom import folder_pretrain
from experiments.custom.folder_vae import vae_shape
from seedjax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="default", size=-1, factor=-1, latents=-1, patch=-1, steps=-1)
    size, factor, latents = vae_shape(arg.variant, arg.size, arg.factor, arg.latents)
    cfg = folder_pretrain.get_config(f"variant={arg.variant},size={size},steps={arg.steps}")
    grid = size // factor
    patch = arg.patch if arg.patch > 0 else (2 if grid >= 16 else 1)
    if grid % patch:
        raise ValueError(f"patch {patch} does not divide the {grid}x{grid} latent grid (size {size} / factor {factor})")
    cfg.data.source = "shards"  # data.path: the cached latents (the pipeline passes it)
    cfg.input.key = "latent"
    cfg.input.patch_size = patch
    cfg.model.prediction = "velocity"
    cfg.model.in_channels = patch**2 * latents
    cfg.eval_every = 0
    return cfg
