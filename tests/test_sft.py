"""SFT: prompt masking, schedule, gradient accumulation, and resume == uninterrupted."""

import json
from contextlib import contextmanager

import pytest
import torch

from minisapo import sft
from minisapo.sft import SFTConfig, batch_indices, collate, lr_at, masked_token_loss, train_sft

V = 12


class TinyLM(torch.nn.Module):
    """A small causal stand-in for the GPT (embedding -> GRU -> dropout -> logits)."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.emb = torch.nn.Embedding(V, 16)
        self.rnn = torch.nn.GRU(16, 16, batch_first=True)
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(16, V)

    def forward(self, idx, pos=None, attn_mask=None, cache=None):
        h, _ = self.rnn(self.emb(idx))
        return self.head(self.drop(h))  # (B, T, V)


def make_examples(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lp, lr = int(torch.randint(2, 6, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
        prompt = torch.randint(3, V, (lp,), generator=g).tolist()
        response = torch.randint(3, V, (lr,), generator=g).tolist()
        out.append((prompt + [5], response + [2]))  # prompt ends with a <sep>-like token, response with <eos>
    return out


def test_collate_masks_exactly_the_response():
    ex = [([1, 7, 5], [8, 9, 2]), ([1, 5], [4, 2])]
    x, y, m = collate(ex, pad_id=0)
    assert x.tolist() == [[1, 7, 5, 8, 9], [1, 5, 4, 2, 0]]
    assert y.tolist() == [[7, 5, 8, 9, 2], [5, 4, 2, 0, 0]]
    assert m.tolist() == [[False, False, True, True, True], [False, True, True, False, False]]


def test_loss_ignores_prompt_targets():
    """Changing the target of a prompt position changes neither the loss nor its gradient."""
    torch.manual_seed(0)
    ex = [([1, 7, 6, 5], [8, 9, 2]), ([1, 3, 5], [4, 2])]
    _, y, m = collate(ex, pad_id=0)
    logits = torch.randn(*y.shape, V, requires_grad=True)
    loss = masked_token_loss(logits, y, m)
    (g,) = torch.autograd.grad(loss, logits)
    y2 = y.clone()
    y2[0, 1] = 11  # a prompt position's target (token 6 -> 11)
    y2[1, 4] = 11  # a padding position's target
    loss2 = masked_token_loss(logits, y2, m)
    (g2,) = torch.autograd.grad(loss2, logits)
    assert torch.equal(loss, loss2) and torch.equal(g, g2)
    assert (g[~m] == 0).all()  # no gradient at all at prompt/padding positions
    y3 = y.clone()
    y3[0, 3] = 11  # a response position's target: the loss must change (the test can fail)
    assert not torch.allclose(masked_token_loss(logits, y3, m), loss)
    # hand check: the mean over the 5 response tokens of -log softmax
    lp = torch.log_softmax(logits, -1)
    hand = -sum(lp[b, t, y[b, t]] for b in range(2) for t in range(y.shape[1]) if m[b, t]) / 5
    assert torch.allclose(loss, hand)


def test_lr_schedule():
    cfg = SFTConfig(learning_rate=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_at(s, cfg, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg, 14) == pytest.approx(1.0)
    assert lr_at(9, cfg, 14) == pytest.approx(0.55)
    assert lr_at(14, cfg, 14) == pytest.approx(0.1)


def test_batch_order_covers_each_epoch():
    cfg = SFTConfig(batch_size=3, grad_accum=2)
    seen = [i for s in range(2) for m in range(2) for i in batch_indices(s, m, cfg, 12, seed=1)]
    assert sorted(seen) == list(range(12))  # 2 steps x 2 micro x 3 = one epoch, every example once


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_grad_accum_matches_big_batch(tmp_path):
    ex = make_examples()
    results = []
    for bs, acc, name in [(8, 1, "a"), (4, 2, "b")]:
        torch.manual_seed(0)
        model = TinyLM()
        cfg = SFTConfig(max_steps=3, batch_size=bs, grad_accum=acc, warmup_steps=1, eval_every=0, log_every=1)
        train_sft(model, ex, cfg, tmp_path / name, progress=False)
        results.append(_weights(model))
    for k in results[0]:
        assert torch.allclose(results[0][k], results[1][k], atol=1e-6), k


@contextmanager
def interrupted_after(monkeypatch, steps: int):
    """Inside: train_sft is stopped as by Ctrl-C when it starts the step after `steps` optimiser steps (its
    loop calls sft.lr_at once at the start of every step; the call after the `steps`-th raises
    KeyboardInterrupt). The interruption must happen; the KeyboardInterrupt goes no further."""
    real, calls = sft.lr_at, []

    def lr_at_or_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > steps:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(sft, "lr_at", lr_at_or_interrupt)
        yield


@pytest.mark.parametrize("ema", [0.0, 0.9])  # with sft.ema the moving average is resumed too
def test_resume_gives_identical_weights(tmp_path, monkeypatch, ema):
    ex, valid = make_examples(20, seed=0), make_examples(6, seed=1)
    cfg = SFTConfig(max_steps=12, batch_size=4, grad_accum=2, warmup_steps=3, eval_every=4, log_every=2,
                    eval_samples=6, ema=ema)
    calls = []

    def valid_fn(model):
        calls.append(1)
        return {"valid_hit@10": 0.5}

    torch.manual_seed(0)
    ref = TinyLM(dropout=0.2)
    train_sft(ref, ex, cfg, tmp_path / "ref", valid_examples=valid, valid_fn=valid_fn, seed=3, progress=False)

    torch.manual_seed(0)
    run = TinyLM(dropout=0.2)
    with interrupted_after(monkeypatch, 10):
        train_sft(run, ex, cfg, tmp_path / "run", valid_examples=valid, seed=3, progress=False)
    assert torch.load(tmp_path / "run" / "sft.pt", weights_only=False)["step"] == 8  # last checkpoint
    torch.manual_seed(123)  # a fresh process: different init and RNG, all restored from the checkpoint
    resumed = TinyLM(dropout=0.2)
    torch.rand(7)
    train_sft(resumed, ex, cfg, tmp_path / "run", valid_examples=valid, seed=3, progress=False, resume=True)
    ref_w, res_w = _weights(ref), _weights(resumed)
    for k in ref_w:
        assert torch.equal(ref_w[k], res_w[k]), k
    # the interrupted model was really different (the test can fail)
    assert not all(torch.equal(ref_w[k], v) for k, v in _weights(run).items())

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == [2, 4, 6, 8, 10, 12]  # steps 9-10 of the interrupted run were dropped on resume
    assert [r["step"] for r in records if "valid_loss" in r] == [4, 8, 12]
    assert len(calls) == 3
    ck = torch.load(tmp_path / "run" / "sft.pt", weights_only=False)
    assert ck["done"] and ck["step"] == 12
    # resuming a finished run does nothing
    again = TinyLM(dropout=0.2)
    train_sft(again, ex, cfg, tmp_path / "run", progress=False, resume=True)
    assert all(torch.equal(v, _weights(again)[k]) for k, v in ref_w.items())


def test_resume_logs_the_same_losses_when_eval_every_is_not_a_multiple_of_log_every(tmp_path, monkeypatch):
    """The running loss average since the last log record is checkpointed, so every logged loss matches."""
    ex = make_examples(20, seed=0)
    cfg = SFTConfig(max_steps=9, batch_size=4, warmup_steps=2, eval_every=3, log_every=2)
    torch.manual_seed(0)
    train_sft(TinyLM(dropout=0.2), ex, cfg, tmp_path / "ref", seed=1, progress=False)
    torch.manual_seed(0)
    with interrupted_after(monkeypatch, 5):
        train_sft(TinyLM(dropout=0.2), ex, cfg, tmp_path / "run", seed=1, progress=False)
    train_sft(TinyLM(dropout=0.2), ex, cfg, tmp_path / "run", seed=1, progress=False, resume=True)

    def losses(d):
        return [(r["step"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                if "loss" in r]

    assert losses(tmp_path / "run") == losses(tmp_path / "ref")
    assert [s for s, _ in losses(tmp_path / "ref")] == [2, 4, 6, 8, 9]


def test_keep_best_uses_the_best_validation_checkpoint_and_resumes_exactly(tmp_path, capsys, monkeypatch):
    """valid hit@10 peaks at step 8 of 12: the model leaves SFT with step 8's weights (sft_best.pt), a
    resumed run selects the same ones, and load_sft_weights loads them too."""
    from minisapo.sft import BEST, load_sft_weights

    ex, valid = make_examples(20, seed=0), make_examples(6, seed=1)
    cfg = SFTConfig(max_steps=12, batch_size=4, warmup_steps=2, eval_every=4, log_every=4, eval_samples=6)
    curve = {4: 0.2, 8: 0.5, 12: 0.3}
    snapshots = {}

    def valid_fn(model):
        step = 4 * (len(snapshots) + 1)
        snapshots[step] = _weights(model)
        return {"valid_hit@10": curve[step]}

    torch.manual_seed(0)
    model = TinyLM()
    train_sft(model, ex, cfg, tmp_path / "a", valid_examples=valid, valid_fn=valid_fn, progress=False)
    assert "best checkpoint by valid_hit@10: step 8/12" in capsys.readouterr().out
    assert all(torch.equal(v, snapshots[8][k]) for k, v in _weights(model).items())
    assert not all(torch.equal(v, snapshots[12][k]) for k, v in _weights(model).items())  # the last differs
    assert torch.load(tmp_path / "a" / BEST, weights_only=False)["step"] == 8
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["selected_step"] == 8 and records[-1]["selected_valid_hit@10"] == 0.5
    loaded = TinyLM()
    load_sft_weights(loaded, tmp_path / "a")
    assert all(torch.equal(v, snapshots[8][k]) for k, v in _weights(loaded).items())

    # interrupted after step 8's checkpoint, then resumed: the same selection, the same weights
    snapshots.clear()
    torch.manual_seed(0)
    with interrupted_after(monkeypatch, 10):
        train_sft(TinyLM(), ex, cfg, tmp_path / "b", valid_examples=valid, valid_fn=valid_fn, progress=False)
    resumed = TinyLM()  # validates once more, at step 12 (hit@10 0.3 < step 8's 0.5, kept in sft.pt)
    train_sft(resumed, ex, cfg, tmp_path / "b", valid_examples=valid, valid_fn=lambda m: {"valid_hit@10": 0.3},
              progress=False, resume=True)
    assert all(torch.equal(v, _weights(model)[k]) for k, v in _weights(resumed).items())
    # resuming the finished run hands back the best weights again
    again = TinyLM()
    train_sft(again, ex, cfg, tmp_path / "b", progress=False, resume=True)
    assert all(torch.equal(v, _weights(model)[k]) for k, v in _weights(again).items())
    # keep_best=False: the last step's weights
    torch.manual_seed(0)
    last = TinyLM()
    snapshots.clear()
    train_sft(last, ex, SFTConfig(**{**cfg.__dict__, "keep_best": False}), tmp_path / "c", valid_examples=valid,
              valid_fn=valid_fn, progress=False)
    assert all(torch.equal(v, snapshots[12][k]) for k, v in _weights(last).items())


def test_response_loss_equals_the_full_masked_loss():
    """The GPT path (logits only at response positions) gives the full-logits loss and gradient."""
    from minisapo.model import ModelConfig, build_model
    from minisapo.sft import response_loss

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16), vocab_size=V)
    x, y, m = collate(make_examples(6), pad_id=0)
    full = masked_token_loss(model(x), y, m, normalizer=7.0)
    (g_full,) = torch.autograd.grad(full, model.wte.weight)
    fast = response_loss(model, x, y, m, normalizer=7.0)
    (g_fast,) = torch.autograd.grad(fast, model.wte.weight)
    assert torch.allclose(full, fast, atol=1e-6) and torch.allclose(g_full, g_fast, atol=1e-6)
