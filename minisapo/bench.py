"""Performance measurements (`minisapo bench`).

    rows = run_benchmarks(device="auto")
    print(format_table(rows))

`bench_sampling` times grammar-constrained sampling (the RL rollout step) for a randomly
initialised model of a preset size, with and without the KV cache, side by side in one
run on the same machine. Both runs use the same seed, so they generate exactly the same
tokens; only the time differs. The catalog, vocabulary and prompts are synthetic (random
codes and words): speed does not depend on what the tokens mean.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from minisapo.generate import sample
from minisapo.grammar import Grammar
from minisapo.model import MODEL_PRESETS, GPT, ModelConfig, pick_device


def _synthetic_world(num_items: int, codebook: int, num_words: int, seed: int):
    from minisapo.sid import SIDTable, SIDTrie, Tokenizer  # sid/ sits below generation; imported lazily

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, codebook, size=(num_items, 3))
    table = SIDTable.from_codes(codes, codebook_sizes=[codebook] * 3)
    words = [f"w{i}" for i in range(num_words)]
    tok = Tokenizer.build([" ".join(words)], table)
    return table, tok, SIDTrie(table, tok)


def bench_sampling(preset: str = "small", device: str = "auto", num_prompts: int = 16, num_generations: int = 4,
                   prompt_len: int = 40, max_think_tokens: int = 16, layout: str = "blocks_first",
                   num_items: int = 512, seed: int = 0, num_threads: int | None = None) -> dict:
    """Sampling throughput with vs without the KV cache. Returns a dict (see `format_table`).

    num_threads: torch CPU threads for the measurement (None = leave as is). On a CPU shared
    with other jobs, 1 thread gives the steadiest numbers.
    """
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _bench_sampling(preset, device, num_prompts, num_generations, prompt_len, max_think_tokens, layout,
                               num_items, seed)
    finally:
        torch.set_num_threads(old_threads)


def _bench_sampling(preset, device, num_prompts, num_generations, prompt_len, max_think_tokens, layout,
                    num_items, seed) -> dict:
    dev = pick_device(device)
    table, tok, trie = _synthetic_world(num_items, codebook=16, num_words=500, seed=seed)
    grammar = Grammar(tok, trie, num_steps=3, layout=layout, max_think_tokens=max_think_tokens)
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, **MODEL_PRESETS[preset])
    model = GPT(cfg).to(dev).eval()
    g = torch.Generator().manual_seed(seed)
    words = torch.tensor(tok.word_ids)
    prompts = [[tok.bos_id] + words[torch.randint(len(words), (prompt_len - 2,), generator=g)].tolist() + [tok.sep_id]
               for _ in range(num_prompts)]

    def timed(use_cache: bool):
        sample(model, grammar, prompts[:2], 1, generator=torch.Generator().manual_seed(seed),
               use_cache=use_cache, max_new_tokens=4)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ro = sample(model, grammar, prompts, num_generations, generator=torch.Generator().manual_seed(seed),
                    use_cache=use_cache)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, ro

    t_cache, ro_cache = timed(True)
    t_full, ro_full = timed(False)
    tokens = int(ro_cache.mask.sum())
    return dict(
        benchmark="sampling",
        device=str(dev),
        threads=torch.get_num_threads(),
        preset=preset,
        params=model.num_params(),
        batch=num_prompts * num_generations,
        prompt_len=prompt_len,
        response_len=int(ro_cache.responses.shape[1]),
        tokens=tokens,
        same_tokens=bool(torch.equal(ro_cache.responses, ro_full.responses)),
        seconds_cache=t_cache,
        seconds_no_cache=t_full,
        tokens_per_s_cache=tokens / t_cache,
        tokens_per_s_no_cache=tokens / t_full,
        speedup=t_full / t_cache,
    )


def run_benchmarks(device: str = "auto", preset: str = "small", num_threads: int | None = None) -> list[dict]:
    """All benchmarks, one dict per row."""
    return [bench_sampling(preset=preset, device=device, num_threads=num_threads)]


def format_table(rows: list[dict]) -> str:
    """A plain-text table of benchmark rows."""
    head = f"{'benchmark':<10} {'device':<7} {'thr':>3} {'preset':<6} {'params':>9} {'batch':>5} {'tokens':>7} " \
           f"{'tok/s cache':>12} {'tok/s no cache':>15} {'speedup':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['benchmark']:<10} {r['device']:<7} {r['threads']:>3} {r['preset']:<6} {r['params']:>9,} {r['batch']:>5} "
                     f"{r['tokens']:>7} {r['tokens_per_s_cache']:>12,.0f} {r['tokens_per_s_no_cache']:>15,.0f} "
                     f"{r['speedup']:>7.1f}x")
    return "\n".join(lines)
