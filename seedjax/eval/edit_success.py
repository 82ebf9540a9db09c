"""`type=edit_success`: an editing model (data.source=edit_triples) on held-out edit triples.

    edit_success             share of edits that did what the instruction asked and left the
                             target scene (every object, color, digit, relation) right
    edit_success/<type>      the same per edit type (recolor, move, add, remove, replace_digit,
                             resize, compose: the two-reference edits)
    edit_confirmed           share where the asked-for change is there, whatever else happened
    preserved_psnr           single-image edits: PSNR against the source outside the changed boxes
    untouched_kept           single-image edits: share of the objects the edit did not touch that
                             are found again, same digit and color, at their place
    <metric>_real            the same judges on the real targets (their ceiling: the scorer
                             misreads a few real glyphs)
    seconds_per_image

Held-out triples are the data's 'test' split (held-out glyphs): of `config.eval.data` or
`config.data`, or of their edit_triples component in a joint run (a mixture with image sources,
whose text-to-image side `digit_prompts` judges). The judge is independent of the model
(`seedjax.eval.judges.edits`: color segmentation and the digit classifier).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from data_pipelines.core.mixtures import components
from seedjax.eval import samples
from seedjax.eval.judges import classifier, edits


class Evaluator(samples.GeneratorEvaluator):
    kind = "edit_success"

    def __init__(self, config, *, num_prompts: int = 0, batch_size: int = 0):
        super().__init__(config, num_prompts=num_prompts, batch_size=batch_size)
        self._real = None

    def held_out_data(self, config):
        for data_cfg in (samples.eval_data(config), config.data):
            if samples.plain_source(data_cfg) == "edit_triples":
                return data_cfg
            if any(kind == "edit_triples" for kind, _, _ in components(data_cfg).values()):
                edits = data_cfg.copy_and_resolve_references()
                with edits.unlocked():
                    edits.mixture, edits.source = ml_collections.ConfigDict(), "edit_triples"
                return edits
        raise ValueError("type edit_success judges edits of held-out edit triples: it needs data.source=edit_triples "
                         "(or a mixture with an edit_triples component)")

    def run(self, state, stage, rng):
        images, batch, seconds = self.generate(state, stage, rng)
        judge = classifier.get_classifier(images.shape[1])
        yield from edits.summarize(edits.judge_edits(images, batch, judge)).items()
        if self._real is None:  # the real targets do not change: judged once
            self._real = edits.summarize(edits.judge_edits(np.asarray(batch["target"]), batch, judge))
        yield from ((f"{k}_real", v) for k, v in self._real.items())
        yield from self.generation_cost(stage, seconds)
