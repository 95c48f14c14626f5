"""The synthetic world: sizes, determinism, caching, and the exact oracle vs brute force."""

import numpy as np
import pytest

from minisapo.data import DataConfig, Sample, load, oracle, prepare
from minisapo.data.synthetic import PRESETS, world_params


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    prepare(DataConfig(world="tiny"), d)
    return load(d, "tiny")


def test_tiny_sizes_and_files(tiny):
    p = PRESETS["tiny"]
    n = p["branching"] ** p["depth"] * p["items_per_leaf"]
    assert tiny.num_items == n == 64 and tiny.num_users == p["num_users"] == 100
    info = tiny.info
    assert info["num_items"] == n and info["num_users"] == 100
    assert info["num_interactions"] == sum(len(s) for s in tiny.sequences)
    assert info["splits"] == {k: len(v) for k, v in tiny.splits.items()}
    assert info["splits"]["test"] == info["splits"]["valid"] == 100
    header = (tiny.path / "tiny.inter").read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    assert (tiny.path / "tiny.item").read_text().splitlines()[0] == "item_id:token\ttitle:token_seq\tcategory:token_seq"
    # categories are the taxonomy path, and are not part of the text SIDs embed
    assert tiny.item_categories[0].split() == ["n1", "n1.1", "n1.1.1"]
    assert all("n1" not in t.split() for t in tiny.item_text)
    assert all(p["seq_len"] // 2 <= len(s) <= p["seq_len"] for s in tiny.sequences)
    assert all(a != b for s in tiny.sequences for a, b in zip(s, s[1:]))  # no immediate repeats
    pop = tiny.item_popularity()
    assert pop.sum() == len(tiny.splits["train"]) + len({s.user for s in tiny.splits["train"]})


def brute_distribution(world, user, last):
    """The Markov rule of the synthetic.py docstring, written as explicit loops over leaves."""
    D, B = world.depth, world.C
    leaves = range(world.num_leaves)
    anc = lambda leaf, d: leaf // B ** (D - d)  # ancestor of a leaf at depth d (1 = top)
    leaf_p = np.zeros(world.num_leaves)
    ll = world.item_leaf[last]
    leaf_p[ll] += world.moves[0]
    for up in range(1, D):
        under = [l for l in leaves if anc(l, D - up) == anc(ll, D - up)]
        for l in under:
            leaf_p[l] += world.moves[up] / len(under)
    for c in range(B):
        in_c = [l for l in leaves if anc(l, 1) == c]
        for l in in_c:
            leaf_p[l] += world.moves[D] * world.pref[user][c] / len(in_c)
    p = np.array([leaf_p[world.item_leaf[j]] * world.item_q[j] for j in range(world.N)])
    p[last] = 0
    return p / p.sum()


def test_oracle_matches_brute_force_and_sums_to_one(tiny):
    orc = oracle(tiny)
    for s in tiny.splits["test"][:20]:
        p = orc.distribution(s)
        assert p.shape == (tiny.num_items,) and abs(p.sum() - 1) < 1e-12 and (p >= 0).all()
        assert p[s.history[-1]] == 0
        w = orc.world
        np.testing.assert_allclose(p, brute_distribution(w, s.user, s.history[-1]), rtol=1e-12, atol=1e-15)


def test_oracle_hit_at_k_equals_brute_force_count(tiny):
    orc = oracle(tiny)
    for s in tiny.splits["test"][:30]:
        p = orc.distribution(s)
        # rank of the target = items strictly more likely + equally likely items with a lower index
        rank = sum(1 for j in range(len(p)) if p[j] > p[s.target] or (p[j] == p[s.target] and j < s.target))
        for k in (1, 5, 10):
            assert (s.target in orc.ranking(s, k)) == (rank < k)


def test_data_follows_the_oracle(tmp_path):
    """The observed share of 'next item in the same leaf / same top category' matches the oracle's."""
    path = prepare(DataConfig(world="default", num_users=400), tmp_path)
    assert path.name == "default_num_users400"  # a changed knob names its own folder
    ds = load(tmp_path, path.name)
    orc = oracle(ds)
    w = orc.world
    leaf = w.item_leaf[orc.to_world]  # (N,) leaf of each dataset item
    top = w.item_top[orc.to_world]
    samples = ds.splits["train"][::3]
    for group in (leaf, top):
        pred = np.array([orc.distribution(s)[group == group[s.history[-1]]].sum() for s in samples])
        obs = np.array([group[s.target] == group[s.history[-1]] for s in samples], dtype=float)
        se = np.sqrt((pred * (1 - pred)).sum()) / len(samples)
        assert abs(obs.mean() - pred.mean()) < 4 * se, (obs.mean(), pred.mean(), se)


def test_deterministic_bytes(tmp_path):
    for d in ("a", "b"):
        prepare(DataConfig(world="tiny", name="t"), tmp_path / d)
    for f in ("t.inter", "t.item", "dataset.json"):
        assert (tmp_path / "a/processed/t" / f).read_bytes() == (tmp_path / "b/processed/t" / f).read_bytes()
    prepare(DataConfig(world="tiny", name="t", world_seed=1), tmp_path / "c")
    assert (tmp_path / "a/processed/t/t.inter").read_bytes() != (tmp_path / "c/processed/t/t.inter").read_bytes()


def test_cache_hit_and_rebuild(tmp_path, capsys):
    prepare(DataConfig(world="tiny"), tmp_path)
    capsys.readouterr()
    prepare(DataConfig(world="tiny"), tmp_path)
    assert "cache hit" in capsys.readouterr().out
    prepare(DataConfig(world="tiny", max_history=3), tmp_path)
    out = capsys.readouterr().out
    assert "rebuilding" in out and "max_history" in out
    assert max(len(s.history) for s in load(tmp_path, "tiny").splits["train"]) == 3


def test_knobs_override_preset(tmp_path):
    prepare(DataConfig(world="tiny", items_per_leaf=3, num_users=20, name="k"), tmp_path)
    ds = load(tmp_path, "k")
    assert ds.num_items == 8 * 3 and ds.num_users == 20
    assert ds.info["generator"]["items_per_leaf"] == 3
    assert oracle(ds).distribution(ds.splits["test"][0]).shape == (24,)


def test_bad_synthetic_settings(tmp_path):
    with pytest.raises(ValueError, match="data.world='huge': unknown synthetic world"):
        DataConfig(world="huge")  # refused when the config is made
    cfg = DataConfig()
    cfg.world = "huge"  # or changed after it
    with pytest.raises(ValueError, match="unknown synthetic world"):
        prepare(cfg, tmp_path)
    with pytest.raises(ValueError, match="stay \\+ jump"):
        world_params("tiny", stay=0.9, jump=0.5)
    with pytest.raises(ValueError, match="data.source='csv': use synthetic, amazon or atomic"):
        DataConfig(source="csv")
    with pytest.raises(FileNotFoundError, match="minisapo data --source=synthetic"):
        load(tmp_path, "nothing_here")


def test_sample_is_a_namedtuple():
    s = Sample(3, (1, 2), 5)
    assert s.user == 3 and s.history == (1, 2) and s.target == 5 and s.pos == -1 and tuple(s) == (3, (1, 2), 5, -1)


def test_titles_carry_the_hierarchy(tiny):
    """TF-IDF + RQ-KMeans (the SID stage) recovers the top-level category from titles."""
    sid = pytest.importorskip("minisapo.sid.build")
    table, _ = sid.build_sids(tiny, sid.SIDConfig(), None, verbose=False)
    top = [c.split()[0] for c in tiny.item_categories]
    assert sid.purity(table.codes[:, 0], top) >= 0.9
