"""The GPT: KV-cache decoding and left padding must not change any real token's logits."""

import pytest
import torch

from minisapo.model import GPT, ModelConfig, autocast, build_model, pick_device

V = 50


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, **{**dict(n_embd=32, n_layer=2, n_head=2, max_seq_len=256), **kw})
    model = GPT(cfg).eval()
    # a larger init makes logits far from uniform, so the comparisons below are not trivially true
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(10)
    return model


def test_forward_shapes_and_num_params():
    model = tiny_model()
    x = torch.randint(0, V, (3, 7))
    assert model(x).shape == (3, 7, V)
    # hand count: embedding + per layer (qkv 3C^2 + proj C^2 + mlp 8C^2 + 2 norms C) + final norm C
    C, L = 32, 2
    assert model.num_params() == V * C + L * (12 * C * C + 2 * C) + C


def test_vocab_size_required():
    with pytest.raises(ValueError, match="vocab_size"):
        GPT(ModelConfig())
    assert build_model(ModelConfig(), vocab_size=11).cfg.vocab_size == 11


def test_causal():
    """Changing a later token never changes earlier logits."""
    model = tiny_model()
    x = torch.randint(0, V, (2, 9))
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % V
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :5], model(y)[:, :5])


def test_kv_cache_matches_full_forward():
    model = tiny_model()
    x = torch.randint(0, V, (3, 12))
    with torch.no_grad():
        full = model(x)  # (B,T,V)
        cache = model.new_cache(3, 12)
        parts = [model(x[:, :5], cache=cache)]  # prefill 5 tokens
        for t in range(5, 12):  # then one token at a time
            parts.append(model(x[:, t : t + 1], cache=cache))
        inc = torch.cat(parts, dim=1)
    assert full.abs().max() > 1.0  # not trivially small
    torch.testing.assert_close(inc, full, atol=1e-4, rtol=1e-4)


def _left_pad(seqs, T):
    """(B, T) ids right-aligned with zeros in front, and the (B, T) mask of real tokens (written by hand,
    independently of generate.left_pad)."""
    idx = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for b, s in enumerate(seqs):
        idx[b, T - len(s) :] = s
        mask[b, T - len(s) :] = True
    return idx, mask


def test_left_padding_does_not_change_real_logits():
    model = tiny_model()
    seqs = [torch.randint(3, V, (n,)) for n in (4, 9, 6)]
    T = max(len(s) for s in seqs)
    idx, mask = _left_pad(seqs, T)
    with torch.no_grad():
        batched = model(idx, attn_mask=mask)
        for b, s in enumerate(seqs):
            alone = model(s[None])[0]  # (n,V)
            torch.testing.assert_close(batched[b, T - len(s) :], alone, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(batched).all()  # padding queries give finite (ignored) outputs


def test_left_padded_incremental_with_holes_matches_unpadded():
    """Left-padded prefill, then per-step decoding where some rows feed padding 'holes'."""
    model = tiny_model(seed=1)
    seqs = [torch.randint(3, V, (n,)) for n in (3, 7)]
    conts = [torch.randint(3, V, (4,)) for _ in seqs]
    T = 7
    idx, mask = _left_pad(seqs, T)
    with torch.no_grad():
        cache = model.new_cache(2, 20)
        model(idx, attn_mask=mask, cache=cache)
        got = [[], []]
        # row 1 waits (feeds a hole) at step 1 and 2; row 0 advances every step
        schedule = [(True, True), (True, False), (True, False), (True, True), (False, True), (False, True)]
        pos = [0, 0]
        for feed in schedule:
            tok = torch.zeros(2, 1, dtype=torch.long)
            m = torch.zeros(2, 1, dtype=torch.bool)
            for b in range(2):
                if feed[b]:
                    tok[b, 0], m[b, 0] = conts[b][pos[b]], True
            out = model(tok, attn_mask=m, cache=cache)
            for b in range(2):
                if feed[b]:
                    got[b].append(out[b, 0])
                    pos[b] += 1
        for b in range(2):
            full = model(torch.cat([seqs[b], conts[b]])[None])[0, len(seqs[b]) :]
            torch.testing.assert_close(torch.stack(got[b]), full, atol=1e-4, rtol=1e-4)


def test_cache_reorder():
    model = tiny_model()
    x = torch.randint(0, V, (3, 6))
    with torch.no_grad():
        cache = model.new_cache(3, 8)
        model(x[:, :5], cache=cache)
        cache.reorder(torch.tensor([2, 2, 0]))
        out = model(x[[2, 2, 0], 5:6], cache=cache)
        full = model(x[[2, 2, 0]])[:, 5:6]
    torch.testing.assert_close(out, full, atol=1e-4, rtol=1e-4)


def test_too_long_is_a_clear_error():
    model = tiny_model(max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.new_cache(1, 9)


def test_device_helpers(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    # "auto": cuda when available, else mps when available, else cpu (whatever this machine has)
    cuda, mps = [False], [False]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda[0])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps[0])
    assert pick_device("auto") == torch.device("cpu")
    mps[0] = True
    assert pick_device("auto") == torch.device("mps")
    cuda[0] = True
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda", 1)  # any other name goes to torch.device
    with autocast(torch.device("cpu")):
        y = tiny_model()(torch.zeros(1, 2, dtype=torch.long))
    assert y.dtype == torch.float32


def test_training_backward():
    model = tiny_model()
    model.train()
    x = torch.randint(0, V, (2, 6))
    loss = torch.nn.functional.cross_entropy(model(x)[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
