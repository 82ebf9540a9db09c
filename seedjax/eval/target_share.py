"""`type=target_share`: SFT's curation target, on generated and on real held-out images.

    target_share        fraction of generated images whose metadata (image statistics and the
                        prompt's labels) satisfies the target expression
    target_share_real   the same fraction on the real held-out images of the same prompts

The target is the option `target`, else `config.sft.target`, else `config.data.filter` (the
curated subset the run fine-tunes on); with none of them there is nothing to report. The images
are the held-out samples of the run's generator (shared with a `digit_prompts` or
`image_folder` entry of the same prompts at the same step).
"""

from __future__ import annotations

import numpy as np

from data_pipelines.techniques.curation import SampleFilter
from seedjax.eval import samples
from seedjax.stages.sft import target_expression, target_share


class Evaluator(samples.GeneratorEvaluator):
    kind = "target_share"

    def __init__(self, config, *, num_prompts: int = 0, batch_size: int = 0, target: str = ""):
        super().__init__(config, num_prompts=num_prompts, batch_size=batch_size)
        self.expression = target or (target_expression(config) if "sft" in config else config.data.get("filter", ""))
        if self.expression:
            SampleFilter(self.expression, "target")  # a bad expression fails here, not at the first eval

    def run(self, state, stage, rng):
        if not self.expression:
            return
        images, batch, _ = self.generate(state, stage, rng)
        prompts = {k: v for k, v in batch.items() if k not in ("image", "latent")}
        yield "target_share", target_share(images, prompts, self.expression)
        if "image" in batch:
            yield "target_share_real", target_share(np.asarray(batch["image"]), prompts, self.expression)
