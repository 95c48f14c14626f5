# %% setup: imports, data and settings
"""Tutorial 2: semantic IDs (SIDs).

Run:  python tutorials/02_semantic_ids.py          (a few seconds)

What you will see
  1. item text -> TF-IDF + truncated SVD vectors;
  2. residual k-means (RQ-KMeans): level by level, each level quantises what the previous ones missed;
  3. collisions and TIGER-style dedup tokens; codebook usage and perplexity;
  4. does the first SID level rediscover the latent taxonomy? (purity)
  5. descriptors: a few human-readable words for every code prefix;
  6. the SID table, the prefix trie (valid next tokens; an impossible prefix raises), the tokenizer;
  7. the one-call stage `minisapo.sid.prepare` (what `minisapo sid` runs) gives the same codes.
Pictures: 02_item_vectors.png, 02_sid_tree.png
"""

import _common as C
import matplotlib.pyplot as plt
import numpy as np
import torch

from minisapo.data import DataConfig, load, prepare
from minisapo.plots import plot_sid_tree
from minisapo.sid import SIDConfig, SIDTable, SIDTrie, dedup_codes
from minisapo.tokenizer import Tokenizer, code_token
from minisapo.sid import prepare as prepare_sids
from minisapo.sid.build import collision_rate, format_stats, purity
from minisapo.sid.descriptors import build_descriptors
from minisapo.sid.embed import tfidf_svd
from minisapo.sid.rqkmeans import auto_codebook_size, level_stats, rq_kmeans

C.start("Tutorial 2 - semantic IDs: item text -> vectors -> RQ-KMeans codes -> SIDs, trie, tokenizer")

ds = load(C.DATA, prepare(DataConfig(world="tiny"), C.DATA).name)
cfg = SIDConfig()  # the defaults `minisapo sid` uses: 3 levels, auto codebook size, dedup tokens
top = [c.split()[0] for c in ds.item_categories]  # latent top-level category of every item (n1, n2, ...)

# %% 1. Item vectors
# ----------------------------------------------------------------------------------------------
# 1. Item vectors
#
# A generative recommender names an item by a short code it can write token by token. Items with
# similar text should share the first tokens of their code, so we start from text vectors. The
# built-in embedding needs no download: TF-IDF over the words of the item text, then a truncated
# SVD (latent semantic analysis) to `embed_dim` dimensions, rows L2-normalised.
# ----------------------------------------------------------------------------------------------
C.section("1. item text -> vectors (TF-IDF + truncated SVD)")

x = tfidf_svd(ds.item_text, dim=cfg.embed_dim, seed=cfg.sid_seed)  # (N, d)
print(f"{ds.num_items} item texts -> vectors of shape {x.shape} (fewer dimensions than asked when the data is tiny)")
sim = x @ x.T
same_leaf = np.array([[a == b for b in ds.item_categories] for a in ds.item_categories])
same_top = np.array([[a == b for b in top] for a in top])
off = ~np.eye(ds.num_items, dtype=bool)
cos = {"same leaf": sim[same_leaf & off].mean(), "same top category, other leaf": sim[same_top & ~same_leaf].mean(),
       "other top category": sim[~same_top].mean()}
print("mean cosine similarity: " + ", ".join(f"{k} {v:.2f}" for k, v in cos.items()))

# %% 2. RQ-KMeans
# ----------------------------------------------------------------------------------------------
# 2. RQ-KMeans
#
# Level 0 runs k-means on the vectors; every item gets the index of its nearest centroid. Level 1
# runs k-means on the RESIDUALS (vector minus its level-0 centroid), and so on:
#     x ~= C_0[c_0] + C_1[c_1] + C_2[c_2]
# so the first code says roughly where the item is, later codes refine. The codebook size K per
# level defaults to the smallest power of two >= 4 * N^(1/L) (16 for 64 items and 3 levels).
# ----------------------------------------------------------------------------------------------
C.section("2. residual k-means, level by level")

K = auto_codebook_size(ds.num_items, cfg.levels)
sizes = [K] * cfg.levels
rq = rq_kmeans(torch.from_numpy(x), sizes, iters=cfg.kmeans_iters, seed=cfg.sid_seed)
codes = rq.codes.numpy().astype(np.int64)  # (N, L)
r = torch.from_numpy(x).clone()
print(f"codebook size per level: {sizes}")
left = [float((r ** 2).sum(1).mean())]  # mean squared norm of the residual, before and after each level
for level in range(cfg.levels):
    r = r - rq.centroids[level][rq.codes[:, level]]
    left.append(float((r ** 2).sum(1).mean()))
print(f"mean squared norm of what is left: before any level {left[0]:.3f}, "
      + ", ".join(f"after level {'abc'[level]} {v:.3f}" for level, v in enumerate(left[1:])))
print("\nfirst items: codes and their latent category")
for i in range(0, ds.num_items, 8):
    print(f"  item {i:>2}  codes {codes[i].tolist()}  {ds.item_categories[i]:<16} {ds.item_titles[i]}")

# %% 3. Collisions, dedup tokens, codebook health
# ----------------------------------------------------------------------------------------------
# 3. Collisions, dedup tokens, codebook health
#
# Two items can land on the same K codes (a collision). TIGER appends an extra token to tell them
# apart: the colliding items get <d_0>, <d_1>, ... (in item order), everybody else gets nothing.
# So no complete SID is a prefix of another one. Codebook health: `usage` = fraction of codes
# used, `perplexity` = exp(entropy of code frequencies) (K if all codes are equally used, 1 if one
# code takes everything). Later levels often have lower perplexity: little is left to split.
# ----------------------------------------------------------------------------------------------
C.section("3. collisions, dedup tokens, usage and perplexity")

dedup = dedup_codes(codes)
print(f"collision rate before dedup: {collision_rate(codes):.1%} of items share all {cfg.levels} codes with another item")
for i in np.where(dedup >= 0)[0]:
    print(f"  item {i:>2} codes {codes[i].tolist()} -> dedup token {code_token(cfg.levels, dedup[i])}   {ds.item_titles[i]}")
stats_by_level = level_stats(codes, sizes)
for level, s in enumerate(stats_by_level):
    print(f"level {'abc'[level]}: {s['used']}/{s['codebook_size']} codes used (usage {s['usage']:.2f}), "
          f"perplexity {s['perplexity']:.1f}")

# %% 4. Purity vs the latent taxonomy
# ----------------------------------------------------------------------------------------------
# 4. Purity vs the latent taxonomy
#
# Only the synthetic world lets us ask: does a code prefix group items of one taxonomy node?
# purity = (sum over code prefixes of the size of their largest category) / N; 1.0 = every prefix
# holds items of a single node. Careful: more clusters than nodes makes purity easy, so we also
# count how many level-a codes each top category is spread over.
# ----------------------------------------------------------------------------------------------
C.section("4. purity: does the SID tree rediscover the taxonomy?")

purities = {}  # prefix length -> (distinct prefixes, taxonomy nodes, purity)
for depth in range(1, cfg.levels + 1):
    prefix_id = {p: n for n, p in enumerate(sorted({tuple(c[:depth]) for c in codes.tolist()}))}
    ids = np.array([prefix_id[tuple(c[:depth])] for c in codes.tolist()])
    labels = [" ".join(c.split()[:depth]) for c in ds.item_categories]
    purities[depth] = (len(prefix_id), len(set(labels)), purity(ids, labels))
    print(f"SID prefix of length {depth} ({len(prefix_id):>2} distinct) vs taxonomy depth {depth} "
          f"({len(set(labels))} nodes): purity {purities[depth][2]:.3f}")
spread = {t: len({codes[i, 0] for i in range(ds.num_items) if top[i] == t}) for t in sorted(set(top))}
for t, n in spread.items():
    print(f"top category {t}: spread over {n} level-a codes")

# %% 5. Descriptors
# ----------------------------------------------------------------------------------------------
# 5. Descriptors
#
# For every code prefix, the title words that are most over-represented compared with its
# siblings. Words shared by all siblings cancel, so each level adds new detail. The teacher's
# thinking blocks (tutorial 4) are made of these words.
# ----------------------------------------------------------------------------------------------
C.section("5. descriptors: human-readable words for each code prefix")

descriptors = build_descriptors(codes, ds.item_titles, cfg.descriptor_words)
for a in sorted(set(codes[:, 0].tolist()))[:6]:
    members = np.where(codes[:, 0] == a)[0]
    cats = sorted({ds.item_categories[i].split()[1] for i in members})
    print(f"<a_{a}>: {descriptors[f'<a_{a}>']!r:<22} {len(members)} items, depth-2 nodes {cats}")
    b = int(codes[members[0], 1])
    print(f"    <a_{a}><b_{b}>: {descriptors[f'<a_{a}><b_{b}>']!r}")

# %% 6. SID table, prefix trie, tokenizer
# ----------------------------------------------------------------------------------------------
# 6. SID table, prefix trie, tokenizer
#
# The table maps item <-> SID tokens both ways. The tokenizer gives every SID token, every special
# token and every word an id. The trie, built over the SIDs as token ids, answers "which SID
# tokens may come next after this prefix?" -- constrained decoding asks it at every SID position.
# An impossible prefix is an error, never a silent "anything goes".
# ----------------------------------------------------------------------------------------------
C.section("6. the SID table, the prefix trie and the tokenizer")

table = SIDTable(codes, dedup, sizes, descriptors, ds.item_ids)
tok = Tokenizer.build(ds.item_text, table)
trie = SIDTrie(table, tok)
print(table)
print(tok)
item = int(np.where(dedup >= 0)[0][0]) if (dedup >= 0).any() else 0
print(f"item {item}: tokens {table.tokens(item)} -> ids {tok.sid_ids(table, item)} "
      f"-> back to item {table.item(table.tokens(item))}")
print(f"vocabulary layout: ids 0..6 specials {[tok.id_to_token(i) for i in range(7)]}, then "
      f"{len(table.all_tokens())} SID tokens, then {len(tok.word_ids)} words")
ids = tok.encode(f"<bos> {''.join(table.tokens(0))} {ds.item_titles[0]} unicorn <sep>")
print(f"encode -> {ids}\ndecode -> {tok.decode(ids)!r}   (token levels: {[tok.token_level[i] for i in ids]})")

sid = tok.sid_ids(table, item)
for depth in range(len(sid) + 1):
    nxt = trie.next_tokens(sid[:depth])
    shown = " ".join(tok.id_to_token(i) for i in nxt[:8]) + (" ..." if len(nxt) > 8 else "")
    print(f"  after {tok.decode(sid[:depth]) or '(nothing)':<24} {len(nxt):>2} valid next tokens: "
          f"{shown or '[] (complete SID)'}")
a_id, used_b = sid[0], set(trie.next_tokens(sid[:1]))
bad_b = next(i for i in tok.level_ids(1) if i not in used_b)
try:
    trie.next_tokens([a_id, bad_b])
except ValueError as e:
    print(f"  impossible prefix {tok.decode([a_id, bad_b])!r} -> ValueError: {e}")

# %% 7. The stage in one call
# ----------------------------------------------------------------------------------------------
# 7. The stage in one call
#
# `minisapo.sid.prepare(dataset, SIDConfig(), out_dir)` does all of the above, writes the table,
# descriptors, stats, tokenizer and the SID tree picture, and is a cache hit the second time.
# With the same settings it gives exactly our step-by-step codes.
# ----------------------------------------------------------------------------------------------
C.section("7. the whole stage in one call: minisapo.sid.prepare")

table2, tok2, stats = prepare_sids(ds, cfg, C.DATA / "processed" / ds.name / "sid", plot=False, verbose=False)
print(format_stats(stats))
print(f"same codes as our step-by-step build: {np.array_equal(table2.codes, codes)}; "
      f"same dedup tokens: {np.array_equal(table2.dedup, dedup)}")
C.saved(plot_sid_tree(table2, stats, C.OUT / "02_sid_tree.png"))

# A 2-D view of the item vectors (first two principal components): colour = level-a code,
# marker = latent top category. Nearby items share their first SID token.
xc = x - x.mean(0)
pc = xc @ np.linalg.svd(xc, full_matrices=False)[2][:2].T  # (N, 2)
fig, ax = plt.subplots(figsize=(7, 5.5))
cmap = plt.get_cmap("tab20")
for t, marker in zip(sorted(set(top)), "o^sDv*"):
    m = np.array(top) == t
    ax.scatter(pc[m, 0], pc[m, 1], c=[cmap(c % 20) for c in codes[m, 0]], marker=marker, s=45, edgecolors="k",
               linewidths=0.3, label=f"top category {t}")
for a in sorted(set(codes[:, 0].tolist())):
    cx, cy = pc[codes[:, 0] == a].mean(0)
    ax.text(cx, cy, f"<a_{a}>", fontsize=7, ha="center", va="bottom")
ax.set_title("item vectors (2 principal components); colour = first SID token")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(C.OUT / "02_item_vectors.png", dpi=110)
plt.close(fig)
C.saved(C.OUT / "02_item_vectors.png")

# %% Takeaway
n_codes, n_nodes, pur = purities[1]
C.takeaway(
    f"Text alone already groups the taxonomy: mean cosine similarity {cos['same leaf']:.2f} within a leaf, "
    f"{cos['other top category']:.2f} across top categories. RQ-KMeans turns that into codes, coarse first: "
    f"the residual (mean squared norm) shrinks {' -> '.join(f'{v:.2f}' for v in left)} level by level.",
    f"{collision_rate(codes):.1%} of items collide on all {cfg.levels} codes; a dedup token on those "
    f"{int((dedup >= 0).sum())} items makes every SID unique. The last level is used unevenly (perplexity "
    f"{stats_by_level[-1]['perplexity']:.1f} of "
    f"{sizes[-1]} codes): little is left to split there.",
    f"Level-a purity {pur:.3f} looks near perfect, but {n_codes} codes for {n_nodes} top categories make purity easy: "
    f"the top categories are spread over {' and '.join(str(n) for n in spread.values())} codes. SIDs put similar "
    f"items under one prefix; they do not recover the taxonomy one to one.",
    "The trie knows every valid continuation and refuses an impossible prefix: decoding can be constrained to real "
    "items (tutorial 3).")

C.done()
