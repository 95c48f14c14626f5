"""Descriptors: a few human-readable words for every SID code prefix.

For a prefix node n (e.g. ``<a_3><b_1>``) and each title word w, compare the
fraction of n's items whose title contains w with the same fraction over n's
*siblings* (the other children of n's parent, e.g. ``<a_3><b_0>``, ``<a_3><b_2>``):

    score(w) = (df_n(w) + 0.5) / (|n| + 1) - (df_sib(w) + 0.5) / (|sib| + 1)

The top ``num_words`` words with a positive score describe n. Words every
sibling shares (the parent's theme) cancel out, so each level adds new detail.
A node without siblings is compared with the rest of the catalog.

Only words that carry meaning compete (``embed.descriptor_words``: no stopwords such as
"the"/"and"/"of", no single letters or bare numbers; years and decades stay). A descriptor is
never empty: a node where no word scores above zero takes its most frequent word, and a node
whose items have no usable word at all takes FALLBACK.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence

import numpy as np

from minisapo.sid.embed import descriptor_words
from minisapo.sid.table import prefix_key

FALLBACK = "misc"  # descriptor of a node whose items have no usable word


def build_descriptors(codes: np.ndarray, titles: Sequence[str], num_words: int = 2) -> dict[str, str]:
    """codes: (N, K) semantic codes; titles: N item texts -> {prefix key: "word word"} (never empty)."""
    codes = np.asarray(codes)
    n_items, K = codes.shape
    item_words = [set(descriptor_words(t)) for t in titles]
    total = Counter(w for ws in item_words for w in ws)
    out: dict[str, str] = {}
    for depth in range(1, K + 1):
        # document frequency and size of every node at this depth, grouped by parent
        df: dict[tuple, Counter] = defaultdict(Counter)
        size: Counter = Counter()
        for i in range(n_items):
            node = tuple(int(c) for c in codes[i, :depth])
            df[node].update(item_words[i])
            size[node] += 1
        children: dict[tuple, list[tuple]] = defaultdict(list)
        for node in df:
            children[node[:-1]].append(node)
        for parent, kids in children.items():
            par_df = sum((df[k] for k in kids), Counter())
            par_size = sum(size[k] for k in kids)
            for node in kids:
                if len(kids) > 1:
                    sib_df, sib_size = par_df - df[node], par_size - size[node]
                else:  # only child: contrast with the whole catalog
                    sib_df, sib_size = total - df[node], n_items - size[node]
                a, b = size[node] + 1.0, sib_size + 1.0
                scored = [((df[node][w] + 0.5) / a - (sib_df[w] + 0.5) / b, w) for w in df[node]]
                best = sorted((s for s in scored if s[0] > 0), key=lambda t: (-t[0], t[1]))[:num_words]
                if not best and df[node]:  # nothing stands out: the node's most frequent word
                    best = [min(((-n, w) for w, n in df[node].items()))]
                out[prefix_key(node)] = " ".join(w for _, w in best) or FALLBACK
    return out
