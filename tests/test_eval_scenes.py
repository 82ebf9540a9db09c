"""GenEval-style scene scoring: near-perfect on real scenes, and each wrong scene fails the right check."""

import numpy as np
import pytest
import scipy.ndimage

from data_pipelines.sources import glyphs
from data_pipelines.sources.scenes import COLOR_NAMES, SceneConfig, make_scene, render_scene
from seedjax.eval.judges.classifier import get_classifier
from seedjax.eval.judges.scenes import detect_objects, score_scenes

LABEL_KEYS = ("scene_digit", "scene_color", "scene_box", "scene_count")


@pytest.fixture(scope="module")
def classifier():
    return get_classifier(32)


def _stack(scenes):
    return {k: np.stack([s[k] for s in scenes]) for k in ("image",) + LABEL_KEYS}


def _score(batch, classifier, images=None):
    return score_scenes(batch["image"] if images is None else images, *(batch[k] for k in LABEL_KEYS),
                        classifier=classifier)


@pytest.mark.parametrize("split", ["train", "test"])
def test_real_scenes_score_near_perfect(classifier, split):
    batch = _stack([make_scene(i, SceneConfig(split=split), seed=11) for i in range(150)])
    result = _score(batch, classifier)
    means = {k: round(v, 3) for k, v in result.items() if k.endswith("_accuracy")}
    print(f"real {split}-glyph scenes: {means}")
    assert result["count_accuracy"] >= 0.99 and result["color_accuracy"] >= 0.99
    assert result["digit_accuracy"] >= 0.95 and result["position_accuracy"] >= 0.95
    assert result["overall_accuracy"] >= 0.95
    # Same scenes as a generator would hand them over: float in [-1, 1], slightly blurred and noisy.
    rng = np.random.default_rng(0)
    soft = scipy.ndimage.gaussian_filter(batch["image"] / 127.5 - 1.0, sigma=(0, 0.6, 0.6, 0))
    soft = np.clip(soft + rng.normal(0, 0.03, soft.shape), -1, 1)
    assert _score(batch, classifier, soft)["overall_accuracy"] >= 0.9


def _glyph(digit, classifier):
    """A held-out glyph of `digit` that the classifier reads correctly on its own."""
    images, labels = glyphs.load_digits("test")
    candidates = images[labels == digit][:10]
    up = glyphs.upsample(candidates, 32)[..., None] * 2 - 1
    return candidates[int(np.argmax(classifier.predict(up) == digit))]


def _scene(objects, classifier, size=64):
    """objects: list of (digit, color, (y, x, side)) -> (image uint8, labels as the generator gives them)."""
    image = render_scene([_glyph(d, classifier) for d, _, _ in objects], [c for _, c, _ in objects],
                         [b for _, _, b in objects], size, np.array([18.0, 16.0, 22.0], np.float32))
    digit, color, box = np.full(3, -1, np.int32), np.full(3, -1, np.int32), np.zeros((3, 4), np.float32)
    for k, (d, c, (y, x, side)) in enumerate(objects):
        digit[k], color[k], box[k] = d, c, np.array([y, x, y + side, x + side]) / size
    labels = {"scene_digit": digit, "scene_color": color, "scene_box": box, "scene_count": np.int32(len(objects))}
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels


def _check(image, labels, classifier):
    result = score_scenes(image[None], *(np.asarray(labels[k])[None] for k in LABEL_KEYS), classifier=classifier)
    return {k: bool(result[k][0]) for k in ("digit", "count", "color", "position", "overall")}


RED, YELLOW, BLUE, GREEN = (COLOR_NAMES.index(c) for c in ("red", "yellow", "blue", "green"))
LEFT, RIGHT, BELOW = (8, 6, 22), (10, 38, 22), (40, 22, 20)


def test_correct_scene_passes_every_check(classifier):
    image, labels = _scene([(2, RED, LEFT), (7, BLUE, RIGHT), (4, GREEN, BELOW)], classifier)
    assert _check(image, labels, classifier) == dict(digit=True, count=True, color=True, position=True, overall=True)
    found = detect_objects(image[None], classifier)[0]
    assert sorted((o.digit, o.color) for o in found) == [(2, RED), (4, GREEN), (7, BLUE)]


def test_wrong_digit_fails_digit_check(classifier):
    image, labels = _scene([(2, RED, LEFT), (7, BLUE, RIGHT)], classifier)
    labels["scene_digit"][1] = 1  # asked for a blue 1, the image has a blue 7
    got = _check(image, labels, classifier)
    assert not got["digit"] and not got["overall"]
    assert got["count"] and got["color"]


def test_wrong_color_fails_color_check(classifier):
    image, labels = _scene([(2, RED, LEFT), (7, BLUE, RIGHT)], classifier)
    labels["scene_color"][0] = YELLOW  # asked for a yellow 2, the image has a red 2
    got = _check(image, labels, classifier)
    assert not got["color"] and not got["digit"] and not got["overall"]
    assert got["count"]


def test_wrong_count_fails_count_check(classifier):
    image, labels = _scene([(2, RED, LEFT), (7, BLUE, RIGHT), (4, GREEN, BELOW)], classifier)
    two_labels = {k: np.array(v) for k, v in labels.items()}
    two_labels["scene_digit"][2], two_labels["scene_color"][2], two_labels["scene_count"] = -1, -1, np.int32(2)
    got = _check(image, two_labels, classifier)  # asked for two digits, the image has three
    assert not got["count"] and not got["overall"]
    assert got["digit"] and got["color"] and got["position"]
    missing, _ = _scene([(2, RED, LEFT)], classifier)
    assert not _check(missing, two_labels, classifier)["count"]  # asked for two, the image has one


def test_swapped_positions_fail_position_check(classifier):
    _, labels = _scene([(2, RED, LEFT), (7, BLUE, RIGHT)], classifier)  # "a red 2 left of a blue 7"
    swapped, _ = _scene([(2, RED, RIGHT), (7, BLUE, LEFT)], classifier)
    got = _check(swapped, labels, classifier)
    assert not got["position"] and not got["overall"]
    assert got["digit"] and got["count"] and got["color"]


def test_bad_input_is_rejected(classifier):
    with pytest.raises(ValueError, match="RGB"):
        score_scenes(np.zeros((2, 64, 64)), np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3, 4)), np.ones(2),
                     classifier=classifier)
    with pytest.raises(ValueError, match="do not match"):
        score_scenes(np.zeros((2, 64, 64, 3)), np.zeros((3, 3)), np.zeros((2, 3)), np.zeros((2, 3, 4)), np.ones(2),
                     classifier=classifier)
