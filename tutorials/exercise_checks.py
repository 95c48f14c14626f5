"""Checks for tutorials/EXERCISES.md.

    python tutorials/exercise_checks.py          # every checkable exercise
    python tutorials/exercise_checks.py 1 4      # only exercises 1 and 4

Your answers are read from tutorials/solutions.py (or the file named by $MINISAPO_SOLUTIONS).
Each check prints PASS, FAIL (with the first difference) or TODO (not implemented yet);
the exit code is 0 only when every selected check passes.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import traceback
from pathlib import Path

import _common as C
import numpy as np
import torch

from minisapo import rl


def load_solutions():
    path = Path(os.environ.get("MINISAPO_SOLUTIONS") or Path(__file__).with_name("solutions.py"))
    spec = importlib.util.spec_from_file_location("solutions", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def same(name: str, got, want, atol: float = 1e-5) -> None:
    got, want = torch.as_tensor(got, dtype=torch.float32), torch.as_tensor(want, dtype=torch.float32)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not torch.allclose(got, want, atol=atol):
        bad = (got - want).abs().argmax().item()
        raise AssertionError(f"{name}: got\n{got}\nexpected\n{want}\n(first big difference at flat index {bad})")


# ----------------------------------------------------------------------------------------------
def check_1(sol) -> None:
    """prefix_reward == rl.reward_prefix on every 0/1 pattern, K = 1..4."""
    for K in range(1, 5):
        m = torch.tensor(list(itertools.product([0.0, 1.0], repeat=K)))  # (2^K, K)
        same(f"prefix_reward, K={K}", sol.prefix_reward(m), rl.reward_prefix(m))


def check_2(sol) -> None:
    """token_advantages_loops == rl.token_advantages on random inputs (sequence and step advantages)."""
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        B, T, K = 6, 12, 3
        steps = torch.randint(-1, K, (B, T), generator=g)
        mask = torch.rand(B, T, generator=g) > 0.2
        for adv in (torch.randn(B, generator=g), torch.randn(B, K, generator=g)):
            for stm in (False, True):
                want = rl.token_advantages(adv, steps, mask, step_token_mean=stm)
                same(f"token_advantages_loops (trial {trial}, adv {tuple(adv.shape)}, step_token_mean={stm})",
                     sol.token_advantages_loops(adv, steps, mask, stm), want)


def check_3(sol) -> None:
    """interleaved_step_index == reasoning.step_index on every interleaved teacher response of the tiny world."""
    from minisapo.config import make_config
    from minisapo.pipeline import load_stack
    from minisapo.reasoning import build_examples, step_index

    cfg = make_config({"data_dir": str(C.DATA), "reasoning.layout": "interleaved"}, preset="tiny")
    stack = load_stack(cfg)
    ds, K = stack.dataset, stack.table.num_levels
    examples = build_examples(ds, stack.table, stack.tokenizer, ds.splits["train"], cfg.reasoning, verbose=False)
    for n, (_, response) in enumerate(examples):
        want = step_index(torch.tensor([response]), stack.tokenizer, K, has_prompt=False)[0].tolist()
        got = list(sol.interleaved_step_index(response, stack.tokenizer, K))
        if got != want:
            raise AssertionError(f"example {n}: {stack.tokenizer.decode(response)}\n got  {got}\n want {want}")


def check_4(_sol) -> None:
    """scale_rewards="range" in minisapo/rl.py: (r - group mean) / (group max - group min + 1e-4), 0 if max == min."""
    if "range" not in rl.SCALE_REWARDS:
        raise NotImplementedError('add "range" to rl.SCALE_REWARDS and handle it in rl._group_advantages')
    rl.rl_config("sapo", scale_rewards="range")  # the config check accepts it
    g = torch.Generator().manual_seed(0)
    G = 5
    for rewards in (torch.randint(0, 2, (4 * G, 3), generator=g).float(), torch.rand(4 * G, 3, generator=g)):
        rewards[:G] = 1.0  # one group with no variance at all
        r = rewards.numpy().reshape(-1, G, 3)
        rng = r.max(1, keepdims=True) - r.min(1, keepdims=True)
        want = np.where(np.isclose(rng, 0), 0.0, (r - r.mean(1, keepdims=True)) / (rng + 1e-4)).reshape(-1, 3)
        same("step_advantages(.., 'range')", rl.step_advantages(rewards, G, "range"), want)
        same("sequence_advantages(.., 'range')", rl.sequence_advantages(rewards[:, 0], G, "range"), want[:, 0])


def check_6(sol) -> None:
    """reward_to_go against the formula, and its two special cases."""
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(7, 4, generator=g)
    same("reward_to_go(adv, 0)", sol.reward_to_go(adv, 0.0), adv)
    same("reward_to_go(adv, 1)", sol.reward_to_go(adv, 1.0), adv.flip(1).cumsum(1).flip(1))
    for gamma in (0.5, 0.9):
        want = torch.zeros_like(adv)
        for j in range(adv.size(1)):
            for k in range(j, adv.size(1)):
                want[:, j] += gamma ** (k - j) * adv[:, k]
        same(f"reward_to_go(adv, {gamma})", sol.reward_to_go(adv, gamma), want)


CHECKS = {1: check_1, 2: check_2, 3: check_3, 4: check_4, 6: check_6}


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    wanted = [int(a) for a in argv] or list(CHECKS)
    sol = load_solutions()
    ok = True
    for n in wanted:
        if n not in CHECKS:
            print(f"exercise {n}: nothing to check automatically (see EXERCISES.md for what to look at)")
            continue
        try:
            CHECKS[n](sol)
            print(f"exercise {n}: PASS  ({CHECKS[n].__doc__.splitlines()[0]})")
        except NotImplementedError as e:
            ok = False
            print(f"exercise {n}: TODO  {str(e) or 'not implemented yet (tutorials/solutions.py)'}")
        except AssertionError as e:
            ok = False
            print(f"exercise {n}: FAIL  {e}")
        except Exception:  # a crash in the student's code: show where
            ok = False
            print(f"exercise {n}: ERROR\n{traceback.format_exc()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
