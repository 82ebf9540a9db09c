"""Instruction editing (SeedEdit 3.0 / Seedream 4.0) on generated edit triples at 32x32 (RGB).

    python -m seedjax.main --config=experiments/seedream/edit.py --workdir=runs/edit
    python -m seedjax.main --config=experiments/seedream/edit.py:init_from=runs/scenes --workdir=runs/edit

The scenes model's MMDiT (4x4 patches -> 64 target tokens) learns to follow an instruction:
each triple's target is denoised with its one or two source images packed after it as clean
reference tokens (`seedjax.diffusion.tasks.edit_task`), their place on the leading RoPE axis set
by `model.reference_rope`. `init_from` starts from a text-to-image run of the same model
(`scenes_pretrain.py`): the T2I-pretrain -> edit pipeline. `t2i_share` > 0 trains generation and
editing jointly (Seedream 4.0): that share of the rows are digit_scenes captions, each an edit
with no source image; `digit_prompts` then judges text-to-image on held-out scene prompts beside
`edit_success` on held-out edits.

    python -m seedjax.main --config=experiments/seedream/edit.py:t2i_share=0.3 --workdir=runs/edit_joint

`manifest` trains your own edits (a JSONL manifest, `data_pipelines/sources/user_edits.py`) in
the generated triples' place, alone or jointly; no judge knows your edits, so only the text-to-
image judge of a joint run evaluates (sample grids show the edits):
    python -m seedjax.main --config=experiments/seedream/edit.py:manifest=edits.jsonl,t2i_share=0.3 --workdir=runs/mine
"""

from experiments.common import link_widths, make_tiny
from experiments.seedream.scenes_pretrain import scenes_config
import ml_collections

from seedjax.config import parse_arg
from seedjax.schema.evals import evals_config, generator_eval


def edit_config(steps: int = 4000, variant: str = "default", init_from: str = "", t2i_share: float = 0.0,
                manifest: str = ""):
    cfg = scenes_config(steps, "default")
    scenes = cfg.data.copy_and_resolve_references()
    cfg.data.source = "edit_triples"
    cfg.data.max_text_len = 64  # instructions are up to 62 bytes (edit_triples.MAX_INSTRUCTION_BYTES)
    cfg.data.edits.num_samples = 20_000
    cfg.init_from = init_from
    edits = {"source": "edit_jsonl", "path": manifest} if manifest else {"source": "edit_triples", "path": ""}
    cfg.data.source, cfg.data.path = edits["source"], edits["path"]
    # Generated triples are judged (edit success and preservation); no judge knows your own edits.
    cfg.evals = evals_config() if manifest else evals_config(edits=generator_eval("edit_triples"))
    if not 0.0 <= t2i_share < 1.0:
        raise ValueError(f"t2i_share must be in [0, 1), got {t2i_share}")
    if t2i_share > 0:
        cfg.data.mixture = ml_collections.ConfigDict({"edits": {**edits, "weight": 1.0 - t2i_share},
                                                      "scenes": {"source": "digit_scenes", "path": "", "weight": t2i_share}})
        scenes.max_text_len = cfg.data.max_text_len
        cfg.eval.data = scenes  # digit_prompts' held-out scene prompts
        cfg.evals.generator = generator_eval("digit_scenes")
    cfg.eval_every = steps
    cfg.eval.num_prompts = cfg.eval.batch_size = 70  # ten held-out triples of each edit type, on average
    if variant == "tiny":
        make_tiny(cfg)
        cfg.data.edits.num_samples = cfg.data.scenes.num_samples = 256
        cfg.eval_every = cfg.total_steps
        cfg.eval.num_prompts = cfg.eval.batch_size = 8
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} (default | tiny)")
    link_widths(cfg)
    return cfg


def get_config(arg=None):
    arg = parse_arg(arg, variant="default", steps=4000, init_from="", t2i_share=0.0, manifest="")
    return edit_config(arg.steps, arg.variant, arg.init_from, arg.t2i_share, arg.manifest)
