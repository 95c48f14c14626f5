"""Prompts, teacher thinking blocks, responses, and step segmentation.

Formats (token strings; ids come from the Tokenizer):

    prompt    <bos> <a_1><b_4><c_0> [title words] ... <a_2><b_0><c_3> [title words] <sep>
              the user's history, oldest first, most recent last; title words only with
              prompt_titles=True. Always ends with <sep>: the response starts right after it.

    response  (mode="reasoning", layout="blocks_first", the paper's)
                  <think> w w w </think> <think> w w </think> <think> w w w </think> <a_x> <b_y> <c_z> [<d_i>] <eos>
              (mode="reasoning", layout="interleaved")
                  <think> w w w </think> <a_x> <think> w w </think> <b_y> <think> w w w </think> <c_z> [<d_i>] <eos>
              (mode="sid_only", the TIGER-style baseline)
                  <a_x> <b_y> <c_z> [<d_i>] <eos>

    item_id   (mode="item_id", the SASRec-style baseline: no SIDs, no thinking, no tokenizer)
              prompt <bos> i_1 .. i_n, response i_target: one token per item (token ITEM_OFFSET + item),
              ranked by a softmax over every item of the catalog

A *reasoning step* k (k = 0..K-1) is thinking block k plus SID token k. The dedup token <d_i>
(which item among those that share all K codes) has no block of its own: it is a step of its own,
K, rewarded by the exact match. `step_index` maps every token of a sequence to its step (or -1);
SFT analysis and the SAPO loss both use it.

Teacher thinking blocks are built from data, one per step, in one of these styles (reasoning.teacher):

  "history" (the default): block k says what the user's history shows at SID level k, using only what
      the model knows when it writes the block: "recent <descriptor of the last recent item's level-k
      prefix> often <descriptor of the most frequent level-k prefix among the last `recent` items>".
      In blocks_first the block sees the history alone (the same blocks for every target of a history);
      in interleaved, block k may also use the SID tokens already written (the target's levels < k):
      it looks only at the recent items that share them (all recent items if none does), e.g.

          <think> recent trail running shoes often hiking boots </think>

  "target": the paper-style rationalisation, which names the target's level-k descriptor after "next"
      (and, for k > 0, looks at the recent items that share the target's levels < k, in both layouts):

          <think> recent trail running shoes next trail running shoes </think>

      It knows the answer: greedy thinking at evaluation then commits to one item before the beam
      search over SIDs runs (on the taxonomy world it ranked below sid_only at the same budget).

  "world" (compose worlds only): block k states the two facts of the history the world computes the
      target's level-k code from, and nothing else (`world_blocks`); the thinking computes:

          <think> often ladder recent wool </think>

      "world_misaligned" is its control: the same blocks, each in another step.

External traces (e.g. written by an LLM) can replace them: see `minisapo.traces`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch

from minisapo.files import at_least, refuse_problems
from minisapo.tokenizer import REASONING_WORDS as TEACHER_WORDS  # "recent", "often", "next": always in the vocabulary
from minisapo.tokenizer import SPECIALS


@dataclass
class ReasoningConfig:
    mode: str = "reasoning"
    """"reasoning" (thinking blocks + SID), "sid_only" (SID only, the TIGER-style baseline) or "item_id" (one
    token per item, no SIDs: the SASRec-style baseline, ranked by a softmax over the catalog)"""
    layout: str = "blocks_first"
    """"blocks_first" (all K blocks, then the SID; the paper's) or "interleaved" (block k before SID token k)"""
    max_think_tokens: int = 16
    """cap on the words inside one thinking block (the grammar then forces </think>)"""
    prompt_titles: bool = False
    """add each history item's title words after its SID in the prompt"""
    title_words: int = 4
    """how many title words per history item when prompt_titles=True"""
    recent: int = 5
    """teacher blocks look at the user's last `recent` history items"""
    descriptor_words: int = 3
    """words kept from each descriptor inside a teacher block"""
    traces: str | None = None
    """optional JSONL of external traces (see minisapo.traces); None = teacher blocks"""
    teacher: str = "auto"
    """teacher blocks: "auto" (world on a compose world, else history), "history" (what the history shows at
    level k, no target; in interleaved also the SID so far), "target" (names the target's level-k descriptor:
    the paper-style rationale), "world" (compose worlds: the two facts level k's code is computed from) or
    "world_misaligned" (the same facts, block k carrying level k+1's: a control)"""

    def __post_init__(self):
        refuse_problems(self, "reasoning")

    def problems(self):
        """(field, what to change) for every setting out of range."""
        for key, allowed in (("mode", MODES), ("layout", LAYOUTS), ("teacher", TEACHERS)):
            if getattr(self, key) not in allowed:
                yield key, f"choose one of {', '.join(allowed)}"
        yield from at_least(self, max_think_tokens=1, title_words=1, recent=1, descriptor_words=1)


MODES = ("reasoning", "sid_only", "item_id")
ITEM_OFFSET = 2  # mode="item_id": token 0 is <pad>, 1 is <bos> (the tokenizer's ids), item i is token ITEM_OFFSET + i
BOS_ID = SPECIALS.index("<bos>")
LAYOUTS = ("blocks_first", "interleaved")
TEACHERS = ("auto", "history", "target", "world", "world_misaligned")


# ----------------------------------------------------------------------------------------------
# Words
# ----------------------------------------------------------------------------------------------


def vocab_words(text: str, tokenizer, limit: int | None = None) -> list[int]:
    """Word-token ids of `text` (lowercased, whitespace/punctuation split), dropping words not in the vocabulary
    (and any SID/special token), keeping at most `limit`."""
    allowed = _word_set(tokenizer)
    ids = [i for i in tokenizer.encode(text) if i in allowed]
    return ids if limit is None else ids[:limit]


def _word_set(tokenizer) -> frozenset[int]:
    return tokenizer.word_id_set


def words_text(ids: Sequence[int], tokenizer) -> str:
    return " ".join(tokenizer.id_to_token(i) for i in ids)


# ----------------------------------------------------------------------------------------------
# Prompt
# ----------------------------------------------------------------------------------------------


def build_prompt(history: Sequence[int], table, tokenizer, cfg: ReasoningConfig | None = None,
                 titles: Sequence[str] | None = None) -> list[int]:
    """`<bos> sid(item_1) [title words] ... sid(item_n) [title words] <sep>` as token ids.

    history: item indices, oldest first (a Sample's history is already cut to max_history).
    titles: item titles (dataset.item_titles), used only when cfg.prompt_titles is True (then required).
    In mode "item_id": `<bos> i_1 .. i_n` (`item_id_prompt`), no SIDs and no <sep>.
    """
    cfg = cfg or ReasoningConfig()
    if cfg.mode == "item_id":
        return item_id_prompt(history)
    ids = [tokenizer.bos_id]
    for item in history:
        ids += tokenizer.sid_ids(table, item)
        if cfg.prompt_titles:
            if titles is None:
                raise ValueError("prompt_titles=True needs the item titles: build_prompt(..., titles=dataset.item_titles)")
            ids += vocab_words(titles[item], tokenizer, cfg.title_words)
    ids.append(tokenizer.sep_id)
    return ids


def item_tokens(items: Sequence[int]) -> list[int]:
    """Mode "item_id": the token of each item (ITEM_OFFSET + item)."""
    return [ITEM_OFFSET + int(i) for i in items]


def item_id_prompt(history: Sequence[int]) -> list[int]:
    """Mode "item_id": `<bos> i_1 .. i_n`; the logits after the last token rank the next item."""
    return [BOS_ID] + item_tokens(history)


def item_id_vocab_size(num_items: int) -> int:
    """Mode "item_id": the model's vocabulary, <pad>, <bos> and one token per item."""
    return ITEM_OFFSET + num_items


# ----------------------------------------------------------------------------------------------
# Teacher thinking blocks
# ----------------------------------------------------------------------------------------------


def _descriptor_ids(table, codes: Sequence[int], tokenizer, n_words: int, cache: dict | None = None) -> list[int]:
    """Vocabulary word ids of the descriptor of a code prefix (at most n_words)."""
    key = (tuple(codes), n_words)
    if cache is not None and key in cache:
        return cache[key]
    ids = vocab_words(table.descriptor(list(codes)), tokenizer, n_words)
    if cache is not None:
        cache[key] = ids
    return ids


def teacher_blocks(history: Sequence[int], target: int, table, tokenizer,
                   cfg: ReasoningConfig | None = None, cache: dict | None = None) -> list[str]:
    """K thinking-block texts (words only, no <think> tags), one per SID level, built from data.

    `recent` = the last `cfg.recent` history items. Block k looks at `seen`: the recent items, or, where
    allowed, those that agree with the target on levels < k (all recent items if none agrees).

    cfg.teacher="history": block k = "recent <d_last> often <d_often>", with <d_last> the descriptor of the
      last seen item's level-k prefix and <d_often> that of the most frequent level-k prefix among the seen
      items (ties: the most recent). `seen` agrees with the target's levels < k only in layout
      "interleaved" (those SID tokens are written before block k); in "blocks_first" it never depends on
      the target. At most 8 words with descriptor_words=3.
    cfg.teacher="target": block k = "recent <d1> [<d2>] next <dt>", `seen` always agrees with the target's
      levels < k; <d1> = the last seen item's level-k descriptor, <d2> = the most frequent other one
      (ties: most recent; skipped if its words repeat <d1>), <dt> = the target's level-k descriptor.
      The history part is shortened first to fit max_think_tokens; "next <dt>" is kept.

    Deterministic; only vocabulary words (a connector word missing from the vocabulary is dropped); at
    most cfg.max_think_tokens words. `cache`: an optional dict reused across calls with the same table
    and tokenizer (descriptor words), for speed.
    """
    cfg = cfg or ReasoningConfig()
    refuse_problems(cfg, "reasoning")
    known = _word_set(tokenizer)
    connector = {w: [tokenizer.token_to_id(w)] if tokenizer.token_to_id(w) in known else [] for w in TEACHER_WORDS}
    codes = table.codes
    tcodes = [int(c) for c in codes[target]]
    recent = list(history)[-cfg.recent:] if cfg.recent > 0 else list(history)
    if cfg.teacher.startswith("world"):
        raise ValueError(f"teacher_blocks builds the history and target styles; reasoning.teacher={cfg.teacher} is "
                         f"the world's facts (use reasoning.teacher(...))")
    style = "target" if cfg.teacher == "target" else "history"  # "auto" outside a compose world: history
    may_use_target_prefix = style == "target" or cfg.layout == "interleaved"
    blocks = []
    for k in range(table.num_levels):
        seen = recent
        if may_use_target_prefix:
            seen = [i for i in recent if list(codes[i][:k]) == tcodes[:k]] or recent
        prefixes = [tuple(int(c) for c in codes[i][:k + 1]) for i in seen]  # oldest first
        counts = Counter(prefixes)
        last_seen = {p: pos for pos, p in enumerate(prefixes)}

        def desc(prefix) -> list[int]:
            return _descriptor_ids(table, prefix, tokenizer, cfg.descriptor_words, cache)

        if style == "history":
            words = []
            if prefixes:  # an empty history gives no block content (the fallback word below)
                often = max(counts, key=lambda p: (counts[p], last_seen[p]))
                words = connector["recent"] + desc(prefixes[-1]) + connector["often"] + desc(often)
        else:  # "target"
            # level-k prefixes: the most recent one first, then by frequency (ties: recency)
            ranked = sorted(counts, key=lambda p: (p != prefixes[-1], -counts[p], -last_seen[p]))
            hist_ids: list[int] = []
            shown: list[list[int]] = []
            for p in ranked:  # the first two prefixes (in that order) with distinct, non-empty descriptors
                d = desc(p)
                if d and d not in shown:
                    shown.append(d)
                    hist_ids += d
                if len(shown) == 2:
                    break
            nxt = connector["next"] + desc(tcodes[:k + 1])
            room = max(cfg.max_think_tokens - len(nxt), 0)
            words = (connector["recent"] + hist_ids)[:room] + nxt
        words = words[:cfg.max_think_tokens]
        if not words:  # no descriptor or connector words in the vocabulary: the grammar needs >= 1 word
            words = [min(known)]
        blocks.append(words_text(words, tokenizer))
    return blocks


def world_blocks(history: Sequence[int], orc, tokenizer, misaligned: bool = False) -> list[str]:
    """K thinking-block texts from a compose world's own facts (`reasoning.teacher=world`): block k states the
    facts the world computes the target's level-k code from (`ComposeWorld.facts`, `block_text`), from the
    history alone: "often <word of z_k> recent <word of r_k>" (z_k the most frequent level-k code of the
    window, r_k the last window item's), or for rule=track the states of the walk. `orc`: the `Oracle`.
    misaligned=True (`world_misaligned`, a control): the same blocks rotated, block k states level k+1's
    facts (the last block level 0's): the same words, each in another step."""
    w = orc.world
    blocks = [w.block_text(k, f) for k, f in enumerate(w.facts([int(orc.to_world[i]) for i in history]))]
    return blocks[1:] + blocks[:1] if misaligned else blocks


def teacher_style(dataset, cfg: ReasoningConfig) -> str:
    """cfg.teacher with "auto" resolved: "world" on a compose world (its facts are what the thinking should
    compute), "history" on any other data."""
    if cfg.teacher != "auto":
        return cfg.teacher
    from minisapo.data.synthetic import is_compose

    return "world" if is_compose(dataset) else "history"


def teacher(dataset, table, tokenizer, cfg: ReasoningConfig):
    """`blocks(history, target) -> K block texts` for `cfg.teacher` (the world's facts need a compose world)."""
    style = teacher_style(dataset, cfg)
    if style != cfg.teacher:
        from dataclasses import replace

        cfg = replace(cfg, teacher=style)
    if cfg.teacher.startswith("world"):
        from minisapo.data import oracle

        orc = oracle(dataset)
        if orc is None or not hasattr(orc.world, "facts"):
            raise ValueError(f"reasoning.teacher={cfg.teacher} states a compose world's facts: use a compose world "
                             f"(--data.world=compose), or --reasoning.teacher=history")
        if table.num_levels != orc.world.K:
            raise ValueError(f"reasoning.teacher={cfg.teacher}: the SIDs have {table.num_levels} levels, the world "
                             f"{orc.world.K}: use --sid.method=latent (the world's own codes)")
        misaligned = cfg.teacher == "world_misaligned"
        return lambda history, target: world_blocks(history, orc, tokenizer, misaligned)
    cache: dict = {}
    return lambda history, target: teacher_blocks(history, target, table, tokenizer, cfg, cache)


# ----------------------------------------------------------------------------------------------
# External traces (JSONL)
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Response
# ----------------------------------------------------------------------------------------------


def build_response(target: int, blocks: Sequence[str] | None, table, tokenizer, layout: str = "blocks_first",
                   mode: str = "reasoning", max_think_tokens: int | None = None) -> list[int]:
    """Token ids of the response for `target` (see the module docstring); always ends with <eos>.

    blocks: K thinking-block texts (ignored, may be None, in modes "sid_only" and "item_id"); words not in the vocabulary
    are dropped, each block is capped at max_think_tokens words (None = no cap).
    """
    if mode == "item_id":
        return item_tokens([target])  # the target's own token: no SID, no <eos>
    sid = tokenizer.sid_ids(table, target)  # K semantic tokens (+ 1 dedup token)
    K = table.num_levels
    if mode == "sid_only":
        return sid + [tokenizer.eos_id]
    if mode != "reasoning":
        raise ValueError(f"mode={mode!r}: choose one of {MODES}")
    if blocks is None or len(blocks) != K:
        raise ValueError(f"need {K} thinking blocks (one per SID level), got {None if blocks is None else len(blocks)}")
    think = [[tokenizer.think_id] + vocab_words(b, tokenizer, max_think_tokens) + [tokenizer.end_think_id]
             for b in blocks]
    if layout == "blocks_first":
        out = [t for block in think for t in block] + sid
    elif layout == "interleaved":
        out = []
        for k in range(K):
            out += think[k] + [sid[k]]
        out += sid[K:]  # the dedup token (if any) follows the last SID token: it belongs to the last step
    else:
        raise ValueError(f"layout={layout!r}: choose one of {LAYOUTS}")
    return out + [tokenizer.eos_id]


def build_examples(dataset, table, tokenizer, samples, cfg: ReasoningConfig | None = None,
                   traces=None, verbose: bool = True) -> list[tuple[list[int], list[int]]]:
    """SFT examples [(prompt_ids, response_ids)] for `samples`.

    mode="reasoning": thinking blocks from `traces` (`traces.load_traces`: external traces, read by the
    caller) when a sample has one, else the data-built teacher blocks. mode="sid_only": no thinking;
    mode="item_id": `<bos> i_1 .. i_n` -> the target's token. The same code path for all three.
    """
    cfg = cfg or ReasoningConfig()
    refuse_problems(cfg, "reasoning")
    titles = dataset.item_titles if cfg.prompt_titles else None
    examples, from_traces = [], 0
    blocks_of = teacher(dataset, table, tokenizer, cfg) if cfg.mode == "reasoning" else None
    for s in samples:
        prompt = build_prompt(s.history, table, tokenizer, cfg, titles=titles)
        blocks = None
        if cfg.mode == "reasoning":
            blocks = traces.find(s) if traces else None
            if blocks is not None:
                from_traces += 1
            else:
                blocks = blocks_of(s.history, s.target)
        response = build_response(s.target, blocks, table, tokenizer, cfg.layout, cfg.mode, cfg.max_think_tokens)
        examples.append((prompt, response))
    if verbose and traces:
        print(f"traces: {from_traces}/{len(samples)} samples use an external trace, the rest teacher blocks")
    return examples


def build_sequence_examples(dataset, table, tokenizer, samples, window: int, stride: int | None = None,
                            cfg: ReasoningConfig | None = None) -> list[tuple[list[int], list[int]]]:
    """Item-sequence pretraining examples: each user's training interactions in order, cut into windows of
    `window` items, each as `([<bos>], sid(i_1) .. sid(i_n-1) <sep> response(i_n))`: the window's last item
    is written as the response of an SFT example (`cfg.mode`: the teacher's thinking blocks, then its SID;
    `sid_only` or cfg=None: its SID) and the rest as its prompt's history.

    The loss covers every token after <bos>, so every item of a window is a next-item target for the items
    before it, and the last one is also an SFT example: one forward pass teaches what `window` SFT examples
    teach about which item follows which, at a fraction of their tokens, in the format SFT and evaluation
    use. `samples` are the training samples: a
    user's training interactions are the first (number of their training samples + 1) items of their
    sequence (both splits cut a user's sequence into a training prefix), so valid and test targets are
    never seen. `stride` (default: `window`, windows side by side) below `window` makes windows overlap, so
    an item is a target under several contexts.
    In mode "item_id" a window is `([<bos>], i_1 .. i_n)` (SASRec's training: every position predicts the next
    item with a softmax over the catalog).
    """
    stride = stride or window
    if window < 2 or stride < 1:
        raise ValueError(f"need window >= 2 items and stride >= 1, got window={window}, stride={stride}")
    counts = Counter(s.user for s in samples)
    examples = []
    blocks_of = teacher(dataset, table, tokenizer, cfg) if cfg is not None and cfg.mode == "reasoning" else None
    for user in sorted(counts):
        items = dataset.sequences[user][:counts[user] + 1]
        for start in range(0, len(items) - 1, stride):
            chunk = items[start:start + window]
            if len(chunk) >= 2 and cfg is not None and cfg.mode == "item_id":
                examples.append(([BOS_ID], item_tokens(chunk)))
            elif len(chunk) >= 2:
                history = [t for item in chunk[:-1] for t in tokenizer.sid_ids(table, item)]
                if cfg is None or cfg.mode == "sid_only":
                    response = tokenizer.sid_ids(table, chunk[-1]) + [tokenizer.eos_id]
                else:
                    blocks = blocks_of(chunk[:-1], chunk[-1])
                    response = build_response(chunk[-1], blocks, table, tokenizer, cfg.layout, cfg.mode,
                                              cfg.max_think_tokens)
                examples.append(([tokenizer.bos_id], history + [tokenizer.sep_id] + response))
    return examples


# ----------------------------------------------------------------------------------------------
# Step segmentation: token -> reasoning step
# ----------------------------------------------------------------------------------------------


def step_index(tokens: torch.Tensor, tokenizer, num_steps: int, has_prompt: bool = True) -> torch.Tensor:
    """The reasoning step of every token: (B, T) token ids -> (B, T) long, values in {-1, 0, .., K}.

    Reading each row left to right:
      - with has_prompt=True, everything up to and including the first <sep> is the prompt: -1;
      - a thinking block, from <think> to </think> inclusive, is step b where b = the number of thinking
        blocks before it (blocks beyond the K-th, a malformed response, get -1);
      - a SID token of level l is step l; the dedup token (level K: which item among those sharing the K
        codes) is a step of its own, K, with no thinking block, so the within-SID lottery never blurs the
        credit of step K-1;
      - <eos>, everything after it, padding anywhere, and any other token outside a block: -1.
    Works for both layouts and for sid_only responses (no blocks; SID tokens only).
    """
    K = num_steps
    level = tokenizer.token_level  # -1 for non-SID tokens, l for level l, K for dedup
    rows = tokens.tolist()
    out = torch.full(tokens.shape, -1, dtype=torch.long)
    for b, row in enumerate(rows):
        in_response = not has_prompt  # becomes True right after the first <sep>
        in_block = False  # between <think> and </think>
        blocks_before = 0  # thinking blocks closed so far
        for t, tok in enumerate(row):
            if not in_response:  # prompt
                in_response = tok == tokenizer.sep_id
                continue
            if tok == tokenizer.eos_id:  # end of response: <eos> and everything after stay -1
                break
            if tok == tokenizer.pad_id:  # padding is never part of a step
                continue
            if tok == tokenizer.think_id:
                in_block = True
            if in_block:
                out[b, t] = blocks_before if blocks_before < K else -1
                if tok == tokenizer.end_think_id:
                    in_block = False
                    blocks_before += 1
            elif level[tok] >= 0:  # a SID token outside a block (the dedup token: step K)
                out[b, t] = min(level[tok], K)
    return out.to(tokens.device)
