"""What the SFT and RL loops share: the data order, seeds, metrics.jsonl, checkpoints and resume,
the evaluation schedule, the best checkpoint and the progress display. The loop itself is written out in
sft.py and rl.py; around each optimiser step it calls the same Trainer methods, for SFT, its pretraining and RL:

    trainer = Trainer(run_dir, "rl", rl.CHECKPOINT, max_steps, eval_every, save_every, keep_best=...)
    start = trainer.resume(model, optimizer)[0] if resume else trainer.fresh()
    trainer.begin(start, model, eval_fn)                       # evaluate the starting weights
    for step in trainer.steps(start):
        with trainer.step(step, model, optimizer):             # a NaN: checkpoint the last good step, clear error
            record = ...                                       # the optimiser step
        trainer.after_step(model, optimizer, record)           # metrics.jsonl; evaluate, checkpoint when due
    trainer.finish(model)                                      # keep_best: the best evaluation's weights

With `ema` the evaluations, the best checkpoint and the stage's final weights are a moving average of the
weights (SFT's `sft.ema`); the optimiser keeps stepping the weights themselves.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from minisapo import distributed
from minisapo.evaluate import paired_sign_test
from minisapo.files import NonFiniteError
from minisapo.progress import bar as progress_bar
from minisapo.metrics_log import MetricsLogger, trim_metrics
from minisapo.runs import (check_finite_weights, load_checkpoint, load_optimizer, load_weights, nonfinite_context,
                           rng_state, save_checkpoint, set_rng_state)


# Random streams of a run: mix_seed(seed, STREAM, ...) keeps them apart (same seed, unrelated numbers).
STREAM_DATA, STREAM_ROLLOUTS, STREAM_HELDOUT, STREAM_EXTRA = 0, 1, 2, 3


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several non-negative integers (run seed, stream, step, prompt, ...), via numpy's
    SeedSequence, which is built to turn related inputs into unrelated streams (no hand-picked multipliers)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def batch_indices(num_samples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The sample indices of step `step`: consecutive slices of per-epoch shuffles, epoch e shuffled with
    mix_seed(seed, STREAM_DATA, e). A pure function of its arguments: a resumed run sees the same data."""
    out, start = [], step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_samples)
        perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(mix_seed(seed, STREAM_DATA, epoch)))
        out += perm[offset:offset + batch_size - len(out)].tolist()
    return out


def flat(prefix: str, d: dict) -> dict:
    """{'hit@10': .3, 'per_level_acc': [.5, .2]} -> {'eval/hit@10': .3, 'eval/per_level_acc/0': .5, ...}: numbers only."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (list, tuple)):
            out.update({f"{prefix}{k}/{i}": float(x) for i, x in enumerate(v)})
        elif isinstance(v, (int, float)) or torch.is_tensor(v):
            out[f"{prefix}{k}"] = float(v)
    return out


def warmup_lr(optimizer, lr: float, step: int, warmup_steps: int) -> float:
    """Set (and return) the learning rate of optimiser step `step` (0-based): linear warm-up over
    `warmup_steps`, then constant."""
    lr = lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def significant_gain(start_hits, hits, p_max: float) -> dict:
    """The paired sign test of `hits` against `start_hits` (0/1 per validation sample, aligned): {"up", "down",
    "p", "significant"}, significant when more samples gained than lost and p < p_max (p_max >= 1: any gain)."""
    t = paired_sign_test(start_hits, hits)
    return {**t, "significant": t["up"] > t["down"] and (p_max >= 1 or t["p"] < p_max)}


def keep_if_best(best: dict, metric: str, record: dict, step: int, model, path: Path,
                 hits=None, p_max: float | None = None) -> dict:
    """The best evaluation so far: `best` ({"step", metric}, {} at first) or, when `record[metric]` is at least
    as good (higher is better; a tie goes to the later step), this one, whose weights are then saved to `path`
    (before a checkpoint refers to them).

    With `p_max` (and `hits`, 0/1 per validation sample) only a real gain replaces the start: the first
    evaluation (step 0, the stage's starting weights) is always eligible; a later one only if it beats the
    start significantly (`significant_gain`: a paired sign test over the validation samples, p < p_max).
    `best` then also holds the start's hits and the test of the kept evaluation."""
    value = record.get(metric)
    gated = p_max is not None and hits is not None
    if value is None or (best and value < best[metric]):
        return best
    test = None
    if gated and step > 0:
        test = significant_gain(best["start_hits"], hits, p_max)
        if not test["significant"]:
            return best
    start_hits = hits if gated and step == 0 else best.get("start_hits")
    best = {"step": step, metric: value, **({"start_hits": start_hits, "test": test} if gated else {})}
    save_checkpoint(path, {"model": model.state_dict(), "step": step, metric: value})
    return best


def takes_best(done: bool, keep_best, best: dict | None, last_step: int) -> bool:
    """THE rule of which weights a stage leaves: a finished stage that keeps its best evaluation (keep_best) and
    has one leaves with that evaluation's weights (<stage>_best.pt), unless its last step was the best; every
    other stage leaves with its last weights. `load_best` (at the end of a loop) and `final_weights` (from a
    run's files) both ask it."""
    return bool(done and keep_best and best and best["step"] != last_step)


def final_weights(run_dir: str | Path, checkpoint: str, stage: str, device="cpu") -> tuple[dict, Path, dict] | None:
    """The weights stage `stage` of a run left in its files, by `takes_best` on the run's own settings (its
    checkpoint's config: `config` for SFT, `rl_config` for RL): (state dict, the file it came from, the last
    checkpoint), or None when the stage has no checkpoint."""
    last = Path(run_dir) / checkpoint
    ckpt = load_checkpoint(last, map_location=device)
    if ckpt is None:
        return None
    settings = ckpt.get("config") or ckpt.get("rl_config") or {}
    best = Path(run_dir) / f"{stage}_best.pt"
    if takes_best(ckpt.get("done"), settings.get("keep_best"), ckpt.get("best"), ckpt["step"]) and best.exists():
        return load_checkpoint(best, map_location=device, need=("model",))["model"], best, ckpt
    return ckpt["model"], last, ckpt


def load_best(model, path: Path, best: dict, metric: str, stage: str, last_step: int, device="cpu") -> None:
    """Leave a finished stage with its best evaluation's weights (`keep_if_best`, `takes_best`): load them into
    `model` unless the last step was the best, and say which checkpoint the run continues with. Nothing to do
    without a best."""
    if not best:
        return
    if takes_best(True, metric, best, last_step):
        load_weights(model, load_checkpoint(path, map_location=device, need=("model",))["model"], path)
    print(f"{stage}: continuing with the best checkpoint by {metric}: step {best['step']}/{last_step} "
          f"({metric} {best[metric]:.4f}; {Path(path).name})")
    if "start_hits" in best:
        print(kept_line(stage, best, metric))


def kept_line(stage: str, best: dict, metric: str) -> str:
    """Why a significance-gated stage (`keep_if_best` with p_max) left with the weights it did."""
    t = best.get("test")
    if t is None:
        return (f"{stage}: kept its start (step 0): no evaluation beat it significantly on the "
                f"{len(best['start_hits'])} validation samples")
    return (f"{stage}: kept step {best['step']}: a significant gain over the start on {len(best['start_hits'])} "
            f"validation samples ({metric} {best[metric]:.4f}; +{t['up']} / -{t['down']} samples, sign test "
            f"p = {t['p']:.2g})")


@torch.no_grad()
def set_weights(model, tensors) -> None:
    """Copy `tensors` (one per parameter, in `model.parameters()` order) into the model's parameters."""
    for p, t in zip(model.parameters(), tensors):
        p.copy_(t)


def due(step: int, every: int, last: int) -> bool:
    """True at every `every`-th step and at the last one (every = 0: only the last)."""
    return step == last or (every > 0 and step % every == 0)


class Trainer:
    """metrics.jsonl, one checkpoint file, resume, the evaluations and the step loop's progress, for one stage
    of a run (SFT, its pretraining, RL)."""

    def __init__(self, run_dir: str | Path, stage: str, checkpoint: str, max_steps: int, eval_every: int = 0,
                 save_every: int = 0, progress: bool = True, keep_best: str | None = None,
                 eval_prefix: str = "eval/", hint: str = "", ema: float = 0.0, keep_best_p: float | None = None):
        self.run_dir, self.stage, self.max_steps = Path(run_dir), stage, max_steps
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.run_dir / checkpoint
        # keep_best: the logged metric (e.g. "eval/valid_hit@10") whose best evaluation's weights are kept in
        # <stage>_best.pt and handed back by `use_best` (ties: the later step)
        self.keep_best, self.best_path, self.best = keep_best, self.run_dir / f"{stage}_best.pt", {}
        # keep_best_p: only an evaluation significantly better than the start (step 0) replaces it: eval_fn then
        # returns "hits" (0/1 per validation sample) and a paired sign test must give p < keep_best_p
        self.keep_best_p = keep_best_p
        self.last_eval: dict = {}  # the last evaluation's record (kept in the checkpoint)
        self.last_record: dict = {}  # the last step's record `run` logged
        self.eval_every, self.save_every = eval_every, save_every
        self.eval_prefix = eval_prefix  # put before the keys of an evaluation in metrics.jsonl
        self.hint = hint  # what to change, added to the error when a weight or an evaluation is NaN
        self.progress = progress and distributed.is_main()  # torchrun: rank 0 shows the progress
        self.logger = MetricsLogger(self.run_dir / "metrics.jsonl")
        self.bar = None
        # ema > 0: an exponential moving average of the weights, avg <- ema * avg + (1 - ema) * weights after
        # every step, is what evaluations see, what the best checkpoint keeps, and the stage's final model;
        # training continues on the weights themselves (the checkpoint holds both)
        self.ema, self.average = ema, None
        self.done = self.saved = 0  # the loop's optimiser steps done and its last checkpointed step (begin sets them)
        self.eval_fn, self.show_eval = None, None  # what evaluations run when due (begin sets them)

    def update_average(self, model) -> None:
        """Fold the weights after an optimiser step into the moving average (ema > 0; the first step starts it)."""
        if not self.ema:
            return
        with torch.no_grad():
            if self.average is None:
                self.average = [p.detach().clone() for p in model.parameters()]
            else:
                for a, p in zip(self.average, model.parameters()):
                    a.lerp_(p.detach(), 1.0 - self.ema)

    @contextmanager
    def averaged(self, model):
        """Inside: the model holds the moving average of its weights (a no-op without one); after: its own."""
        if self.average is None:
            yield
            return
        own = [p.detach().clone() for p in model.parameters()]
        set_weights(model, self.average)
        try:
            yield
        finally:
            set_weights(model, own)

    def fresh(self) -> int:
        """A fresh start: drop this stage's records (and best weights) of an earlier attempt."""
        trim_metrics(self.logger.path, self.stage, None)
        if distributed.is_main():
            self.best_path.unlink(missing_ok=True)
        return 0

    def resume(self, model, optimizer, device="cpu") -> tuple[int, dict]:
        """Load the last checkpoint (weights, optimizer, step, best so far, RNG) -> (step, checkpoint); a fresh
        start, (0, {}), when there is none."""
        ckpt = load_checkpoint(self.ckpt_path, map_location=device, need=("model", "optimizer", "step", "rng"))
        if ckpt is None:
            return self.fresh(), {}
        load_weights(model, ckpt["model"], self.ckpt_path)
        load_optimizer(optimizer, ckpt["optimizer"], self.ckpt_path)
        try:
            set_rng_state(ckpt["rng"])  # dropout draws continue as if never interrupted
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError):
            raise ValueError(f"checkpoint {self.ckpt_path}: its RNG state is unreadable (made by an older minisapo?); "
                             f"delete it to start {self.stage} afresh") from None
        trim_metrics(self.logger.path, self.stage, ckpt["step"])  # records after it are logged again
        self.best, self.last_eval = ckpt.get("best", {}), ckpt.get("last_eval", {})
        if ckpt.get("average") is not None:
            self.average = [a.to(p.device) for a, p in zip(ckpt["average"], model.parameters())]
        print(f"{self.stage}: resumed from {self.ckpt_path} at step {ckpt['step']}/{self.max_steps}")
        return ckpt["step"], ckpt

    def steps(self, start: int) -> Iterator[int]:
        """range(start, max_steps), with a tqdm bar on a terminal (a plain line per 10 % otherwise)."""
        self.bar = progress_bar(range(start, self.max_steps), total=self.max_steps, desc=self.stage, initial=start,
                                enabled=self.progress)
        return iter(self.bar)

    def log(self, record: dict, show: tuple[str, ...] = ()) -> None:
        """One JSON line in metrics.jsonl (tagged with the stage); `show` keys go to the progress display."""
        self.logger.log({"stage": self.stage, **record})
        shown = {k: f"{record[k]:.3g}" for k in show if isinstance(record.get(k), (int, float))}
        if shown and self.bar is not None:
            self.bar.set_postfix(**shown)

    def evaluate(self, step: int, model, eval_fn, show: tuple[str, ...] | None = None) -> dict:
        """Log `eval_fn(model)` (keys prefixed with eval_prefix) at `step`, with the model in eval mode, and
        print it in one line (the `show` keys; None: every key); with keep_best, keep the weights if they are
        the best so far. Returns the record. Under torchrun rank 0 evaluates and every rank gets the record."""
        if eval_fn is None:
            return {}
        check_finite_weights(model, self.stage, step, self.hint)

        def measure() -> tuple[dict, list | None]:
            model.eval()
            with nonfinite_context(f"{self.stage} evaluation", step):
                out = dict(eval_fn(model))
            hits = out.pop("hits", None)  # per validation sample: for the significance test, not for the log
            return flat(self.eval_prefix, out), hits

        with self.averaged(model):  # ema: the moving average is evaluated and kept
            measured, hits = distributed.from_main(measure)
            record = {"step": step, **measured}
            if self.keep_best:  # before a checkpoint refers to the best weights
                self.best = keep_if_best(self.best, self.keep_best, record, step, model, self.best_path, hits,
                                         self.keep_best_p)
        self.log(record)
        self.last_eval = record
        if self.progress:
            shown = [k for k in (record if show is None else show) if k != "step" and k in record]
            line = f"{self.stage} step {step}: " + " ".join(f"{k}={record[k]:.4g}" for k in shown)
            (self.bar.write if self.bar is not None else print)(line)
        distributed.barrier()  # torchrun: the best weights exist before any rank reads them
        return record

    def use_best(self, model, device="cpu") -> None:
        """With keep_best: load the best evaluation's weights into `model` and say which step they are."""
        if self.keep_best:
            load_best(model, self.best_path, self.best, self.keep_best, self.stage, self.max_steps, device)

    def eval_due(self, step: int) -> bool:
        return due(step, self.eval_every, self.max_steps)

    def save_due(self, step: int) -> bool:
        return due(step, self.save_every, self.max_steps)

    def save(self, step: int, model, optimizer, rng: dict | None = None, **extra) -> None:
        """Write the checkpoint atomically (refused if a weight is NaN/inf: the last good one stays)."""
        check_finite_weights(model, self.stage, step, self.hint)
        save_checkpoint(self.ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "step": step, "done": step == self.max_steps, "best": self.best,
                                         "last_eval": self.last_eval, "rng": rng or rng_state(),
                                         "average": self.average, **extra})

    def stopped(self, error: NonFiniteError, done: int, saved: int, model, optimizer, rng: dict, extra) -> Exception:
        """A NaN stopped step done + 1 before its update: checkpoint step `done` (with the RNG state from before
        the failed step), so the run directory is one that --resume continues -> the error to raise."""
        if done > saved:
            try:
                self.save(done, model, optimizer, rng=rng, **extra())
                saved = done
            except NonFiniteError:
                pass
        where = f"the run is saved at step {saved}" if saved else "no step finished"
        return NonFiniteError(f"{error}; {where}: fix the cause, then --resume continues from there")

    # ---- the step loop's bookkeeping: sft.py and rl.py write the loop itself, cleanrl-style -------------
    #     trainer.begin(start, model, eval_fn)
    #     for step in trainer.steps(start):
    #         with trainer.step(step, model, optimizer, extra):   # a NaN inside: checkpoint, then a clear error
    #             record = ... the algorithm's optimiser step ...
    #         trainer.after_step(model, optimizer, record)        # log, evaluate and checkpoint when due
    #     done = trainer.finish(model)                            # keep_best: the best evaluation's weights

    def begin(self, start: int, model, eval_fn=None, first_eval: bool = True,
              show_eval: tuple[str, ...] | None = None) -> None:
        """Before the loop from step `start`: remember `eval_fn` for the evaluations when due, and evaluate the
        starting weights on a fresh start (first_eval)."""
        self.done = self.saved = start  # optimiser steps done; the last checkpointed step
        self.eval_fn, self.show_eval = eval_fn, show_eval
        if first_eval and start == 0:
            self.evaluate(0, model, eval_fn, show_eval)

    @contextmanager
    def step(self, step: int, model, optimizer, extra: Callable[[], dict] = dict):
        """Around one optimiser step (0-based `step`): if it raises NonFiniteError (a NaN loss, gradient or
        weight), checkpoint the last good step (with the RNG state from before this one) and raise an error
        that says --resume continues from there; else count the step done."""
        rng = rng_state()
        try:
            yield
        except NonFiniteError as e:
            raise self.stopped(e, self.done, self.saved, model, optimizer, rng, extra) from None
        self.done = step + 1

    def after_step(self, model, optimizer, record: dict | None, show: tuple[str, ...] = (),
                   extra: Callable[[], dict] = dict) -> None:
        """After a step: fold the weights into the moving average (the stage's last step ends on it); log
        `record` (None: nothing to log) with `show` on the progress display; evaluate when due; checkpoint when
        due (with `extra()`)."""
        done = self.done
        self.update_average(model)
        if done == self.max_steps and self.average is not None:  # the stage ends with the averaged weights
            set_weights(model, self.average)
        if record:
            self.last_record = {"step": done, **record}
            self.log(self.last_record, show)
        if self.eval_due(done):
            self.evaluate(done, model, self.eval_fn, self.show_eval)
        if self.save_due(done):
            self.save(done, model, optimizer, **extra())
            self.saved = done

    def finish(self, model, use_best: bool = True) -> int:
        """After the loop: with keep_best and use_best, a finished stage takes its best evaluation's weights.
        Returns the number of steps done (less than max_steps when the loop was left early)."""
        if self.done == self.max_steps and use_best:
            self.use_best(model, next(model.parameters()).device)
        return self.done
