"""Video judges and the `video_prompts` evaluator.

What must hold: clean renderings of moving digits (single and multi-shot, crisp or blurred and
noisy as a generator hands them over) score >= 95% on every judge; each corruption fails the judge
that looks for it (reversed or frozen clips and shuffled frames: motion; a swapped digit: frame
accuracy and consistency; a wrong color: shot accuracy); the motion verdict matches a hand-made
table of centroid tracks; PSNR matches the closed form; the evaluator hands the sample hook the
prompt batch of the contract and scores a generator that returns the real clips high and one that
returns them reversed low on motion.

The judges' clips are rendered by `render_clips` below (held-out glyphs pasted at moving
positions), independently of the data source; the evaluator runs on the data source's held-out
prompt set (`moving_digits.prompt_set`), as in training runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from flax import nnx

from data_pipelines.core.tokenizer import detokenize
from data_pipelines.sources import glyphs, moving_digits
from data_pipelines.sources.moving_digits import PALETTE, PALETTE_NAMES
from seedjax.config import ConfigError, load_config
from seedjax.eval import video_prompts
from seedjax.eval.judges import video
from seedjax.eval.judges.classifier import get_classifier
from seedjax.schema.evals import generator_entry
from seedjax.train import evaluators
from seedjax.train.stage import Stage
from tests.runner import ROOT

_STEP = np.array([[0, -1], [0, 1], [-1, 0], [1, 0]])  # (row, col) per direction: left, right, up, down
_PERPENDICULAR = {0: (2, 3), 1: (2, 3), 2: (0, 1), 3: (0, 1)}


def render_clips(num: int, frames: int = 8, size: int = 32, seed: int = 0, multishot: bool = False,
                 max_shots: int = 3, swap_digits: bool = False) -> dict:
    """Clips of one colored held-out glyph moving `size / 16` px per frame (half the shots with at
    least 4 frames turn at their middle frame), with the contract's labels and captions.
    `swap_digits`: the second half of every shot's frames shows another digit (d + 5 mod 10)."""
    images, digits = glyphs.load_digits("test")
    rng = np.random.default_rng(seed)
    speed, side = size // 16, int(size * 0.45)
    out = {"shot_digit": np.full((num, max_shots), -1, np.int32), "shot_color": np.full((num, max_shots), -1, np.int32),
           "shot_motion": np.full((num, max_shots, 2), -1, np.int32),
           "shot_turn_frame": np.full((num, max_shots), -1, np.int32),
           "frame_shot": np.zeros((num, frames), np.int32),
           "video": np.full((num, frames, size, size, 3), -1.0, np.float32), "captions": []}
    for n in range(num):
        shot_texts = []
        for s, shot_frames in enumerate(np.array_split(np.arange(frames), rng.integers(2, max_shots + 1)
                                                       if multishot else 1)):
            k, color, first = int(rng.integers(len(images))), int(rng.integers(len(PALETTE))), int(rng.integers(4))
            second, turn = -1, -1
            if len(shot_frames) >= 4 and rng.random() < 0.5:
                second, turn = int(rng.choice(_PERPENDICULAR[first])), int(shot_frames[len(shot_frames) // 2])
            path = np.cumsum([np.zeros(2)] + [speed * _STEP[second if 0 <= turn <= t else first]
                                              for t in shot_frames[:-1]], axis=0)
            low, high = -path.min(0), (size - side) - path.max(0)
            path = (path + [rng.integers(low[a], high[a] + 1) for a in range(2)]).astype(int)
            glyph = glyphs.upsample(images[k][None], side)[0][..., None]
            other = images[np.flatnonzero(digits == (digits[k] + 5) % 10)[0]]
            swapped = glyphs.upsample(other[None], side)[0][..., None] if swap_digits else glyph
            rgb = np.asarray(PALETTE[color][1], np.float32) / 255.0
            for j, (t, (y, x)) in enumerate(zip(shot_frames, path)):
                ink = swapped if j >= len(shot_frames) // 2 else glyph
                region = out["video"][n, t, y:y + side, x:x + side]
                region[...] = ((region + 1) / 2 * (1 - ink) + rgb * ink) * 2 - 1
            out["frame_shot"][n, shot_frames] = s
            out["shot_digit"][n, s], out["shot_color"][n, s] = digits[k], color
            out["shot_motion"][n, s], out["shot_turn_frame"][n, s] = (first, second), turn
            turning = f", then turning {video.DIRECTIONS[second]}" if turn >= 0 else ""
            shot_texts.append(f"a {PALETTE_NAMES[color]} {digits[k]} moving {video.DIRECTIONS[first]}{turning}")
        out["captions"].append("; ".join(f"shot {i + 1}: {t}" for i, t in enumerate(shot_texts))
                               if multishot else shot_texts[0])
    return out


@pytest.fixture(scope="module")
def classifier():
    return get_classifier(32)


@pytest.fixture(scope="module")
def clips():
    return {"single": render_clips(16, seed=1), "multi": render_clips(16, seed=2, multishot=True)}


def soften(videos: np.ndarray) -> np.ndarray:
    """What a generator hands over: slightly blurred, noisy pixels."""
    soft = scipy.ndimage.gaussian_filter(videos, sigma=(0, 0, 0.6, 0.6, 0))
    return np.clip(soft + np.random.default_rng(0).normal(0, 0.05, soft.shape), -1, 1).astype(np.float32)


# --------------------------------------------------------------------------- the judges


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_real_renderings_score_high(clips, classifier, kind):
    batch = clips[kind]
    for videos in (batch["video"], soften(batch["video"])):
        scores = video.score_videos(videos, batch, classifier)
        assert min(scores.values()) >= 0.95, scores
    # A clip of one shot judges one or two segments; shots of multi-shot clips are all judged.
    segments = video.segment_correct(video.read_frames(batch["video"], classifier), batch["shot_motion"],
                                     batch["shot_turn_frame"], batch["frame_shot"])
    used = (batch["shot_motion"][..., 0] >= 0)[..., None] & ((batch["shot_motion"] >= 0) | (np.arange(2) == 0))
    np.testing.assert_array_equal(np.isfinite(segments), used)


def test_each_corruption_fails_its_judge(clips, classifier):
    single, multi = clips["single"], clips["multi"]
    frames = single["video"].shape[1]
    order = np.random.default_rng(0).permutation(frames)
    while np.any(np.abs(np.diff(order)) == 1):  # no neighbours kept in order: every step is scrambled
        order = np.random.default_rng(int(order.sum() + order[0])).permutation(frames)

    def score(batch, videos, **labels):
        return video.score_videos(videos, {**batch, **labels}, classifier)

    reversed_ = score(single, single["video"][:, ::-1])
    frozen = score(single, np.repeat(single["video"][:, :1], frames, axis=1))
    shuffled = score(single, single["video"][:, order])
    assert reversed_["motion_accuracy"] <= 0.1 and frozen["motion_accuracy"] == 0.0, (reversed_, frozen)
    assert shuffled["motion_accuracy"] <= 0.2, shuffled
    for scores in (reversed_, frozen, shuffled):  # the digit is still the right one in every frame
        assert scores["frame_accuracy"] >= 0.95 and scores["temporal_consistency"] >= 0.95, scores
    # Labels turned by 90 degrees: the clip moves, but not the captioned way.
    motion = single["shot_motion"]
    turned = np.where(motion >= 0, np.array([2, 3, 1, 0])[motion], -1)
    assert score(single, single["video"], shot_motion=turned)["motion_accuracy"] <= 0.1
    # Half of each shot's frames show another digit: frame accuracy about halves, no shot is consistent.
    swapped = render_clips(16, seed=2, multishot=True, swap_digits=True)
    stats = score(swapped, swapped["video"])
    assert 0.3 <= stats["frame_accuracy"] <= 0.7 and stats["temporal_consistency"] <= 0.1, stats
    assert stats["shot_accuracy"] <= 0.5, stats
    # Wrong colors in the labels: every shot is wrong, frames are not.
    recolored = np.where(multi["shot_color"] >= 0, (multi["shot_color"] + 3) % len(PALETTE), -1)
    stats = score(multi, multi["video"], shot_color=recolored)
    assert stats["shot_accuracy"] == 0.0 and stats["frame_accuracy"] >= 0.95, stats


def test_motion_verdicts_match_a_table_of_tracks():
    """Hand-made centroid tracks (10 frames, canvas 40: at least 0.6 px per frame to count as moving)."""
    nan = np.nan
    right = [(10, 10 + 2 * t) for t in range(10)]
    turn_up = [(20, 10 + 2 * t) for t in range(5)] + [(20 - 2 * t, 18) for t in range(1, 6)]
    gappy_down = [(5 + 3 * t, 7) if t % 3 else (nan, nan) for t in range(10)]
    jitter = [(10 + 0.3 * (-1) ** t, 10 + 0.2 * (-1) ** t) for t in range(10)]
    back_and_forth = [(10, 10 + x) for x in (0, 6, 2, 8, 4, 10, 6, 12, 8, 14)]  # net right, most steps not
    one_frame = [(10, 10)] + [(nan, nan)] * 9
    slow_rounded = [(20, round(10 + 0.7 * t)) for t in range(10)]  # stays put on 3 of 9 steps
    tracks = np.array([right, turn_up, gappy_down, jitter, back_and_forth, one_frame, slow_rounded], float)
    n = len(tracks)
    readings = video.FrameReadings(present=~np.isnan(tracks[..., 0]), digit=np.zeros((n, 10), np.int32),
                                   color=np.zeros((n, 10), np.int32), centroid=tracks, size=40)
    labels = np.array([[(1, -1), (1, 2), (3, -1), (0, -1), (1, -1), (1, -1), (1, -1)],  # what each clip should do
                       [(0, -1), (1, 3), (2, -1), (1, -1), (0, -1), (0, -1), (3, -1)]])  # the wrong labels
    turn = np.array([-1, 4, -1, -1, -1, -1, -1])[:, None]
    expected = [[(1, nan), (1, 1), (1, nan), (0, nan), (0, nan), (0, nan), (1, nan)],
                [(0, nan), (1, 0), (0, nan), (0, nan), (0, nan), (0, nan), (0, nan)]]
    frame_shot = np.zeros((n, 10), np.int32)
    for motion, want in zip(labels, expected):
        got = video.segment_correct(readings, motion[:, None], turn, frame_shot)
        np.testing.assert_array_equal(got[:, 0], np.array(want, float))
    # A shot of one frame (the rest of the clip in no shot) cannot show motion: not judged.
    one_frame_shot = np.where(np.arange(10) == 0, 0, -1)[None].repeat(n, 0)
    assert np.isnan(video.segment_correct(readings, labels[0][:, None], turn, one_frame_shot)).all()


def test_first_frame_psnr_closed_form():
    rng = np.random.default_rng(0)
    clips = rng.uniform(-1, 1, (3, 2, 8, 8, 3)).astype(np.float32)
    offsets = np.array([0.1, 0.02, 0.0])  # in [-1, 1]: half that in [0, 1], MSE = (offset / 2) ** 2
    given = np.clip(clips[:, 0] + offsets[:, None, None, None], -1, 1)
    mse = np.mean(((given.astype(np.float64) - clips[:, 0]) / 2) ** 2, axis=(1, 2, 3))
    got = video.first_frame_psnr(clips, given)
    np.testing.assert_allclose(got[:2], 10 * np.log10(1 / mse[:2]), rtol=1e-5)
    assert abs(got[0] - 20 * np.log10(1 / 0.05)) < 0.5 and got[2] == video.MAX_PSNR
    with pytest.raises(ValueError, match="differ"):
        video.first_frame_psnr(clips, given[:, :4])


# --------------------------------------------------------------------------- the evaluator


def video_config(**options):
    cfg = load_config(f"{ROOT}/experiments/quickstart/pretrain.py:tiny")
    with cfg.unlocked():
        cfg.data.image_size = 32
        cfg.data.max_text_len = 64  # whole captions (the tiny text-to-image config cuts at 32)
        cfg.eval_every = 10
        cfg.evals = {"video": generator_entry("video_prompts", **options)}
    return cfg


def replaying_stage(clips: np.ndarray, seen: list) -> Stage:
    """A stage whose `sample` hook returns `clips` (one chunk), first frame taken from the prompt batch."""

    def sample(state, config, rng, batch):
        seen.append({k: (v.shape, v.dtype) for k, v in batch.items()})
        out = jnp.asarray(clips) * state.scale[...]
        return out.at[:, 0].set(batch["first_frame"]) if "first_frame" in batch else out

    return Stage(init=lambda *a: None, train_step=lambda *a: {}, sample=sample)


class Unit(nnx.Module):
    def __init__(self):
        self.scale = nnx.Param(jnp.ones(()))


def test_video_evaluator_scores_the_generator():
    assert video.DIRECTIONS == moving_digits.DIRECTIONS  # the judges read the labels in the source's order
    cfg = video_config(num_prompts=6, batch_size=6, frames=8, multishot=True, i2v=True, seed=3)
    (built,) = evaluators.build(cfg)
    assert type(built.evaluator) is video_prompts.Evaluator
    batch = built.evaluator.held_out()
    assert batch["frame_shot"].max() >= 1  # multi-shot prompts
    for i, caption in enumerate(batch["captions"]):  # one caption row per shot, empty rows after
        shots = detokenize(batch["shot_tokens"][i])
        assert "; ".join(f"shot {k + 1}: {s}" for k, s in enumerate(shots) if s) == caption
        assert not batch["shot_mask"][i, int(batch["frame_shot"][i].max()) + 1:].any()
    real = batch["video"]
    seen = []
    results = dict(built.run(Unit(), replaying_stage(real, seen), jax_key()))
    # Real clips: a classifier trained afresh (a clean checkout) misreads 4 of these 48 small frames
    # (0.917); a swapped digit scores 0.42 and a consistency of 0 (test_each_corruption_fails_its_judge).
    assert min(results[f"eval/video/{k}"] for k in ("frame_accuracy", "motion_accuracy", "temporal_consistency",
                                                     "shot_accuracy")) >= 0.85, results
    assert results["eval/video/first_frame_psnr"] == video.MAX_PSNR
    assert seen[0]["first_frame"][0] == (6, 32, 32, 3) and seen[0]["shot_tokens"][0] == (6, 3, 64)
    assert not {"video", "captions"} & set(seen[0])
    # Each shot played backwards (the cuts stay where the prompts put them).
    order = [np.concatenate([np.flatnonzero(shots == s)[::-1] for s in np.unique(shots)])
             for shots in batch["frame_shot"]]
    backwards = dict(built.run(Unit(), replaying_stage(np.stack([c[o] for c, o in zip(real, order)]), []),
                               jax_key()))
    # The same frames in another order: the digits read the same, only the motion is wrong.
    assert backwards["eval/video/motion_accuracy"] <= 0.2
    assert backwards["eval/video/frame_accuracy"] == results["eval/video/frame_accuracy"]


def test_video_evaluator_options_are_checked():
    with pytest.raises(ConfigError, match="needs clips of >= 2 frames"):
        evaluators.build(video_config(frames=1))
    cfg = video_config(frames=8)
    with cfg.unlocked():
        cfg.data.source = "video_folder"
    with pytest.raises(ConfigError, match="judges moving digits"):
        evaluators.build(cfg)
    evaluator = evaluators.build(video_config(frames=8, num_prompts=2))[0].evaluator
    assert (evaluator.frames, evaluator.multishot, evaluator.i2v, evaluator.seed) == (8, False, False, 0)


def jax_key():
    return jax.random.key(0)
