"""Performance measurements (`minisapo bench`).

    rows = run_benchmarks(device="auto")          # preset "small", 1 CPU thread
    print(format_table(rows))

Every row compares two settings measured side by side in one run, on the same machine,
model and prompts, and gives their ratio:

    sampling     grammar-constrained sampling with vs without the KV cache (same seed, so the
                 same tokens: only the time differs)
    rl step      the two phases of an RL step that cost: sampling the G rollouts vs the
                 `response_logprobs` forward + backward on them (the loss itself is tiny)
    sft step     SFT training throughput, forward + backward vs forward only, on one batch;
                 tokens = response tokens, as `tokens_per_s` in the SFT metrics
    beam search  the paper's evaluation decoding (greedy thinking + constrained beam over SIDs)
                 vs plain greedy decoding, for the same prompts
    grammar      time in the grammar (`batch_mask` + `step`) during the rl step's sampling vs
                 that sampling's total time (best run: the mask cache is warm, as in training)

The model is randomly initialised and the catalog, vocabulary and prompts are synthetic
(random codes and words): speed does not depend on what the tokens mean. Threads default
to 1 so numbers are steady on a shared machine. Every setting is timed `repeat` times
(default 3; the slow no-cache sampling at most twice), alternating the two settings of a
row so both see the same load, and the best time is kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from minisapo.config import ConfigError, make_config  # the run presets are the one source of model sizes
from minisapo.generate import beam_search, response_logprobs, sample
from minisapo.grammar import Grammar
from minisapo.model import GPT, autocast, pick_device
from minisapo.runs import check_device
from minisapo.sft import collate, masked_token_loss
from minisapo.sid import SIDTable, SIDTrie
from minisapo.tokenizer import Tokenizer


# ----------------------------------------------------------------------------------------------
# the synthetic setup shared by every row


@dataclass
class _Setup:
    dev: torch.device
    tok: object  # minisapo.sid Tokenizer
    trie: object  # minisapo.sid SIDTrie
    model: GPT
    prompts: list[list[int]]
    layout: str
    max_think_tokens: int

    def grammar(self) -> Grammar:
        """A fresh grammar (its mask cache starts empty)."""
        return Grammar(self.tok, self.trie, num_steps=3, layout=self.layout, max_think_tokens=self.max_think_tokens)


def _synthetic_world(num_items: int, codebook: int, num_words: int, seed: int):

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, codebook, size=(num_items, 3))
    table = SIDTable.from_codes(codes, codebook_sizes=[codebook] * 3)
    words = [f"w{i}" for i in range(num_words)]
    tok = Tokenizer.build([" ".join(words)], table)
    return table, tok, SIDTrie(table, tok)


def _setup(preset: str, device: str, num_prompts: int, prompt_len: int, max_think_tokens: int, layout: str,
           num_items: int, seed: int) -> _Setup:
    dev = pick_device(device)
    _, tok, trie = _synthetic_world(num_items, codebook=16, num_words=500, seed=seed)
    torch.manual_seed(seed)

    mcfg = make_config(preset=preset).model
    mcfg.vocab_size = tok.vocab_size
    model = GPT(mcfg).to(dev).eval()
    g = torch.Generator().manual_seed(seed)
    words = torch.tensor(tok.word_ids)
    prompts = [[tok.bos_id] + words[torch.randint(len(words), (prompt_len - 2,), generator=g)].tolist() + [tok.sep_id]
               for _ in range(num_prompts)]
    return _Setup(dev, tok, trie, model, prompts, layout, max_think_tokens)


def _time_pair(fn_a, fn_b, dev: torch.device, repeat: int):
    """Time fn_a() and fn_b() `repeat` times each, alternating (so both see the same machine load).
    Returns (seconds of every fn_a call, of every fn_b call, fn_a's last result, fn_b's last result)."""
    times: tuple[list[float], list[float]] = ([], [])
    out = [None, None]
    for _ in range(repeat):
        for i, fn in enumerate((fn_a, fn_b)):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out[i] = fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[i].append(time.perf_counter() - t0)
    return times[0], times[1], out[0], out[1]


def _row(benchmark: str, a: str, b: str, value_a: float, value_b: float, unit: str, ratio: float, meaning: str,
         **extra) -> dict:
    """One table row: settings a and b, their value in `unit` ("tok/s" or "s"), the ratio and what it means."""
    return dict(benchmark=benchmark, a=a, b=b, value_a=value_a, value_b=value_b, unit=unit, ratio=ratio,
                meaning=meaning, **extra)


class _TimedGrammar:
    """A Grammar that adds up the seconds spent in `batch_mask` and `step` (everything else is delegated)."""

    def __init__(self, grammar: Grammar):
        self._g, self.seconds = grammar, 0.0

    def __getattr__(self, name):
        return getattr(self._g, name)

    def batch_mask(self, states):
        t0 = time.perf_counter()
        m = self._g.batch_mask(states)
        self.seconds += time.perf_counter() - t0
        return m

    def step(self, state, token):
        t0 = time.perf_counter()
        s = self._g.step(state, token)
        self.seconds += time.perf_counter() - t0
        return s


# ----------------------------------------------------------------------------------------------
# the rows


def _bench_kv_cache(s: _Setup, num_prompts: int, num_generations: int, repeat: int, seed: int) -> dict:
    """(a) sampling with vs without the KV cache, same seed -> same tokens."""
    prompts, grammar = s.prompts[:num_prompts], s.grammar()

    def run(use_cache: bool):
        return sample(s.model, grammar, prompts, num_generations, generator=torch.Generator().manual_seed(seed),
                      use_cache=use_cache)

    t_cache, t_full, ro_cache, ro_full = _time_pair(lambda: run(True), lambda: run(False), s.dev, min(repeat, 2))
    t_cache, t_full = min(t_cache), min(t_full)
    tokens = int(ro_cache.mask.sum())
    same = bool(torch.equal(ro_cache.responses, ro_full.responses))
    return _row("sampling", f"KV cache, {len(ro_cache.mask)} rows", "no cache", tokens / t_cache, tokens / t_full,
                "tok/s", t_full / t_cache, f"KV cache is {t_full / t_cache:.1f}x faster"
                + ("" if same else " (WARNING: different tokens)"),
                same_tokens=same, tokens=tokens, rows=len(ro_cache.mask))


def _bench_rl_step(s: _Setup, num_generations: int, repeat: int, seed: int) -> tuple[dict, dict, object]:
    """(b) RL step: sampling vs response_logprobs forward+backward; (e) the grammar's share of that sampling.
    Also returns the rollouts (the SFT row trains on them)."""
    grammar = _TimedGrammar(s.grammar())
    grammar_seconds = []  # per sampling run
    ro = sample(s.model, grammar._g, s.prompts, num_generations, generator=torch.Generator().manual_seed(seed))

    def rollouts():
        grammar.seconds = 0.0
        out = sample(s.model, grammar, s.prompts, num_generations, generator=torch.Generator().manual_seed(seed))
        grammar_seconds.append(grammar.seconds)
        return out

    def fwd_bwd():  # on the same rollouts every time (the first, untimed sampling run's)
        lp, _ = response_logprobs(s.model, grammar._g, ro.prompts, ro.responses)  # (B, T)
        (-lp.float().sum() / ro.mask.sum()).backward()
        s.model.zero_grad(set_to_none=True)

    t_samples, t_losses, _, _ = _time_pair(rollouts, fwd_bwd, s.dev, repeat)
    best = min(range(repeat), key=t_samples.__getitem__)
    t_sample, t_grammar, t_loss = t_samples[best], grammar_seconds[best], min(t_losses)
    B = len(ro.mask)
    share = t_sample / (t_sample + t_loss)
    rl = _row("rl step", f"sampling, {B} rows", "logprobs fwd+bwd", t_sample, t_loss, "s", t_sample / t_loss,
              f"sampling takes {t_sample / t_loss:.1f}x fwd+bwd ({share:.0%} of the two)", rows=B,
              tokens=int(ro.mask.sum()))
    gr = _row("grammar", "batch_mask+step", "whole sampling", t_grammar, t_sample, "s", t_grammar / t_sample,
              f"grammar is {t_grammar / t_sample:.0%} of sampling time", rows=B)
    return rl, gr, ro


def _bench_sft(s: _Setup, ro, batch_size: int, repeat: int) -> dict:
    """(c) SFT training throughput: forward+backward vs forward only, on (prompt, sampled response) examples."""

    rows = range(min(batch_size, len(ro.mask)))
    examples = [(ro.prompts[b], ro.responses[b][ro.mask[b]].tolist()) for b in rows]
    x, y, m = (t.to(s.dev) for t in collate(examples, s.tok.pad_id))  # (B, T) each
    tokens = int(m.sum())  # response tokens, as sft's tokens_per_s
    model = s.model.train()

    def fwd_bwd():
        with autocast(s.dev):
            logits = model(x)  # (B, T, V)
        masked_token_loss(logits, y, m).backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def fwd():
        with autocast(s.dev):
            return masked_token_loss(model(x), y, m)

    try:
        t_train, t_fwd, _, _ = _time_pair(fwd_bwd, fwd, s.dev, repeat)
    finally:
        model.eval()
    t_train, t_fwd = min(t_train), min(t_fwd)
    return _row("sft step", f"fwd+bwd, {len(examples)} ex", "fwd only", t_train, t_fwd, "s", t_train / t_fwd,
                f"fwd+bwd costs {t_train / t_fwd:.1f}x a forward pass ({tokens / t_train:,.0f} tok/s trained)",
                rows=len(examples), tokens=tokens, seq_len=int(x.shape[1]))


def _bench_beam(s: _Setup, beam_width: int, repeat: int) -> dict:
    """(d) constrained beam search vs greedy decoding for the same prompts."""
    grammar = s.grammar()
    t_beam, t_greedy, res, _ = _time_pair(lambda: beam_search(s.model, grammar, s.prompts, beam_width),
                                          lambda: sample(s.model, grammar, s.prompts, 1, greedy=True), s.dev, repeat)
    t_beam, t_greedy = min(t_beam), min(t_greedy)
    P = len(s.prompts)
    return _row("beam search", f"beam width {beam_width}", "greedy", t_beam, t_greedy, "s", t_beam / t_greedy,
                f"beam search costs {t_beam / t_greedy:.1f}x greedy ({P} prompts; both think greedily)", rows=P,
                ranked=sum(len(r.items) for r in res))


# ----------------------------------------------------------------------------------------------
# all rows, and the table


def run_benchmarks(device: str = "auto", preset: str = "small", num_threads: int | None = 1,
                   num_prompts: int = 16, num_generations: int = 4, cache_prompts: int = 8, prompt_len: int = 40,
                   max_think_tokens: int = 16, layout: str = "blocks_first", num_items: int = 512,
                   beam_width: int = 10, sft_batch: int = 32, repeat: int = 3, seed: int = 0) -> list[dict]:
    """All benchmarks, one dict per row (see `_row`); every row also carries the context
    (device, torch, threads, preset, params).

    num_threads: torch CPU threads during the measurements (None = leave as is); restored afterwards.
    cache_prompts: prompts for the with/without KV cache row (the no-cache run is the slow one).
    repeat: timed runs per setting (best kept); the no-cache sampling runs at most twice.
    """
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        s = _setup(preset, device, num_prompts, prompt_len, max_think_tokens, layout, num_items, seed)
        rl, gr, ro = _bench_rl_step(s, num_generations, repeat, seed)
        rows = [_bench_kv_cache(s, cache_prompts, num_generations, repeat, seed), rl,
                _bench_sft(s, ro, sft_batch, repeat), _bench_beam(s, beam_width, repeat), gr]
        context = dict(device=str(s.dev), torch=torch.__version__, threads=torch.get_num_threads(), preset=preset,
                       params=s.model.num_params(), layout=layout)
    finally:
        torch.set_num_threads(old_threads)
    return [{**r, **context} for r in rows]


def _fmt(value: float, unit: str) -> str:
    return f"{value:,.0f} tok/s" if unit == "tok/s" else f"{value:.3f} s"


def format_table(rows: list[dict]) -> str:
    """A plain-text table of benchmark rows, under a line with the device, torch version and threads."""
    if not rows:
        return "no benchmarks"
    c = rows[0]
    lines = [f"device {c['device']}, torch {c['torch']}, {c['threads']} thread(s), preset {c['preset']} "
             f"({c['params']:,} params), layout {c['layout']}"]
    head = f"{'benchmark':<12} {'A':<22} {'B':<17} {'A':>13} {'B':>13} {'ratio A/B':>9}  meaning"
    lines += [head, "-" * (len(head) + 30)]
    for r in rows:
        ratio = f"{r['ratio']:.0%}" if r["benchmark"] == "grammar" else f"{r['ratio']:.1f}x"
        lines.append(f"{r['benchmark']:<12} {r['a']:<22} {r['b']:<17} {_fmt(r['value_a'], r['unit']):>13} "
                     f"{_fmt(r['value_b'], r['unit']):>13} {ratio:>9}  {r['meaning']}")
    return "\n".join(lines)


def cmd_bench(overrides: dict) -> int:
    """`minisapo bench [--device=auto] [--preset=small] [--threads=1]`: side-by-side speed ratios."""
    known = ("device", "preset", "threads")
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise ConfigError(f"unknown bench option --{unknown[0]} (bench takes only --{', --'.join(known)})")
    preset = str(overrides.get("preset", "small"))
    make_config(preset=preset)  # an unknown preset is a clear error here
    try:
        threads = int(overrides.get("threads", 1))
    except ValueError:
        raise ConfigError(f"--threads takes a whole number, got {overrides['threads']!r}") from None
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    check_device(str(overrides.get("device", "auto")))
    print(format_table(run_benchmarks(device=str(overrides.get("device", "auto")), preset=preset,
                                     num_threads=threads)))
    return 0
