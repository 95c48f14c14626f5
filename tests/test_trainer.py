"""trainer.Trainer, the bookkeeping around the loop SFT and RL write out: its schedule, checkpoints, resume and
best weights, checked on a one-parameter model whose "evaluation" is a scripted list of numbers."""

import json

import pytest
import torch

from minisapo.runs import load_checkpoint
from minisapo.trainer import Trainer, final_weights


def _setup(tmp_path, scores, **kw):
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer = Trainer(tmp_path, "toy", "toy.pt", max_steps=6, eval_every=2, save_every=3, progress=False, **kw)
    evals = []

    def eval_fn(m):  # the weight after step s is s: a scripted score per evaluation
        evals.append(round(m.weight.item()))
        return {"hit@10": scores[round(m.weight.item())]}

    def one_step(step):
        opt.zero_grad()
        (-model.weight.sum()).backward()  # SGD lr 1: the weight grows by exactly 1 per step
        opt.step()
        return {"loss": float(step)} if step % 2 == 0 else None  # records on some steps only
    return model, opt, trainer, evals, eval_fn, one_step


def loop(trainer, start, model, opt, one_step, eval_fn, first_eval=True, stop_after=None, use_best=True,
         extra=dict) -> int:
    """The loop as sft.py and rl.py write it; stop_after: leave it there, as if interrupted."""
    trainer.begin(start, model, eval_fn, first_eval=first_eval)
    for step in trainer.steps(start):
        if stop_after is not None and step >= stop_after:
            break
        with trainer.step(step, model, opt, extra):
            record = one_step(step)
        trainer.after_step(model, opt, record, extra=extra)
    return trainer.finish(model, use_best)


def test_run_schedule_records_and_best_weights(tmp_path):
    scores = [0.1, 0.0, 0.5, 0.0, 0.2, 0.0, 0.3]  # by step: the best evaluation is step 2
    model, opt, trainer, evals, eval_fn, one_step = _setup(tmp_path, scores, keep_best="eval/hit@10")
    assert loop(trainer, trainer.fresh(), model, opt, one_step, eval_fn) == 6
    assert evals == [0, 2, 4, 6]  # the starting weights, every eval_every steps, the last step
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], "loss" in r) for r in records] == [(0, False), (1, True), (2, False), (3, True), (4, False),
                                                           (5, True), (6, False)]
    assert all(r["stage"] == "toy" for r in records) and records[2]["eval/hit@10"] == 0.5
    assert model.weight.item() == 2.0  # left with the best evaluation's weights, not the last
    ckpt = load_checkpoint(tmp_path / "toy.pt")
    assert ckpt["step"] == 6 and ckpt["done"] and ckpt["best"] == {"step": 2, "eval/hit@10": 0.5}
    assert ckpt["last_eval"]["step"] == 6  # the last evaluation comes before the last checkpoint


def test_run_resumes_where_it_stopped(tmp_path):
    scores = [0.0, 0.0, 0.1, 0.0, 0.4, 0.0, 0.3]
    model, opt, trainer, evals, eval_fn, one_step = _setup(tmp_path, scores, keep_best="eval/hit@10")
    assert loop(trainer, trainer.fresh(), model, opt, one_step, eval_fn, stop_after=4) == 4  # "killed" after step 4
    assert load_checkpoint(tmp_path / "toy.pt")["step"] == 3  # checkpoints every 3 steps: the last one is step 3
    model, opt, trainer, evals, eval_fn, one_step = _setup(tmp_path, scores, keep_best="eval/hit@10")
    start = trainer.resume(model, opt)[0]
    assert start == 3 and model.weight.item() == 3.0 and trainer.best == {"step": 2, "eval/hit@10": 0.1}
    loop(trainer, start, model, opt, one_step, eval_fn)
    assert evals == [4, 6] and model.weight.item() == 4.0  # no evaluation of step 0 again; best is step 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4, 5, 6]  # step 4's records logged once, not twice


def test_run_without_keep_best_ends_with_the_last_weights(tmp_path):
    model, opt, trainer, evals, eval_fn, one_step = _setup(tmp_path, [0.9, 0, 0, 0, 0, 0, 0.1])
    loop(trainer, trainer.fresh(), model, opt, one_step, eval_fn, first_eval=False)
    assert evals == [2, 4, 6] and model.weight.item() == 6.0 and not (tmp_path / "toy_best.pt").exists()


def test_ema_evaluates_keeps_and_ends_with_the_moving_average(tmp_path):
    """With ema, evaluations and the best checkpoint see avg <- ema * avg + (1 - ema) * weight (started at the first
    step's weights); training goes on with the weights themselves; an interrupted run resumed ends the same."""
    decay, seen = 0.5, []
    reference, avg = {0: 0.0}, None  # the weight after step s is s; its moving average, computed by hand
    for s in range(1, 7):
        avg = float(s) if avg is None else decay * avg + (1 - decay) * s
        reference[s] = avg

    def scored(m):
        seen.append(m.weight.item())
        return {"hit@10": 1.0 if len(seen) == 3 else 0.0}  # the third evaluation (step 4) is the best

    model, opt, trainer, _, _, one_step = _setup(tmp_path / "a", [], keep_best="eval/hit@10", ema=decay)
    loop(trainer, trainer.fresh(), model, opt, one_step, scored)
    assert seen == [reference[s] for s in (0, 2, 4, 6)]
    assert model.weight.item() == reference[4]  # the kept best is an average, not a raw weight
    assert load_checkpoint(tmp_path / "a" / "toy_best.pt")["model"]["weight"].item() == reference[4]

    seen.clear()
    model, opt, trainer, _, _, one_step = _setup(tmp_path / "b", [], ema=decay)
    loop(trainer, trainer.fresh(), model, opt, one_step, scored, stop_after=4)  # "killed" after step 4
    model, opt, trainer, _, _, one_step = _setup(tmp_path / "b", [], ema=decay)
    start = trainer.resume(model, opt)[0]
    assert start == 3 and model.weight.item() == 3.0  # training resumes on the weights, not on their average
    loop(trainer, start, model, opt, one_step, scored)
    assert seen == [reference[s] for s in (0, 2, 4, 4, 6)]  # step 4 evaluated again after the resume
    assert model.weight.item() == reference[6]  # without keep_best the stage ends with the average


def test_keep_best_p_keeps_the_start_unless_the_gain_is_significant(tmp_path, capsys):
    """With keep_best_p only an evaluation significantly better than step 0 (a paired sign test over the
    validation samples) replaces it; the kept step and its test are in the best record and printed."""
    n = 200

    def hits_of(step):  # 0/1 per validation sample: step 0 hits 60; step 2 gains 8 (noise); step 4 gains 40
        gain = {0: 0, 2: 8, 4: 40, 6: 6}[step]
        return [1] * (60 + gain) + [0] * (n - 60 - gain)

    for p, kept in ((0.05, 4), (1.0, 4)):
        d = tmp_path / str(p)
        model, opt, trainer, evals, _, one_step = _setup(d, None, keep_best="eval/hit@10", keep_best_p=p)

        def eval_fn(m):
            h = hits_of(round(m.weight.item()))
            return {"hit@10": sum(h) / n, "hits": h}

        loop(trainer, trainer.fresh(), model, opt, one_step, eval_fn)
        assert trainer.best["step"] == kept and model.weight.item() == kept
        assert trainer.best["test"]["up"] == 40 and trainer.best["test"]["down"] == 0
        assert "hits" not in json.dumps([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()])
    # only noise: the start (step 0) stays, and the line says so
    d = tmp_path / "noise"
    model, opt, trainer, evals, _, one_step = _setup(d, None, keep_best="eval/hit@10", keep_best_p=0.05)

    def noisy(m):
        step = round(m.weight.item())
        h = [1] * 60 + [0] * (n - 60) if step == 0 else [0] * 5 + [1] * 63 + [0] * (n - 68)  # +8 / -5: p = .58
        return {"hit@10": sum(h) / n, "hits": h}

    capsys.readouterr()
    loop(trainer, trainer.fresh(), model, opt, one_step, noisy)
    assert trainer.best["step"] == 0 and trainer.best["test"] is None and model.weight.item() == 0.0
    assert "kept its start (step 0): no evaluation beat it significantly" in capsys.readouterr().out


@pytest.mark.parametrize("keep_best,scores,leaves", [
    (True, [0.0, 0.0, 0.5, 0.0, 0.1, 0.0, 0.2], 2.0),  # the best evaluation, step 2
    (False, [0.0, 0.0, 0.5, 0.0, 0.1, 0.0, 0.2], 6.0),  # the last step
    (True, [0.0, 0.0, 0.1, 0.0, 0.1, 0.0, 0.2], 6.0),  # keep_best, and the best is the last step
])
def test_one_rule_decides_what_a_stage_leaves(tmp_path, keep_best, scores, leaves):
    """trainer.takes_best decides the weights a stage leaves, at the end of its loop and from its files
    (final_weights, on the settings its checkpoint holds); interrupted, a stage leaves its last checkpoint;
    resumed to the end, what an uninterrupted run leaves."""
    def run(folder, stop_after=None, resume=False):
        model, opt, trainer, _, eval_fn, one_step = _setup(folder, scores, keep_best="eval/hit@10" if keep_best else None)
        start = trainer.resume(model, opt)[0] if resume else trainer.fresh()
        loop(trainer, start, model, opt, one_step, eval_fn, stop_after=stop_after,
             extra=lambda: {"config": {"keep_best": keep_best}})
        return model.weight.item()

    def from_files(folder):
        weights, path, _ = final_weights(folder, "toy.pt", "toy")
        return weights["weight"].item(), path.name

    assert final_weights(tmp_path / "none", "toy.pt", "toy") is None
    assert run(tmp_path / "whole") == leaves  # the end of the loop
    assert from_files(tmp_path / "whole") == (leaves, "toy_best.pt" if leaves != 6.0 else "toy.pt")
    assert run(tmp_path / "cut", stop_after=4) == 4.0  # interrupted after step 4; its checkpoint is step 3
    assert from_files(tmp_path / "cut") == (3.0, "toy.pt")  # an unfinished stage leaves its last checkpoint
    assert run(tmp_path / "cut", resume=True) == leaves
    assert from_files(tmp_path / "cut") == from_files(tmp_path / "whole")
