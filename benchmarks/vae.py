"""VAE reconstruction table: compression vs. quality vs. speed, trained briefly on CPU.

    python -m benchmarks.vae [--settings=f8c16,f16c64,f32c128] [--steps=400] [--video_steps=150] [--max_load=1.0]
        [--no-append]

For each image setting a VAE of the same widths (base 16, multipliers 1, 2, 4, 4, 4, ...)
is trained from scratch with the VAE stage's own `train_step` (L1 + KL; the perceptual and
GAN terms are off: no trained VGG ships here, and both trade PSNR for sharpness) on 64x64
crops of real images: training digits (`glyphs`, train split) and photographs from
scikit-image that are *not* held out. It is then scored on

- held-out digits (the test split, upsampled to 64x64), and
- 64x64 crops of the held-out photographs astronaut, coffee, chelsea and rocket (each
  resized to a 192-pixel short side, a 3x3 grid of crops): 36 photo crops never seen in training.

PSNR (dB, peak-to-peak 2 on [-1, 1]) and SSIM (scikit-image) of the posterior-mean
reconstruction. Tokens per 256x256 image are latent positions (patch size 1); latent
elements are positions x channels. Throughput: images/s of the jitted encode (posterior
mean) and decode at 256x256, batch 4, median of 5 timed runs after a warm-up.

The video row trains the default causal video VAE compression (t4 s16 c48, narrower) the
same way on moving-digit clips (9 frames, 32x32, training glyphs; hybrid discriminator off)
and scores held-out clips built from held-out glyphs.
A table is printed and appended to BENCHMARKS.md (unless --no-append, or unless the 1-minute
load average at the start was above --max_load).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import protocol

SIZE = 64
VIDEO_SIZE = 32
TRAIN_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina", "camera", "moon", "coins", "clock",
                "brick", "grass", "gravel", "page", "text")
HELD_OUT_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


# --------------------------------------------------------------------------- data


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)().astype(np.float32) / 255.0
    return np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]


def _resize(img: np.ndarray, short_side: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    scale = short_side / min(h, w)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
    return np.asarray(Image.fromarray((img * 255).astype(np.uint8)).resize(size, Image.BICUBIC), np.float32) / 255


def held_out_photo_crops() -> np.ndarray:
    crops = []
    for name in HELD_OUT_PHOTOS:
        img = _resize(_photo(name), 3 * SIZE)
        h, w = img.shape[:2]
        for y in np.linspace(0, h - SIZE, 3).astype(int):
            for x in np.linspace(0, w - SIZE, 3).astype(int):
                crops.append(img[y: y + SIZE, x: x + SIZE])
    return np.stack(crops) * 2 - 1


def digit_images(split: str, limit: int | None = None) -> np.ndarray:
    from data_pipelines.sources import glyphs

    images = glyphs.upsample(glyphs.load_digits(split)[0][:limit], SIZE)
    return np.repeat(images[..., None], 3, -1) * 2 - 1


class TrainImages:
    """Random 64x64 crops of the training photos at random scales, and training digits, 50/50."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.photos = [_resize(_photo(n), s) for n in TRAIN_PHOTOS for s in (SIZE, 2 * SIZE, 4 * SIZE)]
        self.digits = digit_images("train")

    def batch(self, n: int) -> np.ndarray:
        out = []
        for _ in range(n):
            if self.rng.random() < 0.5:
                out.append(self.digits[self.rng.integers(len(self.digits))])
                continue
            img = self.photos[self.rng.integers(len(self.photos))]
            y, x = (self.rng.integers(0, d - SIZE + 1) for d in img.shape[:2])
            crop = img[y: y + SIZE, x: x + SIZE] * 2 - 1
            out.append(crop[:, ::-1] if self.rng.random() < 0.5 else crop)
        return np.stack(out).astype(np.float32)


# --------------------------------------------------------------------------- training / scoring


def stage_config(kind: str, preset: str, steps: int, batch: int, **model):
    from seedjax.config import base_config
    from seedjax.schema.stages import vae_config

    cfg = base_config(stage="vae")
    cfg.vae = vae_config(kind, preset, **model)
    cfg.vae.loss.update(perceptual_weight=0.0, adversarial_start=10**9)
    cfg.optimizer.update(lr=2e-3, warmup_steps=min(50, steps // 10), end_lr_factor=0.05)
    cfg.ema_decay = 0.0
    cfg.total_steps, cfg.batch_size = steps, batch
    return cfg


def train(cfg, next_batch, steps: int, key: str):
    from seedjax.stages import vae as stage

    state = nnx.jit(lambda: stage.init(cfg, nnx.Rngs(jax.random.key(0, impl="rbg"))))()
    graphdef, st = nnx.split(state)

    @jax.jit
    def step(st, batch, rng):
        module = nnx.merge(graphdef, st)
        metrics = stage.train_step(module, batch, rng, cfg)
        return nnx.state(module), metrics

    t0 = time.perf_counter()
    for i in range(steps):
        st, metrics = step(st, {key: jnp.asarray(next_batch())}, jax.random.key(i))
        if i == 0:
            jax.block_until_ready(metrics)
            compile_s, t0 = time.perf_counter() - t0, time.perf_counter()
    jax.block_until_ready(st)
    return nnx.merge(graphdef, st).vae, compile_s, time.perf_counter() - t0


def reconstruct(vae, x: np.ndarray, batch: int = 16) -> np.ndarray:
    graphdef, params = nnx.split(vae)
    fn = jax.jit(lambda p, x: nnx.merge(graphdef, p).decode(nnx.merge(graphdef, p).encode(x)[0]))
    return np.concatenate([np.asarray(fn(params, jnp.asarray(x[i: i + batch]))) for i in range(0, len(x), batch)])


def scores(x: np.ndarray, recon: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import structural_similarity

    recon = np.clip(recon, -1, 1)
    axes = tuple(range(1, x.ndim))
    mse = np.mean(np.square(x - recon), axis=axes)
    psnr = float(np.mean(10 * np.log10(4.0 / np.maximum(mse, 1e-10))))
    frames = lambda a: a.reshape(-1, *a.shape[-3:])
    ssim = float(np.mean([structural_similarity(a, b, data_range=2.0, channel_axis=-1)
                          for a, b in zip(frames(x), frames(recon))]))
    return psnr, ssim


def throughput(vae, shape, repeats: int = 5) -> tuple[float, float]:
    graphdef, params = nnx.split(vae)
    encode = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x)[0])
    decode = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))
    x = jnp.zeros(shape, jnp.float32)
    z = encode(params, x)
    rates = []
    for fn, arg in ((encode, x), (decode, z)):
        jax.block_until_ready(fn(params, arg))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, arg))
            times.append(time.perf_counter() - t0)
        rates.append(shape[0] / statistics.median(times))
    return rates[0], rates[1]


def num_params(vae) -> int:
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(vae, nnx.Param)))


# --------------------------------------------------------------------------- main


def image_row(setting: str, steps: int, batch: int, data: TrainImages, held_out: dict) -> dict:
    from seedjax.schema.models import image_vae_config

    model = dict(base_channels=16, layers_per_block=1, norm_groups=8)
    cfg = stage_config("image", setting, steps, batch, **model)
    vae, compile_s, train_s = train(cfg, lambda: data.batch(batch), steps, "image")
    f = image_vae_config(setting, **model).downsample_factor
    row = dict(setting=setting, tokens=(256 // f) ** 2, elements=(256 // f) ** 2 * vae.config.latent_channels,
               params=num_params(vae), train_s=train_s, compile_s=compile_s, steps=steps)
    for name, x in held_out.items():
        row[name] = scores(x, reconstruct(vae, x))
    row["encode"], row["decode"] = throughput(vae, (4, 256, 256, 3))
    print(f"{setting}: {row}", flush=True)
    return row


def video_row(steps: int, batch: int) -> dict:
    from data_pipelines.sources.moving_digits import moving_digit_clips
    from seedjax.schema.models import video_vae_config

    model = dict(in_channels=1, base_channels=8, channel_mult=(1, 2, 2, 4, 4), layers_per_block=1, norm_groups=8)
    cfg = stage_config("video", "t4s16c48", steps, batch, **model)
    train_clips = moving_digit_clips("train", 512, 9, VIDEO_SIZE, seed=1)
    rng = np.random.default_rng(0)
    vae, compile_s, train_s = train(cfg, lambda: train_clips[rng.integers(0, len(train_clips), batch)], steps, "video")
    held_out = moving_digit_clips("test", 32, 9, VIDEO_SIZE, seed=2)
    psnr, ssim = scores(held_out, reconstruct(vae, held_out, batch=4))
    vc = video_vae_config("t4s16c48", **model)
    latent_elems = vc.latent_frames(9) * (VIDEO_SIZE // 16) ** 2 * 48
    row = dict(setting="t4s16c48 (video)", params=num_params(vae), psnr=psnr, ssim=ssim, train_s=train_s,
               compile_s=compile_s, steps=steps, ratio=9 * VIDEO_SIZE * VIDEO_SIZE / latent_elems)
    print(f"video: {row}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="f8c16,f16c64,f32c128")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--video_steps", type=int, default=150)
    parser.add_argument("--video_batch", type=int, default=2)
    parser.add_argument("--no-append", dest="append", action="store_false")
    protocol.add_max_load(parser)
    args = parser.parse_args(argv)
    load_before = protocol.begin(args.max_load, not args.append)

    data = TrainImages()
    held_out = {"digits": digit_images("test"), "photos": held_out_photo_crops()}
    rows = [image_row(s, args.steps, args.batch, data, held_out) for s in args.settings.split(",") if s]
    video = video_row(args.video_steps, args.video_batch) if args.video_steps > 0 else None

    machine = f"{jax.devices()[0].platform}, jax {jax.__version__}; {protocol.machine_header(load_before)}"
    command = (f"python -m benchmarks.vae --settings={args.settings} --steps={args.steps} --batch={args.batch} "
               f"--video_steps={args.video_steps} --video_batch={args.video_batch}")
    lines = [
        "", f"## VAE reconstruction (benchmarks/vae.py), {time.strftime('%Y-%m-%d')}", "",
        f"Command: `{command}`", "",
        f"Machine: {machine}. Each VAE trained from scratch for {args.steps} steps of batch {args.batch} "
        f"(64x64 crops, L1 + KL 1e-6) with the VAE stage's train_step; held-out: {len(held_out['digits'])} test "
        f"digits and {len(held_out['photos'])} crops of {', '.join(HELD_OUT_PHOTOS)} (never trained on). "
        "Tokens = latent positions of a 256x256 image; throughput at 256x256, batch 4, median of 5.", "",
        "| setting | tokens / 256² | latent elements | params | PSNR digits | SSIM digits | PSNR photos | "
        "SSIM photos | encode img/s | decode img/s | train time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['tokens']} | {r['elements']} | {r['params'] / 1e6:.2f}M | {r['digits'][0]:.2f} | "
            f"{r['digits'][1]:.3f} | {r['photos'][0]:.2f} | {r['photos'][1]:.3f} | {r['encode']:.1f} | "
            f"{r['decode']:.1f} | {r['train_s']:.0f}s (+{r['compile_s']:.0f}s compile) |")
    by_name = {r["setting"]: r for r in rows}
    if "f8c16" in by_name:
        base = by_name["f8c16"]
        for r in rows:
            if r is not base:
                lines.append("")
                lines.append(
                    f"{r['setting']} vs f8c16: {base['tokens'] / r['tokens']:.0f}x fewer tokens at a PSNR cost of "
                    f"{base['photos'][0] - r['photos'][0]:.2f} dB on photos "
                    f"({base['digits'][0] - r['digits'][0]:.2f} dB on digits).")
    if video:
        lines += [
            "",
            f"Video: causal VAE t4s16c48 ({video['params'] / 1e6:.2f}M params, {video['ratio']:.0f}x fewer elements "
            f"than pixels) trained {video['steps']} steps of {args.video_batch} moving-digit clips (9 frames, 32x32); "
            f"held-out clips (held-out glyphs): PSNR {video['psnr']:.2f} dB, SSIM {video['ssim']:.3f} "
            f"(train {video['train_s']:.0f}s + {video['compile_s']:.0f}s compile).",
        ]
    print("\n".join(lines))
    protocol.append("\n".join(lines) + "\n", load_before, args.max_load, not args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
