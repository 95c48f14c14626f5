"""Run directories: resolved config, atomic checkpoints, seeding, and the safety rules.

Every command writes into `runs/<name>/`. Checkpoints are written to a temporary file and
moved into place with `os.replace`, so an interrupted run never leaves a half-written
checkpoint behind and can always resume from the last complete one.

The safety rules every command follows, shared by SFT, RL and the CLI, live here and beside it
(check_name in files.py, run_lock in lock.py, read_metrics in metrics_log.py):
    check_name       a run or dataset name is one path component (nothing escapes its folder)
    load_checkpoint  torch.load(weights_only=True): a checkpoint holds tensors and plain values, never code
    check_finite     a NaN/inf loss or gradient stops training with one line naming the stage and step
    run_lock         runs/<name>/.lock: one command at a time per run directory (a folder minisapo made)
    read_metrics     a partial last line (a kill mid-write) is dropped with a warning naming the file
"""

from __future__ import annotations

import math
import pickle
import random
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minisapo.files import NonFiniteError, atomic_write
from minisapo.model import pick_device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so the same seed gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(path: str | Path, obj: dict) -> None:
    """torch.save `obj` atomically (tmp file + os.replace)."""
    atomic_write(path, lambda p: torch.save(obj, p))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    need: tuple[str, ...] = ("model",)) -> dict | None:
    """Load a checkpoint written by `save_checkpoint`; None when there is none yet.

    Always `weights_only=True`: only tensors and plain Python values are unpickled, so a crafted
    file cannot run code. An unreadable file (truncated, empty, a directory, not a checkpoint, or
    missing one of the `need` keys) is a ValueError naming the file and what to do.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    fix = "delete it to start that stage afresh (or start a new run with another --name)"
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory, not a file: {fix}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", x).strip() for x in str(e).splitlines()]
        why = next((x for x in lines if "global" in x.lower()), None)  # a class or function it would call
        if why is None:
            why = next((x for x in reversed(lines) if x and "Weights only load failed" not in x), type(e).__name__)
            raise ValueError(f"checkpoint {path} is unreadable (truncated, corrupt or not a minisapo checkpoint: "
                             f"{why[:160]}); {fix}") from None
        raise ValueError(f"checkpoint {path} holds more than tensors and plain values, so it was not loaded "
                         f"(minisapo loads weights only, never code: {why[:160]}); {fix}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, AttributeError, TypeError,
            IndexError, KeyError, UnicodeDecodeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise ValueError(f"checkpoint {path} is unreadable (truncated, corrupt or not a minisapo checkpoint: "
                         f"{first[:160]}); {fix}") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} is not a minisapo checkpoint (it holds a {type(ckpt).__name__}); {fix}")
    missing = [k for k in need if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} has no {', '.join(repr(k) for k in missing)} entry: not a minisapo "
                         f"checkpoint of this stage; {fix}")
    if "model" in need and not (isinstance(ckpt["model"], dict)
                                and all(torch.is_tensor(v) for v in ckpt["model"].values())):
        raise ValueError(f"checkpoint {path}: its 'model' entry is not a state dict of tensors; {fix}")
    if "step" in need and (not isinstance(ckpt["step"], int) or isinstance(ckpt["step"], bool) or ckpt["step"] < 0):
        raise ValueError(f"checkpoint {path}: its 'step' entry is not a step number; {fix}")
    return ckpt


def load_optimizer(optimizer: torch.optim.Optimizer, state: Any, where: str | Path) -> None:
    """`optimizer.load_state_dict(state)` with an error naming the checkpoint when it does not fit."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise ValueError(f"checkpoint {where}: its optimizer state does not fit this model ({str(e)[:120]}); "
                         f"delete it to start that stage afresh, or start a new run with another --name") from None


# ----------------------------------------------------------------------------------------------
# NaN / inf: stop at once, keep the last good checkpoint


def check_finite(stage: str, step: int, hint: str = "", **values) -> None:
    """Raise NonFiniteError if any of `values` (loss, grad_norm, ... as floats or tensors) is NaN or inf.

    Called before the optimiser step, so the weights and the last checkpoint stay as they were.
    """
    for name, v in values.items():
        if v is None:
            continue
        x = float(v.detach().float().sum()) if torch.is_tensor(v) else float(v)
        if not math.isfinite(x):
            raise NonFiniteError(f"{stage}: the {name} is {x} at step {step}: training stopped before that update "
                                 f"and the last good checkpoint is kept{'; ' + hint if hint else ''}")


@contextmanager
def nonfinite_context(stage: str, step: int):
    """Name the stage and step in a NonFiniteError raised inside (e.g. by sampling from diverged weights)."""
    try:
        yield
    except NonFiniteError as e:
        raise NonFiniteError(f"{stage}: at step {step}, {e}") from None


def check_finite_weights(model: torch.nn.Module, stage: str, step: int, hint: str = "") -> None:
    """Raise NonFiniteError if a parameter holds NaN or inf (checked before a checkpoint is written)."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise NonFiniteError(f"{stage}: parameter {name} holds NaN/inf at step {step}: no checkpoint was written "
                                 f"for it and the last good checkpoint is kept{'; ' + hint if hint else ''}")


def rng_state() -> dict:
    """The global torch / numpy (/ CUDA) RNG states as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def device_problem(name: str) -> str | None:
    """What to pass instead when `name` is not a device name minisapo takes, else None (whether this machine
    has that device is `check_device`'s question, asked when a stage starts)."""
    try:
        ok = name == "auto" or torch.device(name).type in ("cpu", "cuda", "mps")
    except (RuntimeError, ValueError):
        ok = False
    return None if ok else "use auto, cpu, cuda, cuda:N or mps"


def check_device(name: str) -> torch.device:
    """The torch device for `name` ('auto', 'cpu', 'cuda', 'cuda:1', 'mps'), or a ValueError saying what
    to pass instead when that device is not available on this machine."""
    name = str(name)
    if name == "auto":
        return pick_device("auto")
    if why := device_problem(name):
        raise ValueError(f"--device={name} is not a device: {why}")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device={name}: CUDA is not available on this machine (torch {torch.__version__}); "
                             f"use --device=cpu or --device=auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device={name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"use --device=cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"--device={name}: MPS is not available on this machine; use --device=cpu or --device=auto")
    return dev


def load_weights(model: torch.nn.Module, state: dict, where: str | Path) -> None:
    """`model.load_state_dict(state)`, with an error that says what to do when the checkpoint was made
    for another vocabulary or model size (e.g. the dataset's SID/tokenizer cache was rebuilt since)."""
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{where} holds NaN/inf weights ({bad[0]}{' and more' if len(bad) > 1 else ''}): that training "
                         f"diverged; start a new run with a lower learning rate")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise ValueError(f"{where} does not fit this model: it was trained with another vocabulary or model size "
                         f"(the dataset's SIDs/tokenizer or the model settings changed since). Start a new run, or "
                         f"rebuild with the settings in the run's config.json ({first})") from None

