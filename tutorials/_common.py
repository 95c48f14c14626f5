"""Plumbing shared by the tutorials (nothing about recommendation lives here).

* `OUT`  where pictures (and the tutorials' small training runs) go:
         $MINISAPO_TUTORIAL_OUT, default `tutorials/out/`.
* `DATA` the data directory (`<DATA>/processed/<name>/` is written there):
         $MINISAPO_TUTORIAL_DATA, default `data/` of the repository (the same cache `minisapo` uses).
* `SAMPLES` the small Amazon fixtures committed in `data/samples/`.

Relative defaults are resolved against the repository root, so a tutorial can be started from
any directory: `python tutorials/01_data.py`.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # lets `python tutorials/0X_....py` run without `pip install -e .`
    sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # pictures go to files; no window needed

OUT = Path(os.environ.get("MINISAPO_TUTORIAL_OUT") or REPO / "tutorials" / "out")
DATA = Path(os.environ.get("MINISAPO_TUTORIAL_DATA") or REPO / "data")
SAMPLES = REPO / "data" / "samples"

_T0 = time.time()


def start(title: str) -> None:
    """Banner, output folder, seeds, and one CPU thread (tiny models run faster on one thread)."""
    import torch

    from minisapo.runs import seed_everything

    torch.set_num_threads(1)
    seed_everything(0)
    OUT.mkdir(parents=True, exist_ok=True)
    print("=" * 100)
    print(title)
    print(f"pictures -> {OUT}    data -> {DATA}")
    print("=" * 100)


def section(title: str, text: str = "") -> None:
    """A numbered heading with a short explanation, so the printout reads like the script."""
    print(f"\n--- {title} " + "-" * max(0, 95 - len(title)))
    if text:
        print(textwrap.fill(" ".join(text.split()), width=100))
    print()


def saved(path) -> None:
    print(f"  [picture] {path}")


def done() -> None:
    print(f"\ndone in {time.time() - _T0:.1f} s; pictures in {OUT}")
