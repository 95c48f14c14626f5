"""Residual-quantisation k-means (RQ-KMeans) in torch.

Level 0 clusters the item vectors; level l clusters what is left after
subtracting the centroids chosen at levels < l (the *residual*). An item's
semantic ID is its cluster index at every level, so early codes carry broad
semantics and later codes refine them:

    r_0 = x
    c_l = argmin_j || r_l - C_l[j] ||^2        (code at level l)
    r_{l+1} = r_l - C_l[c_l]
    => x == C_0[c_0] + C_1[c_1] + ... + C_{L-1}[c_{L-1}] + r_L

Everything runs on the device of the input tensor (CPU or GPU). Results are
deterministic for a given seed on a given device (updates use matmuls, not
atomic scatter-adds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CHUNK = 16384  # rows per distance block: keeps the (chunk, k) distance matrix small
# rq_kmeans seeds level l's k-means with seed + LEVEL_SEED_STRIDE * l: a different k-means++ draw per level,
# and runs with nearby seeds (0, 1, 2, ...) never share a level's seed (while seeds differ by < 1000).
LEVEL_SEED_STRIDE = 1000


def auto_codebook_size(num_items: int, levels: int, codes_per_item_root: float = 4.0,
                       min_size: int = 4, max_size: int = 256) -> int:
    """Default codebook size per level: the smallest power of two >= 4 * N^(1/L),
    clamped to [4, 256] and never above N.

    With L levels there are K^L possible SIDs; K ~ 4 N^(1/L) gives about 4^L = 64
    slots per item for L = 3. Residual k-means fills them very unevenly (items of
    one fine category differ only in a few words), so this many slots are needed to
    keep collisions moderate, while the codebook stays far from empty
    (64 items -> 16, 512 -> 32, 10k -> 128, >= 33k -> 256; a 256-code book for 500
    items would leave most codes almost unused). On the synthetic default world
    (512 items) 2 N^(1/L) = 16 codes gave ~30-50% colliding items, 32 codes ~15-20%.
    """
    target = codes_per_item_root * max(num_items, 1) ** (1.0 / levels)
    k = 2 ** math.ceil(math.log2(max(target, 1.0)))
    k = max(min_size, min(max_size, k))
    return max(1, min(k, num_items))


def sq_dists(x: torch.Tensor, c: torch.Tensor, x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances. x: (N, d), c: (k, d) -> (N, k).
    ``x_sq``: precomputed (N, 1) squared norms of x (saves time in loops)."""
    x_sq = (x * x).sum(1, keepdim=True) if x_sq is None else x_sq
    d = x_sq - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return d.clamp_min_(0.0)


def assign(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid for every row, in chunks. -> (codes (N,) long, sq distance (N,))."""
    codes, dists = [], []
    for s in range(0, len(x), CHUNK):
        d = sq_dists(x[s:s + CHUNK], c)  # (chunk, k)
        m, a = d.min(1)
        codes.append(a)
        dists.append(m)
    return torch.cat(codes), torch.cat(dists)


def kmeans_pp_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++: first centre uniform, each next one sampled with prob ~ D(x)^2,
    the squared distance to the nearest centre chosen so far. -> (k, d)"""
    n = len(x)
    x_sq = (x * x).sum(1, keepdim=True)  # (N, 1)
    idx = [int(torch.randint(n, (1,), generator=gen, device=x.device))]
    d2 = sq_dists(x, x[idx[0]][None], x_sq).squeeze(1)  # (N,)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # every point already sits on a centre: pick uniformly
            j = int(torch.randint(n, (1,), generator=gen, device=x.device))
        else:
            j = int(torch.multinomial(d2 / total, 1, generator=gen))
        idx.append(j)
        d2 = torch.minimum(d2, sq_dists(x, x[j][None], x_sq).squeeze(1))
    return x[idx].clone()


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0,
           init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ init (or given ``init`` centroids (k, d)) and
    empty-cluster repair.

    x: (N, d) float. Returns (centroids (k, d), codes (N,)) where codes are the
    nearest-centroid assignment for the returned centroids.
    """
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    k = min(k, len(x)) if init is None else len(init)
    c = kmeans_pp_init(x, k, gen) if init is None else init.to(x).clone()
    codes, dist = assign(x, c)
    for _ in range(iters):
        # update: centroid = mean of its members, via one-hot matmul (deterministic, GPU-friendly)
        sums = torch.zeros_like(c)
        counts = torch.zeros(k, dtype=x.dtype, device=x.device)
        for s in range(0, len(x), CHUNK):
            onehot = torch.nn.functional.one_hot(codes[s:s + CHUNK], k).to(x.dtype)  # (chunk, k)
            sums += onehot.T @ x[s:s + CHUNK]
            counts += onehot.sum(0)
        filled = counts > 0
        c = torch.where(filled[:, None], sums / counts.clamp_min(1)[:, None], c)
        # repair: an empty cluster takes over the point worst served by its centre
        empty = (~filled).nonzero().flatten().tolist()
        if empty:
            far = dist.argsort(descending=True, stable=True)
            for e, j in zip(empty, far[:len(empty)].tolist()):
                c[e] = x[j]
        new_codes, dist = assign(x, c)
        if torch.equal(new_codes, codes) and not empty:
            break
        codes = new_codes
    return c, codes


@dataclass
class RQResult:
    codes: torch.Tensor  # (N, L) long, code per level
    centroids: list[torch.Tensor]  # L tensors (K_l, d)
    residual: torch.Tensor  # (N, d) what is left after the last level


def rq_kmeans(x: torch.Tensor, codebook_sizes: list[int], iters: int = 25, seed: int = 0) -> RQResult:
    """Residual k-means over L = len(codebook_sizes) levels (see module docstring)."""
    r = x.clone()
    codes, cents = [], []
    for level, k in enumerate(codebook_sizes):
        c, a = kmeans(r, k, iters=iters, seed=seed + LEVEL_SEED_STRIDE * level)
        r = r - c[a]  # residual for the next level
        codes.append(a)
        cents.append(c)
    return RQResult(torch.stack(codes, 1), cents, r)


def spread_last_level(rq: RQResult) -> torch.Tensor:
    """Codes (N, L) whose last level is unique within each prefix where the codebook allows.

    Items with (almost) the same vector - e.g. the same genres and year, titles of words no other item
    has - land on the same last-level centroid and collide. Here, within every group of items sharing
    the first L-1 codes, the (item, code) pairs are taken in order of distance (residual to centroid),
    each item getting its nearest code no other item of the group took yet; only a group larger than the
    codebook keeps collisions. The last code stays as close to the item as uniqueness permits.
    """
    codes = rq.codes.clone()
    last = rq.centroids[-1]  # (K, d)
    before = rq.residual + last[codes[:, -1]]  # (N, d) residual that the last level quantised
    dist = sq_dists(before, last)  # (N, K)
    groups: dict[tuple, list[int]] = {}
    for i, prefix in enumerate(codes[:, :-1].tolist()):
        groups.setdefault(tuple(prefix), []).append(i)
    k = last.shape[0]
    for items in groups.values():
        if len(items) == 1:
            continue
        d = dist[items]  # (n, K)
        order = torch.argsort(d.flatten(), stable=True).tolist()
        taken, done = set(), {}
        for flat in order:
            row, code = divmod(flat, k)
            if row in done or code in taken:
                continue
            done[row] = code
            taken.add(code)
            if len(done) == len(items) or len(taken) == k:
                break
        for row, code in done.items():
            codes[items[row], -1] = code
    return codes


def level_stats(codes, codebook_sizes: list[int]) -> list[dict]:
    """Per level: usage = codes used / K, perplexity = exp(entropy of code frequencies)
    (K when all codes are equally used, 1 when one code takes everything)."""
    codes = torch.as_tensor(codes)
    out = []
    for level, k in enumerate(codebook_sizes):
        counts = torch.bincount(codes[:, level], minlength=k).double()
        p = counts[counts > 0] / counts.sum()
        out.append({"codebook_size": int(k), "used": int((counts > 0).sum()),
                    "usage": float((counts > 0).sum()) / k,
                    "perplexity": float(torch.exp(-(p * p.log()).sum()))})
    return out
