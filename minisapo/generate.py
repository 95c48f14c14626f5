"""Decoding: grammar-constrained sampling, log-prob recomputation, constrained beam search.

Every decision goes through `Grammar` (minisapo/grammar.py): disallowed tokens get
logit -inf, the rest are renormalised. The same masks are used by

* `sample`            rollouts for RL (and greedy decoding), with a KV cache;
* `response_logprobs` the RL loss: one full forward pass, with gradients;
* `beam_search`       evaluation (the paper's protocol): greedy thinking, then a beam
                      over SID tokens only.

Prompts have different lengths, so a batch is **left-padded** and the model is given
`attn_mask` (True = real token). Rows that have finished (or are waiting for other rows)
feed a padding "hole" with mask False, so all rows stay in lock-step with one KV cache.
The model runs under `autocast(device)`; sampling decisions are taken in float32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from minisapo.grammar import Grammar
from minisapo.model import autocast
from minisapo.files import NonFiniteError


@dataclass
class Rollouts:
    """B = len(prompts) * num_generations responses; the rows of one prompt are contiguous."""

    responses: torch.Tensor  # (B, T) long: response token ids, <pad> after <eos>
    logprobs: torch.Tensor  # (B, T) float: log-prob of each token under the constrained distribution at the
    #                         sampling temperature; 0 on padding
    forced: torch.Tensor  # (B, T) bool: the grammar allowed only this token (its log-prob is 0)
    mask: torch.Tensor  # (B, T) bool: real response tokens, <eos> included
    prompts: list[list[int]]  # (B,) the prompt of each row
    num_generations: int = 1  # G: responses per prompt
    given: torch.Tensor | None = None  # (B, T) bool: tokens written greedily, not sampled (greedy thinking);
    #                                    RL treats them like the prompt (no loss). None: every token was sampled


@dataclass
class BeamResult:
    """Beam search output for one prompt, best first."""

    items: list[int]  # ranked distinct valid items (at most beam_width)
    scores: list[float]  # sum of the SID tokens' constrained log-probs, one per item
    sids: list[list[int]] = field(default_factory=list)  # SID token ids of each item
    responses: list[list[int]] = field(default_factory=list)  # full response (thinking + SID + <eos>) per item
    thinking: list[int] = field(default_factory=list)  # greedy reasoning tokens of the best beam


# ----------------------------------------------------------------------------------------------
# helpers


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _in_eval_mode(fn):
    """Decorator: run `fn(model, ...)` with the model in eval mode (no dropout), then restore its mode."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)
    return wrapper


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists -> ids (B, L) and real-token mask (B, L)."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    real = torch.zeros(len(seqs), L, dtype=torch.bool)
    for b, s in enumerate(seqs):
        if len(s) == 0:
            raise ValueError(f"prompt {b} is empty; every prompt needs at least one token")
        ids[b, L - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
        real[b, L - len(s) :] = True
    return ids.to(device), real.to(device)


def response_mask(responses: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """(B, T) bool: real response tokens = everything up to and including the first <eos>, no padding."""
    is_eos = (responses == eos_id).long()
    ended_before = (is_eos.cumsum(1) - is_eos) > 0  # an <eos> strictly before t
    return (responses != pad_id) & ~ended_before


def _constrained_logp(logits: torch.Tensor, allowed: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log-softmax over allowed tokens only: logits (..., V), allowed (..., V) bool -> (..., V), -inf elsewhere."""
    return F.log_softmax((logits.float() / temperature).masked_fill(~allowed, float("-inf")), dim=-1)


def _prefill(model, prompts: Sequence[Sequence[int]], pad_id: int, max_new_tokens: int):
    """Run the left-padded prompts through a fresh KV cache with room for `max_new_tokens` more tokens.
    Returns the cache and the float logits (P, V) after each prompt's last token."""
    dev = _device(model)
    ids, real = left_pad(prompts, pad_id, dev)  # (P, Lp)
    cache = model.new_cache(len(prompts), ids.shape[1] + max_new_tokens)
    with autocast(dev):
        return cache, model(ids, attn_mask=real, cache=cache)[:, -1].float()  # (P, V)


# ----------------------------------------------------------------------------------------------
# sampling


@torch.no_grad()
@_in_eval_mode
def sample(model, grammar: Grammar, prompts: Sequence[Sequence[int]], num_generations: int = 1,
           temperature: float = 1.0, generator: torch.Generator | Sequence[torch.Generator] | None = None,
           greedy: bool = False,
           max_new_tokens: int | None = None, use_cache: bool = True, greedy_think: bool = False) -> Rollouts:
    """Sample `num_generations` grammar-valid responses per prompt.

    temperature: > 0; log-probs are those of the constrained distribution at this temperature.
    generator:   torch.Generator for reproducible sampling (tokens are drawn on its device, CPU by default),
                 or one CPU generator per prompt: then a prompt's G responses depend only on its own generator,
                 not on the other prompts of the batch (so a batch split over processes samples the same).
    greedy:      take the most likely allowed token instead of sampling (log-probs still reported).
    greedy_think: write the thinking greedily (as evaluation does) and sample only the SID tokens, so
                 the G rows of a prompt share one thinking and differ only in their SIDs.
    max_new_tokens: cap on response length (default: the grammar's longest response).
    use_cache:   False recomputes the whole sequence every step (only to measure what the cache saves).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature}); use greedy=True for argmax decoding")
    dev = _device(model)
    tok = grammar.tok
    P, G = len(prompts), num_generations
    B = P * G
    T_max = max_new_tokens or grammar.max_length
    rep = torch.arange(P, device=dev).repeat_interleave(G)  # row b -> its prompt

    if use_cache:
        cache, logits = _prefill(model, prompts, tok.pad_id, T_max)  # (P, V): prefill each prompt once
        cache.reorder(rep)  # ... then copy it for the G samples
        logits = logits[rep]  # (B, V)
    else:
        ids, real = left_pad(prompts, tok.pad_id, dev)  # (P, Lp)
        seq, seq_real = ids[rep], real[rep]  # (B, Lp), grows by one column per step

    states = [grammar.start()] * B
    done = torch.zeros(B, dtype=torch.bool)  # row has produced <eos>
    out_tok, out_lp, out_forced, out_mask = [], [], [], []
    per_prompt = isinstance(generator, (list, tuple))
    if per_prompt and len(generator) != P:
        raise ValueError(f"{len(generator)} generators for {P} prompts: pass one per prompt (or a single one)")
    gen_dev = generator.device if generator is not None and not per_prompt else torch.device("cpu")
    for t in range(T_max):
        if not use_cache:
            with autocast(dev):
                logits = model(seq, attn_mask=seq_real)[:, -1]  # (B, V): the whole sequence again
        allowed = grammar.batch_mask(states)  # (B, V) CPU
        logp = _constrained_logp(logits, allowed.to(dev), temperature)  # (B, V)
        if torch.isnan(logp).any():
            raise NonFiniteError("the policy's next-token probabilities are NaN (its weights diverged): lower the "
                                 "learning rate; the last good checkpoint is kept")
        if greedy:
            nxt = logp.argmax(-1)  # (B,)
        else:
            if per_prompt:  # inverse-CDF draw with one uniform per row from its prompt's own stream
                u = torch.cat([torch.rand(G, generator=g, dtype=torch.float64) for g in generator])  # (B,)
                cdf = logp.exp().double().cpu().cumsum(-1)  # (B, V)
                nxt = (cdf < (u * cdf[:, -1]).clamp(min=1e-300)[:, None]).sum(-1).to(dev)  # (B,)
            else:
                nxt = torch.multinomial(logp.exp().to(gen_dev), 1, generator=generator).squeeze(1).to(dev)  # (B,)
            if greedy_think:  # rows inside a thinking block take the argmax instead
                thinking = torch.tensor([s.phase in ("open", "think") for s in states], device=dev)
                nxt = torch.where(thinking, logp.argmax(-1), nxt)
        nxt = nxt.to(dev)
        lp = logp.gather(1, nxt[:, None]).squeeze(1).cpu()  # (B,)
        nxt = nxt.cpu()
        live = ~done
        nxt = torch.where(live, nxt, torch.full_like(nxt, tok.pad_id))
        out_tok.append(nxt)
        out_lp.append(torch.where(live, lp, torch.zeros_like(lp)))
        out_forced.append(live & (allowed.sum(1) == 1))
        out_mask.append(live)
        states = [s if d else grammar.step(s, x) for s, d, x in zip(states, done.tolist(), nxt.tolist())]
        done = done | (nxt == tok.eos_id)
        if bool(done.all()) or t == T_max - 1:
            break
        feed, feed_real = nxt[:, None].to(dev), live[:, None].to(dev)  # finished rows feed a padding hole
        if use_cache:
            with autocast(dev):
                logits = model(feed, attn_mask=feed_real, cache=cache)[:, -1]  # (B, V)
        else:
            seq, seq_real = torch.cat([seq, feed], 1), torch.cat([seq_real, feed_real], 1)

    return Rollouts(
        responses=torch.stack(out_tok, 1).to(dev),  # (B, T)
        logprobs=torch.stack(out_lp, 1).to(dev),
        forced=torch.stack(out_forced, 1).to(dev),
        mask=torch.stack(out_mask, 1).to(dev),
        prompts=[list(prompts[p]) for p in rep.tolist()],
        num_generations=G,
    )


# ----------------------------------------------------------------------------------------------
# RL rollouts: the G responses of each prompt, three ways


ROLLOUTS = ("sample", "greedy_think", "beam")


def rollouts(model, grammar: Grammar, prompts: Sequence[Sequence[int]], num_generations: int, mode: str = "sample",
             temperature: float = 1.0, generator=None, max_new_tokens: int | None = None,
             exclude: Sequence[Iterable[int]] | None = None) -> Rollouts:
    """The group of G = num_generations responses of every prompt, as RL uses them.

    sample        G samples at `temperature`, thinking included (the textbook GRPO group);
    greedy_think  the thinking written greedily, as evaluation writes it, then G sampled SIDs;
    beam          the thinking written greedily, then the top G distinct items of the constrained beam
                  search: the group is the ranked list evaluation scores (MiniOneRec's beam rollouts).
    In the last two, `given` marks the greedy thinking tokens (not sampled: RL gives them no loss).
    `generator` as for `sample` (unused by beam search, which is deterministic); `exclude` (beam only): per
    prompt, items its beams leave out (`beam_search`).
    """
    if mode not in ROLLOUTS:
        raise ValueError(f"rollout={mode!r}: choose one of {', '.join(ROLLOUTS)}")
    if exclude is not None and mode != "beam":
        raise ValueError(f"exclude leaves items out of a ranked group: it needs rollout='beam', not {mode!r}")
    tok = grammar.tok
    if mode != "beam":
        ro = sample(model, grammar, prompts, num_generations=num_generations, temperature=temperature,
                    generator=generator, max_new_tokens=max_new_tokens, greedy_think=mode == "greedy_think")
        thinking = torch.as_tensor(tok.token_level, device=ro.responses.device)[ro.responses] < 0
        ro.given = ro.mask & thinking & (ro.responses != tok.eos_id) if mode == "greedy_think" else None
        return ro
    G, dev = num_generations, _device(model)
    rows = []
    for p, res in zip(prompts, beam_search(model, grammar, prompts, G, exclude=exclude)):
        if len(res.responses) < G:
            raise ValueError(f"rollout=beam needs num_generations <= the number of distinct SIDs the trie allows "
                             f"after a prompt; got {len(res.responses)} beams for num_generations={G}")
        rows += res.responses[:G]
    T = max(len(r) for r in rows)
    responses = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        responses[i, :len(r)] = torch.as_tensor(r)
    mask = responses != tok.pad_id
    given = mask & (torch.as_tensor(tok.token_level)[responses] < 0) & (responses != tok.eos_id)
    zeros = torch.zeros(responses.shape)
    return Rollouts(responses.to(dev), zeros.to(dev), zeros.bool().to(dev), mask.to(dev),
                    [list(p) for p in prompts for _ in range(G)], G, given.to(dev))


# ----------------------------------------------------------------------------------------------
# log-probs for the RL loss


def response_logprobs(model, grammar: Grammar, prompts: Sequence[Sequence[int]], responses: torch.Tensor,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob (B, T) of every response token and entropy (B, T) of the constrained distribution,
    both at `temperature`, with gradients, under the grammar's masks (the ones the sampler used). 0 on
    padding. Each distinct prompt is run once and its keys/values are shared by its rows (the G responses of
    a group), with gradients through them: the same numbers as one full forward pass per row, less work."""
    dev = _device(model)
    tok = grammar.tok
    responses = responses.to(dev)
    B, T = responses.shape
    if len(prompts) != B:
        raise ValueError(f"{len(prompts)} prompts for {B} responses; pass one prompt per row (Rollouts.prompts)")
    distinct: dict[tuple, int] = {}
    row_prompt = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompts], device=dev)  # (B,)
    ids, real = left_pad([list(p) for p in distinct], tok.pad_id, dev)  # (P, Lp)
    resp_real = response_mask(responses, tok.eos_id, tok.pad_id)  # (B, T)
    cache = model.new_cache(len(distinct), ids.shape[1] + T, grad=True)
    with autocast(dev):
        h_prompt = model.hidden_states(ids, attn_mask=real, cache=cache)[:, -1:]  # (P, 1, C): predicts token 0
        cache.reorder(row_prompt)  # each row gets its prompt's keys/values
        h = h_prompt[row_prompt]  # (B, 1, C)
        if T > 1:  # position t predicts response token t from response token t-1
            h = torch.cat([h, model.hidden_states(responses[:, :-1], attn_mask=resp_real[:, :-1], cache=cache)], 1)
        logits = model.logits(h)  # (B, T, V)
    allowed = grammar.masks(responses)  # (B, T, V)
    logp_all = _constrained_logp(logits, allowed, temperature)  # (B, T, V)
    logp = logp_all.gather(2, responses[..., None]).squeeze(2)  # (B, T)
    p = logp_all.exp()
    entropy = -(p * logp_all.masked_fill(~allowed, 0.0)).sum(-1)  # (B, T)
    zero = torch.zeros((), device=dev)
    return torch.where(resp_real, logp, zero), torch.where(resp_real, entropy, zero)


# ----------------------------------------------------------------------------------------------
# constrained beam search (evaluation)


@torch.no_grad()
@_in_eval_mode
def beam_search(model, grammar: Grammar, prompts: Sequence[Sequence[int]], beam_width: int,
                exclude: Sequence[Iterable[int]] | None = None) -> list[BeamResult]:
    """The paper's evaluation protocol, batched over prompts.

    Thinking is decoded greedily (constrained argmax); then a beam of `beam_width` runs over
    the SID tokens only, scored by the sum of the SID tokens' constrained log-probs (no top-k,
    no top-p). In the `interleaved` layout every beam greedily writes its own next thinking
    block before its next SID token. Complete SIDs compete with partial ones for the
    `beam_width` places (log-probs only fall as a SID grows), so with beam_width >= number of
    items the ranking is exact. Returns, per prompt, up to `beam_width` distinct valid items
    ranked by score. Use beam_width >= the largest K of hit@K.

    exclude: per prompt, items that must not be returned (e.g. the user's seen items). Scores stay the
    model's own (nothing is renormalised); a beam is never extended into a SID of an excluded item nor into
    a prefix whose every item is excluded (`SIDTrie.blocked_prefixes`), so the W places go to other items.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    dev = _device(model)
    tok = grammar.tok
    P, W = len(prompts), beam_width
    blocked = [grammar.trie.blocked_prefixes(e) for e in exclude] if exclude is not None else None
    cache, last = _prefill(model, prompts, tok.pad_id, grammar.max_length)  # (R, V) logits after each row's last token

    # live beams, one row of the cache each: prompt index, grammar state, response so far, SID score
    rows = [dict(p=p, state=grammar.start(), resp=[], score=0.0) for p in range(P)]
    finished: list[list[dict]] = [[] for _ in range(P)]  # complete SIDs that are (still) in the top W

    def feed(tokens: list[int], is_real: list[bool]):
        """One lock-step forward: row r feeds tokens[r] (a padding hole where not is_real[r])."""
        x = torch.tensor(tokens, dtype=torch.long, device=dev)[:, None]
        m = torch.tensor(is_real, dtype=torch.bool, device=dev)[:, None]
        with autocast(dev):
            return model(x, attn_mask=m, cache=cache)[:, -1].float()  # (R, V)

    while rows:
        # (1) greedy thinking: rows not at a SID position take the constrained argmax; the others wait
        while any(r["state"].phase != "sid" for r in rows):
            allowed = grammar.batch_mask([r["state"] for r in rows]).to(dev)  # (R, V)
            best = last.masked_fill(~allowed, float("-inf")).argmax(-1).tolist()  # (R,)
            thinking = [r["state"].phase != "sid" for r in rows]
            toks = [b if th else tok.pad_id for b, th in zip(best, thinking)]
            for r, th, x in zip(rows, thinking, toks):
                if th:
                    r["state"] = grammar.step(r["state"], x)
                    r["resp"] = r["resp"] + [x]
            new_last = feed(toks, thinking)
            keep = torch.tensor(thinking, device=dev)[:, None]
            last = torch.where(keep, new_last, last)

        # (2) one SID token: expand every beam by every trie-valid token, keep the top W per prompt
        allowed = grammar.batch_mask([r["state"] for r in rows]).to(dev)  # (R, V)
        logp = _constrained_logp(last, allowed).cpu()  # (R, V)
        cands: list[list[tuple]] = [[(f["score"], -1, None, f) for f in finished[p]] for p in range(P)]
        for i, r in enumerate(rows):
            for x in grammar.allowed_ids(r["state"]):
                if blocked is not None and r["state"].sid + (x,) in blocked[r["p"]]:
                    continue
                cands[r["p"]].append((r["score"] + float(logp[i, x]), i, x, None))
        parents, new_rows = [], []
        for p in range(P):
            top = sorted(cands[p], key=lambda c: -c[0])[:W]  # stable: ties keep expansion order
            finished[p] = []
            for score, i, x, fin in top:
                if fin is not None:
                    finished[p].append(fin)
                    continue
                r = rows[i]
                state = grammar.step(r["state"], x)
                beam = dict(p=p, state=state, resp=r["resp"] + [x], score=score)
                if state.phase == "eos":  # complete SID: the beam is finished
                    beam["resp"] = beam["resp"] + [tok.eos_id]
                    finished[p].append(beam)
                else:
                    parents.append(i)
                    new_rows.append(beam)
        rows = new_rows
        if rows:
            index = torch.tensor(parents, dtype=torch.long, device=dev)
            cache.reorder(index)
            last = feed([r["resp"][-1] for r in rows], [True] * len(rows))

    results = []
    for p in range(P):
        beams = sorted(finished[p], key=lambda b: -b["score"])
        sids = [list(b["state"].sid) for b in beams]
        responses = [b["resp"] for b in beams]
        results.append(BeamResult(
            items=[grammar.trie.item(s) for s in sids],
            scores=[b["score"] for b in beams],
            sids=sids,
            responses=responses,
            thinking=[x for x in responses[0] if tok.token_level[x] < 0 and x != tok.eos_id] if responses else [],
        ))
    return results
