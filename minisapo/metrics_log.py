"""metrics.jsonl: one JSON record per line, appended while a run trains and read back by reports and plots.

`MetricsLogger` appends each record and flushes at once, so a crash loses nothing, and writes NaN/inf as
`null`, so the file stays valid JSON lines. A kill mid-write leaves at most a partial last line: it is
dropped with a warning naming the file when the log is written again (`MetricsLogger`, `trim_metrics`) and
skipped with one when it is read (`read_metrics`). A resumed stage first drops its records after the
checkpoint's step (`trim_metrics`) and logs those steps again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from minisapo import distributed
from minisapo.files import append_line, atomic_write, warn


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
