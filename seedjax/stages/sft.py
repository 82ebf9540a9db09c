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

Its evaluators (`config.evals`) report pretraining's held-out metrics (`digit_prompts`: prompt
accuracy, Frechet distance) and `target_share` (seedjax/eval/target_share.py, with the functions
below): the fraction of generated images whose metadata satisfies `sft.target`, next to the same
fraction on the real held-out images.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.core.tokenizer import detokenize
from data_pipelines.techniques.curation import SampleFilter, image_statistics
from seedjax.models import codec, generator
from seedjax.models.geometry import Geometry
from seedjax.train.flow_matching import flow_matching_step, init, load_generator, sample
from seedjax.train.stage import Stage


def target_expression(config) -> str:
    return config.sft.target or config.data.filter


def validate_config(config) -> None:
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


STAGE = Stage(init=init, train_step=flow_matching_step, sample=sample, flops_per_example=flops_per_example,
              load_pretrained=load_generator, validate_config=validate_config)
