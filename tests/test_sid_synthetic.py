"""SIDs recover the latent taxonomy of the synthetic world (the designed hierarchy is found again)."""

from types import SimpleNamespace

import numpy as np
import pytest

from minisapo.data.synthetic import World, world_params
from minisapo.sid import SIDConfig
from minisapo.sid.build import build_sids, purity


def world_catalog(world: str = "default", seed: int = 0, **overrides):
    """The catalog of a synthetic world as a duck-typed dataset (no users/sequences needed)."""
    w = World(world_params(world, **overrides), seed)
    return SimpleNamespace(name=world, item_ids=[w.item_id(j) for j in range(w.N)], item_titles=list(w.titles),
                           item_text=list(w.titles), item_categories=list(w.categories))


def test_purity_by_hand():
    assert purity(np.array([0, 0, 0, 1, 1]), ["x", "x", "y", "y", "y"]) == pytest.approx(4 / 5)


def test_default_preset_through_the_data_api(tmp_path):
    """The real path: `minisapo data` (default world) -> `minisapo sid`; level-1 purity >= 0.9."""
    from minisapo.data import DataConfig, load
    from minisapo.data import prepare as prepare_data
    from minisapo.sid import prepare

    path = prepare_data(DataConfig(source="synthetic", world="default", num_users=50), tmp_path)
    ds = load(tmp_path, path.name)
    table, tok, stats = prepare(ds, SIDConfig(), path / "sid", plot=False, verbose=False)
    assert table.num_items == len(ds.item_ids) == 512
    assert stats["purity_level1"] >= 0.9
    assert purity(table.codes[:, 0], [c.split()[0] for c in ds.item_categories]) == stats["purity_level1"]


@pytest.mark.parametrize("world_seed", [1, 2])
def test_level1_codes_recover_top_categories(world_seed):
    ds = world_catalog("default", world_seed)
    table, stats = build_sids(ds, SIDConfig(), verbose=False)
    tops = [c.split()[0] for c in ds.item_categories]
    assert len(set(tops)) > 1
    p = purity(table.codes[:, 0], tops)
    assert p == pytest.approx(stats["purity_level1"])
    assert p >= 0.9, f"level-1 purity {p:.3f} < 0.9"
    # and a random code assignment of the same sizes is far from it (the test can fail)
    rng = np.random.default_rng(0)
    assert purity(rng.integers(0, table.codebook_sizes[0], len(tops)), tops) < 0.6
    assert len({tuple(table.tokens(i)) for i in range(table.num_items)}) == table.num_items
