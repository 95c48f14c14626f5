"""Tutorial 4: reasoning traces, reasoning steps, and supervised fine-tuning.

Run:  python tutorials/04_reasoning_and_sft.py          (about 10 s)

What you will see
  1. a prompt: the user's history written as SID tokens;
  2. the teacher's thinking blocks, built from the data (one per SID level), in both styles
     ("history", the default: what the history shows; "target": names the target, the paper-style rationale);
  3. the response in both layouts, and `step_index`: the reasoning step of every token
     (step k = thinking block k + SID token k; a dedup token belongs to the last step);
  4. a short SFT on teacher traces, its curves, and a quick hit@10 against popularity and the oracle.
Pictures: 04_steps_blocks_first.png, 04_steps_interleaved.png, 04_sft_curves.png
"""

import sys
from dataclasses import replace

import _common as C
import torch

from minisapo.config import make_config, parse_overrides
from minisapo.evaluate import eval_report, evaluate, format_table, oracle_baseline, popularity_baseline, quick_hit_fn
from minisapo.generate import beam_search
from minisapo.pipeline import load_stack, new_model
from minisapo.plots import plot_response_steps, plot_sft_curves
from minisapo.reasoning import build_examples, build_prompt, build_response, step_index, teacher_blocks
from minisapo.runs import read_metrics
from minisapo.sft import SFTConfig, train_sft

C.start("Tutorial 4 - thinking blocks, reasoning steps (step_index), and a short SFT")

# The "tiny" preset: the tiny synthetic world and a 2-layer, 32-wide GPT. `load_stack` builds (or
# loads from the cache) the dataset, SIDs, tokenizer and the response grammar (tutorial 3).
cfg = make_config({"data_dir": str(C.DATA), "runs_dir": str(C.OUT / "runs"), **parse_overrides(sys.argv[1:])},
                  preset="tiny")
stack = load_stack(cfg)
ds, table, tok, grammar = stack.dataset, stack.table, stack.tokenizer, stack.grammar
K = table.num_levels
rcfg = cfg.reasoning

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
# (train_sft prints one line per validation; every record also goes to <run_dir>/metrics.jsonl)
train_sft(model, train, sft_cfg, run_dir, valid_examples=valid, pad_id=tok.pad_id, seed=cfg.seed, progress=False,
          valid_fn=quick_hit_fn(grammar, ds, table, tok, valid_samples, k=10, reasoning=rcfg))
C.saved(plot_sft_curves(read_metrics(run_dir / "metrics.jsonl"), C.OUT / "04_sft_curves.png"))

# hit@K on test samples, with the two baselines: popularity (floor) and the exact oracle (ceiling)
test = ds.splits["test"][:50]
report = eval_report(evaluate(model, grammar, ds, table, tok, test, ks=(1, 5, 10), beam_width=10, progress=False),
                     popularity_baseline(ds, test, ks=(1, 5, 10), table=table),
                     oracle_baseline(ds, test, ks=(1, 5, 10), table=table))
print(f"\nfirst {len(test)} test samples:\n{format_table(report)}")

# What the trained model writes for one test sample: its own (greedy) thinking, then its top 5.
t = ds.splits["test"][0]
res = beam_search(model, grammar, [build_prompt(t.history, table, tok, rcfg)], beam_width=10)[0]
print(f"\nmodel's thinking : {tok.decode(res.thinking)}")
print(f"teacher's blocks : {teacher_blocks(t.history, t.target, table, tok, rcfg)}")
print(f"target           : item {t.target} {''.join(table.tokens(t.target))} {ds.item_titles[t.target]}")
for r, item in enumerate(res.items[:5], 1):
    print(f"  {r}. item {item:>2} {''.join(table.tokens(item)):<26} {ds.item_titles[item]}"
          + ("   <- target" if item == t.target else ""))

C.done()
