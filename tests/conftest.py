import os

import pytest
import torch

# Tests are tiny; one thread keeps them fast and deterministic on small CI machines.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


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
