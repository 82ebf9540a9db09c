"""Experiment configs: loading `get_config(arg)` files, typed args, locked overrides, saving.

A config file is a Python file with `get_config(arg: str | None) -> ConfigDict`. The optional
`arg` after a colon (`experiments/quickstart/pretrain.py:variant=tiny,steps=50`) is parsed by
`parse_arg`, typed by the defaults the file declares. Command-line overrides
(`--config.optimizer.lr=3e-4`) may only set keys that exist, with a value of the key's type;
anything else is a `ConfigError`, which `seedjax.main` turns into exit code 2 before the
workdir is touched. Values derived from others (`DERIVED`: the MMDiT's input and text widths,
the reward model's image size...) are resolved after the overrides: `load_config(spec,
overrides)` loads, overrides and resolves in one step, which is how every entry point gets a config.

Loading a config imports no JAX: config files build their groups from `seedjax.schema`
(tests/test_config_imports.py checks every experiment config).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import json
import os
from typing import Any, Iterable

import ml_collections
from etils import epath

import data_pipelines
from seedjax.schema.training import DEFAULT_RULES, optimizer_config


class ConfigError(ValueError):
    """Bad config file, arg or override (exit code 2)."""


def import_named(module_name: str, unknown: str):
    """The module a config names (a stage, an evaluator type); ConfigError(`unknown`) when no such
    module exists. An error raised while importing a module that does exist propagates."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise ConfigError(unknown) from None
        raise


# --------------------------------------------------------------------------- values


def _parse_bool(text: str, key: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected a bool (true/false), got {text!r}")


def coerce(text: str, like: Any, key: str) -> Any:
    """Parse the string `text` into the type of the existing value `like`."""
    if isinstance(like, bool):
        return _parse_bool(text, key)
    if isinstance(like, int):
        try:
            return int(text, 0)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
            raise ConfigError(f"{key}: expected an int, got {text!r}") from None
    if isinstance(like, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected a float, got {text!r}") from None
    if isinstance(like, str):
        return text
    if isinstance(like, (tuple, list)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = tuple(v.strip() for v in text.split(",") if v.strip())
        if not isinstance(value, (tuple, list)):
            value = (value,)
        if like:
            elem = like[0]
            value = [coerce(str(v), elem, key) if not isinstance(v, type(elem)) else v for v in value]
        return type(like)(value)
    if isinstance(like, ml_collections.ConfigDict):
        raise ConfigError(f"{key} is a group of settings; override its fields ({key}.<field>=...)")
    raise ConfigError(f"{key}: cannot override a value of type {type(like).__name__}")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """'variant=tiny,steps=50' -> ConfigDict(variant='tiny', steps=50), typed by `defaults`.

    Every key must be declared in `defaults`; a bare word (no '=') sets `variant` when
    the config declares one, so `:tiny` is short for `:variant=tiny`.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return out
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            key, text = item.split("=", 1)
        elif "variant" in defaults:
            key, text = "variant", item
        else:
            raise ConfigError(f"config arg {item!r}: expected key=value (known keys: {sorted(defaults)})")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(f"config arg {key!r} is not known{_suggest(key, defaults)}")
        out[key] = coerce(text, defaults[key], f"config arg {key}")
    return out


# --------------------------------------------------------------------------- files


def load_config(spec: str, overrides: dict[str, str] | None = None) -> ml_collections.ConfigDict:
    """'path/to/config.py[:arg]' + {'dotted.key': 'text'} -> the locked, resolved ConfigDict.

    A derived value the file left following its rule (see `DERIVED`) is recomputed after the
    overrides, unless it is overridden itself.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_seedjax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as e:  # a broken config file is a config error, with its cause
        raise ConfigError(f"config file {path!r} failed to load: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} has no get_config(arg) function")
    try:
        config = module.get_config(arg or None)
    except ConfigError:
        raise
    except ValueError as e:  # config files reject a bad variant or arg with ValueError
        raise ConfigError(f"{spec}: {e}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict")
    config.lock()
    if overrides:
        following = following_derived(config)
        apply_overrides(config, overrides)
        resolve(config, [key for key in following if key not in overrides])
    return config


def _suggest(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(all_keys(v, full + "."))
    return keys


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str], prefix: str = "config") -> None:
    """Set dotted keys from strings; unknown keys and wrong types raise ConfigError.

    `prefix` names the group in messages (`config.x`; data_pipelines' CLIs override `data.x`).
    """
    for dotted, text in overrides.items():
        parts = dotted.split(".")
        node = config
        for i, part in enumerate(parts):
            here = ".".join(parts[: i + 1])
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                known = all_keys(config)
                raise ConfigError(f"unknown {prefix} key {prefix + '.' + here!r}{_suggest(here, known)}")
            if i == len(parts) - 1:
                with node.unlocked():
                    node[part] = coerce(text, node[part], f"{prefix}.{dotted}")
            else:
                node = node[part]


# --------------------------------------------------------------------------- derived values


def _pixel_in_channels(config):
    if config.input.key not in ("image", "video"):  # latents: the VAE's channels, checked by the stage at start
        return None
    return config.input.patch_size**2 * data_pipelines.channels(config.data)


# Derived key -> its rule (None: does not apply to this config). These are invariants between
# groups (the MMDiT reads what the data and the text encoder produce), so an override of what a
# value derives from must move the value too: `--config.data.source=folder` gives RGB patches.
DERIVED = {
    "model.in_channels": _pixel_in_channels,
    "model.text_dim": lambda c: c.text.width,
    "model.pooled_dim": lambda c: c.text.width,
    "text.max_len": lambda c: c.data.max_text_len,
    "reward_model.channels": lambda c: data_pipelines.channels(c.data),
    "reward_model.image_size": lambda c: c.data.image_size,
    "reward_model.max_text_len": lambda c: c.data.max_text_len,
}


def _lookup(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _derive(config: ml_collections.ConfigDict, key: str):
    """What `key` derives to in `config`; None when the config lacks it or the rule does not apply."""
    try:
        _lookup(config, key)
        return DERIVED[key](config)
    except (KeyError, AttributeError):  # a config without these groups (a VAE, a video model...)
        return None


def following_derived(config: ml_collections.ConfigDict) -> list[str]:
    """The derived keys whose value is what their rule gives (the file linked them, e.g. with
    experiments.common.link_widths). A value set otherwise (a latent model's in_channels) is kept."""
    out = []
    for key in DERIVED:
        try:
            value = _derive(config, key)
        except ValueError:  # e.g. a mixture the data pipeline rejects: validation reports it later
            continue
        if value is not None and _lookup(config, key) == value:
            out.append(key)
    return out


def resolve(config: ml_collections.ConfigDict, keys: Iterable[str]) -> ml_collections.ConfigDict:
    """Recompute the derived `keys` from the (overridden) values they derive from."""
    for key in keys:
        try:
            value = _derive(config, key)
        except ValueError as e:
            raise ConfigError(f"config.{key} cannot be derived: {e}") from None
        if value is None:
            continue
        parent, _, leaf = key.rpartition(".")
        node = _lookup(config, parent)
        with node.unlocked():
            node[leaf] = value
    return config


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w") as f:
        f.write(to_json(config))
    os.replace(tmp, os.path.join(workdir, "config.json"))


def config_from_json(path) -> ml_collections.ConfigDict:
    """The config a workdir was run with (tuples come back as lists); `path` may be a URL."""
    return ml_collections.ConfigDict(json.loads(epath.Path(path).read_text()))


def workdir_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The config.json of a run's workdir (a local path or a gs:// URL), or None when it has none."""
    path = epath.Path(workdir) / "config.json"
    return config_from_json(path) if path.exists() else None


# --------------------------------------------------------------------------- defaults


def base_config(**overrides) -> ml_collections.ConfigDict:
    """The keys every experiment has (DESIGN.md contracts); experiment files add groups
    (model, data, diffusion, ...) and override values."""
    cfg = ml_collections.ConfigDict(
        dict(
            stage="pretrain",
            seed=0,
            total_steps=1000,
            batch_size=32,  # global, across all processes
            log_every=50,
            checkpoint_every=500,
            keep_checkpoints=3,
            sample_every=0,  # write a sample grid every N steps (and at the end); 0 = never
            eval_every=0,  # run config.evals every N steps (and at the end; an entry's `every` overrides); 0 = never
            num_samples=16,  # images in a sample grid
            init_from="",  # workdir or step dir of an earlier stage (parameters only)
            peak_tflops_per_device=0.0,  # for MFU; 0 = known accelerator or measured CPU matmul peak
            preemption_exit_code=143,  # exit code after SIGTERM stopped an unfinished run (it checkpointed)
            mesh=dict(data=-1, fsdp=1, tensor=1, sequence=1),
            sharding=dict(rules=dict(DEFAULT_RULES), replicated_params="error"),  # error | warn | ignore
            optimizer=optimizer_config(),
        )
    )
    cfg.update(overrides)
    return cfg
