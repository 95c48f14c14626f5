"""`minisapo compare` on the tiny preset: same SFT checkpoint per seed, mean +- std over seeds, sweeps."""

import json

import pytest

from minisapo.cli import main
from minisapo.compare import summarize


def test_summarize_is_mean_and_std_over_seeds():
    rows = {"sapo": [{"hit@10": 0.2, "valid_rate": 1.0}, {"hit@10": 0.4, "valid_rate": 1.0}]}
    s = summarize(rows)
    assert s["sapo"]["hit@10"] == pytest.approx([0.3, 0.02 ** 0.5])  # sample std: sqrt((0.1^2 + 0.1^2) / (2 - 1))
    assert s["sapo"]["valid_rate"] == pytest.approx([1.0, 0.0])
    # three seeds: mean 0.3, sample std (divide by n - 1) sqrt((0.2^2 + 0.1^2 + 0.3^2) / 2)
    three = summarize({"grpo": [{"hit@10": 0.1}, {"hit@10": 0.2}, {"hit@10": 0.6}]})
    assert three["grpo"]["hit@10"] == pytest.approx([0.3, (0.14 / 2) ** 0.5])
    assert summarize({"one": [{"hit@10": 0.4}]})["one"]["hit@10"] == [0.4, 0.0]  # one seed: no spread


def test_compare_two_algos_two_seeds(tmp_path, fast, dirs):
    assert main(["compare", "--algos=grpo,sapo", "--seeds=2", *fast, *dirs]) == 0
    root = tmp_path / "runs" / "compare_tiny"
    out = json.loads((root / "compare.json").read_text())
    assert set(out["summary"]) == {"sft", "grpo", "sapo"}
    for algo in ("grpo", "sapo"):
        rows = out["per_seed"][algo]
        assert len(rows) == 2
        mean, std = out["summary"][algo]["hit@10"]
        a, b = rows[0]["hit@10"], rows[1]["hit@10"]
        assert mean == pytest.approx((a + b) / 2) and std == pytest.approx(abs(a - b) / 2 ** 0.5)  # two seeds, by hand
        assert 0.0 <= out["summary"][algo]["frac_reward_zero_std"][0] <= 1.0
    # both algorithms started from the same SFT weights of their seed, with the same rollout budget
    for s in range(2):
        cfgs = [json.loads((root / f"seed{s}" / a / "config.json").read_text()) for a in ("grpo", "sapo")]
        assert cfgs[0]["seed"] == cfgs[1]["seed"] == s
        assert {k: v for k, v in cfgs[0]["rl"].items() if k not in ("reward", "advantage", "step_token_mean")} == \
               {k: v for k, v in cfgs[1]["rl"].items() if k not in ("reward", "advantage", "step_token_mean")}
    assert "± " in (root / "compare.md").read_text() and (root / "compare_curves.png").exists()
    # a second call reuses every finished piece (no training): same numbers
    assert main(["compare", "--algos=grpo,sapo", "--seeds=2", *fast, *dirs]) == 0
    again = json.loads((root / "compare.json").read_text())
    assert again["summary"] == out["summary"]


def test_sweep_over_catalog_size(tmp_path, fast, dirs):
    assert main(["compare", "--algos=grpo,sapo", "--seeds=1", "--sweep=items_per_leaf:4,8", *fast, *dirs]) == 0
    sweep = json.loads((tmp_path / "runs" / "sweep_tiny_items_per_leaf" / "sweep.json").read_text())
    assert [r["value"] for r in sweep["rows"]] == ["4", "8"]
    for r in sweep["rows"]:
        assert r["sapo-grpo_hit@10"] == pytest.approx(r["sapo_hit@10"][0] - r["grpo_hit@10"][0])
    # each knob value got its own dataset
    assert (tmp_path / "data" / "processed" / "compose_tiny_items_per_leaf4").exists()
    assert (tmp_path / "runs" / "sweep_tiny_items_per_leaf" / "sweep.png").exists()


def test_compare_from_an_existing_sft_run_does_not_retrain(tmp_path, fast, dirs):
    assert main(["sft", *fast, *dirs, "--name=base"]) == 0
    sft_eval = json.loads((tmp_path / "runs" / "base" / "eval_test.json").read_text())
    assert main(["compare", "--from=" + str(tmp_path / "runs" / "base"), "--algos=grpo,sapo", "--seeds=2",
                 "--rl.max_steps=1", *dirs]) == 0
    root = tmp_path / "runs" / "compare_base"
    out = json.loads((root / "compare.json").read_text())
    assert out["from"] == str(tmp_path / "runs" / "base")
    # the SFT row is the run's own model, the same for both seeds; no SFT model was trained here
    assert out["per_seed"]["sft"][0]["hit@10"] == out["per_seed"]["sft"][1]["hit@10"] == sft_eval["hit@10"]
    assert not list(root.rglob("sft.pt"))
    for s in range(2):
        cfg = json.loads((root / f"seed{s}" / "sapo" / "config.json").read_text())
        assert cfg["seed"] == s and cfg["rl"]["max_steps"] == 1 and cfg["sft"]["max_steps"] == 8  # the run's config
    assert main(["compare", "--from=x", "--sweep=items_per_leaf:4,8", *dirs]) == 2
