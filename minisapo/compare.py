"""`minisapo compare`: RL algorithms side by side, from the same SFT checkpoint, over seeds.

For every seed s: one SFT model (seed s), then every algorithm starts from that same checkpoint
with the same RL budget (max_steps x batch_size x num_generations rollouts, identical for all
algorithms because they share every setting but `reward`, `advantage` and `step_token_mean`),
and is evaluated on the test split with the paper protocol.

    <runs_dir>/compare_<name>/seed<s>/sft/          the shared SFT run
    <runs_dir>/compare_<name>/seed<s>/<algo>/       one RL run per algorithm
    <runs_dir>/compare_<name>/compare.json|.md      mean +- std over seeds, per algorithm
    <runs_dir>/compare_<name>/compare_curves.png    reward, frac_reward_zero_std, eval hit@10 per RL step

`--from=<run>` starts from an existing SFT run instead of training one per seed: every seed's RL runs
start from that run's SFT model (its best checkpoint, its SIDs), the seeds differ only in RL, and the
config is the run's own plus the command's overrides:

    <runs_dir>/compare_<run name>/sft/              the SFT model's test evaluation
    <runs_dir>/compare_<run name>/seed<s>/<algo>/   one RL run per seed and algorithm

`--sweep=KNOB:V1,V2,..` repeats the comparison for each value of a data knob that controls how
sparse exact-match feedback is (e.g. `items_per_leaf`: more items under each leaf of the synthetic
taxonomy -> more items share the first SID levels -> exact match is rarer), and reports the SAPO -
GRPO gain against the knob. Finished pieces are reused, so an interrupted comparison resumes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from minisapo.config import Config, ConfigError, make_config, resolve_key
from minisapo.runs import load_weights, read_json, read_metrics, write_json

METRICS = ("hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10", "valid_rate", "frac_reward_zero_std")


def _final_eval(cfg: Config, stack, model, run_dir: Path, fresh: bool) -> dict:
    from minisapo.pipeline import stage_eval

    path = run_dir / "eval_test.json"
    if path.exists() and not fresh:
        return read_json(path)
    return stage_eval(cfg, stack, model, run_dir)


def _row(report: dict, records: list[dict]) -> dict:
    row = {k: report[k] for k in METRICS if k in report}
    zs = [r["frac_reward_zero_std"] for r in records if "frac_reward_zero_std" in r]
    if zs:
        row["frac_reward_zero_std"] = float(np.mean(zs))
    return row


def _from_run(from_run: str | Path, overrides: dict) -> Config:
    """The config of an existing SFT run, with the command's overrides on top."""
    from minisapo.config import set_value
    from minisapo.pipeline import load_run_config

    cfg = load_run_config(from_run)
    for k, v in overrides.items():
        set_value(cfg, k, v)
    return cfg


def compare(overrides: dict, algos: list[str], seeds: int, tag: str = "", from_run: str | Path | None = None) -> dict:
    """Run the comparison; returns {algo: [row per seed]} and writes compare.json / compare.md / plots.
    With `from_run`, every seed starts from that SFT run's model instead of training its own."""
    from minisapo.pipeline import _apply_algo, load_stack, make_run_config, new_model, save_config, stage_rl, stage_sft
    from minisapo.plots import plot_rl_curves
    from minisapo.runs import load_checkpoint
    from minisapo.sft import load_sft_weights

    base = _from_run(from_run, overrides) if from_run else make_run_config(overrides)
    if seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    root = Path(base.runs_dir) / f"compare_{base.name}{tag}"
    results: dict[str, list[dict]] = {"sft": [], **{a: [] for a in algos}}
    curves: dict[str, list[dict]] = {}
    shared = None  # with from_run: (stack, model, SFT row), the same for every seed
    if from_run:
        stack = load_stack(base, Path(from_run), reuse_run_sids=True)  # the run's own SIDs and tokenizer
        sft_model = new_model(base, stack)
        load_sft_weights(sft_model, from_run)
        print(f"compare: every seed starts from the SFT model of {from_run}")
        sft_dir = root / "sft"
        save_config(base, sft_dir)
        shared = (stack, sft_model, _row(_final_eval(base, stack, sft_model, sft_dir,
                                                     fresh=not (sft_dir / "eval_test.json").exists()), []))
    for s in range(seeds):
        cfg = copy.deepcopy(base)
        cfg.seed = base.seed + s
        seed_dir = root / f"seed{s}"
        if shared:
            stack, sft_model, sft_row = shared
            results["sft"].append(sft_row)
        else:
            sft_dir = seed_dir / "sft"
            stack = load_stack(cfg, sft_dir, reuse_run_sids=True)  # every algorithm of this seed uses the SFT's SIDs
            save_config(cfg, sft_dir)
            fresh_sft = not (sft_dir / "eval_test.json").exists()
            sft_model = stage_sft(cfg, stack, sft_dir, resume=True)
            results["sft"].append(_row(_final_eval(cfg, stack, sft_model, sft_dir, fresh_sft), []))
        for algo in algos:
            acfg = copy.deepcopy(cfg)
            _apply_algo(acfg, algo)
            run_dir = seed_dir / algo
            save_config(acfg, run_dir)
            ckpt = load_checkpoint(run_dir / "rl_checkpoint.pt")
            done = ckpt is not None and ckpt["step"] >= acfg.rl.max_steps
            model = copy.deepcopy(sft_model)
            if done:
                load_weights(model, ckpt["model"], run_dir / "rl_checkpoint.pt")
            else:
                stage_rl(acfg, stack, model, run_dir, resume=True)
            records = read_metrics(run_dir / "metrics.jsonl")
            results[algo].append(_row(_final_eval(acfg, stack, model, run_dir, fresh=not done), records))
            if s == 0:
                curves[algo] = records
    summary = summarize(results)
    write_json(root / "compare.json", {"config": overrides, "algos": algos, "seeds": seeds,
                                       "from": str(from_run) if from_run else None,
                                       "per_seed": results, "summary": summary})
    (root / "compare.md").write_text(format_summary(summary, title=f"compare {base.name}{tag}: {seeds} seed(s), "
                                                    f"{base.rl.max_steps} RL steps x {base.rl.batch_size} prompts x "
                                                    f"{base.rl.num_generations} generations per algorithm"))
    plot_rl_curves(curves, root / "compare_curves.png")
    print((root / "compare.md").read_text())
    print(f"wrote {root / 'compare.json'}, {root / 'compare.md'}, {root / 'compare_curves.png'}")
    return results


def summarize(results: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """{algo: {metric: [mean, std]}} over seeds (std with ddof=0; a single seed has std 0)."""
    out = {}
    for algo, rows in results.items():
        keys = [k for k in METRICS if rows and all(k in r for r in rows)]
        out[algo] = {k: [float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))] for k in keys}
    return out


def format_summary(summary: dict, title: str) -> str:
    keys = [k for k in METRICS if any(k in v for v in summary.values())]
    lines = [f"# {title}", "", "| algo | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for algo, m in summary.items():
        cells = [f"{m[k][0]:.4f} ± {m[k][1]:.4f}" if k in m else "" for k in keys]
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    lines += ["", "mean ± std over seeds; `sft` is the shared starting point (no RL); "
              "frac_reward_zero_std is averaged over RL steps."]
    return "\n".join(lines) + "\n"


def sweep_compare(overrides: dict, algos: list[str], seeds: int, sweep: str) -> list[dict]:
    """`--sweep=KNOB:V1,V2,...`: one comparison per value; table and plot of SAPO - GRPO against the knob."""
    from minisapo.plots import plot_sweep

    if ":" not in sweep:
        raise ConfigError(f"--sweep={sweep}: expected KNOB:V1,V2,... e.g. items_per_leaf:4,16,64")
    knob, values = sweep.split(":", 1)
    key = resolve_key(knob)
    base = make_config(overrides)
    a, b = ("sapo", "grpo") if {"sapo", "grpo"} <= set(algos) else (algos[-1], algos[0])
    rows = []
    for v in values.split(","):
        ov = {**overrides, key: v}  # a synthetic knob value also names its own dataset folder
        summary = summarize(compare(ov, algos, seeds, tag=f"_{knob}{v}"))
        gain = summary[a]["hit@10"][0] - summary[b]["hit@10"][0]
        rows.append({"value": v, **{f"{al}_hit@10": summary[al]["hit@10"] for al in summary},
                     f"{a}-{b}_hit@10": gain,
                     **{f"{al}_frac_reward_zero_std": summary[al].get("frac_reward_zero_std") for al in algos}})
    root = Path(base.runs_dir) / f"sweep_{base.name}_{knob}"
    write_json(root / "sweep.json", {"knob": key, "algos": algos, "seeds": seeds, "rows": rows})
    lines = [f"# sweep over {key}: {a} - {b} hit@10 ({seeds} seed(s))", "",
             f"| {knob} | " + " | ".join(f"{al} hit@10" for al in ["sft", *algos]) + f" | {a} - {b} |",
             "|---|" + "---|" * (len(algos) + 2)]
    for r in rows:
        cells = [f"{r[f'{al}_hit@10'][0]:.4f} ± {r[f'{al}_hit@10'][1]:.4f}" for al in ["sft", *algos]]
        lines.append(f"| {r['value']} | " + " | ".join(cells) + f" | {r[f'{a}-{b}_hit@10']:+.4f} |")
    (root / "sweep.md").write_text("\n".join(lines) + "\n")
    plot_sweep(rows, knob, a, b, root / "sweep.png")
    print("\n".join(lines))
    print(f"wrote {root / 'sweep.json'}, {root / 'sweep.md'}, {root / 'sweep.png'}")
    return rows

