"""Evaluate a generator on held-out prompts: prompt accuracy, Frechet distance, diversity.

Every stage reports through here, so its numbers are comparable: the same held-out
prompts (the data's 'test' split), the same independent digit classifier, the same real
images for the Frechet distance.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

import data_pipelines
from seedjax.parallel.host import to_host

# (params, prompt batch, rng) -> samples [N, F, H, W, C] in [-1, 1]; params are passed (not closed
# over) so that large models are arguments of the compiled function, not constants in it.
Generator = Callable[[object, dict, jax.Array], jax.Array]


def generate_all(generate: Generator, params, batch: dict, rng: jax.Array, chunk: int) -> tuple[np.ndarray, float]:
    """Run `generate` over `batch` in chunks of `chunk` prompts (one compile); returns (images, s/image)."""
    n = len(next(iter(batch.values())))
    jitted = jax.jit(generate)
    outs, elapsed = [], 0.0
    for i, start in enumerate(range(0, n, chunk)):
        part = {k: v[start:start + chunk] for k, v in batch.items()}
        size = len(next(iter(part.values())))
        if size < chunk:  # pad the last chunk to keep one compiled shape
            part = {k: np.concatenate([v, np.repeat(v[-1:], chunk - size, 0)]) for k, v in part.items()}
        t0 = time.perf_counter()
        images = to_host(jitted(params, part, jax.random.fold_in(rng, i)))[:size]
        if i > 0:  # the first chunk pays for compilation
            elapsed += time.perf_counter() - t0
        outs.append(images)
    per_image = elapsed / max(n - min(chunk, n), 1) if n > chunk else float("nan")
    return np.concatenate(outs), per_image


def still_images(samples: np.ndarray) -> np.ndarray:
    """Samples [N, 1, H, W, C] (the `sample` hooks' frame axis) -> images [N, H, W, C]."""
    if samples.ndim == 4:
        return samples
    if samples.ndim != 5 or samples.shape[1] != 1:
        raise ValueError(f"expected still images [N, 1, H, W, C], got samples of shape {samples.shape}")
    return samples[:, 0]


DIGIT_SOURCES = ("digits", "digit_scenes")  # data the digit classifier can judge
NON_DIGIT_SOURCES = ("folder", "jsonl")  # your own images: never digit data


def is_digit_data(batch: dict, data_cfg=None) -> bool:
    """Whether the held-out `batch` is digit data that the digit classifier can score.

    Decided by the data config's source when it says (`digits`/`digit_scenes` yes, `folder`/
    `jsonl` no), otherwise (shards, reward pairs, no config) by the labels the records carry:
    scene labels, or a digit `label` >= 0 on every sample (sources without labels give -1).
    """
    source = data_cfg.source if data_cfg is not None and not data_cfg.get("mixture") else ""
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
    from seedjax.eval import metrics
    from seedjax.eval.classifier import get_classifier

    if not (is_digit_data(batch) if digit_data is None else digit_data):
        return {}
    images = still_images(images)
    clf = get_classifier(image_size)
    out: dict[str, float] = {"classifier_test_accuracy": clf.test_accuracy}
    if "label" in batch:
        out["prompt_accuracy"] = float(np.mean(clf.predict(images) == np.asarray(batch["label"])))
    if "scene_digit" in batch:
        from seedjax.eval.scenes import score_scenes

        scores = score_scenes(images, batch["scene_digit"], batch["scene_color"], batch["scene_box"],
                              batch["scene_count"])
        out.update({f"scene_{k}": float(np.mean(v)) for k, v in scores.items() if np.ndim(v) == 1})
        out["prompt_accuracy"] = float(np.mean(scores["overall"]))
    if "image" in batch:
        out["frechet_distance"] = float(metrics.frechet_distance(clf.features(images),
                                                                 clf.features(np.asarray(batch["image"]))))
    return out


def eval_data(config):
    """The held-out data: `config.eval.data` when set (the training data is something else:
    ODE pairs, cached latents), else `config.data`."""
    return config.eval.data if "data" in config.eval else config.data


def evaluate_generator(generate: Generator, params, config, rng: jax.Array, seed: int | None = None,
                       decode_latents: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, float]:
    """Sample `config.eval.num_prompts` held-out prompts and score them (digit data only; see
    `is_digit_data`: on other data only `seconds_per_image` is reported).

    `decode_latents`: for held-out data of cached latents (no `image`), the VAE decoder that
    gives the real images of the Frechet distance (then reconstructions, not the originals).
    """
    data_cfg = eval_data(config)
    batch = data_pipelines.make_eval_batch(data_cfg, num=config.eval.num_prompts,
                                           seed=config.seed if seed is None else seed)
    prompts = {k: v for k, v in batch.items() if k != "image"}
    images, seconds = generate_all(generate, params, prompts, rng, min(config.eval.batch_size, config.eval.num_prompts))
    if "image" not in batch and "latent" in batch and decode_latents is not None:
        batch["image"] = np.clip(decode_latents(batch["latent"]), -1.0, 1.0)
    results = score_images(images, batch, data_cfg.image_size, digit_data=is_digit_data(batch, data_cfg))
    results["seconds_per_image"] = seconds
    return results
