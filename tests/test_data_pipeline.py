"""Real data end to end through the `minisapo` command: raw files -> processed -> SIDs -> SFT -> RL -> eval.

The Amazon fixture is tiny (3 users, 4 items): beam width 10 > number of items, codebooks larger than the
catalog, no oracle (real data), and every stage must still cope. ml-100k (RecBole's example data, found in
site-packages when recbole is installed) is the realistic size check; it is marked slow.
"""

import importlib.util
import json
from pathlib import Path

import pytest

from minisapo.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
FAST = ["--preset=tiny", "--sft.max_steps=8", "--sft.eval_every=4", "--sft.eval_samples=4",
        "--rl.max_steps=2", "--rl.batch_size=2", "--num_generations=2", "--rl.eval_every=1",
        "--eval.max_samples=8", "--beam_width=10"]
TOY18 = ["--source=amazon", f"--reviews={SAMPLES / 'amazon2018' / 'Toy_5.json'}", "--kcore=2"]


def _check_real_data_run(run: Path, dataset: str, source: str, item_id: bool = False) -> dict:
    """Every file; on real data both protocols (seen items ranked, and removed) in eval_*.json and report.md."""
    for f in ["config.json", "sft.pt", "rl_checkpoint.pt", "eval_test_sft.json", "eval_test.json", "report.md",
              "sft_curves.png", "rl_curves.png", "eval_hit.png", "eval_test_sft_exclude_seenTrue.json",
              "eval_test_exclude_seenTrue.json"]:
        assert (run / f).exists(), f
    report = json.loads((run / "eval_test.json").read_text())
    filtered = json.loads((run / "eval_test_exclude_seenTrue.json").read_text())
    names = {"popularity", "markov", "item_knn"} | ({"item_id"} if item_id else set())  # no oracle on real data
    assert set(report["baselines"]) == set(filtered["baselines"]) == names
    assert report["exclude_seen"] is False and filtered["exclude_seen"] is True
    assert 0.0 <= report["hit@1"] <= report["hit@5"] <= report["hit@10"] <= 1.0
    assert report["valid_rate"] == 1.0  # constrained decoding only emits real items
    text = (run / "report.md").read_text()
    assert f"dataset `{dataset}` ({source})" in text
    columns = "| metric | model | popularity | markov | item_knn |" + (" item_id |" if item_id else "")
    assert columns + "\n" in text  # the eval tables: no oracle column
    for name in ("SFT", "SFT+RL"):
        for protocol in ("every item ranked", "seen items removed"):
            assert f"## Test: {name}, {protocol}" in text
    # the run in one table per protocol, the model's rows with their numbers under each
    for protocol, rep in (("every item ranked", report), ("seen items removed", filtered)):
        table = text.split(f"| test, {report['num_samples']} users, {protocol} |")[1].split("\n\n")[0]
        final = next(line for line in table.splitlines() if line.startswith("| SFT + RL ("))
        assert final.split(" | ")[3] == f"{rep['hit@10']:.4f}" and "| SFT, " in table
    return report


def test_amazon_2018_fixture_end_to_end(tmp_path, capsys):
    data_dir, runs_dir = f"--data_dir={tmp_path / 'data'}", f"--runs_dir={tmp_path / 'runs'}"
    assert main(["data", *TOY18, "--name=toy18", data_dir]) == 0
    assert main(["sid", *TOY18, "--name=toy18", data_dir]) == 0
    assert (tmp_path / "data" / "processed" / "toy18" / "sid" / "sid_tree.png").exists()
    capsys.readouterr()
    # `run` passes the data flags on to the data stage; --preset=tiny sets data.world, which must not
    # invalidate an Amazon dataset (the synthetic knobs are not part of its cache key)
    assert main(["run", *FAST, *TOY18, "--data.name=toy18", data_dir, runs_dir, "--name=toy18_run",
                 "--eval.item_id_baseline=true"]) == 0
    assert "cache hit" in capsys.readouterr().out
    report = _check_real_data_run(tmp_path / "runs" / "toy18_run", "toy18", "amazon", item_id=True)
    assert report["baselines"]["popularity"]["hit@10"] == 1.0  # 4 items: the top-10 holds them all


def test_a_dataset_is_found_by_name_and_a_conflicting_source_does_not_overwrite_it(tmp_path, capsys):
    data_dir, runs_dir = f"--data_dir={tmp_path / 'data'}", f"--runs_dir={tmp_path / 'runs'}"
    assert main(["data", *TOY18, "--name=toy18", data_dir]) == 0
    inter = tmp_path / "data" / "processed" / "toy18" / "toy18.inter"
    before = inter.read_text()
    capsys.readouterr()
    # the name alone finds the dataset as `data` built it: no --source/--reviews/--kcore to repeat
    assert main(["sid", "--name=toy18", data_dir]) == 0
    out = capsys.readouterr().out
    assert "using the settings it was built with (--source=amazon" in out and "cache hit" in out
    assert main(["run", *FAST, "--data.name=toy18", data_dir, runs_dir, "--name=by_name"]) == 0
    cfg = json.loads((tmp_path / "runs" / "by_name" / "config.json").read_text())
    assert cfg["data"]["source"] == "amazon" and cfg["data"]["kcore"] == 2  # later stages (eval, rl) know it too
    assert inter.read_text() == before
    # asking for another source under that name explicitly is an error that names the dataset's own flags
    capsys.readouterr()
    assert main(["sid", "--source=synthetic", "--name=toy18", data_dir]) == 2
    err = capsys.readouterr().err
    assert "--source=amazon" in err and "--kcore=2" in err and "Traceback" not in err
    assert inter.read_text() == before


def _ml100k() -> Path | None:
    spec = importlib.util.find_spec("recbole")  # located, not imported (recbole's import is slow)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    return path if (path / "ml-100k.inter").exists() else None


@pytest.mark.slow
@pytest.mark.skipif(_ml100k() is None, reason="recbole (with its ml-100k example) is not installed")
def test_movielens_100k_atomic_end_to_end(tmp_path):
    argv = ["run", "--preset=tiny", "--source=atomic", f"--path={_ml100k()}", "--name=ml100k_tiny",
            "--sft.max_steps=10", "--sft.eval_every=10", "--sft.eval_samples=8", "--rl.max_steps=1",
            "--eval.max_samples=16", f"--data_dir={tmp_path / 'data'}", f"--runs_dir={tmp_path / 'runs'}"]
    assert main(argv) == 0
    processed = tmp_path / "data" / "processed" / "ml-100k"
    info = json.loads((processed / "dataset.json").read_text())
    assert info["num_users"] == 943 and 1000 < info["num_items"] <= 1682  # 5-core of 943 users x 1682 movies
    assert "Toy Story" in (processed / "ml-100k.item").read_text()  # titles come from movie_title
    _check_real_data_run(tmp_path / "runs" / "ml100k_tiny", "ml-100k", "atomic")


@pytest.mark.slow
@pytest.mark.skipif(_ml100k() is None, reason="recbole (with its ml-100k example) is not installed")
def test_movielens_100k_sft_then_sapo_does_not_lose_hit_at_10(tmp_path):
    """The real preset's shape on a small budget (a few minutes): SFT, then SAPO with the best-validated RL
    checkpoint kept; SFT+SAPO's test hit@10 is at least SFT's (README, Real data: 0.1188 -> 0.1262)."""
    argv = ["run", "--preset=real", "--source=atomic", f"--path={_ml100k()}", "--name=ml_sapo", "--algo=sapo",
            "--sft.pretrain_epochs=1", "--sft.epochs=0.02", "--sft.eval_every=200", "--sft.eval_samples=200",
            "--rl.max_steps=4", "--rl.eval_every=2", "--rl.batch_size=8", "--rl.num_generations=8",
            "--eval.max_samples=300", f"--data_dir={tmp_path / 'data'}", f"--runs_dir={tmp_path / 'runs'}"]
    assert main(argv) == 0
    run = tmp_path / "runs" / "ml_sapo"
    _check_real_data_run(run, "ml-100k", "atomic", item_id=True)
    sft, final = (json.loads((run / f).read_text()) for f in ("eval_test_sft.json", "eval_test.json"))
    assert sft["baselines"]["popularity"]["hit@10"] < sft["hit@10"]  # a recommender, not a popularity list
    assert final["hit@10"] >= sft["hit@10"], (sft["hit@10"], final["hit@10"])


def test_cache_survives_a_moved_working_folder_and_a_deleted_raw_file(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in ["Toy_5.json", "meta_Toy.json"]:
        (raw / f).write_bytes((SAMPLES / "amazon2018" / f).read_bytes())
    data_dir = f"--data_dir={tmp_path / 'data'}"
    flags = ["data", "--source=amazon", "--kcore=2", "--name=t", data_dir]
    assert main([*flags, f"--reviews={raw / 'Toy_5.json'}"]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main([*flags, "--reviews=raw/Toy_5.json"]) == 0  # the same file, named relative to the cwd
    assert "cache hit" in capsys.readouterr().out
    (raw / "Toy_5.json").unlink()  # e.g. `minisapo eval --run=..` where the raw file is out of reach
    assert main([*flags, "--reviews=raw/Toy_5.json"]) == 0
    assert "using the processed copy" in capsys.readouterr().out


def test_eval_samples_0_validates_on_every_validation_user(tmp_path):
    """sft.eval_samples=0 means all validation samples (the `real` preset's setting), not none."""
    from minisapo import pipeline as P
    from minisapo.config import make_config

    cfg = make_config({"preset": "tiny", "data_dir": str(tmp_path / "data"), "sft.eval_samples": "0"})
    stack = P.load_stack(cfg)
    _, valid = P.sft_examples(cfg, stack)
    assert len(valid) == len(stack.dataset.splits["valid"]) > 0
