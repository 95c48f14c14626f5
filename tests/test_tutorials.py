"""The tutorials run top to bottom and draw their pictures; the exercise checker accepts right answers.

Every script runs as a subprocess in a temporary working directory, with its pictures going to
$MINISAPO_TUTORIAL_OUT and its data to $MINISAPO_TUTORIAL_DATA (one shared temporary data folder, so
later scripts reuse the processed dataset as they would on a student's machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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


REFERENCE = '''
import torch

def prefix_reward(m):
    out = torch.zeros_like(m)
    for i in range(m.size(0)):
        ok = 1.0
        for k in range(m.size(1)):
            ok = ok * float(m[i, k])
            out[i, k] = ok
    return out

def token_advantages_loops(adv, steps, mask, step_token_mean):
    B, T = steps.shape
    out = torch.zeros(B, T)
    for i in range(B):
        for t in range(T):
            if not mask[i, t]:
                continue
            if adv.dim() == 1:
                out[i, t] = adv[i]
            elif steps[i, t] >= 0:
                k = int(steps[i, t])
                out[i, t] = adv[i, k]
                if step_token_mean:
                    c = [sum(1 for u in range(T) if mask[i, u] and steps[i, u] == j) for j in range(adv.size(1))]
                    out[i, t] *= sum(c) / (sum(1 for x in c if x > 0) * c[k])
    return out

def interleaved_step_index(response, tokenizer, num_steps):
    out, written, ended = [], 0, False
    for x in response:
        ended = ended or x == tokenizer.eos_id
        if ended:
            out.append(-1)
            continue
        out.append(min(written, num_steps - 1))
        if 0 <= tokenizer.token_level[x] < num_steps:
            written += 1
    return out

def reward_to_go(adv, gamma):
    out = adv.clone()
    for j in range(adv.size(1) - 2, -1, -1):
        out[:, j] = adv[:, j] + gamma * out[:, j + 1]
    return out
'''


def test_exercise_checker(data_dir, tmp_path):
    stubs = run_script("exercise_checks.py", tmp_path, data_dir, "1", "6")
    assert stubs.returncode == 1 and stubs.stdout.count("TODO") == 2, stubs.stdout + stubs.stderr
    ref = tmp_path / "reference.py"
    ref.write_text(textwrap.dedent(REFERENCE))
    good = run_script("exercise_checks.py", tmp_path, data_dir, "1", "2", "3", "6",
                      extra_env={"MINISAPO_SOLUTIONS": str(ref)})
    assert good.returncode == 0 and good.stdout.count("PASS") == 4, good.stdout + good.stderr
    ref.write_text(textwrap.dedent(REFERENCE).replace("ok = ok * float(m[i, k])", "ok = float(m[i, k])"))
    wrong = run_script("exercise_checks.py", tmp_path, data_dir, "1", extra_env={"MINISAPO_SOLUTIONS": str(ref)})
    assert wrong.returncode == 1 and "FAIL" in wrong.stdout, wrong.stdout + wrong.stderr
