"""Semantic IDs: k-means, RQ residuals, dedup, SID table, trie, item vectors, the prepare stage."""

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from minisapo.sid import SIDConfig, SIDTable, SIDTrie, dedup_codes, load, prepare
from minisapo.plots import plot_sid_tree
from minisapo.tokenizer import Tokenizer
from minisapo.sid.descriptors import build_descriptors
from minisapo.sid.embed import STOPWORDS, content_words, descriptor_words, load_vectors, tfidf_svd
from minisapo.sid.rqkmeans import assign, auto_codebook_size, kmeans, level_stats, rq_kmeans, spread_last_level


def tiny_world(branch=(3, 3, 2), per_leaf=4, seed=0):
    """Duck-typed catalog: a latent taxonomy, titles = one word per node on the path + noise."""
    rng = np.random.default_rng(seed)
    ids, titles, cats = [], [], []
    for path in itertools.product(*[range(b) for b in branch]):
        node_words = [f"l{d}n{'_'.join(map(str, path[:d + 1]))}" for d in range(len(path))]
        for _ in range(per_leaf):
            noise = [f"z{int(z)}" for z in rng.integers(0, 30, 2)]
            titles.append(" ".join(node_words + noise))
            ids.append(f"item{len(ids)}")
            cats.append(" ".join("n" + ".".join(map(str, path[:d + 1])) for d in range(len(path))))
    return SimpleNamespace(name="tiny", item_ids=ids, item_titles=titles, item_text=titles, item_categories=cats)


# ------------------------------------------------------------------ k-means
def test_assign_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(50, 5, generator=g), torch.randn(7, 5, generator=g)
    codes, dist = assign(x, c)
    for i in range(len(x)):
        d = [float(((x[i] - c[j]) ** 2).sum()) for j in range(len(c))]
        assert codes[i].item() == int(np.argmin(d))
        assert dist[i].item() == pytest.approx(min(d), abs=1e-4)


def test_kmeans_is_a_fixed_point_and_seeded():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(4, 3, generator=g) * 5
    x = (centers[:, None, :] + 0.1 * torch.randn(4, 30, 3, generator=g)).reshape(-1, 3)
    c, codes = kmeans(x, 4, iters=50, seed=3)
    # returned codes = brute-force nearest centroid
    brute = torch.tensor([int(np.argmin([float(((xi - cj) ** 2).sum()) for cj in c])) for xi in x])
    assert torch.equal(codes, brute)
    # converged: every centroid is the mean of its members; well-separated blobs are recovered
    for j in range(4):
        assert torch.allclose(c[j], x[codes == j].mean(0), atol=1e-5)
    true = torch.arange(4).repeat_interleave(30)
    assert len({(int(a), int(b)) for a, b in zip(true, codes)}) == 4
    c2, codes2 = kmeans(x, 4, iters=50, seed=3)
    assert torch.equal(codes, codes2) and torch.equal(c, c2)


def test_kmeans_repairs_empty_clusters():
    x = torch.cat([torch.zeros(20, 2), torch.ones(20, 2), torch.tensor([[5.0, 5.0], [6.0, 5.0]])])
    init = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.5, 5.0], [100.0, 100.0]])  # last centre attracts nobody
    c, codes = kmeans(x, 4, iters=10, seed=0, init=init)
    assert torch.bincount(codes, minlength=4).min() > 0
    assert float(c[3].abs().max()) < 10  # moved onto the data


def test_rq_residuals_reconstruct_input():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(60, 8, generator=g)
    rq = rq_kmeans(x, [5, 4, 3], iters=10, seed=0)
    assert rq.codes.shape == (60, 3)
    recon = sum(c[rq.codes[:, l]] for l, c in enumerate(rq.centroids)) + rq.residual
    assert torch.allclose(recon, x, atol=1e-5)
    # residual norm shrinks level by level on average
    assert (rq.residual ** 2).sum() < (x ** 2).sum()


def test_level_stats_by_hand():
    codes = np.array([[0, 0], [0, 1], [1, 1], [1, 1]])
    s = level_stats(codes, [4, 2])
    assert s[0]["usage"] == 0.5 and s[0]["perplexity"] == pytest.approx(2.0)
    p = np.array([0.25, 0.75])
    assert s[1]["usage"] == 1.0 and s[1]["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_auto_codebook_size():
    assert auto_codebook_size(500, 3) == 32  # 4 * 500^(1/3) = 31.7
    assert auto_codebook_size(512, 3) == 32  # 4 * 8 = 32 exactly
    assert auto_codebook_size(10_000, 3) == 128
    assert auto_codebook_size(64, 3) == 16
    assert auto_codebook_size(10**9, 3) == 256
    assert auto_codebook_size(3, 3) == 3  # never more codes than items


# -------------------------------------------------------------------- dedup
def test_dedup_unique_and_leaves_others_untouched():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(80, 3))
    d = dedup_codes(codes)
    groups = {}
    for i, row in enumerate(map(tuple, codes)):
        groups.setdefault(row, []).append(i)
    for members in groups.values():
        if len(members) == 1:
            assert d[members[0]] == -1
        else:  # 0, 1, 2, ... in item order
            assert list(d[members]) == list(range(len(members)))
    table = SIDTable.from_codes(codes)
    sids = [tuple(table.tokens(i)) for i in range(80)]
    assert len(set(sids)) == 80
    for i in range(80):
        assert table.item(sids[i]) == i
        assert table.tokens(i)[:3] == [f"<a_{codes[i, 0]}>", f"<b_{codes[i, 1]}>", f"<c_{codes[i, 2]}>"]
    # no complete SID is a proper prefix of another
    for s, t in itertools.permutations(sids, 2):
        assert t[:len(s)] != s


def test_dedup_none_keeps_shared_sids():
    codes = np.array([[0, 1], [0, 1], [1, 0]])
    t = SIDTable.from_codes(codes, dedup=np.full(3, -1))
    assert t.dedup_size == 0 and t.items(["<a_0>", "<b_1>"]) == [0, 1] and t.item(["<a_0>", "<b_1>"]) == 0
    assert t.item(["<a_1>", "<b_1>"]) is None and t.item(["<a_0>"]) is None


def test_table_rejects_a_sid_that_is_a_prefix_of_another():
    # item 0 without a dedup token, item 1 with one: <a_0><b_1> would be both a leaf and an inner trie node,
    # so the grammar could never end a SID there (item 0 unreachable)
    with pytest.raises(ValueError, match="both with and without a dedup token"):
        SIDTable(np.array([[0, 1], [0, 1], [1, 0]]), np.array([-1, 0, -1]), [2, 2])


def test_table_save_load_identical(tmp_path):
    codes = np.array([[0, 1, 2], [0, 1, 2], [3, 0, 1]])
    t = SIDTable.from_codes(codes, descriptors={"<a_0>": "red", "<a_0><b_1>": "shoes"},
                            codebook_sizes=[4, 4, 4], item_ids=["x", "y", "z"])
    t.save(tmp_path)
    data = json.loads((tmp_path / "sid_table.json").read_text())
    assert data == {"x": ["<a_0>", "<b_1>", "<c_2>", "<d_0>"], "y": ["<a_0>", "<b_1>", "<c_2>", "<d_1>"],
                    "z": ["<a_3>", "<b_0>", "<c_1>"]}
    u = SIDTable.load(tmp_path)
    assert np.array_equal(u.codes, t.codes) and np.array_equal(u.dedup, t.dedup)
    assert u.codebook_sizes == [4, 4, 4] and u.descriptors == t.descriptors and u.item_ids == ["x", "y", "z"]
    assert u.all_tokens() == t.all_tokens() and len(t.all_tokens()) == 12 + 2


# --------------------------------------------------------------------- trie
@pytest.mark.parametrize("dedup", ["token", "none"])
def test_trie_equals_brute_force_scan(dedup):
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 4, size=(60, 3))
    table = SIDTable.from_codes(codes, dedup=None if dedup == "token" else np.full(60, -1))
    tok = Tokenizer.build(["a b c"], table)
    trie = SIDTrie(table, tok)
    sids = [tok.sid_ids(table, i) for i in range(60)]
    sid_vocab = [i for i, l in enumerate(tok.token_level) if l >= 0]
    for _ in range(300):
        depth = int(rng.integers(0, 5))
        if rng.random() < 0.6:  # a prefix of a real SID (possibly complete)
            s = sids[int(rng.integers(60))]
            prefix = s[:min(depth, len(s))]
        else:  # random tokens: often impossible
            prefix = [int(rng.choice(sid_vocab)) for _ in range(depth)]
        matching = [s for s in sids if s[:len(prefix)] == prefix]
        if not matching:
            with pytest.raises(ValueError):
                trie.next_tokens(prefix)
            continue
        expect = sorted({s[len(prefix)] for s in matching if len(s) > len(prefix)})
        assert trie.next_tokens(prefix) == expect
        if prefix in sids:
            assert expect == [] and trie.item(prefix) == table.item(tok.decode(prefix).split())
    with pytest.raises(ValueError):
        trie.next_tokens([tok.bos_id])


@pytest.mark.parametrize("dedup", ["token", "none"])
def test_blocked_prefixes_equal_a_scan_of_the_items_left(dedup):
    """A prefix is blocked exactly when no complete SID under it belongs to an item outside the excluded set
    (a SID shared by several items counts as excluded when one of them is)."""
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 3, size=(40, 3))
    table = SIDTable.from_codes(codes, dedup=None if dedup == "token" else np.full(40, -1))
    tok = Tokenizer.build(["a b c"], table)
    trie = SIDTrie(table, tok)
    sids = [tuple(tok.sid_ids(table, i)) for i in range(40)]
    for _ in range(20):
        excluded = set(rng.choice(40, size=int(rng.integers(0, 41)), replace=False).tolist())
        left = {s for i, s in enumerate(sids) if i not in excluded} - {sids[i] for i in excluded}
        prefixes = {s[:d] for s in sids for d in range(len(s) + 1)}
        want = {p for p in prefixes if not any(s[:len(p)] == p for s in left)}
        assert trie.blocked_prefixes(excluded) == want


# ------------------------------------------------------------------ vectors
def test_tfidf_vectors_shape_norm_and_similarity():
    texts = ["red running shoes", "red running shoes fast", "blue cotton shirt", "blue cotton shirt slim"]
    x = tfidf_svd(texts, dim=3, seed=0)
    assert x.shape == (4, 3) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[1, 3]
    assert np.allclose(x, tfidf_svd(texts, dim=3, seed=0))


def test_content_words_and_fields():
    assert content_words("The Lord of the Rings 2001") == ["lord", "rings", "2001", "2000s"]
    assert descriptor_words("Toy Story 2 (1999) Children's Animation") == [
        "toy", "story", "1999", "1990s", "children", "animation"]  # no sequel number, no "s"
    # fields: a genre field of few common words weighs as much as a title of rare ones
    titles = ["alpha beta gamma", "delta epsilon zeta", "eta theta iota", "kappa lambda mu"]
    genres = ["comedy", "comedy", "horror", "horror"]
    x = tfidf_svd([[t, g] for t, g in zip(titles, genres)], dim=4, seed=0)
    sim = x @ x.T
    assert sim[0, 1] > 0.4 and sim[0, 2] < 0.1  # the same genre makes items similar
    plain = tfidf_svd([f"{t} {g}" for t, g in zip(titles, genres)], dim=4, seed=0)
    assert (plain @ plain.T)[0, 1] < sim[0, 1]  # in one text, the rare title words drown the genre


def test_user_vectors_errors(tmp_path):
    good = tmp_path / "v.npy"
    np.save(good, np.ones((5, 4)))
    assert load_vectors(good, 5).shape == (5, 4)
    with pytest.raises(ValueError, match="6 items"):
        load_vectors(good, 6)
    bad = tmp_path / "nan.npy"
    arr = np.ones((5, 4))
    arr[3, 1] = np.nan
    np.save(bad, arr)
    with pytest.raises(ValueError, match="NaN"):
        load_vectors(bad, 5)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.ones(5))
    with pytest.raises(ValueError, match="2-D"):
        load_vectors(flat, 5)
    with pytest.raises(FileNotFoundError):
        load_vectors(tmp_path / "missing.npy", 5)
    with pytest.raises(ValueError, match="vectors="):
        SIDConfig(embedding="bert")
    with pytest.raises(ValueError, match="rows"):
        prepare(tiny_world(), SIDConfig(vectors=str(good)), tmp_path / "out", plot=False, verbose=False)
    # right shape: used as given (here: one-hot of the top category -> level 1 = top category)
    ds = tiny_world()
    tops = [int(c.split()[0][1:]) for c in ds.item_categories]
    vec = tmp_path / "ok.npy"
    np.save(vec, np.eye(3)[tops] + 0.01 * np.random.default_rng(0).normal(size=(len(tops), 3)))
    table, _, stats = prepare(ds, SIDConfig(vectors=str(vec), codebook_size=3), tmp_path / "ok",
                              plot=False, verbose=False)
    assert stats["purity_level1"] == 1.0 and len(set(table.codes[:, 0])) == 3


# -------------------------------------------------------------- descriptors
def test_descriptors_pick_distinctive_words():
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 0]])
    titles = ["shoe red common", "shoe red common", "shoe blue common", "hat green common"]
    d = build_descriptors(codes, titles, num_words=1)
    assert d["<a_0>"] == "shoe" and d["<a_1>"] in {"hat", "green"}
    assert d["<a_0><b_0>"] == "red" and d["<a_0><b_1>"] == "blue"
    assert "common" not in " ".join(d.values())


def test_descriptors_have_no_stopwords_and_are_never_empty():
    """Descriptors once came out as 'the and', 'of the', 'by up': filler title words."""
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]])
    texts = ["The Man of the House 1995 Comedy", "The Day of the Jackal 1997 Thriller",
             "Up and Away by the Sea 1995 Drama", "In and Out 1997 Comedy", "It 1990"]
    d = build_descriptors(codes, texts, num_words=2)
    assert set(d) == {"<a_0>", "<a_1>", "<a_2>", "<a_0><b_0>", "<a_0><b_1>", "<a_1><b_0>", "<a_1><b_1>", "<a_2><b_0>"}
    for key, words in d.items():
        assert words, key
        assert not set(words.split()) & STOPWORDS, (key, words)
    assert d["<a_2>"] == "1990"  # "It" is a stopword: the year is all there is (its decade is not distinctive)
    assert build_descriptors(np.array([[0], [1]]), ["the of", "a"], 2) == {"<a_0>": "misc", "<a_1>": "misc"}


def test_unique_last_level_removes_collisions():
    """Items with identical vectors collide under plain RQ-KMeans; unique_last gives each its own last code."""
    x = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 2 + [[0.7, 0.7]])
    rq = rq_kmeans(x, [2, 4], iters=10, seed=0)
    assert len({tuple(c) for c in rq.codes.tolist()}) < 6  # collisions
    codes = spread_last_level(rq)
    assert len({tuple(c) for c in codes.tolist()}) == 6 and torch.equal(codes[:, 0], rq.codes[:, 0])
    # a group larger than the codebook keeps as few collisions as it can
    codes = spread_last_level(rq_kmeans(torch.ones(6, 2) + 0.01 * torch.arange(6.0)[:, None], [1, 4], iters=5))
    assert len({tuple(c) for c in codes.tolist()}) == 4


# -------------------------------------------------------------------- stage
def test_prepare_end_to_end_and_cache(tmp_path, capsys):
    ds = tiny_world()
    cfg = SIDConfig(codebook_size=0, kmeans_iters=20)
    table, tok, stats = prepare(ds, cfg, tmp_path, plot=plot_sid_tree)
    n = len(ds.item_ids)
    assert table.num_items == n and table.codes.shape == (n, 3)
    assert len({tuple(table.tokens(i)) for i in range(n)}) == n  # unique after dedup
    for name in ["sid_table.json", "sid_stats.json", "tokenizer.json", "sid_descriptors.json", "sid_tree.png"]:
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "sid_table.json").read_text())
    assert saved[ds.item_ids[5]] == table.tokens(5)
    s = json.loads((tmp_path / "sid_stats.json").read_text())
    assert len(s["levels"]) == 3 and {"usage", "perplexity"} <= set(s["levels"][0]) and 0 <= s["collision_rate"] <= 1
    # level-1 codes follow the 3 top-level categories of this easy catalog
    assert s["purity_level1"] >= 0.95
    assert all(f"<a_{c}>" in table.descriptors for c in set(table.codes[:, 0]))
    for i in range(n):
        assert tok.item_of(table, tok.sid_ids(table, i)) == i
    capsys.readouterr()
    table2, tok2, stats2 = prepare(ds, cfg, tmp_path, plot=plot_sid_tree)
    assert "cache hit" in capsys.readouterr().out
    assert np.array_equal(table2.codes, table.codes) and stats2 == stats and tok2.vocab_size == tok.vocab_size
    t3, tok3 = load(tmp_path)
    assert np.array_equal(t3.dedup, table.dedup) and tok3.token_level == tok.token_level
    # another seed is a different build, not a cache hit
    prepare(ds, SIDConfig(kmeans_iters=20, sid_seed=1), tmp_path, plot=False)
    assert "cache hit" not in capsys.readouterr().out


def test_prepare_dedup_none_and_one_level(tmp_path):
    ds = tiny_world()
    table, tok, stats = prepare(ds, SIDConfig(dedup="none", levels=1, codebook_size=4), tmp_path, verbose=False,
                                plot=plot_sid_tree)
    assert (table.dedup == -1).all() and table.dedup_size == 0 and stats["collision_rate"] == 1.0
    assert tok.num_levels == 1 and tok.token_to_id("<b_0>") is not None  # one dedup token is always reserved
    trie = SIDTrie(table, tok)
    for i in range(table.num_items):  # a shared SID lists every item sharing it
        ids = tok.sid_ids(table, i)
        assert trie.next_tokens(ids) == [] and i in trie.items(ids) and i in table.items(table.tokens(i))
        assert set(trie.items(ids)) == set(np.flatnonzero(table.codes[:, 0] == table.codes[i, 0]))
    assert (tmp_path / "sid_tree.png").exists()


def test_collaborative_vectors_reproduce_the_item_cosines():
    """interaction_svd keeps the item-item cosines of the scaled user-item matrix (at full rank, exactly: the
    item-kNN similarity, computed here by a double loop over the users' item sets)."""
    from minisapo.sid.embed import interaction_svd

    rng = np.random.default_rng(3)
    users = [set(rng.choice(8, size=int(rng.integers(1, 6)), replace=False).tolist()) for _ in range(30)]
    x = interaction_svd(users, 8, dim=8)
    has = [{u for u, items in enumerate(users) if i in items} for i in range(8)]
    assert all(has)
    for i in range(8):
        for j in range(8):
            assert float(x[i] @ x[j]) == pytest.approx(len(has[i] & has[j]) / np.sqrt(len(has[i]) * len(has[j])),
                                                       abs=1e-4)
    assert interaction_svd(users, 8, dim=3).shape == (8, 3)


def test_hybrid_vectors_put_text_and_interactions_side_by_side(tmp_path):
    from minisapo.data import DataConfig, load, prepare
    from minisapo.sid.build import item_texts, item_vectors
    from minisapo.sid.embed import interaction_svd, l2_normalise, tfidf_svd

    ds = load(tmp_path, prepare(DataConfig(world="tiny"), tmp_path).name)
    text, collab = tfidf_svd(item_texts(ds), dim=8), interaction_svd(ds.train_user_items(), ds.num_items, dim=8)
    hybrid = item_vectors(item_texts(ds), SIDConfig(embedding="hybrid", embed_dim=8), ds)
    assert (~collab.any(1)).any()  # items no training user has: their hybrid vector is their text's
    np.testing.assert_allclose(hybrid, l2_normalise(np.concatenate([text, collab], 1)), atol=1e-6)
    np.testing.assert_allclose(item_vectors(item_texts(ds), SIDConfig(embedding="collab", embed_dim=8), ds), collab,
                               atol=1e-6)
    with pytest.raises(ValueError, match="sid.embedding=.*use one of"):
        SIDConfig(embedding="bert")


def test_collaborative_sids_are_cached_by_the_training_interactions(tmp_path, monkeypatch):
    """With collab or hybrid item vectors the SID cache key holds the training interactions, also under the
    default sid.method=auto (RQ-KMeans outside a compose world), so other interactions never hit an old cache."""
    from minisapo.data import DataConfig, load, prepare
    from minisapo.sid.build import _fingerprint, sid_method

    ds = load(tmp_path, prepare(DataConfig(world="tiny"), tmp_path).name)
    for cfg in (SIDConfig(embedding="collab"), SIDConfig(embedding="hybrid"), SIDConfig(embedding="collab", method="rqkmeans")):
        assert sid_method(ds, cfg) == "rqkmeans"
        before = _fingerprint(ds, cfg)
        with monkeypatch.context() as m:
            m.setattr(ds, "train_user_items", lambda: [set() for _ in range(ds.num_users)])
            assert _fingerprint(ds, cfg) != before
    text = SIDConfig(embedding="tfidf")  # text vectors: the interactions are not part of the key
    before = _fingerprint(ds, text)
    monkeypatch.setattr(ds, "train_user_items", lambda: [set() for _ in range(ds.num_users)])
    assert _fingerprint(ds, text) == before
