"""The processed dataset: chronological user sequences, split samples, and its files on disk.

`<data_dir>/processed/<name>/` holds
    <name>.inter    user_id:token item_id:token rating:float timestamp:float
                    (grouped by user, users sorted by id, each user's rows in time order)
    <name>.item     item_id:token title:token_seq ... (one row per item; row order = item index)
    dataset.json    sizes, split sample counts, the settings used (the cache key) and source facts

Split samples are not stored: `load` recomputes them from the sequences, deterministically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minisapo.data.atomic import INTER_HEADER, RawData, fmt_float, read_atomic, write_atomic
from minisapo.data.filters import chronological, dedupe, kcore, time_window


class Sample(NamedTuple):
    """One next-item prediction: `history` (chronological, most recent last, >= 1 item) -> `target`."""

    user: int
    history: tuple[int, ...]
    target: int
    pos: int = -1  # the target's index in the user's sequence (-1: unknown)


@dataclass
class Dataset:
    name: str
    item_ids: list[str]  # external item id per item index
    item_titles: list[str]  # cleaned title per item
    item_text: list[str]  # what SIDs embed: title + brand + categories (+ description)
    item_categories: list[str] | None  # synthetic: latent taxonomy path "n3 n3.1 n3.1.4"; else None
    num_users: int
    sequences: list[list[int]]  # per user index: item indices in time order
    splits: dict[str, list[Sample]]  # "train" / "valid" / "test"
    info: dict  # the content of dataset.json
    path: Path  # the processed folder
    user_ids: list[str] = field(default_factory=list)  # external user id per user index
    timestamps: list[list[float]] = field(default_factory=list)  # per user, aligned with sequences
    item_fields: dict[str, list[str]] = field(default_factory=dict)  # text field name -> value per item
    #   (the fields item_text joins: title, genres, year, brand, categories, ...; SIDs embed each on its own)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def train_user_items(self) -> list[set[int]]:
        """Per user, the items of their training interactions (train targets and the histories before them)."""
        users: list[set[int]] = [set() for _ in range(self.num_users)]
        for s in self.splits["train"]:
            users[s.user].update(s.history)
            users[s.user].add(s.target)
        return users

    def item_popularity(self) -> np.ndarray:
        """(N,) how often each item occurs in the training interactions (popularity baseline).

        In both splits a user's train samples are the positions 1..m of their sequence, so
        the train interactions are the train targets plus each such user's first item.
        """
        counts = np.zeros(self.num_items, dtype=np.int64)
        first_seen: set[int] = set()
        for s in self.splits["train"]:
            counts[s.target] += 1
            if s.user not in first_seen:
                first_seen.add(s.user)
                counts[self.sequences[s.user][0]] += 1
        return counts


def user_subset(num_users: int, fraction: float, seed: int) -> set[int]:
    """A fixed random `fraction` of the user indices (at least one user), drawn with `seed`.

    `sft.user_fraction` uses it: SFT trains on these users' samples, RL draws its prompts from the others
    (the regime where reasoning traces are costly and outcome labels are not)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"user fraction must be in (0, 1], got {fraction}")
    order = np.random.default_rng(seed).permutation(num_users)
    return set(order[: max(1, round(fraction * num_users))].tolist())


def make_splits(sequences: list[list[int]], timestamps: list[list[float]], split: str,
                max_history: int) -> dict[str, list[Sample]]:
    """Turn sequences into (user, history, target) samples.

    loo       leave-one-out (TIGER/SASRec): per user the last item is test, the second
              last valid, every earlier position >= 1 a train target.
    temporal  global chronological 8:1:1 over all samples (MiniOneRec): samples sorted by
              (target time, user index, position) - a stable tie-break - then cut.
    The history is the at most `max_history` items right before the target, so a target
    never appears as its own interaction in its history.
    """
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")

    def sample(u: int, pos: int) -> Sample:
        seq = sequences[u]
        return Sample(u, tuple(seq[max(0, pos - max_history):pos]), seq[pos], pos)

    splits: dict[str, list[Sample]] = {"train": [], "valid": [], "test": []}
    if split == "loo":
        for u, seq in enumerate(sequences):
            L = len(seq)
            for pos in range(1, L):
                part = "test" if pos == L - 1 else "valid" if pos == L - 2 else "train"
                splits[part].append(sample(u, pos))
    elif split == "temporal":
        keys = [(timestamps[u][pos], u, pos) for u, seq in enumerate(sequences) for pos in range(1, len(seq))]
        keys.sort()
        n = len(keys)
        n_train, n_valid = int(0.8 * n), int(0.9 * n) - int(0.8 * n)
        for r, (_, u, pos) in enumerate(keys):
            part = "train" if r < n_train else "valid" if r < n_train + n_valid else "test"
            splits[part].append(sample(u, pos))
    else:
        raise ValueError(f"unknown split {split!r}: use --split=loo or --split=temporal")
    return splits


def write_processed(raw: RawData, out: Path, name: str, *, kcore_k: int, start: str | None, end: str | None,
                    split: str, max_history: int, settings: dict) -> dict:
    """Filter `raw` (window -> dedupe -> k-core), write the atomic files and dataset.json."""
    inters = raw.interactions
    counts = {"read": len(inters)}
    if not inters:
        raise ValueError(f"no valid interactions were read ({raw.info.get('notes') or 'input is empty'})")
    if raw.apply_filters:
        if start or end:
            inters = time_window(inters, start, end)
            counts["after_window"] = len(inters)
            if not inters:
                t = [x[3] for x in raw.interactions]
                span = f"{_date(min(t))} .. {_date(max(t))}"
                raise ValueError(f"the time window start={start} end={end} removed all interactions; "
                                 f"the data spans {span} (UTC): widen --start/--end")
        inters = dedupe(inters)
        counts["after_dedupe"] = len(inters)
        inters = kcore(inters, kcore_k)
        counts["after_kcore"] = len(inters)
        if not inters:
            raise ValueError(f"the {kcore_k}-core filter removed all {counts['after_dedupe']} interactions: "
                             f"lower --kcore (e.g. --kcore=2) or use more data")
    by_user = chronological(inters)

    # items: every catalog item for synthetic data, else those that survived the filters
    used = {x[1] for x in inters}
    item_ids = sorted(raw.items) if not raw.apply_filters else sorted(used)
    index = {iid: n for n, iid in enumerate(item_ids)}
    no_text, rows = [], []
    width = len(raw.item_fields)
    for iid in item_ids:
        vals = [_one_line(v) for v in raw.items.get(iid, [""] * width)]
        if not any(vals[raw.item_fields.index((f, t))] for f, t in raw.item_fields if f in raw.text_fields):
            no_text.append(iid)
        if not vals[0]:
            vals[0] = iid  # no title: the id stands in, so every item has some text
        rows.append([iid] + vals)
    if no_text:
        msg = (f"{len(no_text)} item(s) have no usable text (no title/brand/categories), their id is used as "
               f"title: {', '.join(no_text[:5])}{', ...' if len(no_text) > 5 else ''}")
        print(msg)
        raw.info.setdefault("notes", []).append(msg)

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / f"{name}.item", ["item_id:token"] + [f"{f}:{t}" for f, t in raw.item_fields], rows)
    inter_rows = [[u, i, fmt_float(r), fmt_float(t)] for u, xs in by_user.items() for (u, i, r, t) in xs]
    write_atomic(out / f"{name}.inter", INTER_HEADER, inter_rows)

    sequences = [[index[x[1]] for x in xs] for xs in by_user.values()]
    timestamps = [[x[3] for x in xs] for xs in by_user.values()]
    splits = make_splits(sequences, timestamps, split, max_history)
    info = {
        "name": name,
        "num_users": len(by_user),
        "num_items": len(item_ids),
        "num_interactions": len(inters),
        "splits": {k: len(v) for k, v in splits.items()},
        "counts": counts,
        "items_without_text": len(no_text),
        "text_fields": raw.text_fields,
        "settings": settings,
        **raw.info,
    }
    (out / "dataset.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return info


def load(data_dir: str | Path, name: str) -> Dataset:
    """Read `<data_dir>/processed/<name>/` back into a `Dataset` (splits recomputed)."""
    path = Path(data_dir) / "processed" / name
    if not (path / "dataset.json").exists():
        raise FileNotFoundError(
            f"no processed dataset at {path}. Make it with e.g.\n"
            f"  minisapo data --source=synthetic --world=default --name={name} --data_dir={data_dir}\n"
            f"or --source=amazon --reviews=FILE / --source=atomic --path=DIR (see data/README.md)")
    try:
        info, item_ids, titles, text, cats, users, sequences, timestamps, splits, fields = _read_processed(path, name)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ValueError(f"processed dataset {path} is damaged ({type(e).__name__}: {str(e)[:120]}); delete that "
                         f"folder and run the command again to rebuild it") from None
    return Dataset(name, item_ids, titles, text, cats, len(users), sequences, splits, info, path,
                   list(users), timestamps, fields)


def _read_processed(path: Path, name: str):
    """The files of a processed dataset, read back (every error here means the folder is damaged)."""
    info = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
    ifields, irows, _, _ = read_atomic(path / f"{name}.item", strict=True)
    names = [f for f, _ in ifields]
    text_cols = [names.index(f) for f in info["text_fields"]]
    item_ids = [r[0] for r in irows]
    titles = [r[names.index("title")] for r in irows]
    text = [" ".join(r[c] for c in text_cols if r[c]) or r[0] for r in irows]
    cats = [r[names.index("category")] for r in irows] if "category" in names else None
    index = {iid: n for n, iid in enumerate(item_ids)}

    _, rows, _, _ = read_atomic(path / f"{name}.inter", strict=True)
    users: dict[str, int] = {}
    sequences: list[list[int]] = []
    timestamps: list[list[float]] = []
    for u, i, _, t in rows:  # grouped by user, chronological: see write_processed
        if u not in users:
            users[u] = len(users)
            sequences.append([])
            timestamps.append([])
        sequences[users[u]].append(index[i])
        timestamps[users[u]].append(float(t))
    s = info["settings"]
    splits = make_splits(sequences, timestamps, s["split"], s["max_history"])
    fields = {f: [r[c] for r in irows] for f, c in zip(info["text_fields"], text_cols)}
    return info, item_ids, titles, text, cats, users, sequences, timestamps, splits, fields


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _date(t: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d")
