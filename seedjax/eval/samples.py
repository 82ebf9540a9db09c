"""Evaluate a generator on held-out prompts: the sampling every generator evaluator shares.

Every generator evaluator (`digit_prompts`, `image_folder`, `target_share`, `rlhf_reward`)
samples the same way, so their numbers are comparable across stages: the same held-out prompts
(the data's 'test' split, `config.eval.data` when the run trains on something else), the
stage's own `sample` hook jitted once per evaluator (parameters an argument, not constants), the
last chunk padded to keep one compiled shape. Evaluators that sample the same prompts at the
same step share one generation (`GeneratorEvaluator.generate`).

`score_images` is the digit judges' verdict on such samples (prompt accuracy, scene checks,
Frechet distance in the digit classifier's feature space); it reports nothing on data that is
not digits.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

import data_pipelines
from seedjax import config as config_lib
from seedjax.eval import metrics
from seedjax.eval.judges import classifier, scenes
from seedjax.parallel.host import to_host
from seedjax.schema.evals import DIGIT_SOURCES, NON_DIGIT_SOURCES
from seedjax.train.params import latent_codec
from seedjax.train.stage import load_stage

# (params, prompt batch, rng) -> samples [N, F, H, W, C] in [-1, 1]; params are passed (not closed
# over) so that large models are arguments of the compiled function, not constants in it.
Generator = Callable[[object, dict, jax.Array], jax.Array]


def pad_to(part: dict, size: int) -> dict:
    """`part` (arrays with a leading axis) padded to `size` rows by repeating its last row."""
    n = len(next(iter(part.values())))
    if n == size:
        return part
    return {k: np.concatenate([v, np.repeat(v[-1:], size - n, 0)]) for k, v in part.items()}


def generate_all(generate: Generator, params, batch: dict, rng: jax.Array, chunk: int) -> tuple[np.ndarray, float]:
    """Run `generate` over `batch` in chunks of `chunk` prompts (one compile); returns (images, s/image).

    `generate` is jitted here unless it already is (an evaluator passes its cached jitted sampler)."""
    n = len(next(iter(batch.values())))
    jitted = generate if hasattr(generate, "lower") else jax.jit(generate)
    outs, elapsed = [], 0.0
    for i, start in enumerate(range(0, n, chunk)):
        part = {k: v[start:start + chunk] for k, v in batch.items()}
        size = len(next(iter(part.values())))
        t0 = time.perf_counter()
        images = to_host(jitted(params, pad_to(part, chunk), jax.random.fold_in(rng, i)))[:size]
        if i > 0:  # the first chunk pays for compilation
            elapsed += time.perf_counter() - t0
        outs.append(images)
    per_image = elapsed / max(n - min(chunk, n), 1) if n > chunk else float("nan")
    return np.concatenate(outs), per_image


def map_chunks(fn: Callable, batch: dict, chunk: int):
    """`fn(part, i)` over `batch` in chunks of `chunk` rows (the last one padded: one compiled
    shape); the outputs' leaves (leading axis = rows) on the host, concatenated and trimmed."""
    n = len(next(iter(batch.values())))
    outs = [to_host(fn(pad_to({k: v[start:start + chunk] for k, v in batch.items()}, chunk), start))
            for start in range(0, n, chunk)]
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outs)


def still_images(samples: np.ndarray) -> np.ndarray:
    """Samples [N, 1, H, W, C] (the `sample` hooks' frame axis) -> images [N, H, W, C]."""
    if samples.ndim == 4:
        return samples
    if samples.ndim != 5 or samples.shape[1] != 1:
        raise ValueError(f"expected still images [N, 1, H, W, C], got samples of shape {samples.shape}")
    return samples[:, 0]


def plain_source(data_cfg) -> str:
    """The data config's one source ('' for a mixture)."""
    return data_cfg.source if data_cfg is not None and not data_cfg.get("mixture") else ""


def is_digit_data(batch: dict, data_cfg=None) -> bool:
    """Whether the held-out `batch` is digit data that the digit classifier can score.

    Decided by the data config's source when it says (`digits`/`digit_scenes` yes, `folder`/
    `jsonl` no), otherwise (shards, reward pairs, no config) by the labels the records carry:
    scene labels, or a digit `label` >= 0 on every sample (sources without labels give -1).
    """
    source = plain_source(data_cfg)
    if source in DIGIT_SOURCES:
        return True
    if source in NON_DIGIT_SOURCES:
        return False
    if "scene_digit" in batch:
        return True
    labels = np.asarray(batch.get("label", []))
    return labels.size > 0 and bool(np.all(labels >= 0))


def score_images(images: np.ndarray, batch: dict, image_size: int, digit_data: bool | None = None) -> dict[str, float]:
    """Prompt adherence and Frechet distance of generated `images` for the prompts in `batch`.

    These are digit-classifier numbers: on data that is not digits (`digit_data` False, or
    None and `is_digit_data(batch)` False) there is nothing to report and the result is empty.
    """
    if not (is_digit_data(batch) if digit_data is None else digit_data):
        return {}
    images = still_images(images)
    clf = classifier.get_classifier(image_size)
    out: dict[str, float] = {"classifier_test_accuracy": clf.test_accuracy}
    if "label" in batch:
        out["prompt_accuracy"] = float(np.mean(clf.predict(images) == np.asarray(batch["label"])))
    if "scene_digit" in batch:
        found = scenes.score_scenes(images, batch["scene_digit"], batch["scene_color"], batch["scene_box"],
                                    batch["scene_count"])
        out.update({f"scene_{k}": float(np.mean(v)) for k, v in found.items() if np.ndim(v) == 1})
        out["prompt_accuracy"] = float(np.mean(found["overall"]))
    if "image" in batch:
        out["frechet_distance"] = float(metrics.frechet_distance(clf.features(images),
                                                                 clf.features(np.asarray(batch["image"]))))
    return out


def eval_data(config):
    """The held-out data: `config.eval.data` when set (the training data is something else:
    ODE pairs, cached latents), else `config.data`."""
    return config.eval.data if "eval" in config and "data" in config.eval else config.data


# --------------------------------------------------------------------------- the evaluators' base

# The last generation (see GeneratorEvaluator.generate): (what was sampled, state, rng, result).
_last: list = [None, None, None, None]


class GeneratorEvaluator:
    """Base of the evaluators that sample the run's generator on held-out prompts.

    Options (keyword arguments; `config.evals.<name>.<option>`):
      num_prompts  held-out prompts to sample (0 = config.eval.num_prompts)
      batch_size   prompts per compiled sampler call (0 = config.eval.batch_size)
    Subclasses implement `run(state, stage, rng)`, yielding (name, value) pairs, and call
    `generate` for the images.
    """

    kind = "generator"

    def __init__(self, config, *, num_prompts: int = 0, batch_size: int = 0):
        held_out = config.get("eval", ml_collections.ConfigDict())
        self.num_prompts = int(num_prompts or held_out.get("num_prompts", 0))
        self.batch_size = min(int(batch_size or held_out.get("batch_size", 0) or self.num_prompts), self.num_prompts)
        if self.num_prompts < 1 or self.batch_size < 1:
            raise ValueError(f"type {self.kind} samples held-out prompts: set num_prompts and batch_size >= 1 "
                             "(0 takes config.eval.num_prompts / config.eval.batch_size)")
        if load_stage(config.stage).sample is None:
            raise ValueError(f"type {self.kind} samples the generator, but stage {config.stage!r} has no sample hook")
        self.config = config  # what the sample hook gets: the training config, as for the sample grids
        self.data = self.held_out_data(config)  # the held-out prompts and real images
        self._batch = None
        self._sampler = None  # (stage.sample, graphdef, jitted sampler): compiled once, reused every run
        # what `generate` samples
        self._what = (self.num_prompts, self.batch_size, config_lib.to_json(config), config_lib.to_json(self.data))

    def held_out_data(self, config):
        """The data config of the held-out prompts (`eval_data`; an evaluator of one component of a
        mixture picks it)."""
        return eval_data(config)

    def held_out(self) -> dict:
        """The held-out batch (loaded once): prompts, and real images when the data has them."""
        if self._batch is None:
            batch = data_pipelines.make_eval_batch(self.data, num=self.num_prompts, seed=self.config.seed)
            if "image" not in batch and "latent" in batch and self.config.input.key == "latent":
                # cached latents: the real images of the comparison are their decodings
                batch["image"] = np.clip(latent_codec(self.config).decode(batch["latent"]), -1.0, 1.0)
            self._batch = batch
        return self._batch

    def sampler(self, stage, graphdef) -> Callable:
        """(params, prompts, rng) -> samples: `stage.sample` jitted once (again only if the
        state's structure changed)."""
        if self._sampler is None or self._sampler[0] is not stage.sample or self._sampler[1] != graphdef:
            sample, config = stage.sample, self.config
            jitted = jax.jit(lambda params, prompts, rng: sample(nnx.merge(graphdef, params), config, rng, prompts))
            self._sampler = (stage.sample, graphdef, jitted)
        return self._sampler[2]

    def generate(self, state, stage, rng: jax.Array) -> tuple[np.ndarray, dict, float]:
        """(images [N, H, W, C] in [-1, 1], the held-out batch, seconds per image) for this state.

        Evaluators of one step that sample the same prompts with the same stage reuse one
        generation: the loop hands each the same state object and key."""
        batch = self.held_out()
        what = (stage.sample, *self._what)
        key_data = np.asarray(jax.random.key_data(rng))
        if _last[0] == what and _last[1] is state and np.array_equal(_last[2], key_data):
            return _last[3]
        graphdef, params = nnx.split(state)
        prompts = {k: v for k, v in batch.items() if k not in ("image", "latent")}
        images, seconds = generate_all(self.sampler(stage, graphdef), params, prompts, rng, self.batch_size)
        result = (still_images(images), batch, seconds)
        _last[:] = [what, state, key_data, result]
        return result

    def generation_cost(self, stage, seconds: float):
        """(name, value) pairs of what a sample costs: wall time, and the NFE of stages that
        declare it (distillation students)."""
        yield "seconds_per_image", seconds
        if stage.nfe:
            yield "nfe", float(stage.nfe(self.config))

    def run(self, state, stage, rng: jax.Array):
        raise NotImplementedError
