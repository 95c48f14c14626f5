"""Evaluation: hit@K, ndcg@K, valid-SID rate, per-level accuracy, and the baselines.

The paper's protocol: the model writes its thinking greedily, then a constrained beam search over
valid SIDs (prefix trie) ranks items. Each sample has exactly one target item, so

    hit@K  = 1 if the target is among the top-K ranked items else 0
    ndcg@K = 1 / log2(rank + 1) if the target is at (1-based) rank <= K else 0
             (the ideal DCG with one relevant item is 1, so no normalisation is needed)

`recall@K` with one target is *identical* to hit@K, so it is not reported separately.

Baselines on the same samples, with the same keys (what a few lines of counting achieve; every count
comes from the training split only, never from a valid/test target):
  - popularity: rank items by how often they occur in the training data (the same ranking for everyone);
  - markov: first-order transitions: rank items by how often they followed the sample's last history
    item in the training samples (ties and unseen items: popularity);
  - item_knn: item co-occurrence kNN: sim(i, j) = cosine of the items' training-user columns
    (users who have both / sqrt(users of i * users of j), sim(i, i) = 0), score(j) = sum over the history
    items h of sim(h, j), the t-th most recent weighted by knn_recency^t (ties: popularity);
  - oracle (synthetic data only): rank items by the generator's *exact* next-item distribution, the
    ranking that maximises expected hit@K: no model can do better on average. We report its realised
    hit@K/ndcg@K (same protocol as the model) and, as `expected_hit@K`, the noise-free ceiling
    (the probability mass of the top-K items).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from minisapo.data import oracle as make_oracle
from minisapo.generate import beam_search
from minisapo.progress import bar as progress_bar
from minisapo.reasoning import ReasoningConfig, build_prompt


@dataclass
class EvalConfig:
    ks: str = "1,5,10"  # cut-offs K for hit@K / ndcg@K, comma-separated (recall@K == hit@K with one target)
    beam_width: int = 10  # constrained beam width (the paper's 10); must be >= max K (raised to max K if smaller)
    max_samples: int = 0  # evaluate on the first N samples of the split (0 = all)
    batch_size: int = 64  # prompts per beam-search call
    baselines: bool = True  # also compute the popularity, markov, item_knn (and, on synthetic data, oracle) baselines
    knn_recency: float = 0.5  # item_knn weighs the t-th most recent history item by this^t (1 = plain sum)

    def __post_init__(self):
        if not 0.0 < self.knn_recency <= 1.0:
            raise ValueError(f"knn_recency must be in (0, 1], got {self.knn_recency}")


def parse_ks(ks: str | Sequence[int]) -> list[int]:
    """"1,5,10" -> [1, 5, 10] (sorted, deduplicated); a sequence of ints passes through."""
    if isinstance(ks, str):
        try:
            out = [int(k) for k in ks.replace(" ", "").split(",") if k]
        except ValueError:
            raise ValueError(f"eval.ks={ks!r}: expected comma-separated integers like '1,5,10'") from None
    else:
        out = [int(k) for k in ks]
    if not out or min(out) < 1:
        raise ValueError(f"eval.ks={ks!r}: every K must be >= 1")
    return sorted(set(out))


# ----------------------------------------------------------------------------------------------
# Pure metrics (one ranked list, one target)
# ----------------------------------------------------------------------------------------------


def rank_of(ranked: Sequence[int], target: int) -> int | None:
    """1-based rank of `target` in `ranked`, or None if absent."""
    for i, item in enumerate(ranked):
        if item == target:
            return i + 1
    return None


def hit_at_k(ranked: Sequence[int], target: int, k: int) -> float:
    """1.0 if `target` is among the first k items of `ranked`, else 0.0 (== recall@k with one target)."""
    r = rank_of(ranked[:k], target)
    return 1.0 if r is not None else 0.0


def ndcg_at_k(ranked: Sequence[int], target: int, k: int) -> float:
    """1/log2(rank+1) if `target` is at rank <= k (1-based), else 0.0. Ideal DCG = 1 with one target."""
    r = rank_of(ranked[:k], target)
    return 0.0 if r is None else 1.0 / math.log2(r + 1)


def ranking_metrics(rankings: Sequence[Sequence[int]], targets: Sequence[int], ks: Sequence[int]) -> dict:
    """Mean hit@K and ndcg@K over samples: {'hit@1': .., 'ndcg@1': .., 'hit@5': .., ...}."""
    out = {}
    n = max(len(targets), 1)
    for k in ks:
        out[f"hit@{k}"] = sum(hit_at_k(r, t, k) for r, t in zip(rankings, targets)) / n
        out[f"ndcg@{k}"] = sum(ndcg_at_k(r, t, k) for r, t in zip(rankings, targets)) / n
    return out


def paired_sign_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two systems on the same samples (0/1 hits, aligned): how many samples only b got right ("up"), only
    a ("down"), and the exact two-sided sign test (McNemar's exact test) p-value for "b and a are equally
    good", from the Binomial(up + down, 1/2) tails. Samples both got right or both missed carry no evidence."""
    up = sum(1 for x, y in zip(a, b) if y > x)
    down = sum(1 for x, y in zip(a, b) if x > y)
    n, k = up + down, min(up, down)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"up": up, "down": down, "p": p}


def per_level_accuracy(top_items: Sequence[int | None], targets: Sequence[int], codes: np.ndarray) -> list[float]:
    """Fraction of samples whose top item has the target's code at level l, for each semantic level l.

    `codes` is `SIDTable.codes` (N, K). A missing top item (None) counts as wrong at every level.
    Per position, not prefix-gated (like SAPO's per-step reward).
    """
    num_levels = codes.shape[1]
    correct = np.zeros(num_levels)
    for top, t in zip(top_items, targets):
        if top is not None:
            correct += codes[top] == codes[t]
    return [float(c / max(len(targets), 1)) for c in correct]


# ----------------------------------------------------------------------------------------------
# The model (paper protocol) and the baselines
# ----------------------------------------------------------------------------------------------


def _subset(samples, max_samples: int):
    return list(samples) if not max_samples or max_samples <= 0 else list(samples)[:max_samples]


@torch.no_grad()
def evaluate(model, grammar, dataset, table, tokenizer, samples, ks: str | Sequence[int] = (1, 5, 10),
             beam_width: int = 10, batch_size: int = 64, max_samples: int = 0, reasoning=None,
             progress: bool = True) -> dict:
    """Paper protocol on `samples`: greedy thinking, then constrained beam search over valid SIDs.

    Returns {'hit@K', 'ndcg@K' for each K, 'valid_rate', 'per_level_acc' (list, top beam),
    'mean_response_length', 'num_samples'}.
      valid_rate: fraction of samples whose top beam is a catalog item. Under the trie constraint this
                  is 1.0 by construction unless decoding fails (e.g. a run-away thinking block).
      mean_response_length: thinking tokens + SID tokens + <eos> of the top beam, averaged.
    With dedup="none" (items may share a SID) a hit on the target's SID counts as a hit.
    `reasoning` is the ReasoningConfig used to build prompts (prompt_titles); None = defaults.
    """

    ks = parse_ks(ks)
    beam_width = max(beam_width, max(ks))
    reasoning = reasoning or ReasoningConfig()
    samples = _subset(samples, max_samples)

    canon = canonical_items(table)

    def canonical(item: int) -> int:
        return int(canon[item])

    was_training = model.training
    model.eval()
    rankings, top_items, lengths = [], [], []
    bar = progress_bar(range(0, len(samples), batch_size), desc="eval", enabled=progress, leave=False)
    for start in bar:
        batch = samples[start:start + batch_size]
        prompts = [build_prompt(s.history, table, tokenizer, reasoning, titles=dataset.item_titles) for s in batch]
        for res in beam_search(model, grammar, prompts, beam_width):
            items = [canonical(i) for i in res.items if i is not None]
            rankings.append(items)
            top_items.append(items[0] if items else None)
            lengths.append(len(res.responses[0]) if res.responses else 0)  # thinking + SID + <eos>
    if was_training:
        model.train()
    targets = [canonical(s.target) for s in samples]
    out = ranking_metrics(rankings, targets, ks)
    out["valid_rate"] = float(np.mean([t is not None for t in top_items])) if top_items else 0.0
    out["per_level_acc"] = per_level_accuracy(top_items, targets, table.codes)
    out["mean_response_length"] = float(np.mean(lengths)) if lengths else 0.0
    out["distinct_top1"] = len({t for t in top_items if t is not None})  # few = everyone gets the same item
    out["num_samples"] = len(samples)
    out["ranks"] = [rank_of(r, t) or 0 for r, t in zip(rankings, targets)]  # per sample, 0 = not ranked
    return out


def canonical_items(table) -> np.ndarray:
    """(N,) the item that stands for each item's SID: itself, unless dedup="none" made several items
    share one SID; then all of them map to the first (a hit on the SID counts for every sharer)."""
    return np.array([table.item(table.tokens(i)) for i in range(table.num_items)], dtype=np.int64)


def _per_sid(scores: np.ndarray, table, canon: np.ndarray | None = None) -> np.ndarray:
    """Item scores -> scores of distinct SIDs (summed over items sharing one; -inf on the others), so
    baselines rank what the model ranks. Identity when every SID is unique.
    canon: `canonical_items(table)`, when the caller computed it once for many score vectors."""
    if table is None:
        return scores
    if canon is None:
        canon = canonical_items(table)
    if (canon == np.arange(len(canon))).all():
        return scores
    out = np.full(len(scores), -np.inf)
    summed = np.bincount(canon, weights=scores, minlength=len(scores))
    out[np.unique(canon)] = summed[np.unique(canon)]
    return out


def _targets(samples, table) -> list[int]:
    canon = None if table is None else canonical_items(table)
    return [s.target if canon is None else int(canon[s.target]) for s in samples]


def _ranked_by_scores(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest scores, ties broken by lower item index (stable, deterministic)."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64)))
    return order[:k].tolist()


def _ranked_by(scores: np.ndarray, tiebreak: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest scores; ties by the higher `tiebreak` (popularity), then the lower index."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(tiebreak, dtype=np.float64),
                        -np.asarray(scores, dtype=np.float64)))
    return order[:k].tolist()


def _baseline_report(rankings: list[list[int]], samples, ks: list[int], table) -> dict:
    """The keys every report has, for a baseline's rankings (no generated response)."""
    targets = _targets(samples, table)
    out = ranking_metrics(rankings, targets, ks)
    out["valid_rate"] = 1.0
    out["per_level_acc"] = per_level_accuracy([r[0] for r in rankings], targets, table.codes) if table else None
    out["mean_response_length"] = None  # no generated response
    out["num_samples"] = len(samples)
    return out


def popularity_baseline(dataset, samples, ks: str | Sequence[int] = (1, 5, 10), table=None,
                        max_samples: int = 0) -> dict:
    """Rank every item by training popularity (`dataset.item_popularity()`), same list for every sample.
    With a table whose SIDs are shared (dedup="none"), distinct SIDs are ranked, as for the model."""
    ks = parse_ks(ks)
    samples = _subset(samples, max_samples)
    ranked = _ranked_by_scores(_per_sid(dataset.item_popularity().astype(np.float64), table), max(ks))
    return _baseline_report([ranked] * len(samples), samples, ks, table)


def transition_counts(dataset) -> dict[int, dict[int, int]]:
    """{a: {b: n}}: how often item b was the target of a training sample whose last history item is a
    (the first-order transitions of the training data; valid/test targets are never counted)."""
    counts: dict[int, dict[int, int]] = {}
    for s in dataset.splits["train"]:
        row = counts.setdefault(s.history[-1], {})
        row[s.target] = row.get(s.target, 0) + 1
    return counts


def markov_rankings(dataset, samples, k: int, table=None) -> list[list[int]]:
    """Top-k per sample by the training count of (last history item -> item); ties, and items never seen
    after it, by popularity (so an unseen last item gives the popularity ranking)."""
    canon = None if table is None else canonical_items(table)  # once, not per sample
    pop = _per_sid(dataset.item_popularity().astype(np.float64), table, canon)
    counts = transition_counts(dataset)
    rankings = []
    for s in samples:
        scores = np.zeros(dataset.num_items)
        for item, n in counts.get(s.history[-1], {}).items():
            scores[item] = n
        rankings.append(_ranked_by(_per_sid(scores, table, canon), pop, k))
    return rankings


def markov_baseline(dataset, samples, ks: str | Sequence[int] = (1, 5, 10), table=None,
                    max_samples: int = 0) -> dict:
    """First-order Markov baseline (see `markov_rankings`)."""
    ks = parse_ks(ks)
    samples = _subset(samples, max_samples)
    return _baseline_report(markov_rankings(dataset, samples, max(ks), table), samples, ks, table)


def train_user_items(dataset) -> list[set[int]]:
    """Per user, the items of their training interactions (train targets and the histories before them)."""
    users: list[set[int]] = [set() for _ in range(dataset.num_users)]
    for s in dataset.splits["train"]:
        users[s.user].update(s.history)
        users[s.user].add(s.target)
    return users


def _user_item_matrix(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The (users, items) 0/1 training matrix X (sparse) and 1/sqrt(|U_i|) per item (0 for items no one has)."""
    users = train_user_items(dataset)
    rows = [u for u, items in enumerate(users) for _ in items]
    cols = [i for items in users for i in sorted(items)]
    x = torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1),
                                torch.ones(len(rows), dtype=torch.float64), (len(users), dataset.num_items),
                                check_invariants=False)
    x = x.coalesce()
    n_users = torch.zeros(dataset.num_items, dtype=torch.float64).index_add_(0, x.indices()[1], x.values())
    return x, torch.where(n_users > 0, n_users.clamp(min=1).rsqrt(), torch.zeros_like(n_users))


def item_knn_scores(dataset, histories: Sequence[Sequence[int]], recency: float = 0.5,
                    matrix: tuple[torch.Tensor, torch.Tensor] | None = None) -> np.ndarray:
    """(B, N) item-kNN scores: score[b, j] = sum_t recency^t * sim(h_t, j) over history b (h_0 = most recent),
    sim(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|) with U_i the training users of item i, and sim(i, i) = 0.

    Computed as W D X^T X D, with X the (users, items) 0/1 training matrix (sparse), D = diag(1/sqrt(|U_i|))
    and W the (B, items) recency weights, so no (items x items) matrix is ever built.
    `matrix`: `_user_item_matrix(dataset)`, computed once by the caller for many batches.
    """
    x, inv = matrix if matrix is not None else _user_item_matrix(dataset)
    w = torch.zeros(len(histories), dataset.num_items, dtype=torch.float64)  # (B, N) recency weights
    for b, h in enumerate(histories):
        for t, item in enumerate(reversed(list(h))):
            w[b, item] += recency ** t
    per_user = torch.sparse.mm(x, (w * inv).t())  # (U, B) = X D W^T
    scores = torch.sparse.mm(x.t().coalesce(), per_user).t() * inv  # (B, N) = W D X^T X D
    scores -= w * (inv > 0)  # drop sim(h, h) = 1 (for items some training user has)
    return scores.numpy()


def item_knn_rankings(dataset, samples, k: int, table=None, recency: float = 0.5,
                      batch_size: int = 256) -> list[list[int]]:
    """Top-k per sample by `item_knn_scores`; ties, and items similar to nothing, by popularity."""
    canon = None if table is None else canonical_items(table)  # once, not per sample
    pop = _per_sid(dataset.item_popularity().astype(np.float64), table, canon)
    matrix = _user_item_matrix(dataset)
    rankings = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        scores = item_knn_scores(dataset, [s.history for s in batch], recency, matrix)
        rankings += [_ranked_by(_per_sid(sc, table, canon), pop, k) for sc in scores]
    return rankings


def item_knn_baseline(dataset, samples, ks: str | Sequence[int] = (1, 5, 10), table=None,
                      max_samples: int = 0, recency: float = 0.5) -> dict:
    """Item co-occurrence kNN baseline (see `item_knn_scores`)."""
    ks = parse_ks(ks)
    samples = _subset(samples, max_samples)
    return _baseline_report(item_knn_rankings(dataset, samples, max(ks), table, recency), samples, ks, table)


def oracle_baseline(dataset, samples, ks: str | Sequence[int] = (1, 5, 10), table=None,
                    max_samples: int = 0) -> dict | None:
    """Rank items by the generator's exact next-item distribution (synthetic data); None on real data.

    Besides the realised `hit@K`/`ndcg@K` it reports `expected_hit@K` = probability mass of the top-K
    items, i.e. the hit@K the oracle reaches on average (the ceiling without sampling noise).
    With shared SIDs (dedup="none") it ranks SIDs by their summed probability, as the model must.
    """
    orc = make_oracle(dataset)
    if orc is None:
        return None
    ks = parse_ks(ks)
    samples = _subset(samples, max_samples)
    canon = None if table is None else canonical_items(table)  # once, not per sample
    rankings, expected = [], {k: 0.0 for k in ks}
    for s in samples:
        p = _per_sid(np.asarray(orc.distribution(s), dtype=np.float64), table, canon)
        ranked = _ranked_by_scores(p, max(ks))
        rankings.append(ranked)
        for k in ks:
            expected[k] += float(p[ranked[:k]].sum())
    targets = _targets(samples, table)
    out = ranking_metrics(rankings, targets, ks)
    for k in ks:
        out[f"expected_hit@{k}"] = expected[k] / max(len(samples), 1)
    out["valid_rate"] = 1.0
    out["per_level_acc"] = per_level_accuracy([r[0] for r in rankings], targets, table.codes) if table else None
    out["mean_response_length"] = None
    out["num_samples"] = len(samples)
    return out


# ----------------------------------------------------------------------------------------------
# Reports: the eval JSON dict and a readable table
# ----------------------------------------------------------------------------------------------


def eval_report(model_metrics: dict, popularity: dict | None = None, oracle: dict | None = None,
                markov: dict | None = None, item_knn: dict | None = None) -> dict:
    """`{..model metrics.., "baselines": {"popularity": {...}, "markov": {...}, "item_knn": {...}, "oracle": {...}}}`
    (what eval_<split>.json holds; a baseline that was not computed is left out)."""
    out = dict(model_metrics)
    named = {"popularity": popularity, "markov": markov, "item_knn": item_knn, "oracle": oracle}
    out["baselines"] = {k: v for k, v in named.items() if v is not None}
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return "/".join(f"{x:.2f}" for x in v)
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def format_table(report: dict) -> str:
    """Model and its baselines (popularity, markov, item_knn, oracle) side by side, one metric per row
    (plain text, also valid Markdown)."""
    cols = {"model": report}
    cols.update(report.get("baselines", {}))
    keys = [k for k in report if k.startswith(("hit@", "ndcg@"))]
    keys.sort(key=lambda k: (k.split("@")[0] != "hit", int(k.split("@")[1])))
    if "oracle" in cols:
        keys += [k for k in cols["oracle"] if k.startswith("expected_hit@")]
    keys += ["valid_rate", "per_level_acc", "mean_response_length"]
    names = list(cols)
    header = "| metric | " + " | ".join(names) + " |"
    lines = [header, "|" + "---|" * (len(names) + 1)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(cols[n].get(k)) for n in names) + " |")
    lines.append("(recall@K equals hit@K: each sample has exactly one target item)")
    return "\n".join(lines)


def evaluate_split(model, grammar, dataset, table, tokenizer, split: str, cfg: EvalConfig | None = None,
                   reasoning=None, progress: bool = True) -> dict:
    """Evaluate the model and the baselines on `dataset.splits[split]` -> the report dict (see `eval_report`;
    pipeline.stage_eval writes it to eval_<split>.json); print `format_table(report)` for a readable view.
    """
    cfg = cfg or EvalConfig()
    samples = dataset.splits[split]
    kw = dict(ks=cfg.ks, max_samples=cfg.max_samples)
    metrics = evaluate(model, grammar, dataset, table, tokenizer, samples, beam_width=cfg.beam_width,
                       batch_size=cfg.batch_size, reasoning=reasoning, progress=progress, **kw)
    baselines = {}
    if cfg.baselines:
        baselines = dict(popularity=popularity_baseline(dataset, samples, table=table, **kw),
                         markov=markov_baseline(dataset, samples, table=table, **kw),
                         item_knn=item_knn_baseline(dataset, samples, table=table, recency=cfg.knn_recency, **kw),
                         oracle=oracle_baseline(dataset, samples, table=table, **kw))
    report = eval_report(metrics, **baselines)
    report["split"] = split
    return report


def quick_hit_fn(grammar, dataset, table, tokenizer, samples, k: int = 10, beam_width: int | None = None,
                 reasoning=None, batch_size: int = 64):
    """A `valid_fn` for `sft.train_sft` (and RL): model -> {"valid_hit@k", "valid_ndcg@k", "distinct_top1", "hits"}
    on `samples` ("hits": 1 per sample whose target is in the top k, for the paired test of `rl.keep_best_p`).

    Uses the full paper protocol (greedy thinking + constrained beam search, beam_width defaults to k).
    Deterministic and does not touch the global RNG, so resumed runs stay identical.
    """
    samples = list(samples)

    def valid_fn(model) -> dict:
        r = evaluate(model, grammar, dataset, table, tokenizer, samples, ks=(k,), beam_width=beam_width or k,
                     batch_size=batch_size, reasoning=reasoning, progress=False)
        return {f"valid_hit@{k}": r[f"hit@{k}"], f"valid_ndcg@{k}": r[f"ndcg@{k}"], "distinct_top1": r["distinct_top1"],
                "hits": [int(0 < rank <= k) for rank in r["ranks"]]}

    return valid_fn
