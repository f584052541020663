"""Where a run or an evaluation executes, in which mode, and how the record names the machine."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator

import torch


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({torch.cuda.device_count()} GPU)"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def flush_denormals() -> None:
    """CPU float arithmetic treats values under 1.2e-38 as zero (x86 FTZ and DAZ), in this thread and in every thread
    it starts later, so call it before torch's first parallel op starts the OpenMP pool. IWAE's normalised weights
    w̃_i put most of its k samples' gradients in that range, where each multiply costs this CPU a microcode assist:
    an IWAE step (batch 500, k = 50, 2 threads) ran 6× faster with it. GPUs keep their own setting."""
    torch.set_flush_denormal(True)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """--device: auto, cpu, cuda or any torch device string; one this machine lacks is a ConfigError (an error line)."""
    from training.config import ConfigError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"--device {name}: not a torch device ({str(e).splitlines()[0]})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA device; use cpu or auto")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode for the block (batch norm uses its running statistics and leaves them alone), its mode
    restored after, whatever happens: validation, per-epoch metrics and previews run in it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
