"""The workdir: a local directory or an object-store URL (gs://, s3://, ...), reached through
`etils.epath` as orbax does, so every file a run writes or reads lands in the same place.

    config.json     the config of the run (written once the checkpoint, if any, is known to fit)
    done.json       the completion marker: {"step", "total_steps", "stage"}, written by process 0
                    after the final checkpoint of a run that reached total_steps
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os

from etils import epath

from seedjax.config import ConfigError

DONE = "done.json"

# gcsfs logs each file it opens at INFO ("AdaptiveReadaheadCache enabled ..."), which would fill
# the run's log (INFO) on a gs:// workdir; its warnings and errors still show.
logging.getLogger("gcsfs").setLevel(logging.WARNING)

# URL scheme -> (fsspec module that serves it, the install command that brings it)
BACKENDS = {
    "gs": ("gcsfs", "pip install -e '.[gcs]'"),
    "s3": ("s3fs", "pip install s3fs"),
    "az": ("adlfs", "pip install adlfs"),
}


def scheme(workdir: str) -> str:
    return workdir.split("://", 1)[0] if "://" in workdir else ""


def as_path(workdir: str) -> epath.Path:
    """A URL stays a URL; a local path becomes absolute (orbax wants absolute paths)."""
    return epath.Path(workdir) if scheme(workdir) else epath.Path(os.path.abspath(workdir))


def check_workdir(workdir: str) -> None:
    """Raise ConfigError (exit 2) for a workdir that cannot be written, before anything is created."""
    kind = scheme(workdir)
    if kind:
        if kind not in BACKENDS:
            raise ConfigError(f"--workdir={workdir}: unsupported URL scheme {kind}:// "
                              f"(supported: {', '.join(k + '://' for k in BACKENDS)}, or a local path)")
        module, install = BACKENDS[kind]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--workdir={workdir}: {kind}:// needs the {module} package, which is not installed; "
                              f"run: {install}")
        return
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--workdir={workdir} exists and is not a directory")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--workdir={workdir}: {parent} is a file, so the workdir cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir={workdir}: {parent} is not writable")


def write_text(path: epath.Path, text: str) -> None:
    """Write a whole file so that readers see the old or the new content (rename on local disks;
    object stores replace objects whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if scheme(str(path)):
        path.write_text(text)
        return
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: epath.Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def write_done(workdir: str, step: int, total_steps: int, stage: str) -> None:
    write_text(as_path(workdir) / DONE, json.dumps({"step": step, "total_steps": total_steps, "stage": stage}))


def clear_done(workdir: str) -> None:
    """A run that trains further is no longer finished."""
    marker = as_path(workdir) / DONE
    if marker.exists():
        marker.unlink()


def is_done(workdir: str) -> bool:
    return (as_path(workdir) / DONE).exists()


def differing_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (`key: old -> new`)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differing_keys(a, b, f"{prefix}{key}."))
        elif (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
