"""Item vectors: built-in TF-IDF + truncated SVD (no model download), or a user .npy.

TF-IDF (sublinear tf, smoothed idf, rows L2-normalised) over the words of each
item's text, then a truncated SVD (exact via the V x V Gram matrix for small vocabularies,
else ``torch.svd_lowrank`` on the sparse matrix, so a large vocabulary never
becomes a dense N x V matrix) keeps ``dim`` directions:
latent semantic analysis. Rows are L2-normalised so k-means compares directions.
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


def words(text: str) -> list[str]:
    """Lowercased word tokens (letters/digits/underscore runs)."""
    return _WORD.findall(text.lower())


def tfidf_svd(texts: Sequence[str], dim: int = 64, seed: int = 0, min_df: int = 1) -> np.ndarray:
    """TF-IDF + truncated SVD. texts: N strings -> (N, dim') float32, L2-normalised rows,
    dim' = min(dim, N, V) (fewer directions than asked when the data is tiny)."""
    docs = [Counter(words(t)) for t in texts]
    df = Counter(w for d in docs for w in d)
    vocab = {w: j for j, w in enumerate(sorted(w for w, c in df.items() if c >= min_df))}
    n, v = len(docs), len(vocab)
    if n == 0 or v == 0:
        raise ValueError("item texts are empty: nothing to embed (check the dataset's item_text)")
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
    a = torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.from_numpy(vals), (n, v),
                                check_invariants=False).coalesce()  # (N, V)
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
        from minisapo.runs import warn

        warn(f"{int(zero.sum())} of {len(x)} rows in {path} are all zero (first: row {int(zero.argmax())}); "
             f"those items cannot be told apart and will share codes")
    return x.astype(np.float32)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n == 0, 1.0, n)
