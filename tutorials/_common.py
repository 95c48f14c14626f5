"""Plumbing shared by the tutorials (nothing about recommendation lives here).

* `OUT`  where pictures (and the tutorials' small training runs) go:
         $MINISAPO_TUTORIAL_OUT, default `tutorials/out/`.
* `DATA` the data directory (`<DATA>/processed/<name>/` is written there):
         $MINISAPO_TUTORIAL_DATA, default `data/` of the repository (the same cache `minisapo` uses).
* `SAMPLES` the small Amazon fixtures committed in `data/samples/`.
* `args()` the script's `--key=value` arguments (none in a notebook, whose kernel has its own).

Relative defaults are resolved against the repository root, so a tutorial can be started from
any directory: `python tutorials/01_data.py`. Every tutorial is also a notebook in the "percent"
format (`# %%` starts a cell): VS Code, PyCharm and Jupytext open it as one, and there its pictures
are shown under the cell that draws them.
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


def in_notebook() -> bool:
    """True inside a Jupyter kernel (a tutorial opened as a notebook), False for `python tutorials/...`."""
    return "ipykernel" in sys.modules


def args() -> list[str]:
    """The `--key=value` arguments of `python tutorials/0X_....py --key=value`; none in a notebook
    (sys.argv there is the kernel's own command line)."""
    return [] if in_notebook() else sys.argv[1:]


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
    """Say where a picture went (and show it, in a notebook)."""
    print(f"  [picture] {path}")
    if in_notebook():
        from IPython.display import Image, display  # there whenever a kernel runs

        display(Image(filename=str(path)))


def takeaway(*points: str) -> None:
    """The tutorial's conclusion, one paragraph per point (built from the numbers it printed)."""
    print("\n--- Takeaway " + "-" * 87)
    for point in points:
        print(textwrap.fill(" ".join(point.split()), width=100, initial_indent="* ", subsequent_indent="  "))


def done() -> None:
    print(f"\ndone in {time.time() - _T0:.1f} s; pictures in {OUT}")
