"""The acceleration recipe on the Seedream scenes teacher (digit_scenes, 32x32 RGB).

    python -m seedjax.pipeline --pipeline=experiments/seedream/distill_pipeline.py --workdir=runs/scenes_distill
    python -m seedjax.eval.report --workdir=runs/scenes_distill --pipeline=experiments/seedream/distill_pipeline.py

The stages of experiments/quickstart/distill_pipeline.py, with the teacher of
experiments/seedream/scenes_pretrain.py; prompt accuracy is the GenEval-style scene check
(digit, color, count, position). Not measured yet (see BENCHMARKS.md for the quickstart run).
"""

from seedjax.config import parse_arg


def get_pipeline(arg=None):
    arg = parse_arg(arg, pairs=8192)
    s = "experiments/seedream"
    return [
        dict(name="teacher", config=f"{s}/scenes_pretrain.py"),
        dict(name="cfg", config=f"{s}/distill_cfg.py", init_from="teacher"),
        dict(name="tscd", config=f"{s}/distill_tscd.py", init_from="cfg"),
        dict(name="dmdo", config=f"{s}/distill_dmd.py:dmd=dmdo", init_from="tscd"),
        dict(name="ode_pairs", module="seedjax.tools.ode_pairs", init_from="dmdo", args={"num": arg.pairs}),
        dict(name="adp", config=f"{s}/distill_adp.py", init_from="dmdo", overrides={"data.path": "{root}/ode_pairs"}),
        dict(name="adm", config=f"{s}/distill_adm.py", init_from="adp"),
        dict(name="dmd2", config=f"{s}/distill_dmd.py:dmd=dmd2", init_from="adp"),
    ]
