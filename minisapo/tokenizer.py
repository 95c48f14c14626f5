"""The vocabulary: special tokens + one token per SID code + plain words.

A thin wrapper around a Hugging Face ``tokenizers`` WordLevel model (lowercase
normaliser, whitespace pre-tokenizer). Ids are laid out as

    0..6     specials  <pad> <bos> <eos> <think> </think> <sep> <unk>
    7..      SID tokens, level by level: <a_0>.. <b_0>.. <c_0>.. then dedup <d_0>..
    then     words (item text + descriptor words), most frequent first

SID and special tokens are "added tokens", so ``encode("<a_3><b_1> red shoes")``
finds them even without spaces. At least one dedup token is always present (even
with dedup="none"), so the last SID letter in the vocabulary is the dedup level K
and the tokenizer knows K after ``load`` without a side file.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers

from minisapo.files import atomic_write

SPECIALS = ["<pad>", "<bos>", "<eos>", "<think>", "</think>", "<sep>", "<unk>"]  # fixed ids 0..6
LETTERS = "abcdefgh"  # SID level l is written with LETTERS[l] ("<b_4>": level 1, code 4); the dedup level K uses LETTERS[K]
# Connector words the teacher's thinking blocks use ("recent <last> often <most frequent>" and
# "recent <history> next <target>", see minisapo.reasoning.teacher_blocks); always in the vocabulary.
REASONING_WORDS = ("recent", "often", "next")
_SID_RE = re.compile(r"^<([a-h])_(\d+)>$")


def code_token(level: int, code: int) -> str:
    """``code_token(1, 4) == "<b_4>"``: the one place a SID token's spelling is defined (with parse_token)."""
    return f"<{LETTERS[level]}_{int(code)}>"


def parse_token(token: str) -> tuple[int, int] | None:
    """``"<b_4>" -> (1, 4)`` (level, code); non-SID tokens -> None."""
    m = _SID_RE.match(token)
    return None if m is None else (LETTERS.index(m.group(1)), int(m.group(2)))


class Tokenizer:
    """Word-level tokenizer with SID and special tokens (see module docstring)."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        vocab = hf.get_vocab(with_added_tokens=True)  # token -> id
        self.vocab_size = len(vocab)
        self._id_to_token = [""] * self.vocab_size
        for tok, i in vocab.items():
            self._id_to_token[i] = tok
        for i, s in enumerate(SPECIALS):
            if vocab.get(s) != i:
                raise ValueError(f"tokenizer must have {s} at id {i}")
        self.pad_id, self.bos_id, self.eos_id, self.think_id, self.end_think_id, self.sep_id, self.unk_id = range(7)
        parsed = [parse_token(t) for t in self._id_to_token]
        levels = [p[0] for p in parsed if p is not None]
        if not levels:
            raise ValueError("tokenizer has no SID tokens")
        self.num_levels = max(levels)  # the last letter is the dedup level K
        # token_level[i]: -1 non-SID, l for level l, K for dedup tokens
        self.token_level: list[int] = [p[0] if p is not None else -1 for p in parsed]
        self.word_ids: list[int] = [i for i in range(len(SPECIALS), self.vocab_size) if parsed[i] is None]
        self.word_id_set: frozenset[int] = frozenset(self.word_ids)  # the same ids, for "is this a word?" tests

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, texts: Iterable[str], table, vocab_size: int | None = None) -> "Tokenizer":
        """Vocabulary from item texts, the table's descriptor words and REASONING_WORDS.

        vocab_size: cap on the total vocabulary (specials + SID tokens + words);
        None = keep every word. Descriptor words are always kept (they are what the
        teacher's thinking blocks say); other words by frequency, ties alphabetical.
        """
        norm, pre = normalizers.Lowercase(), pre_tokenizers.Whitespace()

        def words(text: str) -> list[str]:
            return [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]

        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(words(t))
        must: Counter[str] = Counter(REASONING_WORDS)
        for d in table.descriptors.values():
            must.update(words(d))
        sid_tokens = table.all_tokens()
        if table.dedup_size == 0:  # always reserve one dedup token (see module docstring)
            sid_tokens.append(f"<{LETTERS[table.num_levels]}_0>")
        fixed = SPECIALS + sid_tokens
        reserved = set(fixed)
        order = lambda w: (-(counts[w] + must[w]), w)  # noqa: E731  most frequent first, then alphabetical
        kept = sorted((w for w in must if w not in reserved), key=order)
        rest = sorted((w for w in counts if w not in must and w not in reserved), key=order)
        if vocab_size is not None:
            room = vocab_size - len(fixed) - len(kept)
            if room < 0:
                raise ValueError(f"vocab_size={vocab_size} is too small: specials + SID tokens + descriptor words "
                                 f"need {len(fixed) + len(kept)}; raise vocab_size or use smaller codebooks")
            rest = rest[:room]
        word_list = sorted(kept + rest, key=order)
        vocab = {tok: i for i, tok in enumerate(fixed + word_list)}
        hf = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        hf.normalizer = normalizers.Lowercase()
        hf.pre_tokenizer = pre_tokenizers.Whitespace()
        hf.add_special_tokens(fixed)  # matched before pre-tokenisation; keeps their ids
        return cls(hf)

    # -------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        """Text (may contain SID / special token strings) -> ids; unknown words -> <unk>."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> space-joined tokens (specials and SID tokens kept)."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._id_to_token[i] if 0 <= i < self.vocab_size else None

    def level_ids(self, level: int) -> list[int]:
        """Ids of all SID tokens of one level (level K = dedup tokens)."""
        return [i for i, l in enumerate(self.token_level) if l == level]

    # ------------------------------------------------------------ SID helpers
    def sid_ids(self, table, item: int) -> list[int]:
        """An item's SID as token ids."""
        out = []
        for t in table.tokens(item):
            i = self.hf.token_to_id(t)
            if i is None:
                raise KeyError(f"SID token {t} is not in the vocabulary; rebuild the tokenizer for this SID table")
            out.append(i)
        return out

    def item_of(self, table, ids: Sequence[int]) -> int | None:
        """Item whose complete SID is ``ids`` (first one if shared); None for anything else. Never raises."""
        try:
            toks = [self.id_to_token(int(i)) for i in ids]
        except (TypeError, ValueError):
            return None
        if any(t is None for t in toks):
            return None
        return table.item(toks)

    # -------------------------------------------------------------------- I/O
    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json (``path`` may be a directory or a .json file path)."""
        path = Path(path)
        if path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "tokenizer.json"
        atomic_write(path, lambda p: self.hf.save(str(p)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if path.suffix != ".json":
            path = path / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer at {path}; build SIDs first (`minisapo sid`)")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise ValueError(f"{path} is not a valid tokenizer file ({why}); delete it (or the sid/ folder holding "
                             f"it) and run the command again to rebuild it") from None

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, words={len(self.word_ids)}, levels={self.num_levels})"
