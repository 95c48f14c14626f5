"""Reinforcement learning after SFT: GRPO and SAPO in one loop, differing only in reward and advantage.

Top to bottom: rewards -> advantages -> per-token credit -> PPO-clip loss -> one step -> the loop, pure
tensor functions up to `score_rollouts`. trainer.py keeps the books (metrics.jsonl, checkpoints, resume,
evaluation schedule), rl_metrics.py measures, `RLConfig.problems` checks the settings. One RL step:

    batch_size prompts --rollout--> G = num_generations responses each          (B = batch_size * G rows)
    responses --parse--> per-step matches m[i, k] = 1[SID token k of response i == target token k]
    m --reward--> rewards, (B,) or (B, S);  --advantage--> A, (B,) "sequence" (GRPO) or (B, S) "step" (SAPO)
    A --token_advantages--> one number per response token, (B, T)
    num_iterations x PPO-clip update on  -min(w A, clip(w, 1-eps, 1+eps_high) A) + beta * KL_k3

`ALGOS`: `grpo` is textbook GRPO (DeepSeekMath), reward 1[whole SID right]; `sapo` is the paper (arXiv
2605.17648): per-step rewards m[i,k], a group-relative advantage per step, credited to that step's tokens.
S = K reasoning steps, plus one when SIDs have a dedup token: that token (which of the items sharing all K
codes) is step K, rewarded by the exact match, so the within-SID lottery never blurs step K-1's reward.

How the loop departs from textbook GRPO (each is a switch; the defaults are the paper's setting, which
README's compose-world race measured):
1) The group is a choice (`rollout`): G samples at temperature 1 (textbook and the paper; the default),
   greedy thinking + G sampled SIDs (`greedy_think`), or the top G distinct items of the constrained beam
   search after greedy thinking (`beam`, MiniOneRec): the group is then the ranking hit@K scores
   (`reward="rank"` adds MiniOneRec's penalty for wrong items ranked high).
2) `think_credit=True` (default) gives step k's sampled thinking block step k's advantage, with SID token k
   (the paper); `sid_credit=False` credits the thinking only (the first author's prototype). With greedy
   thinking (`greedy_think`, `beam`) it was not sampled and is treated like the prompt: no loss, no credit.
3) Dropout is off (TRL's disable_dropout), so with num_iterations = 1 the ratio is exactly 1 and PPO-clip
   is REINFORCE with a group baseline, plus the k3 KL to the frozen SFT model (`beta`, 1e-3 as the paper).
4) `step_token_mean` gives step k's tokens weight n_i / (K_i |y_i^(k)|): the paper's per-step mean,
   rescaled so a response keeps its total token weight; every `loss_type` then scales SAPO as GRPO.
5) Loss normalisers count the whole batch, so gradient accumulation (and torchrun ranks) sum to exactly
   the gradient of one big batch. No value net, no reward model; an invalid response gets reward 0.
Option and metric names follow TRL's GRPOTrainer. NOT TRL's `loss_type="sapo"` (Qwen's Soft Adaptive PO,
a clip): SAPO here is an advantage estimator (`advantage="step"`) that works with any `loss_type`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from minisapo import distributed, plugins
from minisapo.evaluate import SELECT_METRIC
from minisapo.files import at_least, finite, refuse_problems, write_json
from minisapo.generate import ROLLOUTS, response_logprobs, rollouts
from minisapo.plugins import EXAMPLE_GROUP, EXAMPLE_MATCHES, plugin
from minisapo.reasoning import step_index
from minisapo.rl_metrics import add_chunk_stats, clip_stats, rollout_metrics, step_matches
from minisapo.runs import check_finite, nonfinite_context
from minisapo.trainer import STREAM_EXTRA, STREAM_ROLLOUTS, Trainer, batch_indices, mix_seed, warmup_lr


@dataclass
class RLConfig:
    """RL hyperparameters (names follow TRL's GRPOConfig where TRL has the knob)."""

    # --- what is rewarded and how credit is assigned
    reward: str = "position"
    """exact | position (paper) | prefix (gated) | sidreasoner | rank (beam) | module:function"""
    advantage: str = "step"
    """sequence (GRPO: one per response) | step (SAPO: one per step) | module:function"""
    step_token_mean: bool = True
    """step advantage: each step weighs the same whatever its length (1/|y_i^(k)|)"""
    scale_rewards: str = "group"
    """group (group std) | batch (std over batch) | none; the mean is always per group"""
    think_credit: bool = True
    """sampled thinking tokens get their step's advantage (False: only SID tokens, <eos>)"""
    sid_credit: bool = True
    """SID tokens get their step's advantage (False with think_credit: the thinking only)"""
    # --- the group
    rollout: str = "sample"
    """sample (G samples) | greedy_think (greedy thinking, G sampled SIDs) | beam (top G beams)"""
    num_generations: int = 16
    """G: responses per prompt (the group); the paper uses 16"""
    temperature: float = 1.0
    """sampling temperature (the loss uses the same one)"""
    max_completion_length: int | None = None
    """cap on response tokens; None = the grammar's own cap"""
    batch_size: int = 64
    """prompts per RL step (rows per step = batch_size * num_generations)"""
    exclude_seen: bool = False
    """beam rollouts leave out the items each user has already seen, as eval.exclude_seen does for ranked lists"""
    # --- the surrogate
    loss_type: str = "grpo"
    """grpo | bnpo | dr_grpo | dapo (TRL's normalisers, see policy_loss)"""
    epsilon: float = 0.2
    """lower clip: ratio >= 1 - epsilon"""
    epsilon_high: float | None = None
    """upper clip: ratio <= 1 + epsilon_high (None = epsilon; DAPO: 0.28)"""
    beta: float = 0.001
    """KL(pi || pi_ref) coefficient, k3 estimator (the paper: 1e-3); 0 = no reference model"""
    dynamic_sampling: bool = False
    """DAPO: drop groups without signal (all rewards equal) and draw more prompts (at most 3 extra batches) until
    the step has batch_size groups that carry one"""
    num_iterations: int = 1
    """mu: PPO updates per batch of rollouts (1 = on-policy, ratio == 1)"""
    # --- optimisation
    optimizer: str = "adamw"
    """adamw | sgd (plain, no momentum)"""
    learning_rate: float = 3e-5
    """constant after warm-up"""
    warmup_steps: int = 0
    """linear warm-up of the learning rate over this many steps"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping (0 = off)"""
    gradient_accumulation_steps: int = 1
    """split each batch into this many chunks per optimiser step"""
    # --- schedule
    max_steps: int = 100
    """RL steps (each = one batch of prompts, rolled out once)"""
    eval_every: int = 25
    """evaluate every this many steps (0 = only at start and end)"""
    save_every: int = 25
    """checkpoint every this many steps (the final step is always saved)"""
    eval_prompts: int = 128
    """held-out (validation) prompts for the eval/sampled_reward curve"""
    keep_best: bool = False
    """leave RL with the evaluated weights of best eval/valid_hit@10 (step 0 = the SFT model)"""
    keep_best_p: float = 0.05
    """with keep_best, an evaluation replaces the SFT model only if its gain is significant: a paired sign test
    over the validation users at p < keep_best_p (1 = any gain counts)"""

    def __post_init__(self):
        refuse_problems(self, "rl")

    def problems(self):
        """(field, what to change) for every setting out of range or of an unknown name; a plug-in is tried on
        an example now, not at step 1 (but not one only a run's config.json names: see minisapo.plugins)."""
        for key, allowed in (("scale_rewards", SCALE_REWARDS), ("loss_type", LOSS_TYPES), ("rollout", ROLLOUTS),
                             ("optimizer", OPTIMIZERS), ("reward", REWARDS), ("advantage", ADVANTAGES)):
            plugin_ok = key in ("reward", "advantage") and ":" in getattr(self, key)
            if getattr(self, key) not in allowed and not plugin_ok:
                yield key, f"use one of {', '.join(allowed)}" + (" (or module:function)" if key in ("reward", "advantage") else "")
        if plugins.may_load(self.reward) and plugins.may_load(self.advantage):
            rewards = compute_rewards(EXAMPLE_MATCHES, self.reward, self.advantage, EXAMPLE_GROUP)  # raises if bad
            advantage_function(self.advantage)(rewards, EXAMPLE_GROUP, self.scale_rewards)
        if self.exclude_seen and self.rollout != "beam":
            yield "exclude_seen", "leaves items out of a ranked group, so it needs --rl.rollout=beam"
        if self.reward == "rank" and self.rollout != "beam":
            yield "reward", "rank ranks the group, so it needs --rl.rollout=beam"
        if self.num_generations < 2:
            yield "num_generations", "must be >= 2: group-relative advantages need a group"
        yield from at_least(self, num_iterations=1, batch_size=1, gradient_accumulation_steps=1, max_steps=0,
                            eval_every=0, save_every=0, warmup_steps=0, eval_prompts=1)
        if self.gradient_accumulation_steps >= 1 and (self.batch_size * self.num_generations) % \
                self.gradient_accumulation_steps:
            yield "gradient_accumulation_steps", (f"must divide batch_size * num_generations = "
                                                  f"{self.batch_size * self.num_generations}")
        for key in ("temperature", "learning_rate"):
            if not (finite(getattr(self, key)) and getattr(self, key) > 0):
                yield key, "must be a finite number > 0"
        for key in ("beta", "weight_decay", "max_grad_norm"):
            if not (finite(getattr(self, key)) and getattr(self, key) >= 0):
                yield key, "must be a finite number >= 0" + (" (0 = off)" if key != "weight_decay" else "")
        if not (finite(self.keep_best_p) and 0 < self.keep_best_p <= 1):
            yield "keep_best_p", "must be in (0, 1] (1 = any validation gain replaces the SFT model)"
        if not (finite(self.epsilon) and 0 <= self.epsilon < 1):
            yield "epsilon", "must be in [0, 1) (the ratio is clipped below at 1 - epsilon)"
        if self.epsilon_high is not None and not (finite(self.epsilon_high) and self.epsilon_high >= 0):
            yield "epsilon_high", "must be a finite number >= 0, or none (= epsilon)"


ALGOS: dict[str, dict[str, object]] = {
    "grpo": {"reward": "exact", "advantage": "sequence", "step_token_mean": False},  # textbook GRPO
    "grpo_prefix": {"reward": "sidreasoner", "advantage": "sequence", "step_token_mean": False},  # SIDReasoner
    "sapo": {"reward": "position", "advantage": "step", "step_token_mean": True},  # the paper
    "sapo_seq_adv": {"reward": "position", "advantage": "sequence", "step_token_mean": False},  # ablation
    "sapo_prefix": {"reward": "prefix", "advantage": "step", "step_token_mean": True},  # ablation: gated steps
}
SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
OPTIMIZERS = ("adamw", "sgd")
EPS = 1e-4  # added to a reward std before dividing (TRL's value)


def rl_config(algo: str | None = None, **overrides) -> RLConfig:
    """An RLConfig for a preset in `ALGOS`, with keyword overrides on top, checked when it is made: how a
    library user makes one (e.g. `rl_config("grpo", num_generations=8)`)."""
    if algo is not None and algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose one of {', '.join(ALGOS)}")
    return RLConfig(**{**ALGOS.get(algo, {}), **overrides})


# ----------------------------------------------------------------------------------------------
# ALGO LOGIC 1: rewards: per-step matches m (B, S) (m[i, k] = 1 if SID token k of response i is the target's; with a
# dedup level m[i, K] = 1 if the whole SID is; rl_metrics.step_matches) and the group size G -> (B,) or (B, S);
# a group's rows are contiguous (best first for beams)


def reward_exact(m: torch.Tensor, group_size: int = 1) -> torch.Tensor:
    """1 if every step matches (the whole SID incl. dedup), else 0: (B, S) -> (B,)."""
    return m.prod(dim=-1)


def reward_position(m: torch.Tensor, group_size: int = 1) -> torch.Tensor:
    """The paper's per-step reward m[i,k], not gated by earlier steps: (B, S) -> (B, S)."""
    return m.clone()


def reward_prefix(m: torch.Tensor, group_size: int = 1) -> torch.Tensor:
    """Prefix-gated step reward prod_{j<=k} m[i,j]: (B, S) -> (B, S)."""
    return m.cumprod(dim=-1)


def reward_sidreasoner(m: torch.Tensor, group_size: int = 1) -> torch.Tensor:
    """SIDReasoner: n leading matched steps -> 0 if n == 0 else 2^-(S-n) (0/.25/.5/1 for S=3). (B,)"""
    n = m.cumprod(dim=-1).sum(dim=-1)  # (B,)
    return torch.where(n > 0, torch.pow(2.0, n - m.size(-1)), torch.zeros_like(n))


def reward_rank(m: torch.Tensor, group_size: int) -> torch.Tensor:
    """MiniOneRec's rank-aware reward for a ranked group (rollout="beam"): the target 1; when the
    target is in the group, the wrong item at rank j (0-based) gets -(1/log2(j+2)) / sum_j' 1/log2(j'+2),
    so wrong items ranked high are pushed down hardest. (B, S) -> (B,)"""
    exact = m.prod(dim=-1).view(-1, group_size)  # (groups, G)
    d = 1.0 / torch.log2(torch.arange(group_size, dtype=torch.float) + 2.0)  # (G,) the ndcg discount
    penalty = (-d / d.sum()).expand_as(exact)
    r = torch.where(exact > 0, exact, penalty)
    return torch.where(exact.sum(1, keepdim=True) > 0, r, torch.zeros_like(r)).reshape(-1)


REWARDS: dict[str, Callable] = {"exact": reward_exact, "position": reward_position, "prefix": reward_prefix,
                                "sidreasoner": reward_sidreasoner, "rank": reward_rank}


def reward_function(name: str) -> Callable:
    """A built-in by name or yours (`--rl.reward=my_pkg.my_mod:fn`): fn(m (B, S), G) -> (B,) or (B, S)."""
    return REWARDS[name] if name in REWARDS else plugin("rl.reward", name)


def compute_rewards(m: torch.Tensor, reward: str, advantage: str, group_size: int | None = None) -> torch.Tensor:
    """Rewards in the shape the advantage needs: (B,) for "sequence", (B, S) for "step" (a per-step
    reward is averaged over steps for a sequence advantage; a scalar one is given to every step).
    A plug-in advantage gets the reward as it comes."""
    r = reward_function(reward)(m, group_size or m.size(0))  # (B,) or (B, S)
    if advantage == "sequence":
        return r.mean(dim=-1) if r.dim() == 2 else r
    if advantage == "step":
        return r if r.dim() == 2 else r.unsqueeze(-1).expand_as(m).clone()
    return r


# ----------------------------------------------------------------------------------------------
# ALGO LOGIC 2: advantages, group-relative, per response (GRPO) or per step (SAPO)


def _group_advantages(r: torch.Tensor, G: int, scale_rewards: str) -> torch.Tensor:
    """Group-relative advantages of each column of r (B, C) independently -> (B, C)."""
    B, C = r.shape
    if B % G:
        raise ValueError(f"{B} rows is not a multiple of group_size={G}")
    grouped = r.float().view(B // G, G, C)  # (groups, G, C)
    group_std = grouped.std(dim=1, keepdim=True)  # (groups, 1, C) unbiased, like torch.std in TRL
    adv = grouped - grouped.mean(dim=1, keepdim=True)  # the mean is always per group
    if scale_rewards == "group":
        adv = adv / (group_std + EPS)
    elif scale_rewards == "batch":
        adv = adv / (r.float().std(dim=0) + EPS)  # (C,) one std per column over the whole batch
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards={scale_rewards!r}; choose one of {', '.join(SCALE_REWARDS)}")
    zero = torch.isclose(group_std, torch.zeros_like(group_std))  # every row of the group equal
    return torch.where(zero, torch.zeros_like(adv), adv).reshape(B, C)  # exact 0, never NaN


def sequence_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    """GRPO: A_i = (r_i - mean_group r) / (std_group r + 1e-4).  rewards (B,) -> (B,)"""
    return _group_advantages(rewards.reshape(-1, 1), group_size, scale_rewards).reshape(-1)


def step_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    """SAPO: A_ik = (r_ik - mean_group r_.k) / (std_group r_.k + 1e-4), each step k on its own. (B, S) -> (B, S)"""
    if rewards.dim() != 2:
        raise ValueError(f"step rewards must be (B, S), got shape {tuple(rewards.shape)}")
    return _group_advantages(rewards, group_size, scale_rewards)


ADVANTAGES: dict[str, Callable] = {"sequence": sequence_advantages, "step": step_advantages}


def advantage_function(name: str) -> Callable:
    """A built-in by name or yours (`--rl.advantage=module:fn`): fn(rewards, G, scale_rewards) -> advantages."""
    return ADVANTAGES[name] if name in ADVANTAGES else plugin("rl.advantage", name)


# ----------------------------------------------------------------------------------------------
# ALGO LOGIC 3: per-token credit, which tokens receive which advantage


def token_advantages(advantages: torch.Tensor, steps: torch.Tensor, mask: torch.Tensor,
                     step_token_mean: bool = False) -> torch.Tensor:
    """Spread advantages over response tokens -> (B, T).

    advantages (B,)   (GRPO): every credited token (mask) gets A_i.
    advantages (B, S) (SAPO): token t gets A[i, steps[i, t]]; tokens with step -1 get 0. With
        `step_token_mean` (the paper's 1/|y_i^(k)|) step k's tokens get A[i, k] * n_i / (K_i |y_i^(k)|)
        (|y_i^(k)| = credited tokens of step k, n_i = credited tokens in steps, K_i = steps present).
    steps (B, T) from `reasoning.step_index`; mask (B, T) bool: the tokens that may get credit.
    """
    mask = mask.bool()
    if advantages.dim() == 1:
        return advantages[:, None].expand(mask.shape) * mask  # (B, T)
    B, K = advantages.shape
    inside = (steps >= 0) & (steps < K) & mask  # (B, T) a step without an advantage column gets nothing
    idx = steps.clamp(min=0, max=K - 1)  # (B, T)
    tok = advantages.gather(1, idx)  # (B, T) the advantage of each token's step
    if step_token_mean:
        counts = (torch.nn.functional.one_hot(idx, K) * inside[..., None]).sum(dim=1)  # (B, K) |y_i^(k)|
        n = counts.sum(dim=1, keepdim=True)  # (B, 1) n_i
        k_i = (counts > 0).sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1) K_i
        tok = tok * n / (k_i * counts.clamp(min=1).gather(1, idx))
    return tok * inside


# ----------------------------------------------------------------------------------------------
# ALGO LOGIC 4: the surrogate: PPO-clip per token, k3 KL, TRL's loss aggregations


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                loss_type: str = "grpo", epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
                ref_logprobs: torch.Tensor | None = None, max_completion_length: int | None = None,
                num_rows: int | None = None, num_tokens: int | None = None, num_chunks: int = 1):
    """Token-level PPO-clip loss with TRL GRPOTrainer's aggregations -> (loss, stats).

    logprobs (B, T) with grad; old_logprobs, advantages, ref_logprobs, mask (B, T).
        w = exp(logprobs - old_logprobs)
        l_t = -min(w A_t, clip(w, 1 - epsilon, 1 + epsilon_high) A_t) + beta * KL_t
        KL_t = exp(ref - logp) - (ref - logp) - 1          (k3, always >= 0)
    With L = l * mask, and N rows, M tokens in the WHOLE batch (default: these rows), C chunks:
        grpo:    sum_i (sum_t L_it / sum_t M_it) / N        (the mean of per-response means)
        bnpo:    sum L / sum mask / C                       (this chunk's token mean, averaged over chunks)
        dr_grpo: sum L / (N * max_completion_length)
        dapo:    sum L / M                                  (token mean over the whole batch)
    exactly as TRL, so the chunks of a batch (gradient accumulation, several processes) add up.
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    m = mask.float()  # (B, T)
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T) w
    per_token = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - epsilon, 1 + eps_high) * advantages)
    kl = None
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("beta != 0 needs ref_logprobs")
        d = ref_logprobs - logprobs
        kl = torch.exp(d) - d - 1  # (B, T) k3 estimator of KL(pi || pi_ref)
        per_token = per_token + beta * kl
    L = per_token * m
    N = float(num_rows if num_rows is not None else L.size(0))
    M = float(num_tokens if num_tokens is not None else m.sum().clamp(min=1.0))
    if loss_type == "grpo":
        loss = (L.sum(-1) / m.sum(-1).clamp(min=1.0)).sum() / N
    elif loss_type == "bnpo":
        loss = L.sum() / m.sum().clamp(min=1.0) / num_chunks
    elif loss_type == "dapo":
        loss = L.sum() / max(M, 1.0)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        loss = L.sum() / (N * max_completion_length)
    else:
        raise ValueError(f"loss_type={loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    return loss, clip_stats(ratio.detach(), advantages, m, epsilon, eps_high, None if kl is None else kl.detach())


# ----------------------------------------------------------------------------------------------
# ALGO LOGIC 5: one step of the loop


def score_rollouts(responses: torch.Tensor, mask: torch.Tensor, parsed: Sequence, target_sids: Sequence[Sequence[int]],
                   tokenizer, cfg: RLConfig, num_levels: int, given: torch.Tensor | None = None,
                   dedup: bool = False) -> dict:
    """Rewards, advantages and per-token credit of B = prompts * G responses (rows of a group contiguous).

    responses, mask (B, T) (response tokens only); parsed[i] = grammar.parse(response i); target_sids[i]
    = row i's target SID ids; num_levels = K; given (B, T): greedy thinking (no loss, no credit); dedup: the
    SIDs have a dedup level (step K). Returns matches (B, S), rewards, advantages, steps (B, T), loss_mask
    (B, T), token_adv (B, T), valid (B,).
    """
    G, S = cfg.num_generations, num_levels + int(dedup)
    valid = torch.tensor([bool(p.valid) for p in parsed])  # (B,)
    m = step_matches([p.sid_ids if p.valid else None for p in parsed], target_sids, num_levels, dedup)  # (B, S)
    rewards = compute_rewards(m, cfg.reward, cfg.advantage, G)  # (B,) or (B, S)
    adv = advantage_function(cfg.advantage)(rewards, G, cfg.scale_rewards)  # (B,) or (B, S)
    if adv.dim() == 2 and adv.size(1) != S:
        raise ValueError(f"--rl.advantage={cfg.advantage} returned {adv.size(1)} steps, the responses have {S}")
    responses, mask = responses.cpu(), mask.cpu().bool()
    loss_mask = mask if given is None else mask & ~given.cpu()  # greedy thinking is part of the prompt
    thinking = torch.as_tensor(tokenizer.token_level)[responses] < 0  # <think>, words, </think> (and <eos>)
    eos = responses == tokenizer.eos_id
    credited = loss_mask & ((thinking & ~eos & cfg.think_credit) | ((~thinking | eos) & cfg.sid_credit))
    steps = step_index(responses, tokenizer, num_levels, has_prompt=False)  # (B, T)
    token_adv = token_advantages(adv, steps, credited, cfg.step_token_mean and adv.dim() == 2)  # (B, T)
    return {"matches": m, "rewards": rewards, "advantages": adv, "steps": steps, "loss_mask": loss_mask,
            "token_adv": token_adv, "valid": valid, "sids": [tuple(p.sid_ids) for p in parsed],
            "blocks": [[tuple(b) for b in p.blocks] for p in parsed]}


def score_groups(model, grammar, prompts: Sequence[Sequence[int]], target_sids: Sequence, cfg: RLConfig,
                 generators: Sequence[torch.Generator], step: int = 0, exclude: Sequence | None = None) -> dict:
    """The G rollouts of every prompt and their rewards, advantages and credit (no gradient): `score_rollouts`'
    dict plus each row's "prompts", "responses" (B, T) and "mask" (B, T). exclude[i]: items prompt i's beams
    leave out (rl.exclude_seen)."""
    G = cfg.num_generations
    model.eval()  # dropout off for sampling AND for the loss (so ratio == 1 when num_iterations == 1)
    with torch.no_grad(), nonfinite_context("rl", step + 1):
        ro = rollouts(model, grammar, prompts, G, cfg.rollout, cfg.temperature, list(generators),
                      cfg.max_completion_length, exclude)
    parsed = grammar.parse_rows(ro.responses, ro.mask)
    rows_t = [t for t in target_sids for _ in range(G)]
    with nonfinite_context("rl", step + 1):  # a plug-in's NaN names the step
        scored = score_rollouts(ro.responses, ro.mask, parsed, rows_t, grammar.tok, cfg, grammar.K, ro.given,
                                grammar.dedup)
    return {**scored, "prompts": ro.prompts, "responses": ro.responses.cpu(), "mask": ro.mask.cpu()}


def policy_update(model, ref_model, optimizer, grammar, scored: dict, cfg: RLConfig, step: int = 0) -> dict:
    """num_iterations PPO-clip updates on scored rollouts (`score_groups`) -> {"stats", "grad_norm"}."""
    dev = next(model.parameters()).device
    prompts, responses = scored["prompts"], scored["responses"].to(dev)
    adv, lmask = scored["token_adv"].to(dev), scored["loss_mask"].to(dev)
    old_lp = ref_lp = None  # old and reference log-probs under the sampler's grammar (no grad)
    with torch.no_grad():
        if cfg.num_iterations > 1:
            old_lp = response_logprobs(model, grammar, prompts, responses, cfg.temperature)[0].float()
        if cfg.beta != 0.0:
            ref_lp = response_logprobs(ref_model, grammar, prompts, responses, cfg.temperature)[0].float()
    B = responses.size(0)  # num_iterations optimiser steps, each over the whole batch in chunks
    chunks = torch.arange(B).chunk(cfg.gradient_accumulation_steps)  # normalisers: every rank's rows, tokens, chunks
    num_rows, num_tokens, num_chunks = distributed.sum_over_ranks(B, int(lmask.sum()), len(chunks))
    stats: dict = {}
    for _ in range(cfg.num_iterations):
        optimizer.zero_grad(set_to_none=True)
        for c in chunks:
            lp, ent = response_logprobs(model, grammar, [prompts[i] for i in c], responses[c], cfg.temperature)
            old = lp.detach() if old_lp is None else old_lp[c]  # ratio exactly 1 when mu == 1
            loss, st = policy_loss(lp.float(), old, adv[c], lmask[c], cfg.loss_type, cfg.epsilon, cfg.epsilon_high,
                                   cfg.beta, None if ref_lp is None else ref_lp[c],
                                   cfg.max_completion_length or grammar.max_length, num_rows=num_rows,
                                   num_tokens=num_tokens, num_chunks=num_chunks)
            loss.backward()
            st.update(loss=loss.item(), entropy=float((ent.detach().float() * lmask[c]).sum() / lmask[c].sum().clamp(min=1)))
            add_chunk_stats(stats, st, float(lmask[c].sum()) / max(num_tokens, 1), cfg.num_iterations)
        distributed.sum_grads(model)  # torchrun: the global batch's gradient (the normalisers are global)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
        check_finite("rl", step + 1, "lower --rl.learning_rate", loss=stats.get("loss"), **{"gradient norm": grad_norm})
        optimizer.step()
    stats = distributed.sum_stats(stats, maxed=("ratio_max",))  # torchrun: the global batch's (sum, max)
    return {"stats": stats, "grad_norm": float(grad_norm)}


def rl_step(model, ref_model, optimizer, grammar, prompts: Sequence[Sequence[int]], target_sids: Sequence,
            cfg: RLConfig, generators: Sequence[torch.Generator], step: int = 0) -> tuple[dict, torch.Tensor]:
    """Rollouts for `prompts`, their rewards and advantages, and num_iterations PPO-clip updates.
    Returns (the scored rollouts, the rollout mask); the caller logs the metrics."""
    scored = score_groups(model, grammar, prompts, target_sids, cfg, generators, step)
    scored.update(policy_update(model, ref_model, optimizer, grammar, scored, cfg, step))
    return scored, scored["mask"]


def groups_with_signal(scored: dict, group_size: int) -> list[int]:
    """The groups whose advantages are not all zero (some reward differs within the group)."""
    adv = scored["advantages"].reshape(-1, group_size, *scored["advantages"].shape[1:])  # (groups, G[, S])
    return [g for g in range(adv.size(0)) if bool(adv[g].abs().sum() > 0)]


def take_groups(parts: Sequence[tuple[dict, list[int]]], group_size: int, pad_id: int) -> dict:
    """The rows of the chosen groups of several `score_groups` dicts, as one (responses padded to one length)."""
    rows = [(d, g * group_size + j) for d, groups in parts for g in groups for j in range(group_size)]
    T = max(d["responses"].size(1) for d, _ in rows)
    fill = {"responses": pad_id, "steps": -1}  # the other (B, T) rows pad with 0 / False
    out: dict = {}
    for key, v in rows[0][0].items():
        if key in ("responses", "mask", "loss_mask", "token_adv", "steps"):
            out[key] = torch.stack([torch.nn.functional.pad(d[key][i], (0, T - d[key].size(1)), value=fill.get(key, 0))
                                    for d, i in rows])
        elif torch.is_tensor(v):
            out[key] = torch.stack([d[key][i] for d, i in rows])
        elif isinstance(v, list):
            out[key] = [d[key][i] for d, i in rows]
    return out


# ----------------------------------------------------------------------------------------------
# The loop (bookkeeping: trainer.Trainer; metrics: rl_metrics)

CHECKPOINT = "rl_checkpoint.pt"  # the last step's (for --resume); with keep_best also rl_best.pt
MAX_EXTRA_DRAWS = 3  # dynamic sampling draws at most this many extra batches of prompts per step
SELECT = f"eval/{SELECT_METRIC}"  # what keep_best selects by (as logged)
SHOW_EVAL = (SELECT, "eval/sampled_reward", "eval/distinct_top1")  # printed at every evaluation


def train_rl(model, ref_model, grammar, tokenizer, table, samples: Sequence, prompts: Sequence[Sequence[int]],
             cfg: RLConfig, run_dir: str | Path, eval_fn: Callable | None = None, resume: bool = False,
             device: str | torch.device = "cpu", seed: int = 0, progress: bool = True,
             teacher_blocks: Sequence | None = None, exclude: Sequence | None = None) -> dict:
    """RL fine-tuning of `model` (in place) from its SFT weights; returns the last step's metrics. samples[i]
    is a `Sample` (its `.target` is rewarded), prompts[i] its prompt ids; `ref_model` the frozen model of the
    KL term (None: a copy of `model` now); `eval_fn(model) -> dict` is logged as `eval/<key>` at step 0,
    every `eval_every` steps and at the end; teacher_blocks[i] (optional): the teacher's K thinking blocks of
    sample i as word ids, for the think_acc/step_k metrics; exclude[i] (rl.exclude_seen): the items sample i's
    beam rollouts leave out. Writes metrics.jsonl, rl_config.json and rl_checkpoint.pt."""
    if cfg.batch_size < distributed.world_size() or len(samples) != len(prompts) or not samples:
        raise ValueError(f"need one prompt per sample ({len(samples)} samples, {len(prompts)} prompts) and "
                         f"rl.batch_size={cfg.batch_size} >= the {distributed.world_size()} torchrun processes")
    targets = [tokenizer.sid_ids(table, s.target) for s in samples]
    G = cfg.num_generations
    model.to(device)
    if cfg.beta != 0.0:
        ref_model = (copy.deepcopy(model) if ref_model is None else ref_model).to(device).eval().requires_grad_(False)
    opt = (torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
           if cfg.optimizer == "adamw" else torch.optim.SGD(model.parameters(), lr=cfg.learning_rate))
    trainer = Trainer(run_dir, "rl", CHECKPOINT, cfg.max_steps, cfg.eval_every, cfg.save_every, progress,
                      keep_best=SELECT if cfg.keep_best else None, keep_best_p=cfg.keep_best_p)
    write_json(trainer.run_dir / "rl_config.json", asdict(cfg))
    start = trainer.resume(model, opt, device)[0] if resume else trainer.fresh()

    def groups(step: int, draw: int = 0) -> tuple[list[int], dict]:
        """This rank's prompts of a batch (draw 0: the step's own; draw d > 0: dynamic sampling's d-th extra one),
        rolled out and scored, each group with its own seeded generator."""
        batch = batch_indices(len(samples), cfg.batch_size, step, seed if draw == 0 else mix_seed(seed, STREAM_EXTRA, draw))
        gens = [torch.Generator().manual_seed(mix_seed(seed, STREAM_ROLLOUTS, step, j, *([draw] if draw else [])))
                for j in range(len(batch))]  # one per group
        idx, gens = distributed.my_slice(batch), distributed.my_slice(gens)  # torchrun: this rank's whole groups
        return batch, score_groups(model, grammar, [prompts[i] for i in idx], [targets[i] for i in idx], cfg, gens, step,
                                   None if exclude is None else [exclude[i] for i in idx])

    extra = lambda: {"rl_config": asdict(cfg), "seed": seed}  # noqa: E731  (what the checkpoint also holds)
    trainer.begin(start, model, eval_fn, show_eval=SHOW_EVAL)
    for step in trainer.steps(start):
        with trainer.step(step, model, opt, extra):  # bookkeeping: a NaN checkpoints the last good step
            t0, lr = time.time(), warmup_lr(opt, cfg.learning_rate, step, cfg.warmup_steps)
            batch, scored = groups(step)  # G rollouts per prompt, scored: matches, rewards, advantages
            train, dynamic = scored, {}
            if cfg.dynamic_sampling:  # DAPO: keep the groups with a signal, draw more prompts until the batch is full
                parts = [(scored, groups_with_signal(scored, G))]
                need = len(scored["prompts"]) // G
                for draw in range(1, MAX_EXTRA_DRAWS + 1):
                    if sum(len(g) for _, g in parts) >= need:
                        break
                    more = groups(step, draw)[1]
                    parts.append((more, groups_with_signal(more, G)))
                kept, left = [], need
                for d, g in parts:
                    kept.append((d, g[:left]))
                    left -= len(kept[-1][1])
                if need - left > 0:
                    train = take_groups(kept, G, tokenizer.pad_id)
                dynamic = {"dynamic/draws": len(parts), "dynamic/groups": float(need - left) / need}
            train.update(policy_update(model, ref_model, opt, grammar, train, cfg, step))  # PPO-clip + KL, one step
            # metrics of the global batch (torchrun: every rank's rows)
            rows = distributed.cat_over_ranks({k: scored[k] for k in ("matches", "rewards", "valid", "sids", "blocks")})
            mask = distributed.cat_over_ranks(scored["mask"])
            ref = None if teacher_blocks is None else [teacher_blocks[i] for i in batch for _ in range(G)]
            record = {**rollout_metrics(rows, mask, G, ref), **train["stats"], **dynamic,
                      "grad_norm": train["grad_norm"], "lr": lr, "step_time": time.time() - t0}
        trainer.after_step(model, opt, record, show=("reward", "hit_rate", "frac_reward_zero_std"), extra=extra)
    done = trainer.finish(model)
    best = trainer.best
    if done == cfg.max_steps and cfg.keep_best and best:  # one record names the model RL leaves with, and why
        t = best.get("test") or {}
        trainer.log({"step": done, "selected_step": best["step"], f"selected_{SELECT}": best[SELECT],
                     **{f"selected_{k}": t[k] for k in ("up", "down", "p") if k in t}})
    model.eval()
    return trainer.last_record
