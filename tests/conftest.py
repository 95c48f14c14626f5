import os

import pytest
import torch

# Tests are tiny; one thread keeps them fast and deterministic on small CI machines.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")

# Files whose tests run whole commands (the CLI in-process, subprocesses, torchrun, tutorials): marked
# `integration`, so `python -m pytest -q -m "not integration and not slow"` is the quick unit loop.
INTEGRATION = {"test_bad_inputs.py", "test_bench.py", "test_cli.py", "test_compare.py", "test_data_pipeline.py",
               "test_distributed.py", "test_exercises.py", "test_readme_numbers.py", "test_tutorials.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in INTEGRATION:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def saved_figures(monkeypatch):
    """The matplotlib Figures that minisapo.plots functions save during a test, in order (each is still
    written as a PNG), so a test can check what a figure shows: its lines, bars, labels and titles."""
    from minisapo import plots

    figures = []
    save = plots._save

    def recording_save(fig, path, *args, **kwargs):
        figures.append(fig)
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(plots, "_save", recording_save)
    return figures


@pytest.fixture
def fast() -> list[str]:
    """The tiny preset cut to seconds: a few SFT and RL steps, two generations, eight test samples."""
    return ["--preset=tiny", "--sft.max_steps=8", "--sft.eval_every=4", "--sft.eval_samples=4",
            "--rl.max_steps=2", "--rl.batch_size=2", "--num_generations=2", "--rl.eval_every=1",
            "--eval.max_samples=8", "--beam_width=10"]


@pytest.fixture
def dirs(tmp_path) -> list[str]:
    """--data_dir and --runs_dir inside the test's own temporary folder."""
    return [f"--data_dir={tmp_path / 'data'}", f"--runs_dir={tmp_path / 'runs'}"]
