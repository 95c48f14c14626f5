"""RecBole atomic files: read and write `.inter` / `.item`, and `--source=atomic`.

Format (https://recbole.io/docs/user_guide/data/atomic_files.html): a tab-separated text
file whose header names each column as `name:type`, type in {token, token_seq, float,
float_seq}; `token_seq` values are space-separated. Example (`ml-100k.inter`):

    user_id:token   item_id:token   rating:float   timestamp:float
    196             242             3              881250949

Every processed minisapo dataset is written in this format, so RecBole and other tools can
read it, and `--source=atomic --path=DIR` reads any such dataset (e.g. RecBole's bundled
MovieLens-100k) back into minisapo.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from minisapo.data.filters import Interaction
from minisapo.files import atomic_write

INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]


@dataclass
class RawData:
    """What a source hands to `prepare` before filtering and splitting."""

    interactions: list[Interaction]  # (user_id, item_id, rating, timestamp s), in file order
    item_fields: list[tuple[str, str]]  # `.item` columns after item_id; the first is the title
    items: dict[str, list[str]]  # item_id -> one text value per item_fields entry
    text_fields: list[str]  # which item_fields make up `item_text` (what SIDs embed)
    info: dict = field(default_factory=dict)  # source facts for dataset.json (release, bad lines...)
    apply_filters: bool = True  # synthetic data: False (no window/dedupe/k-core; full catalog)


def clean_field(text: str) -> str:
    """One line, no tabs: atomic files are tab-separated and line-based."""
    return re.sub(r"\s+", " ", repair_text(str(text))).strip()


# Input files are decoded with errors="surrogateescape": a byte that is not UTF-8 becomes one lone
# surrogate character that remembers the byte, so two ids that differ only in such bytes stay distinct
# (errors="replace" would turn both into U+FFFD and merge them). An id holding one is dropped and
# counted; in text it is replaced by U+FFFD (and counted) before anything is written.
ENCODING = dict(encoding="utf-8", errors="surrogateescape")


def undecodable(text: str) -> bool:
    """True when `text` holds bytes that were not valid UTF-8 (read with surrogateescape)."""
    return any("\udc80" <= c <= "\udcff" for c in text)


def repair_text(text: str) -> str:
    """Undecodable bytes -> U+FFFD (so the text can be written as UTF-8)."""
    if not undecodable(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def fmt_float(x: float) -> str:
    """Shortest exact text for a float; integers without '.0' (so files diff nicely)."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def write_atomic(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write one atomic file (tmp file + rename, so a crash never leaves half a file)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write("\t".join(header) + "\n")
            for row in rows:
                f.write("\t".join(clean_field(v) for v in row) + "\n")

    atomic_write(path, write)


class BadLines:
    """Counts malformed input lines (dropped) and repaired ones (kept, with a field fixed or emptied);
    in strict mode the first of either is an error (file + line)."""

    def __init__(self, path: Path | str, strict: bool):
        self.path, self.strict, self.lines, self.repaired = str(path), strict, [], []
        self.reasons: dict[str, int] = {}  # why -> how many lines (dropped or repaired)

    def add(self, lineno: int, why: str) -> None:
        if self.strict:
            raise ValueError(f"{self.path}:{lineno}: {why} (strict mode; pass --strict=false to skip bad lines)")
        self.lines.append(lineno)
        self._count(why)

    def repair(self, lineno: int, why: str) -> None:
        """A line that is kept with something fixed (e.g. undecodable bytes replaced, a wrongly typed field emptied)."""
        if self.strict:
            raise ValueError(f"{self.path}:{lineno}: {why} (strict mode; pass --strict=false to repair and count such lines)")
        self.repaired.append(lineno)
        self._count(why)

    def _count(self, why: str) -> None:
        key = re.sub(r"(?<![\w-])\d+", "#", why)[:120]  # group by the reason (line/column numbers left out)
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def summary(self) -> str | None:
        """e.g. 'skipped 3 malformed line(s) in X (lines 4, 9, 12)'; None when there were none."""
        parts = []
        for what, lines in (("skipped", self.lines), ("repaired", self.repaired)):
            if lines:
                first = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
                parts.append(f"{what} {len(lines)} {'malformed' if what == 'skipped' else ''} line(s) in {self.path} "
                             f"(lines {first})".replace("  ", " "))
        if not parts:
            return None
        why = "; ".join(f"{n} x {k}" for k, n in sorted(self.reasons.items(), key=lambda kv: -kv[1])[:4])
        return f"{', '.join(parts)} [{why}]; --strict=true makes this an error"


def read_atomic(path: Path, strict: bool = False) -> tuple[list[tuple[str, str]], list[list[str]], list[int], BadLines]:
    """Read an atomic file -> ([(name, type), ...], rows of strings, their line numbers, bad-line counter)."""
    bad = BadLines(path, strict)
    if Path(path).is_dir():
        raise ValueError(f"{path} is a directory, but a RecBole atomic file is expected there")
    with open(path, **ENCODING) as f:
        header = f.readline().rstrip("\r\n").split("\t")
        fields = []
        for h in header:
            name, _, typ = h.partition(":")
            if typ not in ("token", "token_seq", "float", "float_seq"):
                raise ValueError(f"{path}:1: header column {h!r} is not 'name:type' with type token|token_seq|float|float_seq")
            fields.append((name, typ))
        rows, linenos = [], []
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            row = line.split("\t")
            if len(row) != len(fields):
                bad.add(lineno, f"{len(row)} columns, header has {len(fields)}")
                continue
            rows.append(row)
            linenos.append(lineno)
    return fields, rows, linenos, bad


def read_source(path: str | None, strict: bool = False) -> RawData:
    """`--source=atomic --path=DIR`: any RecBole atomic dataset (`.inter` + optional `.item`).

    Columns used: `user_id`, `item_id`, optional `rating` (default 1) and `timestamp`
    (default: line order). Title = the first `token_seq` column of `.item` (ml-100k:
    `movie_title`), falling back to the item id; item text = all text columns.
    """
    if not path:
        raise ValueError("--source=atomic needs --path=DIR (a folder holding <name>.inter and optionally <name>.item)")
    p = Path(path)
    if p.is_file() and p.suffix != ".inter":
        raise ValueError(f"--path={path} is a file but not a .inter file: pass the folder holding <name>.inter")
    if p.is_file() and p.suffix == ".inter":
        inter = p
    elif p.is_dir():
        inter = p / f"{p.name}.inter"
        if not inter.exists():
            found = sorted(p.glob("*.inter"))
            if len(found) != 1:
                raise FileNotFoundError(f"expected {inter} (RecBole atomic file, header like 'user_id:token\\titem_id:token...')"
                                        + (f"; found several: {[f.name for f in found]}" if found else ""))
            inter = found[0]
    else:
        raise FileNotFoundError(f"--path={path} does not exist; expected a folder with <name>.inter (and <name>.item)")

    fields, rows, linenos, bad = read_atomic(inter, strict)
    names = [n for n, _ in fields]
    for need in ("user_id", "item_id"):
        if need not in names:
            raise ValueError(f"{inter}: no '{need}' column in header {names}")
    cu, ci = names.index("user_id"), names.index("item_id")
    cr = names.index("rating") if "rating" in names else None
    ct = names.index("timestamp") if "timestamp" in names else None
    inters: list[Interaction] = []
    for n, (row, lineno) in enumerate(zip(rows, linenos)):
        try:
            r = float(row[cr]) if cr is not None else 1.0
            t = float(row[ct]) if ct is not None else float(n)
        except ValueError:
            bad.add(lineno, "rating/timestamp is not a number")
            continue
        if not (math.isfinite(r) and math.isfinite(t)):
            bad.add(lineno, "rating/timestamp is NaN or infinite")
            continue
        if undecodable(row[cu]) or undecodable(row[ci]):
            bad.add(lineno, "user/item id is not valid UTF-8")
            continue
        if not row[cu].strip() or not row[ci].strip():
            bad.add(lineno, "empty user/item id")
            continue
        inters.append((row[cu], row[ci], r, t))
    info = {"inter_file": str(inter), "bad_lines": len(bad.lines), "bad_line_reasons": bad.reasons}
    notes = [bad.summary()]

    item_file = inter.with_suffix(".item")
    item_fields, items = [("title", "token_seq")], {}
    if item_file.exists():
        ifields, irows, ilines, ibad = read_atomic(item_file, strict)
        inames = [n for n, _ in ifields]
        if "item_id" not in inames:
            raise ValueError(f"{item_file}: no 'item_id' column in header {inames}")
        cid = inames.index("item_id")
        text_cols = [c for c, (n, t) in enumerate(ifields) if c != cid and t in ("token", "token_seq")]
        seq_cols = [c for c in text_cols if ifields[c][1] == "token_seq"]
        title_col = seq_cols[0] if seq_cols else None
        cols = ([title_col] if title_col is not None else []) + [c for c in text_cols if c != title_col]
        item_fields = [("title", "token_seq")] + [(ifields[c][0], "token_seq") for c in cols if c != title_col]
        first_line: dict[str, int] = {}
        for row, lineno in zip(irows, ilines):
            iid = row[cid]
            if undecodable(iid) or not iid.strip():
                ibad.add(lineno, "item id is empty or not valid UTF-8")
                continue
            if iid in first_line:  # the first row of an id wins; later ones are dropped and counted
                ibad.add(lineno, f"duplicate item id (first at line {first_line[iid]})")
                continue
            first_line[iid] = lineno
            vals = [row[c] for c in cols]
            if any(undecodable(v) for v in vals):
                ibad.repair(lineno, "text that is not valid UTF-8 (replaced by U+FFFD)")
                vals = [repair_text(v) for v in vals]
            items[iid] = vals if title_col is not None else [""] + vals
        info["item_file"] = str(item_file)
        info["bad_item_lines"] = len(ibad.lines)
        info["repaired_item_lines"] = len(ibad.repaired)
        notes.append(ibad.summary())
    info["notes"] = [s for s in notes if s]
    for s in info["notes"]:
        print(s)
    return RawData(inters, item_fields, items, [n for n, _ in item_fields], info)
