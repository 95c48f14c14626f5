"""Tutorial 5: GRPO vs SAPO -- who gets credit for what.

Run:  python tutorials/05_grpo_vs_sapo.py          (about 15 s)

What you will see
  1. by hand, on one group of G rollouts: per-step matches m[i,k]; GRPO's exact-match reward and
     its one advantage per response; SAPO's per-step rewards and per-step advantages;
  2. zero-variance groups: why most GRPO groups teach nothing when exact match is rare;
  3. real rollouts of a small SFT model: which TOKENS receive which credit
     (`rl.token_advantages` with `reasoning.step_index`), as a heatmap;
  4. a few RL steps of each algorithm from the same SFT model, `frac_reward_zero_std` side by side.
Pictures: 05_token_credit.png, 05_rl_curves.png
"""

import copy
import dataclasses
import shutil
import sys

import _common as C
import numpy as np
import torch

from minisapo.config import make_config, parse_overrides
from minisapo.evaluate import quick_hit_fn
from minisapo.generate import sample
from minisapo.pipeline import load_stack, new_model
from minisapo.plots import plot_rl_curves, plot_token_credit
from minisapo.reasoning import build_examples, build_prompt, step_index
from minisapo.rl import (ALGOS, compute_rewards, reward_exact, reward_position, reward_prefix,
                         sequence_advantages, step_advantages, step_matches, token_advantages, token_credit,
                         train_rl)
from minisapo.rl_metrics import zero_std_groups
from minisapo.runs import read_metrics
from minisapo.sid import prefix_key
from minisapo.sft import train_sft

C.start("Tutorial 5 - GRPO vs SAPO: rewards, advantages and per-token credit, by hand and for real")

# The "tiny" preset plus this tutorial's SFT and RL settings (a few small RL steps, no KL term for
# speed); `--key=value` arguments go on top, as with the `minisapo` command, e.g.
#     python tutorials/05_grpo_vs_sapo.py --items_per_leaf=32 --data.name=tiny_ipl32
TUTORIAL = {"data_dir": str(C.DATA), "runs_dir": str(C.OUT / "runs"),
            "sft.max_steps": 150, "sft.batch_size": 16, "sft.learning_rate": 1e-2, "sft.warmup_steps": 10,
            "sft.eval_every": 0, "sft.eval_samples": 32,
            "rl.num_generations": 8, "rl.batch_size": 8, "rl.max_steps": 5, "rl.learning_rate": 1e-4,
            "rl.beta": 0.0, "rl.eval_every": 0, "rl.save_every": 0}
cfg = make_config({**TUTORIAL, **parse_overrides(sys.argv[1:])}, preset="tiny")
stack = load_stack(cfg)
ds, table, tok, grammar = stack.dataset, stack.table, stack.tokenizer, stack.grammar
K = table.num_levels
np.set_printoptions(precision=3, suppress=True)


def marks(row) -> str:
    return "".join("✓" if v else "✗" for v in row.tolist())


# ----------------------------------------------------------------------------------------------
# 1. One group, by hand
#
# RL samples G responses for one prompt (a "group") and scores each. Here we skip the thinking and
# write six 3-level SIDs by hand against the target <a_3><b_1><c_7>:
#   m[i, k] = 1 if SID token k of response i equals the target's token k.
# (`step_matches` compares SIDs position by position, so we can give it the codes (3, 1, 7) as
# well as token ids: position k always holds a level-k token.)
#
# GRPO (the baseline): reward r_i = 1 only if the WHOLE SID matches (prod_k m[i,k]). Advantage
#   A_i = (r_i - mean_j r_j) / (std_j r_j + eps), one number per response, given to EVERY token.
# SAPO: reward m[i,k] per step, advantage per step k on its own:
#   A_ik = (m_ik - mean_j m_jk) / (std_j m_jk + eps), given only to the tokens of step k.
# (std is the unbiased std over the group, as in TRL; eps = 1e-4.)
# ----------------------------------------------------------------------------------------------
C.section("1. one group of G = 6 rollouts, by hand")

KH = 3  # levels of the hand-made example
target = (3, 1, 7)
preds = [(3, 1, 7), (3, 1, 2), (3, 4, 7), (3, 4, 0), (8, 1, 5), (8, 2, 0)]
G = len(preds)
m = step_matches(preds, [target] * G, KH)  # (G, K)
r_grpo = reward_exact(m)  # (G,)
A_grpo = sequence_advantages(r_grpo, G)  # (G,)
r_sapo = reward_position(m)  # (G, K)
A_sapo = step_advantages(r_sapo, G)  # (G, K)
print(f"target {prefix_key(target)}")
print(f"{'rollout':<8} {'SID':<20} m[i,k]  GRPO r  GRPO A   SAPO A[i,k] (k = 0, 1, 2)")
for i in range(G):
    print(f"{i:<8} {prefix_key(preds[i]):<20} {marks(m[i]):<7} {r_grpo[i]:>6.0f} {A_grpo[i]:>7.3f}   {A_sapo[i].numpy()}")

# the same numbers with numpy, straight from the formulas
r = m.numpy()
by_hand_grpo = (r.prod(1) - r.prod(1).mean()) / (r.prod(1).std(ddof=1) + 1e-4)
by_hand_sapo = (r - r.mean(0)) / (r.std(0, ddof=1) + 1e-4)
print(f"\nnumpy check: GRPO {np.allclose(by_hand_grpo, A_grpo.numpy(), atol=1e-5)}, "
      f"SAPO {np.allclose(by_hand_sapo, A_sapo.numpy(), atol=1e-5)}")
print("read it: rollouts 1 (✓✓✗) and 5 (✗✗✗) get the SAME GRPO advantage; SAPO rewards rollout 1's two right"
      "\nsteps and only blames its last one. Rollout 2 (✓✗✓) gets step-2 credit although step 1 was wrong:"
      "\nthe paper's reward is per position, not prefix-gated. The prefix-gated variant (algo sapo_prefix):")
print(f"  reward_prefix(m) =\n{reward_prefix(m).numpy()}")

print("\nevery preset in rl.ALGOS on this group (reward shape -> advantage shape):")
for algo, settings in ALGOS.items():
    rew = compute_rewards(m, settings["reward"], settings["advantage"])
    adv = sequence_advantages(rew, G) if settings["advantage"] == "sequence" else step_advantages(rew, G)
    print(f"  {algo:<13} reward={settings['reward']:<11} advantage={settings['advantage']:<8} "
          f"A of rollout 1 (✓✓✗): {np.atleast_1d(adv[1].numpy())}")

# ----------------------------------------------------------------------------------------------
# 2. Zero-variance groups
#
# If every rollout of a group gets the same reward, every advantage is 0: the group contributes
# nothing to the gradient. With exact match that is the common case (nobody hits the exact item).
# SAPO's per-step rewards rarely agree on every step at once. TRL logs the fraction of such
# groups as `frac_reward_zero_std`; we count a SAPO group as "zero" only if all its steps are.
# ----------------------------------------------------------------------------------------------
C.section("2. zero-variance groups: no exact hit, but the steps still differ")

miss = [(3, 1, 2), (3, 4, 0), (3, 1, 5), (3, 9, 2), (3, 4, 2), (3, 1, 0)]
m2 = step_matches(preds + miss, [target] * (2 * G), KH)  # two groups: the one above, then this one
print("group 2 matches: " + " ".join(marks(row) for row in m2[G:]))
print(f"zero-variance groups, GRPO (exact):   {zero_std_groups(reward_exact(m2), G).tolist()}")
print(f"zero-variance groups, SAPO (per step): {zero_std_groups(reward_position(m2), G).tolist()}")
print(f"SAPO advantages of group 2 (only step 1 varies):\n{step_advantages(reward_position(m2), G)[G:].numpy()}")

# ----------------------------------------------------------------------------------------------
# 3. Which tokens get which credit -- on real rollouts
#
# A small SFT model (as in tutorial 4) writes G responses for one training prompt. We parse them,
# score them, and spread the advantages over the tokens:
#   GRPO: A_i on every response token (thinking, SID, <eos>).
#   SAPO: `step_index` says which step every token belongs to (thinking block k + SID token k), and
#         token t gets A[i, step(t)], <eos> gets 0. With `step_token_mean` (the paper's 1/|y_i^(k)|)
#         step k's tokens share it: each gets A[i,k] * n_i / (K_i * |y_i^(k)|), |y_i^(k)| = tokens
#         of step k, n_i = tokens in all steps, K_i = steps. So every step carries the same total
#         weight however long its thinking was, and the response keeps its total token weight n_i
#         (as under GRPO, <eos> aside): the two differ in WHICH tokens get credit, not in how much.
# `rl.token_credit` does this for both algorithms; below we also do it by hand with
# `step_index` + `token_advantages` and check that the two agree.
# ----------------------------------------------------------------------------------------------
C.section("3. per-token credit on real rollouts of a small SFT model")

model = new_model(cfg, stack)
train = build_examples(ds, table, tok, ds.splits["train"], cfg.reasoning, verbose=False)
sft_dir = C.OUT / "runs" / "05_sft"
train_sft(model, train, cfg.sft, sft_dir, pad_id=tok.pad_id, seed=cfg.seed, progress=False)

# Sample G responses for each of 16 training prompts and show one group: preferably one where
# somebody hit the exact item (so GRPO has a signal too), with as many match patterns as possible.
G = cfg.rl.num_generations
cands = ds.splits["train"][:16]
ro = sample(model, grammar, [build_prompt(s.history, table, tok, cfg.reasoning) for s in cands], num_generations=G,
            generator=torch.Generator().manual_seed(0))
parsed = [grammar.parse(r[mk].tolist()) for r, mk in zip(ro.responses, ro.mask)]
all_m = step_matches([p.sid_ids if p.valid else None for p in parsed],
                     [tok.sid_ids(table, s.target) for s in cands for _ in range(G)], K)
variety = [len({marks(row) for row in all_m[g * G:(g + 1) * G]}) for g in range(len(cands))]
exact = [bool(reward_exact(all_m[g * G:(g + 1) * G]).sum() > 0) for g in range(len(cands))]
g = int(np.argmax([10 * e + v for e, v in zip(exact, variety)]))
rows = slice(g * G, (g + 1) * G)
responses, mask, group_parsed = ro.responses[rows], ro.mask[rows], parsed[rows]
tgt = tok.sid_ids(table, cands[g].target)
print(f"prompt {g}: target {tok.decode(tgt)}; {variety[g]} distinct match patterns among its {G} rollouts")
print(f"groups (of {len(cands)}) with no exact hit at all, i.e. no GRPO signal: {exact.count(False)}")

credit = token_credit(responses, mask, group_parsed, tgt, tok, K, algos=("grpo", "sapo"))
steps = step_index(responses, tok, K, has_prompt=False)  # (G, T)
adv = step_advantages(reward_position(credit["matches"]), G)  # (G, K)
by_hand = token_advantages(adv, steps, mask, step_token_mean=True)  # (G, T)
print(f"token_advantages(step_advantages(..), step_index(..)) == token_credit()['sapo']: "
      f"{torch.allclose(by_hand, credit['sapo'])}")

i = int(np.argmax([0 < row.sum() < K for row in credit["matches"]]))  # a partial match if there is one
toks = [tok.id_to_token(x) for x in responses[i][mask[i]].tolist()]
print(f"\nrollout {i}: {marks(credit['matches'][i])}  SAPO step advantages {adv[i].numpy()}")
print(f"{'token':<12} step   GRPO credit   SAPO credit")
for t, name in enumerate(toks):
    grpo_t, sapo_t = float(credit["grpo"][i, t]) + 0.0, float(credit["sapo"][i, t]) + 0.0  # + 0.0: no "-0.000"
    print(f"{name:<12} {int(steps[i, t]):>4}   {grpo_t:>11.3f}   {sapo_t:>11.3f}")
sizes = [int(((steps[i] == k) & mask[i]).sum()) for k in range(K)]
sums = [float(credit["sapo"][i][steps[i] == k].sum()) for k in range(K)]
print(f"tokens per step |y^(k)| = {sizes}; SAPO credit summed over each step's tokens: {np.round(sums, 3)}\n"
      f"= the step advantages x n_i / K_i = {np.round(adv[i].numpy() * sum(sizes) / sum(map(bool, sizes)), 3)}")

tokens = [[tok.id_to_token(x) for x in responses[j][mask[j]].tolist()] for j in range(G)]
labels = [f"{marks(credit['matches'][j])}" for j in range(G)]
C.saved(plot_token_credit(tokens, {"GRPO: exact match, one advantage per response": credit["grpo"],
                                   "SAPO: per-step match, advantage on that step's tokens": credit["sapo"]},
                          C.OUT / "05_token_credit.png", row_labels=labels,
                          title=f"who gets credit: one group of {G} rollouts (target {tok.decode(tgt)})"))

# ----------------------------------------------------------------------------------------------
# 4. A few RL steps of each, from the same SFT model
#
# `train_rl` runs the loop: sample G responses per prompt -> score -> advantages -> PPO-clip
# update. Both runs start from the SAME SFT weights with the same seed, so they draw the same
# prompts and, at step 1, the very same rollouts: the first row compares the two estimators on
# identical data. `reward` is on different scales (exact match vs mean per-step match); `hit_rate`
# (exact match of the sampled SIDs) is comparable. We switch off the KL term (beta=0) for speed.
# ----------------------------------------------------------------------------------------------
C.section("4. a few RL steps of GRPO and of SAPO from the same SFT model")

samples = ds.splits["train"]
prompts = [build_prompt(s.history, table, tok, cfg.reasoning) for s in samples]
quick = quick_hit_fn(grammar, ds, table, tok, ds.splits["valid"][:cfg.sft.eval_samples], k=10, reasoning=cfg.reasoning)
records = {}
for algo in ("grpo", "sapo"):
    run_dir = C.OUT / "runs" / f"05_{algo}"
    shutil.rmtree(run_dir, ignore_errors=True)  # train_rl appends to metrics.jsonl: start clean
    rl_cfg = dataclasses.replace(cfg.rl, **ALGOS[algo])  # the tutorial's RL settings + the algorithm's
    train_rl(copy.deepcopy(model), None, grammar, tok, table, samples, prompts, rl_cfg, run_dir, eval_fn=quick,
             seed=cfg.seed, progress=False)
    records[algo] = read_metrics(run_dir / "metrics.jsonl")

steps_of = {algo: [r for r in recs if "reward" in r] for algo, recs in records.items()}
# `frac_exact_zero_std` is the fraction of groups where the exact-match reward has no variance, logged
# for every algorithm: on SAPO's rollouts it says how many groups GRPO would have wasted.
print(f"{'step':>4} | {'GRPO reward':>11} {'hit_rate':>8} {'zero_std':>8} | {'SAPO reward':>11} {'hit_rate':>8} "
      f"{'zero_std':>8} {'exact_zero_std':>14}  zero_std per step")
for a, b in zip(steps_of["grpo"], steps_of["sapo"]):
    per_step = [round(b[f"frac_reward_zero_std/step_{k}"], 2) for k in range(K)]
    print(f"{a['step']:>4} | {a['reward']:>11.3f} {a['hit_rate']:>8.3f} {a['frac_reward_zero_std']:>8.2f} | "
          f"{b['reward']:>11.3f} {b['hit_rate']:>8.3f} {b['frac_reward_zero_std']:>8.2f} "
          f"{b.get('frac_exact_zero_std', float('nan')):>14.2f}  {per_step}")
for algo, recs in records.items():
    ev = [r for r in recs if "eval/valid_hit@10" in r]
    print(f"{algo}: valid hit@10 {ev[0]['eval/valid_hit@10']:.3f} -> {ev[-1]['eval/valid_hit@10']:.3f} "
          f"after {steps_of[algo][-1]['step']} steps (a few steps move little; `minisapo compare` runs it for real)")
C.saved(plot_rl_curves(records, C.OUT / "05_rl_curves.png", keys=("reward", "frac_reward_zero_std", "hit_rate")))

C.done()
