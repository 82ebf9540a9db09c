"""Real-world degradations (data_pipelines/techniques/degradations.py) against independent references."""

import io

import grain
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import data_pipelines
from data_pipelines.core import mixtures
from data_pipelines.core import streams as streams_lib
from data_pipelines.sources.moving_digit_source import MovingDigitsSource
from data_pipelines.techniques import degradations as dg

EVERYTHING = dg.DegradationConfig(blur_prob=1, downscale_prob=1, noise_prob=1, jpeg_prob=1, video_prob=1,
                                  second_order_prob=1)


def noise_image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def smooth_clip(frames=4, size=32, channels=3):
    """A mid-grey smooth texture panning right: little clipping, realistic for a codec."""
    tex = ndimage.gaussian_filter(np.random.default_rng(0).normal(0, 1, (size + 16, size + 16)), 1.5)
    tex = (tex - tex.mean()) / tex.std()
    clip = np.stack([np.roll(tex, 2 * i, axis=1)[:size, :size] for i in range(frames)])
    return np.clip(128 + 50 * clip, 0, 255).astype(np.uint8)[..., None].repeat(channels, -1)


def high_frequency_energy(x, cutoff=0.25):
    """Spectral energy above `cutoff` cycles/pixel (radially) of every frame and channel, summed."""
    x = x.astype(np.float64)
    x = x - x.mean(axis=(-3, -2), keepdims=True)
    power = np.abs(np.fft.fft2(x, axes=(-3, -2))) ** 2
    fy = np.fft.fftfreq(x.shape[-3])[:, None]
    fx = np.fft.fftfreq(x.shape[-2])[None, :]
    high = np.sqrt(fy**2 + fx**2) > cutoff
    return float(power[..., high, :].sum())


def psnr(a, b):
    return 10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2))


def codecs():
    return [c for c in dg.DECODERS if dg._has_encoder(c)]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_pairs_other_seed_different():
    clip = smooth_clip()
    a, pa = dg.degrade(clip, EVERYTHING, np.random.default_rng(5))
    b, pb = dg.degrade(clip, EVERYTHING, np.random.default_rng(5))
    c, pc = dg.degrade(clip, EVERYTHING, np.random.default_rng(6))
    assert pa == pb and pa != pc
    np.testing.assert_array_equal(a, b)
    assert a.shape == clip.shape and a.dtype == np.uint8 and not np.array_equal(a, c)
    assert [p["kind"] for p in pa] == list(dg.KINDS) * 2 and {p["pass"] for p in pa} == {1, 2}
    np.testing.assert_array_equal(dg.apply(clip, pa), a)  # the parameters alone reproduce the pair


def test_stream_pairs_are_deterministic_through_grain():
    cfg = data_pipelines.default_config()
    cfg.source, cfg.max_text_len = "moving_digits", 32
    cfg.video.update(buckets="4x32x32", num_samples=4)
    source = MovingDigitsSource(cfg, split="train", seed=0)
    layout = mixtures.layout_for({"m": source}, cfg)
    bucket = (4, 32, 32)

    def rows(seed):
        stream = streams_lib.make_stream(source, np.arange(len(source)), None, bucket, layout, seed=0, name="m/b")
        pairs = stream.random_map(dg.DegradePairs(EVERYTHING), seed=seed)
        return [pairs[i] for i in range(3)], [stream[i] for i in range(3)]

    first, clean = rows(seed=1)
    again, _ = rows(seed=1)
    other, _ = rows(seed=2)
    for row, twin, alt, plain in zip(first, again, other, clean):
        np.testing.assert_array_equal(row["degraded_video"], twin["degraded_video"])
        np.testing.assert_array_equal(row["video"], plain["video"])  # the clean clip is kept as it was
        assert row["degraded_video"].shape == row["video"].shape and row["degraded_video"].dtype == np.float32
        assert -1 <= row["degraded_video"].min() and row["degraded_video"].max() <= 1
        assert not np.array_equal(row["degraded_video"], alt["degraded_video"])
        assert set(row) == set(plain) | {"degraded_video"}


def test_image_rows_uint8_and_skipped_rows():
    images = [{"image": noise_image((16, 16, 3), seed=i)} for i in range(3)] + [{"_skip": "nan_values"}]
    ds = grain.MapDataset.source(images).random_map(dg.DegradePairs(EVERYTHING), seed=0)
    assert list(ds[3]) == ["_skip"]
    out = [ds[i] for i in range(3)]
    assert all(r["degraded_image"].dtype == np.uint8 and r["degraded_image"].shape == (16, 16, 3) for r in out)
    np.testing.assert_array_equal(out[0]["image"], images[0]["image"])
    np.testing.assert_array_equal(list(ds.to_iter_dataset())[1]["degraded_image"], out[1]["degraded_image"])


# ----------------------------------------------------------------------------- each kind


@pytest.mark.parametrize("sigma", [0.7, 1.6])
def test_blur_matches_scipy_and_removes_high_frequencies(sigma):
    image = noise_image((32, 32, 3))
    clip = noise_image((3, 20, 24, 1), seed=1)
    for x, sigmas in ((image, (sigma, sigma, 0)), (clip, (0, sigma, sigma, 0))):
        ref = ndimage.gaussian_filter(x.astype(np.float64), sigmas, mode="reflect", truncate=4.0)
        np.testing.assert_array_equal(dg.gaussian_blur(x, sigma), np.clip(np.rint(ref), 0, 255).astype(np.uint8))
    assert high_frequency_energy(dg.gaussian_blur(image, sigma)) < 0.3 * high_frequency_energy(image)


def test_downscale_keeps_size_and_removes_high_frequencies():
    image = noise_image((32, 32, 3))
    for mode in dg.RESAMPLING:
        out = dg.downscale(image, 4.0, mode)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert high_frequency_energy(out) < 0.05 * high_frequency_energy(image)
    clip = noise_image((2, 30, 20, 1))
    assert dg.downscale(clip, 2.5).shape == clip.shape
    np.testing.assert_array_equal(dg.downscale(image, 1.0), image)


def test_noise_has_the_configured_std():
    grey = np.full((64, 64, 3), 128, np.uint8)
    color = dg.gaussian_noise(grey, 8.0, seed=3).astype(np.float64) - 128
    assert abs(color.std() / 8.0 - 1) < 0.03 and abs(color.mean()) < 0.3
    assert not np.array_equal(color[..., 0], color[..., 1])
    gray = dg.gaussian_noise(grey, 8.0, seed=3, gray=True).astype(np.float64) - 128
    assert abs(gray.std() / 8.0 - 1) < 0.05
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # one field shared by the channels


@pytest.mark.parametrize("quality", [10, 50, 90])
def test_jpeg_equals_pillows_own_codec(quality):
    def pillow(frame):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        return np.asarray(Image.open(buf))

    image = smooth_clip(1)[0]
    out = dg.jpeg(image, quality)
    np.testing.assert_array_equal(out, pillow(image))
    assert not np.array_equal(out, image)
    clip = noise_image((2, 16, 16, 3))
    np.testing.assert_array_equal(dg.jpeg(clip, quality), np.stack([pillow(f) for f in clip]))


@pytest.mark.parametrize("codec", codecs())
def test_video_compression_lower_bitrate_lower_psnr(codec):
    clip = smooth_clip()
    low, high = dg.video_compress(clip, codec, 0.05), dg.video_compress(clip, codec, 1.0)
    assert low.shape == clip.shape and low.dtype == np.uint8
    assert np.isfinite(psnr(low, clip)) and psnr(low, clip) < psnr(high, clip) - 1
    odd_gray = smooth_clip(3, 17, 1)
    assert dg.video_compress(odd_gray, codec, 0.3).shape == odd_gray.shape


def test_missing_codec_is_a_clear_error(monkeypatch):
    import av

    def no_codec(*args):
        raise ValueError("no such codec")

    monkeypatch.setattr(av.codec, "Codec", no_codec)
    with pytest.raises(ValueError, match=r"^degradations\.video_codecs: .*no 'libx264' encoder"):
        dg.video_compress(smooth_clip(), "libx264", 0.1)


def test_images_skip_video_compression():
    only_video = dg.DegradationConfig(order=("video",), video_prob=1)
    assert dg.sample_params(only_video, np.random.default_rng(0), video=False) == []
    assert [p["kind"] for p in dg.sample_params(only_video, np.random.default_rng(0), video=True)] == ["video"]
    with pytest.raises(ValueError, match="needs a clip"):
        dg.apply(smooth_clip(1)[0], [{"kind": "video", "codec": "mpeg4", "bits_per_pixel": 0.1}])


def test_every_frame_of_a_clip_gets_the_same_mixture():
    frame = smooth_clip(1)[0]
    still = np.stack([frame] * 4)  # the same frame four times
    cfg = dg.DegradationConfig(blur_prob=1, downscale_prob=1, jpeg_prob=1, noise_prob=0, video_prob=0)
    out, params = dg.degrade(still, cfg, np.random.default_rng(0))
    assert [p["kind"] for p in params] == ["blur", "downscale", "jpeg"]
    for f in out:
        np.testing.assert_array_equal(f, dg.apply(frame, params))
    noisy = dg.DegradationConfig(noise_prob=1, blur_prob=0, downscale_prob=0, jpeg_prob=0, video_prob=0,
                                 noise_sigma=(6, 6), noise_gray_prob=0)
    grey = np.full((4, 32, 32, 3), 128, np.uint8)
    out, _ = dg.degrade(grey, noisy, np.random.default_rng(0))
    residual = out.astype(np.float64) - 128
    assert all(abs(r.std() / 6 - 1) < 0.06 for r in residual)  # one sigma for the clip ...
    assert not np.array_equal(residual[0], residual[1])  # ... and fresh noise in every frame


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("key, value", [
    ("blur_sigma", (-1.0, 2.0)),
    ("noise_sigma", (-0.5, 3.0)),
    ("jpeg_quality", (0, 50)),
    ("jpeg_quality", (50, 101)),
    ("jpeg_quality", (40.5, 60)),
    ("blur_prob", 1.5),
    ("second_order_prob", -0.1),
    ("downscale_factor", (0.5, 2.0)),
    ("order", ("blur", "sharpen")),
    ("downscale_modes", ("lanczos",)),
    ("video_codecs", ("hevc",)),
    ("noise_sigma", 3.0),
    ("blur_prob", "often"),
    ("sharpen_prob", 0.5),
])
def test_bad_config_is_a_one_line_error_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"^degradations\.{key}: ") as err:
        dg.DegradationConfig.of({key: value})
    assert "\n" not in str(err.value)


def test_config_from_ml_collections():
    import ml_collections

    cfg = dg.DegradationConfig.of(ml_collections.ConfigDict({"order": ["noise", "blur"], "jpeg_quality": [20, 40]}))
    assert cfg.order == ("noise", "blur") and cfg.jpeg_quality == (20, 40)
