"""PyTorch generators: the DRAW family and its companions, one file each, behind models/family.py's contract.

Submodules import lazily so that `models.vocab` (pure Python) can be used without loading torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DRAW": "models.draw",
    "DRAWConfig": "models.draw",
    "AlignDRAW": "models.aligndraw",
    "AlignDRAWConfig": "models.aligndraw",
    "IWAE": "models.iwae",
    "IWAEConfig": "models.iwae",
    "FAMILIES": "models.family",
    "family": "models.family",
    "sample": "models.sampling",
    "SampleOutput": "models.sampling",
    "Step": "models.sampling",
    "Checkpoint": "models.checkpoint",
    "load_checkpoint": "models.checkpoint",
    "save_checkpoint": "models.checkpoint",
    "Vocabulary": "models.vocab",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
