"""Realistic student bugs and attempts to get around the rules, each a small edit of solutions_key.py.

tests/test_exercises.py plants every one (the key with `old` replaced by `new`; INSTRUCTOR in `new` stands for
the path of this folder) and grades it with the visible and hidden checks: the right exercise must FAIL, in the
right part, with a message that contains `words` (for `load=True`: the file must not load at all, so it gets
no points). Keep `old` unique in the key.
"""

from __future__ import annotations

from typing import NamedTuple


class Bug(NamedTuple):
    name: str
    exercise: int
    part: str  # a piece of the failing part's name
    old: str
    new: str
    words: str  # a piece of the message
    load: bool = False  # refused when loaded: no points at all


# exercise -> other exercises whose key answer calls it (a bug there also shows there)
USES = {2: {11}, 6: set()}

P1 = "    out = torch.zeros_like(m, dtype=torch.float32)\n    for i in range(m.size(0)):"
P2 = "    B, T = steps.shape\n    out = torch.zeros(B, T)\n"
P3 = "    out, written, ended = [], 0, False\n    for token in response:"
P8 = "    for rank, item in enumerate(ranked[:k], start=1):"
P9 = "    N, k = x.size(0), centroids.size(0)\n"
P11 = "    G, K = matches.shape\n"
LOOP = "not on the list of what this exercise may call"

BUGS = [
    # --- exercise 1: prefix-gated rewards, with loops -------------------------------------------------------
    Bug("prefix reward forgets the earlier steps", 1, "prefix_reward",
        "still_right = still_right * float(m[i, k])", "still_right = float(m[i, k])", "first difference at ["),
    Bug("prefix reward changes m in place (a view)", 1, "prefix_reward",
        P1, "    out = m\n    for i in range(m.size(0)):", "changed its input `m`"),
    Bug("prefix reward returns int64", 1, "prefix_reward",
        "torch.zeros_like(m, dtype=torch.float32)", "torch.zeros_like(m, dtype=torch.long)", "dtype torch.int64"),
    Bug("prefix reward with cumprod", 1, "prefix_reward", P1, "    return m.cumprod(dim=1)\n" + P1, "cumprod"),
    Bug("prefix reward with np.multiply.accumulate", 1, "prefix_reward", P1,
        "    import numpy as np\n    return torch.from_numpy(np.multiply.accumulate(m.numpy(), axis=1))\n" + P1,
        "accumulate"),
    Bug("prefix reward with itertools.accumulate(row, operator.mul)", 1, "prefix_reward", P1,
        "    import itertools\n    import operator\n"
        "    return torch.tensor([list(itertools.accumulate(r, operator.mul)) for r in m.tolist()])\n" + P1,
        "accumulate"),
    Bug("prefix reward as a matrix product with torch.triu(ones)", 1, "prefix_reward", P1,
        "    for _ in range(0):\n        pass\n    upper = torch.triu(torch.ones(m.size(1), m.size(1)))\n"
        "    return torch.exp(torch.log(m) @ upper)\n" + P1, "triu"),
    Bug("prefix reward with a hidden getattr(torch, 'cum' + 'prod')", 1, "prefix_reward", P1,
        "    return getattr(torch, 'cum' + 'prod')(m, 1)\n" + P1, "getattr"),
    Bug("prefix reward with prod over the prefix", 1, "prefix_reward",
        "still_right = still_right * float(m[i, k])", "still_right = float(m[i, :k + 1].prod())", "prod"),
    Bug("prefix reward with functools.reduce", 1, "prefix_reward", P1,
        "    import functools\n"
        "    return torch.tensor([[functools.reduce(lambda a, b: a * b, r[:k + 1], 1.0) for k in range(len(r))]\n"
        "                         for r in m.tolist()])\n" + P1, "functools.reduce"),
    Bug("prefix reward calls reward_prefix through importlib", 1, "prefix_reward", P1,
        "    import importlib\n    return importlib.import_module('mini' + 'sapo.rl').reward_prefix(m)\n" + P1,
        "import_module"),
    # --- exercise 2: per-token credit, with loops --------------------------------------------------------------
    Bug("token credit: step mean over the response length", 2, "token_advantages_loops",
        "weight = n_i / (k_i * count[k]) if step_token_mean else 1.0",
        "weight = n_i / (k_i * n_i) if step_token_mean else 1.0", "(row "),
    Bug("token credit: the mask forgotten", 2, "token_advantages_loops",
        "            if mask[i, t] and steps[i, t] >= 0:\n                count",
        "            if steps[i, t] >= 0:\n                count", "first difference at ["),
    Bug("token credit: the mask forgotten for sequence advantages", 2, "token_advantages_loops",
        "                if mask[i, t]:\n                    out[i, t] = advantages[i]",
        "                if True:\n                    out[i, t] = advantages[i]", "first difference at ["),
    Bug("token credit: gather", 2, "token_advantages_loops", P2,
        P2 + "    _ = advantages.reshape(B, -1).gather(1, steps.clamp(min=0) * 0)\n", "gather"),
    Bug("token credit: fancy indexing advantages[i][steps[i]]", 2, "token_advantages_loops",
        "            out[i, t] = advantages[i, k] * weight",
        "            out[i, t] = advantages[i][steps[i].clamp(min=0)][t] * weight", "indexing with a tensor"),
    Bug("token credit: counts with a vectorised sum", 2, "token_advantages_loops",
        "        n_i = sum(count)\n", "        n_i = int((mask[i] & (steps[i] >= 0)).sum())\n", "sum"),
    Bug("token credit: one_hot", 2, "token_advantages_loops", P2,
        P2 + "    _ = torch.nn.functional.one_hot(steps.clamp(min=0))\n", "one_hot"),
    Bug("token credit: int64 output", 2, "token_advantages_loops",
        P2, "    B, T = steps.shape\n    out = torch.zeros(B, T, dtype=torch.long)\n", "dtype torch.int64"),
    Bug("token credit: the mask changed in place", 2, "token_advantages_loops",
        P2, P2 + "    mask &= steps >= -1\n    mask[:, -1] = False\n", "changed its input `mask`"),
    Bug("token credit: calls the hidden reference (and an empty loop for the rule)", 2, "token_advantages_loops",
        P2, "    import importlib.util\n    for _ in range(0):\n        pass\n"
        "    spec = importlib.util.spec_from_file_location('h', 'INSTRUCTOR/hidden_checks.py')\n"
        "    h = importlib.util.module_from_spec(spec)\n    spec.loader.exec_module(h)\n"
        "    return torch.tensor(h.ref_token_credit(advantages.tolist(), steps.tolist(), mask.tolist(), "
        "step_token_mean))\n" + P2, "not on the list"),
    # --- exercise 3: interleaved step_index, write it yourself ------------------------------------------------
    Bug("interleaved: off-by-one segmentation", 3, "interleaved_step_index",
        "        out.append(written)  # the dedup token comes after all num_steps semantic tokens: step num_steps\n"
        "        if 0 <= tokenizer.token_level[token] < num_steps:  # a semantic SID token (not the dedup one)\n"
        "            written += 1",
        "        if 0 <= tokenizer.token_level[token] < num_steps:\n            written += 1\n"
        "        out.append(written)", "first difference at ["),
    Bug("interleaved: the dedup token folded into the last step", 3, "interleaved_step_index",
        "out.append(written)  # the dedup", "out.append(min(written, num_steps - 1))  # the dedup", "expected"),
    Bug("interleaved: tokens after <eos> still counted", 3, "interleaved_step_index",
        "        if token == tokenizer.eos_id:\n            ended = True\n",
        "        if token == tokenizer.eos_id:\n            out.append(-1)\n            continue\n", "expected"),
    Bug("interleaved: returns a tensor", 3, "interleaved_step_index",
        "            written += 1\n    return out", "            written += 1\n    return torch.tensor(out)",
        "a list of Python ints"),
    Bug("interleaved: calls reasoning.step_index", 3, "interleaved_step_index", P3,
        "    from minisapo.reasoning import step_index\n" + P3, "minisapo.reasoning"),
    Bug("interleaved: step_index through importlib", 3, "interleaved_step_index", P3,
        "    import importlib\n    r = importlib.import_module('mini' + 'sapo.reasoning')\n"
        "    return r.step_index(torch.tensor([response]), tokenizer, num_steps, has_prompt=False)[0].tolist()\n" + P3,
        "minisapo.reasoning"),
    # --- exercise 4: range scaling, by hand, as a plug-in ---------------------------------------------------
    Bug("range: missing epsilon", 4, "range_advantages",
        "(centred / (hi - lo + 1e-4))", "(centred / (hi - lo))", "off by"),
    Bug("range: sign error", 4, "range_advantages",
        "centred = col - col.mean()", "centred = col.mean() - col", "first difference at ["),
    Bug("range: the batch's range, not the group's", 4, "range_advantages",
        "            hi, lo = float(col.max()), float(col.min())",
        "            hi, lo = float(r[:, c].max()), float(r[:, c].min())", "first difference at ["),
    Bug("range: only (B, C) rewards (GRPO's (B,) comes back as (B, 1))", 4, "range_advantages",
        "    return out.reshape(rewards.shape)", "    return out", "returned shape"),
    Bug("by hand: population std", 4, "by hand",
        '"group": {"hit": 0.875 / (math.sqrt(0.125) + 1e-4)', '"group": {"hit": 0.875 / (math.sqrt(0.109375) + 1e-4)',
        "sample std"),
    Bug("by hand: hit and miss swapped under range", 4, "by hand",
        '"range": {"hit": 0.875 / (1 + 1e-4), "miss": -0.125 / (1 + 1e-4)}',
        '"range": {"hit": 0.125 / (1 + 1e-4), "miss": -0.875 / (1 + 1e-4)}', "not the advantage"),
    # --- exercise 6: reward-to-go, as a plug-in -------------------------------------------------------------
    Bug("reward-to-go: exponent off by one", 6, "reward_to_go",
        "out[:, j] = advantages[:, j] + gamma * out[:, j + 1]",
        "out[:, j] = advantages[:, j] + gamma * gamma * out[:, j + 1]", "first difference at ["),
    Bug("reward-to-go: in place on its input (a view)", 6, "reward_to_go",
        "    out = advantages.clone()\n    for j in range(advantages.size(1) - 2",
        "    out = advantages\n    for j in range(advantages.size(1) - 2", "changed its input `advantages`"),
    Bug("reward-to-go: shifts its input in place, and the answer with it", 6, "reward_to_go",
        "    out = advantages.clone()\n    for j in range(advantages.size(1) - 2",
        "    advantages[:, 0] += 1.0\n    out = advantages.clone()\n    for j in range(advantages.size(1) - 2",
        "changed its input `advantages`"),
    Bug("reward-to-go: prefix sums (the wrong direction)", 6, "reward_to_go",
        "    for j in range(advantages.size(1) - 2, -1, -1):  # right to left: out[j] = A[j] + gamma * out[j + 1]\n"
        "        out[:, j] = advantages[:, j] + gamma * out[:, j + 1]",
        "    for j in range(1, advantages.size(1)):\n        out[:, j] = advantages[:, j] + gamma * out[:, j - 1]",
        "first difference at ["),
    Bug("reward-to-go plug-in: averages the steps to (B,)", 6, "plug-in",
        "    return reward_to_go(step_advantages(rewards, group_size, scale_rewards), STEP_GAMMA)",
        "    return reward_to_go(step_advantages(rewards, group_size, scale_rewards), STEP_GAMMA).mean(dim=1)",
        "every step of a response now gets the same advantage"),
    Bug("reward-to-go plug-in: forgets the discount", 6, "plug-in",
        "    return reward_to_go(step_advantages(rewards, group_size, scale_rewards), STEP_GAMMA)",
        "    return step_advantages(rewards, group_size, scale_rewards)", "first difference at ["),
    # --- exercise 8: hit@K and ndcg@K, write it yourself ---------------------------------------------------
    Bug("ndcg: log2(rank) discount", 8, "ndcg_at_k",
        "return 1.0 / math.log2(rank + 1)", "return 1.0 / math.log2(rank + 1e-9)", "expected"),
    Bug("ndcg: the natural log", 8, "ndcg_at_k",
        "return 1.0 / math.log2(rank + 1)", "return 1.0 / math.log(rank + 1)", "expected"),
    Bug("ndcg: 0-based rank in the discount", 8, "ndcg_at_k",
        "for rank, item in enumerate(ranked[:k], start=1):", "for rank, item in enumerate(ranked[:k], start=2):",
        "expected"),
    Bug("hit: top k + 1", 8, "hit_at_k",
        "return 1.0 if target in ranked[:k] else 0.0", "return 1.0 if target in ranked[:k + 1] else 0.0", "expected 0"),
    Bug("hit: returns an int", 8, "hit_at_k",
        "return 1.0 if target in ranked[:k] else 0.0", "return 1 if target in ranked[:k] else 0", "a Python float"),
    Bug("ndcg: calls minisapo.evaluate", 8, "ndcg_at_k", P8,
        "    from minisapo import evaluate\n    return evaluate.ndcg_at_k(ranked, target, k)\n" + P8, "minisapo"),
    Bug("ndcg: importlib.import_module('mini' + 'sapo.evaluate')", 8, "ndcg_at_k", P8,
        "    import importlib\n    return importlib.import_module('mini' + 'sapo.evaluate').ndcg_at_k(ranked, target, k)\n"
        + P8, "minisapo.evaluate"),
    Bug("ndcg: walks up to the checker's frame", 8, "ndcg_at_k", P8,
        "    import sys\n    caller = sys._getframe(2)\n" + P8, "_getframe"),
    Bug("ndcg: reads the checker's source", 8, "ndcg_at_k", P8,
        "    text = open('INSTRUCTOR/../exercise_checks.py').read()\n" + P8, "a file of the checker"),
    # --- exercise 9: one k-means step, write it yourself ---------------------------------------------------
    Bug("k-means: an empty cluster moves to 0", 9, "centroid update",
        "    new_centroids = centroids.clone()\n", "    new_centroids = torch.zeros_like(centroids)\n", "(centroid "),
    Bug("k-means: centroid update in place (a view)", 9, "centroid update",
        "    new_centroids = centroids.clone()\n", "    new_centroids = centroids\n", "changed its input `centroids`"),
    Bug("k-means: nearest by absolute, not squared, distance", 9, "assignment",
        "d2 = ((x[n] - centroids) ** 2).sum(dim=1)", "d2 = (x[n] - centroids).abs().sum(dim=1)", "(row "),
    Bug("k-means: ties broken the other way (highest index)", 9, "assignment",
        "codes[n] = int(torch.argmin(d2))", "codes[n] = len(d2) - 1 - int(torch.argmin(d2.flip(0)))", "(row "),
    Bug("k-means: codes as floats", 9, "assignment",
        "    return codes, new_centroids, residual", "    return codes.double(), new_centroids, residual",
        "dtype torch.float64"),
    Bug("k-means: calls the library's k-means", 9, "assignment", P9,
        "    from minisapo.sid import rqkmeans\n    _ = rqkmeans.__name__\n" + P9, "minisapo.sid"),
    # --- exercise 10: the prefix trie, write it yourself ---------------------------------------------------
    Bug("trie: an impossible prefix returns []", 10, "impossible",
        '            raise ValueError(f"impossible SID prefix {list(prefix)}")', "            return []",
        "must raise ValueError"),
    Bug("trie: keyed on the last token only", 10, "valid prefixes",
        "    node = trie\n    for token in prefix:", "    node = trie\n    for token in prefix[-1:]:", "valid prefix"),
    Bug("trie: next tokens not sorted", 10, "valid prefixes",
        "    return sorted(node)", "    return sorted(node, reverse=True)", "sorted next token ids"),
    Bug("trie: the library's SIDTrie", 10, "valid prefixes",
        "    root: dict = {}\n", "    from minisapo.sid.trie import SIDTrie\n    _ = SIDTrie\n    root: dict = {}\n",
        "minisapo.sid"),
    # --- exercise 11: the step-aligned loss, write it yourself ---------------------------------------------
    Bug("step loss: population std", 11, "step advantages", "std = col.std()", "std = col.std(unbiased=False)",
        "(rollout "),
    Bug("step loss: missing epsilon", 11, "step advantages", "((col - col.mean()) / (std + 1e-4))",
        "((col - col.mean()) / std)", "off by"),
    Bug("step loss: per-step mean over the wrong length", 11, "per-token credit",
        "    token_adv = token_advantages_loops(advantages, steps, mask, True)",
        "    token_adv = token_advantages_loops(advantages, steps, mask, False)", "(rollout "),
    Bug("step loss: sign error", 11, "loss value",
        "per_token = -torch.minimum(ratio * token_adv, clipped * token_adv)",
        "per_token = torch.minimum(ratio * token_adv, clipped * token_adv)", "loss"),
    Bug("step loss: max instead of the pessimistic min", 11, "loss value",
        "per_token = -torch.minimum(ratio * token_adv, clipped * token_adv)",
        "per_token = -torch.maximum(ratio * token_adv, clipped * token_adv)", "loss"),
    Bug("step loss: one token mean over the whole group", 11, "loss value",
        "loss = ((per_token * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)).mean()",
        "loss = (per_token * m).sum() / m.sum()", "loss"),
    Bug("step loss: calls the hidden references", 11, "step advantages", P11,
        P11 + "    import importlib.util\n"
        "    spec = importlib.util.spec_from_file_location('h', 'INSTRUCTOR/hidden_checks.py')\n"
        "    h = importlib.util.module_from_spec(spec)\n    spec.loader.exec_module(h)\n"
        "    return torch.tensor(h.ref_step_advantages(matches.tolist(), G)), None, None\n", "a file of the checker"),
    Bug("step loss: the library's step_advantages", 11, "step advantages", P11,
        P11 + "    return step_advantages(matches, len(matches)), None, None\n", "minisapo.rl"),
    # --- the whole file: reaching for the checker, or rebinding what it relies on ----------------------------
    Bug("imports the checker's internals", 8, "", "import math\n", "import math\nfrom exercise_checks import compare\n",
        "may not import, open or run the checker", load=True),
    Bug("loads the hidden checks by path", 8, "",
        "import math\n", "import math\nimport importlib.util\n"
        "_spec = importlib.util.spec_from_file_location('h', 'INSTRUCTOR/hidden_checks.py')\n"
        "_h = importlib.util.module_from_spec(_spec)\n_spec.loader.exec_module(_h)\n",
        "may not import, open or run the checker", load=True),
    Bug("rebinds math.isclose so that every comparison passes", 8, "ndcg_at_k", P8,
        "    math.isclose = lambda *a, **kw: True\n    return 0.5\n" + P8, "math.isclose"),
]
