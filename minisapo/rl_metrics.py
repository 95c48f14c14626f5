"""What RL logs: TRL's metric names, per-step rewards and hit rates, why a group gives no signal, and the
held-out curve. Everything here reads what `rl.score_rollouts` returned; nothing changes the model.

    reward, reward_std, frac_reward_zero_std    TRL's names (reward_std: mean of the per-group std)
    frac_exact_zero_std                          the same count for the exact-match reward (GRPO's silence)
    hit_rate, hit_rate/step_k, reward/step_k     exact and per-step match of the rollouts, per-step rewards
                                                 (step K, when SIDs have a dedup token: the whole SID)
    think_acc/step_k                             thinking block k is word for word the teacher's
    groups/all_right, groups/collapsed,          every rollout right; all wrong on ONE same answer (the
    groups/all_wrong, groups/mixed               policy collapsed); all wrong and diverse; some right
    eval/sampled_reward, eval/sampled_hit_rate/step_k
                                                 the same rollouts on fixed held-out prompts, no gradient
"""

from __future__ import annotations

from typing import Sequence

import torch

from minisapo.generate import rollouts
from minisapo.trainer import STREAM_HELDOUT, mix_seed




def step_matches(pred_sids: Sequence[Sequence[int] | None], target_sids: Sequence[Sequence[int]],
                 num_levels: int, dedup: bool = False) -> torch.Tensor:
    """m[i, k] = 1[predicted SID token k == target SID token k] for the K = num_levels semantic levels, plus,
    with `dedup` (the SIDs have a dedup level), a last column m[i, K] = 1[the whole SID is right]: the
    step of the dedup token, which picks the item among those sharing the K codes. -> FloatTensor (B, K [+1]).

    Per position, not gated by earlier levels (the paper's m_{i,k}). `pred_sids[i]` is response i's SID
    token ids (None or [] for an invalid response: its row is all 0).
    """
    m = torch.zeros(len(pred_sids), num_levels + int(dedup))  # (B, S)
    for i, (pred, tgt) in enumerate(zip(pred_sids, target_sids)):
        pred, tgt = list(pred or []), list(tgt)
        if not pred:
            continue
        for k in range(num_levels):
            m[i, k] = float(len(pred) > k and len(tgt) > k and pred[k] == tgt[k])
        if dedup:
            m[i, num_levels] = float(pred == tgt)
    return m


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Groups with no signal: all rewards equal (every step equal for (B, K)). -> BoolTensor (groups,)"""
    r = rewards.reshape(rewards.size(0), -1).float()
    std = r.view(-1, group_size, r.size(1)).std(dim=1)  # (groups, C)
    return torch.isclose(std, torch.zeros_like(std)).all(dim=1)


def group_breakdown(matches: torch.Tensor, sids: Sequence[tuple], group_size: int) -> dict:
    """Fractions of groups whose rollouts are all right / all wrong on one same answer (collapsed) /
    all wrong and diverse / mixed. matches (B, K); sids[i] = row i's SID (a tuple)."""
    exact = matches.prod(dim=-1).view(-1, group_size)  # (groups, G)
    n = exact.size(0)
    right, wrong = exact.all(dim=1), (exact == 0).all(dim=1)
    same = torch.tensor([len(set(sids[g * group_size:(g + 1) * group_size])) == 1 for g in range(n)])
    return {"groups/all_right": right.float().mean().item(),
            "groups/collapsed": (wrong & same).float().mean().item(),
            "groups/all_wrong": (wrong & ~same).float().mean().item(),
            "groups/mixed": (~right & ~wrong).float().mean().item()}


def think_accuracy(blocks: Sequence[Sequence[Sequence[int]]], ref_blocks: Sequence[Sequence[Sequence[int]]],
                   num_levels: int) -> torch.Tensor:
    """(B, K) 1 where response i's thinking block k is word for word the teacher's block k (`ref_blocks[i]`):
    did the sampled thinking state the right facts? A missing block counts as wrong."""
    out = torch.zeros(len(blocks), num_levels)
    for i, (got, want) in enumerate(zip(blocks, ref_blocks)):
        for k in range(min(num_levels, len(got), len(want))):
            out[i, k] = float(tuple(got[k]) == tuple(want[k]))
    return out


def rollout_metrics(scored: dict, mask: torch.Tensor, group_size: int, ref_blocks: Sequence | None = None) -> dict:
    """TRL-named metrics of one batch of scored rollouts (+ per-step rewards and hit rates, groups/*); with
    `ref_blocks` (the teacher's thinking blocks of each row, as word ids) also think_acc/step_k."""
    G = group_size
    m, r, valid = scored["matches"], scored["rewards"], scored["valid"]
    scalar = r if r.dim() == 1 else r.mean(dim=-1)  # (B,) one reward per response
    out = {"reward": scalar.mean().item(),
           "reward_std": scalar.view(-1, G).std(dim=1).mean().item(),
           "frac_reward_zero_std": zero_std_groups(r, G).float().mean().item(),
           "frac_exact_zero_std": zero_std_groups(m.prod(dim=-1), G).float().mean().item(),
           "hit_rate": m.prod(dim=-1).mean().item(),
           "valid_rate": valid.float().mean().item(),
           "completions/mean_length": mask.sum(dim=1).float().mean().item(),
           **group_breakdown(m, scored["sids"], G)}
    for k in range(m.size(1)):
        out[f"hit_rate/step_{k}"] = m[:, k].mean().item()
        if r.dim() == 2:
            out[f"reward/step_{k}"] = r[:, k].mean().item()
            out[f"frac_reward_zero_std/step_{k}"] = zero_std_groups(r[:, k], G).float().mean().item()
    if ref_blocks is not None and "blocks" in scored:
        acc = think_accuracy(scored["blocks"], ref_blocks, len(ref_blocks[0]) if ref_blocks else 0)
        out.update({f"think_acc/step_{k}": acc[:, k].mean().item() for k in range(acc.size(1))})
    return out


def clip_stats(ratio: torch.Tensor, advantages: torch.Tensor, m: torch.Tensor, epsilon: float, eps_high: float,
               kl: torch.Tensor | None) -> dict:
    """TRL's clip metrics of one chunk (a clip only "counts" when it removes the gradient), its mean k3 KL and
    its largest ratio; ratio, advantages, m (mask as float), kl: (B, T)."""
    n_tok = m.sum().clamp(min=1.0)
    low = (ratio < 1 - epsilon) & (advantages < 0)
    high = (ratio > 1 + eps_high) & (advantages > 0)
    stats = {"clip_ratio/low_mean": (low.float() * m).sum() / n_tok,
             "clip_ratio/high_mean": (high.float() * m).sum() / n_tok,
             "clip_ratio/region_mean": ((low | high).float() * m).sum() / n_tok,
             "kl": (kl * m).sum() / n_tok if kl is not None else torch.tensor(0.0), "ratio_max": (ratio * m).max()}
    return {k: float(v) for k, v in stats.items()}


def add_chunk_stats(total: dict, chunk: dict, share: float, num_iterations: int) -> None:
    """Accumulate one chunk's stats into the step's: token means weighted by the chunk's share of the batch's
    tokens, the loss summed (each chunk's is already a part of the batch's), `ratio_max` the largest; all
    averaged over the num_iterations updates."""
    for k, v in chunk.items():
        if k == "ratio_max":
            total[k] = max(total.get(k, 0.0), v)
        else:
            total[k] = total.get(k, 0.0) + v * (1.0 if k == "loss" else share) / num_iterations


HELDOUT_CHUNK = 16  # held-out prompts rolled out at once (memory; the numbers do not depend on it)


def heldout_rewards(model, grammar, prompts: Sequence[Sequence[int]], target_sids: Sequence, cfg,
                    seed: int = 0) -> dict:
    """The rollouts of training, on fixed held-out prompts with fixed seeds, no gradient:
    eval/sampled_reward (exact match; for beams: of the whole group) and eval/sampled_hit_rate/step_k."""
    gens = [torch.Generator().manual_seed(mix_seed(seed, STREAM_HELDOUT, j)) for j in range(len(prompts))]
    parsed = []
    for i in range(0, len(prompts), HELDOUT_CHUNK):  # a prompt's rollouts depend on its own generator only
        with torch.no_grad():
            ro = rollouts(model, grammar, prompts[i:i + HELDOUT_CHUNK], cfg.num_generations, cfg.rollout,
                          cfg.temperature, gens[i:i + HELDOUT_CHUNK], cfg.max_completion_length)
        parsed += grammar.parse_rows(ro.responses, ro.mask)
    rows_t = [t for t in target_sids for _ in range(cfg.num_generations)]
    m = step_matches([p.sid_ids if p.valid else None for p in parsed], rows_t, grammar.K, grammar.dedup)  # (B, S)
    exact = m.prod(dim=-1)
    out = {"sampled_reward": (exact.view(-1, cfg.num_generations).max(1).values if cfg.rollout == "beam"
                              else exact).mean().item()}
    return {**out, **{f"sampled_hit_rate/step_{k}": m[:, k].mean().item() for k in range(m.size(1))}}
