"""Supervised fine-tuning: pretraining's flow-matching step, from a pretrained model, on curated data.

Seedream 3.0 fine-tunes its continued-training model on a small curated set (aesthetic,
detailed captions), resolution-balanced, at a lower learning rate. Here the loss and the step
*are* pretraining's (`seedjax.train.flow_matching.flow_matching_step`); what
makes a run SFT is its config:

  config.init_from                  the pretrained (or earlier SFT) workdir (required)
  config.data.filter                the curated subset, an expression over sample metadata
                                    (data_pipelines/techniques/curation.py), e.g. "ink >= 0.325"
  config.data.balance_resolutions   every resolution bucket drawn equally often
  config.optimizer.lr               lower than pretraining's
  config.sft.target                 the attribute the curation targets, as an expression over
                                    the metadata of generated images ('' = data.filter)

`evaluate` reports pretraining's held-out metrics (prompt accuracy, Frechet distance) and
`target_share`: the fraction of generated images whose metadata satisfies `sft.target`, next
to the same fraction on the real held-out images.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from seedjax.models import codec, generator
from seedjax.models.geometry import Geometry
from seedjax.train.flow_matching import GeneratorState, flow_matching_step, init, load_generator, sample
from seedjax.train.stage import Stage


def target_expression(config) -> str:
    return config.sft.target or config.data.filter


def validate_config(config) -> None:
    from data_pipelines.techniques.curation import SampleFilter

    if not config.init_from:
        raise ValueError("SFT fine-tunes a pretrained model: set config.init_from to a pretrain (or SFT) workdir")
    codec.require_pixel_space(config, "SFT (its evaluation and sft.target)")
    if config.data.filter:
        SampleFilter(config.data.filter, "data.filter")
    if target_expression(config):
        SampleFilter(target_expression(config), "sft.target")


def flops_per_example(config) -> float:
    return generator.train_flops_per_example(config, Geometry.of(config))


def target_share(images: np.ndarray, prompts: dict, expression: str) -> float:
    """Fraction of images [N, H, W, C] in [-1, 1] whose metadata (image statistics and the
    prompt's labels) satisfies `expression`."""
    from data_pipelines.techniques.curation import SampleFilter, image_statistics
    from data_pipelines.core.tokenizer import detokenize

    selected = SampleFilter(expression, "sft.target")
    stats = image_statistics((np.asarray(images, np.float32) + 1.0) / 2.0)
    captions = detokenize(prompts["tokens"]) if "tokens" in prompts else [""] * len(images)
    hits = []
    for i in range(len(images)):
        md = {"caption": captions[i], "tags": (), "height": images.shape[1], "width": images.shape[2],
              "label": int(prompts["label"][i]) if "label" in prompts else -1,
              "count": int(prompts["scene_count"][i]) if "scene_count" in prompts else 0,
              **{k: float(v[i]) for k, v in stats.items()}}
        hits.append(selected(md))
    return float(np.mean(hits))


def evaluate(state: GeneratorState, config, rng: jax.Array) -> dict:
    import data_pipelines
    from seedjax.eval.samples import generate_all, score_images, still_images

    batch = data_pipelines.make_eval_batch(config.data, num=config.eval.num_prompts, seed=config.seed)
    prompts = {k: v for k, v in batch.items() if k != "image"}
    graphdef, params = nnx.split(state)
    images, seconds = generate_all(lambda p, b, k: sample(nnx.merge(graphdef, p), config, k, b), params, prompts,
                                   rng, min(config.eval.batch_size, config.eval.num_prompts))
    images = still_images(images)
    results = score_images(images, batch, config.data.image_size)
    results["seconds_per_image"] = seconds
    expression = target_expression(config)
    if expression:
        results["target_share"] = target_share(images, prompts, expression)
        results["target_share_real"] = target_share(batch["image"], prompts, expression)
    return results


STAGE = Stage(init=init, train_step=flow_matching_step, sample=sample, evaluate=evaluate,
              flops_per_example=flops_per_example, load_pretrained=load_generator, validate_config=validate_config)
