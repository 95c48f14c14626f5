"""The stages wired together: what each `minisapo` subcommand does.

    data   -> minisapo.data.prepare / load             <data_dir>/processed/<dataset>/
    sid    -> minisapo.sid.prepare                     <data_dir>/processed/<dataset>/sid/
    sft    -> reasoning.build_examples + sft.train_sft <runs_dir>/<name>/sft.pt
    rl     -> rl.train_rl (from an SFT run)            <runs_dir>/<name>/rl_checkpoint.pt
    eval   -> evaluate.evaluate_split                  <runs_dir>/<name>/eval_<split>.json
    run    -> all of the above, plus plots and report.md
    compare-> several RL algorithms from the same SFT checkpoint per seed (compare.py)

Each function reads top to bottom; the algorithms live in the stage modules.
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from minisapo import data as data_lib
from minisapo import distributed, plugins
from minisapo import sid as sid_lib
from minisapo.baselines import seen_items
from minisapo.config import (SAFE_ON_RESUME, Config, ConfigError, apply_overrides, config_changes, from_dict,
                             make_config, resolve_key, to_dict)
from minisapo.evaluate import SELECT_K, evaluate_split, format_table, quick_hit_fn
from minisapo.grammar import Grammar
from minisapo.model import GPT, build_model, pick_device
from minisapo.reasoning import (build_examples, build_prompt, build_sequence_examples, item_id_vocab_size, teacher,
                                vocab_words)
from minisapo.files import claim_dir, read_json, remove, same_path, swap_dir, temp_path, write_json
from minisapo.lock import check_not_busy, run_lock
from minisapo.runs import check_device, load_weights, seed_everything
from minisapo.trainer import final_weights
from minisapo.sft import CHECKPOINT as SFT_CHECKPOINT
from minisapo.sft import load_sft_weights, train_sft
from minisapo.tokenizer import Tokenizer
from minisapo.traces import load_traces


@dataclass
class Stack:
    """Everything below the model: the dataset, its SIDs, the vocabulary and the response grammar."""

    dataset: data_lib.Dataset
    table: sid_lib.SIDTable
    tokenizer: Tokenizer
    grammar: Grammar
    sid_stats: dict
    sid_dir: Path | None = None  # the folder the SIDs and tokenizer were loaded from (start_run snapshots it)


def make_run_config(overrides: dict, algo: str | None = None) -> Config:
    """`make_config(overrides, algo=algo)`, then a dataset named with --data.name (--name in `data`/`sid`) that is
    already processed is found as it was built: its source, files and settings need not be repeated
    (data.named; a data flag given here still wins)."""
    cfg = make_config(overrides, algo=algo)
    given = {resolve_key(k, cfg) for k in overrides}
    cfg.data = data_lib.named(cfg.data, cfg.data_dir, {k.split(".", 1)[1] for k in given if k.startswith("data.")})
    return cfg


def load_dataset(cfg: Config) -> data_lib.Dataset:
    path = data_lib.prepare(cfg.data, cfg.data_dir)
    return data_lib.load(cfg.data_dir, path.name)


def load_stack(cfg: Config, run_dir: Path | None = None, reuse_run_sids: bool = False) -> Stack:
    """Data -> SIDs -> tokenizer -> grammar (each stage cached on disk).

    The SIDs and tokenizer a run trains with are snapshotted in `<run_dir>/sid/` (by `start_run` /
    `snapshot_sids`, once every input has been read); `reuse_run_sids=True` (resume, eval, RL from an
    SFT run) loads that snapshot, so a checkpoint always meets the vocabulary it was trained with,
    whatever happened to the dataset's cache since. Nothing is written into run_dir here.
    """
    with distributed.main_first():  # torchrun: rank 0 builds the caches, the other ranks then read them
        ds = load_dataset(cfg)
        snapshot = None if run_dir is None else Path(run_dir) / "sid"
        if reuse_run_sids and snapshot is not None and (snapshot / "tokenizer.json").exists():
            table, tok = sid_lib.load(snapshot)
            stats = read_json(snapshot / "sid_stats.json") if (snapshot / "sid_stats.json").exists() else {}
            print(f"SIDs and tokenizer: the run's own, from {snapshot}")
            sid_dir = snapshot
        else:
            sid_dir = Path(ds.path) / "sid"
            table, tok, stats = sid_lib.prepare(ds, cfg.sid, sid_dir, plot=_plot_sid_tree,
                                                    device=pick_device(cfg.device))
    trie = sid_lib.SIDTrie(table, tok)
    r = cfg.reasoning
    mode = "sid_only" if r.mode == "item_id" else r.mode  # an item-ID model writes no SID: the SID grammar stays
    vocab = tok.vocab_size if cfg.model.words else min(tok.word_ids, default=tok.vocab_size)  # words come last
    grammar = Grammar(tok, trie, table.num_levels, r.layout, r.max_think_tokens, mode, vocab_size=vocab)
    return Stack(ds, table, tok, grammar, stats, sid_dir)


def _plot_sid_tree(table, stats: dict, path: Path) -> None:
    from minisapo.plots import plot_sid_tree  # matplotlib only when drawing

    plot_sid_tree(table, stats, path)


def snapshot_sids(stack: Stack, run_dir: Path) -> None:
    """Copy the SIDs and tokenizer `stack` was loaded from into `<run_dir>/sid/` (complete, or not at all)."""
    dst = Path(run_dir) / "sid"
    if stack.sid_dir is None or same_path(stack.sid_dir, dst) or not distributed.is_main():  # (torchrun: rank 0's)
        return
    copy_dir(stack.sid_dir, dst)


def copy_dir(src: Path, dst: Path) -> None:
    """Copy the folder `src` to `dst`, replacing it (complete, or not at all)."""
    tmp = temp_path(dst)
    remove(tmp)
    try:
        shutil.copytree(src, tmp)
        swap_dir(tmp, dst)
    finally:
        remove(tmp)


def new_model(cfg: Config, stack: Stack) -> GPT:
    """A freshly initialised policy (seeded by cfg.seed), sized by cfg.model and the grammar's vocabulary (in
    reasoning mode item_id: one token per item)."""
    seed_everything(cfg.seed)
    mcfg = copy.deepcopy(cfg.model)
    vocab = item_id_vocab_size(stack.dataset.num_items) if cfg.reasoning.mode == "item_id" else stack.grammar.V
    model = build_model(mcfg, vocab_size=vocab)
    return model.to(pick_device(cfg.device))


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.runs_dir) / cfg.name


def prompts_for(cfg: Config, stack: Stack, samples) -> list[list[int]]:
    titles = stack.dataset.item_titles if cfg.reasoning.prompt_titles else None
    return [build_prompt(s.history, stack.table, stack.tokenizer, cfg.reasoning, titles=titles) for s in samples]


def train_samples(cfg: Config, stack: Stack, stage: str) -> list:
    """The training samples a stage uses: all of them, unless `sft.user_fraction` < 1; then SFT takes that
    fraction of the users (drawn with the run's seed) and RL the other users."""
    train = stack.dataset.splits["train"]
    if cfg.sft.user_fraction >= 1:
        return train
    sft_users = data_lib.user_subset(stack.dataset.num_users, cfg.sft.user_fraction, cfg.seed)
    return [s for s in train if (s.user in sft_users) == (stage == "sft")]


def _check_lengths(cfg: Config, stack: Stack, examples) -> None:
    if not examples:
        raise ConfigError(f"dataset {stack.dataset.name!r} has no training samples (its train split is empty): "
                          f"use more data, or a lower --kcore")
    longest = max(len(p) + len(r) for p, r in examples)
    longest = max(longest, max(len(p) for p, _ in examples) + stack.grammar.max_length)
    if longest > cfg.model.max_seq_len:
        raise ConfigError(f"prompt + response can be {longest} tokens but model.max_seq_len={cfg.model.max_seq_len}: "
                          f"raise --max_seq_len or lower --max_history / --max_think_tokens")


def valid_samples(cfg: Config, stack: Stack) -> list:
    """The validation samples SFT validates on: the first sft.eval_samples (0 = all)."""
    return stack.dataset.splits["valid"][: cfg.sft.eval_samples or None]


def eval_fn(cfg: Config, stack: Stack):
    """`model -> {"valid_hit@10", "valid_ndcg@10", ...}` on `valid_samples` (evaluate.SELECT_METRIC among them)."""
    return quick_hit_fn(stack.grammar, stack.dataset, stack.table, stack.tokenizer, valid_samples(cfg, stack), k=SELECT_K,
                        reasoning=cfg.reasoning, batch_size=cfg.eval.batch_size, exclude_seen=cfg.eval.exclude_seen)


def save_config(cfg: Config, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", to_dict(cfg))


def start_run(cfg: Config, resume: bool, stack: Stack | None = None) -> Path:
    """The run directory, with config.json written and the stack's SIDs snapshotted into it.

    Call it only once every input has been read (dataset, SIDs, traces, the weights to start from), so
    a command that fails on a bad input changes nothing. Without --resume, an earlier run's outputs are
    removed here (so metrics.jsonl never mixes two runs, and no RL file is left beside a new SFT model); with
    it, they are kept and continued."""
    run_dir = run_dir_of(cfg)
    if distributed.is_main():  # torchrun: rank 0 prepares the run directory, the others wait for it
        old = [p for p in run_dir.glob("*") if p.suffix in (".pt", ".jsonl", ".png") or p.name.startswith("eval_")
               or p.name in ("rl_config.json", "report.md")]
        sub = run_dir / "sid_only"  # sft.compare_sid_only's run (minisapo made it: it has a config.json)
        if (old or (sub / "config.json").exists()) and not resume:
            print(f"{run_dir} holds an earlier run: starting afresh (use --resume to continue it instead)")
            for p in old:
                p.unlink()
            if (sub / "config.json").exists() and not sub.is_symlink():
                shutil.rmtree(sub)
        save_config(cfg, run_dir)
        if stack is not None:
            snapshot_sids(stack, run_dir)
    distributed.barrier()
    return run_dir


def check_resume(cfg: Config, run_dir: Path) -> None:
    """--resume continues the run with its own settings: any difference from its config.json, other than
    the keys in config.SAFE_ON_RESUME (more steps, another device, evaluation), is an error listing them."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return  # nothing to resume yet: the run starts
    changes = config_changes(load_run_config(run_dir), cfg)
    if changes:
        shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        raise ConfigError(f"--resume: these settings differ from {path}: {shown}. Resume with the run's own settings "
                          f"(repeat the command that started it, e.g. its --preset), or start a new run with another "
                          f"--name; only {', '.join(SAFE_ON_RESUME)} may change on resume")


def load_run_config(run_dir: str | Path) -> Config:
    """The settings in `<run_dir>/config.json`. A run folder is data (it may come from someone else): a plug-in
    it names is not imported unless the command names it again (minisapo.plugins), and the folders it names are
    not destinations: runs_dir is the folder `run_dir` is in, and data_dir the stored one only if it already
    holds the run's dataset, else the default (a command's --data_dir / --runs_dir still wins)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory made by `minisapo sft` or `run`?")
    try:
        cfg = from_dict(read_json(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e} (was it made by another minisapo version? start a new run)") from None
    for key in plugins.KEYS:
        plugins.stored(getattr(cfg.rl, key.split(".")[1]), path)
    cfg.runs_dir = str(Path(run_dir).parent)
    if not (Path(cfg.data_dir) / "processed" / data_lib.dataset_name(cfg.data) / "dataset.json").is_file():
        cfg.data_dir = Config().data_dir
    return cfg


# ----------------------------------------------------------------------------------------------
# stages


def sft_examples(cfg: Config, stack: Stack) -> tuple[list, list]:
    """(train, valid) SFT examples: teacher blocks or the traces file (read here, `--strict` applies)."""
    ds, r = stack.dataset, cfg.reasoning
    traces = None
    if r.mode == "reasoning" and r.traces:  # external traces (read here, `--strict` applies)
        traces, report = load_traces(r.traces, stack.tokenizer, stack.table.num_levels, num_users=ds.num_users,
                                     num_items=stack.table.num_items, max_think_tokens=r.max_think_tokens,
                                     strict=cfg.data.strict)
        print(report.summary())
    train = build_examples(ds, stack.table, stack.tokenizer, train_samples(cfg, stack, "sft"), r, traces=traces)
    valid = build_examples(ds, stack.table, stack.tokenizer, valid_samples(cfg, stack), r, traces=traces,
                           verbose=False)
    _check_lengths(cfg, stack, train + valid)
    return train, valid


def pretrain_examples(cfg: Config, stack: Stack) -> list:
    """The next-item pretraining windows over the training sequences (none without sft.pretrain_epochs), each
    checked to fit model.max_seq_len."""
    if cfg.sft.pretrain_epochs <= 0:
        return []
    window = cfg.sft.pretrain_window or cfg.data.max_history + 1
    seqs = build_sequence_examples(stack.dataset, stack.table, stack.tokenizer, stack.dataset.splits["train"], window,
                                   stride=cfg.sft.pretrain_stride or None, cfg=cfg.reasoning)
    longest = max((len(p) + len(r) for p, r in seqs), default=0)
    if longest > cfg.model.max_seq_len:
        raise ConfigError(f"a pretraining window of {window} items is {longest} tokens but model.max_seq_len="
                          f"{cfg.model.max_seq_len}: lower --sft.pretrain_window or raise --max_seq_len")
    return seqs


def check_rl_stack(cfg: Config, stack: Stack) -> None:
    """RL's settings only the dataset can check, checked before anything is replaced: sft.user_fraction leaves
    RL at least one prompt per process, and the catalog can fill a beam group."""
    if cfg.reasoning.mode == "item_id":
        raise ConfigError("reasoning.mode=item_id writes one item token and no SID, and RL rewards SIDs: train and "
                          "evaluate it with `minisapo sft --mode=item_id`")
    n, procs = len(train_samples(cfg, stack, "rl")), distributed.world_size()
    if n < procs:
        raise ConfigError(f"--sft.user_fraction={cfg.sft.user_fraction} leaves RL {n} training prompt(s) (those of the "
                          f"users SFT does not see), fewer than the {procs} process(es): lower sft.user_fraction")
    sids = len({tuple(stack.table.tokens(i)) for i in range(stack.table.num_items)})
    if cfg.rl.rollout == "beam" and cfg.rl.num_generations > sids:
        raise ConfigError(f"--rl.num_generations={cfg.rl.num_generations}: with rl.rollout=beam the group is the top "
                          f"G distinct SIDs, and dataset {stack.dataset.name!r} has {sids}: set it <= {sids} (or use "
                          f"--rl.rollout=sample)")


def stage_sft(cfg: Config, stack: Stack, run_dir: Path, resume: bool = False, examples: tuple | None = None,
              pretrain: list | None = None) -> GPT:
    """SFT on teacher traces; returns the trained model (resumes / reuses a finished sft.pt). With
    eval.item_id_baseline, first the item-ID baseline the run's reports rank with (`train_item_id`).
    `examples` / `pretrain`: what sft_examples / pretrain_examples return (made here when None)."""
    train_item_id(cfg, stack, run_dir, resume)
    train, valid = examples if examples is not None else sft_examples(cfg, stack)
    from minisapo.plots import plot_response_steps  # one training example, each token coloured by its step

    if cfg.reasoning.mode != "item_id":  # (an item-ID example has no steps)
        plot_response_steps(list(train[0][0]) + list(train[0][1]), stack.tokenizer, stack.table.num_levels,
                            run_dir / "response_steps.png", title="an SFT example: thinking block k + SID token k = step k")
    model = new_model(cfg, stack)
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {len(train)} SFT examples, device {pick_device(cfg.device)}")
    if cfg.sft.pretrain_epochs > 0:  # next-item pretraining on the training sequences, then SFT from there
        window = cfg.sft.pretrain_window or cfg.data.max_history + 1
        seqs = pretrain if pretrain is not None else pretrain_examples(cfg, stack)
        pre = copy.deepcopy(cfg.sft)
        pre.max_steps, pre.epochs = 0, cfg.sft.pretrain_epochs  # validated and selected like SFT (pretrain_best.pt)
        print(f"pretrain: {cfg.sft.pretrain_epochs:g} epochs over {len(seqs)} windows of up to {window} training items "
              f"(a new one every {cfg.sft.pretrain_stride or window})")
        train_sft(model, seqs, pre, run_dir, valid_examples=valid, valid_fn=eval_fn(cfg, stack), resume=resume,
                  device=pick_device(cfg.device), pad_id=stack.tokenizer.pad_id, seed=cfg.seed, stage="pretrain")
    # after pretraining, SFT validates its starting point too, so with keep_best it never leaves worse than it began
    train_sft(model, train, cfg.sft, run_dir, valid_examples=valid, valid_fn=eval_fn(cfg, stack), resume=resume,
              device=pick_device(cfg.device), pad_id=stack.tokenizer.pad_id, seed=cfg.seed,
              validate_first=cfg.sft.pretrain_epochs > 0)
    return model


def rl_eval_fn(cfg: Config, stack: Stack):
    """What RL evaluates on validation users, every rl.eval_every steps: the beam metrics of `eval_fn`
    (hit@10, ndcg@10, distinct top-1 items) and the held-out curve: the training rollouts on the first
    rl.eval_prompts validation prompts, with fixed seeds (eval/sampled_reward, eval/sampled_hit_rate/step_k)."""
    from minisapo.rl_metrics import heldout_rewards

    held = stack.dataset.splits["valid"][: cfg.rl.eval_prompts]
    prompts, targets = prompts_for(cfg, stack, held), [stack.tokenizer.sid_ids(stack.table, s.target) for s in held]
    beam = eval_fn(cfg, stack)
    return lambda model: {**beam(model), **heldout_rewards(model, stack.grammar, prompts, targets, cfg.rl, cfg.seed)}


def stage_rl(cfg: Config, stack: Stack, model: GPT, run_dir: Path, resume: bool = False) -> dict:
    """RL from the current (SFT) weights of `model` (train_rl copies them as the frozen KL reference)."""
    from minisapo.rl import train_rl

    samples = train_samples(cfg, stack, "rl")
    return train_rl(model, None, stack.grammar, stack.tokenizer, stack.table, samples, prompts_for(cfg, stack, samples),
                    cfg.rl, run_dir, eval_fn=rl_eval_fn(cfg, stack), resume=resume, device=pick_device(cfg.device),
                    seed=cfg.seed, teacher_blocks=teacher_word_ids(cfg, stack, samples),
                    exclude=seen_items(stack.dataset, samples) if cfg.rl.exclude_seen else None)


def teacher_word_ids(cfg: Config, stack: Stack, samples) -> list | None:
    """The teacher's K thinking blocks of each sample as word ids (what RL's think_acc/step_k compares the
    sampled thinking with); None without thinking or with external traces."""
    r = cfg.reasoning
    if r.mode != "reasoning" or r.traces:
        return None
    blocks_of = teacher(stack.dataset, stack.table, stack.tokenizer, r)
    return [[tuple(vocab_words(b, stack.tokenizer, r.max_think_tokens)) for b in blocks_of(s.history, s.target)]
            for s in samples]


ITEM_ID = "item_id"  # <run>/item_id/: the item-ID baseline a run's reports rank (eval.item_id_baseline)


def item_id_config(cfg: Config) -> Config:
    """The item-ID baseline's settings: the run's own (model size, seed, pretraining and SFT epochs, learning rate,
    moving average, validation users, evaluation) with one token per item and no SIDs (reasoning.mode=item_id)."""
    out = copy.deepcopy(cfg)
    out.reasoning.mode, out.rl.max_steps, out.eval.item_id_baseline = "item_id", 0, False
    return out


def train_item_id(cfg: Config, stack: Stack, run_dir: Path, resume: bool = False) -> None:
    """With eval.item_id_baseline: train the item-ID baseline (`item_id_config`) in <run_dir>/item_id/, as
    `minisapo sft --mode=item_id` would; --resume continues it, a fresh run trains it afresh. Called before the
    run's own model is made (stage_sft), which then starts from its seed as it would without the baseline."""
    if not cfg.eval.item_id_baseline or cfg.reasoning.mode == "item_id":
        return
    sub, icfg = Path(run_dir) / ITEM_ID, item_id_config(cfg)
    if distributed.is_main():
        claim_dir(sub, ("config.json",), "the item-ID baseline's folder")
        if not resume:
            remove(sub)
        save_config(icfg, sub)
    distributed.barrier()
    print(f"item-ID baseline (the run's settings, one token per item: reasoning.mode=item_id) in {sub}")
    stage_sft(icfg, stack, sub, resume=resume)


def load_item_id(cfg: Config, stack: Stack, run_dir: Path) -> GPT | None:
    """The trained item-ID baseline of `run_dir` (None without eval.item_id_baseline, or, with a note, when the
    run has none). The global random state is left as it was."""
    if not cfg.eval.item_id_baseline or cfg.reasoning.mode == "item_id":
        return None
    from minisapo.runs import load_checkpoint

    sub = Path(run_dir) / ITEM_ID
    ckpt = load_checkpoint(sub / SFT_CHECKPOINT, need=("step",))
    if ckpt is None or not ckpt.get("done"):
        print(f"no trained item-ID baseline in {sub}: its row is left out (`minisapo sft` with "
              f"--eval.item_id_baseline=true trains one)")
        return None
    with torch.random.fork_rng(devices=[]):
        model = new_model(item_id_config(cfg), stack)
    load_sft_weights(model, sub, device=pick_device(cfg.device))
    return model


def stage_eval(cfg: Config, stack: Stack, model: GPT, run_dir: Path, split: str = "test",
               tag: str = "", other_protocol: bool = True) -> dict:
    """Paper-protocol evaluation + baselines; writes eval_<split><tag>.json and prints the table. On real data
    with eval.both_protocols (and other_protocol), the same under the other protocol (eval.exclude_seen flipped)
    into eval_<split><tag>_exclude_seen<True|False>.json. Returns the first report.
    Under torchrun rank 0 evaluates and every rank gets the report."""
    return distributed.from_main(lambda: _stage_eval(cfg, stack, model, run_dir, split, tag, other_protocol))


def protocols(cfg: Config, stack: Stack, other_protocol: bool = True) -> list[Config]:
    """The configs an evaluation is made under: `cfg`, and on real data (no oracle) with eval.both_protocols a
    copy with eval.exclude_seen flipped."""
    out = [cfg]
    if other_protocol and cfg.eval.both_protocols and data_lib.oracle(stack.dataset) is None:
        out.append(copy.deepcopy(cfg))
        out[1].eval.exclude_seen = not cfg.eval.exclude_seen
    return out


def _stage_eval(cfg: Config, stack: Stack, model: GPT, run_dir: Path, split: str, tag: str,
                other_protocol: bool) -> dict:
    item_id = load_item_id(cfg, stack, run_dir)
    rl_done = cfg.rl.max_steps and (run_dir / "rl_config.json").exists()
    reports = []
    for c in protocols(cfg, stack, other_protocol):
        report = evaluate_split(model, stack.grammar, stack.dataset, stack.table, stack.tokenizer, split, c.eval,
                                reasoning=c.reasoning, item_id_model=item_id)
        report["settings"] = {"eval": to_dict(c)["eval"], "reasoning": to_dict(c)["reasoning"]}
        report["machine"] = machine(cfg)
        path = run_dir / f"eval_{split}{tag}{eval_tag(cfg, c)}.json"
        write_json(path, report)
        print(f"{split} metrics, {'SFT' if tag == '_sft' else 'SFT+RL' if rl_done else 'model'} ({run_dir.name}; "
              f"{'seen items removed' if c.eval.exclude_seen else 'every item ranked'}):")
        print(format_table(report))
        print(f"wrote {path}")
        reports.append(report)
    return reports[0]


def machine(cfg: Config) -> dict:
    """What the digits of a result depend on besides the settings: torch, the CPU's kernels, the device."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": str(pick_device(cfg.device))}


EVAL_SECTIONS = ("eval", "reasoning", "data")  # settings that change what an evaluation measures


def eval_tag(run_cfg: Config, cfg: Config) -> str:
    """'' when `cfg` evaluates as the run did; else `_<field><value>` for each eval/reasoning/data setting that
    differs (`--eval.beam_width=20` -> `_beam_width20`), so `minisapo eval` writes a file of its own."""
    old, new = to_dict(run_cfg), to_dict(cfg)
    parts = [f"{k}{v}" for sec in EVAL_SECTIONS for k, v in new[sec].items() if old[sec].get(k) != v]
    return "".join("_" + "".join(c if c.isalnum() or c in "-._" else "-" for c in p) for p in parts)


# ----------------------------------------------------------------------------------------------
# commands


def cmd_data(cfg: Config) -> int:
    ds = load_dataset(cfg)
    s = {k: len(v) for k, v in ds.splits.items()}
    print(f"{ds.name}: {ds.num_users} users, {ds.num_items} items; samples {s}; files in {ds.path}")
    return 0


def cmd_sid(cfg: Config) -> int:
    check_device(cfg.device)
    stack = load_stack(cfg)
    print(f"SIDs in {Path(stack.dataset.path) / 'sid'} (picture: sid_tree.png)")
    return 0


def checked_sft(cfg: Config, run_dir: Path, resume: bool, check_rl: bool = False) -> tuple[Stack, GPT]:
    """Inside the run's lock: read and check every input (dataset, SIDs, SFT and pretraining examples; with
    check_rl what the RL stage needs too) before start_run replaces anything of an earlier run; then SFT ->
    (stack, model)."""
    if resume:
        check_resume(cfg, run_dir)
    stack = load_stack(cfg, run_dir, reuse_run_sids=resume)
    examples = sft_examples(cfg, stack)
    pretrain = pretrain_examples(cfg, stack)
    if check_rl:
        check_rl_stack(cfg, stack)
    start_run(cfg, resume, stack)
    return stack, stage_sft(cfg, stack, run_dir, resume=resume, examples=examples, pretrain=pretrain)


def cmd_sft(cfg: Config, resume: bool = False) -> int:
    run_dir = run_dir_of(cfg)
    check_device(cfg.device)
    with run_lock(run_dir):
        stack, model = checked_sft(cfg, run_dir, resume)
        stage_eval(cfg, stack, model, run_dir)
        _finish(cfg, run_dir)
    return 0


def load_model(cfg: Config, stack: Stack, run_dir: Path) -> GPT:
    """The run's final weights: those its RL stage left if it has one, else its SFT stage's (each by
    trainer.takes_best on the run's own settings)."""
    from minisapo.rl import CHECKPOINT as RL_CHECKPOINT

    model, device = new_model(cfg, stack), pick_device(cfg.device)
    found = final_weights(run_dir, RL_CHECKPOINT, "rl", device)
    if found is None:
        load_sft_weights(model, run_dir, device=device)
    else:
        load_weights(model, *found[:2])
    return model


EVAL_SPLITS = ("test", "valid", "train")


def cmd_eval(run: str, split: str, overrides: dict) -> int:
    """Evaluate a run's latest model; under settings other than the run's own (`--eval.beam_width=20`,
    `--reasoning.max_think_tokens=8`, ...) into a file named for them, so the run's results are never
    overwritten (eval_test_beam_width20.json)."""
    run_dir = Path(run)
    cfg = load_run_config(run_dir)
    apply_overrides(cfg, overrides)
    if split not in EVAL_SPLITS:
        raise ConfigError(f"--split={split}: choose one of {', '.join(EVAL_SPLITS)}")
    check_device(cfg.device)
    with run_lock(run_dir):  # writes only eval_<split>*.json
        stack = load_stack(cfg, run_dir, reuse_run_sids=True)
        stage_eval(cfg, stack, load_model(cfg, stack, run_dir), run_dir, split,
                   tag=eval_tag(load_run_config(run_dir), cfg), other_protocol=False)
    return 0


def cmd_rl(from_run: str, algo: str, overrides: dict, resume: bool = False) -> int:
    """RL from an SFT run into a new run directory (<sft name>_<algo> unless --name is given).

    Settings: the SFT run's config.json, then the `--algo` preset, then this command's overrides."""
    src = Path(from_run)
    cfg = load_run_config(src)
    cfg.name = f"{cfg.name}_{algo}"
    apply_overrides(cfg, overrides, algo=algo)
    run_dir = run_dir_of(cfg)
    if same_path(run_dir, src):
        raise ConfigError(f"--name={cfg.name} is the SFT run this command starts from ({src}); RL writes a run of its "
                          f"own: pick another --name (the default is <sft name>_<algo>)")
    check_device(cfg.device)
    check_not_busy(src)
    with run_lock(run_dir):
        if resume:
            check_resume(cfg, run_dir)
        stack = load_stack(cfg, src, reuse_run_sids=True)  # the SFT run's SIDs, snapshotted into this run too
        check_rl_stack(cfg, stack)
        model = new_model(cfg, stack)
        load_sft_weights(model, src, device=pick_device(cfg.device))
        start_run(cfg, resume, stack)  # only now, with the SFT weights read, is anything replaced
        if cfg.eval.item_id_baseline and (src / ITEM_ID).is_dir() and distributed.is_main():
            copy_dir(src / ITEM_ID, run_dir / ITEM_ID)  # the SFT run's item-ID baseline, for this run's reports
        stage_rl(cfg, stack, model, run_dir, resume=resume)
        stage_eval(cfg, stack, model, run_dir)
        _finish(cfg, run_dir)
    return 0


def cmd_run(cfg: Config, resume: bool = False) -> int:
    """The main job: data -> SIDs -> SFT -> eval -> RL -> eval, plots and report.md.

    `cfg` comes from make_config(overrides, algo=...): the `--algo` preset is already applied, under the
    user's overrides (one precedence rule: defaults, preset, --algo, overrides)."""
    from minisapo.plots import token_credit_figure  # matplotlib only when drawing

    t0 = time.time()
    run_dir = run_dir_of(cfg)
    check_device(cfg.device)
    with run_lock(run_dir):
        stack, model = checked_sft(cfg, run_dir, resume,
                                   check_rl=cfg.rl.max_steps > 0 or cfg.reasoning.mode == "item_id")
        stage_eval(cfg, stack, model, run_dir, tag="_sft")
        test = stack.dataset.splits["test"]
        token_credit_figure(model, stack.grammar, stack.table, test, prompts_for(cfg, stack, test[:32]),
                            run_dir / "token_credit.png",
                            num_generations=min(cfg.rl.num_generations, 8), seed=cfg.seed)
        if cfg.sft.compare_sid_only and cfg.reasoning.mode == "reasoning":
            stage_sid_only(cfg, run_dir, resume)
        if cfg.rl.max_steps > 0:
            stage_rl(cfg, stack, model, run_dir, resume=resume)
        stage_eval(cfg, stack, model, run_dir)
        _finish(cfg, run_dir, seconds=time.time() - t0)
        from minisapo.report import results_table

        print(f"\n{cfg.name}: the run in one table\n\n{results_table(run_dir)}")
    return 0


def stage_sid_only(cfg: Config, run_dir: Path, resume: bool) -> None:
    """The comparison row of `sft.compare_sid_only`: the same SFT (users, steps, seed) without thinking, in
    <run>/sid_only/ (its own config.json, checkpoints and eval_test.json)."""
    sub_cfg = copy.deepcopy(cfg)
    sub_cfg.reasoning.mode, sub_cfg.sft.compare_sid_only, sub_cfg.rl.max_steps = "sid_only", False, 0
    sub = run_dir / "sid_only"
    stack = load_stack(sub_cfg, sub, reuse_run_sids=resume)
    examples = sft_examples(sub_cfg, stack)
    save_config(sub_cfg, sub)
    snapshot_sids(stack, sub)
    print("sid_only: the same SFT without thinking, for comparison")
    stage_eval(sub_cfg, stack, stage_sft(sub_cfg, stack, sub, resume=resume, examples=examples), sub)


def _finish(cfg: Config, run_dir: Path, seconds: float | None = None) -> None:
    from minisapo.report import write_report

    if not distributed.is_main():  # torchrun: rank 0 writes the report
        return
    path = write_report(run_dir, cfg, seconds=seconds)
    print(f"report: {path}\nplots:  {', '.join(str(p) for p in sorted(run_dir.glob('*.png')))}")
