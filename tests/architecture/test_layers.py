"""The layering, by import analysis of every module's AST (imports inside functions count too):
models know nothing of training, the worker or the service; the worker knows no FastAPI and no service; the
service never imports torch or the models that need it; and no file outside a family's own and the registry
names a family."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from models.family import FAMILIES, family

ROOT = Path(__file__).resolve().parents[2]


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module a file imports, by absolute name: relative imports resolved against its package, and
    `from pkg import name` counted as `pkg` and `pkg.name` (a submodule, or a lazy export that loads one);
    `importlib` (or `__import__`), whose target no AST names, counts as itself."""
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):  # level 1 is the file's package, each level more one package up
            up = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*up, *([node.module] if node.module else [])])
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Name) and node.id == "__import__":
            found.add("importlib")
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def offenders(package: str, banned: tuple[str, ...], allowed: tuple[str, ...] = (),
              paths: list[Path] | None = None) -> dict[str, list[str]]:
    out = {}
    for path in modules(package) if paths is None else paths:
        bad = sorted(m for m in imports(path) if _under(m, banned) and not _under(m, allowed))
        if bad:
            out[str(path.relative_to(ROOT))] = bad
    return out


# Torch-free worker modules the service may import (the service must not pull torch in through them).
TORCH_FREE_WORKER = ("worker.protocol", "worker.queue", "worker.settings", "worker.redis_conn", "worker.heartbeat",
                     "worker.render", "worker.inputs")


@pytest.mark.parametrize(("package", "banned"), [
    ("models", ("training", "worker", "service", "fastapi", "redis", "rq")),
    ("worker", ("service", "fastapi", "starlette", "uvicorn", "training")),
    ("training", ("worker", "service", "fastapi", "redis", "rq")),
])
def test_layers_import_only_downwards(package, banned):
    assert offenders(package, banned) == {}


# What would load torch: the models but pure-Python models.vocab (models/__init__ exports lazily), the worker's
# torch side, and imports no AST can follow.
TORCH_SIDE = ("torch", "safetensors", "training", "models", "worker.jobs", "worker.registry",
              "worker.conditions", "worker.malloc", "worker.__main__", "importlib")


def test_the_service_and_its_worker_modules_never_import_torch():
    """The service, and the worker modules it imports, import nothing that loads torch (inside functions too)."""
    worker_side = [ROOT / (name.replace(".", "/") + ".py") for name in TORCH_FREE_WORKER]
    assert offenders("service", TORCH_SIDE, allowed=("models.vocab",)) == {}
    assert offenders("worker", TORCH_SIDE, allowed=("models.vocab",), paths=worker_side) == {}


def test_the_service_uses_only_torch_free_worker_modules():
    used = {m for path in modules("service") for m in imports(path) if m.startswith("worker.")}
    used = {".".join(m.split(".")[:2]) for m in used}
    assert used <= set(TORCH_FREE_WORKER), sorted(used - set(TORCH_FREE_WORKER))


def test_the_layer_check_would_catch_a_bad_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from torch import nn\n    import fastapi.routing\n")
    assert imports(bad, tmp_path) == {"torch", "torch.nn", "fastapi.routing"}
    # the ways around a name list: the package's lazy exports, a relative import, importlib
    sneaky = tmp_path / "service" / "api" / "sneaky.py"
    sneaky.parent.mkdir(parents=True)
    sneaky.write_text("def f():\n    from models import load_checkpoint\n    from ..schemas import x\n"
                      "    from . import deps\n    __import__('torch')\n")
    assert imports(sneaky, tmp_path) == {"models", "models.load_checkpoint", "service.schemas", "service.schemas.x",
                                         "service.api", "service.api.deps", "importlib"}
    found = {m for m in imports(sneaky, tmp_path) if _under(m, TORCH_SIDE) and not _under(m, ("models.vocab",))}
    assert found == {"models", "models.load_checkpoint", "importlib"}
    branch = tmp_path / "branch.py"
    branch.write_text('"""Docs may say aligndraw."""\ndef f(info):\n    return info.kind == "aligndraw"\n')
    assert family_names(branch) == ["'aligndraw'"]


# Every registered family: its kind, its class and its Config's names, and its own file.
KINDS = set(FAMILIES)
CLASSES = {name for kind in FAMILIES for name in (family(kind).__name__, family(kind).Config.__name__)}
# The families' own files, the registry, and what measures one family's own data: caption fidelity and the probe
# (alignDRAW on MNIST with captions), and the COCO task's alignDRAW.coco() sizes.
ALLOWED = {f"{spec.split(':')[0].replace('.', '/')}.py" for spec in FAMILIES.values()} | {
    "models/family.py", "training/fidelity.py", "training/probe.py", "training/tasks.py"}


def family_names(path: Path) -> list[str]:
    """Code (not docstrings or comments) that names a family: a kind string, a family or config class."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr)}
    return [ast.unparse(n) for n in ast.walk(tree) if id(n) not in docstrings and (
        (isinstance(n, ast.Constant) and n.value in KINDS) or (isinstance(n, ast.Name) and n.id in CLASSES)
        or (isinstance(n, ast.Attribute) and n.attr in CLASSES) or (isinstance(n, ast.alias) and n.name in CLASSES))]


@pytest.mark.parametrize("package", ["models", "worker", "service", "training"])
def test_no_branch_on_a_family_name_outside_its_file_and_the_registry(package):
    named = {}
    for path in modules(package):
        rel = str(path.relative_to(ROOT))
        if rel not in ALLOWED and (hits := family_names(path)):
            named[rel] = hits
    assert named == {}
