"""Weights between seedjax's MMDiT and diffusers' `FluxTransformer2DModel`, one to one.

    model = flux.from_pretrained('/ckpt/FLUX.1-dev/transformer')   # diffusers folder -> MMDiT
    flux.save_pretrained(model, '/out/transformer')                 # MMDiT -> diffusers folder

or, with state dicts in memory (torch tensors, numpy or jax arrays, e.g. from safetensors):

    cfg = flux.config_from_diffusers(torch_model.config)
    model = MMDiT(cfg, nnx.Rngs(0)); flux.load_state_dict(model, torch_model.state_dict())
    state_dict = flux.export_state_dict(model)   # torch layout, float32 numpy

Torch Linear weights are [out, in]; seedjax kernels are [in, out] (transposed on the way).
The size embedding (cfg.size_embed) has no Flux counterpart: import leaves it at its
zero initialisation (a no-op), export refuses a model that has one.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from seedjax.models import block_layout, mmdit
from seedjax.schema.models import mmdit_config

# One row per parameter: diffusers key -> (path of attributes / list indices in MMDiT, is a Linear weight).
ParamMap = dict[str, tuple[tuple[Any, ...], bool]]

_DOUBLE_STREAMS = {
    "img": dict(modulation="norm1", q="attn.to_q", k="attn.to_k", v="attn.to_v", q_norm="attn.norm_q",
                k_norm="attn.norm_k", out="attn.to_out.0", up="ff.net.0.proj", down="ff.net.2"),
    "txt": dict(modulation="norm1_context", q="attn.add_q_proj", k="attn.add_k_proj", v="attn.add_v_proj",
                q_norm="attn.norm_added_q", k_norm="attn.norm_added_k", out="attn.to_add_out",
                up="ff_context.net.0.proj", down="ff_context.net.2"),
}


def param_map(cfg: ml_collections.ConfigDict) -> ParamMap:
    """Every diffusers Flux parameter name for `cfg` and where it lives in `MMDiT`."""
    table: ParamMap = {}

    def linear(torch_name: str, *path):
        table[f"{torch_name}.weight"] = ((*path, "kernel"), True)
        table[f"{torch_name}.bias"] = ((*path, "bias"), False)

    def norm(torch_name: str, *path):
        table[f"{torch_name}.weight"] = ((*path, "scale"), False)

    linear("x_embedder", "x_embedder")
    linear("context_embedder", "context_embedder")
    embedders = [("timestep_embedder", "time_embedder"), ("text_embedder", "pooled_embedder")]
    if cfg.guidance_embed:
        embedders.append(("guidance_embedder", "guidance_embedder"))
    for torch_name, ours in embedders:
        linear(f"time_text_embed.{torch_name}.linear_1", ours, "up")
        linear(f"time_text_embed.{torch_name}.linear_2", ours, "down")
    for i in range(cfg.depth_double):
        for stream, names in _DOUBLE_STREAMS.items():
            block = ("double_blocks", i, stream)
            prefix = f"transformer_blocks.{i}."
            linear(prefix + names["modulation"] + ".linear", *block, "modulation", "linear")
            for ours in ("q", "k", "v", "out"):
                linear(prefix + names[ours], *block, ours)
            norm(prefix + names["q_norm"], *block, "q_norm")
            norm(prefix + names["k_norm"], *block, "k_norm")
            linear(prefix + names["up"], *block, "mlp", "up")
            linear(prefix + names["down"], *block, "mlp", "down")
    for i in range(cfg.depth_single):
        block, prefix = ("single_blocks", i), f"single_transformer_blocks.{i}."
        linear(prefix + "norm.linear", *block, "modulation", "linear")
        for ours in ("q", "k", "v"):
            linear(prefix + f"attn.to_{ours}", *block, ours)
        norm(prefix + "attn.norm_q", *block, "q_norm")
        norm(prefix + "attn.norm_k", *block, "k_norm")
        linear(prefix + "proj_mlp", *block, "mlp_in")
        linear(prefix + "proj_out", *block, "out")
    linear("norm_out.linear", "final_modulation", "linear")
    linear("proj_out", "proj_out")
    return table


def _variable(model: mmdit.MMDiT, path: tuple[Any, ...]) -> nnx.Variable:
    step = lambda node, key: node[key] if isinstance(key, int) else getattr(node, key)
    return functools.reduce(step, path, model)


def _unrolled_twin(model: mmdit.MMDiT) -> mmdit.MMDiT:
    """An unrolled MMDiT holding a scan_layers model's parameters (abstract where they are)."""
    cfg = ml_collections.ConfigDict(model.cfg.to_dict())
    cfg.scan_layers = False
    twin = nnx.eval_shape(lambda: mmdit.MMDiT(cfg, nnx.Rngs(0)))
    values = nnx.to_pure_dict(nnx.state(model))
    if not any(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree.leaves(values)):
        nnx.update(twin, block_layout.match_block_layout(values, twin))
    return twin


def _to_numpy(tensor) -> np.ndarray:
    if hasattr(tensor, "detach"):  # torch (float() first: numpy has no bfloat16)
        return tensor.detach().float().cpu().numpy()
    return np.asarray(tensor).astype(np.float32)


def _short(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def load_state_dict(model: mmdit.MMDiT, state_dict: Mapping[str, Any]) -> mmdit.MMDiT:
    """Copy a diffusers Flux state dict into `model` in place (and return it).

    `model` may be abstract (`nnx.eval_shape`): every Flux parameter is replaced whole.
    Raises one ValueError listing every missing key, unexpected key and shape mismatch.
    """
    if mmdit.is_scanned(model.cfg):  # Flux names blocks one by one: load an unrolled twin, then stack
        twin = _unrolled_twin(model)
        load_state_dict(twin, state_dict)
        nnx.update(model, block_layout.match_block_layout(nnx.to_pure_dict(nnx.state(twin)), model))
        return model
    table = param_map(model.cfg)
    missing = sorted(set(table) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(table))
    values, mismatched = {}, []
    for key in sorted(set(table) & set(state_dict)):
        path, is_kernel = table[key]
        value = _to_numpy(state_dict[key])
        value = value.T if is_kernel else value
        expected = tuple(_variable(model, path).shape)
        if value.shape != expected:
            torch_shape = expected[::-1] if is_kernel else expected
            mismatched.append(f"{key}: got {tuple(state_dict[key].shape)}, model needs {torch_shape}")
        values[key] = value
    problems = []
    if missing:
        problems.append(f"missing keys [{_short(missing)}]")
    if unexpected:
        problems.append(f"unexpected keys [{_short(unexpected)}]")
    if mismatched:
        problems.append(f"shape mismatches [{_short(mismatched)}]")
    if problems:
        raise ValueError("Flux state dict does not fit the MMDiT config: " + "; ".join(problems))
    for key, value in values.items():
        _variable(model, table[key][0]).set_value(jnp.asarray(value))
    return model


def export_state_dict(model: mmdit.MMDiT) -> dict[str, np.ndarray]:
    """The model's parameters as a diffusers Flux state dict (float32 numpy, torch layout)."""
    check_exportable(model.cfg)
    if mmdit.is_scanned(model.cfg):
        return export_state_dict(_unrolled_twin(model))
    out = {}
    for key, (path, is_kernel) in param_map(model.cfg).items():
        value = np.asarray(_variable(model, path)[...], np.float32)
        out[key] = np.ascontiguousarray(value.T if is_kernel else value)
    return out


def check_exportable(cfg: ml_collections.ConfigDict) -> None:
    """Raise if `cfg` uses something FluxTransformer2DModel cannot express."""
    for key, what in (("size_embed", "size embedding"), ("meta_embed", "meta-info embedding")):
        if cfg.get(key, False):
            raise ValueError(f"Flux export: the {what} (cfg.{key}) has no FluxTransformer2DModel counterpart")
    if cfg.get("reference_attention", "joint") != "joint":
        raise ValueError("Flux export: FluxTransformer2DModel packs references in one sequence "
                         "(cfg.reference_attention='joint'), not cached")
    target = mmdit.prediction(cfg)[0]
    if target != "velocity":
        raise ValueError(f"Flux export: FluxTransformer2DModel predicts a velocity, config predicts {target!r}")
    if cfg.mlp_ratio != 4.0:
        raise ValueError(f"Flux export: FluxTransformer2DModel has mlp_ratio 4, config has {cfg.mlp_ratio}")
    if cfg.rope_theta != 10000.0:
        raise ValueError(f"Flux export: FluxTransformer2DModel has rope theta 10000, config has {cfg.rope_theta}")


def config_from_diffusers(diffusers_config: Mapping[str, Any], **overrides) -> ml_collections.ConfigDict:
    """MMDiT config from a FluxTransformer2DModel config (its `config.json` or `.config`).

    `overrides` set seedjax-only keys (dtype, remat, repa_layer, attention_backend, ...).
    """
    get = lambda key, default: diffusers_config.get(key, default)
    if get("patch_size", 1) != 1:
        raise ValueError(f"Flux config: patch_size {get('patch_size', 1)} is not supported (MMDiT takes patchified tokens)")
    cfg = mmdit_config()
    cfg.update(
        in_channels=int(get("in_channels", 64)),
        out_channels=int(get("out_channels", None) or 0),
        num_heads=int(get("num_attention_heads", 24)),
        head_dim=int(get("attention_head_dim", 128)),
        depth_double=int(get("num_layers", 19)),
        depth_single=int(get("num_single_layers", 38)),
        text_dim=int(get("joint_attention_dim", 4096)),
        pooled_dim=int(get("pooled_projection_dim", 768)),
        guidance_embed=bool(get("guidance_embeds", False)),
        axes_dims_rope=tuple(int(d) for d in get("axes_dims_rope", (16, 56, 56))),
        mlp_ratio=4.0,
        rope_theta=10000.0,
        size_embed=False,
    )
    cfg.update(overrides)
    return cfg


def diffusers_config(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """FluxTransformer2DModel(**diffusers_config(cfg)) has the same shapes as MMDiT(cfg)."""
    check_exportable(cfg)
    return dict(
        patch_size=1,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels or None,
        num_layers=cfg.depth_double,
        num_single_layers=cfg.depth_single,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.num_heads,
        joint_attention_dim=cfg.text_dim,
        pooled_projection_dim=cfg.pooled_dim,
        guidance_embeds=cfg.guidance_embed,
        axes_dims_rope=list(cfg.axes_dims_rope),
    )


def _safetensors_files(path: str) -> list[str]:
    index = os.path.join(path, "diffusion_pytorch_model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(path, s) for s in shards]
    single = os.path.join(path, "diffusion_pytorch_model.safetensors")
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"{path}: no diffusion_pytorch_model.safetensors (or its .index.json) in this folder")


def from_pretrained(path: str, **overrides) -> mmdit.MMDiT:
    """Load a diffusers Flux transformer folder (config.json + safetensors) into a new MMDiT.

    The model is built abstractly and filled from the checkpoint, so no memory goes to a
    random initialisation. `overrides` set seedjax-only config keys (dtype, remat, ...).
    """
    from safetensors import safe_open

    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        raise FileNotFoundError(f"{config_file} not found (expected a diffusers FluxTransformer2DModel folder)")
    with open(config_file) as f:
        cfg = config_from_diffusers(json.load(f), **overrides)
    if cfg.size_embed or cfg.meta_embed:
        raise ValueError("from_pretrained: a Flux checkpoint has no size or meta-info embedding; build MMDiT(cfg with "
                         "size_embed or meta_embed) and call load_state_dict instead")
    state_dict = {}
    for file in _safetensors_files(path):
        with safe_open(file, framework="flax") as f:  # flax: keeps bfloat16 checkpoints readable
            state_dict.update({key: f.get_tensor(key) for key in f.keys()})
    return load_state_dict(nnx.eval_shape(lambda: mmdit.MMDiT(cfg, nnx.Rngs(0))), state_dict)


def save_pretrained(model: mmdit.MMDiT, path: str) -> None:
    """Write a folder `FluxTransformer2DModel.from_pretrained(path)` loads (float32 safetensors)."""
    from safetensors.numpy import save_file

    state_dict = export_state_dict(model)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"_class_name": "FluxTransformer2DModel", **diffusers_config(model.cfg)}, f, indent=2)
    save_file(state_dict, os.path.join(path, "diffusion_pytorch_model.safetensors"))
