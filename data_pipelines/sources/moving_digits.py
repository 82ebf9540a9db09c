"""Moving-digit clips: real handwritten digit glyphs moving on a black canvas, captioned.

Two generators share the bundled glyphs (`glyphs.load_digits(split)`: the train split for
training, the held-out test split for evaluation):

- captioned clips for video diffusion (`data.source = 'moving_digits'`, the source in
  moving_digit_source.py): one colored digit of a size class moving in a direction at a speed,
  optionally turning once mid-shot ("a large red 3 moving left, then turning up"); multi-shot
  clips of 2..max_shots shots separated by hard cuts, each shot its own digit, color and motion
  ("shot 1: ...; shot 2: ..."); a one-frame clip is a still ("a small blue 7", text-to-image).
  `prompt_set` is the held-out prompt set evaluation scores against, with ground-truth renderings.
- `moving_digit_clips`: uncaptioned grayscale clips of 1-2 bouncing digits (VAE tests).

Held-out prompt combinations: the (digit, color, direction) triples with
(digit + color + direction) % 7 == 0 (HELD_OUT, 40 of the 280) never occur in training, in
either segment of a shot; every prompt of `prompt_set` moves a test-split glyph along one of them.

Coordinates are image coordinates: 'up' decreases the row. A shot's motion is straight, or two
straight segments meeting at its turn frame (the frame where the digit is at the corner). The
digit stays wholly inside the canvas: the speed is lowered when the path would not fit.
Everything is deterministic in its seeds.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from data_pipelines.core import clips as clips_lib
from data_pipelines.core import samples as samples_lib
from data_pipelines.sources import glyphs

DIRECTIONS = ("left", "right", "up", "down")
DIRECTION_STEPS = np.array([(0, -1), (0, 1), (-1, 0), (1, 0)], np.float64)  # (d_row, d_col) per direction
PALETTE = (
    ("red", (235, 45, 45)),
    ("green", (40, 205, 60)),
    ("blue", (60, 100, 255)),
    ("yellow", (240, 220, 40)),
    ("white", (255, 255, 255)),
    ("cyan", (40, 220, 230)),
    ("magenta", (225, 60, 225)),
)
PALETTE_NAMES = tuple(name for name, _ in PALETTE)
PALETTE_RGB = np.array([rgb for _, rgb in PALETTE], np.uint8)
SIZE_CLASSES = ("small", "large")
SIZE_FRACTIONS = (0.4, 0.56)  # glyph side / canvas side
MIN_TURN_SEGMENT = 2  # frames of motion on each side of a turn


def is_held_out(digit: int, color: int, direction: int) -> bool:
    return (digit + color + direction) % 7 == 0


HELD_OUT = tuple((d, c, m) for d in range(10) for c in range(len(PALETTE)) for m in range(len(DIRECTIONS))
                 if is_held_out(d, c, m))


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    multishot_prob: float = 0.0
    max_shots: int = 3
    turn_prob: float = 0.3
    speed: tuple[float, float] = (0.03, 0.08)  # fraction of the canvas side per frame

    @classmethod
    def of(cls, video_cfg) -> "ClipConfig":
        cfg = cls(float(video_cfg.multishot_prob), int(video_cfg.max_shots), float(video_cfg.turn_prob),
                  (float(video_cfg.speed_min), float(video_cfg.speed_max)))
        if not 0 < cfg.speed[0] <= cfg.speed[1]:
            raise ValueError(f"data.video.speed_min/speed_max: need 0 < min <= max, got {cfg.speed}")
        if cfg.max_shots < 1:
            raise ValueError(f"data.video.max_shots must be >= 1, got {cfg.max_shots}")
        return cfg


@dataclasses.dataclass(frozen=True)
class Shot:
    """One shot: what moves (digit, color, size class, glyph) and how (direction, optional turn)."""

    digit: int
    color: int
    size: int  # index into SIZE_CLASSES
    glyph: int  # index into the split's glyphs
    direction: int = -1  # -1: a still
    turn: int = -1  # direction after the turn, -1: none
    turn_at: int = -1  # frame of the turn within the shot


def perpendicular(direction: int) -> tuple[int, int]:
    return (2, 3) if direction < 2 else (0, 1)


def shot_caption(shot: Shot) -> str:
    text = f"a {SIZE_CLASSES[shot.size]} {PALETTE_NAMES[shot.color]} {shot.digit}"
    if shot.direction >= 0:
        text += f" moving {DIRECTIONS[shot.direction]}"
    if shot.turn >= 0:
        text += f", then turning {DIRECTIONS[shot.turn]}"
    return text


def clip_caption(shots: list[Shot]) -> str:
    if len(shots) == 1:
        return shot_caption(shots[0])
    return "; ".join(f"shot {i + 1}: {shot_caption(s)}" for i, s in enumerate(shots))


@functools.lru_cache(maxsize=None)
def _glyphs_by_digit(split: str) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    images, labels = glyphs.load_digits(split)
    return images, tuple(np.flatnonzero(labels == d) for d in range(10))


def shot_lengths(rng: np.random.Generator, frames: int, shots: int) -> list[int]:
    """A random split of `frames` into `shots` contiguous shots of at least 3 frames (2 if too few)."""
    least = 3 if frames >= 3 * shots else 2
    extra = rng.multinomial(frames - least * shots, np.full(shots, 1.0 / shots))
    return [least + int(e) for e in extra]


def _with_turn(rng, shot: Shot, frames: int, held_out_allowed: bool) -> Shot:
    """The shot turning once, at a random frame, to a perpendicular direction (training: not a held-out triple)."""
    options = [m for m in perpendicular(shot.direction)
               if held_out_allowed or not is_held_out(shot.digit, shot.color, m)]
    turn = int(rng.choice(options))
    turn_at = int(rng.integers(MIN_TURN_SEGMENT, frames - MIN_TURN_SEGMENT))
    return dataclasses.replace(shot, turn=turn, turn_at=turn_at)


def _can_turn(frames: int) -> bool:
    return frames >= 2 * MIN_TURN_SEGMENT + 1


def draw_train_shot(rng, frames: int, cfg: ClipConfig, split: str, previous: Shot | None) -> Shot:
    """A training shot of `frames` frames: any combination except the held-out triples."""
    while True:  # a new shot after a cut shows another digit in another color
        digit, color = int(rng.integers(10)), int(rng.integers(len(PALETTE)))
        if previous is None or (digit != previous.digit and color != previous.color):
            break
    pool = _glyphs_by_digit(split)[1][digit]
    shot = Shot(digit, color, int(rng.integers(len(SIZE_CLASSES))), int(rng.choice(pool)))
    if frames == 1:
        return shot
    directions = [m for m in range(len(DIRECTIONS)) if not is_held_out(digit, color, m)]
    shot = dataclasses.replace(shot, direction=int(rng.choice(directions)))
    if _can_turn(frames) and rng.random() < cfg.turn_prob:
        shot = _with_turn(rng, shot, frames, held_out_allowed=False)
    return shot


def shot_path(rng, shot: Shot, frames: int, size: int, speed: tuple[float, float]) -> np.ndarray:
    """int [frames, 2]: the glyph's top-left (row, col) per frame, wholly inside the canvas."""
    glyph_side = glyph_size(shot, size)
    room = size - glyph_side
    steps = np.zeros((frames, 2))
    for k in range(1, frames):
        after_turn = shot.turn >= 0 and k > shot.turn_at
        steps[k] = DIRECTION_STEPS[shot.turn if after_turn else shot.direction] if shot.direction >= 0 else 0
    offsets = np.cumsum(steps, axis=0)
    extent = offsets.max(axis=0) - offsets.min(axis=0)
    pixels_per_frame = rng.uniform(*speed) * size
    for axis in range(2):
        if extent[axis] > 0:
            pixels_per_frame = min(pixels_per_frame, room / extent[axis])
    low = -offsets.min(axis=0) * pixels_per_frame
    high = np.maximum(room - offsets.max(axis=0) * pixels_per_frame, low)
    start = rng.uniform(low, high)
    return np.clip(np.round(start + offsets * pixels_per_frame), 0, room).astype(np.int64)


def glyph_size(shot: Shot, size: int) -> int:
    return max(int(round(SIZE_FRACTIONS[shot.size] * size)), 3)


def render(shots: list[Shot], lengths: list[int], rng, size: int, split: str,
           speed: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(video float32 [F, size, size, 3] in [0, 1], frame_shot int32 [F]) of consecutive shots."""
    images = _glyphs_by_digit(split)[0]
    frames = sum(lengths)
    video = np.zeros((frames, size, size, 3), np.float32)
    frame_shot = np.repeat(np.arange(len(shots), dtype=np.int32), lengths)
    first = 0
    for shot, length in zip(shots, lengths):
        side = glyph_size(shot, size)
        sprite = glyphs.upsample(images[shot.glyph][None], side)[0][..., None] * (PALETTE_RGB[shot.color] / 255.0)
        for k, (row, col) in enumerate(shot_path(rng, shot, length, size, speed)):
            video[first + k, row: row + side, col: col + side] = sprite
        first += length
    return video, frame_shot


def raw_clip(shots: list[Shot], lengths: list[int], rng, size: int, split: str, speed) -> dict:
    """The raw clip of data_pipelines/core/clips.py: pixels, captions, frame_shot and labels."""
    video, frame_shot = render(shots, lengths, rng, size, split, speed)
    starts = np.cumsum([0] + lengths[:-1])
    return {
        "video": video,
        "caption": clip_caption(shots),
        "shot_captions": [shot_caption(s) for s in shots],
        "frame_shot": frame_shot,
        "shot_digit": np.array([s.digit for s in shots], np.int32),
        "shot_color": np.array([s.color for s in shots], np.int32),
        "shot_motion": np.array([(s.direction, s.turn) for s in shots], np.int32),
        "shot_turn_frame": np.array([first + s.turn_at if s.turn >= 0 else -1 for s, first in zip(shots, starts)],
                                    np.int32),
    }


def train_clip(rng, frames: int, size: int, cfg: ClipConfig, split: str = "train") -> dict:
    """A random training clip (raw, see raw_clip): one shot, or 2..max_shots with multishot_prob."""
    shots = 1
    most = min(cfg.max_shots, frames // 2)
    if most >= 2 and rng.random() < cfg.multishot_prob:
        shots = int(rng.integers(2, most + 1))
    lengths = shot_lengths(rng, frames, shots) if shots > 1 else [frames]
    plan: list[Shot] = []
    for length in lengths:
        plan.append(draw_train_shot(rng, length, cfg, split, plan[-1] if plan else None))
    return raw_clip(plan, lengths, rng, size, split, cfg.speed)


def held_out_clip(index: int, frames: int, size: int, seed: int, multishot: bool = False, max_shots: int = 3,
                  speed: tuple[float, float] = ClipConfig.speed) -> dict:
    """Prompt `index` of the held-out set (raw): every shot's first segment moves along a HELD_OUT
    triple, with test-split glyphs; every third shot turns (when it is long enough)."""
    order = np.random.default_rng([seed, 0]).permutation(len(HELD_OUT))
    rng = np.random.default_rng([seed, 1, index])
    shots = max(min(2 + index % max(max_shots - 1, 1), max_shots, frames // 2), 1) if multishot else 1
    lengths = shot_lengths(rng, frames, shots) if shots > 1 else [frames]
    plan: list[Shot] = []
    cursor = index * max_shots
    for k, length in enumerate(lengths):
        while True:  # after a cut, the next held-out triple with another digit and color
            digit, color, direction = HELD_OUT[order[cursor % len(HELD_OUT)]]
            cursor += 1
            if not plan or (digit != plan[-1].digit and color != plan[-1].color):
                break
        pool = _glyphs_by_digit("test")[1][digit]
        shot = Shot(digit, color, (index + k) % len(SIZE_CLASSES), int(rng.choice(pool)),
                    direction if length > 1 else -1)
        if length > 1 and _can_turn(length) and (index + k) % 3 == 2:
            shot = _with_turn(rng, shot, length, held_out_allowed=True)
        plan.append(shot)
    return raw_clip(plan, lengths, rng, size, "test", speed)


def prompt_set(num: int, frames: int, size: int, seed: int, multishot: bool = False, *, max_shots: int = 3,
               max_text_len: int = 64, channels: int = 3) -> dict:
    """The held-out prompt set as a batch (data_pipelines/core/clips.py contract) plus `video`
    (the ground-truth renderings, [N, F, H, W, C] in [-1, 1]; frame 0 is the I2V conditioning
    image) and `captions` (list of str). Deterministic in its arguments."""
    layout = samples_lib.Layout(channels=channels, max_text_len=max_text_len, video=True, max_shots=max_shots)
    raws = [held_out_clip(i, frames, size, seed, multishot, max_shots) for i in range(num)]
    rows = [clips_lib.finalize_clip(raw, (frames, size, size), layout, f"moving_digits[test]#{i}")
            for i, raw in enumerate(raws)]
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    batch["captions"] = [raw["caption"] for raw in raws]
    return batch


def moving_digit_clips(split: str, num: int, frames: int, size: int, seed: int = 0,
                       max_digits: int = 2) -> np.ndarray:
    images, _ = glyphs.load_digits(split)
    rng = np.random.default_rng(seed)
    clips = np.zeros((num, frames, size, size), np.float32)
    for n in range(num):
        for _ in range(rng.integers(1, max_digits + 1)):
            glyph_size = int(rng.integers(size // 3, size // 2 + 1))
            glyph = glyphs.upsample(images[rng.integers(len(images))][None], glyph_size)[0]
            span = size - glyph_size
            pos = rng.uniform(0, span, 2)
            vel = rng.uniform(-0.12, 0.12, 2) * size  # up to ~12% of the canvas per frame
            for t in range(frames):
                y, x = (int(round(p)) for p in pos)
                window = clips[n, t, y: y + glyph_size, x: x + glyph_size]
                np.maximum(window, glyph, out=window)
                pos = pos + vel
                for axis in range(2):  # reflect at the borders (|vel| < span, so once is enough)
                    if pos[axis] < 0:
                        pos[axis], vel[axis] = -pos[axis], -vel[axis]
                    elif pos[axis] > span:
                        pos[axis], vel[axis] = 2 * span - pos[axis], -vel[axis]
    return clips[..., None] * 2.0 - 1.0
