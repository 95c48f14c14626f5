"""The response grammar: checked against hand-written responses and a scan of the SID table."""

import random

import numpy as np
import pytest
import torch

from minisapo.grammar import Grammar
from minisapo.sid import SIDTable, SIDTrie
from minisapo.tokenizer import Tokenizer

# 8 items, K = 3; items (0,1) and (4,5,6) collide on all semantic codes -> dedup tokens <d_0>.. ;
# item 2 shares a 2-level prefix with nothing, item 7 is alone under <a_2>.
CODES = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 1], [1, 0, 0], [1, 0, 1], [1, 0, 1], [1, 0, 1], [2, 1, 0]])
WORDS = "red blue green hat shoe running warm soft"


def make_world(dedup=True):
    """(table, tokenizer, trie) for the tiny catalog above (dedup=False keeps collisions)."""
    dd = None if dedup else np.full(len(CODES), -1)
    table = SIDTable.from_codes(CODES, dedup=dd, descriptors={"<a_0>": "red shoe", "<a_1>": "blue hat"})
    tok = Tokenizer.build([WORDS, "green running warm soft"], table)
    return table, tok, SIDTrie(table, tok)


def make_grammar(layout="blocks_first", mode="reasoning", max_think=3, dedup=True, **kw):
    table, tok, trie = make_world(dedup)
    return Grammar(tok, trie, num_steps=3, layout=layout, max_think_tokens=max_think, mode=mode, **kw), table, tok


def build_response(tok, table, item, layout, mode, blocks):
    """A response written by hand (independently of the grammar) for `item` with thinking `blocks`."""
    sid = tok.sid_ids(table, item)
    if mode == "sid_only":
        return sid + [tok.eos_id]
    think = [[tok.think_id] + b + [tok.end_think_id] for b in blocks]
    if layout == "blocks_first":
        return sum(think, []) + sid + [tok.eos_id]
    out = []
    for k in range(3):
        out += think[k] + [sid[k]]
    return out + sid[3:] + [tok.eos_id]


def scan_next(tok, table, sid_prefix):
    """Valid next SID tokens by scanning every item's SID (brute force, no trie)."""
    n = len(sid_prefix)
    return sorted({tok.sid_ids(table, i)[n] for i in range(table.num_items)
                   if tok.sid_ids(table, i)[:n] == list(sid_prefix) and len(tok.sid_ids(table, i)) > n})


@pytest.mark.parametrize("layout", ["blocks_first", "interleaved"])
@pytest.mark.parametrize("mode", ["reasoning", "sid_only"])
def test_every_catalog_response_parses(layout, mode):
    g, table, tok = make_grammar(layout, mode)
    rng = random.Random(0)
    for item in range(table.num_items):
        blocks = [[rng.choice(tok.word_ids) for _ in range(rng.randint(1, 3))] for _ in range(3)]
        resp = build_response(tok, table, item, layout, mode, blocks)
        p = g.parse(resp + [tok.pad_id] * 3)
        assert p.valid, p.error
        assert p.sid_ids == tok.sid_ids(table, item)
        assert p.item == table.item(table.tokens(item))  # first item of a shared SID
        assert p.item == item  # dedup tokens make every SID unique
        assert p.blocks == (blocks if mode == "reasoning" else [])
        assert p.length == len(resp)
        assert len(resp) <= g.max_length


@pytest.mark.parametrize("layout", ["blocks_first", "interleaved"])
def test_allowed_matches_hand_answers(layout):
    g, table, tok = make_grammar(layout, max_think=2)
    words = sorted(tok.word_ids)
    w = words[0]
    assert g.allowed([]) == [tok.think_id]
    assert g.allowed([tok.think_id]) == words  # no empty block
    assert g.allowed([tok.think_id, w]) == sorted(words + [tok.end_think_id])
    assert g.allowed([tok.think_id, w, w]) == [tok.end_think_id]  # cap reached: forced
    after_block = g.allowed([tok.think_id, w, tok.end_think_id])
    a = tok.sid_ids(table, 4)  # <a_1><b_0><c_1><d_0>
    if layout == "blocks_first":
        assert after_block == [tok.think_id]
        think3 = [tok.think_id, w, tok.end_think_id] * 3
        assert g.allowed(think3) == scan_next(tok, table, [])
        assert g.allowed(think3 + a[:3]) == scan_next(tok, table, a[:3])  # dedup follows directly
        assert len(g.allowed(think3 + a[:3])) == 3
        assert g.allowed(think3 + a) == [tok.eos_id]
    else:
        blk = [tok.think_id, w, tok.end_think_id]
        assert after_block == scan_next(tok, table, [])
        assert g.allowed(blk + a[:1]) == [tok.think_id]
        pre = blk + a[:1] + blk + a[1:2] + blk + a[2:3]
        assert g.allowed(pre) == scan_next(tok, table, a[:3])  # dedup: no thinking block before it
        assert g.allowed(pre + a[3:]) == [tok.eos_id]
        item7 = tok.sid_ids(table, 7)  # no collision -> <eos> right after the last semantic token
        assert g.allowed(blk + item7[:1] + blk + item7[1:2] + blk + item7[2:3]) == [tok.eos_id]


def test_sid_only_enumerates_exactly_the_catalog():
    """Depth-first walk over every allowed token: the complete responses are exactly the catalog's SIDs."""
    for dedup in (True, False):
        g, table, tok = make_grammar(mode="sid_only", dedup=dedup)
        found = []

        def walk(prefix):
            nxt = g.allowed(prefix)
            if prefix and prefix[-1] == tok.eos_id:
                found.append(tuple(prefix[:-1]))
                return
            for x in nxt:
                walk(prefix + [x])

        walk([])
        expected = {tuple(tok.sid_ids(table, i)) for i in range(table.num_items)}
        assert len(found) == len(set(found)) == len(expected)
        assert set(found) == expected


def test_invalid_responses():
    g, table, tok = make_grammar(max_think=2)
    w = tok.word_ids[0]
    blk = [tok.think_id, w, tok.end_think_id]
    sid = tok.sid_ids(table, 7)
    good = blk * 3 + sid + [tok.eos_id]
    assert g.parse(good).valid
    bad = {
        "empty block": [tok.think_id, tok.end_think_id] + blk * 2 + sid + [tok.eos_id],
        "over cap": [tok.think_id, w, w, w, tok.end_think_id] + blk * 2 + sid + [tok.eos_id],
        "sid token in block": [tok.think_id, sid[0], tok.end_think_id] + blk * 2 + sid + [tok.eos_id],
        "too few blocks": blk * 2 + sid + [tok.eos_id],
        "not in catalog": blk * 3 + [sid[0], sid[1], tok.token_to_id("<c_1>"), tok.eos_id],
        "no eos": blk * 3 + sid,
        "junk after eos": good + [w],
        "special in block": [tok.think_id, tok.unk_id, tok.end_think_id] + blk * 2 + sid + [tok.eos_id],
    }
    for name, resp in bad.items():
        p = g.parse(resp)
        assert not p.valid and p.item is None and p.error, name
    with pytest.raises(ValueError, match="breaks the grammar"):
        g.masks(torch.tensor([bad["over cap"]]))
    with pytest.raises(ValueError):
        g.allowed(bad["empty block"])


@pytest.mark.parametrize("layout", ["blocks_first", "interleaved"])
@pytest.mark.parametrize("mode", ["reasoning", "sid_only"])
def test_batched_masks_equal_allowed(layout, mode):
    g, table, tok = make_grammar(layout, mode)
    rng = random.Random(1)
    resps = []
    for item in range(table.num_items):
        blocks = [[rng.choice(tok.word_ids) for _ in range(rng.randint(1, 3))] for _ in range(3)]
        resps.append(build_response(tok, table, item, layout, mode, blocks))
    T = max(map(len, resps))
    R = torch.tensor([r + [tok.pad_id] * (T - len(r)) for r in resps])
    M = g.masks(R)
    assert M.shape == (len(resps), T, tok.vocab_size) and M.dtype == torch.bool
    for b, r in enumerate(resps):
        for t in range(T):
            want = torch.zeros(tok.vocab_size, dtype=torch.bool)
            want[g.allowed(r[:t]) if t <= len(r) else list(range(tok.vocab_size))] = True
            assert torch.equal(M[b, t], want), (b, t)
            if t < len(r):
                assert M[b, t, r[t]]


def test_config_errors():
    table, tok, trie = make_world()
    with pytest.raises(ValueError, match="layout"):
        Grammar(tok, trie, 3, layout="sideways")
    with pytest.raises(ValueError, match="levels"):
        Grammar(tok, trie, 2)
    with pytest.raises(ValueError, match="mode"):
        Grammar(tok, trie, 3, mode="poetry")


def test_zero_min_think_allows_empty_block():
    g, table, tok = make_grammar(min_think_tokens=0)
    assert tok.end_think_id in g.allowed([tok.think_id])
