"""External reasoning traces: files in, thinking blocks out (the paper writes them with an LLM).

    write_trace_requests(path, dataset, table, samples)   one JSON line per sample: what an LLM needs
    load_traces(path, tokenizer, K, ...) -> (Traces, TraceReport)
        {"user": 3, "target": 17, "history_len": 5, "steps": ["...", "...", "..."]}   K segments, or
        {"user": 3, "target": 17, "history_len": 5, "reasoning": "One. Two. Three."}  split on sentences
    Traces.find(sample)   the blocks of a sample, given to reasoning.build_examples(..., traces=...)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from minisapo.files import atomic_write
from minisapo.reasoning import words_text


def sample_key(sample) -> tuple[int, int, int]:
    """How a trace row finds its sample: (user, len(history), target)."""
    return int(sample.user), len(sample.history), int(sample.target)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_reasoning(text: str, num_steps: int) -> list[str] | None:
    """Split one narrative into `num_steps` parts on sentence boundaries (the paper's recipe).

    n sentences are dealt out contiguously and as evenly as possible (the first n % K parts get one
    more). None if there are fewer sentences than steps.
    """
    sentences = [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    if len(sentences) < num_steps:
        return None
    base, extra = divmod(len(sentences), num_steps)
    parts, start = [], 0
    for k in range(num_steps):
        size = base + (1 if k < extra else 0)
        parts.append(" ".join(sentences[start:start + size]))
        start += size
    return parts


@dataclass
class TraceReport:
    """What `load_traces` did: rows used, and every bad row with its line number and reason."""

    rows: int = 0
    used: int = 0
    bad: list = None  # list of (line_number, reason)
    dropped_words: int = 0  # words removed because they are not in the vocabulary

    def summary(self) -> str:
        s = f"traces: {self.used}/{self.rows} rows used, {len(self.bad)} bad, {self.dropped_words} out-of-vocabulary words dropped"
        for line, reason in self.bad[:10]:
            s += f"\n  line {line}: {reason}"
        if len(self.bad) > 10:
            s += f"\n  ... and {len(self.bad) - 10} more"
        return s


def load_traces(path: str | Path, tokenizer, num_steps: int, num_users: int | None = None,
                num_items: int | None = None, max_think_tokens: int = 16,
                strict: bool = False) -> tuple[Traces, TraceReport]:
    """Read external thinking traces, one JSON object per line:

        {"user": 3, "target": 17, "history_len": 5, "steps": ["...", "...", "..."]}      K segments
        {"user": 3, "target": 17, "history_len": 5, "reasoning": "One. Two. Three."}     split into K parts

    `user` and `target` are indices (user index, item index); `history_len` (optional) tells apart
    samples of the same user and target. Text is lowercased and cut into vocabulary words; unknown
    words are dropped (counted), each block capped at `max_think_tokens`.
    Bad rows (invalid JSON, missing/ill-typed fields, wrong number of steps, too few sentences, an
    empty block, a duplicate key, indices out of range) are skipped and reported; strict=True raises
    instead. Returns ({(user, history_len|None, target): [K block texts]}, TraceReport).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reasoning.traces={str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"reasoning.traces={str(path)!r} is a directory, not a JSONL file of traces")
    traces = Traces()
    report = TraceReport(bad=[])
    allowed = tokenizer.word_id_set
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")  # bad bytes: that row is reported
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        report.rows += 1

        def bad(reason: str) -> None:
            if strict:
                raise ValueError(f"{path}:{line_no}: {reason}")
            report.bad.append((line_no, reason))

        if any("\udc80" <= c <= "\udcff" for c in line):
            bad("not valid UTF-8")
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            bad(f"invalid JSON ({e.msg})")
            continue
        if not isinstance(row, dict):
            bad("not a JSON object")
            continue
        user, target, hlen = row.get("user"), row.get("target"), row.get("history_len")
        if not isinstance(user, int) or not isinstance(target, int) or isinstance(user, bool):
            bad("needs integer 'user' and 'target' (user index, item index)")
            continue
        if hlen is not None and not isinstance(hlen, int):
            bad("'history_len' must be an integer")
            continue
        if (num_users is not None and not 0 <= user < num_users) or (num_items is not None and not 0 <= target < num_items):
            bad(f"user {user} or target {target} out of range")
            continue
        if "steps" in row:
            steps = row["steps"]
            if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
                bad("'steps' must be a list of strings")
                continue
            if len(steps) != num_steps:
                bad(f"'steps' has {len(steps)} segments, need {num_steps} (one per SID level)")
                continue
        elif isinstance(row.get("reasoning"), str):
            steps = split_reasoning(row["reasoning"], num_steps)
            if steps is None:
                bad(f"'reasoning' has fewer than {num_steps} sentences")
                continue
        else:
            bad("needs 'steps' (list of K strings) or 'reasoning' (a string)")
            continue
        blocks, empty = [], False
        for s in steps:
            ids = tokenizer.encode(s)
            words = [i for i in ids if i in allowed]
            report.dropped_words += len(ids) - len(words)
            if not words:
                empty = True
            blocks.append(words_text(words[:max_think_tokens], tokenizer))
        if empty:
            bad("a step has no vocabulary words left")
            continue
        key = (user, hlen, target)
        if key in traces:
            bad(f"duplicate trace for user={user} history_len={hlen} target={target}")
            continue
        traces[key] = blocks
        report.used += 1
    if report.rows and not report.used:
        first = report.bad[0] if report.bad else (0, "?")
        raise ValueError(f"reasoning.traces={str(path)!r}: none of its {report.rows} rows is usable (line {first[0]}: "
                         f"{first[1]}); fix the file (see minisapo.traces.load_traces for the format)")
    return traces, report


def write_trace_requests(path: str | Path, dataset, table, samples) -> Path:
    """Write one JSON line per sample with what an LLM needs to write a trace for it (the paper's recipe):
    the keys `load_traces` expects (user, target, history_len) plus the history and target titles and the
    target's descriptor at every SID level. Fill in "steps" or "reasoning" and train with it: --reasoning.traces=FILE.
    """
    path = Path(path)
    lines = []
    for s in samples:
        codes = [int(c) for c in table.codes[s.target]]
        row = {"user": int(s.user), "target": int(s.target), "history_len": len(s.history),
               "history_titles": [dataset.item_titles[i] for i in s.history],
               "target_title": dataset.item_titles[s.target],
               "target_descriptors": [table.descriptor(codes[:k + 1]) for k in range(table.num_levels)]}
        lines.append(json.dumps(row) + "\n")
    atomic_write(path, lambda p: p.write_text("".join(lines)))
    return path


class Traces(dict):
    """{(user, history_len | None, target): [K block texts]}, as `load_traces` returns it."""

    def find(self, sample) -> list[str] | None:
        """The external trace of `sample`: exact (user, history_len, target), else (user, None, target)."""
        user, hlen, target = sample_key(sample)
        return self.get((user, hlen, target), self.get((user, None, target)))
