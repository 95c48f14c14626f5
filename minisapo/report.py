"""`report.md` and the PNG plots of a run directory, made from what the run wrote to disk.

Everything here reads files (config.json, metrics.jsonl, eval_*.json), so a report can be
remade for any finished run: `python -c "from minisapo.report import write_report; write_report('runs/small')"`.
"""

from __future__ import annotations

from pathlib import Path

from minisapo.evaluate import format_table
from minisapo.files import atomic_write, read_json
from minisapo.metrics_log import read_metrics


PROTOCOL_FILES = ("", "_exclude_seenTrue", "_exclude_seenFalse")  # a report, and its other protocol's sibling


def _eval_reports(run_dir: Path) -> dict[str, dict]:
    """{"SFT": eval_test_sft.json, "SFT+RL": eval_test.json} (whichever exist); on real data each is followed by
    its sibling under the other protocol, and the names say which protocol each is ("SFT, seen items removed")."""
    from minisapo.rl import CHECKPOINT as RL_CHECKPOINT

    out = {}
    has_rl = (run_dir / RL_CHECKPOINT).exists()
    for stem, name in (("eval_test_sft", "SFT"), ("eval_test", "SFT+RL" if has_rl else "SFT")):
        found = [read_json(run_dir / f"{stem}{p}.json") for p in PROTOCOL_FILES if (run_dir / f"{stem}{p}.json").exists()]
        for rep in found:
            protocol = ", seen items removed" if rep.get("exclude_seen") else ", every item ranked" if len(found) > 1 else ""
            out[name + protocol] = rep
    return out


def _dataset_name(data: dict) -> str:
    from minisapo.data import DataConfig, dataset_name

    try:
        return dataset_name(DataConfig(**data))
    except TypeError:  # a config.json from another version
        return str(data.get("name") or data.get("world"))


def algo_label(rl: dict) -> str:
    """The `ALGOS` preset a run's RL settings match (e.g. "sapo"), else "reward/advantage"."""
    from minisapo.rl import ALGOS

    name = next((a for a, kv in ALGOS.items() if all(rl.get(k) == v for k, v in kv.items())), None)
    return name or f"{rl.get('reward')}/{rl.get('advantage')}"


def results_table(run_dir: str | Path) -> str:
    """The run's answer in one table per protocol (Markdown; real data has two: every item ranked, seen items
    removed): the counting baselines, the sid_only SFT (with sft.compare_sid_only), the SFT and the final model,
    on the same test users, with paired sign tests on hit@10 (reasoning vs sid_only, SFT+RL vs SFT) and which
    model RL left with. '' without a test report."""
    from minisapo.evaluate import hits_at, paired_sign_test

    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    evals = _eval_reports(run_dir)
    if not evals:
        return ""
    first = next(iter(evals.values()))
    sid_only_file = run_dir / "sid_only" / "eval_test.json"  # sft.compare_sid_only's run
    sid_only = read_json(sid_only_file) if sid_only_file.exists() else None
    keys = ["hit@1", "hit@5", "hit@10", "ndcg@10"]
    lines = []
    for protocol in dict.fromkeys(name.partition(",")[2] for name in evals):  # "" or ", every item ranked", ...
        reps = {name.partition(",")[0]: rep for name, rep in evals.items() if name.partition(",")[2] == protocol}
        top = next(iter(reps.values()))
        rows: list[tuple[str, dict, str]] = [(f"{n}{' (the ceiling)' if n == 'oracle' else ''}", b, "")
                                             for n, b in top.get("baselines", {}).items()]
        no_thinking = sid_only if sid_only and sid_only.get("exclude_seen") == top.get("exclude_seen") else None
        if no_thinking:
            rows.append(("SFT, sid_only (no thinking; same users and steps)", no_thinking, ""))
        sft = reps.get("SFT")
        if sft is not None:
            test = ""
            if no_thinking:
                t = paired_sign_test(hits_at(no_thinking), hits_at(sft))
                test = f"vs sid_only: +{t['up']} / −{t['down']}, p = {t['p']:.2g}"
            rows.append((f"SFT, {config['reasoning']['mode']}", sft, test))
        if "SFT+RL" in reps:
            final, test = reps["SFT+RL"], ""
            if sft is not None:
                t = paired_sign_test(hits_at(sft), hits_at(final))
                test = f"vs SFT: +{t['up']} / −{t['down']}, p = {t['p']:.2g}"
            rows.append((f"SFT + RL ({algo_label(config['rl'])}), the model the run leaves with", final, test))
        lines += [""] if lines else []
        lines += [f"| test, {top.get('num_samples', '?')} users{protocol and ',' + protocol} | " + " | ".join(keys)
                  + " | paired sign test on hit@10 |", "|---|" + "---|" * (len(keys) + 1)]
        for name, rep, test in rows:
            lines.append(f"| {name} | " + " | ".join(f"{rep[k]:.4f}" if isinstance(rep.get(k), float) else "-"
                                                    for k in keys) + f" | {test} |")
    kept = [r for r in read_metrics(run_dir / "metrics.jsonl") if "selected_step" in r and r.get("stage") == "rl"]
    if kept:
        r = kept[-1]
        lines += ["", (f"RL kept step {r['selected_step']}: its validation gain over the SFT model is significant "
                       f"(+{r['selected_up']} / −{r['selected_down']} validation users, p = {r['selected_p']:.2g})")
                  if r["selected_step"] else "RL kept the SFT model (step 0): no evaluation beat it significantly "
                                              "on the validation users (rl.keep_best_p)"]
    machine = first.get("machine")
    if machine:
        lines += ["", f"Machine: torch {machine['torch']}, CPU capability {machine['cpu_capability']}, device "
                      f"{machine['device']} (other kernels give other digits; seeds give the spread)."]
    return "\n".join(lines)


def write_report(run_dir: str | Path, cfg=None, seconds: float | None = None) -> Path:
    """Write the run's plots and report.md; returns the report's path."""
    from minisapo import plots

    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    records = read_metrics(run_dir / "metrics.jsonl")
    evals = _eval_reports(run_dir)
    lines = [f"# minisapo run `{config['name']}`", ""]
    lines.append(f"preset `{config['preset']}`, dataset `{_dataset_name(config['data'])}` "
                 f"({config['data']['source']}), mode `{config['reasoning']['mode']}`, "
                 f"layout `{config['reasoning']['layout']}`, seed {config['seed']}"
                 + (f", {seconds:.0f} s in all" if seconds is not None else "") + ".")
    lines.append("")
    table = results_table(run_dir)
    if table:
        lines += ["## Results", "", table, ""]
    if any(r.get("stage") == "sft" for r in records):
        plots.plot_sft_curves(records, run_dir / "sft_curves.png")
        lines += ["## SFT", "", "![SFT curves](sft_curves.png)", ""]
        if (run_dir / "response_steps.png").exists():
            lines += ["One training example, each token coloured by its reasoning step (`reasoning.step_index`):",
                      "", "![steps](response_steps.png)", ""]
    if (run_dir / "token_credit.png").exists():
        lines += ["## Who gets credit: GRPO vs. SAPO", "",
                  "One group of rollouts from the SFT model, each token coloured by its advantage (blue: reinforced, "
                  "red: discouraged, white: none). GRPO gives one number to every token of a response and nothing "
                  "when no rollout hits the exact item; SAPO credits each step's thinking block and SID token by "
                  "whether that step was right.", "", "![token credit](token_credit.png)", ""]
    if any("reward" in r for r in records):
        plots.plot_rl_curves({algo_label(config["rl"]): records}, run_dir / "rl_curves.png")
        rl = config["rl"]
        lines += ["## RL", "", f"reward `{rl['reward']}`, advantage `{rl['advantage']}`, "
                  f"{rl['max_steps']} steps x {rl['batch_size']} prompts x {rl['num_generations']} generations.", "",
                  "![RL curves](rl_curves.png)", ""]
    for name, rep in evals.items():
        lines += [f"## Test: {name}", "", format_table(rep), ""]
    if evals:
        first = next(iter(evals.values())).get("exclude_seen")  # the picture: the run's own protocol
        plots.plot_eval_comparison({n: r for n, r in evals.items() if r.get("exclude_seen") == first},
                                   run_dir / "eval_hit.png", "hit")
        lines += ["![hit@K vs. baselines](eval_hit.png)", ""]
    lines += ["Files: `config.json` (resolved config), `metrics.jsonl` (one JSON record per logged step), "
              "`sft.pt` / `rl_checkpoint.pt` (checkpoints), `eval_*.json` (metrics).", ""]
    path = run_dir / "report.md"
    atomic_write(path, lambda p: p.write_text("\n".join(lines)))
    return path


def seeds_table(groups: dict[str, list], baselines: tuple[str, ...] = ("popularity", "markov", "item_knn", "item_id"),
                against: tuple[str, ...] = ("item_knn", "item_id"), ks: tuple[int, ...] = (1, 5, 10), k: int = 10) -> str:
    """A Markdown table of runs over seeds: `groups` maps a row label to its eval_*.json files, one per seed (the
    same seeds, in the same order, in every group). Each row is the mean ± sample std (ddof=1) over the seeds of
    hit@K and ndcg@k; first the `baselines` of the first group's files, then every group's model. A model row
    also gets, for each baseline in `against`, the paired sign test on hit@k with the seeds pooled (every test
    user of every seed is one pair, against that seed's baseline in the first group's files).
    E.g. `seeds_table({"SFT": [f"runs/s{i}/eval_test_sft.json" for i in range(3)]})`."""
    import numpy as np

    from minisapo.evaluate import paired_sign_test

    reports = {label: [read_json(f) for f in files] for label, files in groups.items()}
    first = next(iter(reports.values()))
    rows = {b: [r["baselines"][b] for r in first] for b in baselines if all(b in r["baselines"] for r in first)}
    rows.update({label: reps for label, reps in reports.items()})
    present = [b for b in against if b in rows]
    metrics = [f"hit@{x}" for x in ks] + [f"ndcg@{k}"]

    def cell(values) -> str:
        v = np.asarray(values, dtype=float)
        text = f"{v.mean():.4f}"
        spread = len(v) > 1 and np.ptp(v) > 1e-9  # seeds equal up to float rounding: no spread
        return text + (f" ± {v.std(ddof=1):.4f}" if spread else "")

    def hits(rep) -> list[int]:
        return [int(0 < r <= k) for r in rep["ranks"]]

    lines = ["| " + " | ".join(["", *metrics, *[f"hit@{k} vs {b}: +/−, p (seeds pooled)" for b in present]]) + " |",
             "|" + "---|" * (1 + len(metrics) + len(present))]
    for label, reps in rows.items():
        tests = []
        for b in present:
            if label in baselines:
                tests.append("")
                continue
            t = paired_sign_test(sum((hits(base) for base in rows[b]), []), sum((hits(r) for r in reps), []))
            tests.append(f"+{t['up']} / −{t['down']}, p = {t['p']:.2g}")
        lines.append("| " + " | ".join([label, *[cell([r[m] for r in reps]) for m in metrics], *tests]) + " |")
    return "\n".join(lines)
