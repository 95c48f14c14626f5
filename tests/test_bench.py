"""`minisapo bench` on the tiny model: the structure of its rows and table (no timing assertions)."""

import torch

from minisapo.bench import format_table, run_benchmarks
from minisapo.cli import main

SMALL = dict(preset="tiny", device="cpu", num_prompts=3, num_generations=2, cache_prompts=2, prompt_len=6,
             max_think_tokens=2, num_items=20, beam_width=3, sft_batch=4, repeat=1)


def test_run_benchmarks_rows_and_table():
    threads = torch.get_num_threads()
    rows = run_benchmarks(**SMALL)
    assert torch.get_num_threads() == threads  # restored after measuring with 1 thread
    assert [r["benchmark"] for r in rows] == ["sampling", "rl step", "sft step", "beam search", "grammar"]
    for r in rows:
        for key in ["a", "b", "value_a", "value_b", "unit", "ratio", "meaning", "device", "torch", "threads",
                    "preset", "params"]:
            assert key in r, (r["benchmark"], key)
        assert r["value_a"] > 0 and r["value_b"] > 0 and r["ratio"] > 0
        assert r["unit"] in ("tok/s", "s") and r["threads"] == 1 and r["device"] == "cpu"
    by = {r["benchmark"]: r for r in rows}
    assert by["sampling"]["same_tokens"]  # with and without the cache: the same tokens
    assert by["sampling"]["rows"] == 2 * 2 and by["rl step"]["rows"] == 3 * 2
    assert by["beam search"]["ranked"] > 0
    assert 0 < by["grammar"]["ratio"] < 1  # a share of the sampling time
    assert by["grammar"]["value_b"] == by["rl step"]["value_a"]  # of the rl step's sampling run
    table = format_table(rows)
    assert f"torch {torch.__version__}" in table and "device cpu" in table
    assert all(r["benchmark"] in table for r in rows) and len(table.splitlines()) == 3 + len(rows)


def test_bench_command_rejects_unknown_options(capsys):
    assert main(["bench", "--thread=2"]) == 2
    assert "bench takes only --device, --preset, --threads" in capsys.readouterr().err
    assert main(["bench", "--threads=0"]) == 2
