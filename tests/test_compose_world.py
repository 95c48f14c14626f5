"""The compose world (reasoning that computes): its rule and oracle against brute force, its teacher's
facts against a hand-computed history, the misaligned control, designed SIDs."""

import itertools

import numpy as np
import pytest

from minisapo.data import DataConfig, load, oracle, prepare
from minisapo.data.synthetic import ComposeWorld, world_params


# a small compose world with 3 levels of 2 codes and 8 items per leaf (the knobs, not a preset's values)
SMALL = dict(depth=3, branching=2, items_per_leaf=8, num_users=300, seq_len=12, window=6)


def small_params(**kw):
    return world_params("compose_tiny", **{**SMALL, **kw})


@pytest.fixture(scope="module")
def world_ds(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    prepare(DataConfig(world="compose_tiny", name="w", **SMALL), d)
    return load(d, "w")


def brute_rule_leaf(w, prefix):
    """The rule of the ComposeWorld docstring, written out with explicit loops and counters."""
    win = list(prefix)[-w.params["window"]:]
    codes = []
    for k in range(w.K):
        subset = win
        if w.params["rule"] == "coupled":
            subset = [i for i in win if all(w.item_codes[i][j] == codes[j] for j in range(k))] or win
        best, best_count, best_pos = None, -1, -1
        for c in range(w.B):
            count = sum(1 for i in subset if w.item_codes[i][k] == c)
            pos = max((p for p, i in enumerate(subset) if w.item_codes[i][k] == c), default=-1)
            if count > best_count or (count == best_count and pos > best_pos):
                best, best_count, best_pos = c, count, pos
        z, r = best, w.item_codes[subset[-1]][k]
        state = 0
        for i in subset:
            state = w.moves[k][w.item_codes[i][k]][state]
        composite = k < round(w.params["alpha"] * w.K)
        codes.append(w.perm[k][r] if not composite else state if w.params["rule"] == "track" else w.latin[k][z][r])
    return sum(c * w.B ** (w.K - 1 - k) for k, c in enumerate(codes))


def brute_distribution(w, prefix):
    P, noise = w.params["items_per_leaf"], w.params["noise"]
    rule = brute_rule_leaf(w, prefix) if prefix else None
    p = np.zeros(w.N)
    for leaf in range(w.num_leaves):
        leaf_p = 1 / w.num_leaves if rule is None else noise / w.num_leaves + (1 - noise) * (leaf == rule)
        items = list(range(leaf * P, (leaf + 1) * P))
        open_items = [j for j in items if j not in prefix] or items
        total = sum(w.item_q[j] for j in open_items)
        for j in open_items:
            p[j] += leaf_p * w.item_q[j] / total
    return p


@pytest.mark.parametrize("rule,alpha", [("mode_latin", 1.0), ("coupled", 1.0), ("track", 1.0), ("mode_latin", 0.34),
                                        ("coupled", 0.0), ("track", 0.67)])
def test_oracle_matches_brute_force(rule, alpha):
    w = ComposeWorld(small_params(rule=rule, alpha=alpha, num_users=40), 3)
    seqs, _ = w.sample_sequences()
    for seq in seqs[:15]:
        for t in range(len(seq)):
            p = w.distribution(0, seq[:t])
            assert abs(p.sum() - 1) < 1e-12 and (p >= 0).all()
            np.testing.assert_allclose(p, brute_distribution(w, seq[:t]), rtol=1e-12, atol=1e-15)


def test_latin_squares_and_rule_need_both_facts():
    w = ComposeWorld(world_params("compose"), 0)
    for L in w.latin:
        assert all(sorted(row) == list(range(w.B)) for row in L) and all(sorted(col) == list(range(w.B)) for col in L.T)
    # neither fact alone determines a composite level's code: every z (every r) meets every code
    for L in w.latin:
        assert all(len(set(L[z, :])) == w.B and len(set(L[:, r])) == w.B for z in range(w.B) for r in range(w.B))


def test_dataset_oracle_uses_the_whole_prefix(world_ds):
    orc = oracle(world_ds)
    for s in world_ds.splits["test"][:40]:
        prefix = world_ds.sequences[s.user][:s.pos]
        assert world_ds.sequences[s.user][s.pos] == s.target and tuple(prefix[-len(s.history):]) == s.history
        np.testing.assert_allclose(orc.distribution(s), brute_distribution(orc.world, list(prefix)), atol=1e-15)
        consumed = set(prefix)  # a consumed item is never drawn again while its leaf has others
        p = orc.distribution(s)
        assert all(p[j] == 0 for j in consumed if not set(range(8 * (j // 8), 8 * (j // 8) + 8)) <= consumed)


def test_data_follows_the_rule(world_ds):
    """The share of targets in the rule's leaf matches 1 - noise + noise / leaves."""
    w = oracle(world_ds).world
    samples = world_ds.splits["train"]
    hit = np.mean([w.item_leaf[s.target] == w.rule_leaf(world_ds.sequences[s.user][:s.pos]) for s in samples])
    want = 1 - w.params["noise"] + w.params["noise"] / w.num_leaves
    assert abs(hit - want) < 4 * np.sqrt(want * (1 - want) / len(samples))


def test_facts_of_a_hand_made_history():
    """Window 6, B = 2: the facts a person computes by hand from the codes of a history."""
    w = ComposeWorld(small_params(), 0)
    item = {tuple(c): j * 8 for j, c in enumerate(itertools.product(range(2), repeat=3))}  # codes -> an item
    history = [item[c] for c in [(1, 1, 1), (0, 0, 0), (0, 1, 1), (0, 1, 0), (1, 0, 1), (1, 0, 1), (1, 1, 0)]]
    # window = the last 6: (0,0,0) (0,1,1) (0,1,0) (1,0,1) (1,0,1) (1,1,0)
    # level 0: codes 0 0 0 1 1 1 -> a tie at 3 each, 1 is the more recent: z=1; last r=1
    # level 1: codes 0 1 1 0 0 1 -> 0 three times, 1 three times, 1 the more recent: z=1; r=1
    # level 2: codes 0 1 0 1 1 0 -> tie 3/3, 0 the more recent: z=0; r=0
    assert w.facts(history) == [(1, 1), (1, 1), (0, 0)]
    coupled = ComposeWorld(small_params(rule="coupled"), 0)
    c0 = coupled.rule_code(0, (1, 1))
    s1 = [c for c in [(0, 0, 0), (0, 1, 1), (0, 1, 0), (1, 0, 1), (1, 0, 1), (1, 1, 0)] if c[0] == c0]
    z1 = max(range(2), key=lambda c: (sum(x[1] == c for x in s1), max((p for p, x in enumerate(s1) if x[1] == c), default=-1)))
    assert coupled.facts(history)[0] == (1, 1) and coupled.facts(history)[1] == (z1, s1[-1][1])


def test_track_states_of_a_hand_made_history():
    """rule=track: the state starts at 0 and each window item moves it by its code's permutation."""
    w = ComposeWorld(small_params(rule="track"), 0)
    history = [0, 8, 56, 24]  # codes (0,0,0) (0,0,1) (1,1,1) (0,1,1)
    want = []
    for k in range(3):
        state, states = 0, []
        for code in [w.item_codes[i][k] for i in history]:
            state = w.moves[k][code][state]
            states.append(int(state))
        want.append(tuple(states))
    assert w.facts(history) == want
    assert w.block_text(0, want[0]) == " ".join(w.level_words[0][x] for x in want[0])
    assert w.rule_leaf(history) == want[0][-1] * 4 + want[1][-1] * 2 + want[2][-1]


def test_world_teacher_states_the_facts_and_the_control_only_reorders(world_ds, tmp_path):
    from minisapo.reasoning import ReasoningConfig, teacher
    from minisapo.sid import SIDConfig, prepare as sid_prepare

    table, tok, _ = sid_prepare(world_ds, SIDConfig(method="latent"), tmp_path / "sid", verbose=False)
    orc = oracle(world_ds)
    w = orc.world
    aligned = teacher(world_ds, table, tok, ReasoningConfig(teacher="world"))
    shifted = teacher(world_ds, table, tok, ReasoningConfig(teacher="world_misaligned"))
    for s in world_ds.splits["train"][:50]:
        facts = w.facts([int(orc.to_world[i]) for i in s.history])
        blocks = aligned(s.history, s.target)
        assert blocks == [f"often {w.level_words[k][z]} recent {w.level_words[k][r]}" for k, (z, r) in enumerate(facts)]
        assert [w.rule_code(k, f) for k, f in enumerate(facts)] == list(w.item_codes[w.rule_leaf(list(s.history)) * 8])
        assert blocks == aligned(s.history, (s.target + 1) % world_ds.num_items)  # the history alone decides
        other = shifted(s.history, s.target)
        assert sorted(other) == sorted(blocks) and other == blocks[1:] + blocks[:1]
        assert all(t in tok.word_ids for b in blocks for t in tok.encode(b))  # every word is in the vocabulary


def test_latent_sids_are_the_designed_codes(world_ds, tmp_path):
    from minisapo.sid import SIDConfig, build_sids

    table, stats = build_sids(world_ds, SIDConfig(method="latent"), None, verbose=False)
    w = oracle(world_ds).world
    to_world = oracle(world_ds).to_world
    np.testing.assert_array_equal(table.codes, w.item_codes[to_world])
    assert table.dedup_size == w.params["items_per_leaf"] and stats["collision_rate"] == 1.0
    with pytest.raises(ValueError, match="sid.levels=2 but the world has 3"):
        build_sids(world_ds, SIDConfig(method="latent", levels=2), None, verbose=False)


def test_unused_knob_is_an_error():
    with pytest.raises(ValueError, match="stay does nothing under rule=mode_latin"):
        world_params("compose", stay=0.3)
    with pytest.raises(ValueError, match="alpha must be in"):
        world_params("compose", alpha=1.5)
    assert world_params("default", rule="coupled")["window"] == PRESET_WINDOW


PRESET_WINDOW = world_params("compose")["window"]
