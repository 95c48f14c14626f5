"""The SID table: item index <-> semantic ID codes, both ways.

An item's semantic ID (SID) is K code indices, one per level, written as tokens
``<a_3><b_1><c_7>`` (level l uses the letter ``"abcdefgh"[l]``). When several items
share all K codes (a *collision*), every one of them gets an extra dedup token
``<d_0>, <d_1>, ...`` in item-index order (TIGER style); items that do not collide
get none. So no complete SID is a proper prefix of another one: every SID is a leaf
of the prefix trie.

With ``dedup="none"`` collisions are kept: several items share one SID,
``table.items(tokens)`` lists all of them and ``table.item(tokens)`` returns the
first. Evaluation then counts a hit on a shared SID as a hit for every item
sharing it (the paper's released SIDs keep collisions, too).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from minisapo.files import write_json
from minisapo.tokenizer import LETTERS, code_token, parse_token


TABLE_FILE = "sid_table.json"  # item_id -> list of code strings
META_FILE = "sid_meta.json"  # num_levels, codebook sizes, dedup size
DESCRIPTORS_FILE = "sid_descriptors.json"  # prefix key -> distinctive words


def prefix_key(codes: Sequence[int]) -> str:
    """Descriptor key of a code prefix: ``(3, 1) -> "<a_3><b_1>"``."""
    return "".join(code_token(l, c) for l, c in enumerate(codes))


def dedup_codes(codes: np.ndarray) -> np.ndarray:
    """Dedup index per item: -1 for items with a unique SID; for each group of
    items sharing all K codes, 0, 1, 2, ... in item-index order.

    codes: (N, K) int -> (N,) int64
    """
    codes = np.asarray(codes)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    dedup = np.full(len(codes), -1, dtype=np.int64)
    seen: dict[int, int] = defaultdict(int)
    for i, g in enumerate(inverse):  # item-index order
        if counts[g] > 1:
            dedup[i] = seen[g]
            seen[g] += 1
    return dedup


class SIDTable:
    """Item index <-> SID codes.

    Attributes:
        num_levels: K, the number of semantic levels.
        codes: (N, K) int64, code of item i at level l.
        dedup: (N,) int64, dedup index (-1 = no dedup token).
        codebook_sizes: K ints, codebook size per level (the vocabulary has one
            token per code, used or not).
        dedup_size: number of dedup tokens needed (max dedup index + 1, 0 if none).
        descriptors: prefix key ("<a_3>", "<a_3><b_1>", ...) -> a few distinctive words.
        item_ids: external item ids (for I/O only), or None -> "0", "1", ...
    """

    def __init__(self, codes: np.ndarray, dedup: np.ndarray, codebook_sizes: Sequence[int],
                 descriptors: dict[str, str] | None = None, item_ids: Sequence[str] | None = None):
        codes = np.asarray(codes, dtype=np.int64)
        dedup = np.asarray(dedup, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] < 1:
            raise ValueError(f"codes must be (N, K) with K >= 1, got shape {codes.shape}")
        if codes.shape[1] >= len(LETTERS):
            raise ValueError(f"at most {len(LETTERS) - 1} levels are supported, got {codes.shape[1]}")
        if dedup.shape != (codes.shape[0],):
            raise ValueError(f"dedup must be (N,) = ({codes.shape[0]},), got {dedup.shape}")
        self.num_levels = int(codes.shape[1])
        self.codes = codes
        self.dedup = dedup
        self.codebook_sizes = [int(s) for s in codebook_sizes]
        if len(self.codebook_sizes) != self.num_levels:
            raise ValueError(f"need {self.num_levels} codebook sizes, got {self.codebook_sizes}")
        if len(codes) and (codes.min() < 0 or (codes.max(0) >= np.array(self.codebook_sizes)).any()):
            raise ValueError("codes out of range of codebook_sizes")
        self.dedup_size = int(dedup.max()) + 1 if len(dedup) and dedup.max() >= 0 else 0
        self.descriptors: dict[str, str] = dict(descriptors or {})
        self.item_ids = list(item_ids) if item_ids is not None else None
        if self.item_ids is not None and len(self.item_ids) != len(codes):
            raise ValueError(f"{len(self.item_ids)} item ids for {len(codes)} items")
        # full SID (tuple of token strings) -> items sharing it, in item order
        self._lookup: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i in range(len(codes)):
            self._lookup[tuple(self.tokens(i))].append(i)
        self._lookup = dict(self._lookup)
        # every SID must be a trie leaf: the grammar ends a SID where the trie has no children, so an
        # item whose K codes are also the prefix of a deduplicated SID could never be generated
        plain = {tuple(codes[i]) for i in range(len(codes)) if dedup[i] < 0}
        mixed = sorted(c for c in {tuple(codes[i]) for i in range(len(codes)) if dedup[i] >= 0} if c in plain)
        if mixed:
            raise ValueError(f"SID {prefix_key(mixed[0])} is used both with and without a dedup token "
                             f"({len(mixed)} such code tuples): give every item sharing those codes a dedup "
                             "token, or none of them (rebuild with `minisapo sid`)")

    # ----------------------------------------------------------------- building
    @classmethod
    def from_codes(cls, codes: np.ndarray, dedup: np.ndarray | None = None,
                   descriptors: dict[str, str] | None = None,
                   codebook_sizes: Sequence[int] | None = None,
                   item_ids: Sequence[str] | None = None) -> "SIDTable":
        """Table from raw codes (N, K). ``dedup=None`` computes the dedup tokens by
        the convention above (use ``np.full(N, -1)`` to keep collisions).
        ``codebook_sizes=None`` -> max code + 1 per level."""
        codes = np.asarray(codes, dtype=np.int64)
        if dedup is None:
            dedup = dedup_codes(codes)
        if codebook_sizes is None:
            codebook_sizes = (codes.max(0) + 1).tolist() if len(codes) else [1] * codes.shape[1]
        return cls(codes, dedup, codebook_sizes, descriptors, item_ids)

    # ------------------------------------------------------------------ queries
    @property
    def num_items(self) -> int:
        return int(self.codes.shape[0])

    def __len__(self) -> int:
        return self.num_items

    def tokens(self, item: int) -> list[str]:
        """SID token strings of an item, e.g. ["<a_3>", "<b_1>", "<c_7>"] (+ "<d_0>")."""
        toks = [code_token(l, c) for l, c in enumerate(self.codes[item])]
        if self.dedup[item] >= 0:
            toks.append(code_token(self.num_levels, self.dedup[item]))
        return toks

    def items(self, tokens: Sequence[str]) -> list[int]:
        """All items whose complete SID is ``tokens`` ([] if none)."""
        return list(self._lookup.get(tuple(tokens), []))

    def item(self, tokens: Sequence[str]) -> int | None:
        """The (first) item whose complete SID is ``tokens``; None if unknown."""
        hits = self._lookup.get(tuple(tokens))
        return hits[0] if hits else None

    def sids(self) -> list[tuple[str, ...]]:
        """Distinct complete SIDs, in order of first item."""
        return list(self._lookup.keys())

    def all_tokens(self) -> list[str]:
        """Every SID token string of the vocabulary, level by level (all codes of
        every codebook, then the dedup tokens)."""
        out = [code_token(l, c) for l in range(self.num_levels) for c in range(self.codebook_sizes[l])]
        out += [code_token(self.num_levels, d) for d in range(self.dedup_size)]
        return out

    def descriptor(self, codes: Sequence[int]) -> str:
        """Descriptor of a code prefix given as ints ("" if none)."""
        return self.descriptors.get(prefix_key(codes), "")

    # ---------------------------------------------------------------------- I/O
    def save(self, out_dir: str | Path) -> None:
        """Write sid_table.json (item_id -> code strings), sid_meta.json, sid_descriptors.json."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        ids = self.item_ids if self.item_ids is not None else [str(i) for i in range(self.num_items)]
        table = {str(ids[i]): self.tokens(i) for i in range(self.num_items)}
        meta = {"num_levels": self.num_levels, "codebook_sizes": self.codebook_sizes,
                "dedup_size": self.dedup_size, "num_items": self.num_items,
                "has_item_ids": self.item_ids is not None}
        write_json(out_dir / TABLE_FILE, table)
        write_json(out_dir / DESCRIPTORS_FILE, self.descriptors)
        write_json(out_dir / META_FILE, meta)

    @classmethod
    def load(cls, out_dir: str | Path) -> "SIDTable":
        out_dir = Path(out_dir)
        if not (out_dir / TABLE_FILE).exists():
            raise FileNotFoundError(f"no {TABLE_FILE} in {out_dir}; build SIDs first (`minisapo sid`)")
        try:
            return cls._load(out_dir)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError) as e:
            raise ValueError(f"the SID table in {out_dir} is damaged ({type(e).__name__}: {str(e)[:120]}); delete "
                             f"that folder and run the command again to rebuild it") from None

    @classmethod
    def _load(cls, out_dir: Path) -> "SIDTable":
        meta = json.loads((out_dir / META_FILE).read_text())
        table = json.loads((out_dir / TABLE_FILE).read_text())  # key order = item order
        K = meta["num_levels"]
        codes = np.zeros((len(table), K), dtype=np.int64)
        dedup = np.full(len(table), -1, dtype=np.int64)
        for i, (iid, toks) in enumerate(table.items()):
            if len(toks) not in (K, K + 1) or any(parse_token(t) is None for t in toks):
                raise ValueError(f"{out_dir / TABLE_FILE}: bad SID {toks} for item {iid}; rebuild with `minisapo sid`")
            for l, t in enumerate(toks):
                _, c = parse_token(t)
                if l < K:
                    codes[i, l] = c
                else:
                    dedup[i] = c
        desc_path = out_dir / DESCRIPTORS_FILE
        descriptors = json.loads(desc_path.read_text()) if desc_path.exists() else {}
        ids = list(table.keys()) if meta.get("has_item_ids", True) else None
        return cls(codes, dedup, meta["codebook_sizes"], descriptors, ids)

    def __repr__(self) -> str:
        return (f"SIDTable(items={self.num_items}, levels={self.num_levels}, "
                f"codebook_sizes={self.codebook_sizes}, dedup_size={self.dedup_size})")
