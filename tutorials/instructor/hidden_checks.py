"""The hidden checks of tutorials/EXERCISES.md: random inputs, new for every seed, compared with brute-force
references written here (plain Python loops in float64, independent of the library and of the key).

Teachers only: this folder is not in the students' copy. `grade.py` runs these after the visible examples of
tutorials/exercise_checks.py; a part passes when both pass. While an answer runs, nothing in this folder may
run, be imported or be opened (exercise_checks.protect), so a submission cannot reach these references.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

TUTORIALS = Path(__file__).resolve().parent.parent
if str(TUTORIALS) not in sys.path:
    sys.path.insert(0, str(TUTORIALS))

import exercise_checks as ec  # noqa: E402
from exercise_checks import Ctx, Fail, as_numpy, compare, fmt_inputs, unchanged  # noqa: E402


# ================================================================================================
# brute-force references


def ref_sample_std(xs: list[float]) -> float:
    n = len(xs)
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0


def ref_step_advantages(m: list[list[float]], G: int) -> list[list[float]]:
    """Group-relative advantages of each column; groups are G consecutive rows; sample std + 1e-4."""
    B, K = len(m), len(m[0])
    out = [[0.0] * K for _ in range(B)]
    for g0 in range(0, B, G):
        for k in range(K):
            col = [m[i][k] for i in range(g0, g0 + G)]
            if max(col) == min(col):
                continue
            mu, sd = sum(col) / G, ref_sample_std(col)
            for i in range(g0, g0 + G):
                out[i][k] = (m[i][k] - mu) / (sd + 1e-4)
    return out


def ref_range_advantages(r: list[list[float]], G: int) -> list[list[float]]:
    B, C = len(r), len(r[0])
    out = [[0.0] * C for _ in range(B)]
    for g0 in range(0, B, G):
        for c in range(C):
            col = [r[i][c] for i in range(g0, g0 + G)]
            hi, lo = max(col), min(col)
            if hi == lo:
                continue
            mu = sum(col) / G
            for i in range(g0, g0 + G):
                out[i][c] = (r[i][c] - mu) / (hi - lo + 1e-4)
    return out


def ref_token_credit(adv: list, steps: list[list[int]], mask: list[list[bool]], step_token_mean: bool):
    """One number per token: sequence advantage on every real token; step advantage on its step's tokens."""
    B, T = len(steps), len(steps[0])
    out = [[0.0] * T for _ in range(B)]
    for i in range(B):
        if not isinstance(adv[i], list):  # a sequence advantage
            for t in range(T):
                out[i][t] = float(adv[i]) if mask[i][t] else 0.0
            continue
        K = len(adv[i])
        counts = [0] * K
        for t in range(T):
            if mask[i][t] and steps[i][t] >= 0:
                counts[steps[i][t]] += 1
        n, k_i = sum(counts), sum(1 for c in counts if c > 0)
        for t in range(T):
            k = steps[i][t]
            if mask[i][t] and k >= 0:
                out[i][t] = adv[i][k] * (n / (k_i * counts[k]) if step_token_mean else 1.0)
    return out


def ref_loss(tok_adv, logp, old, mask, eps: float) -> float:
    """TRL's "grpo" aggregation of the PPO-clip loss: mean over rows of each row's token mean."""
    rows = []
    for i in range(len(mask)):
        total, n = 0.0, 0
        for t in range(len(mask[i])):
            if not mask[i][t]:
                continue
            w = math.exp(logp[i][t] - old[i][t])
            a = tok_adv[i][t]
            total += -min(w * a, min(max(w, 1 - eps), 1 + eps) * a)
            n += 1
        rows.append(total / max(n, 1))
    return sum(rows) / len(rows)


def ref_interleaved_steps(response: list[int], level: list[int], eos: int, K: int) -> list[int]:
    out, written, ended = [], 0, False
    for x in response:
        if x == eos:
            ended = True
        if ended:
            out.append(-1)
            continue
        out.append(written)
        if 0 <= level[x] < K:
            written += 1
    return out


def ref_reward_to_go(adv: list[list[float]], gamma: float) -> list[list[float]]:
    return [[sum(gamma ** (k - j) * row[k] for k in range(j, len(row))) for j in range(len(row))] for row in adv]


def ref_rank(ranked: list[int], target: int, k: int) -> int | None:
    for r, item in enumerate(ranked[:k], start=1):
        if item == target:
            return r
    return None


def ref_assign(x: list[list[float]], c: list[list[float]]) -> list[int]:
    out = []
    for row in x:
        d = [sum((a - b) ** 2 for a, b in zip(row, cen)) for cen in c]
        out.append(min(range(len(c)), key=lambda j: (d[j], j)))
    return out


def ref_update(x, c, codes) -> list[list[float]]:
    out = []
    for j in range(len(c)):
        members = [x[n] for n in range(len(x)) if codes[n] == j]
        out.append([sum(col) / len(members) for col in zip(*members)] if members else list(c[j]))
    return out


def ref_next(sids: list[list[int]], prefix: list[int]) -> list[int] | None:
    """Scan the table: sorted next tokens, [] for a complete SID, None if no SID starts with prefix."""
    starts = [s for s in sids if s[:len(prefix)] == prefix]
    if not starts:
        return None
    return sorted({s[len(prefix)] for s in starts if len(s) > len(prefix)})


# ================================================================================================
# exercises 1 and 2


def check_prefix_reward(ctx: Ctx) -> None:
    rng = ctx.rng
    cases = [np.array(list(np.ndindex(*([2] * K))), dtype=np.float32).reshape(-1, K) for K in range(1, 5)]
    for _ in range(10):  # hidden random shapes
        B, K = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        cases.append((rng.random((B, K)) < 0.7).astype(np.float32))
    for m_np in cases:
        m = torch.from_numpy(m_np)
        got, note = ctx.call("prefix_reward", {"m": m})
        want = [[float(all(row[: k + 1])) for k in range(len(row))] for row in m_np.tolist()]
        compare("prefix_reward(m)", got, want, {"m": m}, note=note, index_names=("row", "step"), kind="float")
        unchanged(note, "prefix_reward")


def random_steps(rng, B: int, T: int, K: int, structured: bool):
    """Step index per token: either a realistic layout (prompt/-1, contiguous steps, eos, pad) or noise."""
    if not structured:
        return rng.integers(-1, K, (B, T))
    steps = np.full((B, T), -1)
    for i in range(B):
        t = int(rng.integers(0, 3))  # a few -1 tokens first
        for k in range(K):
            if rng.random() < 0.15:  # a step that is missing (a cut response)
                continue
            n = int(rng.integers(1, 4))
            steps[i, t:t + n] = k
            t += n
    return steps


def check_token_credit(ctx: Ctx) -> None:
    rng = ctx.rng
    cases = []
    for trial in range(14):
        B, T, K = int(rng.integers(1, 6)), int(rng.integers(1, 11)), int(rng.integers(1, 5))
        steps = random_steps(rng, B, T, K, structured=trial % 2 == 0)[:, :T]
        cases.append((steps, rng.random((B, T)) > 0.2, K))
    for steps_np, mask_np, K in cases:
        B = len(steps_np)
        steps, mask = torch.from_numpy(steps_np.astype(np.int64)), torch.from_numpy(mask_np)
        for adv_np in (rng.normal(size=B).round(4), rng.normal(size=(B, K)).round(4)):
            adv = torch.from_numpy(adv_np).float()
            for stm in (False, True):
                inputs = {"advantages": adv, "steps": steps, "mask": mask, "step_token_mean": stm}
                got, note = ctx.call("token_advantages_loops", inputs)
                want = ref_token_credit(adv.double().tolist(), steps_np.tolist(), mask_np.tolist(), stm)
                compare(f"token_advantages_loops(advantages {list(adv.shape)}, step_token_mean={stm})", got, want,
                        inputs, note=note, index_names=("row", "token"), kind="float")
                unchanged(note, "token_advantages_loops")


# ================================================================================================
# exercise 3


def check_interleaved(ctx: Ctx) -> None:
    from minisapo.reasoning import build_response

    rng = ctx.rng
    for _ in range(4):  # four random worlds, K = 2..4, each with a dedup token
        table, tok = ec.random_world(rng)
        K = table.num_levels
        items = [0, 1] + [int(i) for i in rng.integers(0, table.num_items, 6)]  # 0, 1 collide: dedup
        for n, item in enumerate(items):
            resp = build_response(item, ec.random_blocks(rng, K), table, tok, "interleaved")
            variant = n % 4
            if variant == 1:  # padding after <eos>
                resp = resp + [tok.pad_id] * int(rng.integers(1, 4))
            elif variant == 2:  # cut before <eos> (a response that hit the length cap)
                resp = resp[: int(rng.integers(1, len(resp)))]
            elif variant == 3:  # anything after <eos> is outside the response
                resp = resp + [tok.think_id, tok.sid_ids(table, item)[0], tok.eos_id]
            tokens = " ".join(f"[{t}]{tok.id_to_token(x)}" for t, x in enumerate(resp))
            got, note = ctx.call("interleaved_step_index", {"response": resp, "tokenizer": tok, "num_steps": K},
                                 show={"response": tokens, "num_steps": K}, shared=("tokenizer",))
            want = ref_interleaved_steps(resp, tok.token_level, tok.eos_id, K)
            compare(f"interleaved_step_index(response, tokenizer, num_steps={K})", got, want,
                    {"response": tokens}, exact=True, note=note, index_names=("token",), kind="ints")
            unchanged(note, "interleaved_step_index")


# ================================================================================================
# exercise 4


def range_cases(rng):
    cases = []
    for real in (False, True, False, True):
        groups, G, C = int(rng.integers(2, 5)), int(rng.integers(2, 7)), int(rng.integers(1, 4))
        r = rng.random((groups * G, C)).round(3) if real else (rng.random((groups * G, C)) < 0.4).astype(float)
        r[:G] = 1.0 if not real else 0.25  # a group with no variance
        if not real:
            r[G:2 * G, 0] = 0.0
            r[G, 0] = 1.0  # one hit out of G
        cases.append((r.astype(np.float32), G))
    cases.append((cases[1][0][:, 0].copy(), cases[1][1]))  # one reward per response: (B,)
    return cases


def check_range_function(ctx: Ctx) -> None:
    for r_np, G in range_cases(ctx.rng):
        r = torch.from_numpy(r_np)
        inputs = {"rewards": r, "group_size": G}
        got, note = ctx.call("range_advantages", inputs)
        want = np.asarray(ref_range_advantages(r.double().reshape(len(r), -1).tolist(), G)).reshape(r.shape)
        compare(f"range_advantages(rewards {list(r.shape)}, group_size={G})", got, want, inputs, note=note,
                index_names=("row", "column"), kind="float")
        unchanged(note, "range_advantages")


def one_hit_of_8() -> dict:
    r = [1.0] + [0.0] * 7
    mu, sd = 1 / 8, ref_sample_std(r)
    return {"group": {"hit": (1 - mu) / (sd + 1e-4), "miss": (0 - mu) / (sd + 1e-4)},
            "range": {"hit": (1 - mu) / (1 + 1e-4), "miss": (0 - mu) / (1 + 1e-4)}}


def check_range_by_hand(ctx: Ctx) -> None:
    got, want = ec.hand_numbers(ctx), one_hit_of_8()
    for scale in ("group", "range"):
        for who in ("hit", "miss"):
            if abs(got[scale][who] - want[scale][who]) > 2e-3:
                raise Fail(f'EX4_ONE_HIT_OF_8["{scale}"]["{who}"] = {got[scale][who]!r} is not the advantage of the '
                           f"{who}{'' if who == 'hit' else 'es'} in a group of 8 with one hit under "
                           f'scale_rewards="{scale}" (to 3 decimals). Hint: the group std is the sample std '
                           "(divide by G - 1), as torch.std.")


def check_range_plugin(ctx: Ctx) -> None:
    ec.written(ctx, "range_advantages")
    for algo in ("sapo", "grpo", "sapo"):
        scored = ec.score_with_plugin(ctx, algo, f"{ctx.sol_path}:range_advantages", ec.synthetic_batch(ctx.rng))
        rewards = scored["rewards"]
        want = np.asarray(ref_range_advantages(rewards.double().reshape(len(rewards), -1).tolist(), 4))
        compare(f"as a plug-in: rl.score_rollouts(.., --algo={algo} --rl.advantage=...:range_advantages)"
                "['advantages']", scored["advantages"], want.reshape(rewards.shape), {"rewards": rewards},
                note=scored["note"], kind="float")


# ================================================================================================
# exercise 6


def check_reward_to_go(ctx: Ctx) -> None:
    rng = ctx.rng
    for trial in range(10):
        B, K = int(rng.integers(1, 7)), int(rng.integers(1, 6))
        adv = torch.from_numpy(rng.normal(size=(B, K)).round(4)).float()
        gamma = [0.0, 1.0][trial] if trial < 2 else round(float(rng.uniform(0.1, 0.95)), 3)
        inputs = {"advantages": adv, "gamma": gamma}
        got, note = ctx.call("reward_to_go", inputs)
        compare(f"reward_to_go(advantages, gamma={gamma})", got, ref_reward_to_go(adv.double().tolist(), gamma),
                inputs, note=note, index_names=("row", "step"), kind="float")
        unchanged(note, "reward_to_go")


def check_reward_to_go_plugin(ctx: Ctx) -> None:
    ec.written(ctx, "reward_to_go", "step_reward_to_go")
    gamma = ec.step_gamma(ctx)
    for layout in ("blocks_first", "interleaved"):
        batch = ec.synthetic_batch(ctx.rng, layout=layout)
        scored = ec.score_with_plugin(ctx, "sapo", f"{ctx.sol_path}:step_reward_to_go", batch)
        rewards = scored["rewards"]
        want = ref_reward_to_go(ref_step_advantages(rewards.double().tolist(), 4), gamma)
        compare(f"as a plug-in: rl.score_rollouts(.., --rl.advantage=...:step_reward_to_go)['advantages'] (the "
                f"reward-to-go of SAPO's step advantages, STEP_GAMMA={gamma})", scored["advantages"], want,
                {"rewards": rewards}, note=scored["note"], index_names=("row", "step"), kind="float")


# ================================================================================================
# exercise 8


def ndcg_cases(rng):
    cases = [(list(c[0]), c[1], c[2]) for c in ec.NDCG_EXAMPLES]
    for _ in range(40):
        L = int(rng.integers(1, 13))
        ranked = [int(x) for x in rng.choice(100, L, replace=False)]
        pos = int(rng.integers(0, L))
        target = ranked[pos] if rng.random() < 0.8 else 100 + int(rng.integers(10))
        k = [pos + 1, pos + 2, pos, int(rng.integers(1, L + 3))][int(rng.integers(4))]  # the edges: rank k, k +- 1
        cases.append((ranked, target, max(k, 1)))
    return cases


def check_hit(ctx: Ctx) -> None:
    for ranked, target, k in ndcg_cases(ctx.rng):
        r = ref_rank(ranked, target, k)
        ec.check_scalar(ctx, "hit_at_k", {"ranked": ranked, "target": target, "k": k}, 0.0 if r is None else 1.0)


def check_ndcg(ctx: Ctx) -> None:
    for ranked, target, k in ndcg_cases(ctx.rng):
        r = ref_rank(ranked, target, k)
        ec.check_scalar(ctx, "ndcg_at_k", {"ranked": ranked, "target": target, "k": k},
                        0.0 if r is None else 1.0 / math.log2(r + 1))


# ================================================================================================
# exercise 9


def kmeans_cases(rng):
    """(x, centroids) in float32 where the nearest centroid of every row wins by a clear margin."""
    cases = []
    for trial in range(12):
        N, d, k = int(rng.integers(3, 13)), int(rng.integers(1, 4)), int(rng.integers(1, 5))
        k = min(k, N)
        for _ in range(100):
            x = rng.normal(size=(N, d)).round(3)
            c = (x[rng.choice(N, k, replace=False)] + rng.normal(scale=0.3, size=(k, d))).round(3)
            if trial % 3 == 0 and k > 1:
                c[int(rng.integers(k))] = 40.0 + rng.random(d).round(3)  # a centroid nobody is close to
            d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
            srt = np.sort(d2, axis=1)
            if k == 1 or (srt[:, 1] - srt[:, 0] > 1e-2 * (1 + srt[:, 0])).all():
                break
        cases.append((torch.from_numpy(x.astype(np.float32)), torch.from_numpy(c.astype(np.float32))))
    return cases


def student_codes(got, inputs) -> list[int]:
    try:
        return [int(v) for v in as_numpy(got[0], integer=True).reshape(-1)]
    except Exception:
        raise Fail(f"kmeans_step: codes must be N integers, got {ec.fmt_array(got[0])}{fmt_inputs(inputs)}") from None


def check_assign(ctx: Ctx) -> None:
    for x, c in kmeans_cases(ctx.rng):
        got, note, inputs = ec.kmeans_outputs(ctx, x, c)
        compare("kmeans_step(x, centroids): codes", got[0], ref_assign(x.double().tolist(), c.double().tolist()),
                inputs, exact=True, note=note, index_names=("row",), kind="long")


def check_update(ctx: Ctx) -> None:  # an input changed in place costs this part (not all three)
    for x, c in kmeans_cases(ctx.rng):
        got, note, inputs = ec.kmeans_outputs(ctx, x, c)
        codes = student_codes(got, inputs)
        if len(codes) != len(x) or not all(0 <= a < len(c) for a in codes):
            raise Fail(f"kmeans_step: codes {codes} are not N = {len(x)} indices in [0, {len(c)}){fmt_inputs(inputs)}")
        want = ref_update(x.double().tolist(), c.double().tolist(), codes)
        compare("kmeans_step(x, centroids): new_centroids (given your codes)", got[1], want,
                {**inputs, "your codes": codes}, note=note, index_names=("centroid", "dim"), kind="float")
        unchanged(note, "kmeans_step")


def check_residual(ctx: Ctx) -> None:
    for x, c in kmeans_cases(ctx.rng):
        got, note, inputs = ec.kmeans_outputs(ctx, x, c)
        codes = student_codes(got, inputs)
        try:
            want = x.double().numpy() - as_numpy(got[1])[codes]
        except Exception:
            raise Fail("kmeans_step: residual needs codes (N,) and new_centroids (k, d) first") from None
        compare("kmeans_step(x, centroids): residual = x - new_centroids[codes] (given your codes and centroids)",
                got[2], want, inputs, note=note, index_names=("row", "dim"), kind="float")


# ================================================================================================
# exercise 10


def random_sid_table(rng) -> list[list[int]]:
    """SIDs as token ids: level l codes are 10 + 100 l + code; colliding items get a dedup token."""
    K, N = int(rng.integers(2, 5)), int(rng.integers(3, 13))
    sizes = [int(rng.integers(2, 5)) for _ in range(K)]
    codes = [tuple(int(rng.integers(s)) for s in sizes) for _ in range(N)]
    codes[1] = codes[0]
    seen: dict[tuple, int] = {}
    counts = {c: codes.count(c) for c in codes}
    sids = []
    for c in codes:
        sid = [10 + 100 * level + code for level, code in enumerate(c)]
        if counts[c] > 1:
            sid.append(10 + 100 * K + seen.get(c, 0))
            seen[c] = seen.get(c, 0) + 1
        sids.append(sid)
    order = rng.permutation(N)
    return [sids[i] for i in order]


def trie_cases(rng):
    for _ in range(12):
        sids = random_sid_table(rng)
        valid = sorted({tuple(s[:d]) for s in sids for d in range(len(s) + 1)})
        impossible = []
        for _ in range(8):
            p = list(valid[int(rng.integers(len(valid)))])
            kind = int(rng.integers(3))
            if kind == 0:  # a next token no SID has there
                p.append(10 + 100 * len(p) + int(rng.integers(5, 9)))
            elif kind == 1:  # a complete SID, then anything
                s = sids[int(rng.integers(len(sids)))]
                p = s + [s[-1]]
            else:  # a valid path whose last token is swapped for an unused sibling
                if not p:
                    p = [999]
                else:
                    p[-1] = 10 + 100 * (len(p) - 1) + 7
            if ref_next(sids, p) is None:
                impossible.append(p)
        yield sids, [list(v) for v in valid], impossible


def check_trie_valid(ctx: Ctx) -> None:
    for sids, valid, _ in trie_cases(ctx.rng):
        trie = ec.build(ctx, sids, check_inputs=True)
        for p in valid:
            ec.check_next(ctx, trie, sids, p, ref_next(sids, p))


def check_trie_impossible(ctx: Ctx) -> None:
    for sids, _, impossible in trie_cases(ctx.rng):
        trie = ec.build(ctx, sids, check_inputs=False)
        for p in impossible:
            ec.check_impossible(ctx, trie, sids, p)


# ================================================================================================
# exercise 11


def loss_cases(rng):
    cases = []
    for _ in range(10):
        G, K, T = int(rng.integers(2, 7)), int(rng.integers(2, 4)), 14
        m = (rng.random((G, K)) < 0.5).astype(np.float32)
        m[:, int(rng.integers(K))] = float(rng.integers(2))  # a step with no variance
        steps = random_steps(rng, G, T, K, structured=True)
        lengths = [int((row >= 0).nonzero()[0].max()) + 2 if (row >= 0).any() else 1 for row in steps]  # + <eos>
        mask = np.array([[t < n for t in range(T)] for n in lengths])
        logp = -rng.uniform(0.05, 3.0, (G, T)).round(4)
        old = (logp + rng.normal(scale=0.3, size=(G, T))).round(4)
        eps = float(rng.choice([0.1, 0.2, 0.28]))
        cases.append((torch.from_numpy(m), torch.from_numpy(steps), torch.from_numpy(mask),
                      torch.from_numpy(logp).float(), torch.from_numpy(old).float(), eps))
    return cases


def check_loss_advantages(ctx: Ctx) -> None:  # an input changed in place costs this part (not all three)
    for case in loss_cases(ctx.rng):
        got, note, inputs = ec.loss_outputs(ctx, case)
        want = ref_step_advantages(case[0].double().tolist(), len(case[0]))
        compare("sapo_group_loss: advantages", got[0], want, inputs, note=note, index_names=("rollout", "step"),
                kind="float")
        unchanged(note, "sapo_group_loss")


def check_loss_credit(ctx: Ctx) -> None:
    for case in loss_cases(ctx.rng):
        got, note, inputs = ec.loss_outputs(ctx, case)
        adv = as_numpy(got[0]).tolist()
        want = ref_token_credit(adv, case[1].tolist(), case[2].tolist(), True)
        compare("sapo_group_loss: token_adv (given your advantages)", got[1], want, {**inputs, "your advantages":
                np.asarray(adv)}, note=note, index_names=("rollout", "token"), kind="float")


def check_loss_value(ctx: Ctx) -> None:
    for case in loss_cases(ctx.rng):
        got, note, inputs = ec.loss_outputs(ctx, case)
        tok_adv = as_numpy(got[1]).tolist()
        want = ref_loss(tok_adv, case[3].double().tolist(), case[4].double().tolist(), case[2].tolist(), case[5])
        compare("sapo_group_loss: loss (given your token_adv)", got[2], want,
                {**inputs, "your token_adv": np.asarray(tok_adv)}, note=note, kind="loss")


# ================================================================================================
# every graded part of exercise_checks.EXERCISES, by (exercise, part name)

HIDDEN = {
    (1, "prefix_reward"): check_prefix_reward,
    (2, "token_advantages_loops"): check_token_credit,
    (3, "interleaved_step_index"): check_interleaved,
    (4, "range_advantages"): check_range_function,
    (4, "EX4_ONE_HIT_OF_8 (by hand)"): check_range_by_hand,
    (4, "as a plug-in (--rl.advantage=...:range_advantages)"): check_range_plugin,
    (6, "reward_to_go"): check_reward_to_go,
    (6, "as a plug-in (--rl.advantage=...:step_reward_to_go)"): check_reward_to_go_plugin,
    (8, "hit_at_k"): check_hit,
    (8, "ndcg_at_k"): check_ndcg,
    (9, "assignment (codes)"): check_assign,
    (9, "centroid update"): check_update,
    (9, "residual"): check_residual,
    (10, "next tokens of valid prefixes"): check_trie_valid,
    (10, "impossible prefixes raise ValueError"): check_trie_impossible,
    (11, "step advantages"): check_loss_advantages,
    (11, "per-token credit"): check_loss_credit,
    (11, "loss value"): check_loss_value,
}
