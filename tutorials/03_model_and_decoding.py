# %% setup: imports, data and settings
"""Tutorial 3: the model and constrained decoding.

Run:  python tutorials/03_model_and_decoding.py          (a few seconds)

What you will see
  1. the stack below the model: dataset -> SIDs -> tokenizer -> trie -> response grammar;
  2. a from-scratch GPT: logits for a prompt, and why left padding does not change them;
  3. the response grammar: the allowed-token mask at every position of one response;
  4. sampling G responses per prompt with a KV cache (and the same log-probs recomputed for RL);
  5. greedy decoding, and the constrained beam search that ranks distinct valid items.
The model here is untrained on purpose: the grammar alone guarantees valid responses.
Picture: 03_grammar_mask.png
"""

import time

import _common as C
import matplotlib.pyplot as plt
import torch

from minisapo.data import DataConfig, load, prepare
from minisapo.generate import beam_search, left_pad, response_logprobs, sample
from minisapo.grammar import Grammar
from minisapo.model import ModelConfig, build_model
from minisapo.reasoning import ReasoningConfig, build_examples, build_prompt
from minisapo.sid import SIDConfig, SIDTrie
from minisapo.sid import prepare as prepare_sids

C.start("Tutorial 3 - the GPT, the response grammar, sampling with a KV cache, constrained beam search")

# %% 1. The stack below the model
# ----------------------------------------------------------------------------------------------
# 1. The stack below the model
#
# This is what `minisapo.pipeline.load_stack(cfg)` does (tutorials 4 and 5 call it): the dataset,
# its SIDs and tokenizer (cached on disk by tutorial 2), the prefix trie, and the Grammar that
# decides which token may come next in a response.
# ----------------------------------------------------------------------------------------------
C.section("1. dataset -> SIDs -> tokenizer -> trie -> grammar")

ds = load(C.DATA, prepare(DataConfig(world="tiny"), C.DATA).name)
table, tok, _ = prepare_sids(ds, SIDConfig(), C.DATA / "processed" / ds.name / "sid", verbose=False)
trie = SIDTrie(table, tok)
rcfg = ReasoningConfig()  # mode="reasoning", layout="blocks_first", max_think_tokens=16
grammar = Grammar(tok, trie, table.num_levels, rcfg.layout, rcfg.max_think_tokens, rcfg.mode)
print(grammar, f"\nlongest possible response: {grammar.max_length} tokens")

# %% 2. The GPT
# ----------------------------------------------------------------------------------------------
# 2. The GPT
#
# A decoder-only transformer (RMSNorm, RoPE, causal attention, tied embeddings) like nanoGPT.
# Input: token ids (B, T). Output: logits (B, T, V), one next-token score per vocabulary entry.
# Prompts have different lengths, so batches are padded on the LEFT and the model gets
# `attn_mask` (True = real token): padding is never attended to and does not shift positions,
# so a padded prompt gets exactly the logits it gets alone.
# ----------------------------------------------------------------------------------------------
C.section("2. the GPT: logits, and left padding that changes nothing")

model = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=32), vocab_size=tok.vocab_size)
model.eval()
print(f"{model.num_params():,} parameters; vocabulary {tok.vocab_size}")
s0, s1 = ds.splits["test"][0], ds.splits["test"][1]
p0 = build_prompt(s0.history, table, tok, rcfg)
p1 = build_prompt(s1.history[-3:], table, tok, rcfg)  # a shorter prompt
print(f"prompt ({len(p0)} tokens): {tok.decode(p0)}")
with torch.no_grad():
    alone = model(torch.tensor([p1]))[:, -1]  # (1, V) logits after the last prompt token
    ids, real = left_pad([p0, p1], tok.pad_id)  # (2, L) and (2, L) bool
    batch = model(ids, attn_mask=real)[:, -1]  # (2, V)
pad_diff = float((batch[1] - alone[0]).abs().max())
print(f"left-padded batch:\n{ids}\nmax |logit difference| padded vs alone: {pad_diff:.2e}")
probs = batch[0].softmax(-1)
print("an untrained model's next-token distribution after <sep> is nearly flat: top 5 =",
      ", ".join(f"{tok.id_to_token(int(i))} {float(probs[i]):.3f}" for i in probs.topk(5).indices))

# %% 3. The response grammar
# ----------------------------------------------------------------------------------------------
# 3. The response grammar
#
# One definition drives sampling, the RL loss and beam search. A response (blocks_first layout):
#     <think> words </think>  x K,  then the K SID tokens (+ a dedup token if needed),  then <eos>
# Inside a block only words (1..max_think_tokens of them, then </think> is forced); at a SID
# position only what the trie allows given the SID so far; then <eos>. Below: the teacher's
# response for one sample, and at each position how many tokens the grammar allows.
# ----------------------------------------------------------------------------------------------
C.section("3. the allowed-token mask at every position of one response")

prompt, response = build_examples(ds, table, tok, [s0], rcfg)[0]
masks = grammar.masks(torch.tensor([response]))[0]  # (T, V) bool: allowed at t given response[:t]
rows = []
for t, x in enumerate(response):
    state = grammar.state_of(response[:t])
    allowed = masks[t].nonzero().flatten().tolist()
    shown = " ".join(tok.id_to_token(i) for i in allowed[:5]) + (" ..." if len(allowed) > 5 else "")
    rows.append((state.phase, len(allowed), f"{t:>4}  {tok.id_to_token(x):<14} {state.phase:<7} {len(allowed):>8}  {shown}"))
print(" pos  token          phase   #allowed  allowed (first few)")
for t, (phase, n, line) in enumerate(rows):  # runs of identical word positions are shortened to "..."
    same_as_prev = t > 0 and rows[t - 1][:2] == (phase, n)
    same_as_next = t + 1 < len(rows) and rows[t + 1][:2] == (phase, n)
    if not (same_as_prev and same_as_next):
        print(line)
    elif not (t > 1 and rows[t - 2][:2] == (phase, n)):
        print("   ...")
parsed = grammar.parse(response)
print(f"\nparse: valid={parsed.valid}, SID {tok.decode(parsed.sid_ids)}, item {parsed.item} (target {s0.target})")
broken = list(response)
broken[-2] = tok.level_ids(0)[0]  # an <a_..> token where the last SID token should be
print(f"a broken response: {grammar.parse(broken).error}")

# The picture: rows = response positions, columns = the vocabulary (specials | SID levels | words).
fig, ax = plt.subplots(figsize=(11, 6))
ax.imshow(masks.numpy(), aspect="auto", cmap="Greens", interpolation="nearest", vmin=0, vmax=1.6)
ax.scatter(response, range(len(response)), marker="x", color="crimson", s=18, label="the token written")
bounds = [7] + [max(tok.level_ids(level)) + 1 for level in range(table.num_levels + 1)]
for b in bounds:
    ax.axvline(b - 0.5, color="k", lw=0.6)
names = ["specials"] + [f"level {'abcdefgh'[level]}" for level in range(table.num_levels)] + ["dedup", "words"]
for lo, hi, name in zip([0] + bounds, bounds + [tok.vocab_size], names):
    ax.text((lo + hi) / 2 - 0.5, -1.2, name, ha="center", fontsize=8)
ax.set_yticks(range(len(response)))
ax.set_yticklabels([f"{t}: {tok.id_to_token(x)}" for t, x in enumerate(response)], fontsize=6)
ax.set_xlabel("token id")
ax.set_title("allowed tokens (green) at each position of a teacher response", pad=18)
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
fig.savefig(C.OUT / "03_grammar_mask.png", dpi=110)
plt.close(fig)
C.saved(C.OUT / "03_grammar_mask.png")

# %% 4. Sampling G responses with a KV cache
# ----------------------------------------------------------------------------------------------
# 4. Sampling G responses with a KV cache
#
# RL needs a group of G responses per prompt. `sample` prefills the prompt once, copies its
# key/value cache G times, then feeds one new token per step: each step costs one token's forward
# pass instead of the whole sequence. Every token is drawn from the *constrained* distribution
# (softmax over the allowed tokens only), so every response is valid, even from this random model.
# It also returns each token's log-prob; `response_logprobs` recomputes them in one forward pass
# with gradients (the RL loss) under the same grammar -- they must agree, so the PPO ratio is 1.
# ----------------------------------------------------------------------------------------------
C.section("4. sampling G responses per prompt (KV cache), log-probs for RL")

G = 4
t0 = time.time()
ro = sample(model, grammar, [p0], num_generations=G, temperature=1.0, generator=torch.Generator().manual_seed(0))
t_cache = time.time() - t0
t0 = time.time()
ro_nc = sample(model, grammar, [p0], num_generations=G, temperature=1.0, generator=torch.Generator().manual_seed(0),
               use_cache=False)
t_nocache = time.time() - t0
print(f"responses tensor {tuple(ro.responses.shape)} (padded after <eos>); with the cache {t_cache * 1000:.0f} ms, "
      f"without {t_nocache * 1000:.0f} ms; same tokens: {torch.equal(ro.responses, ro_nc.responses)}")
n_valid = 0
for i in range(G):
    resp = ro.responses[i][ro.mask[i]].tolist()
    p = grammar.parse(resp)
    n_valid += bool(p.valid)
    print(f"  rollout {i}: {len(resp):>2} tokens, valid={p.valid}, item {p.item:>2}, "
          f"{int(ro.forced[i].sum())} forced tokens (log-prob 0): ...{tok.decode(resp[-8:])}")
with torch.no_grad():
    lp, _ = response_logprobs(model, grammar, ro.prompts, ro.responses)  # (G, T), one forward pass
lp_diff = float((lp - ro.logprobs).abs().max())
print(f"max |sampler log-prob - recomputed log-prob| = {lp_diff:.2e}")

# %% 5. Greedy decoding and constrained beam search
# ----------------------------------------------------------------------------------------------
# 5. Greedy decoding and constrained beam search
#
# Greedy: always the most likely allowed token. Evaluation (the paper's protocol) writes the
# thinking greedily, then runs a beam over the SID tokens only, scored by the sum of the SID
# tokens' log-probs. Every beam is a trie path, so it returns up to `beam_width` DISTINCT valid
# items, best first: a ranked list for hit@10 / ndcg@10.
# ----------------------------------------------------------------------------------------------
C.section("5. greedy decoding and constrained beam search")

g = sample(model, grammar, [p0], greedy=True)
print(f"greedy: {tok.decode(g.responses[0][g.mask[0]].tolist())}")
res = beam_search(model, grammar, [p0], beam_width=10)[0]
print(f"\nbeam search (width 10): {len(res.items)} items, distinct: {len(set(res.items)) == len(res.items)}, "
      f"all in the catalog: {all(i is not None for i in res.items)}")
print(f"greedy thinking of the best beam: {tok.decode(res.thinking)[:90]}...")
for r, (item, score, sid) in enumerate(zip(res.items, res.scores, res.sids), 1):
    print(f"  {r:>2}. item {item:>2}  {tok.decode(sid):<24} score {score:7.3f}  {ds.item_titles[item]}")
print(f"target item {s0.target} ({tok.decode(tok.sid_ids(table, s0.target))}): "
      f"{'in' if s0.target in res.items else 'not in'} the top 10 (the model is untrained: tutorial 4 trains it)")

# %% Takeaway
same_tokens = torch.equal(ro.responses, ro_nc.responses)
C.takeaway(
    f"Left padding changed the logits by at most {pad_diff:.0e} (float rounding): prompts of any length batch "
    f"together.",
    f"The grammar, not training, makes responses valid: this UNTRAINED model wrote {n_valid}/{G} valid sampled "
    f"responses, and its beam search returned {len(set(res.items))} distinct catalog items.",
    f"The KV cache gave {'the same' if same_tokens else 'DIFFERENT (a bug)'} tokens in {t_cache * 1000:.0f} ms "
    f"instead of {t_nocache * 1000:.0f} ms; the sampler's log-probs and the recomputed ones agree to {lp_diff:.0e}, "
    f"so with one update per batch the PPO ratio is 1 up to float rounding (tutorial 5).",
    f"The untrained model's top 10 {'contains' if s0.target in res.items else 'misses'} the target, which is luck "
    f"either way ({len(res.items)} of {table.num_items} items); tutorial 4 trains it.")

C.done()
