"""Instructor key for tutorials/EXERCISES.md: reference solutions, the hand computation of exercise 4, the
plug-ins of exercises 4 and 6, and model answers to the "Think" questions.

    python tutorials/instructor/grade.py tutorials/instructor/solutions_key.py

gives full marks (visible examples and hidden random inputs; exit status 0). The students' file is
tutorials/solutions.py; `python tutorials/instructor/make_student_copy.py OUT` writes a copy of the repository
for them without this folder.
"""

import math

import torch

from minisapo.rl import step_advantages


# Exercise 1 ---------------------------------------------------------------------------------------
def prefix_reward(m: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(m, dtype=torch.float32)
    for i in range(m.size(0)):
        still_right = 1.0
        for k in range(m.size(1)):
            still_right = still_right * float(m[i, k])
            out[i, k] = still_right
    return out


# Exercise 2 ---------------------------------------------------------------------------------------
def token_advantages_loops(advantages: torch.Tensor, steps: torch.Tensor, mask: torch.Tensor,
                           step_token_mean: bool) -> torch.Tensor:
    B, T = steps.shape
    out = torch.zeros(B, T)
    for i in range(B):
        if advantages.dim() == 1:  # GRPO: the same number on every real token
            for t in range(T):
                if mask[i, t]:
                    out[i, t] = advantages[i]
            continue
        K = advantages.size(1)
        count = [0] * K  # c_ik: real tokens of step k
        for t in range(T):
            if mask[i, t] and steps[i, t] >= 0:
                count[int(steps[i, t])] += 1
        n_i = sum(count)
        k_i = sum(1 for c in count if c > 0)
        for t in range(T):
            if not mask[i, t] or steps[i, t] < 0:
                continue
            k = int(steps[i, t])
            weight = n_i / (k_i * count[k]) if step_token_mean else 1.0
            out[i, t] = advantages[i, k] * weight
    return out


# Exercise 3 ---------------------------------------------------------------------------------------
def interleaved_step_index(response: list[int], tokenizer, num_steps: int) -> list[int]:
    out, written, ended = [], 0, False
    for token in response:
        if token == tokenizer.eos_id:
            ended = True
        if ended:
            out.append(-1)
            continue
        out.append(written)  # the dedup token comes after all num_steps semantic tokens: step num_steps
        if 0 <= tokenizer.token_level[token] < num_steps:  # a semantic SID token (not the dedup one)
            written += 1
    return out


# Exercise 4 ---------------------------------------------------------------------------------------
def range_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "range") -> torch.Tensor:
    r = rewards.reshape(rewards.size(0), -1)  # (B, C); C = 1 for one reward per response
    B, C = r.shape
    out = torch.zeros(B, C)
    for g0 in range(0, B, group_size):
        group = r[g0:g0 + group_size].double()  # (G, C)
        for c in range(C):
            col = group[:, c]
            hi, lo = float(col.max()), float(col.min())
            if hi == lo:
                continue  # no variance: advantage exactly 0
            centred = col - col.mean()
            out[g0:g0 + group_size, c] = (centred / (hi - lo + 1e-4)).float()
    return out.reshape(rewards.shape)


# one hit of 8: mean 1/8; sample std sqrt((7/8)^2/7 + 7 (1/8)^2/7) = sqrt(1/8) = 0.35355; range 1 - 0 = 1
EX4_ONE_HIT_OF_8 = {
    "group": {"hit": 0.875 / (math.sqrt(0.125) + 1e-4), "miss": -0.125 / (math.sqrt(0.125) + 1e-4)},  # 2.474, -0.353
    "range": {"hit": 0.875 / (1 + 1e-4), "miss": -0.125 / (1 + 1e-4)},  # 0.875, -0.125
}


# Exercise 6 ---------------------------------------------------------------------------------------
def reward_to_go(advantages: torch.Tensor, gamma: float) -> torch.Tensor:
    out = advantages.clone()
    for j in range(advantages.size(1) - 2, -1, -1):  # right to left: out[j] = A[j] + gamma * out[j + 1]
        out[:, j] = advantages[:, j] + gamma * out[:, j + 1]
    return out


STEP_GAMMA = 0.5


def step_reward_to_go(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    return reward_to_go(step_advantages(rewards, group_size, scale_rewards), STEP_GAMMA)


# Exercise 8 ---------------------------------------------------------------------------------------
def hit_at_k(ranked: list[int], target: int, k: int) -> float:
    return 1.0 if target in ranked[:k] else 0.0


def ndcg_at_k(ranked: list[int], target: int, k: int) -> float:
    for rank, item in enumerate(ranked[:k], start=1):
        if item == target:
            return 1.0 / math.log2(rank + 1)
    return 0.0


# Exercise 9 ---------------------------------------------------------------------------------------
def kmeans_step(x: torch.Tensor, centroids: torch.Tensor):
    N, k = x.size(0), centroids.size(0)
    codes = torch.zeros(N, dtype=torch.long)
    for n in range(N):
        d2 = ((x[n] - centroids) ** 2).sum(dim=1)  # (k,)
        codes[n] = int(torch.argmin(d2))  # argmin returns the first index on a tie
    new_centroids = centroids.clone()
    for j in range(k):
        members = x[codes == j]
        if len(members) > 0:  # an empty cluster keeps its old centroid
            new_centroids[j] = members.mean(dim=0)
    residual = x - new_centroids[codes]
    return codes, new_centroids, residual


# Exercise 10 --------------------------------------------------------------------------------------
def build_trie(sids: list[list[int]]):
    root: dict = {}
    for sid in sids:
        node = root
        for token in sid:
            node = node.setdefault(int(token), {})
    return root


def next_tokens(trie, prefix: list[int]) -> list[int]:
    node = trie
    for token in prefix:
        if int(token) not in node:
            raise ValueError(f"impossible SID prefix {list(prefix)}")
        node = node[int(token)]
    return sorted(node)


# Exercise 11 --------------------------------------------------------------------------------------
def sapo_group_loss(matches: torch.Tensor, steps: torch.Tensor, mask: torch.Tensor, logprobs: torch.Tensor,
                    old_logprobs: torch.Tensor, epsilon: float = 0.2):
    G, K = matches.shape
    # 1. per-step group-relative advantages
    advantages = torch.zeros(G, K)
    for k in range(K):
        col = matches[:, k].double()
        if float(col.max()) == float(col.min()):
            continue
        std = col.std()  # sample std (divides by G - 1)
        advantages[:, k] = ((col - col.mean()) / (std + 1e-4)).float()
    # 2. per-token credit (exercise 2, step_token_mean=True)
    token_adv = token_advantages_loops(advantages, steps, mask, True)
    # 3. PPO-clip per token, TRL's "grpo" aggregation
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = ratio.clamp(1 - epsilon, 1 + epsilon)
    per_token = -torch.minimum(ratio * token_adv, clipped * token_adv)  # (G, T)
    m = mask.float()
    loss = ((per_token * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)).mean()
    return advantages, token_adv, loss


# Model answers to the Think questions ------------------------------------------------------------------
THINK_ANSWERS = {
    "1": "The rewards change only for rollouts with a miss followed by a later hit: sapo rewards that later "
         "step, sapo_prefix gives it 0; a rollout like 1 (right, right, wrong) has the same reward row under "
         "both. The advantages are group-relative, though, so at every step where some rollout's reward "
         "changed, that step's mean and std change and every rollout's advantage at that step moves. Gating "
         "makes the later steps' rewards sparser (step k can only score when every earlier step did), so "
         "expect more zero-variance steps, mostly at the later steps.",
    "2": "Without step_token_mean each token of step k gets A_ik, so the step's credit sums to |y_i^(k)| A_ik: "
         "long thinking blocks dominate. With it each token gets A_ik n_i / (K_i |y_i^(k)|), so step k sums to "
         "A_ik n_i / K_i: every step weighs the same whatever its length (the paper's 1/|y_i^(k)|). The factor "
         "n_i / K_i restores the response's total token weight: under loss_type='grpo' a response's loss is "
         "divided by its length, and GRPO gives every one of its tokens weight 1; without the rescaling SAPO's "
         "per-step means would shrink the update by about the average step length and GRPO-vs-SAPO would "
         "compare step sizes, not credit assignment. In 05_token_credit.png all tokens of one step share one "
         "colour; a step with a long thinking block spreads its advantage thinly over many tokens (pale), a "
         "short step concentrates it (dark), so each step carries the same total.",
    "3a": "In blocks_first all K thinking blocks come before the first SID token, so 'number of SID tokens "
          "written' is 0 for every block: every block would be step 0 (the SID tokens would still get 0..K-1). "
          "There the step of a block is the number of blocks before it, and a SID token's step is "
          "its level; step_index handles both layouts that way. Measured on the tiny world (150 SFT steps): "
          "validation loss .71 (blocks_first) vs .77 (interleaved); quick hit@10 on 50 test samples .54 vs .46, "
          "a gap of about one standard error (+-.07 on 50 samples), so not a clear winner. The greedy "
          "thinking does change (compare the printed blocks): in the interleaved layout each block can "
          "condition on the SID tokens already chosen.",
    "3b": "History-style blocks are easier to imitate: they describe what the prompt already shows "
          "(validation loss .71 vs 1.07 for target-style blocks, blocks_first; .77 vs 1.16 interleaved). "
          "Target-style blocks name the target's descriptor, which the model must guess; greedy decoding "
          "commits to one guess and the beam search over SIDs is then conditioned on it. On the tiny world "
          "the ranking differences are within sampling noise (test hit@10 .54 vs .40 on 50 samples, but "
          "validation hit@10 .44 vs .47 on 32), so the honest answer is: lower loss for history, no "
          "reliable ranking gap at this size; interleaving does not change that picture.",
    "4": "One hit of 8: group scaling gives the hit +2.474 and each miss -0.353 (sample std 0.354); range "
         "scaling gives +0.875 and -0.125 (range 1). The ratio hit/miss is -7 in both (both divide the same "
         "centred rewards by one number per group); only the scale differs. As the group grows with one hit, "
         "the group-std advantage of the hit grows like sqrt(G) (std ~ 1/sqrt(G)), while the range advantage "
         "stays below 1: range never blows up a rare success.",
    "5": "Measured (tiny world, --rl.max_steps=10, mean over steps): GRPO frac_reward_zero_std about 0.5 at "
         "items_per_leaf=4, 0.75 at 8, 0.95 at 32; SAPO's stays low (0.0-0.2) because some step varies in "
         "almost every group. Per step, the zero-variance rate is highest at step 0 for 32 items per leaf "
         "(about .7/.65/.35): nearly every rollout misses the first SID token there, so step 0's group is "
         "all-equal most often, while the last level has few codes and is hit by chance. Hit@K outcomes are "
         "for tutorial 5 and `minisapo compare`, not for a 10-step run.",
    "6": "gamma=0 is plain SAPO; with gamma>0 the tokens of step j also receive the discounted advantages of "
         "the steps after it, so an early SID token (and, with --rl.think_credit=true, the thinking block of "
         "its step) that leads to right later tokens is reinforced even when its own token was wrong, and "
         "one that leads to wrong later tokens is pushed down even when it was right. In the token-credit "
         "picture the early steps' colours change on rows whose later steps have large advantages. It helps "
         "when early choices cause later hits (a coarse code that makes the fine ones findable); it hurts "
         "when the later steps' luck is unrelated to the early ones: their noise is added to the early steps' "
         "credit.",
    "7": "2 levels: 32-code books and about 19% colliding items (more dedup tokens); 4 levels: no collisions "
         "but low perplexity at the later levels (3-4 codes carry most items), so those steps are right by "
         "chance more often and their per-step zero-variance rate differs from the first levels'. SAPO's "
         "heatmap has one band per level. Expect GRPO's exact match to get rarer as levels are added (one more "
         "token to get right), unless the extra level is nearly always the same code.",
    "8": "hit@K only asks whether the target is in the top K; ndcg@K also rewards putting it high: rank 1 "
         "gives 1, rank 2 gives 0.63, rank 10 gives 0.29. With one target the ideal DCG is 1/log2(2) = 1, so "
         "DCG needs no normalising. The +1 in log2(rank + 1) is what makes rank 1 finite and worth 1.",
    "9": "Assignment can only lower each point's distance, and the mean is the point that minimises the "
         "summed squared distance of a cluster, so each Lloyd step never increases the k-means objective; "
         "iterating converges. The library repairs an empty cluster (moves it to the worst-served point) "
         "instead of keeping it, so no code of the book is wasted. Later levels cluster residuals: most of "
         "an item's vector is already explained, and items of one fine category are left with nearly the "
         "same residual, so a few codes take most items (lower perplexity).",
    "10": "A trie answers each look-up in O(len(prefix)) instead of scanning every item, and it is the "
          "structure the constrained beam search walks. Raising on an impossible prefix matters because "
          "returning [] or 'every token' would silently let decoding produce a SID that names no item.",
    "11": "At ratio 1 (one update per batch) the loss value is a weighted sum of advantages, close to zero "
          "when rows have similar lengths, but its gradient is not zero: it is the policy gradient, each "
          "token's log-prob pushed up or down by its credit. The clip only matters when the ratio has moved "
          "(num_iterations > 1). A step with equal matches in the whole group contributes nothing.",
}
