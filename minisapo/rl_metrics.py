"""What RL logs: TRL's metric names, per-step rewards and hit rates, why a group gives no signal, and the
held-out curve. Everything here reads what `rl.score_rollouts` returned; nothing changes the model.

    reward, reward_std, frac_reward_zero_std    TRL's names (reward_std: mean of the per-group std)
    frac_exact_zero_std                          the same count for the exact-match reward (GRPO's silence)
    hit_rate, hit_rate/step_k, reward/step_k     exact and per-level match of the rollouts, per-step rewards
    groups/all_right, groups/collapsed,          every rollout right; all wrong on ONE same answer (the
    groups/all_wrong, groups/mixed               policy collapsed); all wrong and diverse; some right
    eval/sampled_reward, eval/sampled_hit_rate/step_k
                                                 the same rollouts on fixed held-out prompts, no gradient
"""

from __future__ import annotations

from typing import Sequence

import torch


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


def rollout_metrics(scored: dict, mask: torch.Tensor, group_size: int) -> dict:
    """TRL-named metrics of one batch of scored rollouts (+ per-step rewards and hit rates, groups/*)."""
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
    return out
