"""Real-world-style degradations: (degraded, clean) pairs for one-step restoration (SeedVR2).

A restoration model learns to undo what cameras, resizing and re-encoding do to images and
videos, so its training pairs are a clean sample and a copy degraded the way real footage is.
Following Real-ESRGAN's "high-order" pipeline, a pass applies, in a fixed order and each with
its own probability: gaussian blur -> downscale (and back up to the input size) -> gaussian
noise -> JPEG -> video compression (PyAV, videos only); an optional second pass repeats the
chain with freshly drawn parameters. The parameters are drawn once per clip and used for every
frame ("random per-clip mixtures"), as a clip from one camera and one encoder shares them.

Convention: the kernels work on uint8 arrays [..., H, W, C] (an image [H, W, C] or a clip
[F, H, W, C], C = 1 or 3) and return uint8 arrays of the same shape, rounding after every
kind, as a real chain of programs would save 8-bit pictures between steps. `DegradePairs`
converts at the boundary: rows of the batch contract (float in [-1, 1]) stay float in [-1, 1].

    params = sample_params(config, rng, video=True)   # [{'kind': 'blur', 'pass': 1, 'sigma': 1.3}, ...]
    degraded = apply(clip, params)                     # deterministic given params (noise carries its seed)
    ds = stream.random_map(DegradePairs(config), seed=seed)   # adds `degraded_video` (or `degraded_image`)

Grain's `random_map` seeds each element's rng from (seed, index), so a pair depends on the seed
and the stream position alone: the same on every run, resume and worker count.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from fractions import Fraction

import numpy as np

KINDS = ("blur", "downscale", "noise", "jpeg", "video")
RESAMPLING = ("area", "bilinear", "bicubic")
DECODERS = {"libx264": "h264", "mpeg4": "mpeg4"}  # encoder -> decoder of its bitstream
BLUR_TRUNCATE = 4.0  # kernel radius in sigmas (scipy.ndimage's default)
VIDEO_FPS = 24  # the rate a clip is encoded at: with bits per pixel it sets the bitrate


@dataclasses.dataclass(frozen=True)
class DegradationConfig:
    """Per-kind probabilities and (low, high) ranges; every draw is uniform in its range
    (the video bitrate log-uniform). Values are in uint8 units (noise sigma out of 255)."""

    order: tuple[str, ...] = KINDS  # the kinds a pass may apply, in this order
    blur_prob: float = 0.7
    blur_sigma: tuple[float, float] = (0.2, 2.0)  # pixels
    downscale_prob: float = 0.7
    downscale_factor: tuple[float, float] = (1.0, 4.0)
    downscale_modes: tuple[str, ...] = RESAMPLING  # down with one of these, back up bicubic
    noise_prob: float = 0.7
    noise_sigma: tuple[float, float] = (1.0, 15.0)
    noise_gray_prob: float = 0.4  # one noise field for all channels (luma noise) instead of per channel
    jpeg_prob: float = 0.7
    jpeg_quality: tuple[int, int] = (30, 95)
    video_prob: float = 0.5  # images skip this kind
    video_bits_per_pixel: tuple[float, float] = (0.02, 0.3)  # per frame: bitrate = bpp * H * W * VIDEO_FPS
    video_codecs: tuple[str, ...] = ("libx264", "mpeg4")
    second_order_prob: float = 0.0  # a second pass of the whole chain

    def __post_init__(self):
        for f in dataclasses.fields(self):  # normalise what ml_collections / YAML hand over (lists, ints)
            value = getattr(self, f.name)
            try:
                if f.name in ("order", "downscale_modes", "video_codecs"):
                    value = (value,) if isinstance(value, str) else tuple(str(v) for v in value)
                elif f.name.endswith("_prob"):
                    value = float(value)
                else:
                    value = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"degradations.{f.name}: {value!r} is not {_SHAPES[f.type]}") from None
            object.__setattr__(self, f.name, value)
        _validate(self)
        object.__setattr__(self, "jpeg_quality", tuple(int(q) for q in self.jpeg_quality))

    @classmethod
    def of(cls, mapping) -> DegradationConfig:
        """From a dict or ml_collections.ConfigDict of some of the fields (unknown keys are errors)."""
        mapping = dict(mapping)
        fields = [f.name for f in dataclasses.fields(cls)]
        for key in mapping:
            if key not in fields:
                raise ValueError(f"degradations.{key}: unknown key; use one of {', '.join(fields)}")
        return cls(**mapping)


_SHAPES = {"float": "a number", "tuple[str, ...]": "a list of names", "tuple[float, float]": "a (low, high) pair",
           "tuple[int, int]": "a (low, high) pair"}


def _validate(c: DegradationConfig) -> None:
    def bad(key, why):
        raise ValueError(f"degradations.{key}: {why}")

    for kind in c.order:
        if kind not in KINDS:
            bad("order", f"unknown kind {kind!r}; use some of {', '.join(KINDS)}")
    if len(set(c.order)) != len(c.order):
        bad("order", f"a kind is listed twice in {c.order}")
    for key in ("blur_prob", "downscale_prob", "noise_prob", "noise_gray_prob", "jpeg_prob", "video_prob",
                "second_order_prob"):
        if not 0.0 <= getattr(c, key) <= 1.0:
            bad(key, f"{getattr(c, key)} is not a probability in [0, 1]")
    limits = {"blur_sigma": (0.0, np.inf), "downscale_factor": (1.0, np.inf), "noise_sigma": (0.0, np.inf),
              "jpeg_quality": (1.0, 100.0), "video_bits_per_pixel": (1e-9, np.inf)}
    for key, (lo, hi) in limits.items():
        value = getattr(c, key)
        if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
            bad(key, f"{value} is not a (low, high) pair with {lo:g} <= low <= high <= {hi:g}")
    if c.jpeg_quality != tuple(round(q) for q in c.jpeg_quality):
        bad("jpeg_quality", f"{c.jpeg_quality} are not whole numbers")
    for mode in c.downscale_modes:
        if mode not in RESAMPLING:
            bad("downscale_modes", f"unknown mode {mode!r}; use some of {', '.join(RESAMPLING)}")
    for codec in c.video_codecs:
        if codec not in DECODERS:
            bad("video_codecs", f"unknown codec {codec!r}; use some of {', '.join(DECODERS)}")
    if not c.downscale_modes or not c.video_codecs:
        bad("downscale_modes" if not c.downscale_modes else "video_codecs", "needs at least one entry")


# ----------------------------------------------------------------------------- kernels (uint8 in, uint8 out)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _pil_frames(x: np.ndarray, fn) -> np.ndarray:
    """Apply fn(PIL image) -> PIL image to every [H, W, C] frame of x [..., H, W, C]."""
    from PIL import Image

    frames = x.reshape(-1, *x.shape[-3:])
    out = []
    for frame in frames:
        pil = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame, "L" if frame.shape[-1] == 1 else "RGB")
        arr = np.asarray(fn(pil))
        out.append(arr.reshape(*arr.shape[:2], frame.shape[-1]))
    return np.stack(out).reshape(*x.shape[:-3], *out[0].shape)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Isotropic gaussian blur of each frame: a separable float64 kernel of radius
    round(4 sigma), edges mirrored (scipy.ndimage's 'reflect'), rounded back to uint8."""
    radius = int(BLUR_TRUNCATE * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return x.copy()
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = x.astype(np.float64)
    for axis in (-3, -2):  # rows, then columns
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        out = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(taps))
    return _to_uint8(out)


def _resample(mode: str):
    from PIL import Image

    return {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC}[mode]


def downscale(x: np.ndarray, factor: float, mode: str = "area") -> np.ndarray:
    """Each frame down by `factor` with `mode` (Pillow), then back up to its size with bicubic:
    the detail lost on the way down stays lost, as in an upscaled low-resolution source."""
    h, w = x.shape[-3:-1]
    small = (max(round(w / factor), 1), max(round(h / factor), 1))  # PIL sizes are (width, height)
    if small == (w, h):
        return x.copy()
    return _pil_frames(x, lambda im: im.resize(small, _resample(mode)).resize((w, h), _resample("bicubic")))


def gaussian_noise(x: np.ndarray, sigma: float, seed: int, gray: bool = False) -> np.ndarray:
    """Add N(0, sigma^2) noise (uint8 units) from default_rng(seed); `gray`: one field for all channels."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, sigma, x.shape[:-1] + (1,) if gray else x.shape)
    return _to_uint8(x + noise)


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """Each frame encoded and decoded by Pillow's JPEG codec at `quality` (its default subsampling)."""
    from PIL import Image

    def roundtrip(im):
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(quality))
        return Image.open(io.BytesIO(buf.getvalue()))

    return _pil_frames(x, roundtrip)


def video_compress(clip: np.ndarray, codec: str, bits_per_pixel: float) -> np.ndarray:
    """A clip [F, H, W, C] encoded at bitrate bits_per_pixel * H * W * VIDEO_FPS (4:2:0, one thread
    so the bitstream is deterministic) and decoded; odd sizes are edge-padded to even and cropped back."""
    import av

    if not _has_encoder(codec):  # an explicit error, not a silent switch that would change the pairs
        have = [c for c in DECODERS if _has_encoder(c)]
        raise ValueError(f"degradations.video_codecs: this PyAV/ffmpeg has no {codec!r} encoder; "
                         f"it has {have or 'none of ' + str(list(DECODERS))}") from None
    frames, height, width, channels = clip.shape
    fmt = "gray" if channels == 1 else "rgb24"
    even = np.pad(clip, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = even.shape[2], even.shape[1], "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, VIDEO_FPS), Fraction(VIDEO_FPS, 1)
    enc.bit_rate = max(int(bits_per_pixel * height * width * VIDEO_FPS), 1000)  # x264 counts in kbit/s
    enc.thread_count = 1
    if codec == "libx264":
        enc.options = {"preset": "veryfast", **_x264_without_avx512()}  # veryfast: cheap enough for a data loader
    packets = []
    for i, frame in enumerate(even):
        vf = av.VideoFrame.from_ndarray(frame[..., 0] if channels == 1 else frame, format=fmt)
        vf.pts = i
        packets += enc.encode(vf)
    packets += enc.encode(None)
    dec = av.CodecContext.create(DECODERS[codec], "r")
    dec.thread_count = 1
    decoded = [f for p in packets + [None] for f in dec.decode(p)]
    if len(decoded) != frames:
        raise RuntimeError(f"video_compress: {codec} gave back {len(decoded)} of {frames} frames")
    out = np.stack([f.to_ndarray(format=fmt) for f in decoded])
    return out.reshape(frames, *even.shape[1:3], channels)[:, :height, :width]


# x264's instruction sets by its own names (common/cpu.c) and the /proc/cpuinfo flag of each.
_X264_ISA_FLAGS = {"MMX2": "sse", "SSE": "sse", "SSE2": "sse2", "SSE2Fast": "sse2", "LZCNT": "abm",
                   "SSE3": "pni", "SSSE3": "ssse3", "SSE4.1": "sse4_1", "SSE4.2": "sse4_2", "AVX": "avx",
                   "FMA3": "fma", "BMI1": "bmi1", "BMI2": "bmi2", "AVX2": "avx2"}


@functools.cache
def _x264_without_avx512() -> dict:
    """x264 options that keep it off its AVX-512 code, on CPUs that have AVX-512.

    With its AVX-512 kernels the libx264 bundled with PyAV makes a different bitstream for the
    same input about once in 40 encodes (seen on an Intel Xeon with AVX-512: 2.5% of 21,240 encodes of
    a 4x32x32 clip alternating with decodes, 0 of 19,800 with AVX-512 left out), which made the
    degraded half of a pair depend on the heap rather than on the seed. x264's `asm` option
    takes the instruction sets to use and does not check them against the CPU, so the list is
    this CPU's own (from /proc/cpuinfo) without AVX-512. Elsewhere x264 detects as usual.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return {}
    if "avx512f" not in flags:
        return {}
    return {"x264-params": "asm=" + ",".join(name for name, flag in _X264_ISA_FLAGS.items() if flag in flags)}


def _has_encoder(codec: str) -> bool:
    import av

    try:
        av.codec.Codec(codec, "w")
    except ValueError:  # PyAV's UnknownCodecError
        return False
    return True


# ----------------------------------------------------------------------------- mixtures


def sample_params(config: DegradationConfig, rng: np.random.Generator, *, video: bool) -> list[dict]:
    """One clip's (or image's) random mixture: the kinds applied, in order, with their parameters."""
    params = []
    passes = 2 if rng.uniform() < config.second_order_prob else 1
    for p in range(1, passes + 1):
        for kind in config.order:
            # Every kind draws its numbers whether or not it applies, so changing one probability
            # does not reshuffle the others' parameters for the same seed.
            applies = rng.uniform() < getattr(config, f"{kind}_prob")
            if kind == "blur":
                values = {"sigma": float(rng.uniform(*config.blur_sigma))}
            elif kind == "downscale":
                values = {"factor": float(rng.uniform(*config.downscale_factor)),
                          "mode": config.downscale_modes[int(rng.integers(len(config.downscale_modes)))]}
            elif kind == "noise":
                values = {"sigma": float(rng.uniform(*config.noise_sigma)),
                          "gray": bool(rng.uniform() < config.noise_gray_prob), "seed": int(rng.integers(2**31))}
            elif kind == "jpeg":
                values = {"quality": int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))}
            else:
                lo, hi = np.log(config.video_bits_per_pixel)
                values = {"codec": config.video_codecs[int(rng.integers(len(config.video_codecs)))],
                          "bits_per_pixel": float(np.exp(rng.uniform(lo, hi)))}
                applies = applies and video
            if applies:
                params.append({"kind": kind, "pass": p, **values})
    return params


def apply(x: np.ndarray, params: list[dict]) -> np.ndarray:
    """Apply a parameter list from `sample_params` to uint8 x [H, W, C] or [F, H, W, C]."""
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or x.shape[-1] not in (1, 3):
        raise ValueError(f"degradations: need uint8 [H, W, C] or [F, H, W, C] with C in (1, 3), "
                         f"got {x.dtype} {x.shape}")
    out = x.copy()
    for step in params:
        kind = step["kind"]
        if kind == "blur":
            out = gaussian_blur(out, step["sigma"])
        elif kind == "downscale":
            out = downscale(out, step["factor"], step["mode"])
        elif kind == "noise":
            out = gaussian_noise(out, step["sigma"], step["seed"], step["gray"])
        elif kind == "jpeg":
            out = jpeg(out, step["quality"])
        elif kind == "video":
            if out.ndim == 3:
                raise ValueError("degradations: video compression needs a clip [F, H, W, C], not an image")
            out = video_compress(out, step["codec"], step["bits_per_pixel"])
        else:
            raise ValueError(f"degradations: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    return out


def degrade(x: np.ndarray, config: DegradationConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """uint8 image [H, W, C] or clip [F, H, W, C] -> (degraded copy, the parameters applied)."""
    params = sample_params(config, rng, video=np.ndim(x) == 4)
    return apply(x, params), params


# ----------------------------------------------------------------------------- Grain transform


class DegradePairs:
    """Sample dict -> the same dict plus `degraded_<key>`, the clean `<key>` kept unchanged.

    `key`: 'video' or 'image' (default: 'video' when the row has it, else 'image'). uint8 arrays
    stay uint8; float arrays are read as the batch contract's [-1, 1] and come back float32 in
    [-1, 1]. Rows the streams mark as skipped ({'_skip': ...}) pass through untouched.
    Use with `MapDataset.random_map(DegradePairs(config), seed=...)`: like the streams' LoadSample,
    a plain callable, so this module (and its config) imports without Grain, which loads JAX.
    """

    def __init__(self, config: DegradationConfig | None = None, key: str | None = None):
        self.config = config or DegradationConfig()
        self.key = key

    def __call__(self, element: dict, rng: np.random.Generator) -> dict:
        if "_skip" in element:
            return element
        key = self.key or ("video" if "video" in element else "image")
        clean = np.asarray(element[key])
        if clean.dtype == np.uint8:
            degraded, _ = degrade(clean, self.config, rng)
        else:  # [-1, 1] -> uint8 is exact for rows made from 8-bit pixels (x / 255 * 2 - 1)
            degraded, _ = degrade(_to_uint8((clean.astype(np.float64) + 1.0) * 127.5), self.config, rng)
            degraded = (degraded.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
        return {**element, f"degraded_{key}": degraded}
