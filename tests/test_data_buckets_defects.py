"""Resolution buckets, defect masks on the pixel and patch grids, the drop rule, and mixtures."""

import json
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import data_pipelines as dp
from data_pipelines.core import buckets, samples
from data_pipelines.core.tokenizer import detokenize
from data_pipelines.sources import scene_source, scenes
from data_pipelines.techniques import defects
from seedjax.diffusion import flow


# ----------------------------------------------------------------------------- defect geometry


def _reference_box_mask(boxes, h, w):
    """Pixel (r, c) covers [r/h, (r+1)/h) x [c/w, (c+1)/w); it is masked when a box overlaps it (beyond float noise)."""
    mask = np.ones((h, w), np.float32)
    for r in range(h):
        for c in range(w):
            for y0, x0, y1, x1 in boxes:
                overlap_y = (min((r + 1) / h, y1) - max(r / h, y0)) * h  # in pixels
                overlap_x = (min((c + 1) / w, x1) - max(c / w, x0)) * w
                if overlap_y > defects.EPS and overlap_x > defects.EPS:
                    mask[r, c] = 0
    return mask


def test_box_mask_matches_pixel_overlap_reference():
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = rng.integers(4, 40, 2)
        corners = np.sort(rng.uniform(0, 1, (3, 2, 2)), axis=1)
        boxes = np.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], axis=1)
        np.testing.assert_array_equal(defects.box_mask(boxes, h, w), _reference_box_mask(boxes, h, w))
    # Exactly grid-aligned box: covers rows 2..3 and cols 1..2 of an 8x8 grid, nothing more.
    m = defects.box_mask(np.array([[0.25, 0.125, 0.5, 0.375]]), 8, 8)
    assert np.flatnonzero(m.min(axis=1) == 0).tolist() == [2, 3]
    assert np.flatnonzero(m.min(axis=0) == 0).tolist() == [1, 2]
    assert defects.box_mask(np.zeros((4, 4)), 5, 5).min() == 1  # padded (empty) boxes are ignored


def test_patch_grid_mask_min_pools_and_agrees_with_the_loss():
    rng = np.random.default_rng(1)
    mask = (rng.uniform(size=(3, 16, 24)) > 0.05).astype(np.float32)
    grid = defects.patch_grid_mask(mask, 4)
    assert grid.shape == (3, 4, 6)
    for b in range(3):
        for i in range(4):
            for j in range(6):
                assert grid[b, i, j] == mask[b, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].min()
    # The loss (seedjax.diffusion.flow.token_mask) reduces the batch's loss_mask the same way.
    np.testing.assert_array_equal(np.asarray(flow.token_mask(jnp.asarray(mask), 4)), grid.reshape(3, -1))
    with pytest.raises(ValueError, match="not divisible by patch 5"):
        defects.patch_grid_mask(mask, 5)


def _layout(**kw):
    return samples.Layout(channels=3, max_text_len=16, **kw)


def test_drop_rule_and_mask_inside_boxes():
    image = np.zeros((20, 20, 3), np.float32)
    big = {"image": image, "caption": "x", "defect_box": [[0, 0, 0.5, 0.5]], "defect_kind": [0]}  # 25%
    small = {"image": image, "caption": "x", "defect_box": [[0, 0, 0.4, 0.5]], "defect_kind": [2]}  # 20%
    with pytest.raises(samples.BadSample) as e:
        samples.finalize(big, (20, 20), _layout(defect_aware=True, max_defect_area=0.2), "big")
    assert e.value.kind == "defect_area"
    out = samples.finalize(small, (20, 20), _layout(defect_aware=True, max_defect_area=0.2), "small")
    assert out["loss_mask"][:8, :10].max() == 0 and out["loss_mask"].sum() == 400 - 80
    assert out["defect_kind"].tolist() == [2, -1, -1, -1]
    # Defect-aware training off: nothing is dropped or masked (the boxes are still reported).
    off = samples.finalize(big, (20, 20), _layout(), "big")
    assert off["loss_mask"].min() == 1 and off["defect_kind"][0] == 0


def test_digit_scenes_keep_exactly_the_scenes_under_the_threshold_with_their_masks():
    cfg = dp.default_config()
    cfg.source, cfg.image_size = "digit_scenes", 32
    cfg.scenes.update(dict(num_samples=120, defect_fraction=0.3))
    cfg.defects.enabled = True
    # Reference: stamp every scene directly and apply the 20% rule on the 32x32 pixel grid.
    scfg = scene_source.scene_config(cfg)
    kept, dropped = {}, 0
    for i in range(120):
        s = scenes.make_scene(i, scfg, 0)
        mask = defects.box_mask(defects.valid_boxes(s["defect_box"], s["defect_kind"]), 32, 32)
        if defects.defect_fraction(mask) > 0.2:
            dropped += 1
        else:
            kept[s["image"].tobytes()] = mask
    assert 5 < dropped < 36
    # A batch of one epoch's positions: every kept scene at its own position, every dropped one
    # replaced by a spare (another kept scene) and counted.
    it = dp.make_train_iterator(cfg, global_batch_size=120, seed=0, process_index=0, process_count=1)
    batch = next(it)
    images = np.round((batch["image"] + 1) * 127.5).astype(np.uint8)
    keys = [img.tobytes() for img in images]
    assert set(keys) == set(kept)
    for key, loss_mask in zip(keys, batch["loss_mask"]):
        np.testing.assert_array_equal(loss_mask, kept[key])
    assert np.sum(batch["loss_mask"].min(axis=(1, 2)) == 0) > 0  # some stamped scenes are kept, masked
    assert it.counters()["skipped_defect_area"] >= dropped  # (a spare may be dropped too, and counted)


# ----------------------------------------------------------------------------- buckets


def test_parse_and_assign_buckets():
    assert buckets.parse_buckets("", 32) == [(32, 32)]
    assert buckets.parse_buckets("16x32, 32x16", 8) == [(16, 32), (32, 16)]
    for bad in ("16", "16x", "0x16", "16x16,16x16"):
        with pytest.raises(ValueError, match="data.buckets"):
            buckets.parse_buckets(bad, 32)
    bl = [(16, 16), (32, 32), (16, 32), (32, 16)]
    sizes = [(100, 100), (20, 20), (8, 8), (50, 110), (300, 120), (31, 33)]
    # Closest aspect, then the largest bucket that does not upsample (or the smallest one).
    assert buckets.assign_buckets(np.array(sizes), bl).tolist() == [1, 0, 0, 2, 3, 0]


def test_cover_crop_geometry():
    top, left, bottom, right = buckets.cover_crop(100, 50, (32, 32))
    assert (top, left, bottom, right) == (25, 0, 75, 50)
    boxes = buckets.crop_boxes(np.array([[0.25, 0.0, 0.5, 1.0], [0.0, 0.0, 0.2, 1.0]]), 100, 50,
                               (top, left, bottom, right))
    np.testing.assert_allclose(boxes[0], [0.0, 0.0, 0.5, 1.0])
    assert boxes[1][2] <= boxes[1][0]  # entirely cropped away -> empty


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    shapes = [(40, 40)] * 12 + [(20, 60)] * 8 + [(64, 30)] * 4 + [(100, 100)] * 6
    for i, (h, w) in enumerate(shapes):
        Image.fromarray(np.full((h, w, 3), 10 * i % 255, np.uint8)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"image {i}")
    return root


def test_every_batch_has_one_bucket_shape_and_processes_agree(mixed_folder):
    cfg = dp.default_config()
    cfg.source, cfg.path, cfg.buckets = "folder", str(mixed_folder), "32x32,16x48,48x24,64x64"
    iters = [dp.make_train_iterator(cfg, global_batch_size=4, seed=0, process_index=p, process_count=2)
             for p in (0, 1)]
    seen = {}
    compiled = jax.jit(lambda x: x.mean())
    for step in range(60):
        b0, b1 = next(iters[0]), next(iters[1])
        shape = b0["image"].shape[1:3]
        assert b1["image"].shape[1:3] == shape  # both processes build the same global batch shape
        assert shape in {(32, 32), (16, 48), (48, 24), (64, 64)}
        np.testing.assert_array_equal(b0["target_size"], np.tile(shape, (2, 1)))
        assert b0["loss_mask"].shape == (2, *shape)
        seen[shape] = seen.get(shape, 0) + 1
        compiled(b0["image"])
    assert compiled._cache_size() == len(seen) == 4  # at most one compile per bucket
    # Buckets come up in proportion to their images (12 : 8 : 4 : 6 of 30).
    assert seen[(32, 32)] > seen[(64, 64)] > seen[(48, 24)]


# ----------------------------------------------------------------------------- mixtures


def _mixture_cfg(digits_weight, scenes_weight):
    cfg = dp.default_config()
    cfg.channels, cfg.image_size = 3, 32
    cfg.scenes.num_samples = 500
    cfg.mixture = {"hand": {"source": "digits", "weight": float(digits_weight)},
                   "scenes": {"source": "digit_scenes", "weight": float(scenes_weight)}}
    return cfg


def _digit_captions(batches):
    """(caption, image checksum) of the digits samples, in order."""
    return [(c, float(img.sum())) for b in batches
            for c, lab, img in zip(detokenize(b["tokens"]), b["label"], b["image"]) if lab >= 0]


def test_mixture_weights_and_restore_after_changing_them():
    make = lambda w: dp.make_train_iterator(_mixture_cfg(*w), global_batch_size=16, seed=0, process_index=0,
                                            process_count=1)
    it = make((1, 3))
    straight = [next(it) for _ in range(20)]
    b = straight[0]
    assert b["image"].shape == (16, 32, 32, 3) and b["scene_digit"].shape == (16, 3)
    is_digit = np.concatenate([s["label"] >= 0 for s in straight])
    assert np.all(np.concatenate([s["scene_count"] for s in straight])[is_digit] == 0)
    assert is_digit.mean() == pytest.approx(0.25, abs=0.06)
    # Stop after 8 batches, change the weights, resume: each named component continues exactly
    # where it was (the digits stream yields the same sequence as without the change).
    first = make((1, 3))
    head = [next(first) for _ in range(8)]
    state = json.loads(json.dumps(first.get_state()))
    changed = make((3, 1))
    changed.set_state(state)
    tail = [next(changed) for _ in range(12)]
    resumed_digits = _digit_captions(head + tail)
    assert np.mean([s["label"] >= 0 for s in tail]) > 0.6
    uninterrupted = _digit_captions(straight + [next(it) for _ in range(40)])
    n = len(resumed_digits)
    assert n > 60 and resumed_digits == uninterrupted[:n]
