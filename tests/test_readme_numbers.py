"""The README's default-run table is what `minisapo run` prints on a fresh clone.

README.md keeps the table between two markers, with the machine it came from and the spread over seeds:

    <!-- readme-table: minisapo run | cpu AVX512 | torch 2.13.0+cpu | hit@10 sample std 0.0123 -->
    | test, 1000 users | hit@1 | ...
    <!-- /readme-table -->

The slow test runs `minisapo run` in an empty folder and compares the table it prints with that block:
digit for digit on a machine of the same CPU capability and torch version (same kernels, same numbers),
and within three of the stated seed standard deviations elsewhere (another CPU's kernels are another draw).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MARK = re.compile(r"<!-- readme-table: (?P<cmd>[^|]+)\| cpu (?P<cpu>\S+) \| torch (?P<torch>\S+) \| "
                  r"hit@10 sample std (?P<std>[\d.]+) -->\n(?P<table>.*?)<!-- /readme-table -->", re.S)


def readme_tables(text: str) -> list[dict]:
    """Every marked table of the README: its command, machine, spread and rows {name: [numbers]}."""
    return [{**m.groupdict(), "std": float(m["std"]), "rows": table_rows(m["table"])} for m in MARK.finditer(text)]


def table_rows(text: str) -> dict[str, list[float]]:
    """{first cell: the decimal numbers of the metric cells} of a Markdown table (the header skipped)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0].startswith(("test,", "---")) or set(cells[0]) <= {"-"}:
            continue
        rows[cells[0]] = [float(c) for c in cells[1:] if re.fullmatch(r"\d+\.\d+", c)]
    return rows


def differences(printed: dict, readme: dict, same_machine: bool, std: float) -> list[str]:
    """What disagrees: exactly on the same machine, else beyond 3 stated standard deviations."""
    out = []
    if set(printed) != set(readme):
        out.append(f"rows differ: printed {sorted(printed)}, README {sorted(readme)}")
    for name in set(printed) & set(readme):
        for a, b in zip(printed[name], readme[name]):
            if (a != b) if same_machine else abs(a - b) > 3 * std:
                out.append(f"{name}: printed {a}, README {b}")
    return out


def test_the_readme_marks_its_default_run_table():
    tables = readme_tables((REPO / "README.md").read_text(encoding="utf-8"))
    assert [t["cmd"].strip() for t in tables] == ["minisapo run"]
    rows = tables[0]["rows"]
    assert {"popularity", "markov", "item_knn", "oracle (the ceiling)"} <= set(rows), rows
    assert all(len(v) == 4 for v in rows.values()) and tables[0]["std"] > 0


def test_the_comparison_catches_a_changed_number():
    readme = table_rows("| a | 0.1000 | 0.2000 |\n| b | 0.3000 | 0.4000 |")
    assert differences(readme, readme, True, 0.01) == []
    moved = {"a": [0.1, 0.2001], "b": [0.3, 0.4]}
    assert differences(moved, readme, True, 0.01) == ["a: printed 0.2001, README 0.2"]
    assert differences(moved, readme, False, 0.01) == []  # elsewhere: within 3 sd
    assert differences({"a": [0.1, 0.26], "b": [0.3, 0.4]}, readme, False, 0.01) == ["a: printed 0.26, README 0.2"]


@pytest.mark.slow
def test_a_fresh_minisapo_run_prints_the_readme_table(tmp_path):
    import torch

    want = readme_tables((REPO / "README.md").read_text(encoding="utf-8"))[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "minisapo", "run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = table_rows(proc.stdout.split("the run in one table")[-1].split("Machine:")[0])
    same = torch.backends.cpu.get_cpu_capability() == want["cpu"] and torch.__version__ == want["torch"]
    assert not differences(printed, want["rows"], same, want["std"]), (same, differences(printed, want["rows"], same,
                                                                                         want["std"]))
