"""`type=rlhf_reward`: the RLHF reward models' verdict on the generator's held-out samples.

    reward            the composite reward r = sum_m w_m f(score_m) (`config.rlhf`: models, heads,
                      weights, transform), averaged over the held-out prompts
    reward/<term>     each term of the composite (a head of a reward model)

Read next to a `digit_prompts` entry of the same prompts (it shares their generation): the
reward rising while the independent classifier's prompt accuracy falls, or the Frechet distance
rises, is reward hacking. The reward models are the frozen ones of the RLHF state
(`state.reward_models`), scored in chunks by one compiled function.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from seedjax.eval import samples
from seedjax.stages.rlhf import composite_reward, reward_setup


class Evaluator(samples.GeneratorEvaluator):
    kind = "rlhf_reward"

    def __init__(self, config, *, num_prompts: int = 0, batch_size: int = 0):
        super().__init__(config, num_prompts=num_prompts, batch_size=batch_size)
        if "rlhf" not in config:
            raise ValueError("type rlhf_reward scores with the RLHF stage's reward models (config.rlhf); "
                             f"stage {config.stage!r} has none")
        self._terms = None
        self._score = None  # (graphdef, jitted composite reward): compiled once

    def scorer(self, graphdef):
        if self._score is None or self._score[0] != graphdef:
            if self._terms is None:
                _, _, self._terms = reward_setup(self.config)
            terms, transform = self._terms, self.config.rlhf.reward_transform

            def score(params, part):
                prompts = {"tokens": part["tokens"], "text_mask": part["text_mask"]}
                return composite_reward(nnx.merge(graphdef, params), terms, part["images"], prompts, transform)

            self._score = (graphdef, jax.jit(score))
        return self._score[1]

    def run(self, state, stage, rng):
        images, batch, _ = self.generate(state, stage, rng)
        graphdef, params = nnx.split(state.reward_models)
        score = self.scorer(graphdef)
        inputs = {"images": images, "tokens": batch["tokens"], "text_mask": batch["text_mask"]}
        total, parts = samples.map_chunks(lambda part, _: score(params, part), inputs, self.batch_size)
        yield "reward", float(np.mean(total))
        yield from ((name, float(np.mean(values))) for name, values in parts.items())
