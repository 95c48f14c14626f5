"""Prefix trie over SID token ids: which SID tokens may come next.

Built once from a SIDTable and a Tokenizer. Every prefix of every item's SID
(as token ids) is a node; ``next_tokens(prefix)`` returns the sorted ids of its
children. A complete SID has no children (``[]``). A prefix that is not in the
trie raises ``ValueError``: constrained decoding must never silently fall back to
"anything goes".
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable, Sequence


class SIDTrie:
    def __init__(self, table, tokenizer):
        self.num_levels = table.num_levels
        children: dict[tuple[int, ...], set[int]] = defaultdict(set)
        self._leaf: dict[tuple[int, ...], list[int]] = defaultdict(list)  # complete SID -> items
        for item in range(table.num_items):
            ids = tuple(tokenizer.sid_ids(table, item))
            for d in range(len(ids)):
                children[ids[:d]].add(ids[d])
            children.setdefault(ids, set())
            self._leaf[ids].append(item)
        # prefix -> sorted tuple of valid next ids (tuples so callers cannot mutate them)
        self._next: dict[tuple[int, ...], tuple[int, ...]] = {p: tuple(sorted(c)) for p, c in children.items()}
        self._leaf = dict(self._leaf)
        self._sid = {item: sid for sid, items in self._leaf.items() for item in items}  # item -> its complete SID
        self._leaves = Counter(sid[:d] for sid in self._leaf for d in range(len(sid)))  # prefix -> complete SIDs under it
        self.max_depth = max((len(p) for p in self._leaf), default=0)  # K, or K+1 with dedup tokens

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Sorted valid next SID token ids after ``prefix`` (ids of the SID tokens
        generated so far); ``[]`` when ``prefix`` is a complete SID.
        Raises ValueError if no item's SID starts with ``prefix``."""
        key = tuple(int(i) for i in prefix)
        nxt = self._next.get(key)
        if nxt is None:
            raise ValueError(f"impossible SID prefix {list(key)}: no item's SID starts with it")
        return list(nxt)

    def item(self, ids: Sequence[int]) -> int | None:
        """The (first) item whose complete SID is ``ids``; None otherwise."""
        hits = self._leaf.get(tuple(int(i) for i in ids))
        return hits[0] if hits else None

    def items(self, ids: Sequence[int]) -> list[int]:
        """All items sharing the complete SID ``ids`` (several only with dedup="none")."""
        return list(self._leaf.get(tuple(int(i) for i in ids), []))

    def blocked_prefixes(self, items: Iterable[int]) -> set[tuple[int, ...]]:
        """The complete SIDs of `items` and every prefix all of whose complete SIDs are among them: what a
        decoder that must not return `items` never extends (a SID shared by several items is blocked when
        one of them is in `items`)."""
        blocked = {self._sid[int(i)] for i in items}
        under = Counter(sid[:d] for sid in blocked for d in range(len(sid)))
        return blocked | {p for p, n in under.items() if n == self._leaves[p]}

    def __len__(self) -> int:  # number of nodes
        return len(self._next)
