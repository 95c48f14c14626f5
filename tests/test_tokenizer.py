"""Tokenizer: fixed special ids, SID tokens, words, round trips, save/load."""

import numpy as np
import pytest

from minisapo.sid import SIDTable
from minisapo.tokenizer import Tokenizer
from minisapo.tokenizer import SPECIALS


@pytest.fixture
def table():
    codes = np.array([[0, 1, 2], [0, 1, 2], [1, 0, 0], [2, 2, 1]])
    return SIDTable.from_codes(codes, codebook_sizes=[3, 3, 3],
                               descriptors={"<a_0>": "Trail Hiking", "<a_1>": "kitchen"})


TEXTS = ["Red trail shoes, leather", "red kitchen knife", "Blue hat", "red hat"]


def test_layout_specials_and_levels(table):
    tok = Tokenizer.build(TEXTS, table)
    assert [tok.id_to_token(i) for i in range(7)] == SPECIALS
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.think_id, tok.end_think_id, tok.sep_id, tok.unk_id) == tuple(range(7))
    assert tok.num_levels == 3
    assert len(tok.token_level) == tok.vocab_size
    for i in range(tok.vocab_size):
        t = tok.id_to_token(i)
        expect = "abcd".index(t[1]) if t.startswith("<") and t[1] in "abcd" and t[2] == "_" else -1
        assert tok.token_level[i] == expect, t
    assert tok.level_ids(0) == [tok.token_to_id(f"<a_{c}>") for c in range(3)]
    assert tok.level_ids(3) == [tok.token_to_id("<d_0>"), tok.token_to_id("<d_1>")]
    words = {tok.id_to_token(i) for i in tok.word_ids}
    assert {"red", "trail", "shoes", ",", "hiking", "kitchen", "hat"} <= words  # text + descriptor words, lowercased
    assert not any(w.startswith("<") and w.endswith(">") for w in words)
    assert sorted(tok.word_ids + [i for i, l in enumerate(tok.token_level) if l >= 0] + list(range(7))) == \
        list(range(tok.vocab_size))
    assert tok.word_id_set == set(tok.word_ids) and tok.token_to_id("<a_0>") not in tok.word_id_set


def test_encode_decode_round_trip(table):
    tok = Tokenizer.build(TEXTS, table)
    text = "<bos><a_0><b_1><c_2><d_1> red Hat<sep><think> trail shoes </think><a_2><eos>"
    ids = tok.encode(text)
    assert ids[:5] == [tok.bos_id] + tok.sid_ids(table, 1)
    assert tok.decode(ids) == "<bos> <a_0> <b_1> <c_2> <d_1> red hat <sep> <think> trail shoes </think> <a_2> <eos>"
    assert tok.encode(tok.decode(ids)) == ids
    assert tok.encode("zebra") == [tok.unk_id]


def test_item_round_trip_and_unknown(table):
    tok = Tokenizer.build(TEXTS, table)
    for i in range(table.num_items):
        assert tok.item_of(table, tok.sid_ids(table, i)) == i
    a0, b1, c2 = (tok.token_to_id(t) for t in ["<a_0>", "<b_1>", "<c_2>"])
    assert tok.item_of(table, [a0, b1, c2]) is None  # collision group needs its dedup token
    assert tok.item_of(table, [a0, b1]) is None
    assert tok.item_of(table, []) is None
    assert tok.item_of(table, [10**6, -5]) is None
    assert tok.item_of(table, [tok.bos_id, a0]) is None


def test_vocab_cap_keeps_descriptor_words(table):
    full = Tokenizer.build(TEXTS * 3 + ["rare"], table)
    n_fixed = 7 + len(table.all_tokens())
    tok = Tokenizer.build(TEXTS * 3 + ["rare"], table, vocab_size=n_fixed + 7)
    assert tok.vocab_size == n_fixed + 7 < full.vocab_size
    words = [tok.id_to_token(i) for i in tok.word_ids]
    # descriptor words + the teacher's connector words + the most frequent other word
    assert {"trail", "hiking", "kitchen", "recent", "often", "next", "red"} == set(words)
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.build(TEXTS, table, vocab_size=10)


def test_save_load_identical(table, tmp_path):
    tok = Tokenizer.build(TEXTS, table)
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json"
    tok2 = Tokenizer.load(path)
    assert tok2.vocab_size == tok.vocab_size and tok2.word_ids == tok.word_ids
    assert tok2.token_level == tok.token_level and tok2.num_levels == tok.num_levels
    assert [tok2.id_to_token(i) for i in range(tok.vocab_size)] == [tok.id_to_token(i) for i in range(tok.vocab_size)]
    s = "<bos><a_2><b_2><c_1> Red HAT <think>hiking</think><sep>"
    assert tok2.encode(s) == tok.encode(s)


def test_dedup_none_still_knows_levels(tmp_path):
    t = SIDTable.from_codes(np.array([[0, 1], [0, 1]]), dedup=np.full(2, -1))
    tok = Tokenizer.load(Tokenizer.build(["x"], t).save(tmp_path / "tok.json"))
    assert tok.num_levels == 2 and tok.token_level[tok.token_to_id("<c_0>")] == 2
    assert tok.item_of(t, tok.sid_ids(t, 1)) == 0  # shared SID -> first item
