"""`digits`: scikit-learn's real handwritten digits, upsampled, with varied captions."""

from __future__ import annotations

import numpy as np

from data_pipelines.sources import glyphs

CAPTION_TEMPLATES = (
    "a handwritten digit {word}",
    "the number {n}",
    "a {n}",
    "digit {word}, handwritten",
    "a handwritten {n}",
    "the digit {word} written by hand",
    "{word}",
    "an image of the numeral {n}",
    "a white {word} on a black background",
    "a scanned handwritten number {word}",
)


def caption_for(label: int, variant: int) -> str:
    template = CAPTION_TEMPLATES[variant % len(CAPTION_TEMPLATES)]
    return template.format(word=glyphs.DIGIT_WORDS[label], n=label)


class DigitsSource:
    """Random-access digits of one split, upsampled once to `image_size` (grayscale, [0, 1]).

    The caption of a sample varies with its position in the stream (a different template
    each time the image comes round), deterministically in (seed, position).
    """

    channels = 1
    scene_labels = False
    tags: tuple[str, ...] = ()
    latent = False
    text_features = False

    def __init__(self, split: str, image_size: int, seed: int = 0):
        images, self.labels = glyphs.load_digits(split)
        self.images = glyphs.upsample(images, image_size)
        self.image_size = image_size
        self.seed = seed
        self.name = f"digits[{split}]"
        self.scan_skips: dict[str, tuple[int, str]] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def sizes(self) -> np.ndarray:
        return np.full((len(self), 2), self.image_size, np.int64)

    def load(self, index: int, position: int) -> dict:
        label = int(self.labels[index])
        # A cheap integer hash of (seed, position) picks the caption template.
        variant = (position * 2654435761 + self.seed * 40503) % (2**32) >> 7
        return {
            "image": self.images[index],
            "caption": caption_for(label, variant),
            "label": label,
            "where": f"{self.name}#{index}",
        }
