"""seedjax vs diffusers' FluxTransformer2DModel (PyTorch): one training step, equal work, interleaved.

    python -m benchmarks.train_step [--sizes=quickstart,large,video] [--steps=10] [--warmup=1] [--block=1]
        [--dtype=float32] [--matmul_precision=float32] [--frameworks=seedjax,torch] [--torch_device=auto]
        [--max_load=1.0] [--no-append]

Both sides run the same step on the same machine, in one process:

- the same model: the MMDiT of the size preset and the FluxTransformer2DModel of the same
  shapes (`seedjax.interop.flux.diffusers_config`), the PyTorch one loaded with the seedjax
  model's initial weights, so both compute the same function; parameter counts are checked equal;
- the same inputs (one NumPy draw), the same loss (velocity MSE against a fixed target, the
  Seedream RoPE ids on both sides), the same optimizer update (AdamW with the hyper-parameters
  of `OPTIMIZER`, built from them on both sides: optax's and torch's defaults differ);
- no EMA and no non-finite guard on either side (the training loop's step has both: this is the
  model + optimizer step alone); the seedjax step is jitted with its state donated, PyTorch is eager;
- the same precision: `--dtype=float32` with `--matmul_precision=float32` (full float32 matmuls on
  both sides: JAX would otherwise use TF32 on NVIDIA GPUs where PyTorch does not; `tf32` asks both
  for TF32), or `--dtype=bfloat16`: seedjax's `model.dtype=bfloat16` (matmuls in bfloat16, residual
  stream and conditioning in float32) against `torch.autocast(bfloat16)`, both over float32 weights.

Equal work is checked before timing: the analytic training FLOPs of the seedjax model
(`mmdit.train_flops_per_example`, 3 x forward) must equal 3 x the forward FLOPs PyTorch's own
FlopCounterMode counts in the diffusers model (on the meta device, attention in its math form so
that its matmuls are counted), and, in float32, the loss decrease over the first two updates must
agree within 1% (the first loss alone tests nothing: the output projection starts at zero; a 10%
difference in learning rate shows as ~9%; the weight decay's effect over two steps is too small
to show: it is equal by construction). The forward pass itself is compared with non-trivial
weights in tests/test_flux_parity.py.

Timing: the two sides alternate in turns of `--block` steps (seedjax, torch, seedjax, torch ...:
`--steps` timed turns each after `--warmup` untimed ones; `benchmarks.protocol.interleave`). With
`--block=1` every step follows a step of the other framework; on a 2-core CPU that costs seedjax's
step more than torch's (BENCHMARKS.md, 2026-12-01), and `--block=3` shows the steady state. Reported are
the median, min and max step time of each side, the 1-minute load average before and after each
size, and the thread settings of each side (XLA's CPU thread pool, torch's intra/inter-op threads).
MFU is against each framework's matmul peak measured in the same run in the step's dtype, and on
an accelerator with a known data-sheet peak (bfloat16) against that too. A table is appended to
BENCHMARKS.md unless --no-append, or unless the 1-minute load average at the start was above
--max_load. `--frameworks=seedjax` times seedjax alone (an MFU run, no PyTorch needed).

Presets: `quickstart` (the MMDiT of experiments/quickstart/pretrain.py), `large` (hidden 512, 256
image tokens, batch 32), `video` (hidden 512, 1,024 visual tokens, batch 4: the token count of a
small video DiT clip, laid out as a 32 x 32 grid, which does not change the work), and
`flux_dev_slice` (Flux-dev's width, heads, text and pooled widths, RoPE axes and guidance
embedder with 2 double + 4 single blocks, 1,024 image + 512 text tokens, batch 4; for GPUs, use
`--dtype=bfloat16`; its float32 state with AdamW is about 21 GB a side). bfloat16 on a CPU
without bfloat16 matmul units measures the emulation, not the frameworks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from benchmarks import protocol

SIZES = {
    # tiny: for the tests of the benchmarks (seconds on a CPU; nothing to read into its times)
    "tiny": dict(heads=2, head_dim=16, double=1, single=1, img_tokens=16, txt_tokens=8, in_ch=4, batch=2),
    # quickstart: the MMDiT of experiments/quickstart/pretrain.py (16 image + 32 text tokens)
    "quickstart": dict(heads=3, head_dim=32, double=2, single=2, img_tokens=16, txt_tokens=32, in_ch=16, batch=64),
    # the larger point: hidden 512, 256 image tokens, batch 32
    "large": dict(heads=8, head_dim=64, double=2, single=4, img_tokens=256, txt_tokens=32, in_ch=16, batch=32),
    # typical of a video DiT: hidden 512, 1,024 visual tokens (a 32 x 32 grid), batch 4
    "video": dict(heads=8, head_dim=64, double=2, single=4, img_tokens=1024, txt_tokens=32, in_ch=16, batch=4),
    # a slice of Flux-dev: its widths with 2 + 4 of its 19 + 38 blocks, 512 x 512 images (GPU, bfloat16)
    "flux_dev_slice": dict(heads=24, head_dim=128, double=2, single=4, img_tokens=1024, txt_tokens=512, in_ch=64,
                           batch=4, text_dim=4096, pooled_dim=768, axes=(16, 56, 56), guidance=True),
}

# One AdamW for both sides (optax.adamw and torch.optim.AdamW default to other weight decays).
OPTIMIZER = dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
PARITY_RTOL = 1e-2  # float32: relative difference of the loss decrease over two identical updates


def seedjax_config(s: dict, dtype: str = "float32"):
    from seedjax.schema.models import mmdit_config

    cfg = mmdit_config()
    cfg.num_heads, cfg.head_dim = s["heads"], s["head_dim"]
    cfg.depth_double, cfg.depth_single = s["double"], s["single"]
    cfg.in_channels = s["in_ch"]
    hidden = s["heads"] * s["head_dim"]
    cfg.text_dim, cfg.pooled_dim = s.get("text_dim", hidden), s.get("pooled_dim", hidden)
    spatial = s["head_dim"] * 3 // 8  # (8, 12, 12) for head_dim 32, as in the quickstart
    cfg.axes_dims_rope = tuple(s.get("axes", (s["head_dim"] - 2 * spatial, spatial, spatial)))
    cfg.guidance_embed = bool(s.get("guidance", False))
    cfg.dtype = dtype
    return cfg


def grid_of(n: int) -> tuple[int, int]:
    side = int(round(n**0.5))
    assert side * side == n
    return side, side


def make_inputs(s: dict, cfg) -> dict:
    """One draw of every input, as NumPy arrays both sides copy."""
    from seedjax.models.rope import seedream_position_ids

    rng = np.random.default_rng(0)
    b, n, t = s["batch"], s["img_tokens"], s["txt_tokens"]
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
    img_ids, txt_ids = seedream_position_ids(*grid_of(n), t)
    return dict(x=f32(b, n, cfg.in_channels), target=f32(b, n, cfg.in_channels), txt=f32(b, t, cfg.text_dim),
                pooled=f32(b, cfg.pooled_dim), t=rng.uniform(size=(b,)).astype(np.float32),
                guidance=np.full((b,), 3.5, np.float32) if cfg.guidance_embed else None,
                img_ids=img_ids, txt_ids=txt_ids)


# --------------------------------------------------------------------------- seedjax


class SeedjaxSide:
    """The MMDiT and its AdamW, one jitted step with the state donated."""

    def __init__(self, cfg, inputs: dict):
        import jax
        import jax.numpy as jnp
        import optax
        from flax import nnx

        from seedjax.models import mmdit

        self.model = mmdit.MMDiT(cfg, rngs=nnx.Rngs(0))
        o = OPTIMIZER
        tx = optax.adamw(o["lr"], b1=o["b1"], b2=o["b2"], eps=o["eps"], weight_decay=o["weight_decay"])
        opt = nnx.Optimizer(self.model, tx, wrt=nnx.Param)
        self.params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(self.model, nnx.Param)))
        grid = grid_of(inputs["x"].shape[1])
        arrays = {k: jnp.asarray(v) for k, v in inputs.items() if v is not None and k not in ("img_ids", "txt_ids")}
        graphdef, self.state = nnx.split((self.model, opt))

        def step(state, a):
            model, opt = nnx.merge(graphdef, state)

            def loss_fn(m):
                out = m(a["x"], a["t"], a["txt"], a["pooled"], grid_hw=grid, guidance=a.get("guidance"))
                return jnp.mean(jnp.square(out - a["target"]))

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            opt.update(model, grads)
            return nnx.state((model, opt)), loss

        self.arrays = arrays
        self.step_fn = jax.jit(step, donate_argnums=0)
        self._block = jax.block_until_ready

    def export_weights(self) -> dict:
        from seedjax.interop import flux

        return flux.export_state_dict(self.model)

    def step(self):
        self.state, loss = self.step_fn(self.state, self.arrays)
        self._block((self.state, loss))  # the update too, not only the loss
        return loss

    def __call__(self):
        self.step()


# --------------------------------------------------------------------------- PyTorch


def torch_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class TorchSide:
    """The same model in diffusers (eager PyTorch) with torch.optim.AdamW."""

    def __init__(self, cfg, inputs: dict, weights: dict, device: str, dtype: str):
        import torch
        from diffusers import FluxTransformer2DModel

        from seedjax.interop.flux import diffusers_config

        self.torch, self.device = torch, torch.device(device)
        model = FluxTransformer2DModel(**diffusers_config(cfg)).float()
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, strict=True)
        self.model = model.to(self.device).train()
        self.params = sum(p.numel() for p in self.model.parameters())
        o = OPTIMIZER
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"],
                                     weight_decay=o["weight_decay"])
        self.a = {k: None if v is None else torch.from_numpy(v).to(self.device) for k, v in inputs.items()}
        self.autocast = dict(device_type=self.device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step(self):
        torch, a = self.torch, self.a
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(**self.autocast):
            out = self.model(hidden_states=a["x"], encoder_hidden_states=a["txt"], pooled_projections=a["pooled"],
                             timestep=a["t"], img_ids=a["img_ids"], txt_ids=a["txt_ids"], guidance=a["guidance"],
                             return_dict=False)[0]
        loss = torch.mean((out.float() - a["target"]) ** 2)
        loss.backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return loss.detach()

    def __call__(self):
        self.step()


def torch_counted_flops(cfg, inputs: dict) -> tuple[float, int]:
    """3 x the forward FLOPs torch's FlopCounterMode counts in the diffusers model (meta device:
    shapes only; attention in its math form, whose matmuls the counter sees), and its parameters."""
    import torch
    from diffusers import FluxTransformer2DModel
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from seedjax.interop.flux import diffusers_config

    with torch.device("meta"):
        model = FluxTransformer2DModel(**diffusers_config(cfg))
        a = {k: None if v is None else torch.empty(v.shape) for k, v in inputs.items()}
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(hidden_states=a["x"], encoder_hidden_states=a["txt"], pooled_projections=a["pooled"], timestep=a["t"],
              img_ids=a["img_ids"], txt_ids=a["txt_ids"], guidance=a["guidance"], return_dict=False)
    return 3.0 * counter.get_total_flops(), sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- peaks, threads


def matmul_peaks(dtype: str, torch_dev: str | None, repeats: int = 7) -> tuple[float, float | None]:
    """Matmul TFLOP/s of JAX and of PyTorch (on `torch_dev`) in `dtype` on this machine (median)."""
    import jax
    import jax.numpy as jnp

    from seedjax.train.perf import measure_matmul_tflops

    n = 1024 if jax.default_backend() == "cpu" else 8192
    jax_peak = measure_matmul_tflops(n, dtype=jnp.dtype(dtype), repeats=repeats)
    if torch_dev is None:
        return jax_peak, None
    import torch

    a = torch.ones(n, n, dtype=getattr(torch, dtype), device=torch_dev)
    sync = torch.cuda.synchronize if torch_dev.startswith("cuda") else (lambda: None)
    a @ a
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        sync()
        times.append(time.perf_counter() - t0)
    return jax_peak, 2 * n**3 / float(np.median(times)) / 1e12


def datasheet_peak(dtype: str) -> float:
    """The data-sheet bfloat16 peak of a known accelerator (seedjax.train.perf), else 0."""
    import jax

    if dtype != "bfloat16" or jax.default_backend() == "cpu":
        return 0.0
    from seedjax.train import perf

    kind = jax.devices()[0].device_kind.lower()
    return next((peak for name, peak in perf._PEAK_TFLOPS.items() if name.lower() in kind), 0.0)


def side_threads(torch_dev: str | None) -> str:
    """Each side's thread settings."""
    import jax

    dev = jax.devices()[0]
    text = f"seedjax: {dev.platform} ({dev.device_kind}), XLA CPU threads {protocol.xla_cpu_threads()}"
    if torch_dev is not None:
        import torch

        text += (f"; torch: {torch_dev}, intra-op threads {torch.get_num_threads()}, "
                 f"inter-op {torch.get_num_interop_threads()}")
    return text


# --------------------------------------------------------------------------- main


HEADER = ("| size | batch x tokens | dtype | TFLOPs/step (seedjax = torch) | seedjax s/step median (min-max) "
          "| torch s/step median (min-max) | seedjax MFU | torch MFU | MFU vs data sheet (seedjax, torch) "
          "| throughput ratio (torch time / seedjax time) | load before-after |")


def run_size(name: str, args, torch_dev: str | None, peaks, sheet: float) -> tuple[str, dict]:
    s = SIZES[name]
    cfg = seedjax_config(s, args.dtype)
    inputs = make_inputs(s, cfg)
    from seedjax.models import mmdit

    flops = mmdit.train_flops_per_example(cfg, s["img_tokens"], s["txt_tokens"]) * s["batch"]
    load_before = protocol.load_average()
    sj = SeedjaxSide(cfg, inputs)
    arms = {"seedjax": sj}
    info = dict(flops=flops, seedjax_params=sj.params)
    if torch_dev is not None:
        torch_flops, torch_meta_params = torch_counted_flops(cfg, inputs)
        th = TorchSide(cfg, inputs, sj.export_weights(), torch_dev, args.dtype)
        arms["torch"] = th
        info.update(torch_flops=torch_flops, torch_params=th.params)
        print(f"{name}: FLOPs/step seedjax (analytic) {flops:.6e}, torch (FlopCounterMode, 3 x forward) "
              f"{torch_flops:.6e}; parameters seedjax {sj.params:,}, torch {th.params:,}", flush=True)
        same_params = len({sj.params, th.params, torch_meta_params}) == 1
        if not np.isclose(flops, torch_flops, rtol=1e-9, atol=0) or not same_params:
            raise SystemExit(f"{name}: not equal work: FLOPs {flops:.6e} vs {torch_flops:.6e}, parameters "
                             f"{sj.params} vs {th.params}")
        # Three steps each (the first compiles): the loss decrease over the two updates must agree. The
        # first loss alone tests nothing (the output projection starts at zero on both sides: it is the
        # target's mean square), and the first update moves only that projection.
        sj_losses = [float(sj.step()) for _ in range(3)]
        th_losses = [float(th.step()) for _ in range(3)]
        sj_drop, th_drop = sj_losses[0] - sj_losses[2], th_losses[0] - th_losses[2]
        rel = abs(sj_drop - th_drop) / max(abs(th_drop), 1e-30)
        info["parity"] = rel
        print(f"{name}: losses of the first three steps: seedjax {' '.join(f'{x:.6f}' for x in sj_losses)}, "
              f"torch {' '.join(f'{x:.6f}' for x in th_losses)}; decrease over two updates: relative "
              f"difference {rel:.1e}", flush=True)
        if args.dtype == "float32" and args.matmul_precision == "float32" and rel > PARITY_RTOL:
            raise SystemExit(f"{name}: the two steps do not compute the same update: loss decrease over two "
                             f"updates {sj_drop:.6g} (seedjax) vs {th_drop:.6g} (torch), relative difference "
                             f"{rel:.1e} > {PARITY_RTOL}")
    else:
        print(f"{name}: FLOPs/step seedjax (analytic) {flops:.6e}; parameters {sj.params:,}", flush=True)
        sj.step()
    stats = protocol.interleave(arms, rounds=args.steps, warmup=args.warmup, block=args.block)  # per step
    load_after = protocol.load_average()
    tflop = flops / 1e12
    jax_peak, torch_peak = peaks
    sj_t = stats["seedjax"]
    th_t = stats.get("torch")
    mfu = lambda arm, peak: f"{tflop / arm['median'] / peak:.1%}" if arm and peak else "-"
    cells = [
        f"{name} (hidden {s['heads'] * s['head_dim']}, {s['double']}+{s['single']} blocks)",
        f"{s['batch']} x ({s['img_tokens']}+{s['txt_tokens']})", args.dtype, f"{tflop:.4f}",
        protocol.spread(sj_t), protocol.spread(th_t) if th_t else "-",
        mfu(sj_t, jax_peak), mfu(th_t, torch_peak),
        f"{mfu(sj_t, sheet)}, {mfu(th_t, sheet)}" if sheet else "-",
        f"{th_t['median'] / sj_t['median']:.2f}x" if th_t else "-",
        f"{load_before:.2f}-{load_after:.2f}",
    ]
    info.update(stats=stats, load=(load_before, load_after))
    return "| " + " | ".join(cells) + " |", info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.train_step", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="quickstart,large,video", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--steps", type=int, default=10, help="timed turns per side (of --block steps each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed alternating turns before the timed ones")
    p.add_argument("--block", type=int, default=1,
                   help="steps per turn: the sides alternate every --block steps (1: step by step); times per step")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--matmul_precision", default="float32", choices=["float32", "tf32"],
                   help="float32 matmuls on both sides: full float32 (default) or TF32 on both")
    p.add_argument("--frameworks", default="seedjax,torch", choices=["seedjax,torch", "seedjax"],
                   help="seedjax alone: no PyTorch side (MFU only)")
    p.add_argument("--torch_device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--no-append", action="store_true")
    protocol.add_max_load(p)
    args = p.parse_args(argv)
    sizes = [name for name in args.sizes.split(",") if name]
    unknown = [name for name in sizes if name not in SIZES]
    if unknown or not sizes:
        p.error(f"--sizes: unknown {unknown or 'empty'}; choose from {', '.join(SIZES)}")
    if args.steps < 1 or args.warmup < 0 or args.block < 1:
        p.error("--steps and --block must be >= 1 and --warmup >= 0")
    load_before = protocol.begin(args.max_load, args.no_append)
    with_torch = args.frameworks == "seedjax,torch"
    if with_torch:  # both frameworks allocate on one GPU: JAX must not take 75% of it up front
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

    import jax

    jax.config.update("jax_default_matmul_precision",
                      "float32" if args.matmul_precision == "float32" else "tensorfloat32")
    torch_dev = None
    versions = f"jax {jax.__version__}"
    if with_torch:
        import torch

        torch.set_float32_matmul_precision("highest" if args.matmul_precision == "float32" else "high")
        torch_dev = torch_device(args.torch_device)
        versions += f", torch {torch.__version__}"
    peaks = matmul_peaks(args.dtype, torch_dev)
    sheet = datasheet_peak(args.dtype)
    threads = side_threads(torch_dev)
    peak_text = f"{args.dtype} matmul peak: jax {peaks[0]:.3f}" + (
        f" / torch {peaks[1]:.3f}" if peaks[1] is not None else "") + " TFLOP/s" + (
        f"; data-sheet peak {sheet:.0f} TFLOP/s" if sheet else "")
    print(f"{versions}; {threads}\n{peak_text}", flush=True)
    if with_torch and jax.default_backend() == "cpu" and torch_dev == "cpu":
        xla = protocol.usable_cpus()
        if "multi_thread_eigen=false" in os.environ.get("XLA_FLAGS", "").replace(" ", ""):
            xla = 1
        if xla != torch.get_num_threads():
            print(f"warning: unequal threads: XLA {xla}, torch {torch.get_num_threads()}", file=sys.stderr)
    print(HEADER, flush=True)
    rows, parity = [], []
    for name in sizes:
        row, info = run_size(name, args, torch_dev, peaks, sheet)
        print(row, flush=True)
        rows.append(row)
        if "parity" in info:
            parity.append(f"{name} {info['parity']:.1e}")
    checked = args.dtype == "float32" and args.matmul_precision == "float32"
    if with_torch:
        work = (f"Equal work, checked in the run: same shapes and initial weights, same inputs and loss, AdamW "
                f"({', '.join(f'{k} {v:g}' for k, v in OPTIMIZER.items())}) on both sides, no EMA or non-finite "
                f"guard on either; analytic FLOPs (seedjax) = 3 x forward FLOPs counted by torch's FlopCounterMode; "
                f"loss decrease over the first two updates, relative difference between the sides: "
                f"{', '.join(parity)}" + (f" (at most {PARITY_RTOL:g} required)" if checked else " (not checked "
                f"in {args.dtype} / {args.matmul_precision})") + "; seedjax jitted with its state donated, "
                f"PyTorch eager.")
        timing = "Steps alternate seedjax, torch"
    else:
        work = (f"seedjax alone: analytic FLOPs, AdamW ({', '.join(f'{k} {v:g}' for k, v in OPTIMIZER.items())}), "
                f"no EMA or non-finite guard, jitted with its state donated.")
        timing = "Steps"
    command = "python -m benchmarks.train_step " + " ".join(
        f"--{k}={v}" for k, v in vars(args).items() if k not in ("no_append", "max_load"))
    text = "\n".join([
        "", f"### Train step: seedjax vs diffusers Flux (PyTorch), {time.strftime('%Y-%m-%d')}", "",
        f"`{command}` with {versions}; {threads}; {peak_text}.", "",
        f"Machine: {protocol.machine_header(load_before)}.", "",
        work + f" Compute dtype {args.dtype}, float32 matmuls in "
        f"{'full float32' if args.matmul_precision == 'float32' else 'TF32'}. "
        f"{timing} ({args.steps} timed after {args.warmup} untimed); median (min-max) step times; MFU against each "
        f"framework's matmul peak measured in the run" + (", and against the data-sheet peak" if sheet else "") + ".",
        "",
        HEADER, "|" + "---|" * 11, *rows, ""])
    protocol.append(text, load_before, args.max_load, args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
