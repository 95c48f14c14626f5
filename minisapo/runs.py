"""Run directories: resolved config, metrics.jsonl, atomic checkpoints, seeding.

Every command writes into `runs/<name>/`. Checkpoints are written to a temporary file and
moved into place with `os.replace`, so an interrupted run never leaves a half-written
checkpoint behind and can always resume from the last complete one.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so the same seed gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)`, then move the file into place with os.replace (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as pretty JSON, atomically."""
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_checkpoint(path: str | Path, obj: dict) -> None:
    """torch.save `obj` atomically (tmp file + os.replace)."""
    atomic_write(path, lambda p: torch.save(obj, p))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict | None:
    """Load a checkpoint written by `save_checkpoint`; None when there is none yet."""
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location=map_location, weights_only=False)


def load_weights(model: torch.nn.Module, state: dict, where: str | Path) -> None:
    """`model.load_state_dict(state)`, with an error that says what to do when the checkpoint was made
    for another vocabulary or model size (e.g. the dataset's SID/tokenizer cache was rebuilt since)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise ValueError(f"{where} does not fit this model: it was trained with another vocabulary or model size "
                         f"(the dataset's SIDs/tokenizer or the model settings changed since). Start a new run, or "
                         f"rebuild with the settings in the run's config.json ({first})") from None


class MetricsLogger:
    """Appends one JSON object per line to `metrics.jsonl` (flushed at once, so a crash loses nothing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict) -> None:
        clean = {k: (float(v) if isinstance(v, (np.floating, np.integer)) or torch.is_tensor(v) else v)
                 for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")


def trim_metrics(path: str | Path, stage: str, keep_until: int | None) -> None:
    """Drop the `stage` records of metrics.jsonl logged after step `keep_until` (all of them when None),
    atomically; other stages' records stay. A resumed stage logs those steps again."""
    records = read_metrics(path)
    keep = [r for r in records if r.get("stage") != stage or (keep_until is not None and r.get("step", 0) <= keep_until)]
    if len(keep) != len(records):
        atomic_write(path, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in keep)))


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl file (empty list if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
