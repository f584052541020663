"""Suite-wide settings.

Tests run tiny models, where intra-op threads only add synchronisation, and a CI machine may be shared with a
training run: two processes each spinning 2 OpenMP threads on 2 cores made a 10 s test take 136 s. One thread
here, and (through the environment) in the worker and torchrun processes the tests start.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
