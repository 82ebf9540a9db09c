"""`type=video_prompts`: a video generator on held-out moving-digit prompts, judged frame by frame.

Renders `num_prompts` held-out moving-digit clips (`data_pipelines.sources.moving_digits.
prompt_set`: held-out glyphs, one colored digit moving, optionally turning, optionally cut into
shots), samples the stage's `sample` hook on their prompts and reports what the video judges
(`seedjax.eval.judges.video`) read in the generated clips:

    video/frame_accuracy            frames whose digit (the digit classifier) is their shot's digit
    video/motion_accuracy           shot segments whose tracked centroid moves the captioned way
    video/temporal_consistency      shots whose digit is read the same in every frame
    video/first_frame_psnr          i2v: generated frame 0 against the given first frame (dB)
    video/shot_accuracy             multishot: shots whose digit, color and motion are all right
    video/classifier_test_accuracy  the judge's own held-out accuracy (its reading is only as good as this)
    video/seconds_per_clip, video/nfe   what a sample costs (nfe: stages with an nfe hook)

The prompt batch the `sample` hook gets: `tokens`, `text_mask` (the whole caption), `shot_tokens`,
`shot_mask` [N, S, L] (one caption per shot; rows past a clip's shots are empty), `frame_shot`
[N, F] (the number of frames to generate), the shot labels (`shot_digit`, `shot_color`,
`shot_motion`, `shot_turn_frame`) and, with i2v, `first_frame` [N, H, W, C] in [-1, 1]: frame 0
of the real rendering, which the hook conditions on.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from data_pipelines.sources import moving_digits
from seedjax.eval import samples
from seedjax.eval.judges import classifier, video

NOT_PROMPTS = ("video", "captions")  # what the sample hook never sees


def prompt_batch(num: int, frames: int, size: int, seed: int, *, multishot: bool = False, i2v: bool = False,
                 max_shots: int = 3, max_text_len: int = 64) -> dict:
    """Held-out moving-digit prompts (the clip batch contract: tokens, shot captions and labels)
    with their real renderings `video` [N, F, H, W, 3] and `captions`, plus `first_frame` (frame
    0 of the rendering) with `i2v`."""
    batch = dict(moving_digits.prompt_set(num, frames, size, seed, multishot=multishot, max_shots=max_shots,
                                          max_text_len=max_text_len, channels=3))
    if i2v:
        batch["first_frame"] = np.asarray(batch["video"])[:, 0]
    return batch


class Evaluator(samples.GeneratorEvaluator):
    """Options: num_prompts, batch_size (as every generator type); frames (0 = config.data.video.
    num_frames); multishot, i2v (the prompt kinds); seed (-1 = config.seed)."""

    kind = "video_prompts"

    def __init__(self, config, *, num_prompts: int = 0, batch_size: int = 0, frames: int = 0,
                 multishot: bool = False, i2v: bool = False, seed: int = -1):
        super().__init__(config, num_prompts=num_prompts, batch_size=batch_size)
        source = samples.plain_source(self.data)
        if source in samples.NON_DIGIT_SOURCES:
            raise ValueError(f"type video_prompts judges moving digits, but the held-out data is your own "
                             f"(source {source!r})")
        clip = self.data.get("video", {})
        self.frames = int(frames or clip.get("num_frames", 0))
        if self.frames < 2:
            raise ValueError(f"type video_prompts needs clips of >= 2 frames to judge motion, got frames={self.frames} "
                             "(0 = config.data.video.num_frames)")
        self.size = int(self.data.image_size)
        self.max_shots = int(clip.get("max_shots", 3))
        self.max_text_len = int(self.data.get("max_text_len", 64))
        self.multishot, self.i2v = bool(multishot), bool(i2v)
        self.seed = int(config.seed if seed < 0 else seed)

    def held_out(self) -> dict:
        """The held-out prompts and their real renderings (rendered once)."""
        if self._batch is None:
            self._batch = prompt_batch(self.num_prompts, self.frames, self.size, self.seed, multishot=self.multishot,
                                       i2v=self.i2v, max_shots=self.max_shots, max_text_len=self.max_text_len)
        return self._batch

    def run(self, state, stage, rng):
        batch = self.held_out()
        graphdef, params = nnx.split(state)
        prompts = {k: v for k, v in batch.items() if k not in NOT_PROMPTS}
        clips, seconds = samples.generate_all(self.sampler(stage, graphdef), params, prompts, rng, self.batch_size)
        if clips.ndim != 5 or clips.shape[:2] != (self.num_prompts, self.frames):
            raise ValueError(f"video_prompts: the sample hook returned {clips.shape}, expected "
                             f"[{self.num_prompts}, {self.frames}, H, W, C] clips")
        scores = video.score_videos(clips, batch, classifier.get_classifier(), moving_digits.PALETTE)
        names = ["frame_accuracy", "motion_accuracy", "temporal_consistency"]
        names += ["first_frame_psnr"] * self.i2v + ["shot_accuracy"] * self.multishot
        for name in names:
            yield f"video/{name}", scores[name]
        yield "video/classifier_test_accuracy", classifier.get_classifier().test_accuracy
        yield "video/seconds_per_clip", seconds
        if stage.nfe:
            yield "video/nfe", float(stage.nfe(self.config))
