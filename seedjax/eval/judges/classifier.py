"""The digit classifier that judges generated digits: prompt accuracy, features for FD.

The network, its preprocessing and its training recipe are `seedjax.train.digit_encoder` (REPA
uses the same network, trained with another seed, as its frozen encoder); this is the judge
built on it: batched, jitted `logits`, `predict` and `features` with numpy out, and the
held-out accuracy measured when the weights were trained.

Images in: [N, H, W, C] float in [-1, 1] (or uint8), C = 1 or 3, any H, W.
"""

from __future__ import annotations

import functools

import numpy as np

from seedjax.train import digit_encoder


class DigitClassifier:
    """A trained digit CNN with batched, jitted `logits`, `predict` and `features` (numpy out)."""

    def __init__(self, trained: digit_encoder.DigitCNN):
        self.image_size = trained.settings.image_size
        self.metadata = trained.metadata
        self.model = trained.model
        self._apply = digit_encoder.batched_apply_fn(trained.model, self.image_size)

    @property
    def test_accuracy(self) -> float:
        """Accuracy on the held-out digits 'test' split, measured when the weights were trained."""
        return float(self.metadata["test_accuracy"])

    def logits(self, images) -> np.ndarray:
        return self._apply(images, "logits")

    def predict(self, images) -> np.ndarray:
        return self.logits(images).argmax(-1).astype(np.int32)

    def features(self, images) -> np.ndarray:
        """Penultimate-layer features [N, feature_dim] (the space Frechet distance is measured in)."""
        return self._apply(images, "features")


@functools.lru_cache(maxsize=None)
def get_classifier(image_size: int = 32, **overrides) -> DigitClassifier:
    """The digit classifier at working resolution `image_size` (trained once, then loaded from cache)."""
    return DigitClassifier(digit_encoder.load(image_size, **overrides))


def digit_features(images) -> np.ndarray:
    """The default classifier's features of images [N, H, W, C] in [-1, 1]: what data_pipelines'
    dual-axis sampling clusters with data.dual_axis.visual_features='classifier'."""
    return get_classifier(32).features(images)
