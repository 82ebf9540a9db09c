"""Checkpoints: one orbax step directory holds the train state, run metadata and the data
iterator state of every process.

    workdir/checkpoints/<step>/state/   model(s), optimizer(s), EMA (orbax, sharded arrays)
                             /meta/    {"step", "seed", "stage", "rng_impl"}
                             /data/    process_<i>-of-<n>.json (Grain iterator states)

Saves are asynchronous. Orbax writes into a temporary directory and renames it when the
save is complete, so a crash leaves either a finished checkpoint or a temporary one;
`restore_latest` skips a checkpoint that fails to restore and falls back to the previous
complete one, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

log = logging.getLogger(__name__)


class _JsonIteratorState:
    """Adapts any iterator with get_state() -> dict / set_state(dict) to Grain's handler."""

    def __init__(self, iterator):
        self.iterator = iterator

    def get_state(self) -> bytes:
        return json.dumps(self.iterator.get_state(), sort_keys=True).encode()

    def set_state(self, state: bytes) -> None:
        self.iterator.set_state(json.loads(state.decode()))

    def start_prefetch(self) -> None:  # called by Grain's handler after a restore
        start = getattr(self.iterator, "start_prefetch", None)
        if start is not None:
            start()


def pure(state) -> dict:
    """nnx.State -> nested dict of arrays (what is written to disk)."""
    return nnx.to_pure_dict(state)


class Checkpointer:
    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._warn_about_partial_saves()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
        )

    def _warn_about_partial_saves(self) -> None:
        if not os.path.isdir(self.directory):
            return
        for name in sorted(os.listdir(self.directory)):
            if re.match(r"^\d+\.orbax-checkpoint-tmp", name):
                log.warning("checkpoint %s was left half-written (crash during save); it is ignored", name)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, data_iterator=None, force: bool = False) -> None:
        items = {
            "state": ocp.args.StandardSave(pure(state)),
            "meta": ocp.args.JsonSave(dict(meta, step=int(step))),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_JsonIteratorState(data_iterator))
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state, shardings, data_iterator=None):
        """Restore `step` onto `shardings` (any mesh); returns (state, meta)."""
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            pure(abstract_state),
            pure(shardings),
        )
        items = {"state": ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(_JsonIteratorState(data_iterator))
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        state = nnx.State(abstract_state) if not isinstance(abstract_state, nnx.State) else abstract_state
        nnx.replace_by_pure_dict(state, restored["state"])
        return state, restored["meta"]

    def restore_latest(self, abstract_state, shardings, data_iterator=None):
        """(state, meta) of the newest checkpoint that restores, or (None, None)."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self.restore(step, abstract_state, shardings, data_iterator)
            except Exception as e:  # a damaged checkpoint must not lose the run
                log.warning("checkpoint at step %d could not be restored (%s: %s); trying the previous one",
                            step, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None, None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_state_tree(path: str) -> dict:
    """The saved train state of another run, as a nested dict of host arrays (`config.init_from`).

    `path` is a workdir (its latest checkpoint) or a step directory. Stages pick what they
    need from it (e.g. ['model'] or ['ema']['params']) in `load_pretrained`.
    """
    path = os.path.abspath(path)
    ckpt_dir = os.path.join(path, "checkpoints")
    if os.path.isdir(ckpt_dir):
        steps = [int(n) for n in os.listdir(ckpt_dir) if n.isdigit()]
        if not steps:
            raise FileNotFoundError(f"config.init_from: no checkpoint in {ckpt_dir}")
        state_dir = os.path.join(ckpt_dir, str(max(steps)), "state")
    elif os.path.isdir(os.path.join(path, "state")):
        state_dir = os.path.join(path, "state")
    else:
        raise FileNotFoundError(f"config.init_from: {path} is neither a workdir with checkpoints/ nor a step directory")
    return _int_keys(ocp.StandardCheckpointer().restore(state_dir))


def _int_keys(tree):
    """Orbax returns list indices as strings ('0'); NNX lists want ints. Attribute names are never digits."""
    if isinstance(tree, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v) for k, v in tree.items()}
    return tree
