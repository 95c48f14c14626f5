"""A small decoder-only GPT, written from scratch in the nanoGPT spirit.

    tokens -> embedding -> [RMSNorm -> causal self-attention (RoPE) -> + -> RMSNorm -> MLP -> +] x n_layer
           -> RMSNorm -> tied output projection -> logits

Shapes: B = batch, T = new tokens in this call, S = all key positions (cache + new),
C = n_embd, H = n_head, D = C // H (head size), V = vocab size.

Two things a recommendation policy needs beyond nanoGPT:

* **Left-padded batches.** Prompts have different lengths, so a batch is padded on the
  left. `attn_mask (B, T)` says which tokens are real (True) and which are padding
  (False). Padding keys are never attended to, and a real token's position counts real
  tokens only (RoPE position = number of real tokens before it), so padding never
  changes a real token's logits.
* **A KV cache** for incremental decoding: keys and values of earlier tokens are kept,
  so generating one more token costs one token's forward pass instead of the whole
  sequence. The cache also remembers which of its slots are real, so a row may feed a
  "hole" (a padding token with mask False) while other rows advance; beam search and
  sampling use this to keep rows in lock-step.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from minisapo.files import at_least, finite, refuse_problems


@dataclass
class ModelConfig:
    vocab_size: int = 0
    """number of token ids; 0 = filled in from the tokenizer when the model is built"""
    words: bool = True
    """the vocabulary holds the word tokens; False: specials and SID tokens only, for a sid_only model without
    prompt titles (it never reads or writes a word): a softmax over ~200 tokens, not ~2,300"""
    n_layer: int = 2
    """number of transformer blocks"""
    n_head: int = 2
    """attention heads per block (n_embd must be divisible by n_head)"""
    n_embd: int = 32
    """width of the residual stream (C)"""
    mlp_ratio: int = 4
    """hidden width of the MLP = mlp_ratio * n_embd"""
    max_seq_len: int = 512
    """longest prompt + response the model accepts (size of the RoPE table)"""
    rope_base: float = 10000.0
    """RoPE frequency base"""
    dropout: float = 0.0
    """dropout on attention weights and residual branches (training only)"""
    init_std: float = 0.02
    """std of the normal weight init (residual projections are scaled by 1/sqrt(2*n_layer))"""

    def __post_init__(self):
        refuse_problems(self, "model")

    def problems(self):
        """(field, what to change) for every setting out of range."""
        yield from at_least(self, vocab_size=0, n_layer=1, n_head=1, n_embd=1, mlp_ratio=1, max_seq_len=8)
        if self.n_head >= 1 and self.n_embd >= 1:
            if self.n_embd % self.n_head:
                yield "n_embd", (f"must be divisible by model.n_head={self.n_head} "
                                 f"(e.g. --n_embd={max(1, self.n_embd // self.n_head) * self.n_head})")
            elif (self.n_embd // self.n_head) % 2:
                yield "n_embd", f"n_embd / n_head = {self.n_embd // self.n_head} must be even (RoPE rotates pairs)"
        if not (finite(self.rope_base) and self.rope_base > 1):
            yield "rope_base", "must be a finite number > 1"
        if not (finite(self.dropout) and 0 <= self.dropout < 1):
            yield "dropout", "must be in [0, 1)"
        if not (finite(self.init_std) and self.init_std > 0):
            yield "init_std", "must be a finite number > 0"




# ----------------------------------------------------------------------------------------------
# devices


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu. Any other name is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def autocast(device: torch.device | str):
    """Mixed precision context: bf16 autocast on CUDA (when supported), a no-op elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# building blocks


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight  (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # (..., C) -> (..., C)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_tables(head_dim: int, max_len: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (max_len, D/2) for rotary position embeddings."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))  # (D/2,)
    angles = torch.outer(torch.arange(max_len).float(), inv_freq)  # (max_len, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (x1, x2) of every head by the angle of its position. x (B,H,T,D), cos/sin (B,1,T,D/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B,H,T,D/2) each
    y1 = x1 * cos - x2 * sin
    y2 = x1 * sin + x2 * cos
    return torch.stack((y1, y2), dim=-1).flatten(-2).type_as(x)  # (B,H,T,D)


class KVCache:
    """Keys/values of every layer for the tokens seen so far, preallocated to `max_len` slots.

    k[layer], v[layer]: (B, H, max_len, D); `key_mask (B, max_len)` marks real (non-padding)
    slots; `length` = slots filled; `num_real (B,)` = real tokens per row (the next real
    token's RoPE position).
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, grad: bool = False):
        self.cfg, self.max_len = cfg, max_len
        self.grad = grad  # keys/values are concatenated, never written in place, so gradients flow through them
        self.k: list[torch.Tensor | None] = [None] * cfg.n_layer  # allocated on first write (dtype of k)
        self.v: list[torch.Tensor | None] = [None] * cfg.n_layer
        self.key_mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.num_real = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.key_mask.shape[0]

    def write(self, layer: int, k, v):
        """Store the new keys/values (B,H,T,D) of `layer`; return all keys/values so far (B,H,S,D)."""
        T = k.shape[2]
        if self.grad:
            if self.k[layer] is not None:
                k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
            self.k[layer], self.v[layer] = k, v
            return k, v
        if self.k[layer] is None:
            B, H, _, D = k.shape
            self.k[layer] = k.new_zeros(B, H, self.max_len, D)
            self.v[layer] = v.new_zeros(B, H, self.max_len, D)
        start = self.length
        self.k[layer][:, :, start : start + T] = k
        self.v[layer][:, :, start : start + T] = v
        return self.k[layer][:, :, : start + T], self.v[layer][:, :, : start + T]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (R,) in this order (beam search; repeating a prompt's row for G samples)."""
        index = index.to(self.key_mask.device)
        L = self.length

        def keep(buf):  # (B,H,max_len,D) -> (R,H,max_len,D); only the filled slots are copied (the rest is unread)
            if buf is None:
                return None
            if self.grad:
                return buf.index_select(0, index)
            out = buf.new_empty(len(index), *buf.shape[1:])
            out[:, :, :L] = buf[:, :, :L].index_select(0, index)
            return out

        self.k = [keep(k) for k in self.k]
        self.v = [keep(v) for v in self.v]
        self.key_mask = self.key_mask.index_select(0, index)
        self.num_real = self.num_real.index_select(0, index)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.proj.is_residual_out = True
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int):
        # x (B,T,C); cos/sin (B,1,T,D/2); mask (B,1,T,S) bool (True = may attend) or None = plain causal
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B,T,C) each
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B,H,T,D)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B,H,T,D)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B,H,T,D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.write(layer, k, v)  # (B,H,S,D)
        drop = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # (B,H,T,D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B,T,C)
        return F.dropout(self.proj(y), drop, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=False)
        self.proj.is_residual_out = True
        self.dropout = cfg.dropout

    def forward(self, x):  # (B,T,C) -> (B,T,C)
        return F.dropout(self.proj(F.gelu(self.fc(x))), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.n_embd), CausalSelfAttention(cfg)
        self.norm2, self.mlp = RMSNorm(cfg.n_embd), MLP(cfg)

    def forward(self, x, cos, sin, mask, cache, layer):
        x = x + self.attn(self.norm1(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.norm2(x))


# ----------------------------------------------------------------------------------------------
# the model


class GPT(nn.Module):
    """Decoder-only transformer. `model(idx)` -> logits; see `forward` for padding and the cache."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (use tokenizer.vocab_size) before building GPT")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # also the output projection (tied)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.n_embd)
        cos, sin = rope_tables(cfg.n_embd // cfg.n_head, cfg.max_seq_len, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, D/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = self.cfg.init_std
            if getattr(module, "is_residual_out", False):
                std = std / math.sqrt(2 * self.cfg.n_layer)  # GPT-2: keep the residual stream's variance flat
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def num_params(self) -> int:
        """Number of parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, max_len: int, grad: bool = False) -> KVCache:
        """An empty KV cache for `batch_size` rows and up to `max_len` tokens per row (`grad`: gradients flow
        through the cached keys/values, e.g. a prompt computed once for the G responses of a group)."""
        if max_len > self.cfg.max_seq_len:
            raise ValueError(f"max_len={max_len} exceeds model max_seq_len={self.cfg.max_seq_len}; raise max_seq_len")
        return KVCache(self.cfg, batch_size, max_len, self.wte.weight.device, grad)

    def hidden_states(self, idx, pos=None, attn_mask=None, cache: KVCache | None = None):
        """Final normalised hidden states (B,T,C). Arguments as in `forward`."""
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        if cache is not None and past + T > cache.max_len:
            raise ValueError(f"KV cache is full ({past}+{T} > {cache.max_len}); allocate a longer cache")
        real = torch.ones(B, T, dtype=torch.bool, device=idx.device) if attn_mask is None else attn_mask.bool()

        # positions: count real tokens only, so left padding does not shift a real token's position
        if pos is None:
            offset = 0 if cache is None else cache.num_real[:, None]  # (B,1)
            pos = (offset + real.long().cumsum(1) - 1).clamp(min=0)  # (B,T)
        if int(pos.max()) >= self.cfg.max_seq_len:
            raise ValueError(f"position {int(pos.max())} >= max_seq_len={self.cfg.max_seq_len}; raise max_seq_len")
        cos = self.rope_cos[pos][:, None]  # (B,1,T,D/2)
        sin = self.rope_sin[pos][:, None]

        # attention mask: causal AND key is real. A query may always see itself, so a padding
        # query (which sees nothing real) still gets a finite (ignored) output instead of NaN.
        if attn_mask is None and cache is None:
            mask = None  # plain causal attention: the fast SDPA path
        else:
            keys = real if cache is None else torch.cat([cache.key_mask[:, :past], real], dim=1)  # (B,S)
            S = past + T
            q_at = torch.arange(past, past + T, device=idx.device)  # absolute slot of each query (T,)
            causal = torch.arange(S, device=idx.device)[None, :] <= q_at[:, None]  # (T,S)
            itself = torch.arange(S, device=idx.device)[None, :] == q_at[:, None]  # (T,S)
            mask = (causal[None] & keys[:, None, :]) | itself[None]  # (B,T,S)
            mask = mask[:, None]  # (B,1,T,S) broadcast over heads
        if cache is not None:
            cache.key_mask[:, past : past + T] = real

        x = self.wte(idx)  # (B,T,C)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, layer)
        if cache is not None:
            cache.length += T
            cache.num_real += real.long().sum(1)
        return self.norm_f(x)  # (B,T,C)

    def logits(self, h):
        """Tied output projection: hidden states (..., C) -> logits (..., V)."""
        return h @ self.wte.weight.t()

    def forward(self, idx, pos=None, attn_mask=None, cache: KVCache | None = None):
        """idx (B,T) token ids -> logits (B,T,V).

        pos:       (B,T) RoPE positions; default = number of real tokens before each token
                   (continuing from the cache).
        attn_mask: (B,T) bool, True = real token, False = padding (never attended to);
                   default all real. With a cache, covers only the new tokens (the cache
                   remembers earlier ones).
        cache:     a `KVCache` from `new_cache`; the new tokens' keys/values are appended.
        """
        return self.logits(self.hidden_states(idx, pos, attn_mask, cache))


def build_model(cfg: ModelConfig, vocab_size: int | None = None) -> GPT:
    """GPT(cfg) with vocab_size filled in (when given)."""
    if vocab_size is not None:
        cfg = replace(cfg, vocab_size=vocab_size)
    return GPT(cfg)
