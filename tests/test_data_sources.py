"""Image folders, JSONL manifests and ArrayRecord shards, including every kind of bad input."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

import data_pipelines as dp
from data_pipelines.cli import prepare
from data_pipelines.core import pipeline, shards
from data_pipelines.core.tokenizer import detokenize
from data_pipelines.sources import scene_source, scenes
from data_pipelines.techniques import defects


def _cfg(source, path, **overrides):
    cfg = dp.default_config()
    cfg.source, cfg.path = source, str(path)
    cfg.update(overrides)
    return cfg


def _save_png(path, height, width, value):
    """A solid-color RGB PNG whose red channel encodes `value` (to identify it in a batch)."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[..., 0] = value
    arr[..., 1] = 255 - value
    Image.fromarray(arr).save(path)


def _good_folder(root, n=6):
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        _save_png(os.path.join(root, f"img{i}.png"), 40 + 8 * i, 48, 20 + 30 * i)
        with open(os.path.join(root, f"img{i}.txt"), "w") as f:
            f.write(f"caption number {i}")


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _epochs(it, n_batches):
    return [next(it) for _ in range(n_batches)]


def test_folder_reads_captions_and_skips_every_bad_file_once(tmp_path, caplog):
    root = tmp_path / "imgs"
    _good_folder(root)
    (root / "notimage.png").write_bytes(b"this is not a png")  # unreadable
    (root / "notimage.txt").write_text("a caption for a broken file")
    _save_png(root / "nocaption.png", 32, 32, 7)  # no .txt
    _save_png(root / "empty.png", 32, 32, 9)
    (root / "empty.txt").write_text("   \n")  # empty caption counts as missing
    _save_png(root / "cut.png", 64, 64, 250)
    (root / "cut.txt").write_text("truncated")
    _truncate(root / "cut.png")

    caplog.set_level(logging.WARNING, logger="data_pipelines")
    it = dp.make_train_iterator(_cfg("folder", root), global_batch_size=4, seed=0, process_index=0, process_count=1)
    batches = _epochs(it, 6)  # 6 good images per epoch: 4 epochs' worth
    counters = it.counters()
    assert counters["scan_skipped_unreadable_image"] == 1
    assert counters["scan_skipped_missing_caption"] == 2
    assert counters["skipped_truncated_image"] >= 3  # seen (and skipped) once per epoch
    assert counters["samples"] == 24
    # Only the good images come out, each with its own caption (red channel encodes the index).
    for batch in batches:
        red = np.round((batch["image"][..., 0].mean(axis=(1, 2)) + 1) * 127.5)
        for value, caption in zip(red, detokenize(batch["tokens"])):
            i = int(caption.rsplit(" ", 1)[1])
            assert abs(value - (20 + 30 * i)) <= 1, (value, caption)
    # Each kind is reported once, naming the file.
    warnings = _warnings(caplog)
    for kind, name in [("unreadable_image", "notimage.png"), ("missing_caption", "nocaption.png"),
                       ("truncated_image", "cut.png")]:
        hits = [w for w in warnings if kind in w]
        assert len(hits) == 1, (kind, warnings)
    assert any("cut.png" in w for w in warnings if "truncated_image" in w)


def test_manifest_lines_defects_tags_and_bad_lines(tmp_path, caplog):
    _good_folder(tmp_path / "imgs", n=3)
    lines = [
        json.dumps({"path": "imgs/img0.png", "caption": "zero", "tags": ["photo"]}),
        "{not json",
        json.dumps({"path": "imgs/img1.png", "caption": "one", "tags": ["photo", "art"],
                    "defects": [{"box": [0.0, 0.0, 0.5, 0.25], "kind": "watermark"}]}),
        json.dumps({"path": "imgs/img2.png"}),  # no caption
        json.dumps({"path": "imgs/img2.png", "caption": "two", "defects": [[0.2, 0.2, 1.5, 0.4]]}),  # box off image
        json.dumps({"path": "imgs/missing.png", "caption": "gone"}),
        json.dumps({"path": "imgs/img2.png", "caption": "two", "defects": [[0.9, 0.0, 1.0, 1.0]]}),
    ]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    caplog.set_level(logging.WARNING, logger="data_pipelines")
    cfg = _cfg("jsonl", manifest, buckets="32x32", defects=dict(enabled=True, max_area=0.2))
    it = dp.make_train_iterator(cfg, global_batch_size=3, seed=0, process_index=0, process_count=1)
    batch = next(it)
    counters = it.counters()
    assert counters["scan_skipped_bad_manifest_line"] == 2
    assert counters["scan_skipped_missing_caption"] == 1
    assert counters["scan_skipped_unreadable_image"] == 1
    assert any("train.jsonl:2" in w for w in _warnings(caplog))
    assert batch["tags"].shape == (3, 2)  # vocabulary ('art', 'photo') from the manifest
    by_caption = {c: i for i, c in enumerate(detokenize(batch["tokens"]))}
    assert set(by_caption) == {"zero", "one", "two"}
    one, two = by_caption["one"], by_caption["two"]
    np.testing.assert_array_equal(batch["tags"][one], [1, 1])
    np.testing.assert_array_equal(batch["tags"][by_caption["zero"]], [0, 1])
    # img1 is 48x48 -> 32x32 with no crop: the box keeps its place; the mask is 0 inside it.
    assert batch["defect_kind"][one, 0] == 0
    np.testing.assert_allclose(batch["defect_box"][one, 0], [0.0, 0.0, 0.5, 0.25], atol=1e-6)
    assert batch["loss_mask"][one, :16, :8].max() == 0 and batch["loss_mask"][one, 16:, :].min() == 1
    assert batch["loss_mask"][one, :, 8:].min() == 1
    assert batch["defect_kind"][two, 0] == 3  # plain box -> 'other'
    # img2 is 56x48: cover-crop to 48x48 drops 4 rows top and bottom, so the box's y0 = 0.9 * 56 = 50.4
    # lands at (50.4 - 4) / 48 = 0.967 -> pixel row 30.9 of 32: rows 30 and 31 are masked.
    np.testing.assert_allclose(batch["defect_box"][two, 0], [(50.4 - 4) / 48, 0, 1, 1], atol=1e-5)
    assert np.all(batch["loss_mask"][two, 30:] == 0) and np.all(batch["loss_mask"][two, :30] == 1)


def test_source_without_valid_sample_fails_at_start_naming_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}: no valid sample"):
        dp.make_train_iterator(_cfg("folder", empty), global_batch_size=2, seed=0, process_index=0, process_count=1)
    broken = tmp_path / "broken"
    _good_folder(broken, n=2)
    for name in ("img0.png", "img1.png"):
        _truncate(broken / name)
    with pytest.raises(ValueError, match=f"{broken}: no valid sample"):
        dp.make_train_iterator(_cfg("folder", broken), global_batch_size=2, seed=0, process_index=0, process_count=1)
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("nope\n")
    with pytest.raises(ValueError, match=f"{manifest}: no valid sample"):
        dp.make_train_iterator(_cfg("jsonl", manifest), global_batch_size=2, seed=0, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="cannot read the shard header"):
        dp.make_train_iterator(_cfg("shards", tmp_path), global_batch_size=2, seed=0, process_index=0, process_count=1)


def test_prepare_writes_shards_that_read_back_like_the_folder(tmp_path):
    root = tmp_path / "imgs"
    _good_folder(root)
    (root / "junk.png").write_bytes(b"junk")
    (root / "junk.txt").write_text("junk")
    out = tmp_path / "shards"
    assert prepare.main(["--source=folder", f"--path={root}", f"--out={out}", "--num_shards=3"]) == 0
    meta = shards.read_metadata(str(out))
    assert meta["num_records"] == 6 and len(meta["shards"]) == 3
    assert meta["counts"]["skipped"] == {"unreadable_image": 1}
    cfg_f = _cfg("folder", root, buckets="32x32")
    cfg_s = _cfg("shards", out, buckets="32x32")
    a = dp.make_eval_batch(cfg_f, num=6, seed=0)
    b = dp.make_eval_batch(cfg_s, num=6, seed=0)
    ca, cb = detokenize(a["tokens"]), detokenize(b["tokens"])
    assert sorted(ca) == sorted(cb)
    for caption in ca:  # the same pixels for the same caption (PNG bytes are kept as they are)
        np.testing.assert_array_equal(a["image"][ca.index(caption)], b["image"][cb.index(caption)])
    assert prepare.main(["--source=folder", f"--path={root}", f"--out={out}", "--data.nope=1"]) == 2
    assert prepare.main(["--source=folder", f"--path={tmp_path / 'none'}", f"--out={out}"]) == 1


def test_prepare_digit_scenes_keeps_labels(tmp_path):
    out = tmp_path / "scenes"
    assert prepare.main(["--source=digit_scenes", f"--out={out}", "--num_shards=2", "--limit=12",
                         "--data.scenes.defect_fraction=1.0"]) == 0
    cfg = _cfg("shards", out, image_size=32)
    it = dp.make_train_iterator(cfg, global_batch_size=12, seed=0, process_index=0, process_count=1)
    batch = next(it)
    assert batch["image"].shape == (12, 32, 32, 3)
    assert np.all(batch["scene_count"] >= 1) and np.all(batch["defect_kind"][:, 0] >= 0)
    assert batch["tags"].shape[1] > 0


def _latent_shards(out, rows):
    writer = shards.ShardWriter(str(out), 2)
    for fields in rows:
        writer.write(fields, fields["latent"].shape[:2])
    writer.close({"kind": "latents", "source": "test", "channels": 3, "shapes": {"latent": [4, 4, 8]}})


def test_latent_shards_skip_wrong_shapes_nan_and_corrupt_records(tmp_path, caplog):
    rng = np.random.default_rng(0)
    good = [{"latent": rng.normal(size=(4, 4, 8)).astype(np.float32), "target_size": [32, 32], "caption": f"c{i}",
             "defect_box": [[0.0, 0.0, 0.5, 0.5]], "defect_kind": [1]} for i in range(6)]
    nan = dict(good[0], latent=np.full((4, 4, 8), np.nan, np.float32), caption="nan")
    wrong = dict(good[0], latent=np.zeros((4, 4, 5), np.float32), caption="wrong")
    _latent_shards(tmp_path, good + [nan, wrong])
    # Corrupt one record in place: the reader must skip it, not crash.
    from array_record.python.array_record_module import ArrayRecordWriter

    extra = tmp_path / "shard-00002-of-00002.array_record"
    w = ArrayRecordWriter(str(extra), "group_size:1")
    w.write(b"\x00garbage")
    w.close()
    meta = json.loads((tmp_path / "metadata.json").read_text())
    meta["shards"].append({"file": extra.name, "records": 1})
    meta["num_records"] += 1
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    np.save(tmp_path / "sizes.npy", np.concatenate([np.load(tmp_path / "sizes.npy"), [[4, 4]]]))

    caplog.set_level(logging.WARNING, logger="data_pipelines")
    cfg = _cfg("shards", tmp_path, defects=dict(enabled=True, max_area=0.3))
    it = dp.make_train_iterator(cfg, global_batch_size=6, seed=0, process_index=0, process_count=1)
    batches = [next(it) for _ in range(3)]
    counters = it.counters()
    assert counters["skipped_nan_values"] >= 2 and counters["skipped_wrong_shape"] >= 2
    assert counters["skipped_bad_record"] >= 2
    for batch in batches:
        assert batch["latent"].shape == (6, 4, 4, 8) and np.all(np.isfinite(batch["latent"]))
        assert "loss_mask" not in batch and batch["latent_loss_mask"].shape == (6, 4, 4)
        assert np.all(batch["latent_loss_mask"][:, :2, :2] == 0) and np.all(batch["latent_loss_mask"][:, 2:, :] == 1)
        np.testing.assert_array_equal(batch["target_size"], np.tile([32, 32], (6, 1)))
    warned = _warnings(caplog)
    assert any("shard-00002-of-00002.array_record#0" in w for w in warned)
    assert sum("wrong_shape" in w for w in warned) == 1


def test_record_codec_round_trips_and_rejects_garbage():
    fields = {"latent": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "caption": "a caption, ünïcode",
              "label": np.int32(7), "image_bytes": np.frombuffer(b"\x89PNG...", np.uint8), "empty": np.zeros((0, 4))}
    out = shards.decode_record(shards.encode_record(fields))
    assert out.keys() == fields.keys() and out["caption"] == fields["caption"]
    for key in ("latent", "label", "image_bytes", "empty"):
        np.testing.assert_array_equal(out[key], fields[key])
        assert out[key].dtype == np.asarray(fields[key]).dtype
    for bad in (b"", b"garbage", shards.encode_record(fields)[:-3]):
        with pytest.raises(ValueError):
            shards.decode_record(bad)
    with pytest.raises(ValueError, match="field 'names'"):
        shards.encode_record({"names": np.array(["a", "b"])})


class _PoolCodec:
    """A stand-in VAE: f x f average pooling and a fixed channel mix (what prepare needs of a codec)."""

    downsample_factor, latent_channels, scaling_factor, shift_factor = 4, 5, 1.0, 0.0
    mix = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)

    def encode(self, images):
        n, h, w, c = images.shape
        pooled = images.reshape(n, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4))
        return (pooled @ self.mix).astype(np.float32)


def test_prepare_latents_with_a_vae_reads_back_with_latent_masks(tmp_path):
    cfg = dp.default_config()
    cfg.source, cfg.image_size = "digit_scenes", 32
    cfg.scenes.update(dict(num_samples=40, defect_fraction=0.5))
    source = pipeline.open_source("digit_scenes", "", cfg, split="train", seed=0)
    header = prepare.write_latents(source, str(tmp_path), _PoolCodec(), cfg, num_shards=2, batch_size=16)
    assert header["num_records"] == 40 and header["shapes"]["latent"] == [-1, -1, 5]
    read = _cfg("shards", tmp_path, defects=dict(enabled=True, max_area=1.0))
    batch = next(dp.make_train_iterator(read, global_batch_size=40, seed=0, process_index=0, process_count=1))
    assert batch["latent"].shape == (40, 8, 8, 5) and "image" not in batch
    assert np.all(batch["target_size"] == [32, 32])
    # Each latent is the codec's encoding of its scene (found by caption), and the loss mask on the
    # 8x8 latent grid covers the scene's stamps.
    captions = detokenize(batch["tokens"])
    for i in range(40):
        s = scenes.make_scene(i, scene_source.scene_config(cfg), 0)
        j = next(k for k in range(40) if np.array_equal(batch["scene_box"][k], s["scene_box"]))
        assert s["caption"].startswith(captions[j])  # (captions longer than max_text_len are cut)
        expected = _PoolCodec().encode(s["image"][None].astype(np.float32) / 127.5 - 1.0)[0]
        np.testing.assert_allclose(batch["latent"][j], expected, rtol=1e-5, atol=1e-5)
        boxes = defects.valid_boxes(s["defect_box"], s["defect_kind"])
        np.testing.assert_array_equal(batch["latent_loss_mask"][j], defects.box_mask(boxes, 8, 8))


def test_eval_batch_of_a_small_folder_repeats_or_with_allow_fewer_takes_each_image_once(tmp_path):
    root = tmp_path / "few"
    _good_folder(root, n=4)
    cfg = _cfg("folder", root, image_size=32)
    repeated = dp.make_eval_batch(cfg, num=6, seed=0)  # a second pass fills the batch
    assert len(repeated["image"]) == 6
    once = dp.make_eval_batch(cfg, num=256, seed=0, allow_fewer=True)
    assert len(once["image"]) == 4
    assert len({float(img[0, 0, 0]) for img in once["image"]}) == 4  # four distinct images
    with pytest.raises(ValueError, match="only 8 valid samples"):
        dp.make_eval_batch(cfg, num=256, seed=0)
