"""Your answers to tutorials/EXERCISES.md. Replace each `raise NotImplementedError` with your code, then

    python tutorials/exercise_checks.py            # every exercise
    python tutorials/exercise_checks.py 1          # just exercise 1

The checker compares your function with the library (or with the formula) on many inputs.
"""

import torch


# Exercise 1 ---------------------------------------------------------------------------------
def prefix_reward(m: torch.Tensor) -> torch.Tensor:
    """Prefix-gated step reward r[i, k] = prod_{j <= k} m[i, j], written with plain loops
    (no cumprod). m: (B, K) float of 0/1 -> (B, K) float."""
    raise NotImplementedError


# Exercise 2 ---------------------------------------------------------------------------------
def token_advantages_loops(advantages: torch.Tensor, steps: torch.Tensor, mask: torch.Tensor,
                           step_token_mean: bool) -> torch.Tensor:
    """Spread advantages over tokens with loops over rows and positions (no gather/one_hot):
    advantages (B,) -> every real token (mask True) gets A[i];
    advantages (B, K) -> token t gets A[i, steps[i, t]] (0 where steps is -1 or mask is False);
    with step_token_mean it gets A[i, k] * n_i / (K_i * c_ik) instead, where (row i, real tokens only)
        c_ik = tokens of step k,  n_i = tokens in any step,  K_i = number of steps with c_ik > 0.
    Returns (B, T) float."""
    raise NotImplementedError


# Exercise 3 ---------------------------------------------------------------------------------
def interleaved_step_index(response: list[int], tokenizer, num_steps: int) -> list[int]:
    """Step of every token of ONE interleaved response (no prompt):
    <think> b0 </think> s0 <think> b1 </think> s1 ... s_{K-1} [dedup] <eos>.
    Use the simple rule "the step is the number of semantic SID tokens already written" (capped at
    K-1, so the dedup token joins the last step), and -1 for <eos> and everything after it.
    Hint: tokenizer.token_level[id] is -1 for non-SID tokens, l for level l, K for dedup."""
    raise NotImplementedError


# Exercise 6 ---------------------------------------------------------------------------------
def reward_to_go(advantages: torch.Tensor, gamma: float) -> torch.Tensor:
    """Let step k's advantage also credit the earlier steps, discounted:
    out[i, j] = sum_{k >= j} gamma ** (k - j) * advantages[i, k].   (B, K) -> (B, K)
    gamma = 0 gives back `advantages`; gamma = 1 gives plain suffix sums."""
    raise NotImplementedError
