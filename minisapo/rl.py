"""Reinforcement learning after SFT: GRPO and SAPO in one loop.

Read this file top to bottom: rewards -> advantages -> per-token credit -> PPO-clip loss ->
the loop. Everything before `train_rl` is a pure tensor function you can call on your own numbers.

One RL step
-----------
    prompts (batch_size of them) --sample--> G = num_generations responses each  (B = batch_size * G rows)
    responses --parse--> per-step matches m[i, k] = 1[SID token k of response i == target token k]
    matches --reward--> rewards, (B,) for a scalar reward or (B, K) for a per-step reward
    rewards --advantage--> A, (B,) for "sequence" (GRPO) or (B, K) for "step" (SAPO)
    A --token_advantages--> one number per response token, (B, T)
    num_iterations x PPO-clip update on  -min(w A, clip(w, 1-eps, 1+eps_high) A) + beta * KL_k3

How the presets (`ALGOS`) relate to textbook GRPO and to the SAPO paper (arXiv 2605.17648)
------------------------------------------------------------------------------------------
- `grpo`: textbook GRPO (DeepSeekMath) with a binary reward: 1 if the whole SID (dedup token
  included) equals the target's, else 0. One group-normalised scalar per response, broadcast to
  every response token (thinking tokens, SID tokens, `<eos>`).
- `grpo_prefix`: GRPO with SIDReasoner's scalar prefix reward: with n = number of leading SID
  levels that match, r = 0 if n = 0 else 2^-(K-n), i.e. 0 / 0.25 / 0.5 / 1 for K = 3 (our
  generalisation to other K halves the reward for every missing trailing level).
- `sapo`: the paper. Per-step position reward m[i,k] = 1[s_ik = t_k] (not prefix-gated), a
  group-relative advantage computed independently for each step k, applied only to the tokens of
  step k (thinking block k and SID token k; a dedup token belongs to the last step), each step's
  token terms divided by the step's length |y_i^(k)| (`step_token_mean`).
- `sapo_seq_adv` (paper ablation "step reward, sequence advantage"): the same per-step rewards,
  averaged over the K steps into one scalar per response, then treated like GRPO.
- `sapo_prefix` (paper ablation "step advantage, prefix-gated reward"): step k is rewarded only
  when steps 0..k all match, r[i,k] = prod_{j<=k} m[i,j].

What is simplified
------------------
- A reward is computed from the parsed response only; a malformed response (the grammar makes
  them rare: it can only happen when `max_completion_length` cuts a response) gets 0 everywhere.
- One optimiser step per PPO iteration over the whole batch (optionally split into
  `gradient_accumulation_steps` chunks); no learning-rate schedule, no reward model, no value net.
- Dropout is off during RL (the model is kept in eval mode, as TRL's `disable_dropout`), so with
  `num_iterations = 1` the importance ratio is exactly 1 and PPO-clip reduces to REINFORCE with
  a group baseline (plus the KL term).
- `step_token_mean` gives step k's tokens the weight 1/|y_i^(k)| (the paper's per-step mean),
  rescaled so that a response keeps its total token weight: token weight n_i / (K_i |y_i^(k)|)
  with n_i its tokens inside steps. Every step then counts equally whatever its length, and the
  chosen `loss_type` normaliser (applied on top, TRL's) scales SAPO exactly as it scales GRPO. All
  presets use the same `loss_type` (default "grpo"), so GRPO-vs-SAPO comparisons differ only in
  reward and advantage, not in effective step size.
- Budgets: `RLConfig`'s defaults are the paper's prototype (G = 16, temperature 1, clip 0.2,
  beta 0.001, one update per batch) except the learning rate (3e-5 for these ~1M-parameter
  models). The CPU presets in config.py use G = 8, 8 prompts x 60 steps and beta 0.04: with less
  KL, at that budget, both algorithms drifted and lost hit@10 (README, Results).
- Rewards of invalid responses are 0; `frac_reward_zero_std` counts a group as "no signal" when
  its advantage is zero everywhere (for a step advantage: every step's rewards are equal), always
  from the group std (TRL uses the batch std for it under `scale_rewards="batch"`).
  `frac_exact_zero_std` is the same count for the exact-match reward, logged for every algorithm,
  so GRPO's no-signal rate can be read off a SAPO run too.
- `entropy` is the entropy of the grammar-constrained distribution, averaged over response
  tokens, forced tokens (entropy 0) included, so it reads lower than an unconstrained entropy.

Option and metric names follow TRL's GRPOTrainer (`num_generations`, `beta`, `epsilon`,
`epsilon_high`, `num_iterations`, `scale_rewards`, `loss_type`, `max_completion_length`;
`reward`, `reward_std`, `frac_reward_zero_std`, `kl`, `entropy`, `clip_ratio/*`,
`completions/mean_length`), so numbers can be compared with TRL runs.

NOT TRL's `loss_type="sapo"`: there (and in verl) "SAPO" is Qwen's *Soft Adaptive* Policy
Optimization, a soft-gated replacement of the clip. Ours is *Step-Aligned* Policy Optimization,
an **advantage** estimator (`advantage="step"`) that works with any `loss_type` below.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from minisapo.generate import response_logprobs, sample
from minisapo.reasoning import step_index
from minisapo.runs import (MetricsLogger, check_finite, load_checkpoint, load_weights, nonfinite_context,
                           save_checkpoint, trim_metrics, write_json)


# ----------------------------------------------------------------------------------------------
# Config and presets


@dataclass
class RLConfig:
    """RL hyperparameters (names follow TRL's GRPOConfig where TRL has the knob)."""

    # --- what is rewarded and how credit is assigned
    reward: str = "position"  # "exact" | "position" (paper) | "prefix" (gated) | "sidreasoner" (0/.25/.5/1)
    advantage: str = "step"  # "sequence" (GRPO: one scalar per response) | "step" (SAPO: one per step)
    step_token_mean: bool = True  # step advantage: each step weighs the same whatever its length (1/|y_i^(k)|)
    scale_rewards: str = "group"  # "group" (group std) | "batch" (std over batch) | "none"; mean is per group
    # --- sampling
    num_generations: int = 16  # G: responses sampled per prompt (the group); the paper uses 16
    temperature: float = 1.0  # sampling temperature (the loss uses the same one)
    max_completion_length: int | None = None  # cap on response tokens; None = the grammar's own cap
    batch_size: int = 8  # prompts per RL step (rows per step = batch_size * num_generations)
    # --- the surrogate
    loss_type: str = "grpo"  # "grpo" | "bnpo" | "dr_grpo" | "dapo" (TRL's normalisers, see policy_loss)
    epsilon: float = 0.2  # lower clip: ratio >= 1 - epsilon
    epsilon_high: float | None = None  # upper clip: ratio <= 1 + epsilon_high (None = epsilon; DAPO: 0.28)
    beta: float = 0.001  # KL(pi || pi_ref) coefficient, k3 estimator; 0 = no reference model needed
    num_iterations: int = 1  # mu: PPO updates per batch of rollouts (1 = on-policy, ratio == 1)
    # --- optimisation
    learning_rate: float = 3e-5  # AdamW learning rate (constant); 1e-4 drifted on the CPU presets
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    gradient_accumulation_steps: int = 1  # split each batch into this many chunks per optimiser step
    # --- schedule and bookkeeping
    max_steps: int = 100  # RL steps (each = one batch of prompts, sampled once)
    eval_every: int = 25  # evaluate every this many steps (0 = only at start and end)
    save_every: int = 25  # checkpoint every this many steps (the final step is always saved)


ALGOS: dict[str, dict[str, object]] = {
    # textbook GRPO: exact-match reward, one advantage per response broadcast to all tokens
    "grpo": {"reward": "exact", "advantage": "sequence", "step_token_mean": False},
    # GRPO with SIDReasoner's scalar prefix reward (0 / 0.25 / 0.5 / 1)
    "grpo_prefix": {"reward": "sidreasoner", "advantage": "sequence", "step_token_mean": False},
    # the paper: per-position step reward, per-step advantage on that step's tokens only
    "sapo": {"reward": "position", "advantage": "step", "step_token_mean": True},
    # paper ablation: step rewards (averaged over steps), but a sequence-level advantage
    "sapo_seq_adv": {"reward": "position", "advantage": "sequence", "step_token_mean": False},
    # paper ablation: step advantage with a prefix-gated step reward
    "sapo_prefix": {"reward": "prefix", "advantage": "step", "step_token_mean": True},
}

REWARDS = ("exact", "position", "prefix", "sidreasoner")
STEP_REWARDS = ("position", "prefix")  # rewards with one value per step; the others are scalars
ADVANTAGES = ("sequence", "step")
SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def rl_config(algo: str | None = None, **overrides) -> RLConfig:
    """An RLConfig for a named preset in `ALGOS`, with keyword overrides on top."""
    cfg = RLConfig()
    if algo is not None:
        if algo not in ALGOS:
            raise ValueError(f"unknown algo {algo!r}; choose one of {', '.join(ALGOS)}")
        overrides = {**ALGOS[algo], **overrides}
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ValueError(f"RLConfig has no field {k!r}")
        setattr(cfg, k, v)
    check_config(cfg)
    return cfg


def check_config(cfg: RLConfig) -> None:
    """Fail early, with a message that says what to change."""
    for name, value, allowed in [("reward", cfg.reward, REWARDS), ("advantage", cfg.advantage, ADVANTAGES),
                                 ("scale_rewards", cfg.scale_rewards, SCALE_REWARDS),
                                 ("loss_type", cfg.loss_type, LOSS_TYPES)]:
        if value not in allowed:
            raise ValueError(f"rl.{name}={value!r} is not one of {', '.join(allowed)}")
    if cfg.num_generations < 2:
        raise ValueError("rl.num_generations must be >= 2: group-relative advantages need a group")
    if cfg.num_iterations < 1 or cfg.batch_size < 1 or cfg.gradient_accumulation_steps < 1:
        raise ValueError("rl.num_iterations, rl.batch_size and rl.gradient_accumulation_steps must be >= 1")
    rows = cfg.batch_size * cfg.num_generations
    if rows % cfg.gradient_accumulation_steps:
        raise ValueError(f"rl.gradient_accumulation_steps={cfg.gradient_accumulation_steps} must divide "
                         f"batch_size * num_generations = {rows} (equal chunks keep every row's weight equal)")


# ----------------------------------------------------------------------------------------------
# Rewards: from parsed SIDs to per-step matches to rewards


def step_matches(pred_sids: Sequence[Sequence[int] | None], target_sids: Sequence[Sequence[int]],
                 num_steps: int) -> torch.Tensor:
    """m[i, k] = 1[predicted SID token k == target SID token k]  ->  FloatTensor (B, K).

    `pred_sids[i]` is response i's SID token ids (None or [] for an invalid/malformed response:
    its row is all 0). `target_sids[i]` are the target's ids. A dedup token (level K) belongs to
    the last step: step K-1 matches only if the last semantic token AND the dedup tail match.
    """
    B, K = len(pred_sids), num_steps
    m = torch.zeros(B, K)  # (B, K)
    for i, (pred, tgt) in enumerate(zip(pred_sids, target_sids)):
        if not pred:
            continue
        pred, tgt = list(pred), list(tgt)
        for k in range(K):
            if k < K - 1:
                m[i, k] = float(len(pred) > k and len(tgt) > k and pred[k] == tgt[k])
            else:
                m[i, k] = float(pred[K - 1:] == tgt[K - 1:] and len(tgt) >= K)
    return m


def reward_exact(m: torch.Tensor) -> torch.Tensor:
    """1 if every step matches (the whole SID incl. dedup), else 0: (B, K) -> (B,)."""
    return m.prod(dim=-1)


def reward_position(m: torch.Tensor) -> torch.Tensor:
    """The paper's per-step reward m[i,k], not gated by earlier steps: (B, K) -> (B, K)."""
    return m.clone()


def reward_prefix(m: torch.Tensor) -> torch.Tensor:
    """Prefix-gated step reward prod_{j<=k} m[i,j]: (B, K) -> (B, K)."""
    return m.cumprod(dim=-1)


def reward_sidreasoner(m: torch.Tensor) -> torch.Tensor:
    """SIDReasoner's scalar prefix reward: n leading matched levels -> 0 if n == 0 else 2^-(K-n).

    K = 3 gives 0 / 0.25 / 0.5 / 1 for n = 0..3; other K halve the reward per missing level.
    (B, K) -> (B,)
    """
    K = m.size(-1)
    n = m.cumprod(dim=-1).sum(dim=-1)  # (B,) number of leading matched levels
    return torch.where(n > 0, torch.pow(2.0, n - K), torch.zeros_like(n))


def compute_rewards(m: torch.Tensor, reward: str, advantage: str) -> torch.Tensor:
    """Rewards in the shape the advantage needs: (B,) for "sequence", (B, K) for "step".

    A per-step reward used with a sequence advantage is averaged over the K steps; a scalar
    reward used with a step advantage is given to every step.
    """
    fn = {"exact": reward_exact, "position": reward_position, "prefix": reward_prefix,
          "sidreasoner": reward_sidreasoner}[reward]
    r = fn(m)  # (B,) or (B, K)
    if advantage == "sequence":
        return r.mean(dim=-1) if r.dim() == 2 else r  # (B,)
    return r if r.dim() == 2 else r.unsqueeze(-1).expand_as(m).clone()  # (B, K)


# ----------------------------------------------------------------------------------------------
# Advantages: group-relative, per response (GRPO) or per step (SAPO)


def _group_advantages(r: torch.Tensor, G: int, scale_rewards: str) -> torch.Tensor:
    """Group-relative advantages of each column of r (B, C) independently -> (B, C)."""
    B, C = r.shape
    if B % G:
        raise ValueError(f"{B} rows is not a multiple of group_size={G}")
    r = r.float()
    grouped = r.view(B // G, G, C)  # (groups, G, C)
    mean = grouped.mean(dim=1, keepdim=True)  # (groups, 1, C): the mean is always per group
    group_std = grouped.std(dim=1, keepdim=True)  # (groups, 1, C) unbiased, like torch.std in TRL
    adv = grouped - mean  # (groups, G, C)
    if scale_rewards == "group":
        adv = adv / (group_std + 1e-4)
    elif scale_rewards == "batch":
        adv = adv / (r.std(dim=0) + 1e-4)  # (C,) one std per column over the whole batch
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards={scale_rewards!r}; choose group, batch or none")
    zero = torch.isclose(group_std, torch.zeros_like(group_std))  # every row of the group equal
    adv = torch.where(zero, torch.zeros_like(adv), adv)  # exact 0, never NaN or rounding noise
    return adv.reshape(B, C)


def sequence_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    """GRPO: A_i = (r_i - mean_group r) / (std + 1e-4).  rewards (B,) -> (B,)

    Rows of one group are contiguous (B = prompts * group_size). `scale_rewards`: "group" divides
    by the group's std, "batch" by the std of all B rewards, "none" does not divide (Dr. GRPO).
    A group whose rewards are all equal gets advantage 0.
    """
    return _group_advantages(rewards.reshape(-1, 1), group_size, scale_rewards).reshape(-1)


def step_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    """SAPO: A_ik = (r_ik - mean_group r_.k) / (std_group r_.k + 1e-4), each step k on its own.

    rewards (B, K) -> (B, K). "batch" divides step k by the std of column k over the batch.
    """
    if rewards.dim() != 2:
        raise ValueError(f"step rewards must be (B, K), got shape {tuple(rewards.shape)}")
    return _group_advantages(rewards, group_size, scale_rewards)


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Groups that give no learning signal: all rewards equal (every step equal for (B, K)).

    rewards (B,) or (B, K) -> BoolTensor (B // group_size,)
    """
    r = rewards.reshape(rewards.size(0), -1).float()
    std = r.view(-1, group_size, r.size(1)).std(dim=1)  # (groups, C)
    return torch.isclose(std, torch.zeros_like(std)).all(dim=1)


# ----------------------------------------------------------------------------------------------
# Per-token credit: which tokens receive which advantage


def token_advantages(advantages: torch.Tensor, steps: torch.Tensor, mask: torch.Tensor,
                     step_token_mean: bool = False) -> torch.Tensor:
    """Spread advantages over response tokens -> (B, T).

    advantages (B,)   (GRPO): every real response token (mask, incl. `<eos>`) gets A_i.
    advantages (B, K) (SAPO): token t gets A[i, steps[i, t]]; tokens with step -1 (prompt, pad,
        `<eos>`, anything outside a step) get 0. With `step_token_mean` (the paper's 1/|y_i^(k)|),
        step k's tokens get A[i, k] * n_i / (K_i * |y_i^(k)|): every step carries the same total
        weight whatever its length (|y_i^(k)| = tokens of step k in response i), and the response
        keeps its total token weight n_i (= its tokens inside steps; K_i = its steps), so each
        `loss_type` normaliser scales SAPO and GRPO alike and the two differ only in credit.
    steps (B, T) from `reasoning.step_index`; mask (B, T) bool, real response tokens.
    """
    mask = mask.bool()
    if advantages.dim() == 1:
        return advantages[:, None].expand(mask.shape) * mask  # (B, T)
    B, K = advantages.shape
    inside = (steps >= 0) & mask  # (B, T)
    idx = steps.clamp(min=0, max=K - 1)  # (B, T)
    tok = advantages.gather(1, idx)  # (B, T) advantage of each token's step
    if step_token_mean:
        onehot = torch.nn.functional.one_hot(idx, K) * inside[..., None]  # (B, T, K)
        counts = onehot.sum(dim=1)  # (B, K) tokens per step, |y_i^(k)|
        n = counts.sum(dim=1, keepdim=True)  # (B, 1) tokens inside steps, n_i
        k_i = (counts > 0).sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1) steps present, K_i
        tok = tok * n / (k_i * counts.clamp(min=1).gather(1, idx))
    return tok * inside


# ----------------------------------------------------------------------------------------------
# The surrogate: PPO-clip per token, k3 KL, TRL's loss aggregations


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, loss_type: str = "grpo", epsilon: float = 0.2,
                epsilon_high: float | None = None, beta: float = 0.0,
                ref_logprobs: torch.Tensor | None = None, max_completion_length: int | None = None,
                num_items_in_batch: int | None = None, gradient_accumulation_steps: int = 1):
    """Token-level PPO-clip loss with TRL GRPOTrainer's aggregation -> (loss, stats).

    logprobs (B, T) with grad; old_logprobs, advantages, ref_logprobs (B, T); mask (B, T).
        w = exp(logprobs - old_logprobs)
        l_t = -min(w A_t, clip(w, 1 - epsilon, 1 + epsilon_high) A_t) + beta * KL_t
        KL_t = exp(ref - logp) - (ref - logp) - 1          (k3, always >= 0)
    Aggregation (M = mask, L = l * M), exactly as TRL:
        grpo:    mean_i( sum_t L_it / sum_t M_it ) / gradient_accumulation_steps
        bnpo:    sum L / sum M / gradient_accumulation_steps        (this chunk's tokens)
        dr_grpo: sum L / (B * max_completion_length) / gradient_accumulation_steps
        dapo:    sum L / num_items_in_batch   (tokens in the whole batch, all chunks together)
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    m = mask.float()  # (B, T)
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T) w
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + eps_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)  # (B, T)
    kl = None
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("beta != 0 needs ref_logprobs")
        d = ref_logprobs - logprobs
        kl = torch.exp(d) - d - 1  # (B, T) k3 estimator of KL(pi || pi_ref)
        per_token = per_token + beta * kl
    L = per_token * m
    if loss_type == "grpo":
        loss = (L.sum(-1) / m.sum(-1).clamp(min=1.0)).mean() / gradient_accumulation_steps
    elif loss_type == "bnpo":
        loss = L.sum() / m.sum().clamp(min=1.0) / gradient_accumulation_steps
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        loss = L.sum() / (L.size(0) * max_completion_length) / gradient_accumulation_steps
    elif loss_type == "dapo":
        n = m.sum() if num_items_in_batch is None else torch.as_tensor(float(num_items_in_batch))
        loss = L.sum() / n.clamp(min=1.0)
    else:
        raise ValueError(f"loss_type={loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")

    with torch.no_grad():  # TRL's clip metrics: a clip only "counts" when it removes the gradient
        n_tok = m.sum().clamp(min=1.0)
        low = (ratio < 1 - epsilon) & (advantages < 0)
        high = (ratio > 1 + eps_high) & (advantages > 0)
        stats = {"clip_ratio/low_mean": (low.float() * m).sum() / n_tok,
                 "clip_ratio/high_mean": (high.float() * m).sum() / n_tok,
                 "clip_ratio/region_mean": ((low | high).float() * m).sum() / n_tok,
                 "kl": (kl * m).sum() / n_tok if kl is not None else torch.tensor(0.0),
                 "ratio_max": (ratio * m).max()}
    return loss, {k: float(v) for k, v in stats.items()}


# ----------------------------------------------------------------------------------------------
# Scoring one batch of rollouts


def score_rollouts(responses: torch.Tensor, mask: torch.Tensor, parsed: Sequence, target_sids: Sequence[Sequence[int]],
                   tokenizer, cfg: RLConfig, num_steps: int) -> dict:
    """Rewards, advantages and per-token credit for B = prompts * num_generations responses.

    responses, mask (B, T) (response tokens only, no prompt); parsed[i] = grammar.parse(response i);
    target_sids[i] = the target's SID token ids for row i. Returns a dict of tensors:
    matches (B, K), rewards (B,) or (B, K), advantages (B,) or (B, K), steps (B, T),
    token_adv (B, T), valid (B,) bool.
    """
    G, K = cfg.num_generations, num_steps
    valid = torch.tensor([bool(p.valid) for p in parsed])  # (B,)
    m = step_matches([list(p.sid_ids) if p.valid else None for p in parsed], target_sids, K)  # (B, K)
    rewards = compute_rewards(m, cfg.reward, cfg.advantage)  # (B,) or (B, K)
    if cfg.advantage == "sequence":
        adv = sequence_advantages(rewards, G, cfg.scale_rewards)  # (B,)
    else:
        adv = step_advantages(rewards, G, cfg.scale_rewards)  # (B, K)
    steps = step_index(responses.cpu(), tokenizer, K, has_prompt=False)  # (B, T)
    token_adv = token_advantages(adv, steps, mask.cpu(), cfg.step_token_mean)  # (B, T)
    return {"matches": m, "rewards": rewards, "advantages": adv, "steps": steps, "token_adv": token_adv,
            "valid": valid}


def rollout_metrics(scored: dict, mask: torch.Tensor, cfg: RLConfig) -> dict:
    """TRL-named metrics of one batch (+ per-step rewards, per-step hit rates, valid rate)."""
    G = cfg.num_generations
    m, r, valid = scored["matches"], scored["rewards"], scored["valid"]
    scalar = r if r.dim() == 1 else r.mean(dim=-1)  # (B,) one reward per response
    out = {
        "reward": scalar.mean().item(),
        "reward_std": scalar.view(-1, G).std(dim=1).mean().item(),  # mean of the per-group std, as TRL
        # groups with no signal at all (for a step reward: every step has zero variance)
        "frac_reward_zero_std": zero_std_groups(r, G).float().mean().item(),
        # the same count for the exact-match reward, whatever the algorithm: GRPO's no-signal groups
        "frac_exact_zero_std": zero_std_groups(m.prod(dim=-1), G).float().mean().item(),
        "hit_rate": m.prod(dim=-1).mean().item(),  # exact match of the whole SID
        "valid_rate": valid.float().mean().item(),
        "invalid_count": int((~valid).sum()),
        "completions/mean_length": mask.sum(dim=1).float().mean().item(),
    }
    for k in range(m.size(1)):
        out[f"hit_rate/step_{k}"] = m[:, k].mean().item()  # position match m_{.,k}
        if r.dim() == 2:
            out[f"reward/step_{k}"] = r[:, k].mean().item()
            out[f"frac_reward_zero_std/step_{k}"] = zero_std_groups(r[:, k], G).float().mean().item()
    return out


# ----------------------------------------------------------------------------------------------
# The loop


def batch_indices(num_samples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Prompts of RL step `step`: consecutive slices of per-epoch shuffles (a pure function of step,
    so a resumed run sees exactly the same prompts)."""
    out = []
    start = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_samples)
        perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out += perm[offset:offset + batch_size - len(out)].tolist()
    return out


def _flat(prefix: str, d: dict) -> dict:
    """{'hit@10': .3, 'per_level_acc': [..]} -> {'eval/hit@10': .3, 'eval/per_level_acc/0': ..} (numbers only)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (list, tuple)):
            out.update({f"{prefix}{k}/{i}": float(x) for i, x in enumerate(v)})
        elif isinstance(v, (int, float)) or torch.is_tensor(v):
            out[f"{prefix}{k}"] = float(v)
    return out


def train_rl(model, ref_model, grammar, tokenizer, table, samples: Sequence, prompts: Sequence[Sequence[int]],
             cfg: RLConfig, run_dir: str | Path, eval_fn: Callable | None = None, resume: bool = False,
             device: str | torch.device = "cpu", seed: int = 0, progress: bool = True) -> dict:
    """RL fine-tuning of `model` (in place) from its SFT weights. Returns the last metrics.

    samples[i] is a `Sample` (its `.target` is rewarded) and prompts[i] its prompt token ids
    (`reasoning.build_prompt`). `ref_model` is the frozen SFT model for the KL term (None: a copy of
    `model` as it is now, before any resume). `eval_fn(model) -> dict` (e.g. hit@K, ndcg@K) runs at
    step 0, every `eval_every` steps and at the end; its numbers are logged as `eval/<key>`.
    Writes `run_dir/metrics.jsonl` and `run_dir/rl_checkpoint.pt` (atomic; `resume=True` continues).
    """
    check_config(cfg)
    device = torch.device(device)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    K, G = tokenizer.num_levels, cfg.num_generations
    if len(samples) != len(prompts) or not samples:
        raise ValueError(f"need one prompt per sample, got {len(samples)} samples and {len(prompts)} prompts")
    targets = [tokenizer.sid_ids(table, s.target) for s in samples]

    model.to(device)
    if cfg.beta != 0.0:
        ref_model = copy.deepcopy(model) if ref_model is None else ref_model
        ref_model.to(device).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    ckpt_path, log = run_dir / "rl_checkpoint.pt", MetricsLogger(run_dir / "metrics.jsonl")
    write_json(run_dir / "rl_config.json", asdict(cfg))

    start = 0
    ckpt = load_checkpoint(ckpt_path, map_location=device, need=("model", "optimizer", "step")) if resume else None
    if ckpt is not None:
        load_weights(model, ckpt["model"], ckpt_path)
        opt.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        print(f"resuming RL from step {start} ({ckpt_path})")
    # drop the RL records of steps (re)done now; a fresh start drops them all (other stages' records stay)
    trim_metrics(log.path, "rl", start if ckpt is not None else None)

    def evaluate_now(step: int) -> None:
        if eval_fn is not None:
            model.eval()
            log.log({"stage": "rl", "step": step, **_flat("eval/", eval_fn(model))})

    if start == 0:
        evaluate_now(0)
    last: dict = {}
    bar = tqdm(range(start, cfg.max_steps), desc=f"rl {cfg.reward}/{cfg.advantage}", disable=not progress,
               initial=start, total=cfg.max_steps)
    for step in bar:
        t0 = time.time()
        model.eval()  # dropout off for sampling AND for the loss (so ratio == 1 when num_iterations == 1)

        # 1) rollouts: G responses per prompt, rows of one prompt contiguous          (B = batch_size * G)
        idx = batch_indices(len(samples), cfg.batch_size, step, seed)
        batch_prompts = [list(prompts[i]) for i in idx]
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)
        with torch.no_grad(), nonfinite_context("rl", step + 1):
            ro = sample(model, grammar, batch_prompts, num_generations=G, temperature=cfg.temperature,
                        generator=gen, max_new_tokens=cfg.max_completion_length)
        responses, mask = ro.responses, ro.mask  # (B, T), (B, T) bool
        row_prompts = ro.prompts  # (B,) each prompt repeated G times

        # 2) rewards and advantages, then per-token credit                            (B, T)
        parsed = [grammar.parse(r[m].tolist()) for r, m in zip(responses.cpu(), mask.cpu())]
        row_targets = [targets[i] for i in idx for _ in range(G)]
        scored = score_rollouts(responses, mask, parsed, row_targets, tokenizer, cfg, K)
        adv = scored["token_adv"].to(device)  # (B, T)
        metrics = rollout_metrics(scored, mask.cpu(), cfg)

        # 3) old and reference log-probs under the same grammar the sampler used (no grad)
        old_lp = ref_lp = None
        with torch.no_grad():
            if cfg.num_iterations > 1:
                old_lp = response_logprobs(model, grammar, row_prompts, responses, cfg.temperature)[0].float()
            if cfg.beta != 0.0:
                ref_lp = response_logprobs(ref_model, grammar, row_prompts, responses, cfg.temperature)[0].float()

        # 4) num_iterations PPO-clip updates, each one optimiser step over the whole batch
        B = responses.size(0)
        chunks = torch.arange(B).chunk(cfg.gradient_accumulation_steps)
        max_len = cfg.max_completion_length or grammar.max_length  # dr_grpo's constant normaliser
        stats_sum: dict = {}
        for _ in range(cfg.num_iterations):
            opt.zero_grad(set_to_none=True)
            for c in chunks:
                lp, ent = response_logprobs(model, grammar, [row_prompts[i] for i in c], responses[c],
                                            cfg.temperature)
                lp = lp.float()  # (b, T) with grad
                old = lp.detach() if old_lp is None else old_lp[c]  # ratio exactly 1 when mu == 1
                loss, st = policy_loss(lp, old, adv[c], mask[c], cfg.loss_type, cfg.epsilon, cfg.epsilon_high,
                                       cfg.beta, None if ref_lp is None else ref_lp[c], max_len,
                                       num_items_in_batch=int(mask.sum()),
                                       gradient_accumulation_steps=cfg.gradient_accumulation_steps)
                loss.backward()
                st["loss"] = loss.item()
                st["entropy"] = ((ent.float() * mask[c]).sum() / mask[c].sum().clamp(min=1)).item()
                for k, v in st.items():
                    stats_sum[k] = stats_sum.get(k, 0.0) + v
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
            check_finite("rl", step + 1, "lower --rl.learning_rate", loss=stats_sum.get("loss"),
                         **{"gradient norm": grad_norm})  # NaN/inf: stop before the update, keep the last checkpoint
            opt.step()
        n = cfg.num_iterations * len(chunks)
        metrics.update({k: v / n for k, v in stats_sum.items()})
        metrics["loss"] *= len(chunks)  # the loss of the whole batch is the sum over its chunks
        metrics.update({"step": step + 1, "grad_norm": float(grad_norm), "step_time": time.time() - t0})
        log.log({"stage": "rl", **metrics})
        last = metrics
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", hit=f"{metrics['hit_rate']:.3f}",
                        zero_std=f"{metrics['frac_reward_zero_std']:.2f}")

        # 5) periodic evaluation and atomic checkpoints
        done = step + 1
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.max_steps:
            evaluate_now(done)
        if done == cfg.max_steps or (cfg.save_every and done % cfg.save_every == 0):
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                        "step": done, "rl_config": asdict(cfg), "seed": seed})
    if start < cfg.max_steps:
        evaluate_now(cfg.max_steps)
    model.eval()
    return last


def token_credit(responses: torch.Tensor, mask: torch.Tensor, parsed: Sequence, target_sids: Sequence[int],
                 tokenizer, num_steps: int, algos: Sequence[str] = ("grpo", "sapo")) -> dict:
    """The advantage every token of ONE group of rollouts receives under each algorithm.

    responses, mask (G, T) for one prompt; parsed[i] = grammar.parse(response i); target_sids = the
    target's SID ids. Returns {algo: token advantages (G, T)} plus "matches" (G, K) and "steps" (G, T),
    ready for `plots.plot_token_credit`.
    """
    G = responses.size(0)
    out: dict = {}
    for algo in algos:
        cfg = rl_config(algo, num_generations=G)
        scored = score_rollouts(responses, mask, parsed, [list(target_sids)] * G, tokenizer, cfg, num_steps)
        out[algo] = scored["token_adv"]
        out["matches"], out["steps"] = scored["matches"], scored["steps"]
    return out
