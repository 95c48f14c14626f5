"""`minisapo compare`: RL algorithms side by side, from the same SFT checkpoint, over seeds.

For every seed s: one SFT model (seed s), then every arm starts from that same checkpoint with the same
RL budget (max_steps x batch_size x num_generations rollouts, identical for all algorithms because they
share every setting but `reward`, `advantage` and `step_token_mean`), and is evaluated on the test split
with the paper protocol.

    <runs_dir>/compare_<name>/seed<s>/sft/          the shared SFT run
    <runs_dir>/compare_<name>/seed<s>/<arm>/        one run per arm
    <runs_dir>/compare_<name>/compare.json|.md      mean ± sample std over seeds per arm, the counting baselines
                                                    of the same test users, paired sign tests on hit@10 over
                                                    the test samples (seeds pooled) for every pair of arms
    <runs_dir>/compare_<name>/compare_curves.png    held-out sampled reward, reward, frac_reward_zero_std,
                                                    eval hit@10 per RL step

Arms besides the RL presets (`rl.ALGOS`):
  `sft_continued`  the control: SFT on the RL stage's prompts for the RL stage's steps, prompts per step and
                   learning rate, from the same SFT model, with what RL learns from and nothing more: each
                   prompt's true target SID after the SFT model's own greedy thinking (no loss on the thinking).
                   A gain of RL over SFT that this arm also makes is just more training on the same labels.
                   `sft_continued+learning_rate=1e-5` gives it settings of its own, as `algo+key=value` below.
  `supervised`     plain supervised learning on the same outcomes: a `sid_only` model trained from scratch on
                   every training user's samples (no traces), for the SFT stage's budget
                   (= `sft+reasoning.mode=sid_only+sft.user_fraction=1`).
  `sft+key=value`  an SFT model with settings of its own and no RL, e.g. `sft+reasoning.mode=sid_only` (the same
                   users, no thinking) or `sft+reasoning.mode=sid_only+sft.max_steps=12800` (4x the steps).
  `algo+key=value` an RL preset with settings of its own; a key outside `rl.` that changes SFT (e.g.
                   `sapo+reasoning.teacher=world_misaligned`) gives the arm its own SFT model of the same seed.

`--tune=rl.learning_rate:1e-5,3e-5,1e-4` runs seed 0 of every arm (not the SFT-only ones) at each value, keeps each
arm's value of best validation hit@10 (its own validation users, never the test split), and runs the other
seeds at it.

`--from=<run>` starts from an existing SFT run instead of training one per seed: every seed's RL runs
start from that run's SFT model (its best checkpoint, its SIDs), the seeds differ only in RL, and the
config is the run's own plus the command's overrides.

`--sweep=KNOB:V1,V2,..` repeats the comparison for each value of a data knob that controls how
sparse exact-match feedback is (e.g. `items_per_leaf`) and reports the SAPO - GRPO gain against the knob.
Finished pieces are reused, so an interrupted comparison resumes.
"""

from __future__ import annotations

import copy
import json
import re
from itertools import combinations
from pathlib import Path

import numpy as np

from minisapo.config import (Config, ConfigError, apply_overrides, config_changes, make_config, plus_settings, resolve_key,
                             to_dict)
from minisapo.evaluate import SELECT_METRIC, hits_at, paired_sign_test
from minisapo.generate import sample
from minisapo.pipeline import (check_rl_stack, eval_fn, load_run_config, load_stack, make_run_config, new_model,
                               pick_device, prompts_for, save_config, snapshot_sids, stage_eval, stage_rl, stage_sft,
                               train_samples)
from minisapo.files import atomic_write, check_name, read_json, write_json
from minisapo.lock import run_lock
from minisapo.metrics_log import read_metrics
from minisapo.runs import check_device, load_checkpoint
from minisapo.sft import CHECKPOINT as SFT_CHECKPOINT
from minisapo.sft import load_sft_weights, train_sft

CONTROL = "sft_continued"  # the control arm: SFT on the same outcomes for the RL stage's budget
SUPERVISED = "supervised"  # sid_only from scratch on every training user's outcomes (no traces, no RL)
SFT_ARM = "sft+"  # an arm that is an SFT model of its own settings, no RL: sft+key=value[+key=value...]
BASELINES = ("popularity", "markov", "item_knn", "oracle")  # counting baselines, shown beside the arms

METRICS = ("hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10", "valid_rate", "frac_reward_zero_std")


def _final_eval(cfg: Config, stack, model, run_dir: Path, fresh: bool) -> dict:
    path = run_dir / "eval_test.json"
    if path.exists() and not fresh:
        return read_json(path)
    return stage_eval(cfg, stack, model, run_dir)


def outcome_examples(cfg: Config, stack, model, samples) -> list[tuple[list[int], list[int]]]:
    """The control's examples: (prompt + the model's own greedy thinking, target SID + <eos>). The thinking is
    part of the prompt (no loss on it), so the control learns from each RL prompt's outcome alone, as RL does.
    With sid_only, (prompt, target SID + <eos>)."""
    tok, table = stack.tokenizer, stack.table
    prompts = prompts_for(cfg, stack, samples)
    targets = [tok.sid_ids(table, s.target) + [tok.eos_id] for s in samples]
    if cfg.reasoning.mode == "sid_only":
        return list(zip(prompts, targets))
    if cfg.reasoning.layout != "blocks_first":
        raise ConfigError(f"{CONTROL} puts the model's own thinking before the target SID, so it needs "
                          f"--reasoning.layout=blocks_first (or --reasoning.mode=sid_only)")
    out = []
    for i in range(0, len(prompts), 256):
        ro = sample(model, stack.grammar, prompts[i:i + 256], greedy=True)
        for p, r, m, t in zip(prompts[i:i + 256], ro.responses.cpu(), ro.mask.cpu(), targets[i:i + 256]):
            r = r[m].tolist()
            think = r[:next(j for j, x in enumerate(r) if tok.token_level[x] >= 0)]  # up to the first SID token
            out.append((list(p) + think, t))
    return out


def sft_continued(cfg: Config, stack, model, run_dir: Path) -> bool:
    """The control arm, "SFT continued on the same outcomes": for rl.max_steps steps of rl.batch_size RL prompts
    at RL's constant learning rate (no warmup, no decay, no checkpoint selection), the SFT loss on each prompt's
    true target SID after the start model's greedy thinking (`outcome_examples`): the same prompts, updates and
    labels as RL, one supervised target per prompt instead of G scored rollouts. Trains `model` in place
    (resuming a finished run loads its weights); returns True if it trained."""
    s = copy.deepcopy(cfg.sft)
    s.max_steps, s.epochs, s.batch_size, s.grad_accum = cfg.rl.max_steps, 0.0, cfg.rl.batch_size, 1
    s.learning_rate, s.min_lr_ratio, s.warmup_steps = cfg.rl.learning_rate, 1.0, 0
    s.eval_every, s.keep_best, s.pretrain_epochs, s.ema = 0, False, 0.0, 0.0
    ckpt = load_checkpoint(run_dir / SFT_CHECKPOINT, need=("step",))
    fresh = ckpt is None or not ckpt.get("done")
    examples = outcome_examples(cfg, stack, model, train_samples(cfg, stack, "rl")) if fresh else [([0], [0])]
    print(f"{CONTROL}: {s.max_steps} SFT steps x {s.batch_size} prompts at lr {s.learning_rate:g} on the RL prompts' "
          f"outcomes")
    train_sft(model, examples, s, run_dir, resume=True, device=pick_device(cfg.device), pad_id=stack.tokenizer.pad_id,
              seed=cfg.seed)
    return fresh


def is_control(arm: str) -> bool:
    return arm.split("+")[0] == CONTROL


def sft_only(arm: str) -> bool:
    """An arm without RL: an SFT model of its own settings is the arm."""
    return arm == SUPERVISED or arm.startswith(SFT_ARM)


def sft_arm_config(cfg: Config, arm: str) -> Config:
    """An SFT-only arm's config: `cfg` with the arm's settings (`supervised`: SIDs only, every training user)
    and no RL."""
    out = copy.deepcopy(cfg)
    mods = ["reasoning.mode=sid_only", "sft.user_fraction=1"] if arm == SUPERVISED else arm[len(SFT_ARM):].split("+")
    apply_overrides(out, plus_settings(f"--algos={arm}", mods, "sft+key=value[+key=value...]", bare=None),
                    validate_now=False)
    out.rl.max_steps = 0
    return apply_overrides(out, {})


def paired_tests(hits: dict[str, list[int]]) -> dict[str, dict]:
    """Sign tests on hit@10 over the same test samples (seeds pooled), for every pair of arms (the later arm
    against the earlier one, `sft` first): {"grpo vs sft": {"up", "down", "p"}, ...}; "up" = samples only
    the first-named arm hits."""
    names = [a for a in hits if hits[a]]
    return {f"{b} vs {a}": paired_sign_test(hits[a], hits[b]) for a, b in combinations(names, 2)
            if len(hits[a]) == len(hits[b])}


def _row(report: dict, records: list[dict]) -> dict:
    row = {k: report[k] for k in METRICS if k in report}
    zs = [r["frac_reward_zero_std"] for r in records if "frac_reward_zero_std" in r]
    if zs:
        row["frac_reward_zero_std"] = float(np.mean(zs))
    return row


def arm_config(overrides: dict, arm: str, from_run: str | Path | None = None) -> Config:
    """An arm's config under the one precedence rule: defaults (or the `from_run` run's config), preset, the
    arm's preset, then the user's overrides (so `--rl.reward=prefix` applies to every algorithm)."""
    if is_control(arm):  # sft_continued[+key=value...]: the control with settings of its own (rl.* by default)
        cfg = start_config(overrides, None, from_run)
        apply_overrides(cfg, plus_settings(f"--algos={arm}", arm.split("+")[1:], f"{CONTROL}+key=value"),
                        validate_now=False)
        return apply_overrides(cfg, {})
    if sft_only(arm):
        return sft_arm_config(start_config(overrides, None, from_run), arm)
    return start_config(overrides, arm, from_run)


def algo_configs(overrides: dict, algos: list[str], from_run: str | Path | None = None) -> dict[str, Config]:
    """{arm: its config} (`arm_config`), every one validated up front."""
    if not algos or len(set(algos)) != len(algos):
        raise ConfigError(f"--algos={','.join(algos)}: name each algorithm once, e.g. --algos=grpo,sapo")
    out = {a: arm_config(overrides, a, from_run) for a in algos}
    mine = sorted({resolve_key(k) for k in overrides if k != "preset"} & {"rl.reward", "rl.advantage", "rl.step_token_mean"})
    if mine:
        print(f"note: {', '.join('--' + k for k in mine)} applies to every algorithm compared (user settings come "
              f"after the --algo presets)")
    return out


def sft_key(cfg: Config) -> str:
    """What an SFT model depends on: every setting but the RL and evaluation ones (and the run name)."""
    d = to_dict(cfg)
    return json.dumps({k: v for k, v in d.items() if k not in ("rl", "eval", "name", "preset")}, sort_keys=True)


def _check_piece(cfg: Config, run_dir: Path, root: Path) -> None:
    """A piece made earlier is reused only if it was made with these settings (else it would be silently mixed in)."""
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


def parse_tune(tune: str | None) -> tuple[str, list[str]] | None:
    """`rl.learning_rate:1e-5,3e-5,1e-4` -> ("rl.learning_rate", ["1e-5", "3e-5", "1e-4"]); None stays None."""
    if not tune:
        return None
    key, _, values = tune.partition(":")
    vals = values.split(",")
    if not key or not values or any(not v.strip() for v in vals) or len(set(vals)) != len(vals):
        raise ConfigError(f"--tune={tune}: expected KEY:V1,V2,... with each value once, e.g. rl.learning_rate:1e-5,1e-4")
    key = resolve_key(key)
    if not key.startswith("rl."):
        raise ConfigError(f"--tune={tune}: only RL settings are tuned per arm (rl.*), not {key}")
    return key, vals


def folder(algo: str, tuned: str = "") -> str:
    """The run folder of an arm: `sapo+advantage=my/algos.py:fn` -> `sapo+advantage=my_algos.py_fn`, and with a
    tuned value `sapo_learning_rate3e-05`."""
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", algo + tuned)


def compare(overrides: dict, algos: list[str], seeds: int, tag: str = "", from_run: str | Path | None = None,
            tune: str | None = None) -> dict:
    """Run the comparison; returns {"per_seed": {arm: [row per seed]}, "summary", "paired_tests", "tuned"} and
    writes compare.json / compare.md / plots. With `from_run`, every seed starts from that SFT run's model
    instead of training its own."""
    base = start_config(overrides, None, from_run)
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds}: must be >= 1")
    tuning = parse_tune(tune)
    per_algo = algo_configs(overrides, algos, from_run)
    if from_run is not None:
        own = [a for a in algos if sft_key(per_algo[a]) != sft_key(base)]
        if own:
            raise ConfigError(f"--algos: {', '.join(own)} change(s) SFT settings, so they need SFT models of their own: "
                              f"drop --from (compare then trains one per seed)")
    root = Path(base.runs_dir) / check_name(f"compare_{base.name}{tag}", "name")
    check_device(base.device)
    with run_lock(root, markers=("compare.json", "seed0", "sft")):
        for s in range(seeds):  # every input and every earlier piece is checked before anything is trained
            if from_run is None:
                _check_piece(_seeded(base, s), root / f"seed{s}" / "sft", root)
            for algo in algos:
                for value in (tuning[1] if tuning and not sft_only(algo) else [None]):
                    cfg = _tuned(per_algo[algo], tuning, value)
                    _check_piece(_seeded(cfg, s), root / f"seed{s}" / folder(algo, _suffix(tuning, value)), root)
        return _compare(base, per_algo, overrides, algos, seeds, tag, root, from_run, tuning)


def _seeded(cfg: Config, s: int) -> Config:
    out = copy.deepcopy(cfg)
    out.seed = cfg.seed + s
    return out


def _tuned(cfg: Config, tuning, value) -> Config:
    if tuning is None or value is None:
        return cfg
    out = copy.deepcopy(cfg)
    apply_overrides(out, {tuning[0]: value})
    return out


def _suffix(tuning, value) -> str:
    return "" if tuning is None or value is None else f"_{tuning[0].split('.')[-1]}{value}"


def _valid_hit(cfg: Config, stack, model) -> float:
    """Validation hit@10 of a model on the validation users SFT and RL validate on (never the test split)."""
    return eval_fn(cfg, stack)(model)[SELECT_METRIC]


def _compare(base: Config, per_algo: dict, overrides: dict, algos: list[str], seeds: int, tag: str, root: Path,
             from_run: str | Path | None, tuning) -> dict:
    from minisapo.plots import plot_rl_curves

    results: dict[str, list[dict]] = {"sft": [], **{a: [] for a in algos}}
    hits: dict[str, list[int]] = {a: [] for a in results}  # per test sample, seeds pooled: 1 if in the top 10
    curves: dict[str, list[dict]] = {}
    baselines: dict = {}
    tuned: dict[str, dict] = {}  # arm -> {"value": chosen, "valid_hit@10": {value: validation hit@10}}
    sfts: dict[str, tuple] = {}  # sft_key -> (stack, model, report) of this seed's SFT model for those settings
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
        sfts = {sft_key(_seeded(base, s)): shared} if from_run else {}

        def sft_for(cfg: Config, name: str) -> tuple:
            """This seed's SFT model for `cfg`'s SFT settings: trained (or resumed) once, shared by the arms."""
            key = sft_key(cfg)
            if key not in sfts:
                sft_dir = root / f"seed{s}" / name
                stack = load_stack(cfg, sft_dir, reuse_run_sids=True)  # the arms of this model use its SIDs
                for algo in algos:  # every RL arm of this model is checked against its stack before SFT trains
                    acfg = _seeded(per_algo[algo], s)
                    if not sft_only(algo) and sft_key(acfg) == key:
                        check_rl_stack(acfg, stack)
                save_config(cfg, sft_dir)
                snapshot_sids(stack, sft_dir)
                fresh = not (sft_dir / "eval_test.json").exists()
                model = stage_sft(cfg, stack, sft_dir, resume=True)
                sfts[key] = (stack, model, _final_eval(cfg, stack, model, sft_dir, fresh))
            return sfts[key]

        stack, sft_model, sft_report = sft_for(_seeded(base, s), "sft")
        baselines = sft_report.get("baselines", {})
        results["sft"].append(_row(sft_report, []))
        hits["sft"] += hits_at(sft_report)
        for algo in algos:
            acfg = _seeded(per_algo[algo], s)
            if sft_only(algo):  # an SFT model of its own is the arm
                _, _, report = sft_for(acfg, folder(algo))
                results[algo].append(_row(report, []))
                hits[algo] += hits_at(report)
                continue
            own = sft_key(acfg) != sft_key(_seeded(base, s))
            stack, start_model, _ = sft_for(acfg, f"sft_{folder(algo)}") if own else (stack, sft_model, None)
            if tuning and algo not in tuned:  # seed 0: every value, the best on validation users is kept
                scores = {}
                for v in tuning[1]:
                    cfg_v = _tuned(acfg, tuning, v)
                    model, _ = _run_arm(algo, cfg_v, stack, start_model, root / f"seed{s}" / folder(algo, _suffix(tuning, v)))
                    scores[v] = _valid_hit(cfg_v, stack, model)
                tuned[algo] = {"value": max(scores, key=lambda v: (scores[v], -tuning[1].index(v))),
                               SELECT_METRIC: scores}
                print(f"{algo}: {tuning[0]} = {tuned[algo]['value']} (validation hit@10 "
                      + ", ".join(f"{v}: {x:.4f}" for v, x in scores.items()) + ")")
            value = tuned[algo]["value"] if tuning else None
            cfg_v = _tuned(acfg, tuning, value)
            run_dir = root / f"seed{s}" / folder(algo, _suffix(tuning, value))
            model, fresh = _run_arm(algo, cfg_v, stack, start_model, run_dir)
            report, records = _final_eval(cfg_v, stack, model, run_dir, fresh), read_metrics(run_dir / "metrics.jsonl")
            results[algo].append(_row(report, records))
            hits[algo] += hits_at(report)
            if s == 0 and not is_control(algo):
                curves[algo] = records
    tests = paired_tests(hits)
    summary = summarize(results)
    out = {"config": overrides, "algos": algos, "seeds": seeds, "from": str(from_run) if from_run else None,
           "per_seed": results, "summary": summary, "baselines": {k: baselines[k] for k in BASELINES if k in baselines},
           "paired_tests": tests, "tuned": tuned}
    write_json(root / "compare.json", out)
    title = (f"compare {base.name}{tag}: {seeds} seed(s), {base.rl.max_steps} RL steps x {base.rl.batch_size} prompts x "
             f"{base.rl.num_generations} generations per algorithm")
    text = format_summary(summary, title=title, tests=tests, baselines=out["baselines"], tuned=tuned)
    atomic_write(root / "compare.md", lambda p: p.write_text(text))  # (under torchrun: rank 0 only)
    plot_rl_curves(curves, root / "compare_curves.png")
    print(text)
    print(f"wrote {root / 'compare.json'}, {root / 'compare.md'}, {root / 'compare_curves.png'}")
    return out


def _run_arm(algo: str, cfg: Config, stack, start_model, run_dir: Path) -> tuple:
    """One arm trained from a copy of `start_model` in `run_dir` (a finished one is reused): (model, fresh), fresh
    = it trained now (so an earlier test evaluation is stale)."""
    save_config(cfg, run_dir)
    model = copy.deepcopy(start_model)
    if is_control(algo):
        return model, sft_continued(cfg, stack, model, run_dir)
    from minisapo.rl import CHECKPOINT as RL_CHECKPOINT

    ckpt = load_checkpoint(run_dir / RL_CHECKPOINT, need=("step",))
    fresh = ckpt is None or ckpt["step"] < cfg.rl.max_steps
    stage_rl(cfg, stack, model, run_dir, resume=True)  # a finished run just loads its weights
    return model, fresh


def summarize(results: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """{arm: {metric: [mean, sample std]}} over seeds (std with ddof=1; a single seed has std 0)."""
    out = {}
    for algo, rows in results.items():
        keys = [k for k in METRICS if rows and all(k in r for r in rows)]
        out[algo] = {k: [float(np.mean([r[k] for r in rows])),
                         float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else 0.0] for k in keys}
    return out


def format_summary(summary: dict, title: str, tests: dict | None = None, baselines: dict | None = None,
                   tuned: dict | None = None) -> str:
    keys = [k for k in METRICS if any(k in v for v in summary.values())]
    lines = [f"# {title}", "", "| arm | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for algo, m in summary.items():
        cells = [f"{m[k][0]:.4f} ± {m[k][1]:.4f}" if k in m else "" for k in keys]
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    for name, b in (baselines or {}).items():  # the same test users; counting, so no seeds
        lines.append(f"| {name} | " + " | ".join(f"{b[k]:.4f}" if isinstance(b.get(k), float) else "" for k in keys) + " |")
    lines += ["", "mean ± sample std (ddof=1) over seeds; `sft` is the shared starting point (no RL); the rows below the "
              "arms are counting baselines on the same test users (no seed); frac_reward_zero_std is averaged over RL steps."]
    if tuned:
        lines += ["", "Tuned on validation users (seed 0), per arm: " + "; ".join(
            f"{a} {t['value']} ({', '.join(f'{v}: {x:.4f}' for v, x in t[SELECT_METRIC].items())})" for a, t in tuned.items())]
    if tests:
        lines += ["", "Paired sign test on hit@10 over the same test samples (seeds pooled): `up` = samples only the "
                  "first arm hits, `down` = only the second.", "", "| arms | up | down | p |", "|---|---|---|---|"]
        lines += [f"| {name} | {t['up']} | {t['down']} | {t['p']:.2g} |" for name, t in tests.items()]
    return "\n".join(lines) + "\n"


def sweep_compare(overrides: dict, algos: list[str], seeds: int, sweep: str, tune: str | None = None) -> list[dict]:
    """`--sweep=KNOB:V1,V2,...`: one comparison per value; table and plot of SAPO - GRPO against the knob."""
    if ":" not in sweep:
        raise ConfigError(f"--sweep={sweep}: expected KNOB:V1,V2,... e.g. items_per_leaf:4,16,64")
    knob, values = sweep.split(":", 1)
    key = resolve_key(knob)
    base = make_config(overrides)
    values = values.split(",")
    if any(not v.strip() for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"--sweep={sweep}: give each value once, e.g. {knob}:4,16,64")
    parse_tune(tune)
    for v in values:  # every value's config (and folder name) is checked before the first comparison runs
        check_name(f"compare_{make_config({**overrides, key: v}).name}_{knob}{v}", "sweep")
        algo_configs({**overrides, key: v}, algos)
    root = Path(base.runs_dir) / check_name(f"sweep_{base.name}_{knob}", "sweep")
    with run_lock(root, markers=("sweep.json",)):
        return _sweep(overrides, algos, seeds, knob, key, values, root, tune)


def _sweep(overrides: dict, algos: list[str], seeds: int, knob: str, key: str, values: list[str], root: Path,
           tune: str | None) -> list[dict]:
    from minisapo.plots import plot_sweep

    a, b = ("sapo", "grpo") if {"sapo", "grpo"} <= set(algos) else (algos[-1], algos[0])
    rows = []
    for v in values:
        ov = {**overrides, key: v}  # a synthetic knob value also names its own dataset folder
        res = compare(ov, algos, seeds, tag=f"_{knob}{v}", tune=tune)
        summary = res["summary"]
        gain = summary[a]["hit@10"][0] - summary[b]["hit@10"][0]
        rows.append({"value": v, **{f"{al}_hit@10": summary[al]["hit@10"] for al in summary},
                     f"{a}-{b}_hit@10": gain, "paired_tests": res["paired_tests"],
                     "baselines": {n: r["hit@10"] for n, r in res["baselines"].items()},
                     **{f"{al}_frac_reward_zero_std": summary[al].get("frac_reward_zero_std") for al in algos}})
    write_json(root / "sweep.json", {"knob": key, "algos": algos, "seeds": seeds, "rows": rows})
    names = ["sft", *algos]
    lines = [f"# sweep over {key}: hit@10, mean ± sample std over {seeds} seed(s); {a} - {b}", "",
             f"| {knob} | " + " | ".join(names) + f" | {a} - {b} | " + " | ".join(BASELINES) + " |",
             "|---|" + "---|" * (len(names) + 1 + len(BASELINES))]
    for r in rows:
        cells = [f"{r[f'{al}_hit@10'][0]:.4f} ± {r[f'{al}_hit@10'][1]:.4f}" for al in names]
        base_cells = [f"{r['baselines'][n]:.4f}" if n in r["baselines"] else "" for n in BASELINES]
        lines.append(f"| {r['value']} | " + " | ".join(cells) + f" | {r[f'{a}-{b}_hit@10']:+.4f} | "
                     + " | ".join(base_cells) + " |")
    lines += ["", "Paired sign tests on hit@10 (test users, seeds pooled), `up` / `down` / p:", "",
              f"| {knob} | " + " | ".join(rows[0]["paired_tests"]) + " |", "|---|" + "---|" * len(rows[0]["paired_tests"])]
    for r in rows:
        lines.append(f"| {r['value']} | " + " | ".join(f"+{t['up']} / −{t['down']}, p = {t['p']:.2g}"
                                                       for t in r["paired_tests"].values()) + " |")
    atomic_write(root / "sweep.md", lambda p: p.write_text("\n".join(lines) + "\n"))  # (torchrun: rank 0 only)
    plot_sweep(rows, knob, a, b, root / "sweep.png")
    print("\n".join(lines))
    print(f"wrote {root / 'sweep.json'}, {root / 'sweep.md'}, {root / 'sweep.png'}")
    return rows


def cmd_compare(overrides: dict, algos: list[str], seeds: int, sweep: str | None, from_run: str | None = None,
                tune: str | None = None) -> int:
    """`minisapo compare`: one comparison, or one per value of `--sweep`."""
    if sweep and from_run:
        raise ConfigError("--sweep changes the data, so it trains its own SFT models: drop --from (or --sweep)")
    if sweep:
        sweep_compare(overrides, algos, seeds, sweep, tune)
    else:
        compare(overrides, algos, seeds, from_run=from_run, tune=tune)
    return 0
