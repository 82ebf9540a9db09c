"""`type=digit_prompts`: a generator on held-out digit prompts, judged by the digit judges.

Samples `num_prompts` held-out prompts with the stage's `sample` hook (`samples.GeneratorEvaluator`)
and reports what the independent judges read in them (`samples.score_images`):

    prompt_accuracy            the classifier reads the prompted digit (digit_scenes: every scene check)
    scene_<check>              digit_scenes: digit, color, count, position, overall
    frechet_distance           between the samples and the real held-out images, in the classifier's features
    classifier_test_accuracy   the judge's own held-out accuracy (its reading is only as good as this)
    seconds_per_image, nfe     what a sample costs (nfe: stages with an nfe hook)

Only meaningful on digit data: your own images (folder, jsonl) are refused at config validation
(use `image_folder`); on shards without digit labels only the cost is reported.
"""

from __future__ import annotations

from seedjax.eval import samples


class Evaluator(samples.GeneratorEvaluator):
    kind = "digit_prompts"

    def __init__(self, config, *, num_prompts: int = 0, batch_size: int = 0):
        super().__init__(config, num_prompts=num_prompts, batch_size=batch_size)
        source = samples.plain_source(self.data)
        if source in samples.NON_DIGIT_SOURCES:
            raise ValueError(f"type digit_prompts judges digits, but the held-out data is your own images "
                             f"(source {source!r}); use type=image_folder")

    def run(self, state, stage, rng):
        images, batch, seconds = self.generate(state, stage, rng)
        digit_data = samples.is_digit_data(batch, self.data)
        yield from samples.score_images(images, batch, self.data.image_size, digit_data=digit_data).items()
        yield from self.generation_cost(stage, seconds)
