# %% setup: imports, data and settings
"""Tutorial 5: GRPO vs SAPO -- who gets credit for what.

Run:  python tutorials/05_grpo_vs_sapo.py          (about 15 s)

What you will see
  1. by hand, on one group of G rollouts: per-step matches m[i,k]; GRPO's exact-match reward and
     its one advantage per response; SAPO's per-step rewards and per-step advantages;
  2. zero-variance groups: why most GRPO groups teach nothing when exact match is rare;
  3. the group RL really uses (G samples at temperature 1, thinking included: the paper's setting) for a
     small SFT model on the compose world, where thinking block k states the facts SID level k is
     computed from: which blocks are right, and which TOKENS receive which credit (`plots.token_credit`,
     checked by hand with `reasoning.step_index` + `rl.token_advantages`), as a heatmap on one scale;
  4. a few RL steps of each algorithm from the same SFT model: rewards, exact-match rate, whether the
     sampled thinking states the right facts (`think_acc/step_k`) and `frac_reward_zero_std` step by
     step, then test hit@10 against the SFT start with a paired sign test: more than sampling noise?
Pictures: 05_token_credit.png, 05_rl_curves.png
"""

import copy
import dataclasses
import shutil

import _common as C
import matplotlib.pyplot as plt
import numpy as np
import torch

from minisapo.config import make_config, parse_overrides
from minisapo.evaluate import evaluate, paired_sign_test
from minisapo.generate import rollouts
from minisapo.pipeline import load_stack, new_model, rl_eval_fn
from minisapo.reasoning import build_examples, build_prompt, step_index, teacher, vocab_words
from minisapo.plots import token_credit
from minisapo.rl import (ALGOS, compute_rewards, reward_exact, reward_position, reward_prefix, sequence_advantages,
                         step_advantages, step_matches, token_advantages, train_rl)
from minisapo.rl_metrics import think_accuracy, zero_std_groups
from minisapo.metrics_log import read_metrics
from minisapo.sid import prefix_key
from minisapo.sft import train_sft

C.start("Tutorial 5 - GRPO vs SAPO: rewards, advantages and per-token credit, by hand and for real")

# The "tiny" preset (a tiny compose world: the next item's SID level k is computed from two facts of the
# history, and the teacher's thinking block k states them) plus this tutorial's SFT and RL settings;
# `--key=value` arguments go on top, as with the `minisapo` command, e.g.
#     python tutorials/05_grpo_vs_sapo.py --items_per_leaf=32 --data.name=tiny_ipl32
# The RL settings not named here are rl.py's defaults, the paper's setting: G samples at temperature 1
# (rollout=sample), each thinking block credited with its step's advantage (think_credit=True), a small
# KL term (beta=1e-3). Here: G = 8 samples for each of 16 prompts, 8 steps at a larger learning rate.
TUTORIAL = {"data_dir": str(C.DATA), "runs_dir": str(C.OUT / "runs"),
            "sft.max_steps": 400, "sft.batch_size": 32, "sft.eval_every": 0, "sft.eval_samples": 32,
            "rl.num_generations": 8, "rl.batch_size": 16, "rl.max_steps": 8, "rl.learning_rate": 1e-4,
            "rl.eval_every": 0, "rl.save_every": 0}
cfg = make_config({**TUTORIAL, **parse_overrides(C.args())}, preset="tiny")
stack = load_stack(cfg)
ds, table, tok, grammar = stack.dataset, stack.table, stack.tokenizer, stack.grammar
K = table.num_levels
np.set_printoptions(precision=3, suppress=True)
r = cfg.rl
print(f"RL: rollout={r.rollout}, think_credit={r.think_credit}, lr={r.learning_rate:g}, beta={r.beta:g}, "
      f"G={r.num_generations}, {r.batch_size} prompts x {r.max_steps} steps")


def marks(row) -> str:
    return "".join("✓" if v else "✗" for v in row.tolist())


# %% 1. One group, by hand
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
#   A_i = (r_i - mean_j r_j) / (std_j r_j + eps), one number per response, given to ALL its credited tokens
#   (section 3 says which).
# SAPO: reward m[i,k] per step, advantage per step k on its own:
#   A_ik = (m_ik - mean_j m_jk) / (std_j m_jk + eps), given only to the tokens of step k
#   (of those credited).
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

# %% 2. Zero-variance groups
# ----------------------------------------------------------------------------------------------
# 2. Zero-variance groups
#
# If every rollout of a group gets the same reward, every advantage is 0: the group contributes
# nothing to the gradient. With exact match that is the common case (nobody hits the exact item).
# SAPO's per-step rewards rarely agree on every step at once. TRL logs the fraction of such
# groups as `frac_reward_zero_std`; we count a SAPO group as "zero" only if all its steps are.
# (With the beam group of `--rl.rollout=beam` the G items are distinct: at most ONE rollout of a group
# can be the exact item, so a GRPO group has signal exactly when the target is among the G beams.)
# ----------------------------------------------------------------------------------------------
C.section("2. zero-variance groups: no exact hit, but the steps still differ")

miss = [(3, 1, 2), (3, 4, 0), (3, 1, 5), (3, 9, 2), (3, 4, 2), (3, 1, 0)]
m2 = step_matches(preds + miss, [target] * (2 * G), KH)  # two groups: the one above, then this one
print("group 2 matches: " + " ".join(marks(row) for row in m2[G:]))
print(f"zero-variance groups, GRPO (exact):   {zero_std_groups(reward_exact(m2), G).tolist()}")
print(f"zero-variance groups, SAPO (per step): {zero_std_groups(reward_position(m2), G).tolist()}")
print(f"SAPO advantages of group 2 (only step 1 varies):\n{step_advantages(reward_position(m2), G)[G:].numpy()}")

# %% 3. Which tokens get which credit -- on the group RL really uses
# ----------------------------------------------------------------------------------------------
# 3. Which tokens get which credit -- on the group RL really uses
#
# A small SFT model (as in tutorial 4) answers one training prompt the way RL's default rollout does
# (`generate.rollouts(..., mode="sample")`): G responses sampled at temperature 1, thinking included.
# In this world thinking block k is "often <code> recent <code>": the two facts of the history that
# SID level k is computed from, so a block can be RIGHT or WRONG, and a wrong block usually brings a
# wrong SID token k. We parse the G responses, compare each block with the teacher's
# (`rl_metrics.think_accuracy`), score them, and spread the advantages over the tokens:
#   GRPO: A_i on every token of response i.
#   SAPO: `step_index` says which step every token belongs to (thinking block k + SID token k; a dedup
#         token is a step of its own, rewarded by the exact match), and token t gets A[i, step(t)],
#         <eos> gets 0. With `step_token_mean` (the paper's 1/|y_i^(k)|) step k's tokens share it: each
#         gets A[i,k] * n_i / (K_i * |y_i^(k)|).
# `plots.token_credit` (rl.score_rollouts on one group) does this for both algorithms; below we also do it by hand with
# `step_index` + `token_advantages` and check that the two agree.
# ----------------------------------------------------------------------------------------------
C.section("3. per-token credit on a sampled group of a small SFT model")

model = new_model(cfg, stack)
train = build_examples(ds, table, tok, ds.splits["train"], cfg.reasoning, verbose=False)
train_sft(model, train, cfg.sft, C.OUT / "runs" / "05_sft", pad_id=tok.pad_id, seed=cfg.seed, progress=False)

# The group of each of 16 training prompts; we show the one with the most different patterns of right and
# wrong blocks and SID tokens.
G = cfg.rl.num_generations
cands = ds.splits["train"][:16]
ro = rollouts(model, grammar, [build_prompt(s.history, table, tok, cfg.reasoning) for s in cands], G, cfg.rl.rollout,
              cfg.rl.temperature, [torch.Generator().manual_seed(j) for j in range(len(cands))])
parsed = [grammar.parse(row[mk].tolist()) for row, mk in zip(ro.responses, ro.mask)]
S = grammar.num_steps  # K reasoning steps (+ the dedup token's step when SIDs have one)
all_m = step_matches([p.sid_ids if p.valid else None for p in parsed],
                     [tok.sid_ids(table, s.target) for s in cands for _ in range(G)], K, grammar.dedup)
blocks_of = teacher(ds, table, tok, cfg.reasoning)
want = [[tuple(vocab_words(b, tok)) for b in blocks_of(s.history, s.target)] for s in cands for _ in range(G)]
right = think_accuracy([[tuple(b) for b in p.blocks] for p in parsed], want, K)  # (B, K): block k states the facts
variety = [len({marks(row) for row in torch.cat([all_m, right], 1)[g * G:(g + 1) * G]}) for g in range(len(cands))]
g = int(np.argmax(variety))
rows = slice(g * G, (g + 1) * G)
responses, mask, group_parsed = ro.responses[rows], ro.mask[rows], parsed[rows]
tgt = tok.sid_ids(table, cands[g].target)
print(f"prompt {g}: target {tok.decode(tgt)}; the teacher's blocks: {blocks_of(cands[g].history, cands[g].target)}")
print(f"{'rollout':<8} {'thinking blocks (sampled)':<50} right?  SID steps")
for j in range(G):
    text = " | ".join(" ".join(tok.id_to_token(x) for x in b) for b in group_parsed[j].blocks)
    print(f"{j:<8} {text[:50]:<50} {marks(right[g * G + j]):<7} {marks(all_m[g * G + j])}")
agree = float((right == all_m[:, :K]).float().mean())
print(f"over all {len(parsed)} rollouts: block k and SID token k are both right or both wrong in {100 * agree:.0f} % of "
      f"the steps")

credit = token_credit(responses, mask, group_parsed, tgt, tok, K, algos=("grpo", "sapo"), think_credit=True,
                      dedup=grammar.dedup)
steps = step_index(responses, tok, K, has_prompt=False)  # (G, T)
credited = mask.clone()  # think_credit=True: every response token may get credit
adv = step_advantages(reward_position(credit["matches"]), G)  # (G, S)
by_hand = {"sapo": token_advantages(adv, steps, credited, step_token_mean=True),
           "grpo": token_advantages(sequence_advantages(reward_exact(credit["matches"]), G), steps, credited)}
for algo in ("grpo", "sapo"):
    print(f"{algo}: token_advantages(.., step_index(..), mask) == token_credit()['{algo}']: "
          f"{torch.allclose(by_hand[algo], credit[algo])}")

i = int(np.argmax([0 < row[:K].sum() < K for row in credit["matches"]]))  # a partial match if there is one
toks = [tok.id_to_token(x) for x in responses[i][mask[i]].tolist()]
print(f"\nrollout {i}: {marks(credit['matches'][i])}  SAPO step advantages {adv[i].numpy()}")
print(f"{'token':<12} step   GRPO credit   SAPO credit")
for t, name in enumerate(toks):
    grpo_t, sapo_t = float(credit["grpo"][i, t]) + 0.0, float(credit["sapo"][i, t]) + 0.0  # + 0.0: no "-0.000"
    print(f"{name:<12} {int(steps[i, t]):>4}   {grpo_t:>11.3f}   {sapo_t:>11.3f}")
sums = [float(credit["sapo"][i][steps[i] == k].sum()) for k in range(S)]
sizes = [int((steps[i] == k).sum()) for k in range(S)]
print(f"SAPO credit summed over each step's tokens: {np.round(sums, 3)}, step sizes {sizes}: a step's tokens share its "
      f"advantage (times n_i / K_i, so every response keeps its total weight)")


def heatmap(tokens, panels: dict, path, row_labels, title: str):
    """One panel per algorithm, stacked, on ONE symmetric colour scale: equal colours = equal credit."""
    T = max(len(t) for t in tokens)
    mats = {name: np.asarray(A, dtype=float)[:, :T] for name, A in panels.items()}
    vmax = max(float(np.abs(A).max()) for A in mats.values()) or 1.0
    fig, axes = plt.subplots(len(mats), 1, figsize=(0.32 * T + 2.5, len(mats) * (0.4 * len(tokens) + 1.0) + 0.6),
                             squeeze=False)
    for ax, (name, A) in zip(axes[:, 0], mats.items()):
        im = ax.imshow(A, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
        for r_, row in enumerate(tokens):
            for t, name_t in enumerate(row):
                ax.text(t, r_, name_t.strip("<>")[:6], ha="center", va="center", fontsize=5.5)
        ax.set_title(name, fontsize=9)
        ax.set_yticks(range(len(tokens)), row_labels, fontsize=7)
        ax.set_xticks([])
    axes[-1, 0].set_xlabel("response token (sampled thinking blocks, then the SID, then <eos>)")
    fig.colorbar(im, ax=list(axes[:, 0]), fraction=0.025, pad=0.01, label="advantage (one scale for both panels)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


tokens = [[tok.id_to_token(x) for x in responses[j][mask[j]].tolist()] for j in range(G)]
labels = [f"{j} think {marks(right[g * G + j])} sid {marks(credit['matches'][j])}" for j in range(G)]
C.saved(heatmap(tokens, {"GRPO: exact match, one advantage per response": credit["grpo"],
                         "SAPO: per-step match, advantage on that step's thinking block and SID token": credit["sapo"]},
                C.OUT / "05_token_credit.png", labels,
                f"who gets credit: one sampled group of {G} (target {tok.decode(tgt)}); blue = reinforced, red = discouraged"))

# %% 4. A few RL steps of each, from the same SFT model
# ----------------------------------------------------------------------------------------------
# 4. A few RL steps of each, from the same SFT model
#
# `train_rl` runs the loop: sample G responses per prompt -> score -> advantages -> update. Both runs
# start from the SAME SFT weights with the same seed, so they draw the same prompts and, at step 1,
# the very same samples: the first row compares the two estimators on identical data.
# Each algorithm's `reward` is on its own scale (GRPO: exact match, 0/1; SAPO: the mean per-step
# match), so they get separate panels; `hit_rate` (exact match of the samples), `think_acc/step_k`
# (sampled block k states the teacher's facts) and `frac_reward_zero_std` mean the same in both runs.
# `eval_fn` (pipeline.rl_eval_fn, what `minisapo rl` uses) measures before and after: valid hit@10 and the
# held-out per-level accuracy of the samples (eval/sampled_hit_rate/step_k). Then both models and the SFT
# start rank the test users, and a paired sign test says whether a change is more than sampling noise.
# ----------------------------------------------------------------------------------------------
C.section("4. a few RL steps of GRPO and of SAPO from the same SFT model")

samples = ds.splits["train"]
prompts = [build_prompt(s.history, table, tok, cfg.reasoning) for s in samples]
records, models = {}, {"sft": model}
for algo in ("grpo", "sapo"):
    run_dir = C.OUT / "runs" / f"05_{algo}"
    shutil.rmtree(run_dir, ignore_errors=True)  # train_rl appends to metrics.jsonl: start clean
    rl_cfg = dataclasses.replace(cfg.rl, **ALGOS[algo])  # the tutorial's RL settings + the algorithm's
    models[algo] = copy.deepcopy(model)
    train_rl(models[algo], None, grammar, tok, table, samples, prompts, rl_cfg, run_dir, eval_fn=rl_eval_fn(cfg, stack),
             seed=cfg.seed, progress=False,
             teacher_blocks=[[tuple(vocab_words(b, tok)) for b in blocks_of(x.history, x.target)] for x in samples])
    records[algo] = read_metrics(run_dir / "metrics.jsonl")

steps_of = {algo: [x for x in recs if "reward" in x] for algo, recs in records.items()}
# `frac_exact_zero_std` is the fraction of groups where the exact-match reward has no variance, logged
# for every algorithm: on SAPO's rollouts it says how many groups GRPO would have wasted.
print(f"{'step':>4} | {'GRPO reward':>11} {'hit_rate':>8} {'zero_std':>8} {'think_acc':>10} | {'SAPO reward':>11} "
      f"{'hit_rate':>8} {'zero_std':>8} {'exact_zero_std':>14} {'think_acc':>10}")


def think(rec) -> str:
    return "/".join(f"{rec[f'think_acc/step_{k}']:.2f}" for k in range(K))


for a, b in zip(steps_of["grpo"], steps_of["sapo"]):
    print(f"{a['step']:>4} | {a['reward']:>11.3f} {a['hit_rate']:>8.3f} {a['frac_reward_zero_std']:>8.2f} {think(a):>10} | "
          f"{b['reward']:>11.3f} {b['hit_rate']:>8.3f} {b['frac_reward_zero_std']:>8.2f} "
          f"{b['frac_exact_zero_std']:>14.2f} {think(b):>10}")
zero = {algo: float(np.mean([x["frac_reward_zero_std"] for x in s])) for algo, s in steps_of.items()}
print(f"mean frac_reward_zero_std over {len(steps_of['grpo'])} steps: GRPO {zero['grpo']:.2f}, SAPO {zero['sapo']:.2f}")

evals = {algo: [x for x in recs if "eval/valid_hit@10" in x] for algo, recs in records.items()}
level = {algo: [[e[f"eval/sampled_hit_rate/step_{k}"] for k in range(K)] for e in (ev[0], ev[-1])]
         for algo, ev in evals.items()}
n_valid = cfg.sft.eval_samples
for algo, ev in evals.items():
    print(f"{algo}: valid hit@10 ({n_valid} users) {ev[0]['eval/valid_hit@10']:.3f} -> {ev[-1]['eval/valid_hit@10']:.3f}; "
          f"held-out per-level accuracy of the samples {np.round(level[algo][0], 3)} -> {np.round(level[algo][1], 3)} "
          f"({' / '.join(f'{100 * (b - a):+.1f}' for a, b in zip(*level[algo]))} points)")

test = ds.splits["test"]
hits = {}
for name, m_ in models.items():
    rep = evaluate(m_, grammar, ds, table, tok, test, ks=(10,), beam_width=10, reasoning=cfg.reasoning, progress=False)
    hits[name] = [int(0 < rank <= 10) for rank in rep["ranks"]]
n = len(test)
tests = {algo: paired_sign_test(hits["sft"], hits[algo]) for algo in ("grpo", "sapo")}
print(f"\ntest hit@10 on {n} users: SFT {np.mean(hits['sft']):.3f}, GRPO {np.mean(hits['grpo']):.3f}, "
      f"SAPO {np.mean(hits['sapo']):.3f} (one standard error ~ {np.sqrt(0.25 / n):.3f} at most)")
for algo, t in tests.items():
    print(f"  {algo} vs SFT: users only {algo} hits {t['up']}, only SFT hits {t['down']}; sign test p = {t['p']:.2g}")

# The picture: one panel per quantity, so rewards on different scales never share an axis; markers and
# line styles keep overlapping lines visible (at step 1 the two runs see the same beams).
style = {"grpo": {"color": "tab:blue", "marker": "o", "ls": "-"}, "sapo": {"color": "tab:orange", "marker": "s", "ls": "--"}}
fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
for algo, s in steps_of.items():
    x = [e["step"] for e in s]
    axes[0 if algo == "grpo" else 1].plot(x, [e["reward"] for e in s], ms=4, label=algo, **style[algo])
    axes[2].plot(x, [e["hit_rate"] for e in s], ms=5 if algo == "grpo" else 4, mfc="none" if algo == "grpo" else None,
                 label=algo, **style[algo])
    axes[3].plot(x, [e["frac_reward_zero_std"] for e in s], ms=4, label=f"{algo} (its own reward)", **style[algo])
axes[3].plot([e["step"] for e in steps_of["sapo"]], [e["frac_exact_zero_std"] for e in steps_of["sapo"]], color="tab:gray",
             marker="x", ls=":", label="exact match on SAPO's beams")
titles = ("GRPO reward: exact match (0/1)", "SAPO reward: mean per-step match", "hit_rate: exact match of the samples",
          "frac_reward_zero_std: groups with no signal")
for ax, title in zip(axes, titles):
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("RL step")
    ax.legend(fontsize=7)
axes[3].set_ylim(-0.05, 1.05)
fig.tight_layout()
fig.savefig(C.OUT / "05_rl_curves.png", dpi=110)
plt.close(fig)
C.saved(C.OUT / "05_rl_curves.png")

# %% Takeaway
def moved(algo: str) -> str:
    t, d = tests[algo], np.mean(hits[algo]) - np.mean(hits["sft"])
    verdict = ("more than sampling noise" if t["p"] < 0.05 else "within sampling noise")
    return (f"{algo.upper()} {np.mean(hits['sft']):.3f} -> {np.mean(hits[algo]):.3f} ({100 * d:+.1f} points; "
            f"{t['up']} test users gained a hit, {t['down']} lost one, sign test p = {t['p']:.2g}: {verdict})")


lv = {algo: [100 * (level[algo][1][k] - level[algo][0][k]) for k in range(K)] for algo in level}
C.takeaway(
    "GRPO gives a whole response one advantage from exact match, so a near miss is punished like a total miss; "
    "SAPO gives each step its own group-relative advantage, on that step's thinking block and SID token. In this "
    f"world block k and SID token k were both right or both wrong in {100 * agree:.0f} % of the sampled steps, so a "
    "step's advantage lands on the block that made its SID token right or wrong.",
    f"The signal: over {len(steps_of['grpo'])} steps, on average {100 * zero['grpo']:.0f} % of GRPO's groups had "
    f"zero reward variance (no gradient at all) against {100 * zero['sapo']:.0f} % of SAPO's.",
    f"The result, after {len(steps_of['grpo'])} steps on the tiny world, test hit@10 on {n} users: {moved('grpo')}; "
    f"{moved('sapo')}. The held-out per-level accuracy of the samples moved "
    f"{' / '.join(f'{x:+.1f}' for x in lv['grpo'])} points (level 0 / 1 ...) under GRPO and "
    f"{' / '.join(f'{x:+.1f}' for x in lv['sapo'])} under SAPO ({len(ds.splits['valid'][:cfg.rl.eval_prompts])} "
    "validation users). A few steps on one seed rank nothing: tutorial 6 and README's race repeat this over seeds, "
    "worlds and learning rates, beside the control (SFT continued on the same outcomes).")

C.done()
