"""Peak host memory of a training step, seedjax vs diffusers' Flux (PyTorch), each side in its own process.

    python -m benchmarks.step_memory [--sizes=quickstart,large,video] [--steps=2] [--max_load=1.0] [--no-append]

The step is benchmarks.train_step's on both sides: the same model, weights, inputs, loss and AdamW,
no EMA, the seedjax step jitted with its state donated, PyTorch eager (`zero_grad(set_to_none=True)`:
its gradients live from the backward pass to the update, as seedjax's live inside its program).

Each side of each size runs in a fresh process (`--child=SIDE:SIZE`), which
1. builds the model, the optimizer and the inputs; seedjax compiles its step ahead of time, torch
   runs one step (its AdamW allocates the moments at the first update; seedjax's exist from init);
2. resets the kernel's peak-RSS counter (`/proc/self/clear_refs`) and reads the resident set: the
   resting state (weights, optimizer moments, inputs, both libraries: the shared set-up imports jax);
3. runs `--steps` steps and reads the peak resident set over them (VmHWM).
The table gives resting and peak RSS and their difference, the step's own memory (activations,
gradients, workspace; on seedjax's side XLA's temporaries, which its CPU runtime seems to keep
allocated from the first execution on: hence the step is compiled, not run, before the baseline). seedjax's row adds XLA's count for the compiled step
(memory_analysis: temporaries, and the arguments, which the outputs alias through donation).
Both sides allocate through glibc, run with a fixed mmap threshold (see MALLOC). Linux only
(procfs). A table is appended to BENCHMARKS.md unless --no-append, or unless the 1-minute load
average at the start was above --max_load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from benchmarks import protocol
from seedjax import cli

SIDES = ("seedjax", "torch")
MIB = 1024 * 1024
# Both frameworks allocate through glibc. Its default raises the mmap threshold after large frees
# and keeps freed memory in the heap, so the resident set would hold whatever the set-up freed and
# a step could reuse it unseen. A fixed threshold and no trim hysteresis give large blocks back at
# once: the resident set follows what is live.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0"}


def rss_kib() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in KiB."""
    with open("/proc/self/status") as f:
        status = f.read()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) for key in ("VmRSS", "VmHWM")}


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark back to the current resident set


def measure(side: str, size: str, steps: int) -> dict:
    """One side of one size in this process (see the module docstring)."""
    from benchmarks import train_step as ts

    s = ts.SIZES[size]
    cfg = ts.seedjax_config(s)
    inputs = ts.make_inputs(s, cfg)
    sj = ts.SeedjaxSide(cfg, inputs)
    out = {"side": side, "size": size}
    if side == "seedjax":
        arm = sj
        sj.step_fn = sj.step_fn.lower(sj.state, sj.arrays).compile()  # compiled before the baseline
        analysis = sj.step_fn.memory_analysis()
        out["xla_temp"] = int(analysis.temp_size_in_bytes)
        out["xla_arguments"] = int(analysis.argument_size_in_bytes)
    else:
        arm = ts.TorchSide(cfg, inputs, sj.export_weights(), "cpu", "float32")
        del sj  # the seedjax model was only the source of the weights (its step never ran here)
        arm.step()  # AdamW allocates its moments on its first update (seedjax's exist from the start)
    reset_peak()
    resting = rss_kib()["VmRSS"]
    for _ in range(steps):
        arm.step()
    out.update(resting=resting * 1024, peak=rss_kib()["VmHWM"] * 1024)
    return out


def child(side: str, size: str, steps: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.step_memory", f"--child={side}:{size}", f"--steps={steps}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu", **MALLOC))
    if proc.returncode != 0:
        raise RuntimeError(f"{side} {size}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(size: str, results: dict) -> str:
    from benchmarks import train_step as ts

    s = ts.SIZES[size]
    mib = lambda b: f"{b / MIB:,.0f}"
    cells = [f"{size} (hidden {s['heads'] * s['head_dim']}, {s['double']}+{s['single']} blocks)",
             f"{s['batch']} x ({s['img_tokens']}+{s['txt_tokens']})"]
    for side in SIDES:
        r = results[side]
        cells += [mib(r["resting"]), mib(r["peak"]), mib(r["peak"] - r["resting"])]
    sj = results["seedjax"]
    cells.append(f"{mib(sj['xla_temp'])} + {mib(sj['xla_arguments'])}")
    step = lambda side: results[side]["peak"] - results[side]["resting"]
    cells.append(f"{step('torch') / step('seedjax'):.2f}x" if step("seedjax") > 0 else "-")
    return "| " + " | ".join(cells) + " |"


HEADER = ("| size | batch x tokens | seedjax resting MiB | seedjax peak MiB | seedjax step MiB | torch resting MiB "
          "| torch peak MiB | torch step MiB | XLA temporaries + arguments MiB | step memory ratio (torch / seedjax) |")


@cli.entry("benchmarks.step_memory")
def main(argv: list[str]) -> int:
    from benchmarks import train_step as ts

    parser = cli.Parser("benchmarks.step_memory", __doc__)
    parser.add_argument("--sizes", default="quickstart,large,video")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", default="", help="SIDE:SIZE: measure one side here (what the parent run starts)")
    parser.add_argument("--no-append", dest="append", action="store_false")
    protocol.add_max_load(parser)
    args = parser.parse(argv)
    if args.steps < 1:
        raise cli.UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.child:
        side, _, size = args.child.partition(":")
        if side not in SIDES or size not in ts.SIZES:
            raise cli.UsageError(f"--child: expected SIDE:SIZE with SIDE in {SIDES}, got {args.child!r}")
        print(json.dumps(measure(side, size, args.steps)))
        return 0
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in ts.SIZES]
    if unknown or not sizes:
        raise cli.UsageError(f"--sizes: unknown {unknown or 'empty'}; choose from {', '.join(ts.SIZES)}")
    if not os.path.exists("/proc/self/clear_refs"):
        raise cli.UsageError("benchmarks.step_memory reads the peak resident set from Linux's procfs")
    load_before = protocol.begin(args.max_load, not args.append)
    print(HEADER, flush=True)
    rows = []
    for size in sizes:
        results = {side: child(side, size, args.steps) for side in SIDES}
        rows.append(row(size, results))
        print(rows[-1], flush=True)
    command = " ".join(["python -m benchmarks.step_memory", *argv])
    text = "\n".join([
        "", f"### Train step memory: seedjax vs diffusers Flux (PyTorch), {time.strftime('%Y-%m-%d')}", "",
        f"`{command}`: each side of each size in a fresh process; seedjax's step compiled (torch: one step, which allocates AdamW's moments), then the peak-RSS counter reset, "
        f"then {args.steps} steps; resting = RSS before them, peak = VmHWM over them, step = peak - resting; "
        "float32, AdamW, the same model, weights and inputs on both sides (benchmarks/train_step.py).", "",
        f"Machine: {protocol.machine_header(load_before)}.", "",
        HEADER, "|" + "---|" * 10, *rows, ""])
    protocol.append(text, load_before, args.max_load, not args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
