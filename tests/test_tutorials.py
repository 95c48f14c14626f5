"""The tutorials run top to bottom and draw their pictures; the exercise checker accepts right answers.

Every script runs as a subprocess in a temporary working directory, with its pictures going to
$MINISAPO_TUTORIAL_OUT and its data to $MINISAPO_TUTORIAL_DATA (one shared temporary data folder, so
later scripts reuse the processed dataset as they would on a student's machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"

# script -> pictures it must write into $MINISAPO_TUTORIAL_OUT
EXPECTED = {
    "01_data.py": ["01_oracle_distribution.png", "01_splits.png"],
    "02_semantic_ids.py": ["02_item_vectors.png", "02_sid_tree.png"],
    "03_model_and_decoding.py": ["03_grammar_mask.png"],
    "04_reasoning_and_sft.py": ["04_steps_blocks_first.png", "04_steps_interleaved.png", "04_sft_curves.png"],
    "05_grpo_vs_sapo.py": ["05_token_credit.png", "05_rl_curves.png"],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tutorial_data")


def run_script(script: str, cwd: Path, data_dir: Path, *args: str, extra_env: dict | None = None):
    env = {**os.environ, "MINISAPO_TUTORIAL_OUT": str(cwd / "out"), "MINISAPO_TUTORIAL_DATA": str(data_dir),
           "MPLBACKEND": "Agg", "TQDM_DISABLE": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, str(TUTORIALS / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_every_tutorial_is_listed():
    scripts = sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
    assert scripts == sorted(EXPECTED), "a tutorial was added or renamed: update EXPECTED"
    readme = (TUTORIALS / "README.md").read_text()
    for s in scripts:
        assert s in readme, f"{s} is not described in tutorials/README.md"


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_tutorial_runs(script, data_dir, tmp_path):
    proc = run_script(script, tmp_path, data_dir)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    for name in EXPECTED[script]:
        path = tmp_path / "out" / name
        assert path.exists() and path.stat().st_size > 1000, f"{script} did not write {name}"
    assert "done in" in proc.stdout


# The exercise checker (tutorials/exercise_checks.py): stubs, instructor key and planted bugs are in
# tests/test_exercises.py.
