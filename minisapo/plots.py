"""Figures (matplotlib, Agg backend): a flat module of plot functions, each writing a PNG."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import torch  # noqa: E402

from minisapo import distributed  # noqa: E402
from minisapo.evaluate import SELECT_METRIC  # noqa: E402
from minisapo.files import atomic_write  # noqa: E402
from minisapo.generate import sample as sample_rollouts  # noqa: E402
from minisapo.rl import ALGOS, RLConfig, score_rollouts  # noqa: E402


def _save(fig, path, dpi: int = 110, **layout) -> Path:
    """tight_layout, write the PNG (atomically: files.atomic_write, under torchrun rank 0 only), close the
    figure; returns the path."""
    fig.tight_layout(**layout)
    path = Path(path)
    try:
        atomic_write(path, lambda p: fig.savefig(p, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------ SIDs: the code tree and codebook usage
def plot_sid_tree(table, stats: dict | None, path, top: int = 10, children: int = 3) -> Path:
    """Left: the SID tree's top two levels (the ``top`` largest level-1 codes and
    their ``children`` largest level-2 codes) labelled with descriptors and item
    counts. Right: codebook usage per level (sorted code frequencies)."""
    path = Path(path)
    codes = np.asarray(table.codes)
    K = table.num_levels
    c1 = Counter(codes[:, 0].tolist())
    c2 = Counter(map(tuple, codes[:, :2].tolist())) if K > 1 else Counter()
    rows = []  # (level-1 code, [level-2 codes])
    for a, _ in sorted(c1.items(), key=lambda t: (-t[1], t[0]))[:top]:
        kids = sorted(((k, n) for k, n in c2.items() if k[0] == a), key=lambda t: (-t[1], t[0]))[:children]
        rows.append((a, [k for k, _ in kids]))
    n_rows = sum(max(1, len(k)) for _, k in rows)

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, max(4.0, 0.32 * n_rows + 1.5)),
                                  gridspec_kw={"width_ratios": [2.2, 1]})
    ax.set_xlim(0, 1)
    ax.set_ylim(n_rows + 0.5, -0.5)
    ax.axis("off")
    ax.text(0.02, n_rows / 2, f"all\n{table.num_items} items", ha="left", va="center", fontsize=9,
            bbox=dict(boxstyle="round", fc="#eeeeee"))
    y = 0
    box1, box2 = dict(boxstyle="round", fc="#dce9f7"), dict(boxstyle="round", fc="#f7ecdc")
    for a, kids in rows:
        span = max(1, len(kids))
        ya = y + (span - 1) / 2
        key = f"<a_{a}>"
        ax.plot([0.13, 0.2], [n_rows / 2, ya], color="#999999", lw=0.6)
        ax.text(0.2, ya, f"{key} ({c1[a]})  {table.descriptors.get(key, '')}", va="center", fontsize=8, bbox=box1)
        for j, k in enumerate(kids):
            key2 = f"<a_{k[0]}><b_{k[1]}>"
            ax.plot([0.5, 0.58], [ya, y + j], color="#bbbbbb", lw=0.5)
            ax.text(0.58, y + j, f"<b_{k[1]}> ({c2[k]})  {table.descriptors.get(key2, '')}", va="center",
                    fontsize=7.5, bbox=box2)
        y += span
    shown = len(rows)
    ax.set_title(f"SID tree: {shown} largest of {len(c1)} level-1 codes (descriptor, items)", fontsize=10)

    for l in range(K):
        counts = np.bincount(codes[:, l], minlength=table.codebook_sizes[l])
        freq = np.sort(counts)[::-1] / max(1, counts.sum())
        lab = f"level {'abcdefgh'[l]}: K={table.codebook_sizes[l]}"
        if stats and "levels" in stats:
            s = stats["levels"][l]
            lab += f", usage {s['usage']:.2f}, ppl {s['perplexity']:.1f}"
        ax2.plot(np.arange(1, len(freq) + 1), freq, marker=".", ms=3, label=lab)
    ax2.set_yscale("log")
    ax2.set_xlabel("code rank")
    ax2.set_ylabel("fraction of items")
    title = "codebook usage"
    if stats and "collision_rate" in stats:
        title += f" (collisions before dedup: {stats['collision_rate']:.1%})"
    ax2.set_title(title, fontsize=10)
    ax2.legend(fontsize=7)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Token credit: the advantage each response token receives, per algorithm (the paper's idea in one figure)


def _short_token(tok: str, width: int = 6) -> str:
    """Compact cell label: <think> -> <t>, </think> -> </t>, long words cut."""
    tok = {"<think>": "<t>", "</think>": "</t>", "<eos>": "eos", "<pad>": ""}.get(tok, tok)
    return tok if len(tok) <= width else tok[: width - 1] + "."


def plot_token_credit(tokens, credits: dict, path, row_labels=None, title: str | None = None):
    """Heatmaps of the advantage each token receives, one panel per algorithm (stacked).

    tokens: G lists of token strings (the same group of rollouts in every panel);
    credits: {"GRPO": (G, T) array, "SAPO": (G, T) array, ...} from `token_credit` (below);
    row_labels: G strings (e.g. per-step hits "✓✓✗" and the reward). Blue = reinforced,
    red = discouraged, white = no credit. Each panel has its own symmetric colour scale.
    Returns the PNG path.
    """
    names = list(credits)
    mats = [np.asarray(credits[n].detach().cpu() if hasattr(credits[n], "detach") else credits[n], dtype=float)
            for n in names]
    G = len(tokens)
    T = max(len(t) for t in tokens) if tokens else 1
    # one panel per algorithm, stacked, so long responses stay readable
    fig, axes = plt.subplots(len(names), 1, figsize=(max(6.0, 0.3 * T) + 1.5, len(names) * (0.4 * G + 1.0) + 0.6),
                             squeeze=False)
    for ax, name, A in zip(axes[:, 0], names, mats):
        A = A[:, :T]
        vmax = 1.4 * (float(np.abs(A).max()) or 1.0)  # a little headroom keeps the labels readable
        im = ax.imshow(A, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
        for i, row in enumerate(tokens):
            for t, tok in enumerate(row[:T]):
                ax.text(t, i, _short_token(tok), ha="center", va="center", fontsize=5.5)
        ax.set_title(name)
        ax.set_xlabel("response token")
        ax.set_yticks(range(G))
        ax.set_yticklabels(row_labels if row_labels is not None else [f"rollout {i}" for i in range(G)], fontsize=7)
        ax.set_xticks([])
        fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, label="advantage")
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi=150)


# ----------------------------------------------------------------------------------------------
# Training and evaluation: a response's reasoning steps, SFT and RL curves, hit@K bars, sweeps

STEP_COLORS = ["#cfe2f3", "#d9ead3", "#fce5cd", "#ead1dc", "#fff2cc", "#d0e0e3", "#f4cccc", "#e6e6e6"]


def plot_response_steps(token_ids, tokenizer, num_steps: int, path, has_prompt: bool = True,
                        title: str | None = None, per_line: int = 14) -> Path:
    """One sequence with every token in a box coloured by its reasoning step (`reasoning.step_index`).

    Grey-outlined white boxes are outside every step (prompt, <eos>, padding). Long sequences wrap
    after `per_line` tokens. Returns the PNG path.
    """
    import torch

    from minisapo.reasoning import step_index

    ids = torch.as_tensor(list(token_ids), dtype=torch.long)[None]  # (1, T)
    steps = step_index(ids, tokenizer, num_steps, has_prompt=has_prompt)[0].tolist()
    toks = [tokenizer.id_to_token(int(i)) for i in ids[0]]
    n_lines = (len(toks) + per_line - 1) // per_line
    fig, ax = plt.subplots(figsize=(per_line * 0.85 + 0.5, 0.55 * n_lines + 1.3))
    ax.set_xlim(-0.1, per_line + 0.1)
    ax.set_ylim(n_lines + 0.2, -0.6)
    ax.axis("off")
    for i, (tok, s) in enumerate(zip(toks, steps)):
        x, y = i % per_line, i // per_line
        fc = STEP_COLORS[s % len(STEP_COLORS)] if s >= 0 else "white"
        ax.add_patch(plt.Rectangle((x + 0.03, y - 0.35), 0.94, 0.7, fc=fc, ec="#888888", lw=0.5))
        ax.text(x + 0.5, y, tok if len(tok) <= 9 else tok[:8] + ".", ha="center", va="center", fontsize=7)
    shown = num_steps + int(num_steps in steps)  # the dedup token's step K, when the sequence has one
    handles = [plt.Rectangle((0, 0), 1, 1, fc=STEP_COLORS[k % len(STEP_COLORS)], ec="#888888") for k in range(shown)]
    handles.append(plt.Rectangle((0, 0), 1, 1, fc="white", ec="#888888"))
    ax.set_title(title or "a response coloured by reasoning step (thinking block k + SID token k)", fontsize=9)
    labels = [f"step {k}" + (" (dedup)" if k == num_steps else "") for k in range(shown)]
    fig.legend(handles, labels + ["outside steps (-1)"], ncol=shown + 1, loc="lower center", fontsize=7, frameon=False)
    return _save(fig, path, dpi=130, rect=(0, 0.12, 1, 1))


def _minor_log_label(ax, y: float) -> str:
    """A log axis's minor tick label in plain digits: all of them within one decade, 2 and 5 within a few."""
    lo, hi = ax.get_ylim()
    decades = np.log10(hi / lo) if lo > 0 else np.inf
    lead = round(y / 10 ** np.floor(np.log10(y) + 1e-9))
    return f"{y:g}" if decades <= 1 or (decades <= 2.5 and lead in (2, 5)) else ""


def plot_sft_curves(records: list[dict], path) -> Path:
    """Training loss, validation loss and any `valid_hit@K` of the SFT records (`stage == "sft"`) of metrics.jsonl."""
    recs = [r for r in records if r.get("stage") == "sft"]
    train = [(r["step"], r["loss"]) for r in recs if "loss" in r]
    valid = [(r["step"], r["valid_loss"]) for r in recs if "valid_loss" in r]
    hit_keys = sorted({k for r in recs for k in r if k.startswith("valid_hit@")})
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if valid:
        ax.plot(*zip(*valid), marker="o", label="valid loss")
    ax.set_xlabel("step")
    ax.set_ylabel("response-token cross-entropy (log scale)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))  # 4, 0.6: not 4x10^0
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: _minor_log_label(ax, y)))
    ax.legend()
    ax.set_title("SFT loss")
    for k in hit_keys:
        pts = [(r["step"], r[k]) for r in recs if k in r]
        ax2.plot(*zip(*pts), marker="o", label=k)
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 1)
    ax2.set_title("SFT validation (quick beam search)")
    if hit_keys:
        ax2.legend()
    return _save(fig, path)


def plot_eval_comparison(reports: dict, path, metric: str = "hit") -> Path:
    """Bars of hit@K (or ndcg@K) for each model report and its baselines (popularity, oracle) side by side.

    reports: {"sft reasoning": eval report dict, "sft sid_only": ..., ...} as produced by
    `evaluate.eval_report`; the baselines are taken from the first report.
    """
    names = list(reports)
    first = reports[names[0]]
    ks = sorted(int(k.split("@")[1]) for k in first if k.startswith(f"{metric}@"))
    cols = {n: reports[n] for n in names}
    for b, rep in first.get("baselines", {}).items():
        if rep:
            cols[b] = rep
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(ks) * len(cols) / 2, 3.6))
    width = 0.8 / len(cols)
    for j, (name, rep) in enumerate(cols.items()):
        vals = [rep.get(f"{metric}@{k}", 0.0) for k in ks]
        bars = ax.bar(np.arange(len(ks)) + j * width, vals, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(ks)) + width * (len(cols) - 1) / 2)
    ax.set_xticklabels([f"{metric}@{k}" for k in ks])
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    baselines = [b for b in cols if b not in reports]  # oracle only on synthetic data
    ax.set_title(f"{metric}@K: model" + (f" vs. {' and '.join(baselines)}" if baselines else ""))
    return _save(fig, path)


RL_PANELS = ("eval/sampled_reward", f"eval/{SELECT_METRIC}", "eval/distinct_top1", "hit_rate", "frac_reward_zero_std",
             "groups/collapsed")


def plot_rl_curves(runs: dict[str, list[dict]], path, keys=RL_PANELS) -> Path:
    """RL curves, one panel per metric key, one line per run ({label: metrics.jsonl records}).

    The first panel is the held-out curve: the training rollouts on fixed validation prompts
    (eval/sampled_reward: exact match; for beam rollouts, the target among the G beams). Then the beam
    metrics on validation users, the training rollouts' exact match (`hit_rate`, the same quantity for
    every algorithm, unlike each algorithm's own `reward`), GRPO-style silent groups, and collapsed groups
    (every rollout the same wrong answer). `eval/...` keys are logged at evaluation steps; SFT records skipped.
    """
    n = len(keys)
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.4 * cols, 3.3 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, records in runs.items():
            pts = [(r["step"], r[key]) for r in records if r.get(key) is not None and r.get("stage") != "sft"]
            if pts:
                ax.plot(*zip(*pts), marker="o" if key.startswith("eval/") else None, ms=3, label=label)
        ax.set_xlabel("RL step")
        ax.set_title(key + (" (held-out)" if key == "eval/sampled_reward" else ""), fontsize=9)
        if key in ("frac_reward_zero_std", "groups/collapsed"):
            ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(rows: list[dict], knob: str, a: str, b: str, path) -> Path:
    """hit@10 of each algorithm (mean +- std over seeds) and the a - b gain against a sparsity knob."""
    xs = [str(r["value"]) for r in rows]
    algos = [k[: -len("_hit@10")] for k in rows[0] if k.endswith("_hit@10") and "-" not in k]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for al in algos:
        m = [r[f"{al}_hit@10"][0] for r in rows]
        s = [r[f"{al}_hit@10"][1] for r in rows]
        ax.errorbar(xs, m, yerr=s, marker="o", capsize=3, label=al)
    ax.set_xlabel(knob)
    ax.set_ylabel("test hit@10")
    ax.legend(fontsize=8)
    ax2.bar(xs, [r[f"{a}-{b}_hit@10"] for r in rows], color="tab:green")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xlabel(knob)
    ax2.set_title(f"{a} - {b}: hit@10 gain")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# The token-credit picture of a run: one group sampled from the model, scored as GRPO and SAPO score it


def token_credit(responses: torch.Tensor, mask: torch.Tensor, parsed: Sequence, target_sids: Sequence[int],
                 tokenizer, num_levels: int, algos: Sequence[str] = ("grpo", "sapo"), think_credit: bool = True,
                 dedup: bool = False) -> dict:
    """The advantage every token of ONE group (G, T) receives under each algorithm (`rl.score_rollouts`):
    {algo: (G, T)} plus "matches" (G, S) and "steps" (G, T), ready for `plot_token_credit`. By default with
    credit on thinking tokens, as the paper defines SAPO (the recipe's `think_credit=False` leaves them 0)."""
    out: dict = {}
    for algo in algos:
        scored = score_rollouts(responses, mask, parsed, [list(target_sids)] * responses.size(0), tokenizer,
                                RLConfig(**ALGOS[algo], num_generations=responses.size(0), think_credit=think_credit),
                                num_levels, dedup=dedup)
        out.update({algo: scored["token_adv"], "matches": scored["matches"], "steps": scored["steps"]})
    return out


def token_credit_figure(model, grammar, table, samples, prompts, path, num_generations: int = 8, seed: int = 0,
                        max_tries: int = 32):
    """The paper's idea in one picture: one group of G rollouts, each token coloured by the advantage
    it gets under GRPO and under SAPO. Picks the first sample (of max_tries) whose group gives SAPO
    some signal; returns None if none does."""
    if not distributed.is_main():  # torchrun: a figure of rank 0's
        return None
    tok, K = grammar.tok, table.num_levels
    gen = torch.Generator().manual_seed(seed)
    for s, prompt in list(zip(samples, prompts))[:max_tries]:
        ro = sample_rollouts(model, grammar, [prompt], num_generations=num_generations, generator=gen)
        responses, mask = ro.responses.cpu(), ro.mask.cpu()
        parsed = grammar.parse_rows(responses, mask)
        credit = token_credit(responses, mask, parsed, tok.sid_ids(table, s.target), tok, K, dedup=grammar.dedup)
        if credit["sapo"].abs().sum() == 0:
            continue  # every rollout got every step equally right: no signal for anyone
        tokens = [[tok.id_to_token(int(t)) for t in r[m]] for r, m in zip(responses, mask)]
        labels = ["".join("✓" if x else "✗" for x in row.tolist()) for row in credit["matches"]]
        return plot_token_credit(tokens, {"GRPO (exact reward, sequence advantage)": credit["grpo"],
                                          "SAPO (per-step reward and advantage)": credit["sapo"]},
                                 path, row_labels=labels,
                                 title=f"one group of {num_generations} rollouts; target "
                                       f"{' '.join(table.tokens(s.target))}; rows: per-step hits")
    return None
