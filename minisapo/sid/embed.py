"""Item vectors: built-in TF-IDF + truncated SVD (no model download), or a user .npy.

TF-IDF (sublinear tf, smoothed idf, rows L2-normalised) over the content words of each
item's text (stopwords dropped; a year such as 1995 also gives its decade, 1990s). An item
with several text fields (title, genres, year, brand, categories, description) gets one TF-IDF
block per field, each block L2-normalised and weighted 1/sqrt(#fields), so a field of a few
common words (the genres) counts as much as a field of many rare ones (the title). Then a truncated SVD (exact via the V x V Gram matrix for small vocabularies,
else ``torch.svd_lowrank`` on the sparse matrix, so a large vocabulary never
becomes a dense N x V matrix) keeps ``dim`` directions:
latent semantic analysis. Rows are L2-normalised so k-means compares directions.

Collaborative vectors (`interaction_svd`) come from who consumed what instead: the truncated SVD of the
training user-item matrix, each item's column scaled by 1/sqrt(its users) (so item.item products are the
cosines item-kNN uses); two items of the same users get close vectors whatever their text.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

_WORD = re.compile(r"\w+")
GRAM_MAX_VOCAB = 2048  # up to this many distinct words the SVD is exact (eigh of A^T A)


# English function words and title filler: they say nothing about an item (dropped from the TF-IDF
# words and from descriptors)
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having
he her here hers him his how i if in into is it its itself just me more most my no nor not now of off on
once only or other our ours out over own same she should so some such than that the their theirs them
then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours s t d ll m re ve o y don won isn aren wasn la le les
el de der die das du des et un une il""".split())
_YEAR = re.compile(r"^(1[89]|20)\d\d$")


def words(text: str) -> list[str]:
    """Lowercased word tokens (letters/digits/underscore runs)."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    """The words that carry meaning: `words(text)` without stopwords; a year (1800-2099) is followed by
    its decade (`1995` -> `1995 1990s`), so items of the same decade share a word."""
    out = []
    for w in words(text):
        if w in STOPWORDS:
            continue
        out.append(w)
        if _YEAR.match(w):
            out.append(w[:3] + "0s")
    return out


def descriptor_words(text: str) -> list[str]:
    """Words fit for a descriptor: `content_words` without single characters and bare numbers
    (sequel numbers, sizes), but with years and decades."""
    return [w for w in content_words(text) if len(w) > 1 and (not w.isdigit() or _YEAR.match(w))]


def tfidf_matrix(texts: Sequence[str], min_df: int = 1) -> torch.Tensor:
    """(N, V) sparse TF-IDF of the content words of each text (sublinear tf, smoothed idf, rows L2-normalised;
    an empty text is a zero row)."""
    docs = [Counter(content_words(t)) for t in texts]
    df = Counter(w for d in docs for w in d)
    vocab = {w: j for j, w in enumerate(sorted(w for w, c in df.items() if c >= min_df))}
    n, v = len(docs), len(vocab)
    idf = np.array([math.log((1 + n) / (1 + df[w])) + 1.0 for w in vocab], dtype=np.float32)
    rows, cols, vals = [], [], []
    for i, d in enumerate(docs):
        r_cols = [vocab[w] for w in d if w in vocab]
        r_vals = np.array([(1.0 + math.log(d[w])) for w in d if w in vocab], dtype=np.float32) * idf[r_cols]
        norm = float(np.linalg.norm(r_vals)) or 1.0
        rows += [i] * len(r_cols)
        cols += r_cols
        vals.append(r_vals / norm)
    vals = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    return torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1),
                                   torch.from_numpy(vals), (n, v), check_invariants=False).coalesce()


def tfidf_svd(texts: Sequence[str] | Sequence[Sequence[str]], dim: int = 64, seed: int = 0,
              min_df: int = 1) -> np.ndarray:
    """TF-IDF + truncated SVD. texts: N strings, or N lists of F field texts (one TF-IDF block per field,
    each weighted 1/sqrt(F)) -> (N, dim') float32, L2-normalised rows, dim' = min(dim, N, V)
    (fewer directions than asked when the data is tiny)."""
    fields = [[t] if isinstance(t, str) else list(t) for t in texts]
    n_fields = max((len(f) for f in fields), default=0)
    blocks = [tfidf_matrix([f[j] if j < len(f) else "" for f in fields], min_df) for j in range(n_fields)]
    blocks = [b for b in blocks if b.shape[1] > 0]
    if not fields or not blocks:
        raise ValueError("item texts are empty: nothing to embed (check the dataset's item_text)")
    a = blocks[0] if len(blocks) == 1 else (torch.cat(blocks, dim=1) * (1.0 / math.sqrt(len(blocks)))).coalesce()
    n, v = a.shape
    k = max(1, min(dim, n, v))
    if v <= GRAM_MAX_VOCAB:  # small vocabulary: exact, via the eigenvectors of the (V, V) Gram matrix
        with warnings.catch_warnings():  # "sparse CSR support is in beta": fine for one product
            warnings.simplefilter("ignore")
            gram = torch.sparse.mm(a.t().coalesce(), a).to_dense().double()  # (V, V) = A^T A
        evals, evecs = torch.linalg.eigh(gram)  # ascending
        top = evecs[:, evals.argsort(descending=True)[:k]].float()  # (V, k) right singular vectors
        x = torch.sparse.mm(a, top).numpy()  # (N, k) = U S
    else:  # large vocabulary: randomised truncated SVD on the sparse matrix
        with torch.random.fork_rng(devices=[]):  # svd_lowrank draws from the global RNG
            torch.manual_seed(seed)
            u, s, _ = torch.svd_lowrank(a, q=min(k + 10, n, v), niter=4)
        x = (u[:, :k] * s[:k]).numpy()  # (N, k)
    # fix SVD sign ambiguity: largest-|value| entry of each column positive
    signs = np.sign(x[np.abs(x).argmax(0), np.arange(k)])
    x = x * np.where(signs == 0, 1, signs)
    return l2_normalise(x).astype(np.float32)


def interaction_svd(user_items: Sequence[set[int]], num_items: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """(N, dim') float32 L2-normalised item vectors V S from the truncated SVD of X D: X the (users, items) 0/1
    matrix of `user_items` (each user's training items), D = diag(1/sqrt(users of item i)); dim' = min(dim,
    users, items). An item no user has gets a zero row."""
    rows = [u for u, items in enumerate(user_items) for _ in items]
    cols = [i for items in user_items for i in sorted(items)]
    if not rows:
        raise ValueError("no training interactions: collaborative item vectors need some")
    n_users = np.bincount(cols, minlength=num_items).astype(np.float64)
    scale = np.where(n_users > 0, 1.0 / np.sqrt(np.maximum(n_users, 1)), 0.0)
    a = torch.sparse_coo_tensor(torch.tensor([cols, rows]), torch.from_numpy(scale[cols]).float(),
                                (num_items, len(user_items)), check_invariants=False).coalesce()  # (N, U) = (X D)^T
    k = max(1, min(dim, num_items, len(user_items)))
    with torch.random.fork_rng(devices=[]):  # svd_lowrank draws from the global RNG
        torch.manual_seed(seed)
        u, s, _ = torch.svd_lowrank(a, q=min(k + 10, *a.shape), niter=6)
    x = (u[:, :k] * s[:k]).numpy()  # (N, k)
    signs = np.sign(x[np.abs(x).argmax(0), np.arange(k)])  # fix the SVD's sign ambiguity, as tfidf_svd does
    return l2_normalise(x * np.where(signs == 0, 1, signs)).astype(np.float32)


def load_vectors(path: str | Path, num_items: int) -> np.ndarray:
    """User-supplied vectors: a .npy of shape (N, d), row i = item index i (catalog order)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"vectors file {path} does not exist (--sid.vectors)")
    if not path.is_file():
        raise ValueError(f"--sid.vectors={path} is a directory: pass a .npy file of shape (N items, d)")
    try:
        x = np.load(path, allow_pickle=False)  # never unpickle: a .npy of numbers only
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"vectors file {path} is not a readable .npy array of numbers ({str(e)[:100]}); "
                         f"save it with numpy.save(path, array)") from None
    if not isinstance(x, np.ndarray):
        raise ValueError(f"vectors file {path} holds several arrays (.npz?): save one (N, d) array with numpy.save")
    if x.ndim != 2:
        raise ValueError(f"vectors in {path} must be a 2-D array (N items, d), got shape {x.shape}")
    if x.shape[0] != num_items:
        raise ValueError(f"vectors in {path} have {x.shape[0]} rows but the catalog has {num_items} items; "
                         f"row i must be the vector of item index i (the dataset's item order)")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"vectors in {path} must be numeric, got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"vectors in {path} have shape {x.shape}: each item needs a vector of at least one number")
    if np.iscomplexobj(x):
        raise ValueError(f"vectors in {path} are complex numbers; save real-valued vectors")
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        raise ValueError(f"vectors in {path} contain NaN/inf in {int(bad.sum())} rows "
                         f"(first: row {int(bad.argmax())}); fix or drop those items")
    zero = ~x.any(axis=1)
    if zero.all():
        raise ValueError(f"vectors in {path} are all zero: they cannot tell items apart; check how the file was made")
    if zero.any():
        from minisapo.files import warn

        warn(f"{int(zero.sum())} of {len(x)} rows in {path} are all zero (first: row {int(zero.argmax())}); "
             f"those items cannot be told apart and will share codes")
    return x.astype(np.float32)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n == 0, 1.0, n)
