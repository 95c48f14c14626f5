"""`minisapo compare`: RL algorithms side by side, from the same SFT checkpoint, over seeds.

For every seed s: one SFT model (seed s), then every algorithm starts from that same checkpoint
with the same RL budget (max_steps x batch_size x num_generations rollouts, identical for all
algorithms because they share every setting but `reward`, `advantage` and `step_token_mean`),
and is evaluated on the test split with the paper protocol.

    <runs_dir>/compare_<name>/seed<s>/sft/          the shared SFT run
    <runs_dir>/compare_<name>/seed<s>/<algo>/       one RL run per algorithm
    <runs_dir>/compare_<name>/compare.json|.md      mean +- std over seeds, per algorithm, and paired sign
                                                    tests on hit@10 over the test samples (seeds pooled)
    <runs_dir>/compare_<name>/compare_curves.png    held-out sampled reward, reward, frac_reward_zero_std,
                                                    eval hit@10 per RL step

`--algos=sft_continued,grpo,sapo` adds the control arm `sft_continued`: the SFT loss on the RL stage's prompts
with their true targets, for the RL stage's steps and prompts per step at its learning rate, from the same SFT
model; a gain of RL over SFT that this arm also makes is just more training.

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
import re
from pathlib import Path

import numpy as np

from minisapo.config import Config, ConfigError, apply_overrides, config_changes, make_config, resolve_key
from minisapo.evaluate import paired_sign_test
from minisapo.pipeline import (check_rl_stack, load_run_config, load_stack, make_run_config, new_model, pick_device,
                               save_config, snapshot_sids, stage_eval, stage_rl, stage_sft, train_samples)
from minisapo.reasoning import build_examples
from minisapo.files import atomic_write, check_name, read_json, write_json
from minisapo.runs import check_device, load_checkpoint, read_metrics, run_lock
from minisapo.sft import load_sft_weights, train_sft

CONTROL = "sft_continued"  # the control arm: more SFT for the RL stage's budget, so a gain is not just more training

METRICS = ("hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10", "valid_rate", "frac_reward_zero_std")


def _final_eval(cfg: Config, stack, model, run_dir: Path, fresh: bool) -> dict:
    path = run_dir / "eval_test.json"
    if path.exists() and not fresh:
        return read_json(path)
    return stage_eval(cfg, stack, model, run_dir)


def sft_continued(cfg: Config, stack, model, run_dir: Path) -> bool:
    """The control arm, "SFT continued for the same budget": the SFT loss on the RL stage's prompts (the
    samples RL draws from) with their true targets, for rl.max_steps steps of rl.batch_size prompts at RL's
    constant learning rate (no warmup, no decay, no checkpoint selection): the same prompts and updates as RL,
    one teacher response per prompt instead of G scored rollouts. Trains `model` in place (resuming a finished
    run loads its weights); returns True if it trained."""
    s = copy.deepcopy(cfg.sft)
    s.max_steps, s.epochs, s.batch_size, s.grad_accum = cfg.rl.max_steps, 0.0, cfg.rl.batch_size, 1
    s.learning_rate, s.min_lr_ratio, s.warmup_steps = cfg.rl.learning_rate, 1.0, 0
    s.eval_every, s.keep_best, s.pretrain_epochs = 0, False, 0.0
    ckpt = load_checkpoint(run_dir / "sft.pt", need=("step",))
    fresh = ckpt is None or not ckpt.get("done")
    examples = build_examples(stack.dataset, stack.table, stack.tokenizer, train_samples(cfg, stack, "rl"),
                              cfg.reasoning, verbose=False)
    print(f"{CONTROL}: {s.max_steps} SFT steps x {s.batch_size} prompts at lr {s.learning_rate:g} on the RL prompts")
    train_sft(model, examples, s, run_dir, resume=True, device=pick_device(cfg.device), pad_id=stack.tokenizer.pad_id,
              seed=cfg.seed)
    return fresh


def paired_tests(hits: dict[str, list[int]]) -> dict[str, dict]:
    """Sign tests on hit@10 over the same test samples (seeds pooled): every arm against `sft` and, when the
    comparison has one, against the control arm. {"grpo vs sft": {"up", "down", "p"}, ...}"""
    out = {}
    for ref in ("sft", CONTROL):
        for algo in hits:
            if ref in hits and algo not in ("sft", ref) and len(hits[algo]) == len(hits[ref]):
                out[f"{algo} vs {ref}"] = paired_sign_test(hits[ref], hits[algo])
    return out


def _hits(report: dict) -> list[int]:
    """1 per test sample whose target the model ranked in its top 10 (from the report's per-sample ranks)."""
    return [int(0 < r <= 10) for r in report.get("ranks", [])]


def _row(report: dict, records: list[dict]) -> dict:
    row = {k: report[k] for k in METRICS if k in report}
    zs = [r["frac_reward_zero_std"] for r in records if "frac_reward_zero_std" in r]
    if zs:
        row["frac_reward_zero_std"] = float(np.mean(zs))
    return row


def algo_configs(overrides: dict, algos: list[str], from_run: str | Path | None = None) -> dict[str, Config]:
    """{algo: its config} under the one precedence rule: defaults (or the `from_run` run's config), preset, the
    algorithm's preset, then the user's overrides (so `--rl.reward=prefix` applies to every algorithm). Every
    one validated up front. `sft_continued` (the control arm) has the base config."""
    if not algos or len(set(algos)) != len(algos):
        raise ConfigError(f"--algos={','.join(algos)}: name each algorithm once, e.g. --algos=grpo,sapo")
    out = {a: start_config(overrides, None if a == CONTROL else a, from_run) for a in algos}
    mine = sorted({resolve_key(k) for k in overrides if k != "preset"} & {"rl.reward", "rl.advantage", "rl.step_token_mean"})
    if mine:
        print(f"note: {', '.join('--' + k for k in mine)} applies to every algorithm compared (user settings come "
              f"after the --algo presets)")
    return out


def _check_piece(cfg: Config, run_dir: Path, root: Path) -> None:
    """A piece made earlier is reused only if it was made with these settings (else it would be silently mixed in)."""
    from minisapo.pipeline import load_run_config

    if (run_dir / "config.json").exists():
        changes = config_changes(load_run_config(run_dir), cfg)
        if changes:
            raise ConfigError(f"{run_dir} was made with other settings ({'; '.join(changes[:4])}"
                              f"{'; ...' if len(changes) > 4 else ''}): give this comparison another --name, or "
                              f"delete {root} to start it afresh")


def start_config(overrides: dict, algo: str | None, from_run: str | Path | None) -> Config:
    """A new run's config (defaults, preset, --algo, overrides; a processed dataset found by name), or with
    `from_run` that SFT run's config.json with --algo and the overrides on top."""
    if from_run is None:
        return make_run_config(overrides, algo=algo)
    return apply_overrides(load_run_config(from_run), overrides, algo=algo)


def compare(overrides: dict, algos: list[str], seeds: int, tag: str = "", from_run: str | Path | None = None) -> dict:
    """Run the comparison; returns {algo: [row per seed]} and writes compare.json / compare.md / plots.
    With `from_run`, every seed starts from that SFT run's model instead of training its own."""
    base = start_config(overrides, None, from_run)
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds}: must be >= 1")
    per_algo = algo_configs(overrides, algos, from_run)
    root = Path(base.runs_dir) / check_name(f"compare_{base.name}{tag}", "name")
    check_device(base.device)
    with run_lock(root, markers=("compare.json", "seed0", "sft")):
        for s in range(seeds):  # every input and every earlier piece is checked before anything is trained
            if from_run is None:
                _check_piece(_seeded(base, s), root / f"seed{s}" / "sft", root)
            for algo in algos:
                _check_piece(_seeded(per_algo[algo], s), root / f"seed{s}" / folder(algo), root)
        return _compare(base, per_algo, overrides, algos, seeds, tag, root, from_run)


def folder(algo: str) -> str:
    """The run folder of an algorithm spec: `sapo+advantage=my/algos.py:fn` -> `sapo+advantage=my_algos.py_fn`."""
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", algo)


def _seeded(cfg: Config, s: int) -> Config:
    out = copy.deepcopy(cfg)
    out.seed = cfg.seed + s
    return out


def _compare(base: Config, per_algo: dict, overrides: dict, algos: list[str], seeds: int, tag: str, root: Path,
             from_run: str | Path | None) -> dict:
    from minisapo.plots import plot_rl_curves

    results: dict[str, list[dict]] = {"sft": [], **{a: [] for a in algos}}
    hits: dict[str, list[int]] = {a: [] for a in results}  # per test sample, seeds pooled: 1 if in the top 10
    curves: dict[str, list[dict]] = {}
    shared = None  # with from_run: (stack, model, SFT report), the same for every seed
    if from_run:
        stack = load_stack(base, Path(from_run), reuse_run_sids=True)  # the run's own SIDs and tokenizer
        for algo in algos:
            check_rl_stack(per_algo[algo], stack)
        sft_model = new_model(base, stack)
        load_sft_weights(sft_model, from_run)
        print(f"compare: every seed starts from the SFT model of {from_run}")
        sft_dir = root / "sft"
        save_config(base, sft_dir)
        shared = (stack, sft_model, _final_eval(base, stack, sft_model, sft_dir,
                                                fresh=not (sft_dir / "eval_test.json").exists()))
    for s in range(seeds):
        cfg = _seeded(base, s)
        seed_dir = root / f"seed{s}"
        if shared:
            stack, sft_model, sft_report = shared
        else:
            sft_dir = seed_dir / "sft"
            stack = load_stack(cfg, sft_dir, reuse_run_sids=True)  # every algorithm of this seed uses the SFT's SIDs
            for algo in algos:  # before SFT trains
                check_rl_stack(_seeded(per_algo[algo], s), stack)
            save_config(cfg, sft_dir)
            snapshot_sids(stack, sft_dir)
            fresh_sft = not (sft_dir / "eval_test.json").exists()
            sft_model = stage_sft(cfg, stack, sft_dir, resume=True)
            sft_report = _final_eval(cfg, stack, sft_model, sft_dir, fresh_sft)
        results["sft"].append(_row(sft_report, []))
        hits["sft"] += _hits(sft_report)
        for algo in algos:
            acfg = _seeded(per_algo[algo], s)
            run_dir = seed_dir / folder(algo)
            save_config(acfg, run_dir)
            model = copy.deepcopy(sft_model)
            if algo == CONTROL:
                fresh = sft_continued(acfg, stack, model, run_dir)
            else:
                ckpt = load_checkpoint(run_dir / "rl_checkpoint.pt", need=("step",))
                fresh = ckpt is None or ckpt["step"] < acfg.rl.max_steps
                stage_rl(acfg, stack, model, run_dir, resume=True)  # a finished run just loads its weights
            records = read_metrics(run_dir / "metrics.jsonl")
            report = _final_eval(acfg, stack, model, run_dir, fresh=fresh)
            results[algo].append(_row(report, records))
            hits[algo] += _hits(report)
            if s == 0 and algo != CONTROL:
                curves[algo] = records
    tests = paired_tests(hits)
    summary = summarize(results)
    write_json(root / "compare.json", {"config": overrides, "algos": algos, "seeds": seeds,
                                       "from": str(from_run) if from_run else None,
                                       "per_seed": results, "summary": summary, "paired_tests": tests})
    text = format_summary(summary, title=f"compare {base.name}{tag}: {seeds} seed(s), {base.rl.max_steps} RL steps x "
                          f"{base.rl.batch_size} prompts x {base.rl.num_generations} generations per algorithm", tests=tests)
    atomic_write(root / "compare.md", lambda p: p.write_text(text))  # (under torchrun: rank 0 only)
    plot_rl_curves(curves, root / "compare_curves.png")
    print(text)
    print(f"wrote {root / 'compare.json'}, {root / 'compare.md'}, {root / 'compare_curves.png'}")
    return results


def summarize(results: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """{algo: {metric: [mean, std]}} over seeds (std with ddof=0; a single seed has std 0)."""
    out = {}
    for algo, rows in results.items():
        keys = [k for k in METRICS if rows and all(k in r for r in rows)]
        out[algo] = {k: [float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))] for k in keys}
    return out


def format_summary(summary: dict, title: str, tests: dict | None = None) -> str:
    keys = [k for k in METRICS if any(k in v for v in summary.values())]
    lines = [f"# {title}", "", "| algo | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for algo, m in summary.items():
        cells = [f"{m[k][0]:.4f} ± {m[k][1]:.4f}" if k in m else "" for k in keys]
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    lines += ["", "mean ± std over seeds; `sft` is the shared starting point (no RL); "
              "frac_reward_zero_std is averaged over RL steps."]
    if tests:
        lines += ["", "Paired sign test on hit@10 over the same test samples (seeds pooled): `up` = samples only the "
                  "first arm hits, `down` = only the second.", "", "| arms | up | down | p |", "|---|---|---|---|"]
        lines += [f"| {name} | {t['up']} | {t['down']} | {t['p']:.2g} |" for name, t in tests.items()]
    return "\n".join(lines) + "\n"


def sweep_compare(overrides: dict, algos: list[str], seeds: int, sweep: str) -> list[dict]:
    """`--sweep=KNOB:V1,V2,...`: one comparison per value; table and plot of SAPO - GRPO against the knob."""
    if ":" not in sweep:
        raise ConfigError(f"--sweep={sweep}: expected KNOB:V1,V2,... e.g. items_per_leaf:4,16,64")
    knob, values = sweep.split(":", 1)
    key = resolve_key(knob)
    base = make_config(overrides)
    values = values.split(",")
    if any(not v.strip() for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"--sweep={sweep}: give each value once, e.g. {knob}:4,16,64")
    for v in values:  # every value's config (and folder name) is checked before the first comparison runs
        check_name(f"compare_{make_config({**overrides, key: v}).name}_{knob}{v}", "sweep")
        algo_configs({**overrides, key: v}, algos)
    root = Path(base.runs_dir) / check_name(f"sweep_{base.name}_{knob}", "sweep")
    with run_lock(root, markers=("sweep.json",)):
        return _sweep(overrides, algos, seeds, knob, key, values, root)


def _sweep(overrides: dict, algos: list[str], seeds: int, knob: str, key: str, values: list[str], root: Path) -> list[dict]:
    from minisapo.plots import plot_sweep

    a, b = ("sapo", "grpo") if {"sapo", "grpo"} <= set(algos) else (algos[-1], algos[0])
    rows = []
    for v in values:
        ov = {**overrides, key: v}  # a synthetic knob value also names its own dataset folder
        summary = summarize(compare(ov, algos, seeds, tag=f"_{knob}{v}"))
        gain = summary[a]["hit@10"][0] - summary[b]["hit@10"][0]
        rows.append({"value": v, **{f"{al}_hit@10": summary[al]["hit@10"] for al in summary},
                     f"{a}-{b}_hit@10": gain,
                     **{f"{al}_frac_reward_zero_std": summary[al].get("frac_reward_zero_std") for al in algos}})
    write_json(root / "sweep.json", {"knob": key, "algos": algos, "seeds": seeds, "rows": rows})
    lines = [f"# sweep over {key}: {a} - {b} hit@10 ({seeds} seed(s))", "",
             f"| {knob} | " + " | ".join(f"{al} hit@10" for al in ["sft", *algos]) + f" | {a} - {b} |",
             "|---|" + "---|" * (len(algos) + 2)]
    for r in rows:
        cells = [f"{r[f'{al}_hit@10'][0]:.4f} ± {r[f'{al}_hit@10'][1]:.4f}" for al in ["sft", *algos]]
        lines.append(f"| {r['value']} | " + " | ".join(cells) + f" | {r[f'{a}-{b}_hit@10']:+.4f} |")
    atomic_write(root / "sweep.md", lambda p: p.write_text("\n".join(lines) + "\n"))  # (torchrun: rank 0 only)
    plot_sweep(rows, knob, a, b, root / "sweep.png")
    print("\n".join(lines))
    print(f"wrote {root / 'sweep.json'}, {root / 'sweep.md'}, {root / 'sweep.png'}")
    return rows



def cmd_compare(overrides: dict, algos: list[str], seeds: int, sweep: str | None, from_run: str | None = None) -> int:
    """`minisapo compare`: one comparison, or one per value of `--sweep`."""
    if sweep and from_run:
        raise ConfigError("--sweep changes the data, so it trains its own SFT models: drop --from (or --sweep)")
    if sweep:
        sweep_compare(overrides, algos, seeds, sweep)
    else:
        compare(overrides, algos, seeds, from_run=from_run)
    return 0
