"""Judges of generated moving-digit clips: what digit, what color, which way it moves, per frame and shot.

A clip is pixels [F, H, W, C] in [-1, 1] (or uint8) of ONE colored handwritten digit moving on a
dark canvas, possibly cut into shots. The judges read each frame on its own, independently of the
generator, and compare with the labels the prompt was written from:

    shot_digit       [N, S] int   digit of each shot (-1: unused shot)
    shot_color       [N, S] int   palette index of each shot
    shot_motion      [N, S, 2]    direction of the first and second segment (-1: no turn / unused)
    shot_turn_frame  [N, S]       clip frame index where the digit turns (-1: no turn)
    frame_shot       [N, F] int   the shot each frame belongs to (-1: none)

Directions are `DIRECTIONS` in that index order, in image coordinates (up = decreasing row).

Per frame (`read_frames`): the foreground is every pixel at least `MIN_INK` bright (max over
channels); its connected blobs (after a one-pixel dilation bridging stroke gaps) that hold at
least `MIN_RELATIVE_MASS` of the largest blob's ink are the digit, so far-away specks are
dropped. The digit's crop (square, framed like a real glyph) is read by the digit classifier, its
ink-weighted centroid is tracked, and its dominant hue is matched to the palette.

Verdicts (each a mean over what it judges):
- frame accuracy: frames whose read digit is their shot's digit (a frame with no digit is wrong);
- motion accuracy: per shot segment (two when the shot turns), the centroid's net displacement
  over the segment's frames with a digit points in the labeled direction, covers at least
  `MIN_STEP` of the canvas per frame (a static digit is wrong), and is most of the way travelled
  along that axis (`MIN_EFFICIENCY`: shuffled frames wander back and forth; a slow digit whose
  rounded position sometimes stays put still moves forward only);
- temporal consistency: shots whose digit is read identically in every frame;
- first-frame PSNR (I2V): generated frame 0 against the conditioning frame, in dB;
- shot accuracy: the shot's majority digit, majority color and motion are all right.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage as ndi
from PIL import Image
from skimage.color import rgb2hsv

from data_pipelines.sources.moving_digits import PALETTE
from seedjax.eval.judges.classifier import DigitClassifier, get_classifier

DIRECTIONS = ("left", "right", "up", "down")  # the contract's order (the data source's DIRECTIONS)
_UNIT = np.array([[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])  # (row, col) per direction

MIN_INK = 0.3  # brightness (max channel, [0, 1]) of a foreground pixel
MIN_PIXELS = 0.002  # of the frame: less foreground than this is an empty frame
MIN_RELATIVE_MASS = 0.2  # a blob belongs to the digit when it holds this much of the largest blob's ink
GLYPH_FILL = 0.85  # real glyphs span ~85% of their frame; crops are framed the same way
MIN_SATURATION = 0.25  # below this a pixel (or a palette color: white) is achromatic
MIN_STEP = 0.015  # net travel per frame, as a fraction of the canvas side, to count as moving
MIN_EFFICIENCY = 0.5  # net travel along the labeled axis / distance travelled back and forth on it
CROP_BATCH = 64  # crops per classifier call are padded to a multiple of this
MAX_PSNR = 100.0  # dB, for identical frames (keeps a mean finite)


@dataclasses.dataclass
class FrameReadings:
    """What the judges read in each frame of N clips of F frames."""

    present: np.ndarray  # [N, F] bool: the frame shows a digit
    digit: np.ndarray  # [N, F] int32: the classifier's reading (-1: no digit)
    color: np.ndarray  # [N, F] int32: palette index of the dominant hue (-1: no digit or no hue)
    centroid: np.ndarray  # [N, F, 2] float: ink-weighted (row, col) in pixels (NaN: no digit)
    size: int  # canvas side (the larger of H, W)


def to_unit(videos) -> np.ndarray:
    """Clips [N, F, H, W, C] in [-1, 1] (or uint8) -> float32 in [0, 1]."""
    x = np.asarray(videos)
    if x.ndim != 5 or x.shape[-1] not in (1, 3):
        raise ValueError(f"video judges: clips must be [N, F, H, W, C] with C = 1 or 3, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return np.clip((x.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)


def digit_mask(intensity: np.ndarray) -> np.ndarray:
    """The digit's pixels in one frame's intensity [H, W] in [0, 1] (all False: no digit)."""
    ink = intensity >= MIN_INK
    if ink.sum() < max(3.0, MIN_PIXELS * ink.size):
        return np.zeros_like(ink)
    labels, count = ndi.label(ndi.binary_dilation(ink), structure=np.ones((3, 3)))
    mass = ndi.sum(np.where(ink, intensity, 0.0), labels, index=np.arange(1, count + 1))
    keep = np.flatnonzero(mass >= MIN_RELATIVE_MASS * mass.max()) + 1
    return ink & np.isin(labels, keep)


def glyph_crop(intensity: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """The digit's ink (dilated mask, so anti-aliased edges stay), squared and centered like a real
    glyph, resized to size x size; float32 in [0, 1]."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(round(max(y1 - y0, x1 - x0) / GLYPH_FILL))
    top, left = int(round((y0 + y1 - side) / 2)), int(round((x0 + x1 - side) / 2))
    ink = np.where(ndi.binary_dilation(mask), intensity, 0.0).astype(np.float32)
    canvas = np.zeros((side, side), np.float32)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + side, ink.shape[0]), min(left + side, ink.shape[1])
    canvas[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = ink[sy0:sy1, sx0:sx1]
    return np.asarray(Image.fromarray(canvas, mode="F").resize((size, size), Image.BILINEAR), np.float32)


def dominant_color(rgb01: np.ndarray, mask: np.ndarray, palette=PALETTE) -> int:
    """Palette index most of the digit's pixels vote for, weighted by brightness (-1: none, or a
    grayscale clip). A saturated pixel votes for the nearest palette hue, an achromatic one for the
    palette's achromatic color (white), if it has one."""
    if rgb01.shape[-1] != 3:
        return -1
    hsv = rgb2hsv(rgb01[mask])
    palette_hsv = rgb2hsv(np.array([[c for _, c in palette]], np.float64) / 255.0)[0]
    chromatic = palette_hsv[:, 1] >= MIN_SATURATION
    gap = np.abs(hsv[:, :1] - palette_hsv[None, :, 0])
    gap = np.where(chromatic[None], np.minimum(gap, 1.0 - gap), np.inf)  # hue is circular
    vote = np.where(hsv[:, 1] >= MIN_SATURATION, gap.argmin(-1),
                    int(np.argmax(~chromatic)) if (~chromatic).any() else -1)
    weights = np.bincount(vote[vote >= 0], hsv[vote >= 0, 2], minlength=len(palette))
    return int(weights.argmax()) if weights.sum() > 0 else -1


def read_frames(videos, classifier: DigitClassifier | None = None, palette=PALETTE) -> FrameReadings:
    """Digit, color and centroid of every frame of clips [N, F, H, W, C] (one classifier call)."""
    classifier = classifier or get_classifier()
    rgb = to_unit(videos)
    n, f, h, w = rgb.shape[:4]
    present = np.zeros((n, f), bool)
    color = np.full((n, f), -1, np.int32)
    centroid = np.full((n, f, 2), np.nan)
    crops = []
    for i in range(n):
        for t in range(f):
            intensity = rgb[i, t].max(-1)
            mask = digit_mask(intensity)
            if not mask.any():
                continue
            present[i, t] = True
            centroid[i, t] = ndi.center_of_mass(np.where(mask, intensity, 0.0))
            color[i, t] = dominant_color(rgb[i, t], mask, palette)
            crops.append(glyph_crop(intensity, mask, classifier.image_size))
    digit = np.full((n, f), -1, np.int32)
    if crops:
        # padded to a multiple of CROP_BATCH: a few compiled shapes, whatever the number of frames with a digit
        crops += [crops[-1]] * (-len(crops) % CROP_BATCH)
        digit[present] = classifier.predict(np.stack(crops)[..., None] * 2.0 - 1.0)[:present.sum()]
    return FrameReadings(present, digit, color, centroid, max(h, w))


# --------------------------------------------------------------------------- verdicts


def _shot_frames(frame_shot: np.ndarray, clip: int, shot: int) -> np.ndarray:
    return np.flatnonzero(np.asarray(frame_shot)[clip] == shot)


def _used_shots(frame_shot: np.ndarray, num_shots: int):
    """(clip, shot, its frame indices) of every shot that has frames."""
    for i in range(len(frame_shot)):
        for s in range(num_shots):
            frames = _shot_frames(frame_shot, i, s)
            if len(frames):
                yield i, s, frames


def _majority(values: np.ndarray) -> int:
    values = values[values >= 0]
    return int(np.bincount(values).argmax()) if len(values) else -1


def frame_correct(readings: FrameReadings, shot_digit, frame_shot) -> np.ndarray:
    """[N, F] float: 1 where the frame's digit is its shot's digit, 0 where not, NaN (no shot)."""
    shot_digit, frame_shot = np.asarray(shot_digit), np.asarray(frame_shot)
    wanted = np.take_along_axis(shot_digit, np.maximum(frame_shot, 0), axis=1)
    return np.where(frame_shot >= 0, (readings.digit == wanted) & readings.present, np.nan)


def segment_moves(centroid: np.ndarray, frames: np.ndarray, direction: int, size: int) -> bool:
    """Whether the centroid over `frames` (clip frame indices; NaN rows = no digit, ignored)
    travels in `direction`: dominant net direction, enough travel, little of it back and forth."""
    frames = frames[~np.isnan(centroid[frames, 0])]
    if len(frames) < 2:
        return False  # no motion can be seen
    steps = np.diff(centroid[frames], axis=0)
    net = steps.sum(0)
    forward = float(net @ _UNIT[direction])
    travelled = float(np.abs(steps @ _UNIT[direction]).sum())
    return (int(np.argmax(_UNIT @ net)) == direction
            and forward >= MIN_STEP * size * (frames[-1] - frames[0])
            and forward >= MIN_EFFICIENCY * travelled)


def segment_correct(readings: FrameReadings, shot_motion, shot_turn_frame, frame_shot) -> np.ndarray:
    """[N, S, 2] float: 1/0 per labeled segment (before and after the turn), NaN where none.

    A turn frame belongs to both segments (the digit is at the corner there). A shot whose first
    segment has no direction (-1), and a segment of one frame, are not judged."""
    shot_motion, shot_turn_frame = np.asarray(shot_motion), np.asarray(shot_turn_frame)
    out = np.full(shot_motion.shape, np.nan)
    for i, s, frames in _used_shots(frame_shot, shot_motion.shape[1]):
        first, second = (int(d) for d in shot_motion[i, s])
        turn = int(shot_turn_frame[i, s])
        if first < 0:
            continue
        parts = [(0, first, frames)]
        if turn >= 0 and second >= 0:
            parts = [(0, first, frames[frames <= turn]), (1, second, frames[frames >= turn])]
        for k, direction, seg_frames in parts:
            if len(seg_frames) >= 2:  # one frame cannot show motion, whatever the generator does
                out[i, s, k] = segment_moves(readings.centroid[i], seg_frames, direction, readings.size)
    return out


def shot_consistent(readings: FrameReadings, frame_shot, num_shots: int) -> np.ndarray:
    """[N, S] float: 1 where every frame of the shot shows a digit and all read the same, NaN (unused)."""
    out = np.full((len(readings.digit), num_shots), np.nan)
    for i, s, frames in _used_shots(frame_shot, num_shots):
        read = readings.digit[i, frames]
        out[i, s] = bool(readings.present[i, frames].all() and np.all(read == read[0]))
    return out


def shot_correct(readings: FrameReadings, shot_digit, shot_color, segments: np.ndarray, frame_shot) -> np.ndarray:
    """[N, S] float: 1 where the shot's majority digit and color and all its judged segments are
    right, NaN (unused shot)."""
    shot_digit, shot_color = np.asarray(shot_digit), np.asarray(shot_color)
    out = np.full(shot_digit.shape, np.nan)
    for i, s, frames in _used_shots(frame_shot, shot_digit.shape[1]):
        motion_ok = np.all(np.nan_to_num(segments[i, s], nan=1.0) == 1.0)
        out[i, s] = bool(_majority(readings.digit[i, frames]) == shot_digit[i, s]
                         and _majority(readings.color[i, frames]) == shot_color[i, s] and motion_ok)
    return out


def first_frame_psnr(videos, first_frame) -> np.ndarray:
    """[N] PSNR (dB, pixels in [0, 1]) of each clip's frame 0 against its conditioning frame [N, H, W, C]."""
    generated, given = to_unit(videos)[:, 0], to_unit(np.asarray(first_frame)[:, None])[:, 0]
    if generated.shape != given.shape:
        raise ValueError(f"first_frame_psnr: frame 0 {generated.shape} and conditioning frames {given.shape} differ")
    mse = np.mean((generated.astype(np.float64) - given) ** 2, axis=(1, 2, 3))
    return np.minimum(10.0 * np.log10(1.0 / np.maximum(mse, 1e-30)), MAX_PSNR)


def score_videos(videos, labels: dict, classifier: DigitClassifier | None = None, palette=PALETTE) -> dict[str, float]:
    """Every verdict on clips [N, F, H, W, C] for the prompts' `labels` (the keys above; with
    `first_frame` [N, H, W, C], the I2V fidelity too)."""
    frame_shot = np.asarray(labels["frame_shot"])
    n, f = np.asarray(videos).shape[:2]
    if frame_shot.shape != (n, f):
        raise ValueError(f"score_videos: frame_shot {frame_shot.shape} does not match {n} clips of {f} frames")
    readings = read_frames(videos, classifier, palette)
    num_shots = np.asarray(labels["shot_digit"]).shape[1]
    segments = segment_correct(readings, labels["shot_motion"], labels["shot_turn_frame"], frame_shot)
    out = {
        "frame_accuracy": float(np.nanmean(frame_correct(readings, labels["shot_digit"], frame_shot))),
        "motion_accuracy": float(np.nanmean(segments)) if np.isfinite(segments).any() else float("nan"),
        "temporal_consistency": float(np.nanmean(shot_consistent(readings, frame_shot, num_shots))),
    }
    correct = shot_correct(readings, labels["shot_digit"], labels["shot_color"], segments, frame_shot)
    out["shot_accuracy"] = float(np.nanmean(correct))
    if "first_frame" in labels:
        out["first_frame_psnr"] = float(np.mean(first_frame_psnr(videos, labels["first_frame"])))
    return out
