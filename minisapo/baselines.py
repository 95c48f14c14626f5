"""Baselines: what ranks items without the generator, on the same samples as the model (evaluate.py turns
each ranking into a report with the model's keys). Every count comes from the training split only, never
from a valid/test target:
  - popularity: rank items by how often they occur in the training data (the same ranking for everyone);
  - markov: first-order transitions: rank items by how often they followed the sample's last history
    item in the training samples (ties and unseen items: popularity);
  - item_knn: item co-occurrence kNN: sim(i, j) = cosine of the items' training-user columns
    (users who have both / sqrt(users of i * users of j), sim(i, i) = 0), score(j) = sum over the history
    items h of sim(h, j), the t-th most recent weighted by knn_recency^t (ties: popularity);
  - oracle (synthetic data only): rank items by the generator's *exact* next-item distribution, the
    ranking that maximises expected hit@K: no model can do better on average (its report also gives
    `expected_hit@K`, the probability mass of the top-K items: the ceiling without sampling noise);
  - item_id (with eval.item_id_baseline): the same GPT with one token per item and no SIDs (reasoning
    mode "item_id", SASRec-style), trained by the pipeline with the run's settings, ranking every item of
    the catalog by its softmax.

Each ranking leaves out the items `exclude` gives per sample: with eval.exclude_seen the sample's
`seen_items`, the user's whole sequence before the target (`excluded_items`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from minisapo.data import oracle as make_oracle
from minisapo.generate import left_pad
from minisapo.reasoning import ITEM_OFFSET, item_id_prompt


def seen_items(dataset, samples) -> list[set[int]]:
    """Per sample, what `eval.exclude_seen` removes from its ranked lists: every item of the user's sequence
    before the target (`dataset.sequences[user][:pos]`; a test sample's includes the user's whole training
    prefix and the validation item, not only the last max_history items of its prompt). A sample without a
    position: its history."""
    return [set(dataset.sequences[s.user][:s.pos]) if getattr(s, "pos", -1) >= 0 else set(s.history)
            for s in samples]


def canonical_items(table) -> np.ndarray:
    """(N,) the item that stands for each item's SID: itself, unless dedup="none" made several items
    share one SID; then all of them map to the first (a hit on the SID counts for every sharer)."""
    return np.array([table.item(table.tokens(i)) for i in range(table.num_items)], dtype=np.int64)


def per_sid(scores: np.ndarray, table, canon: np.ndarray | None = None) -> np.ndarray:
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


def targets_of(samples, table) -> list[int]:
    canon = None if table is None else canonical_items(table)
    return [s.target if canon is None else int(canon[s.target]) for s in samples]


def excluded_items(dataset, samples, table, exclude_seen: bool) -> list[set[int] | None]:
    """Per sample, the items a baseline leaves out of its list: with exclude_seen the sample's `seen_items`
    (as the SIDs' canonical items, so a shared SID is left out when one of its items was seen), else None."""
    if not exclude_seen:
        return [None] * len(samples)
    canon = None if table is None else canonical_items(table)
    return [seen if canon is None else {int(canon[i]) for i in seen} for seen in seen_items(dataset, samples)]


def _top(order: np.ndarray, k: int, exclude: set[int] | None) -> list[int]:
    """The first k of a full ranking `order`, leaving out the items in `exclude` (None: nothing)."""
    if exclude:
        order = order[~np.isin(order, list(exclude))]
    return order[:k].tolist()


def ranked_by_scores(scores: np.ndarray, k: int, exclude: set[int] | None = None) -> list[int]:
    """Indices of the k highest scores, ties broken by lower item index (stable, deterministic), leaving out
    `exclude`."""
    return _top(np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64))), k, exclude)


def _ranked_by(scores: np.ndarray, tiebreak: np.ndarray, k: int, exclude: set[int] | None = None) -> list[int]:
    """Indices of the k highest scores; ties by the higher `tiebreak` (popularity), then the lower index;
    leaving out `exclude`."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(tiebreak, dtype=np.float64),
                        -np.asarray(scores, dtype=np.float64)))
    return _top(order, k, exclude)


def popularity_rankings(dataset, samples, k: int, table=None, exclude: Sequence | None = None) -> list[list[int]]:
    """Top-k per sample by training popularity (`dataset.item_popularity()`): the same list for every sample,
    less the sample's `exclude` items. With a table whose SIDs are shared (dedup="none"), distinct SIDs are
    ranked, as for the model."""
    scores = per_sid(dataset.item_popularity().astype(np.float64), table)
    exclude = exclude if exclude is not None else [None] * len(samples)
    return [ranked_by_scores(scores, k, e) for e in exclude]


def transition_counts(dataset) -> dict[int, dict[int, int]]:
    """{a: {b: n}}: how often item b was the target of a training sample whose last history item is a
    (the first-order transitions of the training data; valid/test targets are never counted)."""
    counts: dict[int, dict[int, int]] = {}
    for s in dataset.splits["train"]:
        row = counts.setdefault(s.history[-1], {})
        row[s.target] = row.get(s.target, 0) + 1
    return counts


def markov_rankings(dataset, samples, k: int, table=None, exclude: Sequence | None = None) -> list[list[int]]:
    """Top-k per sample by the training count of (last history item -> item); ties, and items never seen
    after it, by popularity (so an unseen last item gives the popularity ranking). `exclude`: per sample, the
    items left out of its list (None: nothing)."""
    canon = None if table is None else canonical_items(table)  # once, not per sample
    pop = per_sid(dataset.item_popularity().astype(np.float64), table, canon)
    counts = transition_counts(dataset)
    rankings = []
    for b, s in enumerate(samples):
        scores = np.zeros(dataset.num_items)
        for item, n in counts.get(s.history[-1], {}).items():
            scores[item] = n
        rankings.append(_ranked_by(per_sid(scores, table, canon), pop, k, None if exclude is None else exclude[b]))
    return rankings


def _user_item_matrix(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The (users, items) 0/1 training matrix X (sparse) and 1/sqrt(|U_i|) per item (0 for items no one has)."""
    users = dataset.train_user_items()
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
                      batch_size: int = 256, exclude: Sequence | None = None) -> list[list[int]]:
    """Top-k per sample by `item_knn_scores`; ties, and items similar to nothing, by popularity. `exclude`:
    per sample, the items left out of its list (None: nothing)."""
    canon = None if table is None else canonical_items(table)  # once, not per sample
    pop = per_sid(dataset.item_popularity().astype(np.float64), table, canon)
    matrix = _user_item_matrix(dataset)
    exclude = exclude if exclude is not None else [None] * len(samples)
    rankings = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        scores = item_knn_scores(dataset, [s.history for s in batch], recency, matrix)
        rankings += [_ranked_by(per_sid(sc, table, canon), pop, k, e) for sc, e in zip(scores, exclude[start:])]
    return rankings


def oracle_rankings(dataset, samples, k: int, table=None, exclude: Sequence | None = None):
    """(rankings, masses): top-k per sample by the generator's exact next-item distribution (synthetic data;
    None on real data), and the probability of each ranked item. With shared SIDs (dedup="none") SIDs are
    ranked by their summed probability, as the model must."""
    orc = make_oracle(dataset)
    if orc is None:
        return None
    canon = None if table is None else canonical_items(table)  # once, not per sample
    exclude = exclude if exclude is not None else [None] * len(samples)
    rankings, masses = [], []
    for s, e in zip(samples, exclude):
        p = per_sid(np.asarray(orc.distribution(s), dtype=np.float64), table, canon)
        ranked = ranked_by_scores(p, k, e)
        rankings.append(ranked)
        masses.append(p[ranked])
    return rankings, masses


@torch.no_grad()
def item_id_scores(model, histories: Sequence[Sequence[int]], num_items: int, batch_size: int = 256) -> torch.Tensor:
    """(B, N) float64 probabilities of the next item for each history, under the item-ID transformer
    (reasoning mode "item_id"): the softmax over the N item tokens of the logits after `<bos> i_1 .. i_n`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(histories), batch_size):
        ids, real = left_pad([item_id_prompt(h) for h in histories[start:start + batch_size]], 0, device)
        h = model.hidden_states(ids, attn_mask=real)[:, -1]  # (B, C): after each prompt's last item (left padding)
        logits = model.logits(h)[:, ITEM_OFFSET:ITEM_OFFSET + num_items]  # (B, N): the item tokens only
        out.append(torch.softmax(logits.double(), dim=-1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, num_items, dtype=torch.float64)


def item_id_rankings(model, dataset, samples, k: int, table=None, exclude: Sequence | None = None,
                     batch_size: int = 256) -> list[list[int]]:
    """Top-k per sample by `item_id_scores` (the full softmax over the catalog; ties: lower index). With shared
    SIDs, distinct SIDs ranked by their summed probability, as the other baselines do. `exclude`: per sample,
    the items left out of its list (None: nothing)."""
    canon = None if table is None else canonical_items(table)
    exclude = exclude if exclude is not None else [None] * len(samples)
    probs = item_id_scores(model, [s.history for s in samples], dataset.num_items, batch_size).numpy()
    return [ranked_by_scores(per_sid(p, table, canon), k, e) for p, e in zip(probs, exclude)]
