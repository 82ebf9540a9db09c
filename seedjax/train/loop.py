"""THE training loop. Every stage (pretrain, vae, sft, rlhf, distill_*) runs through here.

Read top to bottom: config and logging, mesh, data, model and optimizer, restore,
compiled step, loop, final checkpoint. A stage module declares what it supplies as
`STAGE = Stage(init=..., train_step=..., [sample, flops_per_example, load_pretrained,
validate_config, nfe])` (seedjax/train/stage.py); the evaluators come from `config.evals`
(seedjax/train/evaluators.py); see docs/internals.md.
"""

from __future__ import annotations

import logging
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

import data_pipelines
from seedjax import config as config_lib
from seedjax.models.block_layout import match_block_layout
from seedjax.parallel import mesh as mesh_lib
from seedjax.parallel import sharding as sharding_lib
from seedjax.parallel.host import to_host
from seedjax.train import checkpoint as ckpt_lib
from seedjax.train import evaluators as evaluators_lib
from seedjax.train import metrics as metrics_lib
from seedjax.train import perf
from seedjax.train.perf import TrainingAborted
from seedjax.train import workdir as workdir_lib
from seedjax.train.stage import load_stage
from seedjax.train.state import lr_schedule

log = logging.getLogger("seedjax")


def run(config, workdir: str, stop_at_step: int = 0, classifier_features=None) -> int:
    """Train `config.stage` in `workdir`; resume if it holds a checkpoint. Returns an exit code:
    0 finished (or stopped by --stop_at_step), 2 bad config/mesh/workdir or a checkpoint that
    does not fit, `config.preemption_exit_code` when SIGTERM stopped an unfinished run.
    `classifier_features` goes to the data pipeline (data.dual_axis.visual_features='classifier')."""
    try:
        workdir_lib.check_workdir(workdir)
        return _run(config, workdir, stop_at_step, classifier_features)
    except (mesh_lib.MeshError, config_lib.ConfigError) as e:
        print(f"seedjax: error: {e}", file=sys.stderr)
        return 2
    except ckpt_lib.RestoreError as e:
        print(f"seedjax: error: {e}", file=sys.stderr)
        return 2
    except TrainingAborted as e:
        print(f"seedjax: training aborted: {e}", file=sys.stderr)
        return 1


def _run(config, workdir: str, stop_at_step: int, classifier_features) -> int:
    # =====================================================================
    # Config and logging
    # =====================================================================
    logging.basicConfig(level=logging.INFO, format=f"[p{jax.process_index()}] %(asctime)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    for noisy in ("absl", "orbax", "jax._src", "grain"):  # their INFO lines drown the progress line
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stage = load_stage(config.stage)
    evaluators = evaluators_lib.build(config)  # config.evals: a bad entry exits 2 before anything is written
    total_steps = int(config.total_steps)

    # =====================================================================
    # Mesh (before anything is written: a bad mesh exits 2 with the workdir untouched)
    # =====================================================================
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.check_batch_divisible(config.batch_size, mesh)
    rules = sharding_lib.rules_from_config(config.sharding.rules)
    batch_spec = sharding_lib.logical_to_spec(("batch",), rules=rules, mesh=mesh)
    # The rows of each global batch this process's devices hold: its own share when the batch
    # axes span the processes, the whole batch when e.g. a tensor axis does.
    rows = mesh_lib.process_batch_rows(NamedSharding(mesh, P(*batch_spec)), config.batch_size)
    log.info("stage %s | mesh %s | %d processes, %d devices (%s) | batch rows %d:%d here", config.stage,
             dict(mesh.shape), jax.process_count(), jax.device_count(), jax.devices()[0].device_kind, *rows)

    # Abstract init outside the mesh context: NNX would otherwise try to read our logical
    # names as mesh axes. Shapes and logical names are all we need from it.
    make_state = lambda: stage.init(config, nnx.Rngs(config.seed))
    graphdef, abstract_state = nnx.split(nnx.eval_shape(make_state))

    with jax.set_mesh(mesh), sharding_lib.axis_rules(rules):
        # =================================================================
        # Data
        # =================================================================
        data_iter = data_pipelines.make_train_iterator(
            config.data, global_batch_size=config.batch_size, seed=config.seed,
            process_index=jax.process_index(), process_count=jax.process_count(), rows=rows,
            classifier_features=classifier_features)

        def to_global(local_batch):
            return {k: jax.make_array_from_process_local_data(
                NamedSharding(mesh, P(*batch_spec, *([None] * (np.ndim(v) - 1)))), np.asarray(v),
                (config.batch_size, *np.shape(v)[1:]))
                for k, v in local_batch.items()}

        # =================================================================
        # Model and optimizer: abstract init -> shardings -> jitted, directly sharded init
        # =================================================================
        shardings = sharding_lib.state_shardings(abstract_state, mesh, rules)
        perf.check_replicated_params(abstract_state, shardings, mesh, config.sharding.replicated_params)
        init_state = jax.jit(lambda: nnx.split(make_state())[1], out_shardings=shardings)

        # =================================================================
        # Restore (same workdir: exact resume) or initialise (+ init_from parameters)
        # =================================================================
        checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
        try:
            state, meta = checkpointer.restore_latest(abstract_state, shardings, data_iter)
        except ckpt_lib.CheckpointMismatch as e:
            raise ckpt_lib.CheckpointMismatch(f"{e}{_config_change_hint(config, workdir)}") from e
        # Only now is config.json written: a workdir holding another model's checkpoints keeps its own.
        if jax.process_index() == 0:
            workdir_lib.write_text(workdir_lib.as_path(workdir) / "config.json", config_lib.to_json(config))
            if int(meta["step"] if state is not None else 0) < total_steps:
                workdir_lib.clear_done(workdir)
        if state is not None:
            start_step = int(meta["step"])
            log.info("resumed from %s at step %d", checkpointer.directory, start_step)
        else:
            start_step = 0
            state = init_state()
            if config.init_from:
                state = _load_pretrained(stage, config, graphdef, state, shardings)

        # =================================================================
        # Compiled train step (donated state), compiled before step 1
        # =================================================================
        base_key = jax.random.key(config.seed)

        def train_step(state, batch, step):
            module = nnx.merge(graphdef, state)
            metrics = stage.train_step(module, batch, jax.random.fold_in(base_key, step), config)
            return nnx.state(module), metrics

        jitted_step = jax.jit(train_step, out_shardings=(shardings, None), donate_argnums=0,
                              compiler_options=perf.compiler_options())
        compiled = {}  # one executable per batch shape (resolution buckets)

        def compiled_step(state, batch, step):
            key = tuple(sorted((k, v.shape, str(v.dtype)) for k, v in batch.items()))
            if key not in compiled:
                t0 = time.perf_counter()
                compiled[key] = jitted_step.lower(state, batch, step).compile()
                perf.log_compiled(compiled[key], time.perf_counter() - t0, batch)
            return compiled[key](state, batch, step)

        sampler = _make_sampler(stage, config, graphdef)
        flops_per_example = stage.flops_per_example(config) if stage.flops_per_example else 0.0
        peak = perf.peak_tflops_per_device(config.peak_tflops_per_device)
        schedule = lr_schedule(config.optimizer, total_steps)

        # =================================================================
        # Loop
        # =================================================================
        writer = metrics_lib.MetricWriter(workdir, total_steps)
        meter = metrics_lib.Throughput(start_step, total_steps)
        preemption = _Preemption()
        pending: list[dict] = []
        step = start_step
        meta_out = {"seed": int(config.seed), "stage": config.stage}
        while step < total_steps:
            batch = to_global(next(data_iter))
            state, step_metrics = compiled_step(state, batch, jnp.asarray(step, jnp.int32))
            step += 1
            pending.append(step_metrics)
            if step == start_step + 1:  # throughput excludes compilation
                jax.block_until_ready(step_metrics)
                meter = metrics_lib.Throughput(step, total_steps)

            if step % config.log_every == 0 or step == total_steps:
                scalars = _mean_metrics(pending)
                pending = []
                sps, eps, eta = meter.update(step, config.batch_size) if step > meter.start else (0.0, 0.0, None)
                tflops = flops_per_example * eps / jax.device_count() / 1e12
                scalars.update(lr=float(schedule(step - 1)), steps_per_sec=sps, examples_per_sec=eps,
                               tflops_per_device=tflops, mfu=tflops / peak if peak else 0.0,
                               **{f"data/{k}": v for k, v in _data_counters(data_iter).items()})
                writer.write(step, scalars)
                writer.progress(step, scalars, eta)
                _check_finite(scalars, step, config)

            if sampler and config.sample_every and (step % config.sample_every == 0 or step == total_steps):
                images, cols = sampler(state, step)
                path = writer.images(step, images, cols=cols)
                if path:
                    log.info("samples: %s", path)
            due = [e for e in evaluators if e.due(step, total_steps)]
            if due:  # one row of metrics for all of them
                eval_key = jax.random.fold_in(jax.random.fold_in(base_key, step), 1)  # not the step's train key
                module = nnx.merge(graphdef, state)  # the same object for each: they may share a generation
                results = {k: v for e in due for k, v in e.run(module, stage, eval_key).items()}
                writer.write(step, results)
                log.info("eval at step %d: %s", step, _fmt(results))

            preempted = preemption.reached(step)
            stop = preempted or step == stop_at_step
            if step % config.checkpoint_every == 0 or step == total_steps or stop:
                checkpointer.save(step, state, meta_out, data_iter, force=True)
            if stop:
                log.info("stopping at step %d (%s); the checkpoint is in %s", step,
                         "SIGTERM" if preempted else "--stop_at_step", checkpointer.directory)
                break

        # =================================================================
        # Final checkpoint (wait for async saves to land)
        # =================================================================
        checkpointer.close()
        writer.close()
        if hasattr(data_iter, "close"):
            data_iter.close()
        finished = step >= total_steps
        if jax.process_index() == 0:
            if finished:
                workdir_lib.write_done(workdir, step, total_steps, config.stage)
                print(f"seedjax: done at step {step}; workdir {workdir}", file=sys.stderr)
            else:
                print(f"seedjax: stopped at step {step} of {total_steps}; the same command resumes it",
                      file=sys.stderr)
    if preemption.raised and not finished:
        return int(config.get("preemption_exit_code", 143))
    return 0


# ------------------------------------------------------------------------- helpers


def _load_pretrained(stage, config, graphdef, state, shardings):
    """`config.init_from`: parameters only, from another stage's workdir or step directory."""
    source = ckpt_lib.load_state_tree(config.init_from)
    module = nnx.merge(graphdef, state)
    if stage.load_pretrained:
        stage.load_pretrained(module, source, config)
    else:
        if "model" not in source:
            raise TrainingAborted(f"config.init_from={config.init_from}: the checkpoint has no 'model' entry "
                                  f"(it has {sorted(source)}); this stage needs a load_pretrained hook")
        nnx.update(module.model, match_block_layout(source["model"], module.model))
    log.info("initialised parameters from %s", config.init_from)
    return jax.device_put(nnx.state(module), shardings)


def _make_sampler(stage, config, graphdef):
    if not stage.sample or not config.sample_every:
        return None
    batch = data_pipelines.make_eval_batch(config.data, num=config.num_samples, seed=config.seed)
    sample = jax.jit(lambda state, batch, rng: stage.sample(nnx.merge(graphdef, state), config, rng, batch))
    key = jax.random.key(config.seed + 1)  # the same noise at every sample step: the grid shows progress
    if "source" not in batch:
        return lambda state, step: (to_host(sample(state, batch, key)), None)
    # An edit run's row: the source image(s), the edit, the target.
    sources = [batch["source"][:, 0]] + ([batch["source"][:, 1]] if (batch["num_sources"] > 1).any() else [])

    def edits(state, step):
        row = np.stack([*sources, to_host(sample(state, batch, key))[:, 0], batch["target"]], axis=1)
        return row.reshape(-1, *row.shape[2:]), row.shape[1]

    return edits


def _config_change_hint(config, workdir: str) -> str:
    """For a checkpoint that does not fit: the config keys that changed, and the way forward."""
    saved = workdir_lib.read_json(workdir_lib.as_path(workdir) / "config.json")
    changed = workdir_lib.differing_keys(saved, config.to_dict()) if saved else []
    changed = [c for c in changed if not c.startswith(("total_steps", "stop_at_step"))]
    shown = f"; config keys that differ from the workdir's config.json: {', '.join(changed[:6])}" if changed else ""
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    return (f"{shown}{more}. Resume with the config the run was started with, or start a new run from these "
            f"weights in another workdir with --config.init_from={workdir}")


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
    host = to_host(pending)
    keys = host[0].keys()
    return {k: float(np.mean([np.asarray(m[k], np.float64) for m in host])) for k in keys}


def _data_counters(data_iter) -> dict:
    counters = getattr(data_iter, "counters", None)
    return dict(counters()) if counters else {}


def _check_finite(scalars: dict, step: int, config) -> None:
    streak = int(scalars.get("nonfinite_streak", 0))
    if streak >= config.optimizer.max_nonfinite_steps:
        raise TrainingAborted(
            f"{streak} consecutive non-finite updates at step {step} (loss={scalars.get('loss')}); "
            f"updates were skipped, the last checkpoint is intact; lower config.optimizer.lr or check the data")


def _fmt(results: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items())


class _Preemption:
    """Has SIGTERM (a preemption notice) reached this run? Answered at every step.

    One process: a signal handler sets a flag. Several: JAX's preemption service (set up by
    jax.distributed.initialize) catches SIGTERM on any host and agrees on a step at which
    every process stops together, with no per-step collective."""

    def __init__(self):
        self.raised = False
        self.multi = jax.process_count() > 1
        if not self.multi:  # a Python handler would replace the preemption service's own
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.raised = True

    def reached(self, step: int) -> bool:
        if self.multi and multihost_utils.reached_preemption_sync_point(step):
            self.raised = True
        return self.raised
