"""The digit_scenes generator: determinism, label/pixel agreement, captions, long tail, defects."""

import collections
import dataclasses

import ml_collections
import numpy as np
import pytest
from PIL import Image

import data_pipelines
from data_pipelines.sources import glyphs, scene_source
from data_pipelines.sources.scenes import (
    COLOR_NAMES,
    DEFECT_KINDS,
    PALETTE,
    TAG_VOCAB,
    SceneConfig,
    caption_for_labels,
    held_out_prompts,
    make_scene,
    relation,
)


def test_deterministic_random_access():
    cfg = SceneConfig(defect_fraction=0.5)
    a = [make_scene(i, cfg, seed=3) for i in (5, 0, 9)]
    b = [make_scene(i, cfg, seed=3) for i in (9, 5, 0)]
    for x, y in zip(a, (b[1], b[2], b[0])):
        for k in x:
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), err_msg=k)
    assert not np.array_equal(make_scene(5, cfg, seed=4)["image"], a[0]["image"])
    assert not np.array_equal(make_scene(6, cfg, seed=3)["image"], a[0]["image"])


def test_shapes_and_padding():
    cfg = SceneConfig(image_size=48, defect_fraction=1.0)
    for i in range(20):
        s = make_scene(i, cfg)
        assert s["image"].shape == (48, 48, 3) and s["image"].dtype == np.uint8
        n = int(s["scene_count"])
        assert 1 <= n <= 3
        assert (s["scene_digit"][:n] >= 0).all() and (s["scene_digit"][n:] == -1).all()
        assert (s["scene_color"][:n] >= 0).all() and (s["scene_color"][n:] == -1).all()
        assert s["scene_box"].shape == (3, 4) and s["defect_box"].shape == (4, 4)
        assert ((s["defect_kind"] >= 0).sum()) in (1, 2)
        assert set(s["tags"]) <= set(TAG_VOCAB)


def _dominant_hue_color(pixels: np.ndarray) -> int:
    """Palette index closest (in normalised RGB) to the brightest pixels of a region."""
    rgb = pixels.reshape(-1, 3).astype(np.float64)
    bright = rgb[rgb.max(1) >= np.percentile(rgb.max(1), 90)]
    direction = bright.mean(0) / np.linalg.norm(bright.mean(0))
    palette = np.array([c for _, c in PALETTE], np.float64)
    palette /= np.linalg.norm(palette, axis=1, keepdims=True)
    return int(np.argmax(palette @ direction))


def test_objects_are_drawn_where_the_labels_say():
    cfg = SceneConfig()
    for i in range(30):
        s = make_scene(i, cfg)
        img, n = s["image"], int(s["scene_count"])
        size = img.shape[0]
        inside = np.zeros(img.shape[:2], bool)
        for k in range(n):
            y0, x0, y1, x1 = np.rint(s["scene_box"][k] * size).astype(int)
            inside[y0:y1, x0:x1] = True
            assert _dominant_hue_color(img[y0:y1, x0:x1]) == s["scene_color"][k]
        # Everything outside the boxes is dark background.
        assert img[~inside].max() < 45


def test_glyph_pixels_match_the_glyph_of_the_labelled_digit():
    """Turning the scene box back into an 8x8 glyph recovers a train-split glyph of that digit."""
    train, labels = glyphs.load_digits("train")
    for i in range(8):
        s = make_scene(i, SceneConfig(max_objects=1))
        size = s["image"].shape[0]
        y0, x0, y1, x1 = np.rint(s["scene_box"][0] * size).astype(int)
        crop = s["image"][y0:y1, x0:x1].max(-1).astype(np.float32)
        rgb_max = max(PALETTE[int(s["scene_color"][0])][1])
        down = np.asarray(Image.fromarray(crop / rgb_max, mode="F").resize((8, 8), Image.BILINEAR), np.float32)
        nearest = np.argmin(((train - down) ** 2).sum((1, 2)))
        assert labels[nearest] == s["scene_digit"][0]


def test_first_two_objects_have_a_clear_relation():
    for i in range(100):
        s = make_scene(i, SceneConfig())
        if s["scene_count"] < 2:
            continue
        b = s["scene_box"].astype(np.float64)
        cy, cx = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        dy, dx = abs(cy[0] - cy[1]), abs(cx[0] - cx[1])
        assert max(dy, dx) >= 1.3 * min(dy, dx) - 1e-6 and max(dy, dx) >= 0.2 - 1e-6
        # Boxes never overlap.
        for j in range(int(s["scene_count"])):
            for k in range(j):
                assert (b[j, 2] <= b[k, 0] or b[k, 2] <= b[j, 0] or b[j, 3] <= b[k, 1] or b[k, 3] <= b[j, 1])


def test_object_size_sets_the_box_sides():
    size = 24
    cfg = SceneConfig(image_size=size, max_objects=1, object_size=(0.55, 0.8))
    boxes = [make_scene(i, cfg)["scene_box"][0] for i in range(60)]
    sides = [(b[2] - b[0]) * size for b in boxes]
    assert min(sides) >= round(0.55 * size) - 1e-4 and max(sides) <= round(0.8 * size) + 1e-4
    assert max(sides) - min(sides) >= 3  # the range is used, not one fixed size
    default = [make_scene(i, SceneConfig(image_size=size, max_objects=1))["scene_box"][0] for i in range(60)]
    assert max((b[2] - b[0]) * size for b in default) <= round(0.42 * size) + 1e-4
    with pytest.raises(ValueError, match="object_size"):
        SceneConfig(object_size=(0.5, 0.3))
    with pytest.raises(ValueError, match="object_size max 0.6"):
        SceneConfig(max_objects=2, object_size=(0.3, 0.6))
    # The data config reaches the generator; one saved before the keys existed gets the default.
    data_cfg = data_pipelines.default_config()
    data_cfg.image_size, data_cfg.scenes.max_objects = 32, 1
    data_cfg.scenes.object_size_min, data_cfg.scenes.object_size_max = 0.5, 0.6
    assert scene_source.scene_config(data_cfg).object_size == (0.5, 0.6)
    data_cfg.scenes = ml_collections.ConfigDict(
        {k: v for k, v in data_cfg.scenes.items() if not k.startswith("object_size")})
    assert scene_source.scene_config(data_cfg).object_size == (0.26, 0.42)


def test_captions_state_labels():
    assert relation((0, 0, 0.2, 0.2), (0, 0.5, 0.2, 0.7)) == "left of"
    assert relation((0.6, 0, 0.8, 0.2), (0, 0.1, 0.2, 0.3)) == "below"
    boxes = np.array([[0.1, 0.1, 0.4, 0.4], [0.1, 0.6, 0.4, 0.9], [0.6, 0.3, 0.9, 0.6]])
    assert caption_for_labels([3, 7, -1], [0, 4, -1], 2, boxes) == "a red 3 left of a blue 7"
    assert caption_for_labels([3, 7, 1], [0, 4, 2], 3, boxes, template=1) == (
        "three digits: a red 3 left of a blue 7, and a green 1")
    assert caption_for_labels([8, -1, -1], [5, -1, -1], 1) == "a purple 8"
    with pytest.raises(ValueError, match="scene_box"):
        caption_for_labels([3, 7, -1], [0, 4, -1], 2)
    seen_templates = set()
    for i in range(60):
        s = make_scene(i, SceneConfig())
        n = int(s["scene_count"])
        cap = s["caption"]
        for d, c in zip(s["scene_digit"][:n], s["scene_color"][:n]):
            assert COLOR_NAMES[c] in cap
            assert str(d) in cap or glyphs.DIGIT_WORDS[d] in cap
        if n >= 2:
            assert relation(s["scene_box"][0], s["scene_box"][1]) in cap
        seen_templates.add(cap.split(" ")[0])
    assert len(seen_templates) >= 3  # several phrasings


def test_long_tail_follows_zipf():
    counts_d, counts_c = collections.Counter(), collections.Counter()
    cfg = SceneConfig(long_tail=1.5, max_objects=1)
    n = 1500
    for i in range(n):
        s = make_scene(i, cfg)
        counts_d[int(s["scene_digit"][0])] += 1
        counts_c[int(s["scene_color"][0])] += 1
    p = (np.arange(10) + 1.0) ** -1.5
    p /= p.sum()
    freq = np.array([counts_d[k] for k in range(10)]) / n
    assert np.abs(freq - p).max() < 0.04
    assert counts_c[0] > 4 * counts_c[len(PALETTE) - 1]
    uniform = collections.Counter(int(make_scene(i, SceneConfig(max_objects=1))["scene_digit"][0]) for i in range(600))
    assert min(uniform.values()) > 30


def test_defects_change_only_their_boxes_and_some_are_large():
    clean_cfg = SceneConfig()
    stamped_cfg = dataclasses.replace(clean_cfg, defect_fraction=1.0)
    large, kinds = 0, collections.Counter()
    for i in range(120):
        clean, stamped = make_scene(i, clean_cfg), make_scene(i, stamped_cfg)
        size = clean["image"].shape[0]
        np.testing.assert_array_equal(clean["scene_box"], stamped["scene_box"])
        changed = np.abs(clean["image"].astype(int) - stamped["image"].astype(int)).max(-1) > 2
        inside = np.zeros_like(changed)
        for box, kind in zip(stamped["defect_box"], stamped["defect_kind"]):
            if kind < 0:
                continue
            kinds[DEFECT_KINDS[kind]] += 1
            y0, x0, y1, x1 = np.rint(box * size).astype(int)
            assert 0 <= y0 < y1 <= size and 0 <= x0 < x1 <= size
            inside[y0:y1, x0:x1] = True
            assert changed[y0:y1, x0:x1].any(), DEFECT_KINDS[kind]  # every defect is visible
            large += (box[2] - box[0]) * (box[3] - box[1]) > 0.2
        assert not (changed & ~inside).any()
    assert set(kinds) == set(DEFECT_KINDS)
    assert large >= 10  # the pipeline's 20% area filter has work to do


def test_defect_kinds_subset_and_bad_config():
    cfg = SceneConfig(defect_fraction=1.0, defect_kinds=("subtitle",))
    for i in range(10):
        kinds = make_scene(i, cfg)["defect_kind"]
        assert kinds[0] == 2 and (kinds[1:] == -1).all()
    with pytest.raises(ValueError, match="defect_kinds"):
        SceneConfig(defect_kinds=("smudge",))
    with pytest.raises(ValueError, match="max_objects"):
        SceneConfig(max_objects=4)
    with pytest.raises(ValueError, match="split"):
        SceneConfig(split="val")


def test_held_out_prompts_use_test_glyphs_and_a_separate_stream():
    held = held_out_prompts(40, SceneConfig(defect_fraction=0.9))
    assert held["image"].shape == (40, 64, 64, 3)
    assert len(held["caption"]) == 40 and held["scene_digit"].shape == (40, 3)
    for i in range(40):
        n = held["scene_count"][i]
        assert held["caption"][i] == caption_for_labels(
            held["scene_digit"][i], held["scene_color"][i], n, held["scene_box"][i], template=0)
    train_images = np.stack([make_scene(i, SceneConfig())["image"] for i in range(40)])
    assert not any(np.array_equal(a, b) for a, b in zip(held["image"], train_images))
    again = held_out_prompts(40, SceneConfig())
    np.testing.assert_array_equal(again["image"], held["image"])  # clean and fixed
