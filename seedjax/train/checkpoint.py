"""Checkpoints: one orbax step directory holds the train state, run metadata and the data
iterator position.

    workdir/checkpoints/<step>/state/      model(s), optimizer(s), EMA (orbax, sharded arrays)
                             /meta/       {"step", "seed", "stage"}
                             /iterator/   the data iterator state (JSON)

The data iterator state is the position of the *global* batch stream (see
data_pipelines/core/streams.py), identical on every process, so process 0 writes it once and a
checkpoint written by N processes resumes with M. Checkpoints written before this layout
hold it as Grain's per-process files `data/process_<i>-of-<n>.json`; process 0's is read.

Saves are asynchronous. Orbax writes into a temporary directory and renames it (or, on
object stores, writes a commit marker) when the save is complete, so a crash leaves either
a finished checkpoint or a half-written one. `restore_latest` ignores half-written ones
with a warning; a finished checkpoint that does not fit the config or fails to restore
raises `RestoreError` (the loop exits 2): progress is never thrown away by starting over.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from seedjax.train import workdir as workdir_lib

log = logging.getLogger(__name__)


# The file orbax writes last into a finished step directory on GCS (orbax's CommitFileTemporaryPath).
COMMIT_MARKER = "commit_success.txt"


class RestoreError(RuntimeError):
    """A finished checkpoint that cannot be restored into this run (exit code 2)."""


class CheckpointMismatch(RestoreError):
    """A finished checkpoint of another model (another architecture) than the config's."""


def pure(state) -> dict:
    """nnx.State -> nested dict of arrays (what is written to disk)."""
    return nnx.to_pure_dict(state)


def _flat_shapes(tree) -> dict[str, tuple]:
    """'a/b/0' -> shape for every leaf with a shape (arrays, abstract arrays, orbax metadata)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
            for path, leaf in leaves if hasattr(leaf, "shape")}


def describe_mismatch(saved: dict[str, tuple], wanted: dict[str, tuple], limit: int = 3) -> str:
    """One line naming how two flat {name: shape} trees differ ('' when they agree)."""
    missing = sorted(set(wanted) - set(saved))
    extra = sorted(set(saved) - set(wanted))
    reshaped = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
    parts = []
    for label, names in (("not in the checkpoint", missing), ("only in the checkpoint", extra)):
        if names:
            more = f" and {len(names) - limit} more" if len(names) > limit else ""
            parts.append(f"{len(names)} {label} ({', '.join(names[:limit])}{more})")
    if reshaped:
        shown = ", ".join(f"{k} {saved[k]} -> {wanted[k]}" for k in reshaped[:limit])
        more = f" and {len(reshaped) - limit} more" if len(reshaped) > limit else ""
        parts.append(f"{len(reshaped)} with another shape ({shown}{more})")
    return "; ".join(parts)


class Checkpointer:
    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.directory = workdir_lib.as_path(workdir) / "checkpoints"  # orbax wants absolute paths
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
                "iterator": ocp.JsonCheckpointHandler(),
            },
        )

    def _warn_about_partial_saves(self) -> None:
        """Name the checkpoints a crash left half-written: on local disks a step directory still
        under orbax's temporary name; on GCS (no atomic rename) a step directory without orbax's
        commit marker. Orbax ignores both and removes them (cleanup_tmp_directories)."""
        if not self.directory.exists():
            return
        on_gcs = str(self.directory).startswith("gs://")
        for path in sorted(self.directory.iterdir()):
            if re.match(r"^\d+\.orbax-checkpoint-tmp", path.name) or (
                    on_gcs and path.name.isdigit() and not (path / COMMIT_MARKER).exists()):
                log.warning("checkpoint %s was left half-written (crash during save); it is ignored", path.name)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, data_iterator=None, force: bool = False) -> None:
        items = {
            "state": ocp.args.StandardSave(pure(state)),
            "meta": ocp.args.JsonSave(dict(meta, step=int(step))),
        }
        if data_iterator is not None:
            items["iterator"] = ocp.args.JsonSave(data_iterator.get_state())
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def check_fits(self, step: int, abstract_state) -> None:
        """Raise RestoreError naming the differences when checkpoint `step` holds another model."""
        saved = _flat_shapes(self.manager.item_metadata(step)["state"])
        difference = describe_mismatch(saved, _flat_shapes(pure(abstract_state)))
        if difference:
            raise CheckpointMismatch(f"checkpoint {step} in {self.directory} holds another model than this config: "
                               f"{difference}")

    def restore(self, step: int, abstract_state, shardings, data_iterator=None):
        """Restore `step` onto `shardings` (any mesh, any process count); returns (state, meta)."""
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            pure(abstract_state),
            pure(shardings),
        )
        items = {"state": ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore()}
        step_dir = self.directory / str(step)
        new_layout = (step_dir / "iterator").exists()
        if data_iterator is not None and new_layout:
            items["iterator"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if data_iterator is not None:
            data_iterator.set_state(restored["iterator"] if new_layout else _legacy_iterator_state(step_dir))
        state = nnx.State(abstract_state) if not isinstance(abstract_state, nnx.State) else abstract_state
        nnx.replace_by_pure_dict(state, restored["state"])
        return state, restored["meta"]

    def restore_latest(self, abstract_state, shardings, data_iterator=None):
        """(state, meta) of the newest finished checkpoint, or (None, None) when there is none.

        Raises RestoreError when that checkpoint holds another model or fails to restore:
        falling back to an older one or to step 0 would silently throw progress away."""
        step = self.manager.latest_step()
        if step is None:
            return None, None
        try:
            self.check_fits(step, abstract_state)
            return self.restore(step, abstract_state, shardings, data_iterator)
        except RestoreError:
            self.close()
            raise
        except Exception as e:  # storage errors, damaged files: stop, name the cause, keep the files
            _quiet_failed_restore()
            self.close()
            cause = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise RestoreError(f"checkpoint {step} in {self.directory} could not be restored "
                               f"({type(e).__name__}: {cause[:300]}); its files are kept: repair them, or move "
                               f"{self.directory / str(step)} away to resume from the previous checkpoint") from e

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _quiet_failed_restore() -> None:
    """After a failed restore, orbax's other pending reads finish into a closed event loop and
    asyncio reports each of them on stderr, some at interpreter exit. The cause is already in
    the RestoreError: wait for the stragglers and silence asyncio, so it stays the last line."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    threading.excepthook = lambda args: None
    time.sleep(2.0)


def _legacy_iterator_state(step_dir: epath.Path) -> dict:
    """The data position of a checkpoint saved with Grain's per-process files (all equal)."""
    files = sorted((step_dir / "data").glob("process_0-of-*.json"))
    if not files:
        raise RestoreError(f"{step_dir} has neither iterator/ nor data/process_0-of-N.json")
    return json.loads(files[0].read_text())


def state_dir(path: str) -> epath.Path:
    """The saved state of a workdir (its latest checkpoint) or of a step directory."""
    path = workdir_lib.as_path(path)
    ckpt_dir = path / "checkpoints"
    if ckpt_dir.is_dir():
        steps = [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()]
        if not steps:
            raise FileNotFoundError(f"config.init_from: no checkpoint in {ckpt_dir}")
        return ckpt_dir / str(max(steps)) / "state"
    if (path / "state").is_dir():
        return path / "state"
    raise FileNotFoundError(f"config.init_from: {path} is neither a workdir with checkpoints/ nor a step directory")


def load_state_tree(path: str) -> dict:
    """The saved train state of another run, as a nested dict of host arrays (`config.init_from`).

    `path` is a workdir (its latest checkpoint) or a step directory. Stages pick what they
    need from it (e.g. ['model'] or ['ema']['params']) in `load_pretrained`.
    """
    # Restored without a target, orbax puts every array on the first local device; as host arrays
    # they load under any mesh (a device-0 array copied under a multi-device mesh is an error).
    return jax.tree.map(np.asarray, _int_keys(ocp.StandardCheckpointer().restore(state_dir(path))))


def saved_tree(path: str):
    """The saved state's tree of array metadata (shapes and dtypes; no array is read)."""
    # The handler, not StandardCheckpointer: the latter also looks for a step-level
    # _CHECKPOINT_METADATA inside state/ (the manager writes it one level up) and logs a warning.
    return ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir(path)))


def restore_part(path: str, target: dict) -> dict:
    """Read only the arrays named in `target` (a nested dict of jax.ShapeDtypeStruct with
    shardings, e.g. {'ema': {'params': ...}}) from a saved state, directly onto their shardings."""
    item = _str_keys(target)
    restored = ocp.PyTreeCheckpointer().restore(state_dir(path), args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
    return _int_keys(restored)


def _str_keys(tree):
    if isinstance(tree, dict):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _int_keys(tree):
    """Orbax returns list indices as strings ('0'); NNX lists want ints. Attribute names are never digits."""
    if isinstance(tree, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v) for k, v in tree.items()}
    return tree
