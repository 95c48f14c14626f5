"""The response grammar: ONE definition of which token may come next.

Sampling, the RL loss masks and beam search all ask this module, so the probabilities
the RL loss uses are computed under exactly the constraint the sampler used.

A response (the tokens after the prompt's `<sep>`) is K reasoning steps, then `<eos>`:

    blocks_first:  <think> w.. </think> x K   s_1 .. s_K [d]   <eos>
    interleaved:   <think> w.. </think> s_1   <think> w.. </think> s_2  ..  s_K [d]   <eos>
    sid_only:      s_1 .. s_K [d]   <eos>

* Inside a thinking block only word tokens are allowed. A block holds between
  `min_think_tokens` (default 1: no empty blocks) and `max_think_tokens` words; at the
  cap `</think>` is the only choice (it is "forced").
* At a SID position only the tokens the prefix trie allows (given the SID so far).
* The dedup token [d] (present only when the trie offers one) follows the last semantic
  SID token directly, with no thinking block of its own.
* After the complete SID, `<eos>`. After `<eos>` the response is over: every token is
  "allowed" there (those positions are padding and masked out of every loss).

The grammar is a small state machine. A `State` is an immutable tuple, so beam search
can branch it freely:

    phase       "open"  expecting <think>
                "think" inside a thinking block (think_len words so far)
                "sid"   expecting a SID token (trie.next_tokens(sid))
                "eos"   expecting <eos>
                "done"  after <eos>
                "invalid" a token the grammar did not allow was seen
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from minisapo.reasoning import LAYOUTS, MODES  # the response formats are defined where responses are built


class State(NamedTuple):
    phase: str  # "open" | "think" | "sid" | "eos" | "done" | "invalid"
    blocks: int  # thinking blocks finished so far
    think_len: int  # words in the current thinking block
    sid: tuple[int, ...]  # SID token ids so far


class ParsedResponse(NamedTuple):
    valid: bool  # follows the grammar and ends with <eos>
    sid_ids: list[int]  # SID token ids (incl. dedup) in order
    item: int | None  # item of the complete SID (None unless valid)
    blocks: list[list[int]]  # word ids of each thinking block
    length: int = 0  # response tokens up to and including <eos> (or all tokens if there is none)
    error: str | None = None  # why it is invalid (None when valid)


class Grammar:
    """Allowed next tokens for responses. See the module docstring for the grammar."""

    def __init__(self, tokenizer, trie, num_steps: int, layout: str = "blocks_first",
                 max_think_tokens: int = 16, mode: str = "reasoning", min_think_tokens: int = 1,
                 vocab_size: int | None = None):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if mode not in MODES or mode == "item_id":
            raise ValueError(f"mode must be one of {MODES[:2]} (item_id writes one item token, no SID), got {mode!r}")
        if num_steps != trie.num_levels:
            raise ValueError(f"num_steps={num_steps} but the SID trie has {trie.num_levels} levels; they must agree")
        if mode == "reasoning":
            if not 0 <= min_think_tokens <= max_think_tokens or max_think_tokens < 1:
                raise ValueError(f"need 0 <= min_think_tokens <= max_think_tokens and max_think_tokens >= 1, got "
                                 f"{min_think_tokens}, {max_think_tokens}")
            if min_think_tokens > 0 and not tokenizer.word_ids:
                raise ValueError("the tokenizer has no word tokens, so thinking blocks cannot be written; use mode='sid_only'")
        self.tok, self.trie = tokenizer, trie
        self.K, self.layout, self.mode = num_steps, layout, mode
        self.max_think, self.min_think = max_think_tokens, min_think_tokens
        self.V = vocab_size or tokenizer.vocab_size  # the model's vocabulary: all tokens, or (sid_only) the first ones
        needed = tokenizer.vocab_size if mode == "reasoning" else 1 + max(
            i for i, level in enumerate(tokenizer.token_level) if level >= 0)  # sid_only: specials and SID tokens
        if not needed <= self.V <= tokenizer.vocab_size:
            raise ValueError(f"vocab_size={self.V}: mode {mode!r} needs the first {needed} of the tokenizer's "
                             f"{tokenizer.vocab_size} tokens")
        self.words = list(tokenizer.word_ids)
        self._word_set = frozenset(self.words)
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ the state machine
    def start(self) -> State:
        """State before the first response token."""
        return State("sid" if self.mode == "sid_only" else "open", 0, 0, ())

    def allowed_ids(self, state: State) -> list[int]:
        """Token ids allowed next (sorted). After <eos>: every token. Invalid state: ValueError."""
        t = self.tok
        if state.phase == "open":
            return [t.think_id]
        if state.phase == "think":
            if state.think_len >= self.max_think:
                return [t.end_think_id]  # cap reached: </think> is forced
            if state.think_len < self.min_think:
                return self.words
            return sorted(self.words + [t.end_think_id])
        if state.phase == "sid":
            return self.trie.next_tokens(state.sid)
        if state.phase == "eos":
            return [t.eos_id]
        if state.phase == "done":
            return list(range(self.V))
        raise ValueError("the response so far breaks the grammar; nothing is allowed after an invalid token")

    def step(self, state: State, token: int) -> State:
        """The state after appending `token` (phase "invalid" if the grammar did not allow it)."""
        token, t = int(token), self.tok
        ph = state.phase
        if ph == "done" or ph == "invalid":
            return state
        if ph == "open":
            return state._replace(phase="think", think_len=0) if token == t.think_id else state._replace(phase="invalid")
        if ph == "think":
            if token in self._word_set and state.think_len < self.max_think:
                return state._replace(think_len=state.think_len + 1)
            if token == t.end_think_id and state.think_len >= self.min_think:
                blocks = state.blocks + 1
                nxt = "open" if self.layout == "blocks_first" and blocks < self.K else "sid"
                return State(nxt, blocks, 0, state.sid)
            return state._replace(phase="invalid")
        if ph == "sid":
            if token not in self.trie.next_tokens(state.sid):
                return state._replace(phase="invalid")
            sid = state.sid + (token,)
            if not self.trie.next_tokens(sid):
                nxt = "eos"  # complete SID
            elif self.mode == "reasoning" and self.layout == "interleaved" and len(sid) < self.K:
                nxt = "open"  # next step's thinking block
            else:
                nxt = "sid"  # next SID level (or the dedup token, which has no thinking block)
            return State(nxt, state.blocks, 0, sid)
        if ph == "eos":
            return state._replace(phase="done") if token == t.eos_id else state._replace(phase="invalid")
        raise AssertionError(ph)

    def state_of(self, prefix: Sequence[int]) -> State:
        """Run the state machine over a response prefix."""
        s = self.start()
        for tok in prefix:
            s = self.step(s, tok)
        return s

    # ------------------------------------------------------------------ masks
    def state_mask(self, state: State) -> torch.Tensor:
        """Allowed tokens as a bool vector (V,) (CPU, cached; do not modify)."""
        ph = state.phase
        if ph == "think":
            key = ("think", min(state.think_len, self.min_think), state.think_len >= self.max_think)
        elif ph == "sid":
            key = ("sid", state.sid)
        else:
            key = (ph,)
        m = self._mask_cache.get(key)
        if m is None:
            m = torch.zeros(self.V, dtype=torch.bool)
            m[self.allowed_ids(state)] = True
            self._mask_cache[key] = m
        return m

    def batch_mask(self, states: Sequence[State]) -> torch.Tensor:
        """Allowed-token masks (B, V) for a list of states."""
        return torch.stack([self.state_mask(s) for s in states])

    def allowed(self, response_prefix: Sequence[int]) -> list[int]:
        """Sorted token ids allowed after `response_prefix` (all ids once the response is over)."""
        return self.allowed_ids(self.state_of(response_prefix))

    def masks(self, responses: torch.Tensor) -> torch.Tensor:
        """responses (B, T) -> BoolTensor (B, T, V) on the same device:
        mask[b, t] = tokens allowed at position t given responses[b, :t] (all True after <eos>).
        Raises ValueError if a response breaks the grammar (its log-prob would be -inf)."""
        rows = responses.tolist()
        uniq: dict[int, int] = {}  # id(mask tensor) -> row in `table`
        table: list[torch.Tensor] = []
        index = torch.empty(len(rows), len(rows[0]) if rows else 0, dtype=torch.long)
        for b, row in enumerate(rows):
            s = self.start()
            for t, tok in enumerate(row):
                m = self.state_mask(s)
                if id(m) not in uniq:
                    uniq[id(m)] = len(table)
                    table.append(m)
                index[b, t] = uniq[id(m)]
                s = self.step(s, tok)
                if s.phase == "invalid":
                    raise ValueError(f"response {b} breaks the grammar at position {t}: token "
                                     f"{self.tok.id_to_token(tok)!r} ({tok}) is not allowed after "
                                     f"{self.tok.decode(row[:t])!r}")
        if not table:
            return torch.ones(*responses.shape, self.V, dtype=torch.bool, device=responses.device)
        return torch.stack(table).to(responses.device)[index.to(responses.device)]  # (B,T,V)

    # ------------------------------------------------------------------ parsing
    def parse_rows(self, responses: torch.Tensor, mask: torch.Tensor) -> list[ParsedResponse]:
        """`parse` of every row of a rollout batch: responses (B, T), mask (B, T) True on its response tokens."""
        return [self.parse(r[m].tolist()) for r, m in zip(responses.cpu(), mask.cpu().bool())]

    def parse(self, response: Sequence[int] | torch.Tensor) -> ParsedResponse:
        """Check a response and pull out its SID, item and thinking blocks. Padding after <eos> is fine."""
        if isinstance(response, torch.Tensor):
            response = response.tolist()
        s, blocks, error, length = self.start(), [], None, len(response)
        for t, tok in enumerate(response):
            if s.phase == "done":
                if tok != self.tok.pad_id:
                    error = f"token {tok} after <eos> at position {t} (only <pad> may follow)"
                break
            prev = s
            s = self.step(s, tok)
            if s.phase == "invalid":
                error = f"token {self.tok.id_to_token(tok)!r} not allowed at position {t} (phase {prev.phase})"
                break
            if prev.phase == "open":
                blocks.append([])
            elif prev.phase == "think" and s.phase == "think":
                blocks[-1].append(int(tok))
            if s.phase == "done":
                length = t + 1
        if error is None and s.phase != "done":
            error = "response ends before <eos>"
        valid = error is None
        return ParsedResponse(valid, list(s.sid), self.trie.item(s.sid) if valid else None, blocks, length, error)

    # ------------------------------------------------------------------ sizes
    @property
    def dedup(self) -> bool:
        """True when SIDs have a dedup level (items sharing all K codes): its token is step K."""
        return self.trie.max_depth > self.K

    @property
    def num_steps(self) -> int:
        """Reward steps of a response: the K reasoning steps, plus the dedup token's step if SIDs have one."""
        return self.K + int(self.dedup)

    @property
    def max_length(self) -> int:
        """Longest possible response (incl. <eos>): room to allocate for generation."""
        sid_len = self.trie.max_depth
        think = 0 if self.mode == "sid_only" else self.K * (self.max_think + 2)
        return think + sid_len + 1

    def __repr__(self) -> str:
        return (f"Grammar(K={self.K}, layout={self.layout!r}, mode={self.mode!r}, "
                f"think={self.min_think}..{self.max_think} words, V={self.V})")
