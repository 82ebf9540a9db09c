"""`type=reward_accuracy`: a reward model's held-out accuracy, per head and per kind of "no".

On `num_prompts` held-out `reward_pairs` examples (true and perturbed captions; every image also
gets a degraded copy, as in training):

    <head>/accuracy             yes/no accuracy, the two classes weighted equally
    <head>/pair_accuracy        the winner of each preference pair outscores the loser
    <head>/pair_accuracy_<kind> the same per caption perturbation (alignment heads) or per image
                                degradation (quality heads)

The model is the reward stage's (`state.model`); scores come from one compiled function over
chunks of `batch_size` (the last one padded).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from flax import nnx

import data_pipelines
from data_pipelines.core import mixtures, pipeline
from data_pipelines.sources.reward_pairs import PERTURBATIONS
from seedjax.eval import samples
from seedjax.schema.stages import DEGRADATIONS
from seedjax.stages.reward import HEAD_NEGATIVES, degradation_kinds, degrade, head_pairs, view_scores

KEYS = ("image", "tokens", "text_mask", "negative_tokens", "negative_text_mask")


def tag_vocabulary(config) -> tuple[str, ...]:
    """The tag names of the reward data's records (which perturbation made each negative caption)."""
    source = pipeline.open_source(config.data.source, config.data.path, config.data, split="train", seed=config.seed)
    return mixtures.layout_for({config.data.source: source}, config.data).tags


class Evaluator:
    def __init__(self, config, *, num_prompts: int = 0, batch_size: int = 0):
        held_out = config.get("eval", ml_collections.ConfigDict())
        self.num = int(num_prompts or held_out.get("num_prompts", 0))
        self.batch_size = min(int(batch_size or held_out.get("batch_size", 0) or self.num), self.num)
        if self.num < 1 or self.batch_size < 1:
            raise ValueError("type reward_accuracy: set num_prompts and batch_size >= 1 "
                             "(0 takes config.eval.num_prompts / config.eval.batch_size)")
        if "reward_model" not in config or config.data.source != "reward_pairs":
            raise ValueError("type reward_accuracy evaluates the reward stage's model on reward_pairs data")
        self.config = config
        self._batch = None
        self._scores = None  # (graphdef, jitted scores): compiled once

    def held_out(self):
        if self._batch is None:
            self._batch = (data_pipelines.make_eval_batch(self.config.data, num=self.num, seed=self.config.seed),
                           tag_vocabulary(self.config))
        return self._batch

    def scorer(self, graphdef):
        if self._scores is None or self._scores[0] != graphdef:
            kinds = degradation_kinds(self.config)

            def scores(params, chunk, key):
                ex = dict(chunk, images=chunk["image"])
                ex["degraded"], ex["degradation"] = degrade(chunk["image"], key, kinds)
                return view_scores(nnx.merge(graphdef, params), ex), ex["degradation"]

            self._scores = (graphdef, jax.jit(scores))
        return self._scores[1]

    def run(self, state, stage, rng):
        batch, tag_names = self.held_out()
        graphdef, params = nnx.split(state.model)
        scores = self.scorer(graphdef)
        chunks = {k: batch[k] for k in KEYS}
        (s_match, s_caption, s_image), degradation = samples.map_chunks(
            lambda part, start: scores(params, part, jax.random.fold_in(rng, start)), chunks, self.batch_size)
        for head, (win, lose, extra_yes) in head_pairs(self.config.reward_model.heads, s_match, s_caption,
                                                       s_image).items():
            yes = win if extra_yes is None else np.concatenate([win, extra_yes])
            yield f"{head}/accuracy", float(0.5 * (np.mean(yes > 0) + np.mean(lose < 0)))
            yield f"{head}/pair_accuracy", float(np.mean(win > lose))
            if HEAD_NEGATIVES[head] == "caption":
                for kind in PERTURBATIONS:
                    rows = batch["tags"][:, tag_names.index(f"perturb:{kind}")] > 0
                    if rows.any():
                        yield f"{head}/pair_accuracy_{kind}", float(np.mean(win[rows] > lose[rows]))
            else:
                for i, kind in enumerate(DEGRADATIONS):
                    rows = degradation == i
                    if rows.any():
                        yield f"{head}/pair_accuracy_{kind}", float(np.mean(win[rows] > lose[rows]))
