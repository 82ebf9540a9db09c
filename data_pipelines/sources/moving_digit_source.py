"""`moving_digits` as a random-access source: clip i of the stream is generated from (seed, i).

The train split has `data.video.num_samples` clips per bucket of data.video.buckets, interleaved
(clip i belongs to bucket i % len(buckets), so a prefix of the source covers every bucket); a
clip is rendered at its bucket's (frames, height, width), and a one-frame bucket holds stills
(text-to-image). The test split is the held-out prompt set (moving_digits.prompt_set), read
with `eval_rows` (multi-shot prompts when data.video.multishot_prob > 0).
"""

from __future__ import annotations

import numpy as np

from data_pipelines.core import clips as clips_lib
from data_pipelines.sources import moving_digits


class MovingDigitsSource:
    channels = 3
    scene_labels = False
    tags: tuple[str, ...] = ()
    latent = False
    text_features = False
    video = True
    fixed_buckets = True  # clip i exists only at the size of its own bucket

    def __init__(self, data_cfg, *, split: str, seed: int):
        if split not in ("train", "test"):
            raise ValueError(f"moving_digits: unknown split {split!r}; use 'train' or 'test'")
        self.buckets = clips_lib.video_buckets(data_cfg)
        if any(h != w for _, h, w in self.buckets):
            raise ValueError(f"data.video.buckets: moving_digits renders square clips; got {data_cfg.video.buckets!r}")
        self.cfg = moving_digits.ClipConfig.of(data_cfg.video)
        self.per_bucket = int(data_cfg.video.num_samples)
        if self.per_bucket <= 0:
            raise ValueError(f"data.video.num_samples must be positive, got {self.per_bucket}")
        self.split, self.seed = split, seed
        self.name = f"moving_digits[{split}]"
        self.scan_skips: dict[str, tuple[int, str]] = {}

    def __len__(self) -> int:
        return self.per_bucket * len(self.buckets)

    def sizes(self) -> np.ndarray:
        """int64 [N, 3]: the (frames, height, width) bucket of every clip."""
        return np.asarray(self.buckets, np.int64)[np.arange(len(self)) % len(self.buckets)]

    def load(self, index: int, position: int, bucket=None) -> dict:
        if self.split == "test":
            raise ValueError("moving_digits: the test split is the held-out prompt set; read it with eval_rows()")
        frames, size, _ = self.buckets[index % len(self.buckets)]
        raw = moving_digits.train_clip(np.random.default_rng([self.seed, index]), frames, size, self.cfg)
        raw["where"] = f"{self.name}#{index}"
        return raw

    def eval_rows(self, num: int, seed: int, bucket) -> list[dict]:
        """The first `num` held-out prompts (raw clips) rendered at `bucket`, with test-split glyphs."""
        frames, size, _ = bucket
        multishot = self.cfg.multishot_prob > 0
        rows = []
        for i in range(num):
            raw = moving_digits.held_out_clip(i, frames, size, seed, multishot, self.cfg.max_shots, self.cfg.speed)
            rows.append({**raw, "where": f"{self.name}#{i}"})
        return rows
