"""The Hyper-Bagel / Seedream acceleration recipe on the quickstart digits, stage by stage.

    python -m seedjax.pipeline --pipeline=experiments/quickstart/distill_pipeline.py[:tiny] --workdir=runs/distill
    python -m seedjax.eval.report --workdir=runs/distill --pipeline=experiments/quickstart/distill_pipeline.py

teacher (pretrain, CFG) -> cfg (guidance embedded) -> tscd (3 segments, 6 NFE) -> dmdo (6 NFE)
-> ode_pairs (made by dmdo) -> adp (1 NFE) -> adm (1 NFE); plus dmd2 (1 NFE, from adp), the
DMDX paper's baseline for ADM. Each stage starts from the previous one's checkpoint; the frozen
teacher after CFG distillation is the CFG-distilled model, carried from stage to stage.

Args: `variant` quickstart | tiny (CI), `pairs` the number of ODE pairs, `short` (SHORT_STEPS).
A teacher trained elsewhere can be reused by linking its workdir to <workdir>/teacher.
"""

from seedjax.config import parse_arg


# `short=true`: a CPU-sized run of the same chain (about a third of each stage's steps).
SHORT_STEPS = {"cfg": 200, "tscd": 300, "dmdo": 150, "adp": 200, "adm": 150, "dmd2": 150}


def get_pipeline(arg=None):
    arg = parse_arg(arg, variant="quickstart", pairs=4096, short=False)
    v = arg.variant
    pairs = 16 if v == "tiny" and arg.pairs == 4096 else arg.pairs
    q = "experiments/quickstart"
    steps = lambda name: f",steps={SHORT_STEPS[name]}" if arg.short else ""
    return [
        dict(name="teacher", config=f"{q}/pretrain.py:variant={v}"),
        dict(name="cfg", config=f"{q}/distill_cfg.py:variant={v}{steps('cfg')}", init_from="teacher"),
        dict(name="tscd", config=f"{q}/distill_tscd.py:variant={v}{steps('tscd')}", init_from="cfg"),
        dict(name="dmdo", config=f"{q}/distill_dmd.py:variant={v},dmd=dmdo{steps('dmdo')}", init_from="tscd"),
        dict(name="ode_pairs", module="seedjax.tools.ode_pairs", init_from="dmdo",
             args={"num": pairs, "batch": min(pairs, 256)}),
        dict(name="adp", config=f"{q}/distill_adp.py:variant={v}{steps('adp')}", init_from="dmdo",
             overrides={"data.path": "{root}/ode_pairs"}),
        dict(name="adm", config=f"{q}/distill_adm.py:variant={v}{steps('adm')}", init_from="adp"),
        dict(name="dmd2", config=f"{q}/distill_dmd.py:variant={v},dmd=dmd2{steps('dmd2')}", init_from="adp"),
    ]
