"""Filters and splits: k-core vs a brute-force loop, dedupe, time window, leakage checks."""

import random

import pytest

from minisapo.data import make_splits
from minisapo.data.filters import dedupe, kcore, parse_date, time_window


def brute_kcore(inters, k):
    """Remove one offending user or item at a time until none has fewer than k interactions."""
    inters = list(inters)
    while True:
        users, items = {}, {}
        for u, i, _, _ in inters:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        bad_u = next((u for u, c in users.items() if c < k), None)
        bad_i = next((i for i, c in items.items() if c < k), None)
        if bad_u is None and bad_i is None:
            return inters
        if bad_u is not None:
            inters = [x for x in inters if x[0] != bad_u]
        else:
            inters = [x for x in inters if x[1] != bad_i]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [2, 3, 5])
def test_kcore_matches_brute_force(seed, k):
    rng = random.Random(seed)
    inters = list({(f"u{rng.randrange(40)}", f"i{rng.randrange(30)}"): 0 for _ in range(400)})
    inters = [(u, i, 1.0, float(n)) for n, (u, i) in enumerate(inters)]
    got = kcore(inters, k)
    assert got == brute_kcore(inters, k)  # same interactions, same (file) order
    assert got, "the random graph should keep a non-empty core"


def test_kcore_cascade_by_hand():
    # B005 has 1 review -> gone; then A4 has 1 -> gone; then B004 has 1 -> gone.
    x = [("A1", "B001"), ("A1", "B004"), ("A2", "B001"), ("A1", "B002"), ("A2", "B002"), ("A4", "B004"), ("A4", "B005")]
    inters = [(u, i, 1.0, float(n)) for n, (u, i) in enumerate(x)]
    assert [(u, i) for u, i, _, _ in kcore(inters, 2)] == [("A1", "B001"), ("A2", "B001"), ("A1", "B002"), ("A2", "B002")]


def test_dedupe_keeps_earliest_then_file_order():
    inters = [("u", "a", 1.0, 30.0), ("u", "b", 2.0, 10.0), ("u", "a", 3.0, 20.0), ("u", "a", 4.0, 20.0)]
    assert dedupe(inters) == [("u", "b", 2.0, 10.0), ("u", "a", 3.0, 20.0)]


def test_time_window_dates_are_utc_and_end_inclusive():
    day = 86400
    t0 = parse_date("2014-01-01")
    assert t0 == 1388534400
    inters = [("u", str(d), 1.0, t0 + d * day) for d in range(5)]  # Jan 1 .. Jan 5
    kept = time_window(inters, "2014-01-02", "2014-01-04")
    assert [x[1] for x in kept] == ["1", "2", "3"]
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_date("01/02/2014")
    with pytest.raises(ValueError, match="empty time window"):
        time_window(inters, "2014-02-01", "2014-01-01")


def random_sequences(seed, users=30, max_len=12):
    rng = random.Random(seed)
    seqs, times = [], []
    for _ in range(users):
        L = rng.randint(1, max_len)
        seqs.append(rng.sample(range(100), L))  # distinct items, like de-duplicated real data
        t = sorted(rng.randrange(50) for _ in range(L))  # many ties
        times.append([float(x) for x in t])
    return seqs, times


@pytest.mark.parametrize("max_history", [1, 3, 10])
def test_loo_split(max_history):
    seqs, times = random_sequences(0)
    sp = make_splits(seqs, times, "loo", max_history)
    for part in sp.values():
        for s in part:
            assert 1 <= len(s.history) <= max_history
            assert s.target not in s.history  # no target leaks into its own history
    test = {s.user: s for s in sp["test"]}
    valid = {s.user: s for s in sp["valid"]}
    for u, seq in enumerate(seqs):
        if len(seq) >= 2:
            assert test[u].target == seq[-1] and test[u].history == tuple(seq[:-1][-max_history:])
        if len(seq) >= 3:
            assert valid[u].target == seq[-2]
    # every position >= 1 is used exactly once
    assert sum(len(v) for v in sp.values()) == sum(len(s) - 1 for s in seqs)
    assert len(sp["train"]) == sum(max(0, len(s) - 3) for s in seqs)


def test_temporal_split():
    seqs, times = random_sequences(1)
    sp = make_splits(seqs, times, "temporal", 4)
    n = sum(len(s) - 1 for s in seqs)
    assert [len(sp[k]) for k in ("train", "valid", "test")] == [int(0.8 * n), int(0.9 * n) - int(0.8 * n), n - int(0.9 * n)]

    def t(s):  # the target's time: find the sample's position in the user's sequence
        seq = seqs[s.user]
        pos = next(p for p in range(1, len(seq)) if seq[p] == s.target and tuple(seq[max(0, p - 4):p]) == s.history)
        return times[s.user][pos]

    train_max = max(t(s) for s in sp["train"])
    assert all(t(s) >= train_max for s in sp["valid"] + sp["test"])  # no future sample in train
    assert max(t(s) for s in sp["valid"]) <= min(t(s) for s in sp["test"])
    for part in sp.values():
        for s in part:
            assert s.target not in s.history and 1 <= len(s.history) <= 4


def test_unknown_split_and_bad_history():
    with pytest.raises(ValueError, match="--split=loo"):
        make_splits([[1, 2]], [[0.0, 1.0]], "random", 5)
    with pytest.raises(ValueError, match="max_history"):
        make_splits([[1, 2]], [[0.0, 1.0]], "loo", 0)
