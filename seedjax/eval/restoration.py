"""`type=restoration`: a restoration model (`diffusion.restore`) on held-out degraded clips.

The held-out data's clips (moving digits: held-out glyphs and prompts), each with its degraded
copy drawn by data.degradations from (seed, row), are restored by the stage's `sample` hook,
by default with the empty caption (as the restore tool restores a user's files; `captions=True`
keeps the clips' own). Reported against the clean clips (mean over clips of the per-frame mean):

    restore/psnr, restore/ssim                   the restored clips
    restore/degraded_psnr, restore/degraded_ssim the degraded input (what restoration must beat)
    restore/seconds_per_clip, restore/nfe        what a restoration costs (nfe: stages with an nfe hook)
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from seedjax.diffusion import tasks
from seedjax.eval import image_quality, samples
from seedjax.models import text

KEEP = ("tokens", "text_mask", tasks.DEGRADED)  # what the sample hook gets


def empty_captions(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask) of the empty caption for every row of `tokens` [N, L]."""
    empty, mask = (np.asarray(x) for x in text.empty_caption(tokens.shape[1]))
    return np.broadcast_to(empty, tokens.shape).copy(), np.broadcast_to(mask, tokens.shape).copy()


class Evaluator(samples.GeneratorEvaluator):
    """Options: num_clips (0 = config.eval.num_prompts), batch_size (0 = config.eval.batch_size), captions."""

    kind = "restoration"

    def __init__(self, config, *, num_clips: int = 0, batch_size: int = 0, captions: bool = False):
        super().__init__(config, num_prompts=num_clips, batch_size=batch_size)
        if not config.diffusion.get("restore", False):
            raise ValueError("type restoration evaluates a restoration model: set config.diffusion.restore")
        self.captions = bool(captions)

    def run(self, state, stage, rng):
        batch = self.held_out()
        if tasks.DEGRADED not in batch or "video" not in batch:
            raise ValueError(f"type restoration needs held-out clips with their degraded copies (video, "
                             f"{tasks.DEGRADED}); the held-out batch has {sorted(batch)}")
        prompts = {k: v for k, v in batch.items() if k in KEEP}
        if not self.captions:
            prompts["tokens"], prompts["text_mask"] = empty_captions(np.asarray(batch["tokens"]))
        graphdef, params = nnx.split(state)
        restored, seconds = samples.generate_all(self.sampler(stage, graphdef), params, prompts, rng, self.batch_size)
        clean, degraded = np.asarray(batch["video"]), np.asarray(batch[tasks.DEGRADED])
        yield "restore/psnr", image_quality.psnr(restored, clean)
        yield "restore/ssim", image_quality.ssim(restored, clean)
        yield "restore/degraded_psnr", image_quality.psnr(degraded, clean)
        yield "restore/degraded_ssim", image_quality.ssim(degraded, clean)
        yield "restore/seconds_per_clip", seconds
        if stage.nfe:
            yield "restore/nfe", float(stage.nfe(self.config))
