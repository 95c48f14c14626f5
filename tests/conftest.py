import os

import torch

# Tests are tiny; one thread keeps them fast and deterministic on small CI machines.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")
