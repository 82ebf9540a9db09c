"""Video data: moving-digit captions against what a tracker sees, held-out prompts, the clip batch
contract through make_train_iterator (exact resume, bucket mix), video folders decoded with PyAV
(buckets, resampling, skip counts), and prepare -> video latent shards -> batches."""

import json
import os
import re

import numpy as np
import pytest

import data_pipelines
from data_pipelines.core import clips, samples
from data_pipelines.sources import glyphs
from data_pipelines.sources import moving_digits as md

CAPTION = re.compile(r"^a (small|large) (\w+) (\d)(?: moving (\w+)(?:, then turning (\w+))?)?$")


def parse(caption: str) -> list[tuple]:
    """(size, color, digit, direction, turn) per shot, read from the caption text alone."""
    parts = caption.split("; ")
    if len(parts) > 1:
        assert all(p.startswith(f"shot {i + 1}: ") for i, p in enumerate(parts)), caption
        parts = [p.split(": ", 1)[1] for p in parts]
    return [CAPTION.match(p).groups() for p in parts]


def centroid(frame: np.ndarray) -> np.ndarray:
    weight = frame.sum(-1)
    rows, cols = np.indices(weight.shape)
    return np.array([(rows * weight).sum(), (cols * weight).sum()]) / weight.sum()


def direction_seen(video: np.ndarray, first: int, last: int) -> str:
    """The direction the digit's centroid moved from frame `first` to `last` (axis-aligned motion)."""
    d_row, d_col = centroid(video[last]) - centroid(video[first])
    if abs(d_row) < 1e-4 and abs(d_col) >= 0.9:
        return "left" if d_col < 0 else "right"
    if abs(d_col) < 1e-4 and abs(d_row) >= 0.9:
        return "up" if d_row < 0 else "down"
    return f"unclear ({d_row:.2f}, {d_col:.2f})"


def brightest_color(frame: np.ndarray) -> str:
    pixel = frame.reshape(-1, 3)[frame.sum(-1).argmax()] * 255
    return md.PALETTE_NAMES[int(np.abs(md.PALETTE_RGB.astype(float) - pixel).sum(1).argmin())]


def check_clip(raw: dict, frames: int):
    """Caption, labels and pixels tell the same story, shot by shot and segment by segment."""
    video, frame_shot = raw["video"], np.asarray(raw["frame_shot"])
    shots = parse(raw["caption"])
    assert [parse(c)[0] for c in raw["shot_captions"]] == shots
    assert len(frame_shot) == frames and list(np.unique(frame_shot)) == list(range(len(shots)))
    for s, (_, color, digit, direction, turn) in enumerate(shots):
        where = np.flatnonzero(frame_shot == s)
        first, last = int(where[0]), int(where[-1])
        assert np.array_equal(where, np.arange(first, last + 1))  # shots are contiguous
        assert int(digit) == raw["shot_digit"][s] and color == md.PALETTE_NAMES[raw["shot_color"][s]]
        assert all(brightest_color(video[f]) == color for f in where)
        motion = [md.DIRECTIONS[m] if m >= 0 else None for m in raw["shot_motion"][s]]
        assert motion == [direction, turn]
        if direction is None:
            continue
        corner = int(raw["shot_turn_frame"][s]) if turn else last
        assert (turn is None) == (raw["shot_turn_frame"][s] == -1) and first < corner <= last
        assert direction_seen(video, first, corner) == direction
        if turn:
            assert direction_seen(video, corner, last) == turn


def test_caption_labels_and_pixels_agree():
    cfg = md.ClipConfig(multishot_prob=0.5, max_shots=3, turn_prob=0.6)
    rng = np.random.default_rng(0)
    seen_turn = seen_multishot = 0
    for _ in range(24):
        raw = md.train_clip(rng, 12, 32, cfg)
        check_clip(raw, 12)
        seen_turn += int((raw["shot_turn_frame"] >= 0).any())
        seen_multishot += int(len(raw["shot_captions"]) > 1)
    assert seen_turn >= 4 and seen_multishot >= 4
    still = md.train_clip(rng, 1, 32, cfg)
    assert parse(still["caption"])[0][3] is None and still["shot_motion"].tolist() == [[-1, -1]]
    check_clip(still, 1)
    for i in range(6):  # the held-out prompts obey the same rules
        check_clip(md.held_out_clip(i, 12, 32, seed=3, multishot=i % 2 == 1), 12)


def test_held_out_triples_never_train_and_are_what_eval_prompts_use():
    expected = {(d, c, m) for d in range(10) for c in range(7) for m in range(4) if (d + c + m) % 7 == 0}
    assert set(md.HELD_OUT) == expected and len(expected) == 40
    cfg = md.ClipConfig(multishot_prob=0.5, turn_prob=0.5)
    rng = np.random.default_rng(1)
    for _ in range(300):
        for _, color, digit, direction, turn in parse(md.train_clip(rng, 9, 8, cfg)["caption"]):
            for d in (direction, turn):
                if d is not None:
                    triple = (int(digit), md.PALETTE_NAMES.index(color), md.DIRECTIONS.index(d))
                    assert triple not in expected, triple
    batch = md.prompt_set(8, 9, 16, seed=0, multishot=True)
    assert len(batch["captions"]) == 8
    for caption in batch["captions"]:
        for _, color, digit, direction, _ in parse(caption):
            assert (int(digit), md.PALETTE_NAMES.index(color), md.DIRECTIONS.index(direction)) in expected
    again = md.prompt_set(8, 9, 16, seed=0, multishot=True)
    for key in batch:
        np.testing.assert_array_equal(batch[key], again[key])


def test_eval_prompts_draw_test_split_glyphs():
    """The sprite of a held-out still is a test-split glyph of its digit, and no train-split glyph."""
    raw = md.held_out_clip(0, 1, 32, seed=0)
    frame, digit = raw["video"][0].max(-1), int(raw["shot_digit"][0])
    side = md.glyph_size(md.Shot(digit, 0, 0, 0), 32)  # held-out clip 0 is size class 0
    color = md.PALETTE_RGB[raw["shot_color"][0]].max() / 255.0

    def matches(split):
        images, labels = glyphs.load_digits(split)
        sprites = glyphs.upsample(images[labels == digit], side) * color
        return any(np.abs(frame[r:r + side, c:c + side] - sprite).max() < 1e-5
                   for sprite in sprites for r in range(33 - side) for c in range(33 - side)
                   if np.abs(frame[r:r + side, c:c + side].sum() - sprite.sum()) < 1e-3)

    assert matches("test") and not matches("train")


def video_config(source="moving_digits", path="", **video):
    cfg = data_pipelines.default_config()
    cfg.source, cfg.path, cfg.max_text_len, cfg.read_buffer = source, path, 80, 0
    cfg.video.update(video)
    return cfg


def take(it, n):
    return [next(it) for _ in range(n)]


def test_batch_contract_and_exact_resume():
    cfg = video_config(buckets="1x16x16,5x16x16", multishot_prob=0.5, max_shots=2, num_samples=64)
    it = data_pipelines.make_train_iterator(cfg, global_batch_size=4, seed=0, process_index=0, process_count=1)
    batches = take(it, 3)
    state = it.get_state()
    rest = take(it, 3)
    dtypes = {"tokens": np.int32, "text_mask": bool, "shot_tokens": np.int32, "shot_mask": bool, "frame_shot": np.int32,
              "shot_digit": np.int32, "shot_color": np.int32, "shot_motion": np.int32, "shot_turn_frame": np.int32,
              "video": np.float32}
    for b in batches + rest:
        assert {k: v.dtype for k, v in b.items()} == dtypes
        n, f = b["video"].shape[:2]
        assert b["video"].shape == (4, f, 16, 16, 3) and f in (1, 5) and -1 <= b["video"].min() < b["video"].max() <= 1
        assert b["tokens"].shape == (4, 80) and b["shot_tokens"].shape == b["shot_mask"].shape == (4, 2, 80)
        assert b["frame_shot"].shape == (4, f) and b["shot_motion"].shape == (4, 2, 2)
        used = b["shot_mask"].any(-1)  # shots in use: the first ones, exactly those frame_shot names
        for row in range(4):
            shots = int(used[row].sum())
            assert used[row, :shots].all() and set(b["frame_shot"][row]) == set(range(shots))
            assert (b["shot_digit"][row, shots:] == -1).all() and (b["shot_digit"][row, :shots] >= 0).all()
            if shots == 1:  # a single shot's caption is the whole caption
                np.testing.assert_array_equal(b["shot_tokens"][row, 0], b["tokens"][row])
        if f == 1:
            assert (b["shot_motion"] == -1).all()
    resumed = data_pipelines.make_train_iterator(cfg, global_batch_size=4, seed=0, process_index=0, process_count=1)
    resumed.set_state(json.loads(json.dumps(state)))
    for a, b in zip(rest, take(resumed, 3)):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # The VAE stage reads batch['video']; data.channels=1 gives grayscale clips.
    gray = video_config(buckets="5x16x16")
    gray.channels = 1
    assert data_pipelines.make_eval_batch(gray, num=2, seed=0)["video"].shape == (2, 5, 16, 16, 1)


def test_bucket_weights_set_the_t2i_video_mix():
    cfg = video_config(buckets="1x8x8,3x8x8", bucket_weights="0.25,0.75", num_samples=512)
    it = data_pipelines.make_train_iterator(cfg, global_batch_size=1, seed=0, process_index=0, process_count=1)
    stills = sum(next(it)["video"].shape[1] == 1 for _ in range(400))
    assert abs(stills / 400 - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 400)  # within 4 sigma of the binomial
    with pytest.raises(ValueError, match="one weight >= 0 per bucket"):
        clips.bucket_weights(video_config(buckets="1x8x8,3x8x8", bucket_weights="1"))


def test_latent_frame_shot_table():
    # Latent frame 0 = pixel frame 0; latent frame j >= 1 takes the shot of pixel frame 4j.
    assert clips.latent_frame_shot(np.array([0, 0, 0, 1, 1, 1, 1, 2, 2]), 4).tolist() == [0, 1, 2]
    assert clips.latent_frame_shot(np.array([0, 0, 0, 0, 0, 1, 1, 1, 1]), 4).tolist() == [0, 0, 1]
    assert clips.latent_frame_shot(np.array([0, 1, 1, 1, 1]), 2).tolist() == [0, 1, 1]
    assert clips.latent_bucket((17, 64, 32), 4, 16) == (5, 4, 2)


# --------------------------------------------------------------------------- video folders


def write_video(path, frames, rate, size, codec=None):
    """Frame i is a flat image of red level 20 * i (so a decoded frame tells which it is)."""
    import av

    codec = codec or ("gif" if path.endswith(".gif") else "mpeg4")
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = size
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        for i in range(frames):
            image = np.zeros((*size, 3), np.uint8)
            image[..., 0] = 20 * i
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")

    def caption(name, text):
        (root / name).write_text(text)

    write_video(str(root / "wide.mp4"), 12, 10, (24, 40))
    caption("wide.txt", "a wide red fade")
    write_video(str(root / "square.gif"), 10, 10, (32, 32))
    caption("square.txt", "a square fade")
    write_video(str(root / "short.mp4"), 2, 10, (32, 32))
    caption("short.txt", "too short")
    (root / "broken.mp4").write_bytes(os.urandom(2000))
    caption("broken.txt", "not a video")
    write_video(str(root / "nocaption.gif"), 10, 10, (32, 32))
    manifest = root / "shots.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"path": "wide.mp4", "shots": [{"caption": "a dark frame", "start": 0.0, "end": 0.45},
                                                  {"caption": "a red frame", "start": 0.45, "end": 1.2}]}),
        json.dumps({"path": "square.gif", "caption": "a square fade"}),
        "{not json",
        json.dumps({"path": "short.mp4", "shots": [{"caption": "late", "start": 1.0, "end": 0.5}]}),
    ]) + "\n")
    return root


def source_frames(video: np.ndarray) -> list[int]:
    """Which source frame each decoded frame is (red level / 20; mpeg4 and gif are near-lossless on flat frames)."""
    return [int(round(float(np.median(frame[..., 0])) / 20)) for frame in video]


def test_video_folder_decode_buckets_and_skip_counts(video_dir):
    from data_pipelines.sources.videos import VideoFolderSource

    cfg = video_config(buckets="5x16x24,5x16x16,1x16x16", fps=8.0)
    source = VideoFolderSource(str(video_dir), cfg, seed=0)
    assert {k: n for k, (n, _) in source.scan_skips.items()} == {
        "missing_caption": 1, "unreadable_video": 1, "too_short_video": 1}
    names = [os.path.basename(e["path"]) for e in source.entries]
    assert names == ["square.gif", "wide.mp4"]
    # 10 and 12 frames at 10 fps last 1.0 and 1.2 s: 8 and 10 frames at 8 fps.
    assert source.sizes().tolist() == [[8, 32, 32], [10, 24, 40]]
    # Per frame count, the spatial rule of image buckets; the one still bucket takes every video.
    members = clips.members(source.sizes(), clips.video_buckets(cfg), fixed=False)
    assert {b: m.tolist() for b, m in members.items()} == {(5, 16, 24): [1], (5, 16, 16): [0], (1, 16, 16): [0, 1]}
    for position in range(3):  # clip frame k shows the source frame on screen at (start + k) / 8 s
        shown = source_frames(source.load(1, position, (5, 16, 24))["video"])
        start = next(s for s in range(6) if shown[0] == (s * 10) // 8)
        assert shown == [((start + k) * 10) // 8 for k in range(5)]

    it = data_pipelines.make_train_iterator(
        video_config("video_folder", str(video_dir), buckets="5x16x24,5x16x16", fps=8.0),
        global_batch_size=2, seed=0, process_index=0, process_count=1)
    batch = next(it)
    assert batch["video"].shape[:2] == (2, 5) and batch["video"].shape[2:] in ((16, 24, 3), (16, 16, 3))
    counters = it.counters()
    assert counters["scan_skipped_unreadable_video"] == 1 and counters["scan_skipped_too_short_video"] == 1


def test_video_manifest_shots_and_cuts(video_dir):
    from data_pipelines.sources.videos import VideoManifestSource

    cfg = video_config(buckets="5x16x24", fps=8.0)
    source = VideoManifestSource(str(video_dir / "shots.jsonl"), cfg)
    assert {k: n for k, (n, _) in source.scan_skips.items()} == {"bad_manifest_line": 2}
    raw = source.load(0, 0, (5, 16, 24))
    # Frames at 0, .125, .25, .375, .5 s; the second shot starts at .45 s.
    assert raw["frame_shot"].tolist() == [0, 0, 0, 0, 1]
    assert raw["caption"] == "shot 1: a dark frame; shot 2: a red frame"
    layout = samples.Layout(channels=3, max_text_len=64, video=True, max_shots=3)
    row = clips.finalize_clip(raw, (5, 16, 24), layout, "x")
    assert row["shot_mask"].any(-1).tolist() == [True, True, False]


# --------------------------------------------------------------------------- prepare -> video latent shards


def tiny_video_vae_workdir(path) -> str:
    """A random-init tiny video VAE stage workdir (config.json + a checkpoint holding its parameters)."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    from seedjax import config as config_lib
    from seedjax.models.codec import build_vae
    from seedjax.schema.stages import vae_config

    cfg = config_lib.base_config(stage="vae")
    cfg.vae = vae_config("video", "t4s8c8", base_channels=8, channel_mult=(1, 1, 1, 1), norm_groups=4,
                         layers_per_block=1, latent_channels=4, mid_attention=False, scaling_factor=0.7)
    cfg.data = data_pipelines.default_config()
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config_lib.to_json(cfg))
    vae = build_vae(cfg.vae, nnx.Rngs(jax.random.key(0, impl="rbg")))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(os.path.abspath(path), "checkpoints", "1", "state"),
                      {"vae": nnx.to_pure_dict(nnx.state(vae))})
    checkpointer.wait_until_finished()
    return str(path)


def test_prepare_video_latents_then_train_batches(tmp_path):
    from data_pipelines.cli import prepare
    from seedjax.train.params import load_codec
    from data_pipelines.sources.moving_digit_source import MovingDigitsSource

    vae = tiny_video_vae_workdir(tmp_path / "vae")
    out = str(tmp_path / "latents")
    flags = ["--data.video.buckets=9x16x16", "--data.video.multishot_prob=1.0", "--data.max_text_len=96"]
    assert prepare.main(["--source=moving_digits", f"--out={out}", f"--vae={vae}", "--limit=4", "--num_shards=2",
                         *flags]) == 0
    with open(os.path.join(out, "metadata.json")) as f:
        header = json.load(f)
    assert header["video"] and header["vae"]["temporal_factor"] == 4 and header["vae"]["spatial_factor"] == 8
    assert header["counts"]["written"] == 4 and header["shapes"]["latent"] == [-1, -1, -1, 4]

    cfg = video_config("shards", out, buckets="9x16x16", multishot_prob=1.0)
    cfg.max_text_len = 96
    it = data_pipelines.make_train_iterator(cfg, global_batch_size=4, seed=0, process_index=0, process_count=1)
    batch = next(it)
    assert batch["latent"].shape == (4, 3, 2, 2, 4) and "video" not in batch
    assert batch["shot_tokens"].shape == (4, 3, 96) and batch["frame_shot"].shape == (4, 3)

    # Each record is its clip: captions, per-latent-frame shots (hand rule) and the encoded latent.
    source = MovingDigitsSource(cfg, split="train", seed=0)
    raws = [source.load(i, i, (9, 16, 16)) for i in range(4)]
    codec = load_codec(vae)
    expected = codec.encode(np.stack([clips.fit_clip(r["video"], (16, 16), 3) for r in raws]))
    from data_pipelines.core.shards import ShardSource

    shards = ShardSource(out, max_text_len=96)
    by_caption = {r["caption"]: (i, r) for i, r in enumerate(raws)}
    for k in range(4):
        record = shards.load(k, 0)
        i, raw = by_caption[record["caption"]]
        assert record["shot_captions"] == raw["shot_captions"]
        assert record["frame_shot"].tolist() == [raw["frame_shot"][0], raw["frame_shot"][4], raw["frame_shot"][8]]
        np.testing.assert_allclose(record["latent"], expected[i], atol=1e-5)
