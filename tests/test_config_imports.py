"""Loading an experiment config imports no JAX (configs build on seedjax.schema, seedjax.config
and data_pipelines' config).

Every `experiments/**/*.py` with a `get_config` is loaded, plain and `:tiny`, in one fresh
subprocess (one interpreter start for all of them). An import hook notes the first import of a
heavy package and the stack of files that led to it, so a failure names the config and the
import chain that pulled the package in.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from tests.runner import ROOT

HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "chex", "tensorstore")

# Runs in the subprocess: argv[1] = JSON list of config specs; prints one JSON report.
PROBE = r"""
import importlib.abc, json, sys, traceback

HEAVY = set(json.loads(sys.argv[2]))
chains = {}  # heavy top-level package -> the import chain of its first import


class Tripwire(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        if top in HEAVY and top not in chains:
            frames = [f for f in traceback.extract_stack()[:-1] if not f.filename.startswith("<frozen")]
            chains[top] = [f"{f.filename}:{f.lineno}: {f.line}" for f in frames]
        return None


sys.meta_path.insert(0, Tripwire())

def heavy_loaded():
    return sorted({m.partition(".")[0] for m in sys.modules} & HEAVY)

report = {"modules": {}, "configs": {}, "errors": {}}
for module in ("seedjax", "seedjax.schema.models", "seedjax.schema.training", "seedjax.schema.stages",
               "data_pipelines", "seedjax.config"):
    __import__(module)
    report["modules"][module] = {top: chains[top] for top in heavy_loaded()}

from seedjax.config import load_config

for spec in json.loads(sys.argv[1]):
    before = set(heavy_loaded())
    try:
        path, _, override = spec.partition("|")  # spec|key=value: with an override (derived values follow)
        load_config(path, dict([override.split("=", 1)]) if override else None)
    except Exception as e:
        report["errors"][spec] = f"{type(e).__name__}: {e}"
    report["configs"][spec] = {top: chains[top] for top in heavy_loaded() if top not in before}
print(json.dumps(report))
"""


def config_files() -> list[str]:
    """experiments/**/*.py files that are config files (they define get_config)."""
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "experiments", "**", "*.py"), recursive=True)):
        with open(path) as f:
            if "\ndef get_config(" in f.read():
                out.append(os.path.relpath(path, ROOT))
    return out


def format_chains(found: dict) -> str:
    return "\n".join(f"  {top} imported via:\n    " + "\n    ".join(chain) for top, chain in found.items())


def test_loading_every_experiment_config_imports_no_jax():
    files = config_files()
    assert "experiments/quickstart/pretrain.py" in files and len(files) >= 20, files
    specs = [spec for path in files for spec in (path, f"{path}:tiny")]
    specs.append("experiments/quickstart/pretrain.py:tiny|data.source=digit_scenes")  # derived values follow
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(specs), json.dumps(HEAVY)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    assert not report["errors"], report["errors"]
    assert set(report["configs"]) == set(specs)
    # The modules config files import: the package, the schema, data_pipelines (its config and
    # channel count), seedjax.config.
    heavy_modules = {m: found for m, found in report["modules"].items() if found}
    assert not heavy_modules, "\n".join(f"import {m} loads a JAX package:\n{format_chains(found)}"
                                        for m, found in heavy_modules.items())
    heavy_configs = {spec: found for spec, found in report["configs"].items() if found}
    assert not heavy_configs, "\n".join(f"loading {spec} imports a JAX package:\n{format_chains(found)}"
                                        for spec, found in heavy_configs.items())


def test_models_package_turns_eager_sharding_off():
    """Variables are created unsharded (the loop places them); the setting lives in seedjax.models,
    which every module that creates variables imports, now that `import seedjax` loads no Flax."""
    import seedjax.models  # noqa: F401
    from flax import nnx

    assert not nnx.using_eager_sharding()
