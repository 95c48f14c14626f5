"""Decoding: sampling, log-prob recomputation and beam search against brute-force answers."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minisapo.generate import beam_search, response_logprobs, rollouts, sample
from minisapo.grammar import Grammar
from minisapo.model import GPT, ModelConfig
from minisapo.sid import SIDTable, SIDTrie
from minisapo.tokenizer import Tokenizer

# the same tiny catalog as tests/test_grammar.py: 8 items, K = 3, two collision groups -> dedup tokens
CODES = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 1], [1, 0, 0], [1, 0, 1], [1, 0, 1], [1, 0, 1], [2, 1, 0]])


def make_world(dedup=True):
    dd = None if dedup else np.full(len(CODES), -1)
    table = SIDTable.from_codes(CODES, dedup=dd, descriptors={"<a_0>": "red shoe", "<a_1>": "blue hat"})
    tok = Tokenizer.build(["red blue green hat shoe running warm soft"], table)
    return table, tok, SIDTrie(table, tok)


LAYOUT_MODES = [("blocks_first", "reasoning"), ("interleaved", "reasoning"), ("blocks_first", "sid_only")]


def make(layout="blocks_first", mode="reasoning", max_think=3, dedup=True):
    table, tok, trie = make_world(dedup)
    return Grammar(tok, trie, 3, layout=layout, max_think_tokens=max_think, mode=mode), table, tok


def uniform_model(V):
    """Mock policy: all weights zero -> logits exactly 0 -> uniform over the allowed tokens."""
    model = GPT(ModelConfig(vocab_size=V, n_embd=16, n_layer=1, n_head=2, max_seq_len=128))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.eval()


def peaky_model(V, seed=0, scale=8.0):
    """A random tiny GPT with large weights, so its distributions are far from uniform."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=2, max_seq_len=128))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(scale)
    return model.eval()


def prompts_for(tok, lengths=(3, 6, 4)):
    g = torch.Generator().manual_seed(123)
    words = torch.tensor(tok.word_ids)
    return [[tok.bos_id] + words[torch.randint(len(words), (n,), generator=g)].tolist() + [tok.sep_id]
            for n in lengths]


def logp_next(model, seq, allowed):
    """Brute force: constrained log-probs of the next token after `seq`, one unpadded full forward."""
    logits = model(torch.tensor([seq]))[0, -1].float()
    m = torch.full_like(logits, float("-inf"))
    m[allowed] = 0
    return F.log_softmax(logits + m, -1)


# ----------------------------------------------------------------------------------------------
# sampling


@pytest.mark.parametrize("layout,mode", LAYOUT_MODES)
def test_every_sample_is_a_valid_catalog_item_uniform_model(layout, mode):
    """Property test over many seeds with a uniform mock model (independent of training)."""
    g, table, tok = make(layout, mode)
    model = uniform_model(tok.vocab_size)
    prompts = prompts_for(tok)
    seen_items, seen_len = set(), set()
    for seed in range(12):
        ro = sample(model, g, prompts, num_generations=4, generator=torch.Generator().manual_seed(seed))
        B, T = ro.responses.shape
        assert B == 12 and len(ro.prompts) == 12
        assert ro.prompts[:4] == [prompts[0]] * 4  # rows of one prompt are contiguous
        for b in range(B):
            r = ro.responses[b].tolist()
            p = g.parse(r)
            assert p.valid, p.error
            assert tok.item_of(table, p.sid_ids) is not None  # the SID is in the catalog (table scan)
            assert all(1 <= len(blk) <= 3 for blk in p.blocks)
            assert ro.mask[b].sum() == p.length and ro.mask[b, : p.length].all()
            assert (ro.responses[b, p.length :] == tok.pad_id).all()
            seen_items.add(p.item)
            seen_len.update(len(blk) for blk in p.blocks)
            # uniform model: each log-prob is exactly -log(number of allowed tokens) (hand answer)
            for t in range(p.length):
                n = len(g.allowed(r[:t]))
                assert ro.logprobs[b, t].item() == pytest.approx(-math.log(n), abs=1e-5)
                assert bool(ro.forced[b, t]) == (n == 1)
            assert (ro.logprobs[b, p.length :] == 0).all() and not ro.forced[b, p.length :].any()
    assert seen_items == set(range(table.num_items))  # everything reachable, incl. every dedup item
    if mode == "reasoning":
        assert seen_len == {1, 2, 3}  # the cap (3) is reached and </think> is then forced


def test_sampling_is_seeded_and_cache_free_path_agrees():
    g, table, tok = make("interleaved")
    model = peaky_model(tok.vocab_size, scale=3.0)
    prompts = prompts_for(tok)
    a = sample(model, g, prompts, 3, temperature=1.3, generator=torch.Generator().manual_seed(5))
    b = sample(model, g, prompts, 3, temperature=1.3, generator=torch.Generator().manual_seed(5))
    c = sample(model, g, prompts, 3, temperature=1.3, generator=torch.Generator().manual_seed(5), use_cache=False)
    assert torch.equal(a.responses, b.responses)
    assert torch.equal(a.responses, c.responses)
    torch.testing.assert_close(a.logprobs, c.logprobs, atol=1e-4, rtol=1e-4)
    d = sample(model, g, prompts, 3, temperature=1.3, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(a.responses, d.responses)


@pytest.mark.parametrize("layout,mode", LAYOUT_MODES)
def test_greedy_equals_unbatched_brute_force(layout, mode):
    g, table, tok = make(layout, mode)
    model = peaky_model(tok.vocab_size, seed=2)
    prompts = prompts_for(tok)
    ro = sample(model, g, prompts, num_generations=2, greedy=True)
    for i, prompt in enumerate(prompts):
        resp = []
        while not resp or resp[-1] != tok.eos_id:
            resp.append(int(logp_next(model, prompt + resp, g.allowed(resp)).argmax()))
        for j in range(2):
            assert ro.responses[2 * i + j, : len(resp)].tolist() == resp


@pytest.mark.parametrize("layout,mode", LAYOUT_MODES)
def test_sampler_logprobs_equal_recomputation(layout, mode):
    g, table, tok = make(layout, mode)
    model = peaky_model(tok.vocab_size, seed=1, scale=3.0)
    prompts = prompts_for(tok)
    temp = 0.7
    ro = sample(model, g, prompts, num_generations=3, temperature=temp, generator=torch.Generator().manual_seed(0))
    model.train()  # dropout is 0; train mode must not change the numbers
    lp, ent = response_logprobs(model, g, ro.prompts, ro.responses, temperature=temp)
    assert lp.requires_grad
    torch.testing.assert_close(lp, ro.logprobs, atol=1e-4, rtol=1e-4)  # the importance ratio is 1
    assert (lp[~ro.mask] == 0).all() and (ent[~ro.mask] == 0).all()
    # entropy against an unbatched brute force on two rows
    for b in (0, 4):
        r = ro.responses[b][ro.mask[b]].tolist()
        for t in range(len(r)):
            with torch.no_grad():
                logits = model(torch.tensor([ro.prompts[b] + r[:t]]))[0, -1] / temp
            allowed = g.allowed(r[:t])
            q = F.log_softmax(logits[allowed], -1)
            assert ent[b, t].item() == pytest.approx(-(q.exp() * q).sum().item(), abs=1e-4)
            assert lp[b, t].item() == pytest.approx(q[allowed.index(r[t])].item(), abs=1e-4)
    # gradients flow
    (lp.sum() + ent.sum()).backward()
    assert model.wte.weight.grad is not None and model.wte.weight.grad.abs().sum() > 0


def test_shared_prompt_gradients_equal_one_forward_per_row():
    """response_logprobs runs each distinct prompt once for all its rows: its log-probs and the gradient of any
    loss on them equal those of one full forward pass over prompt + response per row, left padding included."""
    g, table, tok = make("blocks_first", "reasoning")
    model = peaky_model(tok.vocab_size, seed=2, scale=2.0)
    prompts = prompts_for(tok, lengths=(2, 7))
    ro = sample(model, g, prompts, num_generations=3, generator=torch.Generator().manual_seed(1))
    lp, _ = response_logprobs(model, g, ro.prompts, ro.responses)
    weights = torch.linspace(-1, 1, lp.numel()).view_as(lp)  # any loss: a fixed weighted sum
    (lp * weights).sum().backward()
    shared = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    total = 0.0
    for b in range(ro.responses.size(0)):  # the reference: one plain forward pass per row, no cache, no padding
        r = ro.responses[b][ro.mask[b]].tolist()
        logits = model(torch.tensor([ro.prompts[b] + r]))[0, len(ro.prompts[b]) - 1: -1]  # (len(r), V)
        for t in range(len(r)):
            allowed = g.allowed(r[:t])
            q = F.log_softmax(logits[t][allowed], -1)[allowed.index(r[t])]
            assert lp[b, t].item() == pytest.approx(q.item(), abs=1e-5)
            total = total + q * weights[b, t]
    total.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(shared[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_max_new_tokens_truncates():
    g, table, tok = make()
    ro = sample(uniform_model(tok.vocab_size), g, prompts_for(tok), max_new_tokens=4,
                generator=torch.Generator().manual_seed(0))
    assert ro.responses.shape[1] == 4 and ro.mask.all()
    assert not any(g.parse(r).valid for r in ro.responses)  # no room for a complete response


# ----------------------------------------------------------------------------------------------
# beam search


def brute_force_ranking(model, g, tok, table, prompt):
    """Score EVERY catalog item: greedy thinking (per item's own path in `interleaved`), forced SID
    tokens, score = sum of the SID tokens' constrained log-probs. Unbatched, no cache."""
    scored = []
    for item in range(table.num_items):
        sid = tok.sid_ids(table, item)
        resp, score, k = [], 0.0, 0
        while True:
            state = g.state_of(resp)
            if state.phase == "eos":
                break
            lp = logp_next(model, prompt + resp, g.allowed(resp))
            if state.phase == "sid":
                resp.append(sid[k])
                score += lp[sid[k]].item()
                k += 1
            else:
                resp.append(int(lp.argmax()))
        scored.append((score, item))
    scored.sort(key=lambda s: -s[0])
    return scored


@pytest.mark.parametrize("layout,mode", LAYOUT_MODES)
def test_beam_search_equals_brute_force_enumeration(layout, mode):
    g, table, tok = make(layout, mode)
    model = peaky_model(tok.vocab_size, seed=3, scale=4.0)
    prompts = prompts_for(tok)
    results = beam_search(model, g, prompts, beam_width=table.num_items)  # wide enough to be exact
    for prompt, res in zip(prompts, results):
        want = brute_force_ranking(model, g, tok, table, prompt)
        assert len(res.items) == table.num_items == len(set(res.items))
        assert res.scores == sorted(res.scores, reverse=True)
        torch.testing.assert_close(torch.tensor(res.scores), torch.tensor([s for s, _ in want]), atol=1e-4, rtol=0)
        for (s, item), got in zip(want, res.items):  # same order, up to near-ties
            assert got == item or abs(s - want[[i for _, i in want].index(got)][0]) < 1e-4
        for item, sid, resp in zip(res.items, res.sids, res.responses):
            p = g.parse(resp)
            assert p.valid and p.item == item and p.sid_ids == sid
        if mode == "reasoning":
            assert res.thinking and all(tok.token_level[x] < 0 for x in res.thinking)


@pytest.mark.parametrize("layout,mode", LAYOUT_MODES)
def test_beam_width_one_is_greedy_and_batching_does_not_matter(layout, mode):
    g, table, tok = make(layout, mode)
    model = peaky_model(tok.vocab_size, seed=4, scale=4.0)
    prompts = prompts_for(tok)
    greedy = sample(model, g, prompts, greedy=True)
    b1 = beam_search(model, g, prompts, beam_width=1)
    for i, res in enumerate(b1):
        assert res.items == [g.parse(greedy.responses[i]).item]
        assert res.responses[0] == greedy.responses[i][greedy.mask[i]].tolist()
    batched = beam_search(model, g, prompts, beam_width=3)
    for prompt, res in zip(prompts, batched):
        alone = beam_search(model, g, [prompt], beam_width=3)[0]
        assert res.items == alone.items and len(res.items) == 3
        torch.testing.assert_close(torch.tensor(res.scores), torch.tensor(alone.scores), atol=1e-4, rtol=0)


def test_beam_search_without_dedup_tokens_returns_distinct_sids():
    g, table, tok = make("blocks_first", "sid_only", dedup=False)
    res = beam_search(uniform_model(tok.vocab_size), g, prompts_for(tok, (2,)), beam_width=10)[0]
    distinct = {tuple(table.tokens(i)) for i in range(table.num_items)}
    assert len(res.items) == len(distinct) == len({tuple(s) for s in res.sids})
    # uniform model: score = sum of -log(branching) along the trie path (hand answer)
    for sid, score in zip(res.sids, res.scores):
        want = sum(-math.log(len(g.trie.next_tokens(sid[:k]))) for k in range(len(sid)))
        assert score == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("layout,mode", LAYOUT_MODES)
def test_beam_search_leaving_out_items_equals_the_exact_ranking_without_them(layout, mode):
    """exclude: no excluded item is ever returned, the list is still filled, the scores are the model's own, and
    a beam wide enough to be exact returns the full ranking with the excluded items taken out."""
    g, table, tok = make(layout, mode)
    model = peaky_model(tok.vocab_size, seed=5, scale=4.0)
    prompts = prompts_for(tok)
    exclude = [{0, 3}, {7, 2, 5}, set(range(table.num_items)) - {6}]
    full = beam_search(model, g, prompts, beam_width=table.num_items)
    exact = beam_search(model, g, prompts, beam_width=table.num_items, exclude=exclude)
    narrow = beam_search(model, g, prompts, beam_width=3, exclude=exclude)
    for f, e, n, ex in zip(full, exact, narrow, exclude):
        assert e.items == [i for i in f.items if i not in ex]
        assert e.scores == pytest.approx([s for i, s in zip(f.items, f.scores) if i not in ex], abs=1e-5)
        assert not set(n.items) & ex and len(n.items) == min(3, table.num_items - len(ex))


def test_beam_rollouts_leaving_out_seen_items_are_the_filtered_beam_list():
    """rl.exclude_seen: a beam group is the top G of the beam list without each prompt's excluded items (the
    list eval.exclude_seen scores); sampled groups cannot leave items out, so asking for it is an error."""
    g, table, tok = make("blocks_first", "sid_only")
    model = peaky_model(tok.vocab_size, seed=5, scale=4.0)
    prompts = prompts_for(tok)
    exclude = [{0, 3}, {7, 2, 5}, {1}]
    G = 4
    ro = rollouts(model, g, prompts, G, mode="beam", exclude=exclude)
    for j, (res, ex) in enumerate(zip(beam_search(model, g, prompts, G, exclude=exclude), exclude)):
        rows = [[t for t in r if t != tok.pad_id] for r in ro.responses[j * G:(j + 1) * G].tolist()]
        assert rows == res.responses[:G] and not set(res.items) & ex
    assert ro.responses.tolist() != rollouts(model, g, prompts, G, mode="beam").responses.tolist()
    with pytest.raises(ValueError, match="rollout='beam'"):
        rollouts(model, g, prompts, G, mode="sample", exclude=exclude)


def test_a_sid_only_model_without_word_tokens_decodes_as_the_full_one():
    """model.words=False: a sid_only model's vocabulary stops before the first word (it never reads or writes one).
    The full model with its word rows dropped gives the same beams and the same constrained log-probs."""
    g, table, tok = make("blocks_first", "sid_only")
    V = min(tok.word_ids)
    small = Grammar(tok, g.trie, 3, mode="sid_only", vocab_size=V)
    full = peaky_model(tok.vocab_size, seed=6, scale=4.0)
    cut = GPT(ModelConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=2, max_seq_len=128)).eval()
    cut.load_state_dict({k: v[:V] if k == "wte.weight" else v for k, v in full.state_dict().items()})
    sids = [i for i, level in enumerate(tok.token_level) if level >= 0]
    prompts = [[tok.bos_id] + sids[i:i + 5] + [tok.sep_id] for i in (0, 3, 7)]
    for a, b in zip(beam_search(full, g, prompts, 6), beam_search(cut, small, prompts, 6)):
        assert a.items == b.items and a.scores == pytest.approx(b.scores, abs=1e-5)
    ro = sample(full, g, prompts, num_generations=2, generator=torch.Generator().manual_seed(0))
    lp_full, _ = response_logprobs(full, g, ro.prompts, ro.responses)
    lp_cut, _ = response_logprobs(cut, small, ro.prompts, ro.responses)
    torch.testing.assert_close(lp_full, lp_cut, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs the first"):
        Grammar(tok, g.trie, 3, mode="reasoning", vocab_size=V)
