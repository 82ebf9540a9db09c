"""Restoration quality and speed: the degraded input, the multi-step model and the one-step model (SeedVR2).

    python -m benchmarks.restore_quality --multi=runs/seedvr/restore --one=runs/seedvr/restore_adversarial \\
        [--clips=64] [--photos=32] [--seeds=0,1] [--steps=25,50] [--rules=adaptive,fixed,grow] [--rounds=5] \\
        [--vgg=VGG16.safetensors] [--append] [--max_load=1.0]

(`python benchmarks/restore_quality.py ...` runs the same.) Both runs must be pixel-space restoration
runs (config.diffusion.restore) of the same frame size, clip length and patch; the data follow the
multi-step run's config (data.image_size S, data.video.num_frames F, data.degradations).

Data, none of it seen in training:
- digits: --clips held-out moving-digit clips (`moving_digits.held_out_clip`: held-out glyphs and
  (digit, color, direction) triples, prompt seed 0) of F frames, rendered at S x S;
- photos: --photos crops of the scikit-image photographs (PHOTOS), one-frame clips: crop j of a
  photo is its largest centred region of the target aspect resized (area) to z times the target
  size, tile (r, c) of that, for zoom z = 1, 2, ... (1, then 4, then 9 tiles);
- the same at 2x the training size: digits at 2S x 2S, photos at 2S x 2S and at a non-square
  H x W (5/8 of 2S, rounded to whole patches, by 2S).
For sampler seed s, item i is degraded with the run's own data.degradations by
`degradations.sample_params(config, default_rng([s, i]), video=...)` + `apply` (uint8; clips with the
video codecs, photos with the image kinds only) and restored by `seedjax.inference.Restorer` (the
empty caption) with the key fold_in(key(s), i): each seed is a fresh draw of degradations and noise.

Rows: the degraded input; the multi-step run at each of --steps; the one-step run at its own steps.
At 2x the models run with each window rule (`Restorer(window_rule=)`): 'adaptive' (SeedVR2's, the
quickstart's), 'fixed' (SeedVR's fixed-size windows) and 'grow' (the training window counts,
larger windows); a rule that gives the same windows as an earlier one on a grid (on a square 2x
grid 'fixed' is 'adaptive') is computed once and marked "= rule".

Columns: PSNR (dB), SSIM (`seedjax.eval.image_quality`, per frame, a clip's mean) and an LPIPS-style
perceptual distance (`seedjax.models.perceptual`, VGG16; random fixed weights unless --vgg, lower is
better), each the mean over items of the item's mean over seeds ± the standard error over items;
ΔPSNR against the most-step multi-step row (paired per item); time per frame: the median over
--rounds interleaved rounds (`protocol.interleave`, model rows in turn, an untimed compiling warm-up
round first) of restoring item 0 of seed 0's set, over its frames; speed-up: that row's against the
most-step row. Goal (the issue): one step within 0.5 dB PSNR of 50 steps and >= 20x faster.

The tables are printed; with --append they are added to BENCHMARKS.md with the command and the
machine through `benchmarks.protocol.append` (not when the 1-minute load average at the start was
above --max_load). Exit codes: 0 done, 2 bad flags or runs (one line).
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from flax import nnx
from PIL import Image

from benchmarks import protocol
from data_pipelines.core.config import degradation_config
from data_pipelines.sources import moving_digits
from data_pipelines.techniques import degradations
from seedjax import cli, inference
from seedjax.eval import image_quality
from seedjax.inference.bundle import BundleError, run_config
from seedjax.inference.restoration import Restorer
from seedjax.models import adaptive_windows, perceptual, small_cnn
from seedjax.parallel import mesh as mesh_lib
from seedjax.schema.models import perceptual_config

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field", "immunohistochemistry",
          "retina")  # the RGB photographs in scikit-image's wheel (no download)
RULES = adaptive_windows.RULES  # ('adaptive', 'fixed', 'grow')
PROMPT_SEED = 0
HEAD = ("| data | windows | method | NFE | PSNR (dB) | SSIM | perceptual distance | ΔPSNR vs {ref} steps (dB) "
        "| ms per frame | speed-up vs {ref} steps |")


# --------------------------------------------------------------------------- runs


def shape_of(config) -> tuple[int, int, int]:
    return int(config.data.video.num_frames), int(config.data.image_size), int(config.input.patch_size)


def check_runs(multi: str, one: str):
    """The multi-step run's config, after refusing what this benchmark cannot measure."""
    configs = {}
    for flag, workdir in (("multi", multi), ("one", one)):
        try:
            configs[flag] = run_config(workdir)[1]
        except BundleError as e:
            raise cli.UsageError(f"--{flag}: {e}") from None
        config = configs[flag]
        if not config.diffusion.get("restore", False) or config.input.key != "video":
            raise cli.UsageError(f"--{flag}: {workdir} is not a pixel-space restoration run "
                                 f"(config.diffusion.restore, input.key='video')")
    if shape_of(configs["multi"]) != shape_of(configs["one"]):
        raise cli.UsageError(f"--multi and --one differ in (frames, image size, patch): "
                             f"{shape_of(configs['multi'])} and {shape_of(configs['one'])}")
    if degradation_config(configs["multi"].data) is None:
        raise cli.UsageError(f"--multi: {multi} trained without data.degradations; there is nothing to restore")
    return configs["multi"]


# --------------------------------------------------------------------------- data (uint8 [N, F, H, W, 3])


def digit_clips(num: int, frames: int, size: int) -> np.ndarray:
    clips = [moving_digits.held_out_clip(i, frames, size, PROMPT_SEED)["video"] for i in range(num)]
    return np.rint(np.stack(clips) * 255.0).astype(np.uint8)


def load_photo(name: str) -> Image.Image:
    import skimage.data

    array = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    return Image.fromarray(array[..., :3])


def zoom_tile(j: int) -> tuple[int, int, int]:
    """Crop j's (zoom z, row, column): j = 0 is the whole frame, 1..4 the 2x2 tiles at zoom 2, ..."""
    zoom = 1
    while j >= zoom * zoom:
        j, zoom = j - zoom * zoom, zoom + 1
    return (zoom, *divmod(j, zoom))


def photo_crops(num: int, height: int, width: int) -> np.ndarray:
    photos, out = [load_photo(name) for name in PHOTOS], []
    for i in range(num):
        photo, (zoom, r, c) = photos[i % len(photos)], zoom_tile(i // len(photos))
        pw, ph = photo.size
        cw, ch = min(pw, ph * width / height), min(ph, pw * height / width)  # the centred region of aspect h:w
        box = ((pw - cw) / 2, (ph - ch) / 2, (pw + cw) / 2, (ph + ch) / 2)
        mode = Image.Resampling.BOX if ch >= zoom * height else Image.Resampling.BICUBIC
        big = np.asarray(photo.resize((zoom * width, zoom * height), mode, box=box))
        out.append(big[r * height:(r + 1) * height, c * width:(c + 1) * width][None])
    return np.stack(out)


def data_sets(args, frames: int, size: int, patch: int):
    """(scale, name, clean uint8 [N, F, H, W, 3], video) at the training size S and at 2S: digit clips,
    square photo crops and, at 2S, photo crops of 5/8 * 2S (whole patches) by 2S."""
    low = round(2 * size * 5 / 8 / patch) * patch
    yield 1, "digits", digit_clips(args.clips, frames, size), True
    yield 1, "photos", photo_crops(args.photos, size, size), False
    yield 2, "digits", digit_clips(args.clips, frames, 2 * size), True
    yield 2, "photos", photo_crops(args.photos, 2 * size, 2 * size), False
    yield 2, "photos", photo_crops(args.photos, low, 2 * size), False


def degrade(clean: np.ndarray, config, seed: int, video: bool) -> np.ndarray:
    """uint8 [N, F, H, W, C] -> each item degraded by its own draw default_rng([seed, i]) (uint8)."""
    out = []
    for i, item in enumerate(clean):
        params = degradations.sample_params(config, np.random.default_rng([seed, i]), video=video)
        out.append(degradations.apply(item if video else item[0], params).reshape(item.shape))
    return np.stack(out)


def unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 127.5 - 1.0


# --------------------------------------------------------------------------- scores


class Judge:
    """Per-item PSNR, SSIM and perceptual distance of [N, F, H, W, C] arrays in [-1, 1]."""

    BATCH = 32  # frames a perceptual call (a set's last call is smaller: at most two compiles a set)

    def __init__(self, vgg: str):
        graphdef, self.state = nnx.split(perceptual.PerceptualDistance(perceptual_config(weights=vgg)))
        # Full CPU optimisation whatever XLA_FLAGS say (the tests lower it: 2.4x slower VGG convolutions).
        self.distance = jax.jit(lambda state, x, y: nnx.merge(graphdef, state)(x, y),
                                compiler_options=small_cnn.FULL_CPU_OPTIMIZATION)
        self.note = f"VGG16 features from {vgg}" if vgg else "random-VGG features"

    def perceptual(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        x, y = (v.reshape(-1, *v.shape[-3:]) for v in (a, b))
        d = [self.distance(self.state, x[k:k + self.BATCH], y[k:k + self.BATCH]) for k in range(0, len(x), self.BATCH)]
        return np.concatenate(d).reshape(a.shape[:2]).mean(1)

    def __call__(self, out: np.ndarray, clean: np.ndarray) -> dict[str, np.ndarray]:
        return {"psnr": image_quality.psnr_per_item(out, clean), "ssim": image_quality.ssim_per_item(out, clean),
                "perceptual": self.perceptual(out, clean)}


def mean_se(per_seed: list[np.ndarray]) -> tuple[float, float | None]:
    """Mean over items of each item's mean over seeds ([S][N] -> [N]) ± its standard error over items."""
    items = np.mean(per_seed, axis=0)
    return float(items.mean()), (float(items.std(ddof=1) / np.sqrt(len(items))) if len(items) > 1 else None)


# --------------------------------------------------------------------------- measuring


def window_of(restorer: Restorer, frames: int, height: int, width: int) -> tuple:
    """The (t, h, w) window the restorer's model uses on a frames x height x width clip."""
    w, p = restorer.config.model.window, restorer.patch
    grid = (frames, -(-height // p), -(-width // p))
    return adaptive_windows.model_window(grid, w.counts, w.reference, w.rule, w.max_frames or None)


def restore_all(restorer: Restorer, degraded: np.ndarray, seed: int) -> np.ndarray:
    keys = [jax.random.fold_in(jax.random.key(seed), i) for i in range(len(degraded))]
    return np.stack([restorer(x, key) for x, key in zip(degraded, keys)])


def measure_set(data: str, clean_u8: np.ndarray, video: bool, arms: list[tuple], args, dconfig,
                judge: Judge) -> list[dict]:
    """Rows of one data set: the degraded input, then one per arm (rule, windows label, method, restorer)."""
    clean, (_, frames, height, width, _) = unit(clean_u8), clean_u8.shape
    degraded = [unit(degrade(clean_u8, dconfig, seed, video)) for seed in args.seeds]
    data = f"{data} {frames}x{height}x{width}"
    rows = [{"data": data, "rule": "", "windows": "—", "method": "degraded input", "nfe": 0,
             "scores": [judge(d, clean) for d in degraded]}]
    first, timed = {}, {}  # (method, window) -> the row that computed it; row index -> its call
    for rule, label, method, restorer in arms:
        row = {"data": data, "rule": rule, "windows": label, "method": method, "nfe": restorer.nfe}
        key = (method, window_of(restorer, frames, height, width))
        if key in first:
            row["same_as"] = first[key]
        else:
            row["scores"] = [judge(restore_all(restorer, d, s), clean) for d, s in zip(degraded, args.seeds)]
            first[key], timed[str(len(rows))] = row, (lambda r=restorer: r(degraded[0][0], jax.random.key(0)))
        rows.append(row)
    for index, stats in protocol.interleave(timed, rounds=args.rounds, warmup=1).items():
        rows[int(index)]["ms"] = 1000.0 * stats["median"] / frames
    for row in rows:
        if "same_as" in row:
            same = row.pop("same_as")
            row.update(scores=same["scores"], ms=same["ms"], windows=f"{row['windows']} (= {same['rule']})")
    return summarize(rows, max(args.steps))


def summarize(rows: list[dict], ref_steps: int) -> list[dict]:
    """Mean ± SE of every score; for model rows ΔPSNR (paired per item) and the speed-up against
    the multi-step row at `ref_steps` of the same window rule."""
    for row in rows:
        row["stats"] = {m: mean_se([s[m] for s in row["scores"]]) for m in ("psnr", "ssim", "perceptual")}
    for row in rows[1:]:
        ref = next(r for r in rows if r["rule"] == row["rule"] and r["method"] == multi_label(ref_steps))
        row["delta"] = mean_se([s["psnr"] - t["psnr"] for s, t in zip(row["scores"], ref["scores"])])
        row["speedup"] = ref["ms"] / row["ms"]
    return rows


def multi_label(steps: int) -> str:
    return f"multi-step, {steps} steps"


def arms_for(restorers: dict, steps: list[int], rules: list[str], own_rule: str = "") -> list[tuple]:
    """(rule, windows label, method, restorer) of every model row, rule by rule."""
    out = []
    for rule in rules:
        label = f"{rule} (the run's)" if rule == own_rule else rule
        out += [(rule, label, multi_label(k), restorers["multi", k, rule]) for k in steps]
        out.append((rule, label, "one-step", restorers["one", 0, rule]))
    return out


# --------------------------------------------------------------------------- report


def cell(stat, digits: int) -> str:
    mean, se = stat
    return f"{mean:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def table(rows: list[dict], ref_steps: int) -> list[str]:
    lines = [HEAD.format(ref=ref_steps), "|---" * 10 + "|"]
    for r in rows:
        s, model = r["stats"], "ms" in r
        delta, ms, speedup = ((cell(r["delta"], 2), f"{r['ms']:.2f}", f"{r['speedup']:.1f}x") if model
                              else ("—", "—", "—"))
        lines.append(f"| {r['data']} | {r['windows']} | {r['method']} | {r['nfe'] or '—'} | {cell(s['psnr'], 2)} "
                     f"| {cell(s['ssim'], 3)} | {cell(s['perceptual'], 4)} | {delta} | {ms} | {speedup} |")
    return lines


def goals(rows: list[dict], ref_steps: int) -> list[str]:
    """The issue's goal per data set: one step within 0.5 dB of `ref_steps` steps, >= 20x faster,
    both above the degraded input."""
    out = []
    for data in dict.fromkeys(r["data"] for r in rows):
        mine = [r for r in rows if r["data"] == data]
        one = next(r for r in mine if r["method"] == "one-step")
        ref = next(r for r in mine if r["method"] == multi_label(ref_steps) and r["rule"] == one["rule"])
        floor = mine[0]["stats"]["psnr"][0]
        met = (one["delta"][0] >= -0.5 and one["speedup"] >= 20 and min(one["stats"]["psnr"][0],
                                                                         ref["stats"]["psnr"][0]) > floor)
        out.append(f"- {data}: one step {one['delta'][0]:+.2f} dB against {ref_steps} steps, {one['speedup']:.1f}x "
                   f"faster; PSNR {one['stats']['psnr'][0]:.2f} and {ref['stats']['psnr'][0]:.2f} dB against "
                   f"the input's {floor:.2f}: goal {'met' if met else 'not met'}")
    return out


def report(sets: list[list[dict]], args, header: str, command: str, judge: Judge, runs: dict) -> str:
    ref, train, double = max(args.steps), [r for s in sets[:2] for r in s], [r for s in sets[2:] for r in s]
    lines = [f"\n### Restoration quality: degraded input, multi-step and one-step (benchmarks/restore_quality.py), "
             f"{header.split(',')[0]}\n",
             f"Machine: {header}; JAX backend {jax.default_backend()}.", f"Command: `{command}`",
             (f"Runs: multi-step `{runs['multi']}`, one-step `{runs['one']}` (checkpoints at steps "
              f"{runs['multi_step']} and {runs['one_step']}). Held-out moving-digit clips and "
              f"scikit-image photo crops ({', '.join(PHOTOS)}), degraded by the run's data.degradations per "
              f"(seed, item). Mean ± standard error over items of each item's mean over seeds {args.seeds}; "
              f"perceptual distance on {judge.note} (lower is better); ΔPSNR paired per item; ms per frame: "
              f"median of {args.rounds} interleaved rounds on one item after a compiling warm-up.\n"),
             "At the training size:\n", *table(train, ref), "", "Goal (one step within 0.5 dB, >= 20x faster, "
             "both above the input):", *goals(train, ref), "",
             "At 2x the training size, by window rule (adaptive: SeedVR2's; fixed: SeedVR's fixed-size windows; "
             "grow: the training window counts, larger windows):\n", *table(double, ref)]
    return "\n".join(lines) + "\n"


@cli.entry("benchmarks.restore_quality")
def main(argv: list[str]) -> int:
    parser = cli.Parser("benchmarks.restore_quality", __doc__)
    parser.add_argument("--multi", required=True, help="the multi-step restoration run (workdir)")
    parser.add_argument("--one", required=True, help="the one-step restoration run (workdir)")
    parser.add_argument("--clips", type=int, default=64, help="held-out digit clips a size")
    parser.add_argument("--photos", type=int, default=32, help="photo crops a size")
    parser.add_argument("--seeds", default="0,1", help="seeds (degradations and sampler noise), at least two")
    parser.add_argument("--steps", default="25,50", help="the multi-step run's sampler steps")
    parser.add_argument("--rules", default=",".join(RULES), help="window rules at 2x the training size")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds")
    parser.add_argument("--vgg", default="", help="torchvision VGG16 weights for the perceptual distance")
    parser.add_argument("--append", action="store_true", help="append the tables to BENCHMARKS.md")
    protocol.add_max_load(parser)
    args = parser.parse(argv)
    args.seeds = cli.int_list("seeds", args.seeds, 0, distinct=True)
    args.steps = cli.int_list("steps", args.steps, 1, distinct=True)
    args.rules = args.rules.split(",")
    if not set(args.rules) <= set(RULES) or len(set(args.rules)) != len(args.rules):
        raise cli.UsageError(f"--rules: expected distinct entries of {','.join(RULES)}, got {','.join(args.rules)}")
    if len(args.seeds) < 2 or min(args.clips, args.photos, args.rounds) < 1:
        raise cli.UsageError(f"--seeds needs at least two seeds and --clips, --photos, --rounds must be >= 1, got "
                             f"{args.seeds}, {args.clips}, {args.photos}, {args.rounds}")
    if args.vgg and not os.path.isfile(args.vgg):
        raise cli.UsageError(f"--vgg: {args.vgg} is not a file")
    config = check_runs(args.multi, args.one)
    load_before = protocol.begin(args.max_load, not args.append)
    frames, size, patch = shape_of(config)
    dconfig, judge = degradation_config(config.data), Judge(args.vgg)
    one_device = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
    bundles = {which: inference.load(getattr(args, which), mesh=one_device) for which in ("multi", "one")}
    own = config.model.window.rule
    restorers = {(which, k, rule): Restorer(bundles[which], steps=k, window_rule=rule)
                 for rule in {*args.rules, own} for which, k in [*(("multi", k) for k in args.steps), ("one", 0)]}
    at_train, at_2x = arms_for(restorers, args.steps, [own], own), arms_for(restorers, args.steps, args.rules, own)
    sets = [measure_set(name, clean, video, at_train if scale == 1 else at_2x, args, dconfig, judge)
            for scale, name, clean, video in data_sets(args, frames, size, patch)]
    command = "python -m benchmarks.restore_quality " + " ".join(argv)
    runs = {which: getattr(args, which) for which in bundles} | {
        f"{which}_step": os.path.basename(os.path.normpath(bundle.step_path)) for which, bundle in bundles.items()}
    text = report(sets, args, protocol.machine_header(load_before), command, judge, runs)
    print(text)
    if protocol.append(text, load_before, args.max_load, not args.append):
        print(f"restore_quality: appended the tables to {protocol.target_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
