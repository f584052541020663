"""The layering, by import analysis of every module's AST (imports inside functions count too):
models know nothing of training, the worker or the service; the worker knows no FastAPI and no service; the
service never imports torch or the models that need it; and no file outside a family's own and the registry
names a family."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def offenders(package: str, banned: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for path in modules(package):
        bad = sorted(m for m in imports(path) if any(m == b or m.startswith(b + ".") for b in banned))
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
    ("service", ("torch", "training", "safetensors", "models.family", "models.sampling", "models.checkpoint",
                 "models.draw", "models.aligndraw", "models.iwae", "models.bounds", "worker.jobs",
                 "worker.registry", "worker.conditions")),
])
def test_layers_import_only_downwards(package, banned):
    assert offenders(package, banned) == {}


def test_the_service_uses_only_torch_free_worker_modules():
    used = {m for path in modules("service") for m in imports(path) if m.startswith("worker.")}
    used = {".".join(m.split(".")[:2]) for m in used}
    assert used <= set(TORCH_FREE_WORKER), sorted(used - set(TORCH_FREE_WORKER))


def test_the_layer_check_would_catch_a_bad_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from torch import nn\n    import fastapi.routing\n")
    assert imports(bad) == {"torch", "torch.nn", "fastapi.routing"}
    branch = tmp_path / "branch.py"
    branch.write_text('"""Docs may say aligndraw."""\ndef f(info):\n    return info.kind == "aligndraw"\n')
    assert family_names(branch) == ["'aligndraw'"]


KINDS = {"draw", "aligndraw", "iwae"}
CLASSES = {"DRAW", "AlignDRAW", "IWAE", "DRAWConfig", "AlignDRAWConfig", "IWAEConfig"}
# The families' own files, the registry, and what measures one family's own data: caption fidelity and the probe
# (alignDRAW on MNIST with captions), and the COCO task's alignDRAW.coco() sizes.
ALLOWED = {"models/draw.py", "models/aligndraw.py", "models/iwae.py", "models/family.py",
           "training/fidelity.py", "training/probe.py", "training/tasks.py"}


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
