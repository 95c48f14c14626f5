"""`report.md` and the PNG plots of a run directory, made from what the run wrote to disk.

Everything here reads files (config.json, metrics.jsonl, eval_*.json), so a report can be
remade for any finished run: `python -c "from minisapo.report import write_report; write_report('runs/small')"`.
"""

from __future__ import annotations

from pathlib import Path

from minisapo.evaluate import format_table
from minisapo.files import atomic_write, read_json
from minisapo.runs import read_metrics


def _eval_reports(run_dir: Path) -> dict[str, dict]:
    """{"SFT": eval_test_sft.json, "SFT+RL": eval_test.json} (whichever exist)."""
    out = {}
    sft, final = run_dir / "eval_test_sft.json", run_dir / "eval_test.json"
    has_rl = (run_dir / "rl_checkpoint.pt").exists()
    if sft.exists():
        out["SFT"] = read_json(sft)
    if final.exists():
        out["SFT+RL" if has_rl else "SFT"] = read_json(final)
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
        plots.plot_eval_comparison(evals, run_dir / "eval_hit.png", "hit")
        lines += ["![hit@K vs. baselines](eval_hit.png)", ""]
    lines += ["Files: `config.json` (resolved config), `metrics.jsonl` (one JSON record per logged step), "
              "`sft.pt` / `rl_checkpoint.pt` (checkpoints), `eval_*.json` (metrics).", ""]
    path = run_dir / "report.md"
    atomic_write(path, lambda p: p.write_text("\n".join(lines)))
    return path
