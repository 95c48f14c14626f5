"""Metrics on hand examples with known ranks; baselines and the report table."""

import math

import numpy as np
import pytest

from minisapo.evaluate import (eval_report, format_table, hit_at_k, ndcg_at_k, parse_ks, per_level_accuracy,
                               popularity_baseline, ranking_metrics)


def test_hit_and_ndcg_known_ranks():
    ranked = [7, 3, 9, 1, 4]
    # target at rank 1, 3, absent
    assert hit_at_k(ranked, 7, 1) == 1.0 and ndcg_at_k(ranked, 7, 1) == 1.0
    assert hit_at_k(ranked, 9, 1) == 0.0 and ndcg_at_k(ranked, 9, 1) == 0.0
    assert hit_at_k(ranked, 9, 2) == 0.0 and hit_at_k(ranked, 9, 3) == 1.0
    assert ndcg_at_k(ranked, 9, 3) == pytest.approx(0.5)  # 1/log2(3+1)
    assert ndcg_at_k(ranked, 3, 5) == pytest.approx(1 / math.log2(3))
    assert hit_at_k(ranked, 42, 5) == 0.0 and ndcg_at_k(ranked, 42, 5) == 0.0
    assert hit_at_k([], 1, 10) == 0.0


def test_ranking_metrics_means():
    rankings = [[1, 2, 3], [2, 1, 3], [3, 2, 1], [4, 5, 6]]
    targets = [1, 1, 1, 1]  # ranks 1, 2, 3, absent
    m = ranking_metrics(rankings, targets, [1, 2, 3])
    assert m["hit@1"] == 0.25 and m["hit@2"] == 0.5 and m["hit@3"] == 0.75
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3) + 0.5) / 4)
    assert "recall@1" not in m  # == hit@1 with one target; not reported twice


def test_parse_ks():
    assert parse_ks("10,1,5") == [1, 5, 10] and parse_ks((5, 1)) == [1, 5]
    with pytest.raises(ValueError):
        parse_ks("1,x")
    with pytest.raises(ValueError):
        parse_ks("0")


def test_per_level_accuracy():
    codes = np.array([[0, 0, 0], [0, 1, 0], [1, 1, 0]])
    # top 1 vs target 0: levels (T, F, T); top 2 vs 2: all; None vs 0: none
    assert per_level_accuracy([1, 2, None], [0, 2, 0], codes) == pytest.approx([2 / 3, 1 / 3, 2 / 3])


class FakeDataset:
    def item_popularity(self):
        return np.array([5.0, 9.0, 1.0, 9.0, 0.0])


class S:
    def __init__(self, target):
        self.user, self.history, self.target = 0, (0,), target


def test_popularity_baseline_and_table():
    samples = [S(1), S(3), S(0), S(4)]  # popularity ranking (ties -> lower index): 1, 3, 0, 2, 4
    pop = popularity_baseline(FakeDataset(), samples, ks="1,2,5")
    assert pop["hit@1"] == 0.25 and pop["hit@2"] == 0.5 and pop["hit@5"] == 1.0
    assert pop["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 0.5 + 1 / math.log2(6)) / 4)
    model = dict(pop, **{"hit@1": 0.9, "mean_response_length": 12.0})
    rep = eval_report(model, pop, None)
    assert rep["baselines"]["popularity"]["hit@2"] == 0.5 and "oracle" not in rep["baselines"]
    table = format_table(rep)
    assert "| hit@1 | 0.9000 | 0.2500 |" in table and "recall@K equals hit@K" in table


def test_evaluate_end_to_end_matches_beam_search(tmp_path):
    """evaluate() on a tiny untrained GPT agrees with metrics recomputed from beam_search directly;
    oracle_baseline ranks by the exact distribution."""
    import torch

    from minisapo.data import DataConfig, load, oracle, prepare
    from minisapo.evaluate import EvalConfig, evaluate, evaluate_split, oracle_baseline
    from minisapo.generate import beam_search
    from minisapo.grammar import Grammar
    from minisapo.model import ModelConfig, build_model
    from minisapo.reasoning import ReasoningConfig, build_prompt
    from minisapo.sid.build import SIDConfig
    from minisapo.sid.build import prepare as sid_prepare
    from minisapo.sid.trie import SIDTrie

    path = prepare(DataConfig(world="tiny"), tmp_path / "data")
    ds = load(tmp_path / "data", path.name)
    table, tok, _ = sid_prepare(ds, SIDConfig(), tmp_path / "sid", plot=False, verbose=False)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16), tok.vocab_size)
    rc = ReasoningConfig(max_think_tokens=3)
    grammar = Grammar(tok, SIDTrie(table, tok), table.num_levels, rc.layout, rc.max_think_tokens, rc.mode)
    samples = ds.splits["test"][:6]
    out = evaluate(model, grammar, ds, table, tok, samples, ks="1,5", beam_width=5, batch_size=4, reasoning=rc,
                   progress=False)
    results = beam_search(model, grammar, [build_prompt(s.history, table, tok, rc) for s in samples], 5)
    hits5 = [hit_at_k(r.items, s.target, 5) for r, s in zip(results, samples)]
    assert out["hit@5"] == pytest.approx(sum(hits5) / 6)
    assert out["valid_rate"] == 1.0 and len(out["per_level_acc"]) == table.num_levels
    assert out["mean_response_length"] == pytest.approx(sum(len(r.responses[0]) for r in results) / 6)
    # response = 3 blocks of <think> + 1..3 words + </think>, then 3-4 SID tokens and <eos>
    assert 3 * 3 + 4 <= out["mean_response_length"] <= 3 * 5 + 5

    orc = oracle_baseline(ds, samples, ks="1,5", table=table)
    dist = oracle(ds)
    for k in (1, 5):
        hand = np.mean([hit_at_k(dist.ranking(s, k).tolist(), s.target, k) for s in samples])
        assert orc[f"hit@{k}"] == pytest.approx(hand)
        assert orc[f"expected_hit@{k}"] == pytest.approx(np.mean([np.sort(dist.distribution(s))[::-1][:k].sum()
                                                                  for s in samples]))
    report = evaluate_split(model, grammar, ds, table, tok, "test", EvalConfig(ks="1,5", beam_width=5, max_samples=6),
                            rc, progress=False)
    assert report["hit@5"] == out["hit@5"] and set(report["baselines"]) == {"popularity", "markov", "item_knn", "oracle"}
    assert report["baselines"]["oracle"]["hit@1"] == orc["hit@1"] and report["split"] == "test"


def test_plots_show_their_inputs(tmp_path, saved_figures):
    from minisapo.plots import plot_eval_comparison, plot_sft_curves

    pop = {"hit@1": 0.1, "hit@10": 0.3}
    rep = {"hit@1": 0.2, "hit@10": 0.5, "baselines": {"popularity": pop, "oracle": {"hit@1": 0.3, "hit@10": 0.8}}}
    assert plot_eval_comparison({"sft": rep}, tmp_path / "cmp.png").exists()
    (ax,) = saved_figures[0].axes
    # one bar per (report or baseline, K): the model, then its baselines, each at hit@1 and hit@10
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.2, 0.5, 0.1, 0.3, 0.3, 0.8])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sft", "popularity", "oracle"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["hit@1", "hit@10"]
    assert ax.get_title() == "hit@K: model vs. popularity and oracle"

    recs = [{"stage": "sft", "step": 1, "loss": 2.0}, {"stage": "sft", "step": 2, "loss": 1.0},
            {"stage": "sft", "step": 2, "valid_loss": 1.5, "valid_hit@10": 0.4}, {"stage": "rl", "step": 1}]
    assert plot_sft_curves(recs, tmp_path / "sft.png").exists()
    loss, hits = saved_figures[1].axes
    # the SFT records only (the rl record is left out): train loss at steps 1, 2; valid loss and hit@10 at step 2
    assert [(l.get_label(), list(l.get_xdata()), list(l.get_ydata())) for l in loss.lines] == \
        [("train loss", [1, 2], [2.0, 1.0]), ("valid loss", [2], [1.5])]
    assert [(l.get_label(), list(l.get_xdata()), list(l.get_ydata())) for l in hits.lines] == \
        [("valid_hit@10", [2], [0.4])]
    # the log axis is labelled in plain digits (4, 0.6), not in scientific notation (4x10^0)
    loss.figure.canvas.draw()
    labels = [t.get_text() for t in loss.get_yticklabels() + loss.get_yticklabels(minor=True) if t.get_text()]
    assert "1" in labels and "2" in labels and not any("10^" in t or "e-" in t for t in labels), labels


def test_baselines_rank_distinct_sids_when_items_share_one():
    """dedup="none": items 0 and 1 share a SID, so baselines rank SIDs (summed scores) like the model."""
    from minisapo.baselines import canonical_items, per_sid, ranked_by_scores, targets_of
    from minisapo.data import Sample
    from minisapo.sid import SIDTable

    table = SIDTable.from_codes(np.array([[0, 0], [0, 0], [1, 0]]), dedup=np.array([-1, -1, -1]))
    assert canonical_items(table).tolist() == [0, 0, 2]
    scores = per_sid(np.array([0.3, 0.3, 0.4]), table)
    assert scores[0] == pytest.approx(0.6) and scores[1] == -np.inf
    assert ranked_by_scores(scores, 2) == [0, 2]
    assert targets_of([Sample(0, (2,), 1)], table) == [0]  # a hit on the shared SID counts for item 1
    unique = SIDTable.from_codes(np.array([[0, 0], [0, 1], [1, 0]]))
    assert per_sid(np.array([0.3, 0.3, 0.4]), unique).tolist() == [0.3, 0.3, 0.4]


def _hand_dataset():
    """5 items, 3 users (leave-one-out). Training interactions: u0 0,1,2 | u1 1,2 | u2 2,0,1;
    training transitions 0->1 (x2), 1->2 (x2), 2->0 (x1); popularity 0:2, 1:3, 2:3, 3:0, 4:0."""
    from minisapo.data import Dataset, make_splits

    seqs = [[0, 1, 2, 3, 4], [1, 2, 0, 3], [2, 0, 1, 4, 3]]
    splits = make_splits(seqs, [list(map(float, range(len(s)))) for s in seqs], "loo", 10)
    return Dataset("hand", [str(i) for i in range(5)], ["t"] * 5, ["t"] * 5, None, 3, seqs, splits, {}, None)


def test_markov_and_item_knn_against_hand_computed_rankings():
    from minisapo.data import Sample
    from minisapo.baselines import item_knn_rankings, markov_rankings, transition_counts
    from minisapo.evaluate import markov_baseline

    ds = _hand_dataset()
    assert ds.item_popularity().tolist() == [2, 3, 3, 0, 0]
    assert transition_counts(ds) == {0: {1: 2}, 1: {2: 2}, 2: {0: 1}}  # valid/test targets never counted
    h = lambda *items: Sample(0, tuple(items), 4)  # noqa: E731
    # markov: the count after the last item first, then popularity (ties: lower index)
    assert markov_rankings(ds, [h(1), h(2), h(0, 3)], 5) == [[2, 1, 0, 3, 4], [0, 1, 2, 3, 4], [1, 2, 0, 3, 4]]
    # item_knn: training users of item 0 {u0, u2}, of 1 and 2 {u0, u1, u2}, of 3 and 4 none, so
    # sim(0,1) = sim(0,2) = 2/sqrt(6) = .816, sim(1,2) = 1. History (0, 1): item 1 is the most recent
    # (weight 1), item 0 weight .5: score 0 = .816, score 1 = .5 * .816 = .408, score 2 = 1 + .408
    assert item_knn_rankings(ds, [h(0, 1)], 5, recency=0.5) == [[2, 0, 1, 3, 4]]
    # plain sum: scores 0 and 1 tie at .816, popularity puts 1 first
    assert item_knn_rankings(ds, [h(0, 1)], 5, recency=1.0) == [[2, 1, 0, 3, 4]]
    # an item seen by no training user (3) adds nothing: same ranking as without it
    assert item_knn_rankings(ds, [h(0, 1, 3)], 3) == [[2, 0, 1]]
    # the metrics: test targets of u0, u1, u2 are 4, 3, 3 with last history items 3, 0, 4 -> popularity order
    # [1, 2, 0, 3, 4] for u0 and u2, [1, 2, 0, 3, 4] for u1 (0 -> 1), so ranks 5, 4, 4
    m = markov_baseline(ds, ds.splits["test"], ks="1,4,5")
    assert (m["hit@1"], m["hit@4"], m["hit@5"]) == (0.0, pytest.approx(2 / 3), 1.0)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(6) + 2 / math.log2(5)) / 3)


def test_item_knn_matches_a_brute_force_double_loop(tmp_path):
    """item_knn_scores (sparse products) vs. the definition written as loops, on the tiny synthetic world;
    with shared SIDs the baselines rank distinct SIDs."""
    from minisapo.data import DataConfig, load, prepare
    from minisapo.baselines import item_knn_rankings, item_knn_scores, markov_rankings
    from minisapo.sid import SIDTable

    ds = load(tmp_path, prepare(DataConfig(world="tiny"), tmp_path).name)
    users = ds.train_user_items()
    has = [{u for u, items in enumerate(users) if i in items} for i in range(ds.num_items)]
    samples = ds.splits["test"][:5]
    got = item_knn_scores(ds, [s.history for s in samples], recency=0.7)
    for b, s in enumerate(samples):
        want = np.zeros(ds.num_items)
        for t, hi in enumerate(reversed(s.history)):
            for j in range(ds.num_items):
                if j != hi and has[hi] and has[j]:
                    want[j] += 0.7 ** t * len(has[hi] & has[j]) / math.sqrt(len(has[hi]) * len(has[j]))
        assert got[b] == pytest.approx(want)
    # dedup="none": items sharing a SID are ranked once, by their summed score
    codes = np.array([[i // 2, 0] for i in range(ds.num_items)])
    shared = SIDTable.from_codes(codes, dedup=np.full(ds.num_items, -1))
    for rankings in (item_knn_rankings(ds, samples, 10, table=shared), markov_rankings(ds, samples, 10, table=shared)):
        assert all(r and all(i % 2 == 0 for i in r) for r in rankings)


def _tiny(tmp_path):
    from minisapo.data import DataConfig, load, prepare
    from minisapo.sid.build import SIDConfig
    from minisapo.sid.build import prepare as sid_prepare

    ds = load(tmp_path / "data", prepare(DataConfig(world="tiny"), tmp_path / "data").name)
    table, tok, _ = sid_prepare(ds, SIDConfig(), tmp_path / "sid", plot=False, verbose=False)
    return ds, table, tok


def test_item_id_ranking_is_the_brute_force_ranking_of_the_logits(tmp_path):
    """The item-ID transformer ranks every item by its logit after `<bos> i_1 .. i_n` (one unpadded forward per
    sample, sorted by hand here), batched with left padding; exclude_seen drops the user's earlier items."""
    import torch

    from minisapo.baselines import item_id_rankings, seen_items
    from minisapo.evaluate import item_id_report
    from minisapo.model import ModelConfig, build_model
    from minisapo.reasoning import item_id_vocab_size

    ds, table, _ = _tiny(tmp_path)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=16), item_id_vocab_size(ds.num_items))
    with torch.no_grad():  # larger weights: far from uniform, no near-ties
        for p in model.parameters():
            p.mul_(5.0)
    samples = ds.splits["test"][:12]
    seen = seen_items(ds, samples)
    got = item_id_rankings(model, ds, samples, 10, batch_size=5)
    filtered = item_id_rankings(model, ds, samples, 10, exclude=seen, batch_size=5)
    for s, g, f, sn in zip(samples, got, filtered, seen):
        logits = model(torch.tensor([[1] + [2 + i for i in s.history]]))[0, -1].tolist()
        order = sorted(range(ds.num_items), key=lambda j: -logits[2 + j])
        assert g == order[:10]
        assert f == [j for j in order if j not in sn][:10] and not set(f) & sn
    rep = item_id_report(model, ds, samples, ks="1,10", table=table)
    assert rep["hit@10"] == pytest.approx(np.mean([s.target in g for s, g in zip(samples, got)]))
    assert rep["ranks"] == [g.index(s.target) + 1 if s.target in g else 0 for s, g in zip(samples, got)]


def test_exclude_seen_hit_at_k_by_hand():
    """The filtered protocol on the hand dataset: every item of the user's sequence before the target is left out
    (the whole prefix, not only the prompt's max_history items)."""
    from minisapo.data import make_splits
    from minisapo.baselines import seen_items
    from minisapo.evaluate import markov_baseline, popularity_baseline

    ds = _hand_dataset()
    ds.splits = make_splits(ds.sequences, [list(map(float, range(len(s)))) for s in ds.sequences], "loo", 2)
    valid = ds.splits["valid"]  # u0: (1, 2) -> 3, u1: (1, 2) -> 0, u2: (0, 1) -> 4
    assert [s.history for s in valid] == [(1, 2), (1, 2), (0, 1)]
    assert seen_items(ds, valid) == [{0, 1, 2}, {1, 2}, {2, 0, 1}]
    # popularity [1, 2, 0, 3, 4]; left out: u0 {0, 1, 2} -> [3, 4] rank 1; u1 {1, 2} -> [0, 3, 4] rank 1;
    # u2 {0, 1, 2} -> [3, 4], target 4 at rank 2. Unfiltered: ranks 4, 3, 5
    pop = popularity_baseline(ds, valid, ks="1,2,5", exclude_seen=True)
    assert (pop["hit@1"], pop["hit@2"], pop["ranks"]) == (pytest.approx(2 / 3), 1.0, [1, 1, 2])
    assert pop["ndcg@2"] == pytest.approx((1 + 1 + 1 / math.log2(3)) / 3)
    assert popularity_baseline(ds, valid, ks="1,2,5")["ranks"] == [4, 3, 5]
    # markov: u0 and u1 end on 2 (2 -> 0 once): [0, 1, 2, 3, 4], left out -> [3, 4] and [0, 3, 4]; u2 ends on 1
    # (1 -> 2 twice): [2, 1, 0, 3, 4] -> [3, 4], target 4 at rank 2
    assert markov_baseline(ds, valid, ks="1,2", exclude_seen=True)["ranks"] == [1, 1, 2]


def test_exclude_seen_leaves_no_seen_item_in_any_list(tmp_path):
    """On the tiny world with every protocol piece: the model's beam lists (seen items never returned, the list
    still filled), each baseline's (its full ranking less the seen items), and the report's numbers agree."""
    import torch

    from minisapo.baselines import excluded_items, item_knn_rankings, markov_rankings, seen_items
    from minisapo.evaluate import EvalConfig, evaluate, evaluate_split
    from minisapo.generate import beam_search
    from minisapo.grammar import Grammar
    from minisapo.model import ModelConfig, build_model
    from minisapo.reasoning import ReasoningConfig, build_prompt
    from minisapo.sid.trie import SIDTrie

    ds, table, tok = _tiny(tmp_path)
    samples = ds.splits["test"][:20]
    seen = seen_items(ds, samples)
    assert seen == [set(ds.sequences[s.user][:s.pos]) for s in samples]
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16), tok.vocab_size)
    rc = ReasoningConfig(mode="sid_only")
    grammar = Grammar(tok, SIDTrie(table, tok), table.num_levels, rc.layout, rc.max_think_tokens, rc.mode)
    prompts = [build_prompt(s.history, table, tok, rc) for s in samples]
    lists = [r.items for r in beam_search(model, grammar, prompts, 10, exclude=seen)]
    assert all(len(items) == 10 and not set(items) & sn for items, sn in zip(lists, seen))
    out = evaluate(model, grammar, ds, table, tok, samples, ks="10", beam_width=10, reasoning=rc, progress=False,
                   exclude_seen=True)
    assert out["ranks"] == [items.index(s.target) + 1 if s.target in items else 0 for s, items in zip(samples, lists)]
    exclude = excluded_items(ds, samples, table, True)
    for full, part in ((markov_rankings(ds, samples, ds.num_items, table), markov_rankings(ds, samples, 10, table,
                                                                                            exclude)),
                       (item_knn_rankings(ds, samples, ds.num_items, table),
                        item_knn_rankings(ds, samples, 10, table, exclude=exclude))):
        for f, p, sn in zip(full, part, seen):
            assert p == [i for i in f if i not in sn][:10] and not set(p) & sn
    report = evaluate_split(model, grammar, ds, table, tok, "test", EvalConfig(ks="10", max_samples=20,
                                                                              exclude_seen=True), rc, progress=False)
    assert report["exclude_seen"] is True and report["hit@10"] == out["hit@10"]
    assert set(report["baselines"]) == {"popularity", "markov", "item_knn", "oracle"}
    for name, b in report["baselines"].items():
        assert len(b["ranks"]) == 20, name


def test_seeds_table_means_sample_std_and_pooled_sign_test(tmp_path):
    """report.seeds_table on two hand-made seeds: mean ± sample std (ddof=1) per row, and the sign test of a
    model against item_knn with every user of every seed one pair."""
    import json

    from minisapo.report import seeds_table

    def write(name, model_ranks, knn_ranks, knn_ndcg):
        def rep(ranks, ndcg=0.0):
            hits = [int(0 < r <= 10) for r in ranks]
            return {"hit@1": float(np.mean([r == 1 for r in ranks])), "hit@10": float(np.mean(hits)),
                    "ndcg@10": ndcg, "ranks": ranks}
        path = tmp_path / name
        path.write_text(json.dumps({**rep(model_ranks), "baselines": {"item_knn": rep(knn_ranks, knn_ndcg)}}))
        return path

    # the baseline's ndcg differs between the seeds only by float rounding (0.1 + 0.2 != 0.3): no spread shown
    files = [write("s0.json", [0, 2, 5, 0], [1, 0, 11, 3], 0.1 + 0.2), write("s1.json", [1, 1, 4, 2], [1, 0, 11, 3], 0.3)]
    table = seeds_table({"SFT": files}, ks=(1, 10)).splitlines()
    assert table[0] == "|  | hit@1 | hit@10 | ndcg@10 | hit@10 vs item_knn: +/−, p (seeds pooled) |"
    # item_knn hits 1 0 0 1 in both seeds; the model 0 1 1 0, then 1 1 1 1: 4 users up, 2 down, p = 2 * 22 / 64
    assert table[2] == "| item_knn | 0.2500 | 0.5000 | 0.3000 |  |"
    assert table[3] == "| SFT | 0.2500 ± 0.3536 | 0.7500 ± 0.3536 | 0.0000 | +4 / −2, p = 0.69 |"
