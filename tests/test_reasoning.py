"""Prompts, teacher blocks, external traces and step segmentation, against hand-written answers."""

import json
from collections import namedtuple

import numpy as np
import pytest
import torch

from minisapo.reasoning import ReasoningConfig, build_examples, build_prompt, build_response, step_index, teacher_blocks
from minisapo.traces import load_traces, split_reasoning, write_trace_requests
from minisapo.sid.table import SIDTable
from minisapo.tokenizer import Tokenizer

Sample = namedtuple("Sample", "user history target")  # same fields as minisapo.data.Sample

# 5 items, K = 3; items 2 and 3 collide on (1, 0, 0) and get dedup tokens <d_0>, <d_1>
CODES = np.array([[0, 0, 0], [0, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 2]])
DESCRIPTORS = {
    "<a_0>": "red shoes", "<a_1>": "blue hats",
    "<a_0><b_0>": "trail", "<a_0><b_1>": "road", "<a_1><b_0>": "wool", "<a_1><b_1>": "straw",
    "<a_0><b_0><c_0>": "light", "<a_0><b_1><c_1>": "fast", "<a_1><b_0><c_0>": "warm winter", "<a_1><b_1><c_2>": "sun",
}


@pytest.fixture(scope="module")
def world():
    table = SIDTable.from_codes(CODES, descriptors=DESCRIPTORS)
    tok = Tokenizer.build(["red trail shoes light", "recent next", "extra words here"], table)
    return table, tok


def ids(tok, text):
    return tok.encode(text)


def test_step_index_blocks_first_hand_written(world):
    _, tok = world
    seq = ids(tok, "<pad> <bos> <a_0> <b_1> <c_1> <sep> <think> red shoes </think> <think> wool </think> "
                   "<think> warm </think> <a_1> <b_0> <c_0> <d_1> <eos> <pad> <pad>")
    #              pad bos a   b   c   sep | th  red sh  /th | th  wool /th | th  warm /th | a  b  c  d  | eos pad pad
    expected = [-1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2, 3, -1, -1, -1]  # dedup: step K
    assert step_index(torch.tensor([seq]), tok, 3)[0].tolist() == expected


def test_step_index_interleaved_hand_written(world):
    _, tok = world
    seq = ids(tok, "<bos> <a_0> <b_0> <c_0> <sep> <think> red </think> <a_1> <think> wool hats </think> <b_0> "
                   "<think> </think> <c_0> <d_0> <eos>")
    #         bos a  b  c  sep | th red /th a1 | th wool hats /th b0 | th /th c0 d0 | eos
    expected = [-1, -1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 3, -1]
    assert step_index(torch.tensor([seq]), tok, 3)[0].tolist() == expected


def test_step_index_sid_only_batch_and_response_only(world):
    _, tok = world
    a = ids(tok, "<bos> <a_1> <b_1> <c_2> <sep> <a_0> <b_0> <c_0> <eos>")
    b = ids(tok, "<bos> <a_1> <b_1> <c_2> <sep> <a_1> <b_0> <c_0> <d_0> <eos>")
    a = a + [tok.pad_id] * (len(b) - len(a))
    out = step_index(torch.tensor([a, b]), tok, 3).tolist()
    assert out[0] == [-1] * 5 + [0, 1, 2] + [-1] * 2
    assert out[1] == [-1] * 5 + [0, 1, 2, 3, -1]
    # the same responses without their prompt
    resp = torch.tensor([a[5:], b[5:]])
    assert step_index(resp, tok, 3, has_prompt=False).tolist() == [[0, 1, 2, -1, -1], [0, 1, 2, 3, -1]]


def test_step_index_malformed(world):
    _, tok = world
    # a 4th block (beyond K), a word outside blocks, and tokens after <eos> are outside every step
    seq = ids(tok, "<think> red </think> <think> </think> <think> </think> <think> red </think> red <a_0> <eos> <a_0>")
    expected = [0, 0, 0, 1, 1, 2, 2, -1, -1, -1, -1, 0, -1, -1]
    assert step_index(torch.tensor([seq]), tok, 3, has_prompt=False)[0].tolist() == expected
    # a sequence with no <sep> at all is all prompt
    assert (step_index(torch.tensor([seq]), tok, 3) == -1).all()


@pytest.mark.parametrize("layout", ["blocks_first", "interleaved"])
def test_built_responses_segment_into_k_steps(world, layout):
    """Every step k of a built response has exactly one <think>..</think> and the level-k SID token."""
    table, tok = world
    cfg = ReasoningConfig(layout=layout)
    for target in range(table.num_items):
        prompt = build_prompt([0, 4], table, tok, cfg)
        resp = build_response(target, teacher_blocks([0, 4], target, table, tok, cfg), table, tok, layout)
        assert prompt[-1] == tok.sep_id and resp[-1] == tok.eos_id
        steps = step_index(torch.tensor([prompt + resp]), tok, 3)[0].tolist()
        full = prompt + resp
        for k in range(3):
            toks = [full[t] for t in range(len(full)) if steps[t] == k]
            assert toks.count(tok.think_id) == 1 and toks.count(tok.end_think_id) == 1
            sid_in_step = [i for i in toks if tok.token_level[i] >= 0]
            assert sid_in_step[0] == tok.sid_ids(table, target)[k]
        # the dedup token is a step of its own, K (no thinking block)
        if table.dedup[target] >= 0:
            assert steps[full.index(tok.sid_ids(table, target)[3])] == 3


def test_response_formats(world):
    table, tok = world
    blocks = ["red", "wool", "warm"]
    bf = tok.decode(build_response(2, blocks, table, tok, "blocks_first"))
    assert bf == "<think> red </think> <think> wool </think> <think> warm </think> <a_1> <b_0> <c_0> <d_0> <eos>"
    il = tok.decode(build_response(2, blocks, table, tok, "interleaved"))
    assert il == "<think> red </think> <a_1> <think> wool </think> <b_0> <think> warm </think> <c_0> <d_0> <eos>"
    so = tok.decode(build_response(4, None, table, tok, "blocks_first", mode="sid_only"))
    assert so == "<a_1> <b_1> <c_2> <eos>"
    assert tok.decode(build_prompt([0, 4], table, tok)) == "<bos> <a_0> <b_0> <c_0> <a_1> <b_1> <c_2> <sep>"


def test_teacher_blocks_history_blocks_first_has_no_target_leak(world):
    table, tok = world
    cfg = ReasoningConfig()  # teacher="history", layout="blocks_first": the defaults
    history = [0, 0, 1, 4]
    blocks = teacher_blocks(history, 2, table, tok, cfg)
    # "recent <last item's level-k descriptor> often <most frequent level-k descriptor>" over all recent items:
    # level 0: last a_1, most frequent a_0 (x3); level 1: last (1,1), most frequent (0,0) (x2);
    # level 2: last (1,1,2), most frequent (0,0,0) (x2)
    assert blocks == ["recent blue hats often red shoes", "recent straw often trail", "recent sun often light"]
    # the same history gives the same blocks whatever the target: nothing about the target leaks in
    for target in range(table.num_items):
        assert teacher_blocks(history, target, table, tok, cfg) == blocks
    # ties in frequency go to the most recent prefix; deterministic
    assert teacher_blocks([0, 1, 4], 3, table, tok, cfg) == ["recent blue hats often red shoes",
                                                           "recent straw often straw", "recent sun often sun"]
    words = set(tok.word_ids)
    for b in blocks:
        assert len(tok.encode(b)) <= 8 and all(i in words for i in tok.encode(b))
    assert teacher_blocks(history, 2, table, tok, ReasoningConfig(max_think_tokens=3))[0] == "recent blue hats"


def test_teacher_blocks_history_interleaved_uses_only_the_sid_written_so_far(world):
    table, tok = world
    cfg = ReasoningConfig(layout="interleaved")
    history = [0, 0, 1, 4]
    # target 1 = (0, 1, 1): level 1 looks at the items under a_0 (0, 0, 1); level 2 at those under (0, 1): item 1
    assert teacher_blocks(history, 1, table, tok, cfg) == ["recent blue hats often red shoes",
                                                           "recent road often trail", "recent fast often fast"]
    # target 2 = (1, 0, 0): level 1 looks at item 4 (under a_1); nothing is under (1, 0) -> all recent items
    assert teacher_blocks(history, 2, table, tok, cfg) == ["recent blue hats often red shoes",
                                                           "recent straw often straw", "recent sun often light"]
    # block k depends on the target only through its levels < k (the SID tokens written before block k)
    per_target = {t: teacher_blocks(history, t, table, tok, cfg) for t in range(table.num_items)}
    for t1 in per_target:
        for t2 in per_target:
            for k in range(table.num_levels):
                if list(table.codes[t1][:k]) == list(table.codes[t2][:k]):
                    assert per_target[t1][k] == per_target[t2][k], (t1, t2, k)


def test_teacher_blocks_target_style(world):
    table, tok = world
    cfg = ReasoningConfig(max_think_tokens=16, teacher="target")
    blocks = teacher_blocks([0, 1, 4], 2, table, tok, cfg)
    # level 0: most recent a_1, then the most frequent other a_0 (x2); level 1: only item 4 agrees with a_1 -> straw;
    # level 2: nobody agrees with (a_1, b_0) -> all recent items: most recent sun, then (ties by recency) fast
    assert blocks == ["recent blue hats red shoes next blue hats", "recent straw next wool",
                      "recent sun fast next warm winter"]
    assert teacher_blocks([0, 1, 4], 2, table, tok, cfg) == blocks  # deterministic
    for target in range(table.num_items):  # every block names the target's level-k descriptor after "next"
        for k, b in enumerate(teacher_blocks([0, 1, 4], target, table, tok, cfg)):
            assert b.endswith("next " + table.descriptor([int(c) for c in table.codes[target][:k + 1]]))
    words = set(tok.word_ids)
    short = teacher_blocks([0, 1, 4], 2, table, tok, ReasoningConfig(max_think_tokens=3, teacher="target"))
    for b in short:
        assert 1 <= len(tok.encode(b)) <= 3 and all(i in words for i in tok.encode(b))
    assert short[2] == "next warm winter"  # the target part is kept, the history part cut first


def test_teacher_style_is_validated():
    from minisapo.config import ConfigError, make_config

    with pytest.raises(ValueError, match="reasoning.teacher='oracle': choose one of"):
        ReasoningConfig(teacher="oracle")
    with pytest.raises(ConfigError, match="teacher"):
        make_config({"teacher": "oracle"})
    assert make_config({"teacher": "target"}).reasoning.teacher == "target"


def test_split_reasoning():
    assert split_reasoning("One. Two! Three? Four.", 3) == ["One. Two!", "Three?", "Four."]
    assert split_reasoning("One. Two.", 3) is None


def test_load_traces_reports_bad_rows(world, tmp_path):
    table, tok = world
    rows = [
        json.dumps({"user": 0, "target": 2, "steps": ["red shoes", "wool", "warm winter"]}),
        json.dumps({"user": 1, "target": 4, "history_len": 2, "reasoning": "Red shoes. Then wool! Warm zzz."}),
        "{not json",
        json.dumps({"user": 0, "target": 3, "steps": ["red", "wool"]}),  # wrong K
        json.dumps({"user": 0, "target": 3, "reasoning": "Only one sentence."}),
        json.dumps({"user": 0, "target": 3, "steps": ["red", "qqq", "wool"]}),  # empty step after vocab filter
        json.dumps({"user": 0, "target": 2, "steps": ["red", "red", "red"]}),  # duplicate
        json.dumps({"user": 0, "target": 99, "steps": ["red", "red", "red"]}),  # out of range
        json.dumps({"target": 1, "steps": ["red", "red", "red"]}),  # no user
    ]
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join(rows) + "\n")
    traces, report = load_traces(path, tok, 3, num_users=2, num_items=5)
    assert report.rows == 9 and report.used == 2
    assert [line for line, _ in report.bad] == [3, 4, 5, 6, 7, 8, 9]
    assert traces[(0, None, 2)] == ["red shoes", "wool", "warm winter"]
    assert traces[(1, 2, 4)] == ["red shoes", "wool", "warm"]  # "then" and "zzz" are not vocabulary words
    with pytest.raises(ValueError, match=":3:"):
        load_traces(path, tok, 3, strict=True)

    class DS:
        num_users, item_titles = 2, ["x"] * 5

    samples = [Sample(0, (1,), 2), Sample(1, (0, 1), 4), Sample(1, (0,), 3)]
    ex = build_examples(DS(), table, tok, samples, ReasoningConfig(), traces=traces, verbose=False)
    assert tok.decode(ex[0][1]).startswith("<think> red shoes </think> <think> wool </think>")
    assert tok.decode(ex[1][1]).startswith("<think> red shoes </think> <think> wool </think> <think> warm </think>")
    assert tok.decode(ex[2][1]).startswith("<think> recent")  # no trace -> teacher blocks

    # the request file round-trips through load_traces once steps are filled in
    req = write_trace_requests(tmp_path / "req.jsonl", DS(), table, samples[:2])
    rows = [json.loads(line) for line in req.read_text().splitlines()]
    assert rows[1]["target_descriptors"] == ["blue hats", "straw", "sun"] and rows[1]["history_len"] == 2
    for r in rows:
        r["steps"] = r["target_descriptors"]
    req.write_text("".join(json.dumps(r) + "\n" for r in rows))
    traces2, rep2 = load_traces(req, tok, 3)
    assert rep2.used == 2 and traces2[(1, 2, 4)] == ["blue hats", "straw", "sun"]


def test_plot_response_steps(world, tmp_path, saved_figures):
    from matplotlib.colors import to_rgba

    from minisapo.plots import STEP_COLORS, plot_response_steps

    table, tok = world
    seq = build_prompt([0], table, tok) + build_response(2, ["red", "wool", "warm"], table, tok, "interleaved")
    assert plot_response_steps(seq, tok, 3, tmp_path / "steps.png").exists()
    (ax,) = saved_figures[0].axes
    # one box per token, labelled with it, in order
    assert [t.get_text() for t in ax.texts] == [tok.id_to_token(i) for i in seq]
    # <bos> <a_0> <b_0> <c_0> <sep> | <think> red </think> <a_1> | <think> wool </think> <b_0> |
    # <think> warm </think> <c_0> | <d_0> | <eos>: prompt and <eos> outside every step (white)
    steps = [-1] * 5 + [0] * 4 + [1] * 4 + [2] * 4 + [3] + [-1]
    assert [p.get_facecolor() for p in ax.patches] == [to_rgba(STEP_COLORS[k] if k >= 0 else "white") for k in steps]
    assert [t.get_text() for t in saved_figures[0].legends[0].get_texts()] == \
        ["step 0", "step 1", "step 2", "step 3 (dedup)", "outside steps (-1)"]


def test_no_empty_thinking_block_on_real_item_text(tmp_path):
    """Teacher blocks on the Amazon fixture always name a descriptor word (not just the connectors), and
    greedy thinking of an untrained model never writes an empty block (the grammar needs >= 1 word)."""
    from pathlib import Path

    from minisapo.data import DataConfig, load, prepare
    from minisapo.generate import beam_search
    from minisapo.grammar import Grammar
    from minisapo.model import ModelConfig, build_model
    from minisapo.sid import SIDConfig, SIDTrie
    from minisapo.sid import prepare as sid_prepare
    from minisapo.sid.embed import STOPWORDS

    reviews = Path(__file__).parent.parent / "data" / "samples" / "amazon2014" / "reviews_Toy_5.json"
    ds = load(tmp_path, prepare(DataConfig(source="amazon", reviews=str(reviews), kcore=2), tmp_path).name)
    table, tok, _ = sid_prepare(ds, SIDConfig(levels=2), tmp_path / "sid", plot=False, verbose=False)
    cfg = ReasoningConfig()
    connectors = {"recent", "often", "next"}
    samples = ds.splits["train"] + ds.splits["test"]
    for prompt, response in build_examples(ds, table, tok, samples, cfg, verbose=False):
        text = tok.decode(response)
        blocks = [b.split("</think>")[0].split() for b in text.split("<think>")[1:]]
        assert len(blocks) == 2
        for words in blocks:
            assert set(words) - connectors, text  # a descriptor word, not only "recent often"
            assert not set(words) & STOPWORDS, text
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16), tok.vocab_size)
    grammar = Grammar(tok, SIDTrie(table, tok), table.num_levels, cfg.layout, cfg.max_think_tokens, cfg.mode)
    prompts = [build_prompt(s.history, table, tok, cfg) for s in samples]
    for res in beam_search(model, grammar, prompts, beam_width=2):
        parsed = grammar.parse(res.responses[0])
        assert parsed.valid and all(len(b) >= 1 for b in parsed.blocks)


def test_sequence_examples_cover_the_training_prefix_only(world):
    """Pretraining windows: each user's training items in order, cut into windows, valid/test targets left out."""
    from types import SimpleNamespace

    from minisapo.data import make_splits
    from minisapo.reasoning import build_sequence_examples

    table, tok = world
    seqs = [[0, 1, 2, 3, 4, 0, 1], [4, 3, 2, 1]]
    splits = make_splits(seqs, [list(map(float, range(len(s)))) for s in seqs], "loo", 3)
    ds = SimpleNamespace(sequences=seqs)
    ex = build_sequence_examples(ds, table, tok, splits["train"], window=3)
    def sid(*items):  # the window's items as a history, the last one as a sid_only response
        return ([t for i in items[:-1] for t in tok.sid_ids(table, i)] + [tok.sep_id]
                + tok.sid_ids(table, items[-1]) + [tok.eos_id])

    # user 0 trains on items 0..4 (positions 5, 6 are valid/test): windows [0 1 2] [3 4]; user 1 on [4 3]
    assert ex == [([tok.bos_id], sid(0, 1, 2)), ([tok.bos_id], sid(3, 4)), ([tok.bos_id], sid(4, 3))]
    # overlapping windows (a new one every 2 items): item 2 is a target of one window, a context of the next
    assert build_sequence_examples(ds, table, tok, splits["train"], window=3, stride=2) == [
        ([tok.bos_id], sid(0, 1, 2)), ([tok.bos_id], sid(2, 3, 4)), ([tok.bos_id], sid(4, 3))]
    # temporal: targets by time 1 1 2 2 3 4 5 6 9 -> train = user 0's positions 1..5, user 1's 1..2
    temporal = make_splits(seqs, [[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 9]], "temporal", 3)
    assert build_sequence_examples(ds, table, tok, temporal["train"], window=10) == [
        ([tok.bos_id], sid(0, 1, 2, 3, 4, 0)), ([tok.bos_id], sid(4, 3, 2))]


def test_item_id_mode_formats(world):
    """Mode item_id: one token per item (ITEM_OFFSET + item), `<bos> i_1 .. i_n` -> the target's token; pretraining
    windows are whole item sequences (every position predicts the next item)."""
    from types import SimpleNamespace

    from minisapo.data import make_splits
    from minisapo.reasoning import ITEM_OFFSET, build_sequence_examples, item_id_vocab_size

    table, tok = world
    cfg = ReasoningConfig(mode="item_id")
    assert ITEM_OFFSET == 2 and tok.pad_id == 0 and tok.bos_id == 1  # the item vocabulary shares <pad> and <bos>
    assert build_prompt([3, 0, 4], table, tok, cfg) == [tok.bos_id, 5, 2, 6]
    assert build_response(4, None, table, tok, mode="item_id") == [6]
    assert build_examples(None, table, tok, [Sample(0, (3, 0), 1)], cfg) == [([tok.bos_id, 5, 2], [3])]
    assert item_id_vocab_size(len(CODES)) == 2 + 5
    seqs = [[0, 1, 2, 3, 4, 0, 1], [4, 3, 2, 1]]
    splits = make_splits(seqs, [list(map(float, range(len(s)))) for s in seqs], "loo", 3)
    ex = build_sequence_examples(SimpleNamespace(sequences=seqs), table, tok, splits["train"], window=3, stride=2,
                                 cfg=cfg)
    assert ex == [([tok.bos_id], [2, 3, 4]), ([tok.bos_id], [4, 5, 6]), ([tok.bos_id], [6, 5])]
