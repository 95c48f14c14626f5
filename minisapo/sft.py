"""Supervised fine-tuning: next-token loss on the response tokens of (prompt, response) examples.

The loop, top to bottom (nanoGPT style):

    for step in range(max_steps):
        lr = warmup then cosine
        for each of grad_accum micro-batches:
            logits = model(x) at the response positions  # (n_response_tokens, V)
            loss = CE(logits, y) on response tokens only  # prompt and padding are masked
            loss.backward()
        clip gradients; AdamW step
        every eval_every steps: validation loss, valid_fn (e.g. quick hit@10), checkpoint;
                                the best validation hit@10 so far is also kept (sft_best.pt)
    with keep_best: the model leaves SFT with the best checkpoint's weights (eval and RL use those)

Both modes go through this same code: `reasoning` (thinking + SID) and `sid_only` (SID only) differ
only in the examples (see reasoning.build_examples).

The data order is a pure function of (seed, step) -- epoch e is `randperm(n)` drawn from a generator
seeded with (seed, e) -- so a checkpoint only needs the step, the model, the optimizer and the RNG
state (for dropout). `resume=True` continues from the last checkpoint and ends with exactly the
weights of an uninterrupted run (same machine, same seed).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from minisapo import distributed
from minisapo.evaluate import SELECT_METRIC
from minisapo.files import at_least, finite, refuse_problems
from minisapo.model import autocast
from minisapo.runs import check_finite, load_weights
from minisapo.trainer import Trainer, final_weights
from minisapo.trainer import batch_indices as shared_batch_indices

CHECKPOINT = "sft.pt"  # in the run directory: the last SFT checkpoint (model, optimizer, step, RNG)
BEST = "sft_best.pt"  # in the run directory: the weights with the best validation SELECT_METRIC so far

Example = tuple[Sequence[int], Sequence[int]]  # (prompt_ids, response_ids)


@dataclass
class SFTConfig:
    max_steps: int = 600
    """optimizer steps; 0 = use `epochs` instead"""
    epochs: float = 0.0
    """passes over the training examples (used only when max_steps = 0)"""
    pretrain_epochs: float = 0.0
    """passes of item-sequence pretraining before SFT (every training item a next-item target, SID tokens only;
    reasoning.build_sequence_examples); 0 = none"""
    pretrain_window: int = 0
    """items per pretraining window (0 = data.max_history + 1, a prompt's history and its target)"""
    pretrain_stride: int = 0
    """items between the starts of two windows of a user (0 = the window: side by side; smaller: overlapping
    windows, every item a target under several contexts)"""
    batch_size: int = 32
    """examples per micro-batch"""
    grad_accum: int = 1
    """micro-batches per optimizer step (effective batch = batch_size * grad_accum)"""
    learning_rate: float = 1e-3
    """peak AdamW learning rate"""
    min_lr_ratio: float = 0.1
    """cosine decays to learning_rate * min_lr_ratio"""
    warmup_steps: int = 20
    """linear warmup from 0 to learning_rate over this many steps"""
    weight_decay: float = 0.1
    """AdamW weight decay (matrices only; biases, norms and gains get none)"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.95
    """AdamW beta2"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0 = no clipping)"""
    eval_every: int = 100
    """validate and checkpoint every this many steps (and at the end; 0 = only at the end)"""
    eval_samples: int = 64
    """validation examples for the validation loss / quick hit@10 (0 = all)"""
    ema: float = 0.0
    """> 0: evaluate, keep and end with the exponential moving average of the weights (avg <- ema * avg + (1 -
    ema) * weights after every step; 0.999 averages over ~1,000 steps); 0 = off"""
    keep_best: bool = True
    """after training use the checkpoint with the best validation hit@10 (sft_best.pt), not the last"""
    log_every: int = 10
    """write a training record to metrics.jsonl every this many steps"""
    user_fraction: float = 1.0
    """SFT sees only this fraction of the training users; RL prompts come from the others"""
    compare_sid_only: bool = False
    """`minisapo run`: also train the same SFT without thinking (mode sid_only, same users and steps) and show it
    beside the reasoning model in the final table"""

    def __post_init__(self):
        refuse_problems(self, "sft")

    def problems(self):
        """(field, what to change) for every setting out of range."""
        yield from at_least(self, max_steps=0, batch_size=1, grad_accum=1, warmup_steps=0, eval_every=0,
                            eval_samples=0, log_every=1)
        if not (finite(self.pretrain_epochs) and self.pretrain_epochs >= 0):
            yield "pretrain_epochs", "must be a finite number >= 0 (0 = no pretraining)"
        if self.pretrain_window < 0 or self.pretrain_window == 1:
            yield "pretrain_window", "must be 0 (data.max_history + 1) or >= 2 items"
        if self.pretrain_stride < 0:
            yield "pretrain_stride", "must be >= 0 (0 = the window: windows side by side)"
        if not (finite(self.user_fraction) and 0 < self.user_fraction <= 1):
            yield "user_fraction", "must be in (0, 1] (1 = SFT on every training user)"
        if not (finite(self.epochs) and self.epochs >= 0):
            yield "epochs", "must be a finite number >= 0"
        elif self.max_steps == 0 and self.epochs == 0:
            yield "max_steps", "set sft.max_steps > 0, or sft.max_steps=0 with sft.epochs > 0"
        for key, lo, hi, text in (("learning_rate", 0, None, "a finite number > 0"),
                                  ("weight_decay", 0, None, "a finite number >= 0"),
                                  ("grad_clip", 0, None, "a finite number >= 0 (0 = no clipping)"),
                                  ("min_lr_ratio", 0, 1, "in [0, 1]"), ("beta1", 0, 1, "in [0, 1)"),
                                  ("beta2", 0, 1, "in [0, 1)"), ("ema", 0, 1, "in [0, 1) (0 = off)")):
            v = getattr(self, key)
            bad = not finite(v) or v < lo or (key == "learning_rate" and v == 0) or \
                (hi is not None and (v > hi or (key != "min_lr_ratio" and v == hi)))
            if bad:
                yield key, f"must be {text}"


# ----------------------------------------------------------------------------------------------
# Batches and the loss
# ----------------------------------------------------------------------------------------------


def collate(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad `prompt + response` sequences and shift them for next-token prediction.

    Returns x (B, T) inputs, y (B, T) targets (y[:, t] = sequence[:, t+1]) and loss_mask (B, T): True where
    y is a response token (the first response token is predicted from the prompt's last token, <sep>).
    """
    seqs = [list(p) + list(r) for p, r in examples]
    L = max(len(s) for s in seqs)
    full = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    is_response = torch.zeros((len(seqs), L), dtype=torch.bool)
    for b, ((p, r), s) in enumerate(zip(examples, seqs)):
        full[b, :len(s)] = torch.tensor(s, dtype=torch.long)
        is_response[b, len(p):len(s)] = True
    return full[:, :-1], full[:, 1:], is_response[:, 1:]


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor,
                      normalizer: float | None = None) -> torch.Tensor:
    """Cross-entropy summed over the masked-in tokens, divided by `normalizer` (default: their count).

    logits (B, T, V), targets (B, T), loss_mask (B, T) bool. Tokens outside the mask (prompt, padding)
    contribute nothing: not to the value, not to the gradient.
    """
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (B*T,)
    ce = ce * loss_mask.flatten().float()
    n = normalizer if normalizer is not None else loss_mask.sum().clamp(min=1).float()
    return ce.sum() / n


def response_loss(model, x: torch.Tensor, y: torch.Tensor, loss_mask: torch.Tensor,
                  normalizer: float | None = None) -> torch.Tensor:
    """`masked_token_loss(model(x), y, loss_mask, normalizer)`, computing logits only where the loss looks.

    The output projection (C -> V) of every prompt and padding position is wasted work: on real data the
    prompt is most of the sequence and V is a few thousand words. A model with `hidden_states` / `logits`
    (the GPT) gets the projection only at response positions; the value is the same.
    """
    if not (hasattr(model, "hidden_states") and hasattr(model, "logits")):
        return masked_token_loss(model(x), y, loss_mask, normalizer)
    h = model.hidden_states(x)  # (B, T, C)
    logits = model.logits(h[loss_mask])  # (n, V): response positions only
    ce = F.cross_entropy(logits.float(), y[loss_mask], reduction="sum")
    n = normalizer if normalizer is not None else loss_mask.sum().clamp(min=1).float()
    return ce / n


def lr_at(step: int, cfg: SFTConfig, total_steps: int) -> float:
    """Linear warmup to cfg.learning_rate, then cosine decay to learning_rate * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    min_lr = cfg.learning_rate * cfg.min_lr_ratio
    return min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (cfg.learning_rate - min_lr)


def total_steps(cfg: SFTConfig, num_examples: int) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    if cfg.epochs <= 0:
        raise ValueError("set sft.max_steps > 0 or sft.epochs > 0")
    return max(1, math.ceil(cfg.epochs * num_examples / (cfg.batch_size * cfg.grad_accum)))


def batch_indices(step: int, micro: int, cfg: SFTConfig, num_examples: int, seed: int) -> list[int]:
    """Example indices of micro-batch `micro` of optimizer step `step`: its slice of the step's examples,
    which are `trainer.batch_indices` (per-epoch shuffles of the example stream, the data order RL uses too)."""
    step_indices = shared_batch_indices(num_examples, cfg.batch_size * cfg.grad_accum, step, seed)
    return step_indices[micro * cfg.batch_size:(micro + 1) * cfg.batch_size]


def _optimizer(model: torch.nn.Module, cfg: SFTConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2) only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))


@torch.no_grad()
def validation_loss(model, examples: Sequence[Example], pad_id: int, device, batch_size: int = 64) -> float:
    """Mean response-token loss over `examples` (token-weighted)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        x, y, m = (t.to(device) for t in collate(examples[i:i + batch_size], pad_id))
        with autocast(device):
            total += float(response_loss(model, x, y, m, normalizer=1.0))
        count += int(m.sum())
    if was_training:
        model.train()
    return total / max(count, 1)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def train_sft(model: torch.nn.Module, train_examples: Sequence[Example], cfg: SFTConfig, run_dir: str | Path,
              valid_examples: Sequence[Example] | None = None, valid_fn: Callable[[torch.nn.Module], dict] | None = None,
              resume: bool = False, device: str | torch.device = "cpu", pad_id: int = 0, seed: int = 0,
              progress: bool = True, stage: str = "sft", validate_first: bool = False) -> dict:
    """Fine-tune `model` on (prompt_ids, response_ids) examples; returns the last validation record.

    run_dir: gets `sft.pt` (checkpoint after every validation, written atomically) and appends to
        `metrics.jsonl` (records with "stage": "sft").
    stage: names the checkpoint (`<stage>.pt`, `<stage>_best.pt`) and the metrics records; the same loop
        also runs the item-sequence pretraining before SFT (stage "pretrain", see pipeline.stage_sft).
    valid_examples: validation examples; the first cfg.eval_samples give `valid_loss`.
    valid_fn: called as valid_fn(model) at every validation; its dict (e.g. {"valid_hit@10": 0.3}) is
        logged too. It must not use the global RNG (beam search does not).
    resume: continue from run_dir/sft.pt if it exists (a finished run returns at once).
    seed: seeds the data order (the model was initialised by the caller).
    validate_first: also validate before the first step, so the starting weights (e.g. a pretrained
        model) are a candidate for the best checkpoint.
    """
    device = torch.device(device)
    model.to(device)
    if len(train_examples) == 0:
        raise ValueError("no SFT training examples: is the train split empty?")
    if cfg.batch_size < distributed.world_size():  # torchrun: every rank needs a share of each micro-batch
        raise ValueError(f"sft.batch_size={cfg.batch_size} is smaller than the {distributed.world_size()} processes")
    n_total = total_steps(cfg, len(train_examples))
    optimizer = _optimizer(model, cfg)
    # a checkpoint at every validation; the best validation hit@10 is always tracked (sft_best.pt) and
    # becomes the model when cfg.keep_best
    trainer = Trainer(run_dir, stage, f"{stage}.pt", n_total, cfg.eval_every, cfg.eval_every, progress,
                      keep_best=SELECT_METRIC, eval_prefix="",
                      hint="lower --sft.learning_rate (or raise --sft.warmup_steps, keep --sft.grad_clip > 0)",
                      ema=cfg.ema)
    start, ckpt = trainer.resume(model, optimizer, device) if resume else (trainer.fresh(), {})
    running, running_n = ckpt.get("running_loss", (0.0, 0))  # the training loss summed since the last record
    if ckpt.get("done") and start >= n_total:  # finished (more --sft.max_steps on resume continue it)
        if cfg.keep_best:
            trainer.use_best(model, device)
        return trainer.last_eval
    valid_examples = list(valid_examples or [])
    valid_examples = valid_examples[:cfg.eval_samples] if cfg.eval_samples > 0 else valid_examples

    def validate(m) -> dict:  # the validation loss, then valid_fn's numbers (e.g. a quick beam hit@10)
        out = {}
        if valid_examples:
            out["valid_loss"] = validation_loss(m, valid_examples, pad_id, device, cfg.batch_size)
            check_finite(stage, done, trainer.hint, **{"validation loss": out["valid_loss"]})
        return {**out, **(valid_fn(m) if valid_fn is not None else {})}

    t0, tokens_seen, done = time.time(), 0, start  # done: optimiser steps done

    extra = lambda: {"config": asdict(cfg), "seed": seed, "running_loss": [running, running_n]}  # noqa: E731
    trainer.begin(start, model, validate if valid_examples or valid_fn else None, first_eval=validate_first)
    for step in trainer.steps(start):
        with trainer.step(step, model, optimizer, extra):  # bookkeeping: a NaN checkpoints the last good step
            model.train()
            lr = lr_at(step, cfg, n_total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # torchrun: every rank takes its slice of the global micro-batch, and n_tokens counts the global step
            micro_batches = [collate([train_examples[i] for i in distributed.my_slice(
                batch_indices(step, m, cfg, len(train_examples), seed))], pad_id) for m in range(cfg.grad_accum)]
            n_tokens = distributed.sum_over_ranks(sum(int(mb[2].sum()) for mb in micro_batches))  # response tokens
            step_loss = 0.0
            for x, y, mask in micro_batches:
                x, y, mask = x.to(device), y.to(device), mask.to(device)
                with autocast(device):
                    # token-mean over the *whole* accumulated batch, so grad_accum=2 x B equals one batch of 2B
                    loss = response_loss(model, x, y, mask, normalizer=max(n_tokens, 1))
                loss.backward()
                step_loss += float(loss.detach())
            distributed.sum_grads(model)  # torchrun: the global batch's gradient (each loss has the global normaliser)
            step_loss = distributed.sum_over_ranks(step_loss)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                       cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            check_finite(stage, step + 1, trainer.hint, loss=step_loss, **{"gradient norm": grad_norm})  # before the update
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            running, running_n, tokens_seen, done = running + step_loss, running_n + 1, tokens_seen + n_tokens, step + 1
            record = None  # a record every log_every steps and at the last
            if done % cfg.log_every == 0 or done >= n_total:
                record = {"loss": running / running_n, "lr": lr, "grad_norm": float(grad_norm),
                          "tokens_per_s": tokens_seen / max(time.time() - t0, 1e-9)}
                running, running_n, tokens_seen, t0 = 0.0, 0, 0, time.time()
        trainer.after_step(model, optimizer, record, show=("loss", "lr"), extra=extra)
    done = trainer.finish(model, use_best=False)
    if done == n_total and cfg.keep_best and trainer.best:  # one record names the model the run continues with
        trainer.log({"step": done, "selected_step": trainer.best["step"],
                     f"selected_{SELECT_METRIC}": trainer.best[SELECT_METRIC]})
        trainer.use_best(model, device)
    return trainer.last_eval


def load_sft_weights(model: torch.nn.Module, run_dir: str | Path, device: str | torch.device = "cpu") -> dict:
    """Load the SFT model of run_dir into `model`: the best checkpoint (sft_best.pt) when the finished run kept
    one (its own sft.keep_best), else the last (sft.pt); the rule is trainer.takes_best. Returns the last
    checkpoint (step, last_eval, best, ...)."""
    found = final_weights(run_dir, CHECKPOINT, "sft", device)
    if found is None:
        raise FileNotFoundError(f"no SFT checkpoint {Path(run_dir) / CHECKPOINT}; run `minisapo sft` first")
    weights, path, ckpt = found
    load_weights(model, weights, path)
    return ckpt
