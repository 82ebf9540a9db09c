"""Reward-model training data from the bundled real data: true and perturbed captions.

`data.source = "reward_pairs"` with `data.path = "digits"` or `"digit_scenes"` reads that
bundled source and gives every sample, next to its true caption, a *perturbed* caption that
contradicts the image in exactly one respect (in the batch as `negative_tokens` and
`negative_text_mask`):

    digit     one object's digit replaced      "a red 3 left of a blue 7" -> "a red 5 left of a blue 7"
    color     one object's colour replaced     -> "a green 3 left of a blue 7"
    count     an object dropped or added       -> "a red 3"
    position  the relation inverted            -> "a red 3 right of a blue 7"

The perturbed caption keeps the phrasing template of the true one, so the pair differs only in
content. `digits` samples have a digit only, so their perturbations are all `digit`. The kind
of each sample's perturbation is one of its `tags` (`perturb:<kind>`), so accuracy can be
reported per kind. Image-side negatives (blur, noise, stamps) are made on device by the reward
stage (`seedjax.stages.reward.degrade`).

Perturbations are a pure function of (seed, index, position), so resumed runs see the same
pairs.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.sources import digits as digits_lib
from data_pipelines.sources import scenes

PERTURBATIONS = ("digit", "color", "count", "position")
PERTURBATION_TAGS = tuple(f"perturb:{kind}" for kind in PERTURBATIONS)
BASE_SOURCES = ("digits", "digit_scenes")


def applicable(raw: dict) -> tuple[str, ...]:
    """The perturbations that can contradict this sample's labels."""
    if "scene_count" not in raw:
        return ("digit",)
    count = int(raw["scene_count"])
    return ("digit", "color", "count") + (("position",) if count >= 2 else ())


def _template(caption: str, render, num_templates: int) -> int:
    """The phrasing template that produced `caption` (0 if none does, e.g. a hand-written one)."""
    for t in range(num_templates):
        if render(t) == caption:
            return t
    return 0


def _other(rng: np.random.Generator, n: int, current: int) -> int:
    return int((current + rng.integers(1, n)) % n)


def perturb_digit_caption(raw: dict, rng: np.random.Generator) -> str:
    label = int(raw["label"])
    variant = _template(raw["caption"], lambda v: digits_lib.caption_for(label, v), len(digits_lib.CAPTION_TEMPLATES))
    return digits_lib.caption_for(_other(rng, 10, label), variant)


def perturb_scene_caption(raw: dict, kind: str, rng: np.random.Generator) -> str:
    digit = np.array(raw["scene_digit"], np.int32)
    color = np.array(raw["scene_color"], np.int32)
    box = np.array(raw["scene_box"], np.float32)
    count = int(raw["scene_count"])
    template = _template(raw["caption"], lambda t: scenes.caption_for_labels(digit, color, count, box, t), 4)
    slot = int(rng.integers(count))
    if kind == "digit":
        digit[slot] = _other(rng, 10, int(digit[slot]))
    elif kind == "color":
        color[slot] = _other(rng, len(scenes.PALETTE), int(color[slot]))
    elif kind == "position":
        if count < 2:
            raise ValueError("perturb_scene_caption: 'position' needs at least two objects")
        box[[0, 1]] = box[[1, 0]]
    elif kind == "count":
        if count == scenes.MAX_SLOTS or (count > 1 and rng.random() < 0.5):
            count -= 1
        else:  # add an object: any digit and colour, placed in a random direction from the first one
            digit[count] = rng.integers(10)
            color[count] = rng.integers(len(scenes.PALETTE))
            angle = rng.uniform(0, 2 * np.pi)
            box[count] = box[0] + 0.45 * np.array([np.sin(angle), np.cos(angle)] * 2, np.float32)
            count += 1
    else:
        raise ValueError(f"perturb_scene_caption: unknown perturbation {kind!r}; use one of {PERTURBATIONS}")
    return scenes.caption_for_labels(digit, color, count, box, template)


def with_negative(raw: dict, rng: np.random.Generator) -> dict:
    """`raw` plus a perturbed caption (`extra_captions['negative']`) and its `perturb:<kind>` tag."""
    kind = str(rng.choice(applicable(raw)))
    negative = perturb_scene_caption(raw, kind, rng) if "scene_count" in raw else perturb_digit_caption(raw, rng)
    return dict(raw, extra_captions={"negative": negative}, tags=[*raw.get("tags", ()), f"perturb:{kind}"])


class RewardPairSource:
    """A bundled labelled source whose samples also carry a perturbed caption (see module doc)."""

    latent = False
    text_features = False

    def __init__(self, base, seed: int):
        self.base, self.seed = base, seed
        self.name = f"reward_pairs[{base.name}]"
        self.channels = base.channels
        self.scene_labels = base.scene_labels
        self.tags = tuple(base.tags) + PERTURBATION_TAGS
        self.scan_skips = base.scan_skips
        if hasattr(base, "eval_rows"):  # the base's own held-out prompt set
            self.eval_rows = self._eval_rows

    def __len__(self) -> int:
        return len(self.base)

    def sizes(self) -> np.ndarray:
        return self.base.sizes()

    def load(self, index: int, position: int) -> dict:
        raw = self.base.load(index, position)
        return with_negative(raw, np.random.default_rng((self.seed, index, position, 0x5EED)))

    def _eval_rows(self, num: int, seed: int) -> list[dict]:
        rows = self.base.eval_rows(num, seed)
        return [with_negative(row, np.random.default_rng((seed, i, 0x5EED))) for i, row in enumerate(rows)]


def open_reward_source(base_kind: str, open_source, data_cfg, *, split: str, seed: int) -> RewardPairSource:
    """`data.source = 'reward_pairs'`: wrap the bundled source named by `data.path`."""
    if base_kind not in BASE_SOURCES:
        raise ValueError(f"data.path: reward_pairs pairs captions of a labelled bundled source; "
                         f"got {base_kind!r}, use one of {BASE_SOURCES}")
    return RewardPairSource(open_source(base_kind, "", data_cfg, split=split, seed=seed), seed)
