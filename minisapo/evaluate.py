"""Evaluation: hit@K, ndcg@K, valid-SID rate, per-level accuracy, and two baselines.

The paper's protocol: the model writes its thinking greedily, then a constrained beam search over
valid SIDs (prefix trie) ranks items. Each sample has exactly one target item, so

    hit@K  = 1 if the target is among the top-K ranked items else 0
    ndcg@K = 1 / log2(rank + 1) if the target is at (1-based) rank <= K else 0
             (the ideal DCG with one relevant item is 1, so no normalisation is needed)

`recall@K` with one target is *identical* to hit@K, so it is not reported separately.

Baselines on the same samples, with the same keys:
  - popularity: rank items by how often they occur in the training data (the same ranking for everyone);
  - oracle (synthetic data only): rank items by the generator's *exact* next-item distribution, the
    ranking that maximises expected hit@K: no model can do better on average. We report its realised
    hit@K/ndcg@K (same protocol as the model) and, as `expected_hit@K`, the noise-free ceiling
    (the probability mass of the top-K items).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


@dataclass
class EvalConfig:
    ks: str = "1,5,10"  # cut-offs K for hit@K / ndcg@K, comma-separated (recall@K == hit@K with one target)
    beam_width: int = 20  # constrained beam width; must be >= max K (raised to max K if smaller)
    max_samples: int = 0  # evaluate on the first N samples of the split (0 = all)
    batch_size: int = 64  # prompts per beam-search call
    baselines: bool = True  # also compute the popularity (and, on synthetic data, oracle) baselines


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
             beam_width: int = 20, batch_size: int = 64, max_samples: int = 0, reasoning=None,
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
    from tqdm.auto import tqdm

    from minisapo.generate import beam_search
    from minisapo.reasoning import ReasoningConfig, build_prompt

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
    bar = tqdm(range(0, len(samples), batch_size), desc="eval", disable=not progress, leave=False)
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


def _per_sid(scores: np.ndarray, table) -> np.ndarray:
    """Item scores -> scores of distinct SIDs (summed over items sharing one; -inf on the others), so
    baselines rank what the model ranks. Identity when every SID is unique."""
    if table is None:
        return scores
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


def popularity_baseline(dataset, samples, ks: str | Sequence[int] = (1, 5, 10), table=None,
                        max_samples: int = 0) -> dict:
    """Rank every item by training popularity (`dataset.item_popularity()`), same list for every sample.
    With a table whose SIDs are shared (dedup="none"), distinct SIDs are ranked, as for the model."""
    ks = parse_ks(ks)
    samples = _subset(samples, max_samples)
    ranked = _ranked_by_scores(_per_sid(dataset.item_popularity().astype(np.float64), table), max(ks))
    targets = _targets(samples, table)
    out = ranking_metrics([ranked] * len(samples), targets, ks)
    out["valid_rate"] = 1.0
    out["per_level_acc"] = per_level_accuracy([ranked[0]] * len(samples), targets, table.codes) if table else None
    out["mean_response_length"] = None  # no generated response
    out["num_samples"] = len(samples)
    return out


def oracle_baseline(dataset, samples, ks: str | Sequence[int] = (1, 5, 10), table=None,
                    max_samples: int = 0) -> dict | None:
    """Rank items by the generator's exact next-item distribution (synthetic data); None on real data.

    Besides the realised `hit@K`/`ndcg@K` it reports `expected_hit@K` = probability mass of the top-K
    items, i.e. the hit@K the oracle reaches on average (the ceiling without sampling noise).
    With shared SIDs (dedup="none") it ranks SIDs by their summed probability, as the model must.
    """
    from minisapo.data import oracle as make_oracle

    orc = make_oracle(dataset)
    if orc is None:
        return None
    ks = parse_ks(ks)
    samples = _subset(samples, max_samples)
    rankings, expected = [], {k: 0.0 for k in ks}
    for s in samples:
        p = _per_sid(np.asarray(orc.distribution(s), dtype=np.float64), table)
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


def eval_report(model_metrics: dict, popularity: dict | None = None, oracle: dict | None = None) -> dict:
    """`{..model metrics.., "baselines": {"popularity": {...}, "oracle": {...}}}` (what eval_<split>.json holds)."""
    out = dict(model_metrics)
    baselines = {}
    if popularity is not None:
        baselines["popularity"] = popularity
    if oracle is not None:
        baselines["oracle"] = oracle
    out["baselines"] = baselines
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
    """Model / popularity / oracle side by side, one metric per row (plain text, also valid Markdown)."""
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
                   reasoning=None, run_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Evaluate the model and the baselines on `dataset.splits[split]`; write `eval_<split>.json` to run_dir.

    Returns the report dict (see `eval_report`); print `format_table(report)` for a readable view.
    """
    cfg = cfg or EvalConfig()
    samples = dataset.splits[split]
    kw = dict(ks=cfg.ks, max_samples=cfg.max_samples)
    metrics = evaluate(model, grammar, dataset, table, tokenizer, samples, beam_width=cfg.beam_width,
                       batch_size=cfg.batch_size, reasoning=reasoning, progress=progress, **kw)
    pop = orc = None
    if cfg.baselines:
        pop = popularity_baseline(dataset, samples, table=table, **kw)
        orc = oracle_baseline(dataset, samples, table=table, **kw)
    report = eval_report(metrics, pop, orc)
    report["split"] = split
    if run_dir is not None:
        from minisapo.runs import write_json

        write_json(Path(run_dir) / f"eval_{split}.json", report)
    return report


def quick_hit_fn(grammar, dataset, table, tokenizer, samples, k: int = 10, beam_width: int | None = None,
                 reasoning=None, batch_size: int = 64):
    """A `valid_fn` for `sft.train_sft` (and RL): model -> {"valid_hit@k", "valid_ndcg@k", "distinct_top1"} on `samples`.

    Uses the full paper protocol (greedy thinking + constrained beam search, beam_width defaults to k).
    Deterministic and does not touch the global RNG, so resumed runs stay identical.
    """
    samples = list(samples)

    def valid_fn(model) -> dict:
        r = evaluate(model, grammar, dataset, table, tokenizer, samples, ks=(k,), beam_width=beam_width or k,
                     batch_size=batch_size, reasoning=reasoning, progress=False)
        return {f"valid_hit@{k}": r[f"hit@{k}"], f"valid_ndcg@{k}": r[f"ndcg@{k}"], "distinct_top1": r["distinct_top1"]}

    return valid_fn
