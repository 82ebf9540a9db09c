"""Your own images in latent space: VAE -> cached latents -> latent MMDiT, in one command.

    python -m seedjax.pipeline --pipeline=experiments/custom/folder_latent_pipeline.py:path=/data/images \
        --workdir=runs/mine
    python -m seedjax.pipeline --pipeline=experiments/custom/folder_latent_pipeline.py:tiny,path=/data/images \
        --workdir=/tmp/mine_tiny

vae (folder_vae.py on the images) -> latents (`python -m data_pipelines.cli.prepare --vae=<root>/vae`:
every image fitted to `size` and encoded, as ArrayRecord shards with its caption) ->
latent_pretrain (folder_latent_pretrain.py on those shards; sample grids decoded by the frozen
VAE). Args: `path` (image folder or .jsonl manifest, required), `source` ('' = from path),
`variant` (default | tiny | base), `size` (-1 = the variant's), `num_shards`.
"""

from experiments.custom.folder_pretrain import source_for
from experiments.custom.folder_vae import vae_shape
from seedjax.config import ConfigError, parse_arg


def get_pipeline(arg=None):
    arg = parse_arg(arg, variant="default", path="", source="", size=-1, num_shards=4)
    if not arg.path:
        raise ConfigError("folder_latent_pipeline: give the images as :path=DIR (or path=FILE.jsonl)")
    size, _, _ = vae_shape(arg.variant, arg.size, -1, -1)
    source = source_for(arg.path, arg.source)
    c = "experiments/custom"
    common = f"variant={arg.variant},size={size}"
    return [
        dict(name="vae", config=f"{c}/folder_vae.py:{common},path={arg.path},source={source}"),
        dict(name="latents", module="data_pipelines.cli.prepare", init_from="vae",
             args={"source": source, "path": arg.path, "data.image_size": size, "num_shards": arg.num_shards}),
        dict(name="latent_pretrain", config=f"{c}/folder_latent_pretrain.py:{common}",
             overrides={"data.path": "{root}/latents", "input.vae_workdir": "{root}/vae"}),
    ]
