"""Post-training measurements on a quickstart run: reward model, SFT, RLHF (with and without the regulariser).

    python -m benchmarks.posttrain --root=runs/quickstart [--noreg=runs/quickstart/rlhf_noreg]
        [--num_prompts=300] [--max_load=1.0] [--no-append]

Every generator is judged the same way: `--num_prompts` held-out prompts (the data's test split),
the sampler of its config (30 Euler steps, CFG 3), the independent digit classifier
(prompt accuracy, Frechet distance in its feature space), the SFT target share, and the reward
model's alignment P(yes). Printed and appended to BENCHMARKS.md (unless --no-append, or unless
the 1-minute load average at the start was above --max_load):

1. the reward model's held-out accuracy per head and kind (its workdir's last eval);
2. its agreement with the digit classifier on generated images (pretrain generator): the
   share of images where P(yes) > 0.5 equals "the classifier reads the prompted digit", and
   the AUC of the reward for that verdict;
3. SFT: the pretrain generator vs the SFT generator (target share, prompt accuracy, FD);
4. RLHF: the curve over its eval steps, from the SFT generator (step 0), with and without the
   flow-matching regulariser.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from benchmarks import protocol


def read_config(workdir: str):
    from seedjax.config import config_from_json

    cfg = config_from_json(os.path.join(workdir, "config.json"))
    cfg.model.axes_dims_rope = tuple(cfg.model.axes_dims_rope)
    return cfg


def eval_rows(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if any(k.startswith("eval/") for k in r)]


def judge(bundle, batch: dict, reward_model, target: str, seed: int) -> dict:
    """Generate for the prompts of `batch` with a generator's bundle (its config's sampler) and
    score: classifier, Frechet distance, target share, reward."""
    from seedjax.eval.judges.classifier import get_classifier
    from seedjax.eval.samples import generate_all, score_images, still_images
    from seedjax.stages.sft import target_share

    cfg = bundle.config
    generate, params = bundle.generate_fn()
    prompts = {k: v for k, v in batch.items() if k != "image"}
    t0 = time.perf_counter()
    images, _ = generate_all(generate, params, prompts, jax.random.key(seed), 100)
    images = still_images(images)
    seconds = time.perf_counter() - t0
    out = score_images(images, batch, cfg.data.image_size)
    out["target_share"] = target_share(images, prompts, target)
    alignment = reward_scores(reward_model, images, batch)
    out["reward_p_yes"] = float(np.mean(1 / (1 + np.exp(-alignment))))
    out["correct"] = get_classifier(cfg.data.image_size).predict(images) == batch["label"]
    out["alignment_score"] = alignment
    out["generate_s"] = seconds
    return out


def reward_scores(reward_model, images: np.ndarray, batch: dict) -> np.ndarray:
    from flax import nnx

    head = reward_model.head_index("alignment")
    graphdef, params = nnx.split(reward_model)
    score = jax.jit(lambda p, x, t, m: nnx.merge(graphdef, p).score(x, t, m)[:, head])
    return np.concatenate([np.asarray(score(params, images[i:i + 100], batch["tokens"][i:i + 100],
                                            batch["text_mask"][i:i + 100])) for i in range(0, len(images), 100)])


def table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/quickstart")
    parser.add_argument("--noreg", default="", help="an RLHF workdir trained with rlhf.fm_weight=0")
    parser.add_argument("--num_prompts", type=int, default=300)
    parser.add_argument("--no-append", action="store_true")
    protocol.add_max_load(parser)
    args = parser.parse_args(argv)
    load_before = protocol.begin(args.max_load, args.no_append)

    import data_pipelines
    from seedjax import inference
    from seedjax.stages.reward import agreement_with_classifier
    from seedjax.stages.sft import target_share
    from seedjax.train.params import load_reward_model

    root = args.root
    reward_dir, sft_dir = os.path.join(root, "reward"), os.path.join(root, "sft")
    sections = []

    # 1. Reward model: held-out accuracy per head.
    last = eval_rows(reward_dir)[-1]
    keys = sorted(k[len("eval/"):] for k in last if k.startswith("eval/"))
    rows = [[k.split("/")[0], k.split("/")[1], last[f"eval/{k}"]] for k in keys]
    sections.append(("Reward model: held-out accuracy per head (real test digits, perturbed captions, "
                     f"degraded images; step {last['step']})", table(["head", "metric", "value"], rows)))

    # 2-3. Generators on the same held-out prompts.
    sft_cfg = read_config(sft_dir)
    target = sft_cfg.sft.target or sft_cfg.data.filter
    batch = data_pipelines.make_eval_batch(sft_cfg.data, num=args.num_prompts, seed=sft_cfg.seed)
    reward_model = load_reward_model(reward_dir)
    judged = {}
    for name, workdir, entry in [("pretrain (EMA)", os.path.join(root, "pretrain"), "ema"),
                                 ("SFT (EMA)", sft_dir, "ema")]:
        bundle = inference.load(workdir, use_ema=entry == "ema")
        judged[name] = judge(bundle, batch, reward_model, target, seed=1)
        print(f"{name}: prompt_accuracy={judged[name]['prompt_accuracy']:.3f} "
              f"frechet_distance={judged[name]['frechet_distance']:.3f} "
              f"target_share={judged[name]['target_share']:.3f} ({judged[name]['generate_s']:.0f} s)", flush=True)
    pre = judged["pretrain (EMA)"]
    agree = agreement_with_classifier(pre["alignment_score"], pre["correct"])
    sections.append((f"Reward model vs the independent digit classifier on {args.num_prompts} generated images "
                     "(pretrain generator, held-out prompts)",
                     table(["classifier accuracy", "agreement (P(yes)>0.5 == classifier correct)", "AUC"],
                           [[agree["judge_accuracy"], agree["agreement"], agree.get("auc", float("nan"))]])))
    real_share = target_share(batch["image"], batch, target)
    rows = [[name, j["target_share"], j["prompt_accuracy"], j["frechet_distance"], j["reward_p_yes"]]
            for name, j in judged.items()]
    rows.append(["real held-out digits", real_share, "", "", ""])
    sections.append((f"SFT on the curated subset `{sft_cfg.data.filter}` ({sft_cfg.total_steps} steps, "
                     f"lr {sft_cfg.optimizer.lr:g}): target share `{target}` on held-out prompts",
                     table(["generator", "target share", "prompt accuracy", "Frechet distance", "reward P(yes)"],
                           rows)))

    # 4. RLHF curves (step 0 = the SFT generator's EMA weights, which RLHF starts from).
    base = judged["SFT (EMA)"]
    for label, workdir in [("with the flow-matching regulariser", os.path.join(root, "rlhf")),
                           ("without the regulariser (rlhf.fm_weight=0)", args.noreg)]:
        if not workdir or not os.path.isdir(workdir):
            continue
        cfg = read_config(workdir)
        rows = [[0, base["prompt_accuracy"], base["frechet_distance"], base["reward_p_yes"], ""]]
        rows += [[r["step"], r["eval/prompt_accuracy"], r["eval/frechet_distance"], r.get("eval/reward/alignment", ""),
                  r["eval/reward"]] for r in eval_rows(workdir)]
        sections.append((f"RLHF {label}: fm_weight={cfg.rlhf.fm_weight:g}, {cfg.rlhf.num_prompts} prompts/step, "
                         f"{cfg.rlhf.num_steps}-step sampler, K={cfg.rlhf.grad_steps}, stop window "
                         f"{tuple(cfg.rlhf.stop_window)}, lr {cfg.optimizer.lr:g}; eval on {cfg.eval.num_prompts} "
                         "held-out prompts",
                         table(["step", "prompt accuracy (classifier)", "Frechet distance", "alignment P(yes)",
                                "composite reward"], rows)))

    text = "\n\n".join(f"**{title}**\n\n{body}" for title, body in sections)
    print(text)
    if not args.no_append:
        machine = f"{jax.devices()[0].platform}, jax {jax.__version__}"
        protocol.append(
            f"\n### Post-training (SFT, reward model, RLHF) on the quickstart run, {time.strftime('%Y-%m-%d')}\n\n"
            f"`python -m benchmarks.posttrain --root={root}"
            f"{' --noreg=' + args.noreg if args.noreg else ''} --num_prompts={args.num_prompts}` on {machine}.\n\n"
            f"Machine: {protocol.machine_header(load_before)}.\n\n" + text + "\n", load_before, args.max_load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
