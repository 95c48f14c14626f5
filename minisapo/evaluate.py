"""Evaluation: hit@K, ndcg@K, valid-SID rate, per-level accuracy, and the baselines.

The paper's protocol: the model writes its thinking greedily, then a constrained beam search over
valid SIDs (prefix trie) ranks items. Each sample has exactly one target item, so

    hit@K  = 1 if the target is among the top-K ranked items else 0
    ndcg@K = 1 / log2(rank + 1) if the target is at (1-based) rank <= K else 0
             (the ideal DCG with one relevant item is 1, so no normalisation is needed)

`recall@K` with one target is *identical* to hit@K, so it is not reported separately.

Every report also ranks with the baselines on the same samples, with the same keys (`minisapo.baselines`:
popularity, markov, item_knn, the oracle on synthetic data, and with eval.item_id_baseline the item-ID
transformer), under the same protocol (`eval.exclude_seen`): by default every list may hold items the user
has already seen (RecBole's default for sequential models); with exclude_seen=True every list, the model's
beam search included, leaves out each sample's seen items (`baselines.seen_items`: the user's whole sequence
before the target), as RecBole's general recommenders do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from minisapo.baselines import (canonical_items, excluded_items, item_id_rankings, item_knn_rankings, markov_rankings,
                                oracle_rankings, popularity_rankings, seen_items, targets_of)
from minisapo.files import at_least, finite, refuse_problems
from minisapo.generate import beam_search
from minisapo.progress import bar as progress_bar
from minisapo.reasoning import ReasoningConfig, build_prompt


@dataclass
class EvalConfig:
    ks: str = "1,5,10"
    """cut-offs K for hit@K / ndcg@K, comma-separated (recall@K == hit@K with one target)"""
    beam_width: int = 10
    """constrained beam width (the paper's 10); must be >= max K (raised to max K if smaller)"""
    max_samples: int = 0
    """evaluate on the first N samples of the split (0 = all)"""
    batch_size: int = 64
    """prompts per beam-search call"""
    baselines: bool = True
    """also compute the popularity, markov, item_knn (and, on synthetic data, oracle) baselines"""
    knn_recency: float = 0.5
    """item_knn weighs the t-th most recent history item by this^t (1 = plain sum)"""
    exclude_seen: bool = False
    """remove every item the user saw before the target (their whole sequence before it) from every ranked list:
    the model's beam search and every baseline's (False: rank every item, RecBole's default for sequential
    models)"""
    both_protocols: bool = True
    """on real data (no oracle) every eval_<split>*.json gets a sibling under the other protocol (exclude_seen
    flipped): eval_<split>*_exclude_seenTrue.json (or ..False.json)"""
    item_id_baseline: bool = False
    """also rank with the item-ID transformer (reasoning.mode=item_id: the same GPT with one token per item,
    trained with the run's settings in <run>/item_id/ before the first evaluation)"""

    def __post_init__(self):
        refuse_problems(self, "eval")

    def problems(self):
        """(field, what to change) for every setting out of range."""
        try:
            parse_ks(self.ks)
        except ValueError:
            yield "ks", "expected comma-separated whole numbers >= 1, like 1,5,10"
        yield from at_least(self, beam_width=1, batch_size=1)
        if self.max_samples < 0:
            yield "max_samples", "must be >= 0 (0 = all)"
        if not (finite(self.knn_recency) and 0 < self.knn_recency <= 1):
            yield "knn_recency", "must be in (0, 1] (1 = a plain sum over the history)"


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


def hits_at(report: dict, k: int = 10) -> list[int]:
    """1 per sample whose target a report (eval_*.json, or a baseline's part of it) ranked in its top k, from its
    per-sample `ranks` (0 = not in the list): what paired sign tests compare. [] for a report without ranks."""
    return [int(0 < r <= k) for r in report.get("ranks", [])]


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
# The model (paper protocol) and the baselines' reports
# ----------------------------------------------------------------------------------------------


def _subset(samples, max_samples: int):
    return list(samples) if not max_samples or max_samples <= 0 else list(samples)[:max_samples]


@torch.no_grad()
def evaluate(model, grammar, dataset, table, tokenizer, samples, ks: str | Sequence[int] = (1, 5, 10),
             beam_width: int = 10, batch_size: int = 64, max_samples: int = 0, reasoning=None,
             progress: bool = True, exclude_seen: bool = False) -> dict:
    """Paper protocol on `samples`: greedy thinking, then constrained beam search over valid SIDs.

    Returns {'hit@K', 'ndcg@K' for each K, 'valid_rate', 'per_level_acc' (list, top beam),
    'mean_response_length', 'num_samples'}.
      valid_rate: fraction of samples whose top beam is a catalog item. Under the trie constraint this
                  is 1.0 by construction unless decoding fails (e.g. a run-away thinking block).
      mean_response_length: thinking tokens + SID tokens + <eos> of the top beam, averaged.
    With dedup="none" (items may share a SID) a hit on the target's SID counts as a hit.
    `reasoning` is the ReasoningConfig used to build prompts (prompt_titles); None = defaults. In mode
    "item_id" the model is the item-ID transformer, ranked by its softmax over the catalog (`item_id_rankings`).
    exclude_seen: the beam search never returns a sample's `seen_items` (it still fills beam_width places).
    """

    ks = parse_ks(ks)
    beam_width = max(beam_width, max(ks))
    reasoning = reasoning or ReasoningConfig()
    samples = _subset(samples, max_samples)
    if reasoning.mode == "item_id":
        return item_id_report(model, dataset, samples, ks, table, exclude_seen, batch_size)

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
        exclude = seen_items(dataset, batch) if exclude_seen else None
        for res in beam_search(model, grammar, prompts, beam_width, exclude=exclude):
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


def _baseline_report(rankings: list[list[int]], samples, ks: list[int], table) -> dict:
    """The keys every report has, for a baseline's rankings (no generated response), and the target's rank
    per sample (`ranks`, 0 = not in the list: for paired tests)."""
    targets = targets_of(samples, table)
    out = ranking_metrics(rankings, targets, ks)
    out["valid_rate"] = 1.0
    out["per_level_acc"] = per_level_accuracy([r[0] if r else None for r in rankings], targets,
                                              table.codes) if table else None
    out["mean_response_length"] = None  # no generated response
    out["num_samples"] = len(samples)
    out["ranks"] = [rank_of(r, t) or 0 for r, t in zip(rankings, targets)]
    return out


def popularity_baseline(dataset, samples, ks: str | Sequence[int] = (1, 5, 10), table=None,
                        max_samples: int = 0, exclude_seen: bool = False) -> dict:
    """Popularity baseline (see `baselines.popularity_rankings`)."""
    ks = parse_ks(ks)
    samples = _subset(samples, max_samples)
    exclude = excluded_items(dataset, samples, table, exclude_seen)
    return _baseline_report(popularity_rankings(dataset, samples, max(ks), table, exclude), samples, ks, table)


def markov_baseline(dataset, samples, ks: str | Sequence[int] = (1, 5, 10), table=None,
                    max_samples: int = 0, exclude_seen: bool = False) -> dict:
    """First-order Markov baseline (see `baselines.markov_rankings`)."""
    ks = parse_ks(ks)
    samples = _subset(samples, max_samples)
    exclude = excluded_items(dataset, samples, table, exclude_seen)
    return _baseline_report(markov_rankings(dataset, samples, max(ks), table, exclude), samples, ks, table)


def item_knn_baseline(dataset, samples, ks: str | Sequence[int] = (1, 5, 10), table=None,
                      max_samples: int = 0, recency: float = 0.5, exclude_seen: bool = False) -> dict:
    """Item co-occurrence kNN baseline (see `baselines.item_knn_scores`)."""
    ks = parse_ks(ks)
    samples = _subset(samples, max_samples)
    exclude = excluded_items(dataset, samples, table, exclude_seen)
    return _baseline_report(item_knn_rankings(dataset, samples, max(ks), table, recency, exclude=exclude), samples,
                            ks, table)


def oracle_baseline(dataset, samples, ks: str | Sequence[int] = (1, 5, 10), table=None,
                    max_samples: int = 0, exclude_seen: bool = False) -> dict | None:
    """The oracle (`baselines.oracle_rankings`; None on real data). Besides the realised `hit@K`/`ndcg@K` it
    reports `expected_hit@K` = probability mass of the top-K items, i.e. the hit@K the oracle reaches on average
    (the ceiling without sampling noise)."""
    ks = parse_ks(ks)
    samples = _subset(samples, max_samples)
    ranked = oracle_rankings(dataset, samples, max(ks), table, excluded_items(dataset, samples, table, exclude_seen))
    if ranked is None:
        return None
    out = _baseline_report(ranked[0], samples, ks, table)
    for k in ks:
        out[f"expected_hit@{k}"] = float(np.mean([m[:k].sum() for m in ranked[1]])) if samples else 0.0
    return out


def item_id_report(model, dataset, samples, ks: str | Sequence[int] = (1, 5, 10), table=None,
                   exclude_seen: bool = False, batch_size: int = 256, max_samples: int = 0) -> dict:
    """The item-ID transformer's report on `samples` (`baselines.item_id_rankings`; the baselines' keys, and
    `distinct_top1`)."""
    ks = parse_ks(ks)
    samples = _subset(samples, max_samples)
    exclude = excluded_items(dataset, samples, table, exclude_seen)
    rankings = item_id_rankings(model, dataset, samples, max(ks), table, exclude, batch_size)
    out = _baseline_report(rankings, samples, ks, table)
    out["distinct_top1"] = len({r[0] for r in rankings if r})
    return out


# ----------------------------------------------------------------------------------------------
# Reports: the eval JSON dict and a readable table
# ----------------------------------------------------------------------------------------------


def eval_report(model_metrics: dict, popularity: dict | None = None, oracle: dict | None = None,
                markov: dict | None = None, item_knn: dict | None = None, item_id: dict | None = None) -> dict:
    """`{..model metrics.., "baselines": {"popularity": {...}, "markov": {...}, "item_knn": {...}, "item_id": {...},
    "oracle": {...}}}` (what eval_<split>.json holds; a baseline that was not computed is left out)."""
    out = dict(model_metrics)
    named = {"popularity": popularity, "markov": markov, "item_knn": item_knn, "item_id": item_id, "oracle": oracle}
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
    """Model and its baselines (popularity, markov, item_knn, item_id, oracle) side by side, one metric per row
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
                   reasoning=None, progress: bool = True, item_id_model=None) -> dict:
    """Evaluate the model and the baselines on `dataset.splits[split]` under cfg's protocol (`exclude_seen`)
    -> the report dict (see `eval_report`; pipeline.stage_eval writes it to eval_<split>.json); print
    `format_table(report)` for a readable view. item_id_model: the item-ID transformer, ranked as the
    `item_id` baseline (None: no such row)."""
    cfg = cfg or EvalConfig()
    samples = dataset.splits[split]
    kw = dict(ks=cfg.ks, max_samples=cfg.max_samples, exclude_seen=cfg.exclude_seen)
    metrics = evaluate(model, grammar, dataset, table, tokenizer, samples, beam_width=cfg.beam_width,
                       batch_size=cfg.batch_size, reasoning=reasoning, progress=progress, **kw)
    baselines = {}
    if cfg.baselines:
        baselines = dict(popularity=popularity_baseline(dataset, samples, table=table, **kw),
                         markov=markov_baseline(dataset, samples, table=table, **kw),
                         item_knn=item_knn_baseline(dataset, samples, table=table, recency=cfg.knn_recency, **kw),
                         oracle=oracle_baseline(dataset, samples, table=table, **kw))
    if item_id_model is not None:
        baselines["item_id"] = item_id_report(item_id_model, dataset, samples, table=table, **kw)
    report = eval_report(metrics, **baselines)
    report["split"] = split
    report["exclude_seen"] = cfg.exclude_seen
    return report


SELECT_K = 10  # the k of the selection metric
SELECT_METRIC = f"valid_hit@{SELECT_K}"  # what every choice on validation users is made by: the kept SFT and RL
#   checkpoints (keep_best; higher is better, the later step wins a tie) and compare's --tune (quick_hit_fn's key)


def quick_hit_fn(grammar, dataset, table, tokenizer, samples, k: int = 10, beam_width: int | None = None,
                 reasoning=None, batch_size: int = 64, exclude_seen: bool = False):
    """A `valid_fn` for `sft.train_sft` (and RL): model -> {"valid_hit@k", "valid_ndcg@k", "distinct_top1", "hits"}
    on `samples` ("hits": 1 per sample whose target is in the top k, for the paired test of `rl.keep_best_p`).

    Uses the full paper protocol (greedy thinking + constrained beam search, beam_width defaults to k; in
    mode "item_id" the softmax ranking), leaving out seen items with exclude_seen. Deterministic and does not touch the global RNG, so resumed runs stay identical.
    """
    samples = list(samples)

    def valid_fn(model) -> dict:
        r = evaluate(model, grammar, dataset, table, tokenizer, samples, ks=(k,), beam_width=beam_width or k,
                     batch_size=batch_size, reasoning=reasoning, progress=False, exclude_seen=exclude_seen)
        return {f"valid_hit@{k}": r[f"hit@{k}"], f"valid_ndcg@{k}": r[f"ndcg@{k}"], "distinct_top1": r["distinct_top1"],
                "hits": hits_at(r, k)}

    return valid_fn
