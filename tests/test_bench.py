"""`minisapo bench` on the tiny model: the structure of its rows and table, and how measured times become
the rows' values and ratios (with the times fixed by hand; no assertion on real timings)."""

import pytest
import torch

from minisapo import bench
from minisapo.bench import format_table, run_benchmarks
from minisapo.cli import main

SMALL = dict(preset="tiny", device="cpu", num_prompts=3, num_generations=2, cache_prompts=2, prompt_len=6,
             max_think_tokens=2, num_items=20, beam_width=3, sft_batch=4, repeat=1)
# a response: 3 blocks <think> 1..max_think_tokens words </think>, then 3 SID tokens (+ a dedup token) and <eos>
MIN_RESPONSE = 3 * (1 + 2) + 3 + 1
MAX_RESPONSE = 3 * (SMALL["max_think_tokens"] + 2) + 4 + 1


def test_run_benchmarks_rows_and_table():
    threads = torch.get_num_threads()
    rows = run_benchmarks(**SMALL)
    assert torch.get_num_threads() == threads  # restored after measuring with 1 thread
    assert [r["benchmark"] for r in rows] == ["sampling", "rl step", "sft step", "beam search", "grammar"]
    for r in rows:
        for key in ["a", "b", "value_a", "value_b", "unit", "ratio", "meaning", "device", "torch", "threads",
                    "preset", "params"]:
            assert key in r, (r["benchmark"], key)
        assert r["value_a"] > 0 and r["value_b"] > 0
        # the ratio is the row's two measurements divided (A / B), as the table's header says
        assert r["ratio"] == pytest.approx(r["value_a"] / r["value_b"]), r["benchmark"]
        assert r["unit"] in ("tok/s", "s") and r["threads"] == 1 and r["device"] == "cpu"
    by = {r["benchmark"]: r for r in rows}
    assert by["sampling"]["same_tokens"]  # with and without the cache: the same tokens
    assert by["sampling"]["rows"] == 2 * 2 and by["rl step"]["rows"] == 3 * 2 and by["sft step"]["rows"] == 4
    # tokens are response tokens only (a prompt is 6 tokens): every row's response fits the grammar's lengths
    for name in ("sampling", "rl step", "sft step"):
        r = by[name]
        assert MIN_RESPONSE * r["rows"] <= r["tokens"] <= MAX_RESPONSE * r["rows"], (name, r["tokens"])
    assert by["sft step"]["tokens"] <= by["rl step"]["tokens"]  # the SFT batch is 4 of the rl step's 6 rollouts
    assert by["sft step"]["seq_len"] <= SMALL["prompt_len"] + MAX_RESPONSE - 1  # inputs: the sequence minus its last
    assert by["beam search"]["ranked"] == 3 * 3  # every prompt ranks beam_width items
    assert 0 < by["grammar"]["ratio"] < 1  # a share of the sampling time
    assert by["grammar"]["value_b"] == by["rl step"]["value_a"]  # of the rl step's sampling run
    table = format_table(rows)
    assert f"torch {torch.__version__}" in table and "device cpu" in table
    assert all(r["benchmark"] in table for r in rows) and len(table.splitlines()) == 3 + len(rows)


def test_rows_follow_from_the_measured_times(monkeypatch):
    """With the timer's seconds fixed (every setting still runs), each row's values, ratio and meaning are
    hand-computable: the best (smallest) of the repeats is kept, tok/s = tokens / seconds."""
    repeats = []

    def fixed_times(fn_a, fn_b, dev, repeat):
        outs = [(fn_a(), fn_b()) for _ in range(repeat)]
        repeats.append(repeat)
        return [3.0, 2.0, 4.0][:repeat], [8.0, 6.0, 7.0][:repeat], outs[-1][0], outs[-1][1]  # best: 2 s and 6 s

    monkeypatch.setattr(bench, "_time_pair", fixed_times)
    rows = run_benchmarks(**dict(SMALL, repeat=3))
    assert repeats == [3, 2, 3, 3]  # rl step, then sampling (the slow no-cache run at most twice), sft, beam
    by = {r["benchmark"]: r for r in rows}
    s = by["sampling"]  # A = with the cache, B = without
    assert (s["value_a"], s["value_b"]) == pytest.approx((s["tokens"] / 2.0, s["tokens"] / 6.0))
    assert s["ratio"] == pytest.approx(3.0) and s["meaning"] == "KV cache is 3.0x faster"
    rl = by["rl step"]
    assert (rl["value_a"], rl["value_b"], rl["ratio"]) == pytest.approx((2.0, 6.0, 1 / 3))
    assert rl["meaning"] == "sampling takes 0.3x fwd+bwd (25% of the two)"
    sft = by["sft step"]
    assert (sft["value_a"], sft["value_b"], sft["ratio"]) == pytest.approx((2.0, 6.0, 1 / 3))
    assert sft["meaning"] == f"fwd+bwd costs 0.3x a forward pass ({sft['tokens'] / 2.0:,.0f} tok/s trained)"
    beam = by["beam search"]
    assert (beam["value_a"], beam["value_b"], beam["ratio"]) == pytest.approx((2.0, 6.0, 1 / 3))
    g = by["grammar"]  # the grammar's own seconds (really measured) within the best sampling run
    assert g["value_b"] == 2.0 and g["ratio"] == pytest.approx(g["value_a"] / 2.0)
    line = next(x for x in format_table(rows).splitlines() if x.startswith("beam search"))
    assert "2.000 s" in line and "6.000 s" in line and "0.3x" in line


def test_bench_command_rejects_unknown_options(capsys):
    assert main(["bench", "--thread=2"]) == 2
    assert "bench takes only --device, --preset, --threads" in capsys.readouterr().err
    assert main(["bench", "--threads=0"]) == 2
