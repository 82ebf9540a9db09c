"""diffusers `AutoencoderKL` <-> `seedjax.models.vae.ImageVAE` weights.

    cfg = config_from_diffusers(json.load(open("vae/config.json")))
    vae = ImageVAE(cfg, rngs=nnx.Rngs(0))
    import_state_dict(vae, safetensors.numpy.load_file("vae/diffusion_pytorch_model.safetensors"))

or in one call `vae = load_diffusers("path/to/vae")`, and back with `save_diffusers(vae, "out/")`
(a directory `AutoencoderKL.from_pretrained` reads). No torch needed: state dicts are numpy.

Layout changes: conv weights [out, in, kh, kw] -> kernels [kh, kw, in, out]; linear weights
[out, in] -> [in, out]; GroupNorm `weight` -> `scale`. Checkpoints that still use the old
attention names (`query`, `key`, `value`, `proj_attn`) are read too.
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.models.vae import ImageVAE
from seedjax.schema.models import VAEConfig

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
_LEGACY_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def config_from_diffusers(config: Mapping, **overrides) -> VAEConfig:
    """A diffusers AutoencoderKL config dict -> VAEConfig (fails on layouts ImageVAE lacks)."""
    c = dict(config)
    for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = set(c.get(key, [allowed]))
        if types != {allowed}:
            raise ValueError(f"AutoencoderKL config: {key}={sorted(types)} is not supported (only {allowed})")
    if c.get("act_fn", "silu") != "silu":
        raise ValueError(f"AutoencoderKL config: act_fn={c['act_fn']!r} is not supported (only 'silu')")
    in_ch, out_ch = c.get("in_channels", 3), c.get("out_channels", 3)
    if in_ch != out_ch:
        raise ValueError(f"AutoencoderKL config: in_channels={in_ch} != out_channels={out_ch} is not supported")
    if c.get("latents_mean") is not None or c.get("latents_std") is not None:
        raise ValueError("AutoencoderKL config: per-channel latents_mean/latents_std are not supported")
    widths = [int(w) for w in c.get("block_out_channels", (64,))]
    if any(w % widths[0] for w in widths):
        raise ValueError(f"AutoencoderKL config: block_out_channels={widths} are not multiples of the first")
    fields = dict(
        in_channels=in_ch,
        latent_channels=c.get("latent_channels", 4),
        base_channels=widths[0],
        channel_mult=tuple(w // widths[0] for w in widths),
        layers_per_block=c.get("layers_per_block", 1),
        norm_groups=c.get("norm_num_groups", 32),
        mid_attention=c.get("mid_block_add_attention", True),
        use_quant_conv=c.get("use_quant_conv", True),
        use_post_quant_conv=c.get("use_post_quant_conv", True),
        scaling_factor=float(c.get("scaling_factor", 0.18215)),
        shift_factor=float(c.get("shift_factor") or 0.0),
    )
    fields.update(overrides)
    return VAEConfig(**fields)


def diffusers_config(cfg: VAEConfig) -> dict:
    """VAEConfig -> the kwargs/config.json of an equivalent diffusers AutoencoderKL."""
    n = len(cfg.channel_mult)
    return dict(
        _class_name="AutoencoderKL",
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(cfg.block_channels),
        layers_per_block=cfg.layers_per_block,
        act_fn="silu",
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_groups,
        scaling_factor=cfg.scaling_factor,
        shift_factor=cfg.shift_factor or None,
        use_quant_conv=cfg.use_quant_conv,
        use_post_quant_conv=cfg.use_post_quant_conv,
        mid_block_add_attention=cfg.mid_attention,
    )


# --------------------------------------------------------------------------- name mapping


def _resnet(torch_prefix: str, path: str) -> Iterator[tuple[str, str, str]]:
    for t, j, kind in (("norm1", "norm1", "norm"), ("conv1", "conv1", "conv"), ("norm2", "norm2", "norm")):
        yield f"{torch_prefix}.{t}", f"{path}.{j}", kind
    yield f"{torch_prefix}.conv2", f"{path}.conv2", "conv"


def _mid(torch_prefix: str, path: str, attention: bool) -> Iterator[tuple[str, str, str]]:
    yield from _resnet(f"{torch_prefix}.resnets.0", f"{path}.resnet1")
    if attention:
        a, p = f"{torch_prefix}.attentions.0", f"{path}.attention"
        yield f"{a}.group_norm", f"{p}.norm", "norm"
        for t, j in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "out")):
            yield f"{a}.{t}", f"{p}.{j}", "linear"
    yield from _resnet(f"{torch_prefix}.resnets.1", f"{path}.resnet2")


def parameter_map(vae: ImageVAE) -> list[tuple[str, str, str]]:
    """(diffusers module name, ImageVAE module path, kind) for every leaf layer."""
    cfg, out = vae.config, []
    n = len(cfg.channel_mult)

    def resnets(torch_block: str, block, path: str):
        for j, resnet in enumerate(block.resnets):
            out.extend(_resnet(f"{torch_block}.resnets.{j}", f"{path}.resnets.{j}"))
            if resnet.shortcut is not None:
                out.append((f"{torch_block}.resnets.{j}.conv_shortcut", f"{path}.resnets.{j}.shortcut", "conv"))

    out.append(("encoder.conv_in", "encoder.conv_in", "conv"))
    for i, block in enumerate(vae.encoder.blocks):
        resnets(f"encoder.down_blocks.{i}", block, f"encoder.blocks.{i}")
        if i < n - 1:
            out.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.blocks.{i}.downsample.conv", "conv"))
    out.extend(_mid("encoder.mid_block", "encoder.mid", cfg.mid_attention))
    out += [("encoder.conv_norm_out", "encoder.norm_out", "norm"), ("encoder.conv_out", "encoder.conv_out", "conv")]
    if cfg.use_quant_conv:
        out.append(("quant_conv", "quant_conv", "conv"))
    if cfg.use_post_quant_conv:
        out.append(("post_quant_conv", "post_quant_conv", "conv"))
    out.append(("decoder.conv_in", "decoder.conv_in", "conv"))
    out.extend(_mid("decoder.mid_block", "decoder.mid", cfg.mid_attention))
    for i, block in enumerate(vae.decoder.blocks):
        resnets(f"decoder.up_blocks.{i}", block, f"decoder.blocks.{i}")
        if i < n - 1:
            out.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.blocks.{i}.upsample.conv", "conv"))
    out += [("decoder.conv_norm_out", "decoder.norm_out", "norm"), ("decoder.conv_out", "decoder.conv_out", "conv")]
    return out


def _module(root: nnx.Module, path: str):
    m = root
    for part in path.split("."):
        m = m[int(part)] if part.isdigit() else getattr(m, part)
    return m


# (torch parameter suffix, nnx attribute, torch -> nnx layout, nnx -> torch layout)
_LAYOUTS = {
    "conv": (
        ("weight", "kernel", lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1)),
        ("bias", "bias", None, None),
    ),
    "linear": (("weight", "kernel", lambda w: w.reshape(w.shape[:2]).T, lambda k: k.T), ("bias", "bias", None, None)),
    "norm": (("weight", "scale", None, None), ("bias", "bias", None, None)),
}


def import_state_dict(vae: ImageVAE, state_dict: Mapping[str, np.ndarray]) -> None:
    """Copy a diffusers AutoencoderKL state dict (numpy or torch tensors) into `vae` in place."""
    remaining = dict(state_dict)
    for torch_name, path, kind in parameter_map(vae):
        module = _module(vae, path)
        for suffix, attr, to_nnx, _ in _LAYOUTS[kind]:
            key = f"{torch_name}.{suffix}"
            if key not in remaining and kind == "linear":
                key = _legacy_attention_key(torch_name, suffix, remaining) or key
            if key not in remaining:
                raise KeyError(f"AutoencoderKL state dict: missing {key!r} (for {path}.{attr})")
            value = np.asarray(_to_numpy(remaining.pop(key)), np.float32)
            if to_nnx is not None:
                value = to_nnx(value)
            target = getattr(module, attr)
            expected = target.get_value().shape  # also works on an abstract (eval_shape) model
            if value.shape != expected:
                raise ValueError(
                    f"AutoencoderKL state dict: {key!r} has shape {value.shape} after layout conversion, "
                    f"{path}.{attr} expects {expected}"
                )
            target.set_value(jnp.asarray(value))
    if remaining:
        raise KeyError(f"AutoencoderKL state dict: unexpected keys {sorted(remaining)[:8]} ({len(remaining)} in all)")


def export_state_dict(vae: ImageVAE) -> dict[str, np.ndarray]:
    """`vae`'s weights as a diffusers AutoencoderKL state dict of float32 numpy arrays."""
    out = {}
    for torch_name, path, kind in parameter_map(vae):
        module = _module(vae, path)
        for suffix, attr, _, to_torch in _LAYOUTS[kind]:
            value = np.asarray(getattr(module, attr)[...], np.float32)
            out[f"{torch_name}.{suffix}"] = np.ascontiguousarray(to_torch(value) if to_torch else value)
    return out


def _legacy_attention_key(torch_name: str, suffix: str, state_dict) -> str | None:
    """'encoder.mid_block.attentions.0.to_q' -> '...attentions.0.query' (pre-0.14 diffusers) if present."""
    block, leaf = torch_name.split(".attentions.0.")
    key = f"{block}.attentions.0.{_LEGACY_ATTENTION[leaf]}.{suffix}"
    return key if key in state_dict else None


def _to_numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


def _files(directory: str) -> tuple[str, str]:
    config_path, weights_path = os.path.join(directory, "config.json"), os.path.join(directory, WEIGHTS_FILE)
    for p in (config_path, weights_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"not a diffusers AutoencoderKL directory: {p} is missing")
    return config_path, weights_path


def read_weights(directory: str) -> dict[str, np.ndarray]:
    """The state dict of a local diffusers AutoencoderKL directory, as numpy arrays."""
    from safetensors.numpy import load_file

    return load_file(_files(directory)[1])


def load_diffusers(directory: str, **config_overrides) -> ImageVAE:
    """An ImageVAE from a local diffusers AutoencoderKL directory (config.json + safetensors)."""
    with open(_files(directory)[0]) as f:
        cfg = config_from_diffusers(json.load(f), **config_overrides)
    vae = nnx.eval_shape(lambda: ImageVAE(cfg, rngs=nnx.Rngs(0)))  # every weight comes from the file
    import_state_dict(vae, read_weights(directory))
    return vae


def save_diffusers(vae: ImageVAE, directory: str) -> None:
    """Write config.json and the safetensors weights that `AutoencoderKL.from_pretrained` reads."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(diffusers_config(vae.config), f, indent=2)
    save_file(export_state_dict(vae), os.path.join(directory, WEIGHTS_FILE))
