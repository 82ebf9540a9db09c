"""The layout of an export directory (`python -m seedjax.export`), as the inference bundle reads it.

    DIR/manifest.json        what was exported from where (source run and step, sampler, sizes,
                             formats, quantization, sha256 of every file)
    DIR/config.json          the run's resolved config (format `bundle`)
    DIR/params.safetensors   the generator's parameters (`weights_file`: float, or int8 + scales)
    DIR/vae/                 a latent run's frozen VAE: config.json, params.safetensors, factors.json
                             (`seedjax.train.params.save_exported_vae`)
    DIR/stablehlo/*.jaxexport, DIR/diffusers/{transformer,vae}/   (formats `stablehlo`, `diffusers`)

Only JSON and safetensors are read here: loading an export runs none of its content.
"""

from __future__ import annotations

import json
import os

from seedjax.config import config_from_json
from seedjax.inference import weights_file

MANIFEST = "manifest.json"
CONFIG = "config.json"
PARAMS = "params.safetensors"
VAE = "vae"


def is_export_dir(path: str) -> bool:
    return "://" not in path and os.path.isfile(os.path.join(path, MANIFEST))


def manifest(path: str) -> dict:
    with open(os.path.join(path, MANIFEST)) as f:
        return json.load(f)


def read(path: str):
    """(config, flat parameters, 'ema' | 'model') of an export directory written with format `bundle`."""
    info = manifest(path)
    if "bundle" not in info.get("formats", []):
        raise ValueError(f"{path}: exported without the bundle format (formats {info.get('formats')}); "
                         f"export again with --formats=bundle")
    config = config_from_json(os.path.join(path, CONFIG))
    if config.input.key == "latent":  # decode (and encode) with the export's own copy of the VAE
        with config.unlocked():
            config.input.vae_workdir = os.path.join(os.path.abspath(path), VAE)
    return config, weights_file.load(os.path.join(path, PARAMS)), info["source"]["entry"]
