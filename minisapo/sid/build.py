"""The SID stage: catalog -> vectors -> RQ-KMeans codes -> dedup -> table, descriptors, tokenizer.

``prepare(dataset, cfg, out_dir)`` runs the whole stage and writes

    out_dir/sid_table.json        item_id -> ["<a_3>", "<b_1>", "<c_7>"(, "<d_0>")]
    out_dir/sid_meta.json         levels, codebook sizes, dedup size (to reload the table exactly)
    out_dir/sid_descriptors.json  "<a_3>" / "<a_3><b_1>" / ... -> distinctive title words
    out_dir/sid_stats.json        per level usage + perplexity, collision_rate (before dedup)
    out_dir/tokenizer.json        the vocabulary (HF tokenizers format)
    out_dir/sid_settings.json     the settings + a fingerprint of the catalog (cache key)
    out_dir/sid_tree.png          the SID tree's top levels + codebook usage (with plot=...)

A second call with the same settings and catalog is a cache hit (it only loads). A build is written to a
temporary folder beside out_dir and swapped in whole when complete, so a failed build leaves the old cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from minisapo.data.synthetic import is_compose
from minisapo.sid.descriptors import build_descriptors
from minisapo.sid.embed import interaction_svd, l2_normalise, load_vectors, tfidf_svd
from minisapo.sid.rqkmeans import auto_codebook_size, level_stats, rq_kmeans, spread_last_level
from minisapo.files import at_least, claim_dir, new_dir, refuse_problems, remove, swap_dir, temp_path, write_json
from minisapo.sid.table import SIDTable, dedup_codes
from minisapo.tokenizer import LETTERS, Tokenizer

EMBEDDINGS = ("tfidf", "collab", "hybrid")
STATS_FILE = "sid_stats.json"
SETTINGS_FILE = "sid_settings.json"
TOKENIZER_FILE = "tokenizer.json"
CACHE_VERSION = 4  # bump when the SID stage's outputs change meaning, so old caches rebuild
#   (3: connector word "often"; 4: one TF-IDF block per text field, no stopwords, descriptors from every field)
PLOT_FILE = "sid_tree.png"


@dataclass
class SIDConfig:
    """Settings of the SID stage (`minisapo sid`, keys `--sid.<field>`)."""

    levels: int = 3
    """K: semantic SID levels (= reasoning steps); at most 7"""
    method: str = "auto"
    """"rqkmeans" (item vectors -> residual k-means) | "latent" (synthetic worlds: the designed codes, each
    item's latent path; no vectors, no k-means) | "auto" (latent on a compose world, else rqkmeans)"""
    codebook_size: int = 0
    """codes per level; 0 = auto: smallest power of two >= 4*N^(1/K), in [4, 256], <= N"""
    dedup: str = "token"
    """"token": colliding items get an extra <d_i> token; "none": keep shared SIDs (then a hit on a shared SID
    counts as a hit for every item sharing it)"""
    embedding: str = "tfidf"
    """built-in item vectors: "tfidf" (TF-IDF + truncated SVD of the item text, no download), "collab" (truncated
    SVD of the training user-item matrix, items scaled by 1/sqrt(their users)) or "hybrid" (both side by side,
    each L2-normalised and weighted 1/sqrt(2))"""
    vectors: str | None = None
    """path to a .npy (N x d), row i = item index i; replaces `embedding` when set"""
    embed_dim: int = 64
    """TF-IDF SVD dimension (ignored with `vectors`)"""
    normalize: bool = True
    """L2-normalise item vectors before k-means"""
    kmeans_iters: int = 30
    """max Lloyd iterations per level (stops early when assignments settle)"""
    sid_seed: int = 0
    """seed of SVD and k-means++ (SIDs are a data artifact: own seed, not the run seed)"""
    descriptor_words: int = 2
    """words per descriptor (per code prefix)"""
    unique_last: bool = False
    """last level: items sharing the other codes get distinct codes where the codebook allows (nearest free
    centroid), so few items collide and need a dedup token"""
    max_vocab: int = 8192
    """tokenizer size cap: specials + SID tokens + words; 0 = keep every word"""

    def __post_init__(self):
        refuse_problems(self, "sid")

    def problems(self):
        """(field, what to change) for every setting out of range."""
        if not 1 <= self.levels <= len(LETTERS) - 1:
            yield "levels", f"must be in 1..{len(LETTERS) - 1}"
        if self.dedup not in ("token", "none"):
            yield "dedup", "use token or none"
        if self.embedding not in EMBEDDINGS:
            yield "embedding", f"use one of {', '.join(EMBEDDINGS)} (for your own vectors set vectors=<file.npy>)"
        if self.codebook_size < 0 or self.codebook_size == 1:
            yield "codebook_size", "must be 0 (auto) or >= 2"
        if self.method not in ("auto", "rqkmeans", "latent"):
            yield "method", "use auto, rqkmeans or latent"
        if self.method == "latent" and self.vectors:
            yield "vectors", ("vectors are for sid.method=rqkmeans (sid.method=latent uses the world's own codes): "
                              "set --sid.method=rqkmeans to build SIDs from your vectors")
        yield from at_least(self, embed_dim=1, kmeans_iters=1, descriptor_words=1, max_vocab=0, sid_seed=0)


# ------------------------------------------------------------------ helpers
def item_texts(dataset) -> list:
    """What the item vectors are made from: per item, its text fields (title, genres, year, brand, ...)
    as a list when the dataset has several, else its one text."""
    fields = getattr(dataset, "item_fields", None) or {}
    if len(fields) > 1:
        return [list(vals) for vals in zip(*fields.values())]
    return list(dataset.item_text)


def item_vectors(texts: list, cfg: SIDConfig, dataset=None) -> np.ndarray:
    """(N, d) float32 item vectors: cfg.vectors if given, else the built-in cfg.embedding: TF-IDF + SVD of
    `texts` (one string per item, or one list of field texts per item; see `embed.tfidf_svd`), the SVD of
    `dataset`'s training interactions (`embed.interaction_svd`), or both side by side."""
    if cfg.vectors:
        x = load_vectors(cfg.vectors, len(texts))
    else:
        parts = []
        if cfg.embedding in ("tfidf", "hybrid"):
            parts.append(tfidf_svd(texts, dim=cfg.embed_dim, seed=cfg.sid_seed))
        if cfg.embedding in ("collab", "hybrid"):
            parts.append(interaction_svd(dataset.train_user_items(), len(texts), dim=cfg.embed_dim, seed=cfg.sid_seed))
        x = np.concatenate(parts, axis=1) / math.sqrt(len(parts))
    return l2_normalise(x).astype(np.float32) if cfg.normalize else x


def sid_method(dataset, cfg: SIDConfig) -> str:
    """cfg.method with "auto" resolved: the designed codes of a compose world, RQ-KMeans for any other data."""
    if cfg.method != "auto":
        return cfg.method
    return "latent" if is_compose(dataset) and not cfg.vectors else "rqkmeans"


def latent_codes(dataset, levels: int) -> tuple[np.ndarray, list[int]]:
    """Designed SIDs of a synthetic world: item j's codes are its latent path (`item_categories`, the last
    node "n2.1.4" -> codes (1, 0, 3)). Returns codes (N, K) and the codebook sizes (the world's branching)."""
    cats = getattr(dataset, "item_categories", None)
    if not cats or (dataset.info or {}).get("source") != "synthetic":
        raise ValueError("sid.method=latent needs a synthetic world (its items carry their latent codes); "
                         "use sid.method=rqkmeans for other data")
    codes = np.array([[int(d) - 1 for d in str(c).split()[-1][1:].split(".")] for c in cats], dtype=np.int64)
    if codes.shape[1] != levels:
        raise ValueError(f"sid.levels={levels} but the world has {codes.shape[1]} latent levels (its depth): "
                         f"set --sid.levels={codes.shape[1]}")
    branching = int(dataset.info["generator"]["branching"])
    return codes, [branching] * levels


def codebook_sizes(num_items: int, cfg: SIDConfig) -> list[int]:
    k = cfg.codebook_size or auto_codebook_size(num_items, cfg.levels)
    return [k] * cfg.levels


def collision_rate(codes: np.ndarray) -> float:
    """Fraction of items whose K semantic codes are shared with at least one other item."""
    _, inv, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inv.reshape(-1)] > 1).mean()) if len(codes) else 0.0


def purity(codes: np.ndarray, labels: list[str]) -> float:
    """Sum over codes of the majority label count / N (1.0 = every code holds one label)."""
    pairs: dict[int, dict[str, int]] = {}
    for c, lab in zip(codes.tolist(), labels):
        d = pairs.setdefault(c, {})
        d[lab] = d.get(lab, 0) + 1
    return sum(max(d.values()) for d in pairs.values()) / max(len(labels), 1)


def format_stats(stats: dict) -> str:
    """A short text table of the SID stats."""
    lines = ["level  codebook  used  usage  perplexity"]
    for l, s in enumerate(stats["levels"]):
        lines.append(f"{LETTERS[l]:>5}  {s['codebook_size']:>8}  {s['used']:>4}  {s['usage']:>5.2f}  {s['perplexity']:>10.1f}")
    lines.append(f"collision rate before dedup: {stats['collision_rate']:.1%} of {stats['num_items']} items "
                 f"({stats['num_unique_sids']} distinct SIDs"
                 + (f", up to {stats['max_items_per_sid']} items on one" if "max_items_per_sid" in stats else "")
                 + f"; dedup tokens: {stats['dedup_size']}, dedup={stats['dedup']})")
    if "purity_level1" in stats:
        lines.append(f"level-1 purity vs top-level category: {stats['purity_level1']:.3f}")
    return "\n".join(lines)


def _fingerprint(dataset, cfg: SIDConfig) -> str:
    h = hashlib.sha1()
    h.update(f"v{CACHE_VERSION}".encode())
    h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    for field in ("item_ids", "item_titles", "item_text", "item_categories"):
        h.update("\x1e".join(map(str, getattr(dataset, field, None) or [])).encode())
        h.update(b"\x1d")
    for name, vals in (getattr(dataset, "item_fields", None) or {}).items():  # the text split into fields
        h.update(("\x1e".join([name, *map(str, vals)])).encode())
        h.update(b"\x1d")
    if cfg.vectors and Path(cfg.vectors).exists():
        h.update(Path(cfg.vectors).read_bytes())
    elif cfg.embedding != "tfidf" and sid_method(dataset, cfg) == "rqkmeans":  # collaborative: the training interactions
        h.update(json.dumps([sorted(items) for items in dataset.train_user_items()]).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- the stage
def build_sids(dataset, cfg: SIDConfig, out_dir=None, device: str | torch.device = "cpu",
               verbose: bool = True) -> tuple[SIDTable, dict]:
    """Vectors -> RQ-KMeans -> dedup -> SIDTable with descriptors, plus stats.
    Saves the table (and stats) to ``out_dir`` when given. No tokenizer, no cache."""
    t0 = time.time()
    texts = item_texts(dataset)
    n = len(texts)
    if sid_method(dataset, cfg) == "latent":
        codes, sizes = latent_codes(dataset, cfg.levels)
        quantisation_error = 0.0
    else:
        x = torch.from_numpy(item_vectors(texts, cfg, dataset)).to(device)  # (N, d)
        sizes = codebook_sizes(n, cfg)
        rq = rq_kmeans(x, sizes, iters=cfg.kmeans_iters, seed=cfg.sid_seed)
        codes = (spread_last_level(rq) if cfg.unique_last else rq.codes).cpu().numpy().astype(np.int64)  # (N, K)
        quantisation_error = float((rq.residual ** 2).sum(1).mean())
    dedup = dedup_codes(codes) if cfg.dedup == "token" else np.full(n, -1, dtype=np.int64)
    descriptors = build_descriptors(codes, list(dataset.item_text), cfg.descriptor_words)
    table = SIDTable(codes, dedup, sizes, descriptors, [str(i) for i in (getattr(dataset, "item_ids", None) or range(n))])

    stats = {"levels": level_stats(codes, sizes), "collision_rate": collision_rate(codes),
             "num_items": n, "num_unique_sids": int(len(np.unique(codes, axis=0))),
             "max_items_per_sid": int(np.unique(codes, axis=0, return_counts=True)[1].max()) if n else 0,
             "dedup": cfg.dedup, "dedup_size": table.dedup_size,
             "quantisation_error": quantisation_error}
    cats = getattr(dataset, "item_categories", None)
    if cats:  # top-level category = first whitespace token of the category path
        stats["purity_level1"] = purity(codes[:, 0], [str(c).split()[0] if str(c).split() else "" for c in cats])
    stats["seconds"] = round(time.time() - t0, 3)
    if verbose:
        print(format_stats(stats))
    if out_dir is not None:
        out_dir = Path(out_dir)
        table.save(out_dir)
        write_json(out_dir / STATS_FILE, stats)
    return table, stats


def prepare(dataset, cfg: SIDConfig | None = None, out_dir=".", plot: Callable | None = None,
            device: str | torch.device = "cpu", verbose: bool = True) -> tuple[SIDTable, Tokenizer, dict]:
    """The `minisapo sid` stage: SIDs + descriptors + tokenizer (+ PNG) in ``out_dir``.
    A second call with the same settings and catalog loads the cached result.
    (The device only changes where k-means runs; it is not part of the cache key.)
    `plot(table, stats, path)` (e.g. minisapo.plots.plot_sid_tree: drawing sits above this layer) draws
    out_dir/sid_tree.png if it is missing."""
    cfg = cfg or SIDConfig()
    out_dir = Path(out_dir)
    claim_dir(out_dir, (SETTINGS_FILE, TOKENIZER_FILE, "sid_table.json"), "a SID folder")
    fp = _fingerprint(dataset, cfg)
    settings_path = out_dir / SETTINGS_FILE
    needed = [settings_path, out_dir / STATS_FILE, out_dir / TOKENIZER_FILE]
    cached = None
    if all(p.exists() for p in needed):
        try:
            if json.loads(settings_path.read_text()).get("fingerprint") == fp:
                cached = (*load(out_dir), json.loads((out_dir / STATS_FILE).read_text()))
        except (ValueError, OSError, AttributeError) as e:  # a damaged cache is rebuilt, never trusted
            from minisapo.files import warn

            warn(f"the SID cache in {out_dir} is damaged ({str(e)[:100]}); rebuilding it")
    if cached is not None:
        table, tok, stats = cached
        if verbose:
            print(f"SIDs: cache hit in {out_dir}")
            print(format_stats(stats))
        if plot and not (out_dir / PLOT_FILE).exists():
            plot(table, stats, out_dir / PLOT_FILE)
        return table, tok, stats
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = new_dir(temp_path(out_dir, "building"))
    try:
        table, stats = build_sids(dataset, cfg, build, device=device, verbose=verbose)
        try:
            tok = Tokenizer.build(list(dataset.item_text), table, vocab_size=cfg.max_vocab or None)
        except ValueError as e:
            raise ValueError(f"--sid.max_vocab={cfg.max_vocab}: {e}") from None
        tok.save(build / TOKENIZER_FILE)
        stats["vocab_size"] = tok.vocab_size
        write_json(build / STATS_FILE, stats)
        if plot:
            plot(table, stats, build / PLOT_FILE)
        write_json(build / SETTINGS_FILE, {"config": dataclasses.asdict(cfg), "fingerprint": fp})
        swap_dir(build, out_dir)  # complete, or not at all
    finally:
        remove(build)
    if verbose:
        print(f"SIDs: wrote {out_dir} (vocabulary {tok.vocab_size} tokens)")
    return table, tok, stats


def load(out_dir) -> tuple[SIDTable, Tokenizer]:
    """(SIDTable, Tokenizer) written by ``prepare``."""
    out_dir = Path(out_dir)
    return SIDTable.load(out_dir), Tokenizer.load(out_dir / TOKENIZER_FILE)


def load_sids(out_dir) -> SIDTable:
    return SIDTable.load(out_dir)
