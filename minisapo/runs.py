"""Run directories: resolved config, metrics.jsonl, atomic checkpoints, seeding, and the safety rules.

Every command writes into `runs/<name>/`. Checkpoints are written to a temporary file and
moved into place with `os.replace`, so an interrupted run never leaves a half-written
checkpoint behind and can always resume from the last complete one.

The safety rules every command follows live here too, so SFT, RL and the CLI share them:
    check_name       a run or dataset name is one path component (nothing escapes its folder)
    load_checkpoint  torch.load(weights_only=True): a checkpoint holds tensors and plain values, never code
    check_finite     a NaN/inf loss or gradient stops training with one line naming the stage and step
    run_lock         runs/<name>/.lock: one command at a time per run directory (a folder minisapo made)
    read_metrics     a partial last line (a kill mid-write) is dropped with a warning naming the file
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minisapo import distributed
from minisapo.files import NonFiniteError, append_line, atomic_write, claim_dir, pid_alive, warn
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
    if device_problem(name):
        raise ValueError(f"--device={name} is not a device: {device_problem(name)}")
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


# ----------------------------------------------------------------------------------------------
# the run lock: one command at a time per run directory

LOCK_FILE = ".lock"
_HELD: set[str] = set()  # lock files this process holds


def _start_token(pid: int) -> str:
    """When process `pid` started (clock ticks after boot, /proc/<pid>/stat), so a lock is not mistaken for
    a live one when its PID now belongs to another process; "-" where that cannot be read (no /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return "-"


def _lock_owner(lock: Path) -> tuple[int, str] | None:
    """(PID, start token) written in a lock file ("?" when there is no token); None when it holds no PID."""
    try:
        parts = lock.read_text().split()
        return int(parts[0]), parts[1] if len(parts) > 1 else "?"
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _owner_running(owner: tuple[int, str] | None) -> bool:
    """True when the command that wrote the lock is still running: its PID is alive and started when it did."""
    if owner is None or owner[0] == os.getpid():
        return False
    pid, token = owner
    return pid_alive(pid) and (token == "-" or _start_token(pid) in (token, "-"))


class RunBusyError(ValueError):
    """Another command is using this run directory."""


@contextmanager
def run_lock(run_dir: str | Path, markers: tuple[str, ...] = ("config.json",)):
    """Hold `<run_dir>/.lock` (created with O_EXCL, holding our PID and start time) while the block runs.

    First the folder is claimed (files.claim_dir): no symbolic link in it, made by minisapo (it holds one
    of `markers`, or nothing), and temporary files of dead commands removed. A lock whose command is no
    longer running (a killed command, a PID now used by another process, unreadable contents) is taken
    over with a warning; a live one is a RunBusyError. The lock is removed at the end, and so is the run
    directory when this command created it and left it empty (a refused command leaves no trace).
    """
    run_dir = Path(run_dir)
    if not distributed.is_main():  # under torchrun rank 0 holds the lock for all the ranks
        yield run_dir
        return
    claim_dir(run_dir, markers, "a run folder")
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # deepest first
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    key = str(lock.resolve())
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            busy = key in _HELD or _owner_running(owner)
            if owner is None and not busy:  # being written right now (busy while fresh), or garbage (stale)
                try:
                    busy = time.time() - lock.stat().st_mtime < 10 and lock.stat().st_size == 0
                except FileNotFoundError:
                    continue
            if busy:
                who = "this process" if key in _HELD else f"process {owner[0] if owner else '?'}"
                raise RunBusyError(f"{run_dir} is in use by another minisapo command ({who}; lock file {lock}): "
                                   f"wait for it to finish, or use another --name; if no such command is running, "
                                   f"delete {lock}") from None
            stale = lock.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
            try:  # take over: move the stale lock aside, and check it was the one we judged stale
                os.replace(lock, stale)
            except FileNotFoundError:
                continue
            if _lock_owner(stale) != owner:  # someone else took it over meanwhile: put theirs back
                try:
                    os.link(stale, lock)
                except OSError:
                    pass
                stale.unlink(missing_ok=True)
                continue
            stale.unlink(missing_ok=True)
            why = "it holds no PID" if owner is None else f"pid {owner[0]} " + (
                "is another program now" if pid_alive(owner[0]) else "has ended")
            warn(f"{lock} was left by a command that is no longer running ({why}); taking it over")
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {_start_token(os.getpid())}\n")
        break
    else:
        raise RunBusyError(f"{run_dir}: could not take the lock {lock}; try again")
    _HELD.add(key)
    try:
        yield run_dir
    finally:
        _HELD.discard(key)
        if _lock_owner(lock) == (os.getpid(), _start_token(os.getpid())):
            lock.unlink(missing_ok=True)
        for p in created:  # folders this command created and left empty go again
            try:
                p.rmdir()
            except OSError:
                break


def check_not_busy(run_dir: str | Path) -> None:
    """A RunBusyError if another live command holds `<run_dir>/.lock` (for a run that is only read)."""
    lock = Path(run_dir) / LOCK_FILE
    if lock.exists() and (str(lock.resolve()) in _HELD or _owner_running(_lock_owner(lock))):
        raise RunBusyError(f"{run_dir} is in use by another minisapo command (lock file {lock}): wait for it to "
                           f"finish; if no such command is running, delete {lock}")


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


def _json_value(v):
    """A JSON-safe value: numpy/torch numbers -> float, NaN/inf -> None (JSON null), recursively."""
    if isinstance(v, (np.floating, np.integer)) or torch.is_tensor(v):
        v = float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return v


class MetricsLogger:
    """Appends one JSON object per line to `metrics.jsonl` (flushed at once, so a crash loses nothing).

    The file is always valid JSON lines: a NaN or inf value is written as `null` (training itself
    stops at a non-finite loss or gradient, see `check_finite`, so a null marks e.g. an undefined metric).
    A partial last line left by a kill mid-write is dropped (with a warning) before new records are added.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_line(self.path)

    def log(self, record: dict) -> None:
        if not distributed.is_main():  # under torchrun rank 0 logs the global batch's metrics
            return
        clean = {k: _json_value(v) for k, v in record.items()}
        append_line(self.path, json.dumps(clean, allow_nan=False))


def trim_metrics(path: str | Path, stage: str, keep_until: int | None) -> None:
    """Drop the `stage` records of metrics.jsonl logged after step `keep_until` (all of them when None),
    atomically; other stages' records stay. A resumed stage logs those steps again."""
    records, partial = _read_records(path)
    keep = [r for r in records if r.get("stage") != stage or (keep_until is not None and r.get("step", 0) <= keep_until)]
    if len(keep) != len(records) or partial:
        if partial:
            warn(f"{path}: dropped a partial last line (a command was killed while writing it)")
        atomic_write(path, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in keep)))


def _read_records(path: str | Path) -> tuple[list[dict], bool]:
    """(records, whether a partial last line was skipped). A bad line elsewhere is a ValueError naming it."""
    path = Path(path)
    if not path.exists():
        return [], False
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file of JSON records; move it away to start the run's "
                         f"metrics afresh") from None
    records, partial = [], False
    last = max((n for n, line in enumerate(lines) if line.strip()), default=-1)
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not isinstance(r, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if n == last:  # a kill mid-write leaves at most the last line incomplete
                partial = True
                continue
            raise ValueError(f"{path}:{n + 1} is not a JSON record ({e}); delete that line (or the file) "
                             f"and resume") from None
        records.append(r)
    return records, partial


def _drop_partial_line(path: Path) -> None:
    """Rewrite `path` without a partial last line (and with a final newline), warning when it did."""
    if not path.exists():
        return
    records, partial = _read_records(path)
    if partial:
        warn(f"{path}: dropped a partial last line (a command was killed while writing it)")
    if partial or (path.stat().st_size and not path.read_bytes().endswith(b"\n")):
        atomic_write(path, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in records)))


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl file (empty list if it does not exist). A partial last line
    (from a kill mid-write) is skipped with a warning naming the file."""
    records, partial = _read_records(path)
    if partial:
        warn(f"{path}: skipped a partial last line (a command was killed while writing it)")
    return records
