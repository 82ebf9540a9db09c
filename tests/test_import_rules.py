"""The import rules of the layout (../shared/DESIGN.md, docs/internals.md), checked on the source.

Every `import` statement of seedjax/ and data_pipelines/ is parsed (no module is executed):
- layers: a module imports only from its own layer or lower ones (LAYERS, lowest first);
- no stage imports another stage (what two stages share lives in models/, diffusion/, train/);
- data_pipelines never imports seedjax, except its cli/; models, diffusion, kernels and
  parallel never import data_pipelines (train and above may);
- project imports sit at the top of a module, except the few places listed in FUNCTION_LEVEL
  with the reason they must import late (third-party optional heavy dependencies such as
  torch, diffusers, ray or av may be imported where they are used).
A test that finds a forbidden edge prints the file, the line and the rule.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Lowest first. A module may import its own layer and every layer before it.
LAYERS = (
    ("seedjax.config", "seedjax.schema", "seedjax.cli"),
    ("seedjax.kernels", "seedjax.parallel"),
    ("seedjax.models", "seedjax.diffusion", "seedjax.interop"),
    ("seedjax.train",),
    ("seedjax.distill",),  # the distillation stages' shared library
    ("seedjax.stages", "seedjax.inference"),
    ("seedjax.eval", "seedjax.serving", "seedjax.tools", "seedjax.main", "seedjax.pipeline", "seedjax.export",
     "seedjax.serve"),
)

NO_DATA = ("seedjax.models", "seedjax.diffusion", "seedjax.kernels", "seedjax.parallel", "seedjax.interop")

# Project imports that must stay inside a function (file:module), and why.
FUNCTION_LEVEL: dict[str, str] = {
    "seedjax/main.py:seedjax.train.loop": "after jax.distributed.initialize: nothing may touch the backend before it",
    "data_pipelines/__init__.py:data_pipelines.core.pipeline": "Grain loads JAX; configs use data_pipelines JAX-free",
    "data_pipelines/cli/prepare.py:data_pipelines.cli.ray_runner": "Ray is optional (--runner=ray)",
    "data_pipelines/cli/prepare.py:seedjax.train.params.load_codec": "JAX only for --vae (latent shards)",
    "data_pipelines/cli/ray_runner.py:seedjax.train.params.load_codec": "runs in the Ray worker process",
}


def modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        yield name.removesuffix(".__init__"), path


def imports(path: pathlib.Path):
    """(line, imported module, inside a function?) for every import statement of a file."""
    tree = ast.parse(path.read_text(), str(path))
    functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
    for node in ast.walk(tree):
        inner = id(node) in functions
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, inner
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from seedjax.models import codec` imports seedjax.models.codec
                yield node.lineno, f"{node.module}.{alias.name}", inner


def layer_of(module: str) -> int | None:
    for rank, layer in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in layer):
            return rank
    return None


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["seedjax", "stages"] else None


def violations() -> list[str]:
    found = []
    for name, path in [*modules("seedjax"), *modules("data_pipelines")]:
        where = path.relative_to(ROOT)
        for line, target, inner in imports(path):
            top = target.split(".")[0]
            if top not in ("seedjax", "data_pipelines"):
                continue  # third-party imports: optional heavy ones (torch, diffusers, ray, av, ...) may sit in functions
            if inner and f"{where}:{target}" not in FUNCTION_LEVEL:
                found.append(f"{where}:{line}: imports {target} inside a function (move it to the top)")
            if top == "data_pipelines" and name.startswith(NO_DATA):
                found.append(f"{where}:{line}: {name} imports {target}: models, diffusion, kernels and parallel "
                             f"take arrays, not data")
            if name.startswith("data_pipelines") and top == "seedjax" and not name.startswith("data_pipelines.cli"):
                found.append(f"{where}:{line}: data_pipelines core imports {target} (only data_pipelines.cli may)")
            mine, theirs = layer_of(name), layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                found.append(f"{where}:{line}: {name} (layer {mine}) imports {target} (layer {theirs}), a higher layer")
            if stage_of(name) and stage_of(target) and stage_of(name) != stage_of(target):
                found.append(f"{where}:{line}: stage {stage_of(name)} imports stage {stage_of(target)}")
    return found


def test_import_rules_hold():
    found = violations()
    assert not found, "forbidden imports:\n" + "\n".join(found)


def test_the_checker_finds_a_forbidden_edge(tmp_path, monkeypatch):
    """The rules are not vacuous: a models/ module importing a stage, a stage importing another
    stage and a function-level project import are each reported."""
    fake = tmp_path / "seedjax"
    (fake / "models").mkdir(parents=True)
    (fake / "stages").mkdir()
    (fake / "models" / "bad.py").write_text("from seedjax.stages import pretrain\n")
    (fake / "stages" / "one.py").write_text("from seedjax.stages.two import x\n\ndef f():\n    import seedjax.models\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = "\n".join(violations())
    assert "seedjax.models.bad (layer 2) imports seedjax.stages.pretrain (layer 5)" in found
    assert "stage one imports stage two" in found
    assert "imports seedjax.models inside a function" in found
