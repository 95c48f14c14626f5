"""Data parallelism under `torchrun`: everything here is a no-op in one plain process.

    torchrun --nproc_per_node=N -m minisapo run --preset=tiny     # N processes ("ranks"), one per GPU/CPU share

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init()` (called once by the CLI) joins the process group:
NCCL when there is a GPU per rank (rank r uses GPU LOCAL_RANK), else gloo (MINISAPO_BACKEND=gloo forces it).
What the training loops do with it:

    SFT: every rank computes the same global batch indices, takes its slice (`my_slice`), and divides its
         summed loss by the token count of the WHOLE global batch (`sum_over_ranks`); `sum_grads` then
         adds the ranks' gradients, so the update is the one of the global batch, whatever N is.
    RL:  every rank rolls out its slice of the prompts (whole groups; each prompt keeps its own seeded
         generator), uses the global row/token/chunk counts as loss normalisers, and `sum_grads`.
         Logged metrics are those of the global batch (`cat_over_ranks` gathers the scored rollouts).
    Files, evaluation, plots, prints: rank 0 only (`is_main`); the others wait at a `barrier`, or receive
         rank 0's numbers when they need them (`from_main`).

An explicit all-reduce of the gradients (not torch's DistributedDataParallel wrapper) because the loss
calls the model's `hidden_states` / `logits` directly rather than `forward`, which DDP's hooks need; one
flattened all-reduce per optimiser step is what DDP would do at the end of the step anyway.

This module imports only torch, the standard library and minisapo.files (which reads RANK and WORLD_SIZE for
the code that writes files: one reading of them, so every part agrees on which process is rank 0).
"""

from __future__ import annotations

import datetime
import os
import sys
from contextlib import contextmanager
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as tdist

from minisapo.files import env_int, env_rank

T = TypeVar("T")
TIMEOUT = datetime.timedelta(hours=2)  # ranks wait at a barrier while rank 0 evaluates (can take long)


def enabled() -> bool:
    """True inside a process group of more than one rank (under torchrun with WORLD_SIZE > 1)."""
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def world_size() -> int:
    return tdist.get_world_size() if enabled() else 1


def rank() -> int:
    return tdist.get_rank() if enabled() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def init() -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); False when not under
    torchrun (or WORLD_SIZE == 1): then nothing happens. Other ranks' stdout is silenced (stderr stays).
    A RANK or WORLD_SIZE that is not a whole number, or a RANK outside 0 .. WORLD_SIZE - 1, is a ValueError
    naming the variables (files.env_rank), before anything is written."""
    world = env_rank()[1]
    if world <= 1 or enabled():
        return enabled()
    local = env_int("LOCAL_WORLD_SIZE", world)
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= local  # one GPU per rank, else gloo
    cuda = cuda and os.environ.get("MINISAPO_BACKEND", "") != "gloo"  # MINISAPO_BACKEND=gloo: force gloo
    if cuda:
        torch.cuda.set_device(env_int("LOCAL_RANK", 0))  # "cuda" now means this rank's GPU
    tdist.init_process_group(backend="nccl" if cuda else "gloo", timeout=TIMEOUT)
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # one copy of every printed line (rank 0's)
    return True


def cleanup() -> None:
    """Wait for every rank, then leave the process group (nothing to do in one process)."""
    if enabled():
        barrier()
        tdist.destroy_process_group()


def barrier() -> None:
    if enabled():
        tdist.barrier()


def _device() -> torch.device:
    """Where collective tensors live: this rank's GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")


def my_slice(items: Sequence[T]) -> list[T]:
    """This rank's consecutive share of `items` (sizes differ by at most one, rank 0 gets the larger ones);
    concatenating the ranks' slices in rank order gives `items` back. The whole list in one process."""
    items = list(items)
    n, r = world_size(), rank()
    base, extra = divmod(len(items), n)
    start = r * base + min(r, extra)
    return items[start:start + base + (r < extra)]


def sum_over_ranks(*values):
    """The sums over ranks of a few numbers (one value in, one out); ints stay ints. Identity in one process."""
    if not enabled():
        return values[0] if len(values) == 1 else values
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    tdist.all_reduce(t)
    out = tuple(int(round(x)) if isinstance(v, int) else x for v, x in zip(values, t.tolist()))
    return out[0] if len(out) == 1 else out


def sum_stats(stats: dict, maxed: Sequence[str] = ()) -> dict:
    """{key: sum over ranks of stats[key]} (the max over ranks for the keys in `maxed`) for a dict of floats
    with the same keys on every rank. `stats` itself in one process."""
    if not enabled() or not stats:
        return stats
    keys = list(stats)  # the same order on every rank (the same code made them)
    t = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=_device())
    top = t.clone()
    tdist.all_reduce(t)
    tdist.all_reduce(top, op=tdist.ReduceOp.MAX)
    return {k: (top if k in maxed else t)[i].item() for i, k in enumerate(keys)}


def sum_grads(model: torch.nn.Module) -> None:
    """Add up the ranks' gradients (one flattened all-reduce): the loss of each rank is already divided by
    the global batch's normaliser, so the sum is the gradient of the global batch. A parameter without a
    gradient on this rank counts as zero."""
    if not enabled():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dev = _device()
    buf = flat.to(dev)
    tdist.all_reduce(buf)
    flat = buf.to(flat.device)
    i = 0
    for p in params:
        p.grad.copy_(flat[i:i + p.numel()].view_as(p.grad))
        i += p.numel()


def _cat(parts: list):
    first = parts[0]
    if torch.is_tensor(first):
        if first.dim() == 2:  # rows of different widths (e.g. response masks): pad on the right with zeros
            width = max(p.size(1) for p in parts)
            parts = [torch.nn.functional.pad(p, (0, width - p.size(1))) for p in parts]
        return torch.cat(parts, dim=0)
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts]) for k in first}
    return [x for p in parts for x in p]


def cat_over_ranks(obj):
    """Every rank's rows, in rank order (so a batch sliced with `my_slice` is whole again): obj is a CPU
    tensor (concatenated on dim 0; 2-D ones padded with zeros to the widest), a list, or a dict of those.
    Returned on every rank. `obj` itself in one process."""
    if not enabled():
        return obj
    parts = [None] * world_size()
    tdist.all_gather_object(parts, obj)
    return _cat(parts)


def from_main(fn: Callable[[], T]) -> T:
    """`fn()` computed on rank 0 only and sent to every rank (e.g. a validation record that steers which
    checkpoint the run keeps). Just `fn()` in one process."""
    if not enabled():
        return fn()
    box = [fn() if is_main() else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. builds the dataset and SID caches); the others run it afterwards
    (and find the caches). Just the block in one process."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()
