"""Where a train step's time goes, seedjax (XLA CPU) beside PyTorch, at the sizes of benchmarks.train_step.

    python -m benchmarks.profile_step [--sizes=quickstart,large,vae_small] [--steps=3] [--top=12]
        [--frameworks=seedjax,torch] [--batch=N] [--max_load=1.0] [--no-append]

The step is `benchmarks.train_step`'s (the MMDiT against diffusers' Flux; sizes of its SIZES) or,
for `vae_<size>`, `benchmarks.vae_step`'s (the image VAE against diffusers' AutoencoderKL), on both
sides (same model, weights, inputs, AdamW). After two untimed steps each side runs `--steps` steps
under its own profiler:

- seedjax: `jax.profiler.trace` with XLA's per-thunk trace events on
  (`--xla_cpu_enable_xprof_traceme=true`, set here before JAX starts). Each event is one HLO
  instruction of the compiled step (a fusion, a YNNPACK/Eigen dot, a copy); its instruction's
  `op_name` metadata says which JAX primitive it came from and in which phase: forward (`jvp(`),
  backward (`transpose(`), or neither (the optimizer update and the loss).
- PyTorch: `torch.profiler` over the same steps, self CPU time per aten op.

seedjax's instructions are also summed by model part: the models' named scopes (`MODEL_PARTS`:
attention, rope, norm, modulation, mlp), the update, and the rest. Both sides are grouped into the
same categories (`category`): attention (seedjax: the `attention` scope; torch: the SDPA kernels), matmul
(the other dots: linear layers), conv (convolutions, forward and backward), normalisation and softmax reductions, transcendental
elementwise (exp, tanh, rsqrt), other elementwise, layout (transpose, copy, concatenate, slice,
pad) and optimizer. Times are summed over threads (XLA's thunks run concurrently on the CPU
thread pool), per step; the shares are of that sum, not of the wall time.
"""

from __future__ import annotations

import os

if "xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import glob  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from benchmarks import protocol, train_step, vae_step  # noqa: E402

CATEGORIES = ("attention", "matmul", "conv", "reduction", "transcendental", "elementwise", "layout", "optimizer", "other")
LAYOUT = ("transpose", "reshape", "copy", "concatenate", "slice", "dynamic_slice", "dynamic_update_slice", "pad",
          "broadcast_in_dim", "squeeze", "expand_dims", "gather", "scatter", "convert_element_type", "select_n")
TRANSCENDENTAL = ("exp", "tanh", "logistic", "rsqrt", "sqrt", "log", "sin", "cos", "pow", "erf")
INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{[^}]*?op_name="([^"]*)"')


# --------------------------------------------------------------------------- categories


MODEL_PARTS = ("attention", "rope", "norm", "modulation", "mlp")  # the models' jax.named_scope labels


def model_part(op_name: str) -> str:
    """Which part of the model a seedjax HLO instruction belongs to, from the first name of its `op_name`
    ("jit(step)/transpose(jvp(attention))/dot_general"; a fusion's names are ';'-joined): a named scope of
    MODEL_PARTS, 'optimizer' outside the gradient (the update and the loss), else 'other layers' (the
    linear projections, embedders, the loss's forward)."""
    first = op_name.split(";")[0]
    if "jvp(" not in first and "transpose(" not in first:
        return "optimizer"
    words = set(re.findall(r"[A-Za-z_]+", first))
    return next((part for part in MODEL_PARTS if part in words), "other layers")


def category(op_name: str) -> str:
    """The category of a seedjax HLO instruction: its model part for attention and the optimizer, else
    the kind of its first primitive."""
    part = model_part(op_name)
    if part in ("attention", "optimizer"):
        return part
    primitive = op_name.split(";")[0].rsplit("/", 1)[-1]
    if primitive == "dot_general":
        return "matmul"
    if primitive == "conv_general_dilated":
        return "conv"
    if primitive.startswith(("reduce_", "argmax", "argmin", "cumsum")):
        return "reduction"
    if primitive in TRANSCENDENTAL:
        return "transcendental"
    if primitive in LAYOUT:
        return "layout"
    return "elementwise"


def torch_category(name: str) -> str:
    """The category of an aten op of the diffusers Flux step under torch.profiler."""
    n = name.lower()
    if "attention" in n or "sdpa" in n or "flash" in n:
        return "attention"
    if "foreach" in n or "adam" in n or "optimizer" in n:
        return "optimizer"
    if "conv" in n:
        return "conv"
    if re.search(r"aten::(mm|addmm|bmm|matmul|linear|baddbmm)\b", n):
        return "matmul"
    if "norm" in n or "softmax" in n or re.search(r"aten::(sum|mean|var|std|amax|max)\b", n):
        return "reduction"
    if re.search(r"aten::(exp|tanh|gelu|silu|sigmoid|rsqrt|sqrt|pow|log|sin|cos)", n):
        return "transcendental"
    if re.search(r"aten::(copy_|clone|contiguous|cat|stack|view|reshape|permute|transpose|t|slice|select|"
                 r"expand|unsqueeze|squeeze|to|_to_copy|chunk|split|narrow|unbind|flatten|empty|zeros|fill_)\b", n):
        return "layout"
    if n.startswith("aten::"):
        return "elementwise"
    return "other"


# --------------------------------------------------------------------------- seedjax


def instruction_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its op_name metadata, for every instruction that has one."""
    names = {}
    for line in hlo_text.splitlines():
        m = INSTRUCTION.match(line)
        if m:
            names.setdefault(m.group(1), m.group(2))
    return names


def profile_seedjax(side, steps: int) -> tuple[dict[str, float], dict[str, str]]:
    """Seconds per step of each HLO instruction of the compiled step (summed over threads), and their op_names."""
    import jax

    op_names = instruction_names(side.step_fn.lower(side.state, side.arrays).compile().as_text())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(steps):
                side.step()
        path = sorted(glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True))[-1]
        data = jax.profiler.ProfileData.from_file(path)
    seconds = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in op_names:
                    seconds[event.name] += event.duration_ns * 1e-9 / steps
    if not seconds:
        raise SystemExit("the JAX trace has no per-instruction events: was XLA_FLAGS set before JAX started?")
    return dict(seconds), op_names


def profile_torch(side, steps: int) -> dict[str, float]:
    """Seconds per step of each aten op (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            side.step()
    return {e.key: e.self_cpu_time_total * 1e-6 / steps for e in prof.key_averages() if e.self_cpu_time_total > 0}


# --------------------------------------------------------------------------- tables


def by_category(seconds: dict[str, float], categorize, labels=CATEGORIES) -> dict[str, float]:
    out = dict.fromkeys(labels, 0.0)
    for name, t in seconds.items():
        out[categorize(name)] += t
    return out


def top_rows(seconds: dict[str, float], describe, top: int) -> list[str]:
    total = sum(seconds.values())
    rows = []
    for name, t in sorted(seconds.items(), key=lambda kv: -kv[1])[:top]:
        rows.append(f"| `{name}` | {describe(name)} | {t * 1e3:.1f} | {100 * t / total:.1f}% |")
    return rows


def make_sides(name: str, args) -> tuple[dict, str]:
    """The size's sides (seedjax first) and the line that describes its shapes."""
    if name.startswith("vae_"):
        s = dict(vae_step.SIZES[name[4:]], **({"batch": args.batch} if args.batch else {}))
        cfg, images = vae_step.vae_config(s), vae_step.make_images(s)
        sj = vae_step.SeedjaxVAE(cfg, images)
        sides = {"seedjax": sj} | ({"torch": vae_step.TorchVAE(cfg, images, sj.export_weights())}
                                   if "torch" in args.frameworks else {})
        return sides, f"{name}: batch {s['batch']} x {s['image']}x{s['image']} images, {sj.params:,} parameters"
    s = dict(train_step.SIZES[name], **({"batch": args.batch} if args.batch else {}))
    cfg = train_step.seedjax_config(s)
    inputs = train_step.make_inputs(s, cfg)
    sj = train_step.SeedjaxSide(cfg, inputs)
    sides = {"seedjax": sj} | ({"torch": train_step.TorchSide(cfg, inputs, sj.export_weights(), "cpu", "float32")}
                               if "torch" in args.frameworks else {})
    return sides, (f"{name}: batch {s['batch']} x ({s['img_tokens']}+{s['txt_tokens']}) tokens, hidden "
                   f"{s['heads'] * s['head_dim']}")


def profile_size(name: str, args) -> str:
    sides, title = make_sides(name, args)
    sj = sides["seedjax"]
    wall = {}
    for label, side in sides.items():
        for _ in range(2):
            side.step()
        start = time.perf_counter()
        for _ in range(args.steps):
            side.step()
        wall[label] = (time.perf_counter() - start) / args.steps
    lines = [f"\n#### {title}; wall s/step unprofiled: " + ", ".join(f"{k} {v:.4f}" for k, v in wall.items()) + "\n"]
    per_side = {}
    if "seedjax" in sides:
        seconds, op_names = profile_seedjax(sj, args.steps)
        per_side["seedjax"] = by_category(seconds, lambda n: category(op_names[n]))
        lines += ["seedjax, top HLO instructions (summed over threads, per step):\n",
                  "| instruction | category: op_name (first) | ms | share |", "|---|---|---|---|",
                  *top_rows(seconds, lambda n: f"{category(op_names[n])}: `{op_names[n].split(';')[0]}`", args.top), ""]
        if not name.startswith("vae_"):  # the VAE has no named scopes
            parts = by_category(seconds, lambda n: model_part(op_names[n]), MODEL_PARTS + ("other layers", "optimizer"))
            total = sum(parts.values())
            lines += ["seedjax by model part (named scopes), ms per step:\n", "| part | ms | share |", "|---|---|---|",
                      *[f"| {part} | {t * 1e3:.1f} | {100 * t / total:.1f}% |" for part, t in parts.items()], ""]
    if "torch" in sides:
        seconds = profile_torch(sides["torch"], args.steps)
        per_side["torch"] = by_category(seconds, torch_category)
        lines += ["PyTorch, top aten ops (self CPU time, per step):\n", "| op | category | ms | share |",
                  "|---|---|---|---|", *top_rows(seconds, torch_category, args.top), ""]
    labels = list(per_side)
    lines += ["By category, ms per step (summed over threads):\n",
              "| category | " + " | ".join(labels) + (" | torch / seedjax |" if len(labels) == 2 else ""),
              "|---|" + "---|" * (len(labels) + (len(labels) == 2))]
    for cat in CATEGORIES:
        vals = [per_side[k][cat] for k in labels]
        ratio = f" | {vals[1] / vals[0]:.2f}x" if len(vals) == 2 and vals[0] > 0 else (" | -" if len(vals) == 2 else "")
        lines.append(f"| {cat} | " + " | ".join(f"{v * 1e3:.1f}" for v in vals) + ratio + " |")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.profile_step", allow_abbrev=False)
    parser.add_argument("--sizes", default="quickstart,large", help="train_step sizes, or vae_<vae_step size>")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--batch", type=int, default=0, help="override the sizes' batch (0: theirs)")
    parser.add_argument("--frameworks", default="seedjax,torch")
    protocol.add_max_load(parser)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    sizes = [x for x in args.sizes.split(",") if x]
    args.frameworks = [x for x in args.frameworks.split(",") if x]
    known = list(train_step.SIZES) + [f"vae_{x}" for x in vae_step.SIZES]
    unknown = [x for x in sizes if x not in known] + [x for x in args.frameworks
                                                                    if x not in ("seedjax", "torch")]
    if unknown or not sizes or "seedjax" not in args.frameworks or args.steps < 1 or args.top < 1 or args.batch < 0:
        parser.error(f"bad --sizes/--frameworks/--steps/--top (unknown: {unknown}; seedjax is always profiled)")
    load_before = protocol.begin(args.max_load, args.no_append)
    body = "".join(profile_size(name, args) for name in sizes)
    import jax

    table = (f"\n### Train-step profile (benchmarks/profile_step.py)\n\nMachine: {protocol.machine_header(load_before)}; "
             f"jax {jax.__version__}; {args.steps} profiled steps after 2 untimed ones.\n" + body)
    protocol.append(table, load_before, args.max_load, args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
