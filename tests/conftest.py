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
