"""The training process's CPU float mode."""

import subprocess
import sys

PROBE = """
import torch
from training.device import flush_denormals
{setup}
torch.set_num_threads(2)
x = torch.full((1 << 21,), 1e-30)  # large enough that the product is split over the pool's threads
denormal = torch.tensor([1], dtype=torch.int32).view(torch.float32)  # 1.4e-45 from its bits, not parsed from text
print(int(((x * 1e-10) != 0).sum()), int((denormal * 1.0 != 0).sum()))
"""


def _run(setup: str) -> str:
    return subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                          check=True).stdout.split()


def test_flush_denormals_zeroes_denormal_results_and_inputs_in_every_thread():
    assert _run("pass") == [str(1 << 21), "1"]  # the default: 1e-40 is a denormal, kept
    assert _run("flush_denormals()") == ["0", "0"]  # FTZ (results) and DAZ (inputs), main and pool threads alike


ENTRY = """
import runpy, sys, torch
import training.evaluate

def probe(args):  # stands in for the subcommand: what float mode did `python -m training` leave it?
    denormal = torch.tensor([1], dtype=torch.int32).view(torch.float32)
    print(int((denormal * 1.0 != 0).sum()))
    return 0

training.evaluate.main = probe
sys.argv = ["training", "evaluate", "nowhere"]
runpy.run_module("training", run_name="__main__", alter_sys=True)
"""


def test_python_m_training_flushes_denormals_before_its_subcommand_runs():
    out = subprocess.run([sys.executable, "-c", ENTRY], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0"]  # a denormal input read as 0 (DAZ): the entry point set the mode before main()
