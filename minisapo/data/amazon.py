"""Amazon reviews, read exactly as the three public releases are distributed.

    release  reviews file                          metadata file          item key     time
    2014     reviews_<Cat>_5.json.gz (JSON lines)  meta_<Cat>.json.gz     asin         unixReviewTime (s)
             (meta: one *Python literal* dict per line -> ast.literal_eval, never eval)
    2018     <Cat>.json.gz / <Cat>_5.json.gz       meta_<Cat>.json.gz     asin         unixReviewTime (s)
    2023     <Cat>.jsonl[.gz]                      meta_<Cat>.jsonl[.gz]  parent_asin  timestamp (ms)

Files may be gzipped or not. The release is detected from the file name and first line.
Item text = cleaned title + brand (2023: store) + categories + description/features
(unless `with_description=False`); `html.unescape` and markup stripped. Malformed lines are
counted and summarised (or, with `strict`, an error naming file and line).
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import math
import re
import zlib
from pathlib import Path

from tqdm import tqdm

from minisapo.data.atomic import ENCODING, BadLines, RawData, repair_text, undecodable
from minisapo.data.filters import Interaction

EXPECTED = ("reviews_<Cat>_5.json.gz + meta_<Cat>.json.gz (2014), <Cat>.json.gz or <Cat>_5.json.gz + "
            "meta_<Cat>.json.gz (2018), <Cat>.jsonl[.gz] + meta_<Cat>.jsonl[.gz] (2023); see data/README.md")
_TAG = re.compile(r"<[^>]*>")


def clean_text(text) -> str:
    """HTML entities decoded, tags dropped, whitespace collapsed: 'Tom &amp; <b>Jerry</b>' -> 'Tom & Jerry'."""
    if text is None:
        return ""
    s = repair_text(str(text))
    for _ in range(2):  # some titles are escaped twice: '&amp;amp;'
        s = html.unescape(s)
    return " ".join(_TAG.sub(" ", s).split())


def open_text(path: Path):
    """Open a text file, transparently gunzipping (by magic bytes, not just the name)."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", **ENCODING) if gz else open(path, **ENCODING)


def _unreadable(path: Path, e: BaseException, lineno: int | None = None) -> ValueError:
    """A truncated or corrupt (gzip) file -> a one-line error naming it."""
    where = f" after line {lineno}" if lineno else ""
    return ValueError(f"{path} is truncated or corrupt{where} ({type(e).__name__}: {str(e)[:100]}): "
                      f"download or unpack it again")


def category_of(reviews: str | Path) -> str:
    """'reviews_Beauty_5.json.gz' / 'Beauty_5.json' / 'All_Beauty.jsonl.gz' -> 'Beauty' / 'All_Beauty'."""
    name = Path(reviews).name
    name = re.sub(r"(\.jsonl|\.json)?(\.gz)?$", "", name)
    name = re.sub(r"^reviews_", "", name)
    return re.sub(r"_5$", "", name)


def detect_release(path: Path, first_line: str) -> str:
    """'2014' | '2018' | '2023' from the reviews file's name and first line."""
    name = path.name
    if name.startswith("reviews_"):
        return "2014"
    if ".jsonl" in name or '"parent_asin"' in first_line or '"user_id"' in first_line:
        return "2023"
    if '"helpful"' in first_line and '"verified"' not in first_line:
        return "2014"
    return "2018"


def _first_line(path: Path) -> str:
    try:
        with open_text(path) as f:
            for line in f:
                if line.strip():
                    return line
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _unreadable(path, e) from None
    return ""


def meta_candidates(reviews: Path, release: str) -> list[Path]:
    cat = category_of(reviews)
    ext = [".jsonl.gz", ".jsonl"] if release == "2023" else [".json.gz", ".json"]
    return [reviews.parent / f"meta_{cat}{e}" for e in ext]


def _review(d: dict, release: str) -> Interaction:
    """One review dict -> (user, item, rating, seconds); KeyError/ValueError/TypeError if malformed."""
    if release == "2023":
        u, i, r, t = d["user_id"], d["parent_asin"], d["rating"], float(d["timestamp"]) / 1000.0
    else:
        u, i, r, t = d["reviewerID"], d["asin"], d["overall"], float(d["unixReviewTime"])
    if not (isinstance(u, str) and u and isinstance(i, str) and i):
        raise ValueError("empty or non-string user/item id")
    if undecodable(u) or undecodable(i):
        raise ValueError("user/item id is not valid UTF-8")
    if isinstance(r, bool) or not (math.isfinite(float(r)) and math.isfinite(t)):
        raise ValueError("rating/timestamp is NaN, infinite or not a number")
    return (u, i, float(r), t)


def numbered_lines(path: Path):
    """(line number, line) for every non-blank line of a (gzipped or plain) text file, with a tqdm bar."""
    lineno = 0
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(tqdm(f, desc=f"reading {path.name}", unit=" lines", leave=False,
                                               mininterval=1.0), start=1):
                if line.strip():
                    yield lineno, line
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _unreadable(path, e, lineno) from None


def read_reviews(path: Path, release: str, strict: bool) -> tuple[list[Interaction], BadLines]:
    bad = BadLines(path, strict)
    out: list[Interaction] = []
    for lineno, line in numbered_lines(path):
        try:
            d = json.loads(line)
            out.append(_review(d, release))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
            bad.add(lineno, f"malformed review ({type(e).__name__}: {e})")
    return out, bad


_KEY = {"2014": re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]"""),
        "2018": re.compile(r'"asin"\s*:\s*"([^"]+)"'),
        "2023": re.compile(r'"parent_asin"\s*:\s*"([^"]+)"')}


def _flat(x, wrong: list | None = None, name: str = "categories") -> list[str]:
    """Categories as an ordered, de-duplicated flat list (2014 has a list of lists). A value that is not text
    (a number, a dict, ...) is left out and its field named in `wrong`."""
    out: list[str] = []
    for c in x if isinstance(x, list) else [x] if x else []:
        if not isinstance(c, (str, list)):
            if wrong is not None and name not in wrong:
                wrong.append(name)
            continue
        for s in (_flat(c, wrong, name) if isinstance(c, list) else [clean_text(c)]):
            if s and s not in out:
                out.append(s)
    return out


def _text(v, name: str, wrong: list) -> str:
    """A text field: a string (or a number) -> cleaned text; None -> ''; anything else -> '' and named in `wrong`."""
    if v is None:
        return ""
    if isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return clean_text(v)
    wrong.append(f"{name}: {type(v).__name__}")
    return ""


def _meta_fields(d: dict, release: str, with_description: bool, wrong: list | None = None) -> list[str]:
    """-> [title, brand, categories(, description)] as cleaned strings. Fields of the wrong type (e.g. a list
    where a title belongs) are left empty and named in `wrong`, never turned into text like "['a', 'b']"."""
    wrong = [] if wrong is None else wrong
    title = _text(d.get("title"), "title", wrong)
    brand = _text(d.get("store") if release == "2023" else d.get("brand"), "store" if release == "2023" else "brand", wrong)
    key = "categories" if release != "2018" else "category"
    raw = d.get(key)
    if raw is not None and not isinstance(raw, (list, str)):
        wrong.append(f"{key}: {type(raw).__name__}")
        raw = None
    cats = ", ".join(_flat(raw, wrong, key))
    vals = [title, brand, cats]
    if with_description:
        parts = []
        for key in (("description",) if release == "2014" else ("description", "feature", "features")):
            v = d.get(key)
            for s in (v if isinstance(v, list) else [v]):
                if s:
                    parts.append(_text(s, key, wrong))
        vals.append(" ".join(p for p in parts if p))
    return vals


def read_meta(path: Path, release: str, wanted: set[str], strict: bool, with_description: bool
              ) -> tuple[dict[str, list[str]], BadLines]:
    """item id -> text fields, for the `wanted` items only (the first entry wins on duplicates)."""
    bad = BadLines(path, strict)
    key_re, key = _KEY[release], "parent_asin" if release == "2023" else "asin"
    items: dict[str, list[str]] = {}
    for lineno, line in numbered_lines(path):
        m = key_re.search(line)
        if m and (m.group(1) not in wanted or m.group(1) in items):
            continue  # fast path: an item we do not need (real meta files are large)
        try:
            if release == "2014":
                d = ast.literal_eval(line)  # a Python literal, not JSON; literal_eval never runs code
            else:
                d = json.loads(line)
            if not isinstance(d, dict) or not isinstance(d.get(key), str):
                raise ValueError(f"no '{key}' string field")
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, json.JSONDecodeError) as e:
            bad.add(lineno, f"malformed metadata ({type(e).__name__}: {e})")
            continue
        if d[key] in wanted and d[key] not in items:
            wrong: list[str] = []
            items[d[key]] = _meta_fields(d, release, with_description, wrong)
            if wrong:
                bad.repair(lineno, f"wrongly typed field(s) left empty ({', '.join(wrong)})")
            elif undecodable(line):
                bad.repair(lineno, "text that is not valid UTF-8 (replaced by U+FFFD)")
    return items, bad


def read_amazon(reviews: str | None, meta: str | None = None, strict: bool = False,
                with_description: bool = True) -> RawData:
    """Read one category of any release into `RawData` (no filtering yet)."""
    if not reviews:
        raise ValueError(f"--source=amazon needs --reviews=FILE; expected files: {EXPECTED}")
    rpath = Path(reviews)
    if rpath.is_dir():
        raise ValueError(f"--reviews={rpath} is a directory: pass the reviews file itself; expected one of: {EXPECTED}")
    if not rpath.is_file():
        raise FileNotFoundError(f"reviews file {rpath} not found; expected one of: {EXPECTED}")
    release = detect_release(rpath, _first_line(rpath))
    if meta:
        mpath = Path(meta)
        if mpath.is_dir():
            raise ValueError(f"--meta={mpath} is a directory: pass the metadata file itself")
        if not mpath.is_file():
            raise FileNotFoundError(f"metadata file {mpath} not found; expected meta_<Cat>"
                                    f"{'.jsonl[.gz]' if release == '2023' else '.json.gz'} ({release} release)")
    else:
        cands = meta_candidates(rpath, release)
        found = [c for c in cands if c.is_file()]
        if not found:
            raise FileNotFoundError(f"no metadata file for {rpath.name} ({release} release): expected "
                                    f"{' or '.join(str(c) for c in cands)}, or pass --meta=FILE")
        mpath = found[0]
    print(f"amazon {release} release: reviews {rpath}, metadata {mpath}")

    inters, rbad = read_reviews(rpath, release, strict)
    items, mbad = read_meta(mpath, release, {x[1] for x in inters}, strict, with_description)
    fields = [("title", "token_seq"), ("brand", "token_seq"), ("categories", "token_seq")]
    if with_description:
        fields.append(("description", "token_seq"))
    notes = [s for s in (rbad.summary(), mbad.summary()) if s]
    for s in notes:
        print(s)
    info = {"source": "amazon", "release": release, "reviews_file": str(rpath), "meta_file": str(mpath),
            "bad_review_lines": len(rbad.lines), "bad_meta_lines": len(mbad.lines),
            "repaired_meta_lines": len(mbad.repaired), "bad_line_reasons": {**rbad.reasons, **mbad.reasons},
            "bad_review_line_numbers": rbad.lines[:20], "bad_meta_line_numbers": mbad.lines[:20], "notes": notes}
    if not inters:
        raise ValueError(f"no valid reviews in {rpath} ({len(rbad.lines)} malformed lines): is this an Amazon "
                         f"reviews file? expected: {EXPECTED}")
    return RawData(inters, fields, items, [f for f, _ in fields], info)
