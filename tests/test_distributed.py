"""Data parallelism (minisapo/distributed.py): 2 ranks (gloo, CPU) train to the same weights and log the same
metrics as 1 process with the same global batch and seed; and in 1 process every helper is a no-op.
The 2-rank test takes about 15 s (two processes start and import torch)."""

import json
import math
import os
import socket
from collections import namedtuple

import torch

from minisapo import distributed
from minisapo.files import LEFTOVER

ATOL = 1e-4  # float sums in another order, through 3 RL steps at lr 1e-2; a real difference is ~ one step, 1e-2
S = namedtuple("S", "user history target")


def test_single_process_helpers_are_no_ops():
    assert not distributed.enabled() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.my_slice([1, 2, 3]) == [1, 2, 3]
    assert distributed.sum_over_ranks(3) == 3 and distributed.sum_over_ranks(2, 0.5) == (2, 0.5)
    x = {"a": torch.ones(2, 3)}
    assert distributed.cat_over_ranks(x) is x
    assert distributed.from_main(lambda: 7) == 7
    with distributed.main_first():
        pass
    distributed.barrier()


def test_slices_are_consecutive_and_cover_the_batch(monkeypatch):
    items = list(range(7))
    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(distributed.my_slice(items))
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]


# ---------------------------------------------------------------------------------------------
# the same training in 1 process and in 2 (torch.multiprocessing, gloo)


def _sft_setup():
    from minisapo.model import ModelConfig, build_model
    from minisapo.sft import SFTConfig

    g = torch.Generator().manual_seed(0)
    examples = [(torch.randint(3, 20, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist(),
                 torch.randint(3, 20, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist())
                for _ in range(23)]
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, max_seq_len=32), 20)
    # 5 examples per micro-batch: the ranks get 3 and 2 (uneven slices), 2 micro-batches per step
    cfg = SFTConfig(max_steps=4, batch_size=5, grad_accum=2, warmup_steps=2, eval_every=0, keep_best=False,
                    log_every=1, learning_rate=1e-2)
    return model, examples, cfg


def _rl_setup(rollout):
    import numpy as np

    from minisapo.rl import rl_config
    from minisapo.grammar import Grammar
    from minisapo.model import ModelConfig, build_model
    from minisapo.reasoning import build_prompt
    from minisapo.sid.table import SIDTable
    from minisapo.sid.trie import SIDTrie
    from minisapo.tokenizer import Tokenizer

    codes = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0], [1, 1, 1]])
    table = SIDTable.from_codes(codes)
    tok = Tokenizer.build(["red apple green", "blue sky", "warm cold tea"], table)
    grammar = Grammar(tok, SIDTrie(table, tok), 3, layout="blocks_first", max_think_tokens=3)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, max_seq_len=64), tok.vocab_size)
    samples = [S(0, (i % 6, (i + 1) % 6), (i + 2) % 6) for i in range(6)]
    prompts = [build_prompt(s.history, table, tok) for s in samples]
    # 3 prompts per step: the ranks roll out 2 and 1 whole groups; KL to the reference model on
    cfg = rl_config("sapo", rollout=rollout, num_generations=4, batch_size=3, max_steps=3, learning_rate=1e-2,
                    beta=0.01, eval_every=0, save_every=0, gradient_accumulation_steps=2 if rollout == "sample" else 1)
    return model, grammar, tok, table, samples, prompts, cfg


def _train_all(out_dir):
    """SFT, then RL with sampled groups, then RL with beam groups; returns {name: state_dict}."""
    from minisapo import rl
    from minisapo.sft import train_sft

    weights = {}
    model, examples, cfg = _sft_setup()
    train_sft(model, examples, cfg, os.path.join(out_dir, "sft"), progress=False, pad_id=0, seed=1)
    weights["sft"] = {k: v.clone() for k, v in model.state_dict().items()}
    for rollout in ("sample", "beam"):
        model, grammar, tok, table, samples, prompts, cfg = _rl_setup(rollout)
        rl.train_rl(model, None, grammar, tok, table, samples, prompts, cfg, os.path.join(out_dir, f"rl_{rollout}"),
                    progress=False, seed=1)
        weights[f"rl_{rollout}"] = {k: v.clone() for k, v in model.state_dict().items()}
    return weights


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), MINISAPO_BACKEND="gloo")
    torch.set_num_threads(1)
    assert distributed.init() and distributed.world_size() == world
    weights = _train_all(out_dir)
    if rank == 0:
        torch.save(weights, os.path.join(out_dir, "weights.pt"))
    distributed.cleanup()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_two_ranks_train_like_one_process(tmp_path):
    import torch.multiprocessing as mp

    one, two = tmp_path / "one", tmp_path / "two"
    ref = _train_all(str(one))  # this process: not under torchrun, every hook a no-op
    mp.spawn(_worker, args=(2, _free_port(), str(two)), nprocs=2, join=True)
    got = torch.load(two / "weights.pt")
    for name in ref:
        diff = max((ref[name][k] - got[name][k]).abs().max().item() for k in ref[name])
        print(f"{name}: max |w_1proc - w_2ranks| = {diff:.2e}")
        assert diff <= ATOL, (name, diff)
    # the logged metrics are those of the global batch: the same records (timings aside), from rank 0 only
    for run in ("sft", "rl_sample", "rl_beam"):
        a, b = _records(one / run / "metrics.jsonl"), _records(two / run / "metrics.jsonl")
        assert [r.get("step") for r in a] == [r.get("step") for r in b] and len(a) > 0
        for ra, rb in zip(a, b):
            assert ra.keys() == rb.keys()
            for k, v in ra.items():
                if k in ("step_time", "tokens_per_s") or not isinstance(v, float):
                    assert k in ("step_time", "tokens_per_s") or v == rb[k], (run, k)
                    continue
                assert math.isclose(v, rb[k], rel_tol=1e-4, abs_tol=1e-5), (run, k, v, rb[k])
    assert not [p for p in two.rglob("*") if LEFTOVER.fullmatch(p.name)]  # no temporary file of any rank
