"""The `minisapo` command end to end on the tiny preset (seconds), and its error messages."""

import json
import shutil

import pytest

from minisapo.cli import main
from minisapo.metrics_log import read_metrics

def test_run_end_to_end_writes_every_file(tmp_path, dirs, capsys, fast):
    assert main(["run", *fast, *dirs, "--name=e2e"]) == 0
    run = tmp_path / "runs" / "e2e"
    for f in ["config.json", "metrics.jsonl", "sft.pt", "rl_checkpoint.pt", "eval_test_sft.json", "eval_test.json",
              "report.md", "sft_curves.png", "rl_curves.png", "eval_hit.png", "response_steps.png"]:
        assert (run / f).exists(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["sft"]["max_steps"] == 8 and cfg["rl"]["advantage"] == "step"  # resolved config, algo applied
    report = json.loads((run / "eval_test.json").read_text())
    for key in ["hit@1", "hit@5", "hit@10", "ndcg@10", "valid_rate", "per_level_acc"]:
        assert key in report
    assert set(report["baselines"]) == {"popularity", "markov", "item_knn", "oracle"}
    assert 0.0 <= report["hit@1"] <= report["hit@5"] <= report["hit@10"] <= 1.0
    records = read_metrics(run / "metrics.jsonl")
    assert any(r.get("stage") == "sft" for r in records) and any("frac_reward_zero_std" in r for r in records)
    assert "hit@10" in (run / "report.md").read_text()
    # --resume continues the RL stage from its checkpoint: earlier records are kept, none is duplicated
    sft_records = [r for r in records if r.get("stage") == "sft"]
    assert main(["run", *fast, *dirs, "--name=e2e", "--rl.max_steps=3", "--resume"]) == 0
    again = read_metrics(run / "metrics.jsonl")
    assert [r for r in again if r.get("stage") == "sft"] == sft_records
    rl_steps = [r["step"] for r in again if r.get("stage") == "rl" and "reward" in r]
    assert rl_steps == [1, 2, 3]
    # the data and SID stages are cached: a second `data` call says so
    capsys.readouterr()
    assert main(["data", "--world=compose_tiny", *dirs[:1]]) == 0
    assert "cache hit" in capsys.readouterr().out


def test_eval_and_rl_commands_on_a_finished_sft_run(tmp_path, dirs, fast):
    assert main(["sft", *fast, *dirs, "--name=s"]) == 0
    assert (tmp_path / "runs" / "s" / "sid" / "tokenizer.json").exists()  # the run's own SIDs, snapshotted
    # the dataset's SID cache is rebuilt differently since: eval still uses the SIDs the model was trained with
    shutil.rmtree(tmp_path / "data" / "processed" / "compose_tiny" / "sid")
    assert main(["eval", f"--run={tmp_path / 'runs' / 's'}", "--split=valid", "--sid.codebook_size=4"]) == 0
    assert (tmp_path / "runs" / "s" / "eval_valid.json").exists()
    # other evaluation settings never overwrite the run's results: a file named for them
    before = (tmp_path / "runs" / "s" / "eval_test.json").read_text()
    assert main(["eval", f"--run={tmp_path / 'runs' / 's'}", "--eval.beam_width=12", "--max_samples=4"]) == 0
    assert (tmp_path / "runs" / "s" / "eval_test.json").read_text() == before
    other = json.loads((tmp_path / "runs" / "s" / "eval_test_beam_width12_max_samples4.json").read_text())
    assert other["num_samples"] == 4 and other["settings"]["eval"]["beam_width"] == 12
    assert main(["rl", f"--from={tmp_path / 'runs' / 's'}", "--algo=grpo", "--rl.max_steps=1"]) == 0
    cfg = json.loads((tmp_path / "runs" / "s_grpo" / "config.json").read_text())
    assert cfg["rl"]["reward"] == "exact" and cfg["rl"]["advantage"] == "sequence"


@pytest.mark.parametrize("argv, message", [
    (["run", "--n_layers=2"], "did you mean --n_layer"),
    (["run", "--preset=huge"], "unknown preset"),
    (["rl"], "needs --from"),
    (["rl", "--from=/nonexistent"], "config.json not found"),
    (["run", "--world=nope"], "unknown synthetic world"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys, dirs):
    assert main(argv + dirs) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_checkpoint_for_another_vocabulary_is_a_clear_error(tmp_path):
    import torch

    from minisapo.model import GPT, ModelConfig
    from minisapo.runs import load_weights

    small = GPT(ModelConfig(vocab_size=20))
    other = GPT(ModelConfig(vocab_size=21)).state_dict()
    with pytest.raises(ValueError, match="another vocabulary or model size"):
        load_weights(small, other, tmp_path / "sft.pt")
    torch.manual_seed(1)
    fitting = {k: v + torch.rand_like(v) for k, v in small.state_dict().items()}
    load_weights(small, fitting, "same")  # a fitting one loads, every tensor
    assert all(torch.equal(v, fitting[k]) for k, v in small.state_dict().items())


def test_the_item_id_baseline_is_the_item_id_mode_run_and_changes_nothing_else(tmp_path, dirs, capsys, fast):
    """`sft --mode=item_id` trains the item-ID transformer; a run with eval.item_id_baseline trains the same model
    (same settings and seed) in <run>/item_id/ and ranks with it in the `item_id` row, leaving its own model's
    numbers as they are without the row; RL from that run keeps the row; RL refuses an item-ID model."""
    flags = [*fast, *dirs, "--rl.max_steps=0"]
    assert main(["sft", *flags, "--mode=item_id", "--name=ids"]) == 0
    assert main(["sft", *flags, "--eval.item_id_baseline=true", "--name=with"]) == 0
    assert main(["sft", *flags, "--name=without"]) == 0
    read = lambda run, f="eval_test.json": json.loads((tmp_path / "runs" / run / f).read_text())  # noqa: E731
    ids, with_row, without = read("ids"), read("with"), read("without")
    assert ids["valid_rate"] == 1.0 and ids["mean_response_length"] is None
    row = with_row["baselines"]["item_id"]
    assert {k: row[k] for k in ("hit@1", "hit@5", "hit@10", "ndcg@10", "ranks")} == \
        {k: ids[k] for k in ("hit@1", "hit@5", "hit@10", "ndcg@10", "ranks")}
    assert {k: v for k, v in with_row.items() if k not in ("baselines", "settings")} == \
        {k: v for k, v in without.items() if k not in ("baselines", "settings")}
    assert "item_id" not in without["baselines"] and "| item_id |" in (tmp_path / "runs" / "with" / "report.md").read_text()
    assert main(["rl", f"--from={tmp_path / 'runs' / 'with'}", "--rl.max_steps=1", "--rl.eval_every=1"]) == 0
    assert read("with_sapo")["baselines"]["item_id"]["ranks"] == row["ranks"]
    capsys.readouterr()
    assert main(["rl", f"--from={tmp_path / 'runs' / 'ids'}", "--rl.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "reasoning.mode=item_id" in err and "Traceback" not in err
