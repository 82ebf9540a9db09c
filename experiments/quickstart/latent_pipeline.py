"""The quickstart in latent space: VAE -> cached latents -> MMDiT on latents.

    python -m seedjax.pipeline --pipeline=experiments/quickstart/latent_pipeline.py[:tiny] --workdir=runs/latent

vae (f4c4 on 32x32 digits) -> latents (`python -m data_pipelines.cli.prepare --vae=<root>/vae`, the
digits' train split as 8x8x4 latent shards) -> latent_pretrain (on those shards; samples and
evaluation decoded by the frozen VAE). Args: `variant` quickstart | tiny (CI).
"""

from seedjax.config import parse_arg


def get_pipeline(arg=None):
    arg = parse_arg(arg, variant="quickstart")
    v = arg.variant
    q = "experiments/quickstart"
    return [
        dict(name="vae", config=f"{q}/vae.py:variant={v}"),
        dict(name="latents", module="data_pipelines.cli.prepare", init_from="vae",
             args={"source": "digits", "split": "train", "data.image_size": 32, "num_shards": 2}),
        dict(name="latent_pretrain", config=f"{q}/latent_pretrain.py:variant={v}",
             overrides={"data.path": "{root}/latents", "input.vae_workdir": "{root}/vae"}),
    ]
