# %% setup: imports, data and settings
"""Tutorial 4: reasoning traces, reasoning steps, and supervised fine-tuning.

Run:  python tutorials/04_reasoning_and_sft.py          (about 15 s)

What you will see
  1. a prompt: the user's history written as SID tokens;
  2. the teacher's thinking blocks, built from the data (one per SID level), in both styles
     ("history", the default: what the history shows; "target": names the target, the paper-style rationale);
  3. the response in both layouts, and `step_index`: the reasoning step of every token
     (step k = thinking block k + SID token k; a dedup token is a step of its own, K);
  4. a short SFT on teacher traces: its validation records, its curves, and hit@K against popularity
     and the oracle, with the standard error that says which differences are sampling noise.
Pictures: 04_steps_blocks_first.png, 04_steps_interleaved.png, 04_sft_curves.png
"""

import math
from dataclasses import replace

import _common as C
import torch

from minisapo.config import make_config, parse_overrides
from minisapo.evaluate import eval_report, evaluate, format_table, oracle_baseline, popularity_baseline, quick_hit_fn
from minisapo.generate import beam_search
from minisapo.pipeline import load_stack, new_model
from minisapo.plots import plot_response_steps, plot_sft_curves
from minisapo.reasoning import build_examples, build_prompt, build_response, step_index, teacher_blocks
from minisapo.metrics_log import read_metrics
from minisapo.sft import SFTConfig, train_sft

C.start("Tutorial 4 - thinking blocks, reasoning steps (step_index), and a short SFT")

# The "tiny" preset's 2-layer, 32-wide GPT on the tiny taxonomy world of tutorials 1-3 (3 SID levels from
# RQ-KMeans, the "history" teacher). `load_stack` builds (or loads from the cache) the dataset, SIDs,
# tokenizer and the response grammar (tutorial 3). Tutorial 5 moves to the compose world, where the
# thinking states the facts the next item is computed from (reasoning.teacher=world).
cfg = make_config({"data_dir": str(C.DATA), "runs_dir": str(C.OUT / "runs"), "data.world": "tiny", "sid.levels": 3,
                   "reasoning.teacher": "history", **parse_overrides(C.args())}, preset="tiny")
stack = load_stack(cfg)
ds, table, tok, grammar = stack.dataset, stack.table, stack.tokenizer, stack.grammar
K = table.num_levels
rcfg = cfg.reasoning

# %% 1. The prompt
# ----------------------------------------------------------------------------------------------
# 1. The prompt
#
# The user's history, oldest first, each item written as its SID, between <bos> and <sep>.
# (With reasoning.prompt_titles=True a few title words follow each SID.)
# ----------------------------------------------------------------------------------------------
C.section("1. a prompt: the history as SID tokens")

# a training sample whose target carries a dedup token, to see where that token goes
s = next((x for x in ds.splits["train"] if table.dedup[x.target] >= 0), ds.splits["train"][0])
for i in s.history:
    print(f"  history item {i:>2}  {''.join(table.tokens(i)):<26} {ds.item_titles[i]}")
print(f"  target       {s.target:>2}  {''.join(table.tokens(s.target)):<26} {ds.item_titles[s.target]}")
prompt = build_prompt(s.history, table, tok, rcfg)
print(f"\nprompt ids ({len(prompt)}): {prompt}\nprompt text: {tok.decode(prompt)}")

# %% 2. Teacher thinking blocks
# ----------------------------------------------------------------------------------------------
# 2. Teacher thinking blocks
#
# SFT needs a reasoning trace for every sample. Without an LLM, the teacher writes one block per
# SID level from the data, in one of two styles (reasoning.teacher):
#   "history" (the default): block k = "recent <descriptor of the last recent item's level-k prefix>
#       often <descriptor of the most frequent level-k prefix among the last `recent` items>". It uses
#       only what the model knows when it writes the block: the history (and, in the interleaved
#       layout, the SID tokens already written, i.e. the target's levels < k).
#   "target": the paper-style rationale "recent <history at level k> next <the descriptor of the
#       target's level-k prefix>". It names the answer. At evaluation the model writes its thinking
#       greedily before the beam search over SIDs, and on this data the level-2/3 descriptors are
#       nearly item-specific: the thinking then commits to one item and the beam has little left to
#       rank (on the synthetic default it ranked below sid_only at the same SFT budget).
# Step k's words are about SID token k either way.
# (External traces from an LLM can replace them: reasoning.traces=<file.jsonl>.)
# ----------------------------------------------------------------------------------------------
C.section("2. the teacher's thinking blocks: one per SID level")

styles = {t: teacher_blocks(s.history, s.target, table, tok, replace(rcfg, teacher=t)) for t in ("history", "target")}
codes = [int(c) for c in table.codes[s.target]]
for k in range(K):
    print(f"  block {k}  history: {styles['history'][k]!r:<44} target: {styles['target'][k]!r}")
    print(f"           (the target's level-{k} prefix {''.join(table.tokens(s.target)[:k + 1])} is "
          f"{table.descriptor(codes[:k + 1])!r})")
# in blocks_first, history-style blocks do not depend on the target: another target gives the same blocks
other = next(i for i in range(table.num_items) if table.codes[i][0] != table.codes[s.target][0])
bf = replace(rcfg, teacher="history", layout="blocks_first")
print(f"  same history, target {other} instead: history-style blocks identical? "
      f"{teacher_blocks(s.history, other, table, tok, bf) == teacher_blocks(s.history, s.target, table, tok, bf)}")
blocks = styles[rcfg.teacher]  # the configured style (reasoning.teacher), used below

# %% 3. Two layouts, one step index
# ----------------------------------------------------------------------------------------------
# 3. Two layouts, one step index
#
#   blocks_first (the paper):  <think>b0</think> <think>b1</think> <think>b2</think> s0 s1 s2 [d] <eos>
#   interleaved:               <think>b0</think> s0 <think>b1</think> s1 <think>b2</think> s2 [d] <eos>
# A reasoning STEP k is thinking block k plus SID token k, wherever they sit. `step_index` maps
# every token to its step (-1 = prompt, <eos>, padding). SAPO gives step k's advantage to exactly
# those tokens, so this one function decides which tokens get which credit (tutorial 5).
# ----------------------------------------------------------------------------------------------
C.section("3. step_index, token by token, for both layouts")

responses = {layout: build_response(s.target, blocks, table, tok, layout, "reasoning", rcfg.max_think_tokens)
             for layout in ("blocks_first", "interleaved")}
steps = {layout: step_index(torch.tensor([r]), tok, K, has_prompt=False)[0].tolist()
         for layout, r in responses.items()}
print(f"{'pos':>4}  {'blocks_first':<14} step   {'interleaved':<14} step")
for t in range(max(len(r) for r in responses.values())):
    cells = []
    for layout in responses:
        r, st = responses[layout], steps[layout]
        cells.append(f"{tok.id_to_token(r[t]):<14} {st[t]:>4}" if t < len(r) else " " * 19)
    print(f"{t:>4}  " + "   ".join(cells))
for layout in responses:
    sizes = [steps[layout].count(k) for k in range(K)]
    print(f"{layout}: tokens per step {sizes}; the dedup token {table.tokens(s.target)[-1]} is in step "
          f"{steps[layout][responses[layout].index(tok.sid_ids(table, s.target)[-1])]}")
sid_only = build_response(s.target, None, table, tok, mode="sid_only")
print(f"sid_only (no thinking): {tok.decode(sid_only)} -> steps "
      f"{step_index(torch.tensor([sid_only]), tok, K, has_prompt=False)[0].tolist()}")

# With the prompt in front (has_prompt=True, the default), everything up to <sep> is -1.
for layout, r in responses.items():
    C.saved(plot_response_steps(prompt + r, tok, K, C.OUT / f"04_steps_{layout}.png",
                                title=f"{layout}: every token coloured by its reasoning step"))

# %% 4. Supervised fine-tuning
# ----------------------------------------------------------------------------------------------
# 4. Supervised fine-tuning
#
# Examples are (prompt, teacher response) pairs, one per training sample. The loss is the
# next-token cross-entropy on the response tokens only (the prompt is context, not a target).
# `train_sft` is a nanoGPT-style loop: warmup + cosine learning rate, AdamW, gradient clipping,
# and at every `eval_every` steps a validation loss and `valid_fn` -- here the paper's protocol
# (greedy thinking + constrained beam search) on 32 validation samples: valid_hit@10.
# 150 steps take a few seconds; `minisapo run --preset=small` trains a bigger model for longer.
# ----------------------------------------------------------------------------------------------
C.section("4. a short SFT on teacher traces, then a quick hit@10")

train = build_examples(ds, table, tok, ds.splits["train"], rcfg)
valid_samples = ds.splits["valid"][:32]
valid = build_examples(ds, table, tok, valid_samples, rcfg)
lengths = [len(r) for _, r in train]
print(f"{len(train)} training examples; a response is {min(lengths)}-{max(lengths)} tokens")
model = new_model(cfg, stack)  # seeded by cfg.seed
sft_cfg = SFTConfig(max_steps=150, batch_size=16, learning_rate=1e-2, warmup_steps=10, eval_every=50, eval_samples=32)
run_dir = C.OUT / "runs" / "04_sft"
# progress=False: no progress bar. Every record goes to <run_dir>/metrics.jsonl, one JSON object per
# line: a training record every `log_every` steps, a validation record every `eval_every` steps.
train_sft(model, train, sft_cfg, run_dir, valid_examples=valid, pad_id=tok.pad_id, seed=cfg.seed, progress=False,
          valid_fn=quick_hit_fn(grammar, ds, table, tok, valid_samples, k=10, reasoning=rcfg))
records = read_metrics(run_dir / "metrics.jsonl")
train_loss = {r["step"]: r["loss"] for r in records if "loss" in r}
validations = [r for r in records if "valid_loss" in r]


def se_valid(p: float) -> float:  # the standard error of a hit rate on the validation samples (see below)
    return math.sqrt(p * (1 - p) / len(valid_samples))


first = min(train_loss)  # the first logged training step, before any validation
print(f"the first training record and the validation records of {run_dir / 'metrics.jsonl'}:")
print(f"{'step':>5} {'train loss':>10} {'valid loss':>10} {'valid_hit@10':>12} {'+- SE':>6}")
print(f"{first:>5} {train_loss[first]:>10.3f} {'-':>10} {'-':>12} {'-':>6}")
for r in validations:
    print(f"{r['step']:>5} {train_loss.get(r['step'], float('nan')):>10.3f} {r['valid_loss']:>10.3f} "
          f"{r['valid_hit@10']:>12.3f} {se_valid(r['valid_hit@10']):>6.3f}")
C.saved(plot_sft_curves(records, C.OUT / "04_sft_curves.png"))

# hit@K on test samples, with the two baselines: popularity (floor) and the exact oracle (ceiling)
test = ds.splits["test"][:50]
report = eval_report(evaluate(model, grammar, ds, table, tok, test, ks=(1, 5, 10), beam_width=10, progress=False),
                     popularity_baseline(ds, test, ks=(1, 5, 10), table=table),
                     oracle_baseline(ds, test, ks=(1, 5, 10), table=table))
print(f"\nfirst {len(test)} test samples:\n{format_table(report)}")

# Sampling noise. A hit rate p measured on n samples has standard error sqrt(p (1 - p) / n): with
# n = 50 and p = 0.2 that is 0.057. Two rates closer than about two standard errors of their
# difference, sqrt(se_a^2 + se_b^2), cannot be told apart on these samples. (Model and oracle are
# scored on the same samples, so this is a rough yardstick, not a paired test.) The oracle's
# `expected_hit@K` is its average CHANCE of a hit, so it does not depend on which item happened to
# come next: that is the ceiling to compare a model with.
n = len(test)


def se(p: float) -> float:
    return math.sqrt(p * (1 - p) / n)


oracle, popular = report["baselines"]["oracle"], report["baselines"]["popularity"]
verdicts = {}
print(f"\nn = {n}: each rate +- its standard error; 'noise' = the difference is under 2 standard errors")
print(f"{'metric':<7} {'model':>14} {'oracle':>14} {'difference':>10}  {'2 SE':>5}  verdict")
for k in (1, 5, 10):
    pm, po = report[f"hit@{k}"], oracle[f"hit@{k}"]
    two_se = 2 * math.hypot(se(pm), se(po))
    verdicts[k] = "noise" if abs(pm - po) < two_se else ("model above" if pm > po else "model below")
    print(f"hit@{k:<3} {pm:>6.2f} +- {se(pm):.3f} {po:>6.2f} +- {se(po):.3f} {pm - po:>+10.2f}  {two_se:>5.2f}  "
          f"{verdicts[k]}")
m10, p10 = report["hit@10"], popular["hit@10"]
two_se_pop = 2 * math.hypot(se(m10), se(p10))
print(f"{'metric':<7} {'model':>14} {'popularity':>14} {'difference':>10}  {'2 SE':>5}")
print(f"hit@10  {m10:>6.2f} +- {se(m10):.3f} {p10:>6.2f} +- {se(p10):.3f} {m10 - p10:>+10.2f}  {two_se_pop:>5.2f}")

# What the trained model writes for one test sample: its own (greedy) thinking, then its top 5.
t = ds.splits["test"][0]
res = beam_search(model, grammar, [build_prompt(t.history, table, tok, rcfg)], beam_width=10)[0]
print(f"\nmodel's thinking : {tok.decode(res.thinking)}")
print(f"teacher's blocks : {teacher_blocks(t.history, t.target, table, tok, rcfg)}")
print(f"target           : item {t.target} {''.join(table.tokens(t.target))} {ds.item_titles[t.target]}")
for r, item in enumerate(res.items[:5], 1):
    print(f"  {r}. item {item:>2} {''.join(table.tokens(item)):<26} {ds.item_titles[item]}"
          + ("   <- target" if item == t.target else ""))

# %% Takeaway
o10, e10 = oracle["hit@10"], oracle["expected_hit@10"]
if m10 - p10 >= two_se_pop:
    vs_pop = (f"above popularity ({p10:.2f}): the difference {m10 - p10:+.2f} is more than 2 standard errors "
              f"({two_se_pop:.2f})")
else:
    vs_pop = (f"not clearly above popularity ({p10:.2f}; the difference {m10 - p10:+.2f} is under 2 standard errors, "
              f"{two_se_pop:.2f})")
at_or_above = [f"hit@{k}" for k in (1, 5, 10) if report[f"hit@{k}"] >= oracle[f"hit@{k}"]]
beyond = [f"hit@{k}" for k in (1, 5, 10) if verdicts[k] == "model above"]
if not at_or_above:
    vs_oracle = "The model is below the realised oracle at every K (no model beats the oracle in expectation)."
elif not beyond:
    vs_oracle = (f"Where the table shows the model at or above the oracle ({', '.join(at_or_above)}) the difference "
                 f"is under 2 standard errors: sampling noise on {n} samples, not a model that beats the ceiling.")
else:
    vs_oracle = (f"The model beats the realised oracle by more than 2 standard errors at {', '.join(beyond)}: no "
                 f"model can in expectation, so these {n} samples are a lucky draw (it happens); evaluate on more.")
v0, v1 = validations[0], validations[-1]
dedup_note = ", the dedup token a step of its own" if table.dedup[s.target] >= 0 else ""
C.takeaway(
    f"A step is a thinking block plus its SID token ({sizes} tokens per step in this response{dedup_note}): "
    f"`step_index` is how RL (tutorial 5) gives each step its own credit.",
    f"{v1['step']} SFT steps on teacher traces took the training loss from {train_loss[first]:.2f} (step {first}) "
    f"to {train_loss[v1['step']]:.2f} and valid hit@10 from {v0['valid_hit@10']:.2f} (step {v0['step']}) to "
    f"{v1['valid_hit@10']:.2f} (+- {se_valid(v1['valid_hit@10']):.2f} on {len(valid_samples)} validation samples).",
    f"On {n} test samples the model's hit@10 is {m10:.2f} +- {se(m10):.2f}: {vs_pop}, against the oracle's "
    f"{o10:.2f} +- {se(o10):.2f} realised and {e10:.2f} expected. {vs_oracle}")

C.done()
