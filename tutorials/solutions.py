"""Your answers to tutorials/EXERCISES.md. Replace each `raise NotImplementedError` with your code, fill in
the answer slots (EX4_ONE_HIT_OF_8, THINK_ANSWERS), then

    python tutorials/exercise_checks.py            # every exercise, with a score line
    python tutorials/exercise_checks.py 1          # just exercise 1

The checker calls your functions on hidden random inputs (new ones on every run; it prints the seed, and
`--seed=N` replays a run) and compares them with its own brute-force code. Rules that matter:
* keep the function names and signatures;
* never change an input in place (work on a copy: `x = x.clone()`);
* where a docstring says "write it yourself", no minisapo function may run while your function runs; "with
  loops" means only plain Python, math and element-by-element torch (the list is in exercise_checks.py):
  `cumprod`, `prod`, `sum`, `gather`, indexing with a tensor of indices, numpy, itertools ... are a FAIL;
* your file may not import, open or run the checker.
Helpers of your own in this file are fine (the rules apply to them too). Hand in this one file: exercises 4
and 6 are plug-ins that minisapo loads from it, so nothing in minisapo/ is edited.
"""

import torch


# Exercise 1 (easy, ~10 min, 5 points) -----------------------------------------------------------
def prefix_reward(m: torch.Tensor) -> torch.Tensor:
    """Prefix-gated step reward r[i, k] = prod_{j <= k} m[i, j].   m: (B, K) float of 0/1 -> (B, K) float.

    Write it with plain `for` loops: no cumprod / cumsum / cummin, no minisapo."""
    raise NotImplementedError


# Exercise 2 (medium, ~30 min, 15 points) --------------------------------------------------------
def token_advantages_loops(advantages: torch.Tensor, steps: torch.Tensor, mask: torch.Tensor,
                           step_token_mean: bool) -> torch.Tensor:
    """Spread advantages over tokens with loops over rows and positions (no gather / one_hot / scatter,
    no minisapo):
    advantages (B,) -> every real token (mask True) gets A[i];
    advantages (B, K) -> token t gets A[i, steps[i, t]] (0 where steps is -1 or mask is False);
    with step_token_mean it gets A[i, k] * n_i / (K_i * c_ik) instead, where (row i, real tokens only)
        c_ik = tokens of step k,  n_i = tokens in any step,  K_i = number of steps with c_ik > 0.
    steps (B, T) long, mask (B, T) bool. Returns (B, T) float."""
    raise NotImplementedError


# Exercise 3 (medium, ~20 min, 10 points) --------------------------------------------------------
def interleaved_step_index(response: list[int], tokenizer, num_steps: int) -> list[int]:
    """Step of every token of ONE interleaved response (no prompt):
    <think> b0 </think> s0 <think> b1 </think> s1 ... s_{K-1} [dedup] <eos>.
    Use the simple rule "the step is the number of semantic SID tokens already written" (so the dedup
    token, after all K of them, is step K), and -1 for <eos> and everything after it. A response
    cut before its <eos> follows the same rule to its end.
    Hint: tokenizer.token_level[id] is -1 for non-SID tokens, l for level l, K for dedup;
    tokenizer.eos_id is <eos>. Write the rule yourself (no reasoning.step_index)."""
    raise NotImplementedError


# Exercise 4 (medium, ~30 min, 10 points) --------------------------------------------------------
def range_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "range") -> torch.Tensor:
    """scale_rewards="range": group-relative advantages of each column of rewards on its own,
        A[i, c] = (r[i, c] - mean of its group's column c) / (max - min of that column + 1e-4),
    and exactly 0 for every row of a group whose column c has all rewards equal.
    rewards (B,) -> (B,) (one reward per response, as GRPO's) or (B, C) -> (B, C) (per-step rewards, SAPO's).
    Rows of one group are consecutive: group g is rows g*group_size .. (g+1)*group_size - 1. Returns float.
    This is an advantage plug-in (`scale_rewards` is ignored: the function IS the scaling), so RL runs it with
    --rl.advantage=tutorials/solutions.py:range_advantages."""
    raise NotImplementedError


# By hand (before you run anything): a group of 8 rollouts with binary rewards, one hit and seven misses.
# The advantage of the hit and of a miss under scale_rewards="group" (std = the sample std, as torch.std,
# + 1e-4) and under "range". Three decimals are enough.
EX4_ONE_HIT_OF_8 = {
    "group": {"hit": None, "miss": None},
    "range": {"hit": None, "miss": None},
}


# Exercise 6 (medium, ~25 min, 10 points) --------------------------------------------------------
def reward_to_go(advantages: torch.Tensor, gamma: float) -> torch.Tensor:
    """Let step k's advantage also credit the earlier steps, discounted:
    out[i, j] = sum_{k >= j} gamma ** (k - j) * advantages[i, k].   (B, K) float -> (B, K) float
    gamma = 0 gives back `advantages`; gamma = 1 gives plain suffix sums. Write it yourself (no minisapo)."""
    raise NotImplementedError


STEP_GAMMA = 0.5  # the discount step_reward_to_go uses, in (0, 1]


def step_reward_to_go(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    """An advantage plug-in: SAPO's step advantages of `rewards` (B, K), then reward_to_go with STEP_GAMMA.
    (B, K) -> (B, K). Calling minisapo.rl.step_advantages(rewards, group_size, scale_rewards) is fine here.
    RL runs it with --rl.advantage=tutorials/solutions.py:step_reward_to_go (with per-step rewards: --algo=sapo)."""
    raise NotImplementedError


# Exercise 8 (easy, ~10 min, 10 points) ----------------------------------------------------------
def hit_at_k(ranked: list[int], target: int, k: int) -> float:
    """1.0 if `target` is among the first k items of `ranked`, else 0.0.
    Write it yourself (no minisapo.evaluate)."""
    raise NotImplementedError


def ndcg_at_k(ranked: list[int], target: int, k: int) -> float:
    """ndcg@k with one relevant item: 1 / log2(rank + 1) if the target's 1-based rank is <= k, else 0.0.
    (DCG of the list divided by the ideal DCG, which is 1/log2(2) = 1 with a single target.)
    Write it yourself (no minisapo.evaluate)."""
    raise NotImplementedError


# Exercise 9 (medium, ~25 min, 15 points) --------------------------------------------------------
def kmeans_step(x: torch.Tensor, centroids: torch.Tensor):
    """One Lloyd step of one RQ-KMeans level. x: (N, d) float (level 0: item vectors; level l: the residual
    left by levels < l), centroids: (k, d). Returns (codes, new_centroids, residual):
      codes[n]         = argmin_j ||x[n] - centroids[j]||^2      (N,) long; the lowest j on a tie
      new_centroids[j] = mean of the rows x[n] with codes[n] == j  (k, d); a centroid that got no row keeps
                         its old position
      residual[n]      = x[n] - new_centroids[codes[n]]          (N, d): what the next level clusters
    Write it yourself (no minisapo.sid). Do not change `centroids` in place."""
    raise NotImplementedError


# Exercise 10 (medium, ~20 min, 10 points) -------------------------------------------------------
def build_trie(sids: list[list[int]]):
    """A prefix trie over the items' SIDs (each a list of token ids; with dedup tokens, SIDs may differ in
    length, and no SID is a prefix of another). Return any structure you like (nested dicts work well);
    next_tokens() below is the only thing that reads it. Write it yourself (no minisapo.sid.SIDTrie)."""
    raise NotImplementedError


def next_tokens(trie, prefix: list[int]) -> list[int]:
    """Sorted token ids that may follow `prefix` (the SID tokens generated so far): [] after a complete SID;
    raise ValueError if no SID starts with `prefix` (constrained decoding must fail loudly, never fall
    back to "anything goes"). The empty prefix gives the valid first tokens."""
    raise NotImplementedError


# Exercise 11 (hard, ~40 min, 15 points) ---------------------------------------------------------
def sapo_group_loss(matches: torch.Tensor, steps: torch.Tensor, mask: torch.Tensor, logprobs: torch.Tensor,
                    old_logprobs: torch.Tensor, epsilon: float = 0.2):
    """SAPO's loss on ONE group of G rollouts, from per-step matches to the number. Returns
    (advantages (G, K), token_adv (G, T), loss: a float or a 0-d tensor):
      1. advantages[i, k] = (m[i, k] - mean_i m[., k]) / (std_i m[., k] + 1e-4), each step k on its own; std
         is the sample std (divide by G - 1, as torch.std); exactly 0 for a step whose matches are all equal;
      2. token_adv: step k's advantage on the tokens of step k only, shared among them and rescaled as in
         exercise 2 with step_token_mean=True (token weight n_i / (K_i * c_ik)); 0 for steps == -1 and
         for mask == False;
      3. loss = mean over rollouts i of ( sum over real tokens t of
                   -min(w_it * a_it, clip(w_it, 1 - epsilon, 1 + epsilon) * a_it) ) / (real tokens of i),
         with w = exp(logprobs - old_logprobs) and a = token_adv (TRL's loss_type="grpo", no KL term).
    matches (G, K) float of 0/1; steps (G, T) long; mask (G, T) bool; logprobs, old_logprobs (G, T) float.
    Write it yourself (no minisapo.rl); your own functions above are fine."""
    raise NotImplementedError


# Think answers -------------------------------------------------------------------------------------
# The "Think" questions of EXERCISES.md, in a few sentences each. The checker only counts how many are
# filled in; your teacher reads them. Exercises 5 and 7 are experiments: write what you ran and saw.
THINK_ANSWERS = {
    "1": "",
    "2": "",
    "3a": "",
    "3b": "",
    "4": "",
    "5": "",
    "6": "",
    "7": "",
    "8": "",
    "9": "",
    "10": "",
    "11": "",
}
