"""A synthetic recommendation world whose next-item distribution is known exactly.

The generative story (read it top to bottom; every number below is a preset knob):

1. **Taxonomy.** A tree of depth `depth` with `branching` children per node. Depth-1 nodes
   are top-level categories, depth-`depth` nodes are leaves. Node names are paths:
   `n2`, `n2.1`, `n2.1.4`. Each node owns two words from a built-in word bank.
2. **Items.** `items_per_leaf` items under each leaf. A title is
   `brand  word(depth 1)  word(depth 2) ... word(leaf)  variant variant`, so the text
   carries the hierarchy; with probability `noise` each hierarchy word is swapped for a
   word of another node at the same depth. Within a leaf, items have a Zipf popularity
   `q_j ~ rank_j ** -zipf` (random ranks): picking the exact item is the hard part.
3. **Users.** User u has a home top-level category h_u and a preference over top-level
   categories `pref_u(c) = focus * 1[c = h_u] + (1 - focus) / C`.
4. **Markov rule.** Given the last item i (leaf l), the next item is drawn by first
   choosing how far to move in the tree, "up" levels:
       up = 0            stay in leaf l                                   (prob `stay`)
       0 < up < depth    a uniform leaf under l's ancestor `up` levels up (prob (1-stay-jump)/(depth-1) each)
       up = depth        a top category c ~ pref_u, then a uniform leaf in c (prob `jump`)
   then an item of that leaf by its Zipf popularity; an immediate repeat of i is not
   allowed (its probability is set to 0 and the rest renormalised). The first item of a
   sequence uses the `jump` rule alone.

So the exact next-item distribution depends only on the user's (latent, but visible in
the history) home category and the last item: `World.distribution(user, prefix)`. The
generator samples from that very function, so `Oracle.distribution` is exact by
construction, and evaluation can report the oracle hit@K/ndcg@K ceiling.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from minisapo.data.atomic import RawData

# Knobs a preset fixes and `DataConfig` may override (None there = keep the preset's value). `rule` picks
# the generative story: "markov" (the taxonomy world above) or a compose rule ("mode_latin", "coupled";
# see ComposeWorld). Every world has the SHARED knobs; each kind adds its own.
SHARED = ("rule", "depth", "branching", "items_per_leaf", "num_users", "seq_len", "zipf", "noise")
RULE_KNOBS = {"markov": ("stay", "jump", "focus"), "mode_latin": ("window", "alpha", "facts"),
              "coupled": ("window", "alpha", "facts"), "track": ("window", "alpha", "facts"), "nested": ("window", "alpha", "facts")}
PRESETS: dict[str, dict] = {
    # tests and quick checks: 2*2*2 = 8 leaves, 64 items, 100 users, an end-to-end run in seconds
    "tiny": dict(rule="markov", depth=3, branching=2, items_per_leaf=8, num_users=100, seq_len=10,
                 zipf=1.0, noise=0.05, stay=0.5, jump=0.2, focus=0.8),
    # the first-order taxonomy world: 64 leaves, 512 items, 1000 users, sequences of 10-20 (~12k train samples)
    "default": dict(rule="markov", depth=3, branching=4, items_per_leaf=8, num_users=1000, seq_len=20,
                    zipf=1.0, noise=0.05, stay=0.5, jump=0.2, focus=0.8),
    # exact match is easy: 27 leaves of 4 items (108 items), peaked popularity, sticky users
    "easy": dict(rule="markov", depth=3, branching=3, items_per_leaf=4, num_users=1000, seq_len=20,
                 zipf=2.0, noise=0.05, stay=0.6, jump=0.15, focus=0.9),
    # exact match is sparse: a 2048-item catalog, 32 items per leaf, flat popularity
    "sparse": dict(rule="markov", depth=3, branching=4, items_per_leaf=32, num_users=1000, seq_len=20,
                   zipf=0.5, noise=0.1, stay=0.5, jump=0.2, focus=0.8),
    # reasoning that computes: each SID level of the next item is a Latin-square function of two facts of the
    # last `window` items (their most frequent level-k code and the last item's); 512 items, 5,000 users
    "compose": dict(rule="mode_latin", depth=3, branching=4, items_per_leaf=8, num_users=5000, seq_len=20,
                    zipf=1.0, noise=0.2, window=10, alpha=1.0, facts=2),
    # the same rule on a tiny catalog (two SID levels: 4*4 leaves of 8 items, 300 users): tests and smoke checks
    "compose_tiny": dict(rule="mode_latin", depth=2, branching=4, items_per_leaf=8, num_users=300, seq_len=12,
                         zipf=1.0, noise=0.2, window=6, alpha=1.0, facts=2),
}
KNOBS = SHARED + tuple(k for r in ("markov", "mode_latin") for k in RULE_KNOBS[r])
COMPOSE_RULES = ("mode_latin", "coupled", "track", "nested")

BASE_TIME = 1_577_836_800  # 2020-01-01 00:00 UTC
DAY = 86_400

WORD_BANK = """
garden kitchen forest harbor canyon meadow river valley summit island desert glacier
prairie orchard vineyard lantern blanket kettle basket candle pillow mirror ladder
bucket shovel hammer wrench pliers chisel anvil violin guitar trumpet banjo cello
flute piano drum harp bugle apple cherry lemon mango peach plum berry melon olive
pepper garlic ginger onion carrot potato tomato tiger eagle falcon otter badger beaver
heron salmon trout walrus zebra camel llama panda koala velvet cotton linen denim
leather canvas wool silk satin fleece marble granite copper bronze silver timber
bamboo cedar maple walnut oak birch willow pine spruce rocket comet planet galaxy
meteor orbit nebula quasar lunar solar puzzle kite yoyo domino chess poker dice
rattle teddy saddle bridle lasso spur wagon cart sled canoe kayak raft paddle anchor
sail mast rudder boot sandal slipper sneaker loafer clog moccasin mitten scarf beanie
glove jacket vest parka poncho soap lotion shampoo perfume balm serum powder blush
mascara lipstick notebook pencil crayon marker eraser stapler folder binder ruler
compass tent hammock backpack thermos canteen stove tarp cooler bicycle helmet pedal
chain scooter skate board ramp wheel coffee tea cocoa honey syrup jam butter cheese
yogurt bread biscuit muffin waffle pancake noodle robot gadget sensor cable charger
speaker headset camera tripod drone sofa chair table desk shelf drawer cabinet bench
stool couch rose tulip daisy lily orchid violet poppy lotus fern cactus ivy moss
clover thistle whistle bell gong chime tambourine xylophone marimba ukulele harmonica
pottery ceramic glass crystal porcelain enamel clay stone brick tile sparrow robin
finch parrot owl swan crane pelican stork hiking fishing hunting camping climbing
skiing surfing rowing sailing diving baking grilling roasting brewing pickling
knitting sewing weaving quilting carving vintage rustic modern classic retro coastal
alpine tropical nordic urban
""".split()
VARIANTS = """red blue green black white grey pink orange yellow purple brown navy
mini compact large small deluxe pro lite plus max slim twin duo""".split()
SYLLABLES = "ka lo mi ra ven tor bel dri sa nu pex zo lin qua fen mar tis gal ro dex".split()
# Below the top level, a title names a node by its primary word with this probability, else by its
# alternate word (top-level nodes always by the primary): two spellings per node, so grouping items by
# node takes more than one exact word, while the primary stays the more frequent one. A fixed choice,
# not a preset knob: changing it changes every generated world.
PRIMARY_WORD_PROB = 0.7


class WorldError(ValueError):
    """A bad synthetic-world setting; `key` names the knob ("world" for the preset's name)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def world_params(world: str, **overrides) -> dict:
    """The preset `world` with every non-None override applied, checked (a WorldError names the knob). A knob
    the world's rule does not use (e.g. `stay` in a compose world) is an error, so a setting never silently
    does nothing."""
    if world not in PRESETS:
        raise WorldError("world", f"unknown synthetic world {world!r}: choose one of {sorted(PRESETS)}")
    p = dict(PRESETS[world])
    rule = overrides.get("rule") or p["rule"]
    if rule not in RULE_KNOBS:
        raise WorldError("rule", f"synthetic world: rule must be one of {list(RULE_KNOBS)} (got {rule!r})")
    if RULE_KNOBS[rule] != RULE_KNOBS[p["rule"]]:  # another kind of world: its knobs' defaults
        p = {**{k: p[k] for k in SHARED}, **{k: v for k, v in PRESETS["compose" if rule in COMPOSE_RULES else
                                                                   "default"].items() if k in RULE_KNOBS[rule]}}
    for k, v in overrides.items():
        if k not in KNOBS:
            raise WorldError("world", f"unknown synthetic knob {k!r}: knobs are {list(KNOBS)}")
        if v is None:
            continue
        if k not in p:
            raise WorldError(k, f"synthetic world: {k} does nothing under rule={rule} (its knobs: "
                                f"{list(SHARED + RULE_KNOBS[rule])})")
        try:
            p[k] = type(p[k])(v)
        except (TypeError, ValueError):
            raise WorldError(k, f"synthetic world: {k} must be a {type(p[k]).__name__} (got {v!r})") from None
    checks = [
        (p["depth"] >= 1, "depth", "depth must be >= 1"),
        (p["branching"] >= 2, "branching", "branching must be >= 2"),
        (p["items_per_leaf"] >= 2, "items_per_leaf", "items_per_leaf must be >= 2 (repeats of the last item are excluded)"),
        (p["num_users"] >= 1, "num_users", "num_users must be >= 1"),
        (p["seq_len"] >= 3, "seq_len", "seq_len must be >= 3 (one train, one valid and one test target)"),
        (p["zipf"] >= 0, "zipf", "zipf must be >= 0"),
        (0 <= p["noise"] <= 1, "noise", "noise must be in [0, 1]"),
    ]
    if rule == "markov":
        checks += [
            (0 <= p["stay"] and 0 <= p["jump"] and p["stay"] + p["jump"] <= 1, "stay",
             "need stay, jump >= 0 and stay + jump <= 1"),
            (p["jump"] > 0, "jump", "jump must be > 0 (it also picks the first item)"),
            (0 <= p["focus"] <= 1, "focus", "focus must be in [0, 1]"),
        ]
    else:
        checks += [(p["window"] >= 1, "window", "window must be >= 1"),
                   (0 <= p["alpha"] <= 1, "alpha", "alpha must be in [0, 1]"),
                   (p["facts"] in (2, 3), "facts", "facts must be 2 or 3")]
    for ok, key, msg in checks:
        if not ok:
            raise WorldError(key, f"synthetic world: {msg} (got {p})")
    return p


def _pseudo_word(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(SYLLABLES, size=n))


class World:
    """The taxonomy, the catalog and the users of one synthetic world (no sequences yet)."""

    def __init__(self, params: dict, seed: int):
        self.params, self.seed = dict(params), int(seed)
        D, B, P = params["depth"], params["branching"], params["items_per_leaf"]
        self.depth, self.C = D, B
        self.num_leaves = B ** D
        self.N = self.num_leaves * P
        self.U = params["num_users"]
        catalog_ss, user_ss, self._seq_ss = np.random.SeedSequence(self.seed).spawn(3)
        rng = np.random.default_rng(catalog_ss)

        # 1. taxonomy: nodes at depth d (1..D) are numbered 0 .. B**d - 1; two words each
        sizes = [B ** d for d in range(1, D + 1)]
        bank = [str(w) for w in rng.permutation(WORD_BANK)]
        seen = set(bank)
        while len(bank) < 2 * sum(sizes):  # big trees: invent more (pronounceable) words
            w = _pseudo_word(rng, 3)
            if w not in seen:
                seen.add(w), bank.append(w)
        self.node_words: list[list[list[str]]] = []  # [depth-1][node] -> [primary, alternate]
        for n in sizes:
            self.node_words.append([[bank.pop(0), bank.pop(0)] for _ in range(n)])
        # brands specialise in one top-level category (as real brands do): 5 per category
        names = sorted({_pseudo_word(rng, 2) + _pseudo_word(rng, 1) for _ in range(8 * B)})
        names = [str(w) for w in rng.permutation(names)]
        self.brands = [names[5 * c:5 * c + 5] for c in range(B)]

        # 2. items: leaf, ancestors, Zipf popularity within the leaf, title
        self.item_leaf = np.arange(self.N) // P  # (N,)
        self.item_anc = np.stack([self.item_leaf // B ** (D - d) for d in range(1, D + 1)], axis=1)  # (N, D)
        self.item_top = self.item_anc[:, 0]  # (N,) top-level category
        q = np.empty(self.N)
        for leaf in range(self.num_leaves):
            w = (rng.permutation(P) + 1.0) ** -params["zipf"]
            q[leaf * P:(leaf + 1) * P] = w / w.sum()
        self.item_q = q  # (N,) popularity within the item's leaf, sums to 1 per leaf
        self.titles, self.categories = [], []
        for j in range(self.N):
            top = self.item_top[j]
            if rng.random() < params["noise"]:  # noise: a brand of another category
                top = (top + 1 + rng.integers(B - 1)) % B
            words = [str(rng.choice(self.brands[top]))]
            for d in range(D):
                node = self.item_anc[j, d]
                if rng.random() < params["noise"]:  # noise: a word of another node at this depth
                    node = (node + 1 + rng.integers(sizes[d] - 1)) % sizes[d]
                words.append(self.node_words[d][node][0 if d == 0 or rng.random() < PRIMARY_WORD_PROB else 1])
            words += [str(w) for w in rng.choice(VARIANTS, size=2, replace=False)]
            self.titles.append(" ".join(words))
            self.categories.append(" ".join(self.node_name(d, self.item_anc[j, d]) for d in range(D)))

        # 3. users: home top-level category -> preference over top-level categories
        self.home = np.random.default_rng(user_ss).integers(0, B, size=self.U)  # (U,)
        focus = params["focus"]
        self.pref = np.full((self.U, B), (1 - focus) / B)  # (U, C)
        self.pref[np.arange(self.U), self.home] += focus

        # 4. probability of moving `up` levels: index 0 = stay, D = jump
        mid = (1 - params["stay"] - params["jump"]) / (D - 1) if D > 1 else 0.0
        self.moves = np.array([params["stay"]] + [mid] * (D - 1) + [params["jump"]]) if D > 1 else \
            np.array([params["stay"], 1 - params["stay"]])

    def node_name(self, d: int, k: int) -> str:
        """Name of node k at depth d+1 (0-based d): 'n2.1.4' (1-based digits, one per level)."""
        digits = [(k // self.C ** (d - e)) % self.C + 1 for e in range(d + 1)]
        return "n" + ".".join(map(str, digits))

    def item_id(self, j: int) -> str:
        return f"i{j:0{max(4, len(str(self.N - 1)))}d}"

    def user_id(self, u: int) -> str:
        return f"u{u:0{max(4, len(str(self.U - 1)))}d}"

    def distribution(self, user: int, prefix) -> np.ndarray:
        """(N,) exact probability of each next item for `user` after the items `prefix` (oldest first); only
        the last one matters here. An empty prefix gives the first item of a sequence (the jump rule alone).
        """
        D, B, q = self.depth, self.C, self.item_q
        last = int(prefix[-1]) if len(prefix) else None
        leaves_per_top = self.num_leaves // B
        jump = self.pref[user][self.item_top] / leaves_per_top * q  # (N,) top ~ pref, uniform leaf, Zipf item
        if last is None:
            return jump
        p = self.moves[D] * jump
        p += self.moves[0] * (self.item_leaf == self.item_leaf[last]) * q  # stay in the leaf
        for up in range(1, D):  # a uniform leaf under the ancestor `up` levels above the leaf
            d = D - up  # depth of that ancestor (1-based); column d-1 of item_anc
            same = self.item_anc[:, d - 1] == self.item_anc[last, d - 1]
            p += self.moves[up] * same * q / B ** up
        p[last] = 0.0  # no immediate repeat
        return p / p.sum()

    def sample_sequences(self) -> tuple[list[list[int]], list[list[int]]]:
        """Each user's item sequence and (day-level, tie-prone) timestamps, from the Markov rule."""
        rng = np.random.default_rng(self._seq_ss)
        lo, hi = max(3, self.params["seq_len"] // 2), self.params["seq_len"]
        seqs, times = [], []
        for u in tqdm(range(self.U), desc="synthetic users", leave=False, disable=self.U < 2000):
            L = int(rng.integers(lo, hi + 1))
            seq = []
            for _ in range(L):
                cdf = np.cumsum(self.distribution(u, seq))
                seq.append(int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), self.N - 1)))
            day = int(rng.integers(0, 365))
            ts = []
            for _ in range(L):
                ts.append(BASE_TIME + day * DAY)
                day += int(rng.integers(1, 8))
            seqs.append(seq), times.append(ts)
        return seqs, times


class ComposeWorld:
    """A world whose next item is computed from the history (rule "mode_latin" or "coupled").

    The catalog: B**K leaves (K = `depth` levels of `branching` = B codes each), `items_per_leaf` items
    per leaf. An item's level-k code c_k is a *fact* of the item on its own (not a taxonomy node): the
    title names each code by one word, `word[k][c_k]`, and the SID of an item is its codes (c_0, .., c_K-1)
    plus the index within its leaf (see `sid.method=latent`).

    The next item, given everything the user consumed so far (the last `window` items form the window W):
      for each level k = 0 .. K-1:
        S_k = W                                     ("mode_latin")
            = the items of W whose codes < k equal the rule's c_<k, or W if none does   ("coupled")
        z_k = the most frequent level-k code in S_k (ties: the most recent)       "often"
        r_k = the level-k code of the most recent item of S_k                     "recent"
        c_k = L_k[z_k, r_k]   for a composite level (k < round(alpha * K)), L_k a random Latin square:
                              neither fact alone determines c_k
            = s_W             ("track"): a state walks through the window, s_0 = 0 and s_j = M_k,v(s_j-1)
                              with v the level-k code of the j-th window item and M_k,v a random permutation
                              of the B codes; the teacher writes every state s_1 .. s_W (one step each)
            = P_k[r_k]        for a one-fact level (a random permutation: first-order, Markov can count it)
      with probability 1 - noise the leaf (c_0 .. c_K-1), else a uniformly random leaf;
      inside the leaf a Zipf draw (`zipf`) among the items the user has not consumed yet (all of the
      leaf's items if every one was consumed). The first item: a random leaf, a Zipf draw.
    `facts(history)` gives each level's facts from the history alone, `block_text` puts them in words: what
    the teacher's thinking block k states (`reasoning.teacher=world`). `distribution(user, prefix)` is the
    exact next-item distribution.
    """

    def __init__(self, params: dict, seed: int):
        self.params, self.seed = dict(params), int(seed)
        K, B, P = params["depth"], params["branching"], params["items_per_leaf"]
        self.depth, self.C, self.K, self.B = K, B, K, B
        self.num_leaves = B ** K
        self.N = self.num_leaves * P
        self.U = params["num_users"]
        catalog_ss, rule_ss, self._seq_ss = np.random.SeedSequence(self.seed).spawn(3)
        rng = np.random.default_rng(catalog_ss)
        bank = [str(w) for w in rng.permutation(WORD_BANK)]
        seen = set(bank)
        while len(bank) < K * B:
            w = _pseudo_word(rng, 3)
            if w not in seen:
                seen.add(w), bank.append(w)
        self.level_words = [[bank.pop(0) for _ in range(B)] for _ in range(K)]  # [k][code] -> its one word
        self.item_leaf = np.arange(self.N) // P  # (N,)
        self.item_codes = np.stack([(self.item_leaf // B ** (K - 1 - k)) % B for k in range(K)], axis=1)  # (N, K)
        q = np.empty(self.N)
        for leaf in range(self.num_leaves):
            w = (rng.permutation(P) + 1.0) ** -params["zipf"]
            q[leaf * P:(leaf + 1) * P] = w / w.sum()
        self.item_q = q  # (N,) popularity within the item's leaf (before consumed items are removed)
        self.titles = [" ".join([self.level_words[k][c] for k, c in enumerate(self.item_codes[j])]
                                + [str(v) for v in rng.choice(VARIANTS, size=2, replace=False)]) for j in range(self.N)]
        self.categories = [" ".join(self.node_name(d, self.item_leaf[j] // B ** (K - 1 - d)) for d in range(K))
                           for j in range(self.N)]
        rrng = np.random.default_rng(rule_ss)
        self.latin = []  # [k] (B, B): L_k[z, r], each code once per row and per column
        for _ in range(K):
            cyclic = (np.arange(B)[:, None] + np.arange(B)[None, :]) % B
            self.latin.append(rrng.permutation(B)[cyclic[rrng.permutation(B)][:, rrng.permutation(B)]])
        self.perm = [rrng.permutation(B) for _ in range(K)]  # [k] (B,): P_k[r] for one-fact levels
        self.moves = [[rrng.permutation(B) for _ in range(B)] for _ in range(K)]  # track: [k][code] a permutation
        self.mix = [rrng.integers(0, B, size=(B, B)) for _ in range(K)]  # nested: F_k[z, r], not invertible
        self.axes = [[rrng.permutation(B) for _ in range(3)] for _ in range(K)]  # facts=3: a Latin cube,
        self.cube = [rrng.permutation(B) for _ in range(K)]  # c = cube[(a0[z] + a1[r] + a2[f]) mod B]
        self.composite = int(round(params["alpha"] * K))  # levels 0 .. composite-1 follow L_k

    def node_name(self, d: int, k: int) -> str:
        return World.node_name(self, d, k)

    def item_id(self, j: int) -> str:
        return World.item_id(self, j)

    def user_id(self, u: int) -> str:
        return World.user_id(self, u)

    def facts(self, history) -> list[tuple[int, ...]]:
        """The facts of each level k = 0 .. K-1 from the last `window` items of `history` (oldest first, >= 1 item):
        (z_k, r_k) for mode_latin / coupled, the states (s_1, .., s_W) for track, (r_k,) for a one-fact level."""
        win = [int(i) for i in list(history)[-self.params["window"]:]]
        out, rule_codes, S_prev = [], [], win
        for k in range(self.K):
            S = win
            if self.params["rule"] == "coupled":
                S = [i for i in win if list(self.item_codes[i, :k]) == rule_codes] or win
            elif self.params["rule"] == "nested" and k > 0:  # the items of S_k-1 whose level k-1 code is z_k-1
                S = [i for i in S_prev if self.item_codes[i, k - 1] == out[-1][0]]
            S_prev = S
            codes = [int(self.item_codes[i, k]) for i in S]  # oldest first
            if k >= self.composite:
                f = (codes[-1],)
            elif self.params["rule"] == "track":
                states, state = [], 0
                for c in codes:  # each item moves the level-k state by its code's permutation
                    state = int(self.moves[k][c][state])
                    states.append(state)
                f = tuple(states)
            else:
                counts = np.bincount(codes, minlength=self.B)
                last_pos = {c: pos for pos, c in enumerate(codes)}
                z = max(last_pos, key=lambda c: (counts[c], last_pos[c]))  # most frequent, ties: most recent
                f = (z, codes[-1]) if self.params["facts"] == 2 else (z, codes[-1], codes[0])
            out.append(f)
            rule_codes.append(self.rule_code(k, f))
        return out

    def rule_code(self, k: int, facts: tuple[int, ...]) -> int:
        """The level-k code the rule computes from level k's facts."""
        if k >= self.composite:
            return int(self.perm[k][facts[0]])
        if self.params["rule"] == "nested":
            return int(self.mix[k][facts[0], facts[1]])
        if self.params["rule"] == "track":
            return int(facts[-1])
        if len(facts) == 3:
            return int(self.cube[k][(self.axes[k][0][facts[0]] + self.axes[k][1][facts[1]] + self.axes[k][2][facts[2]]) % self.B])
        return int(self.latin[k][facts[0], facts[1]])

    def block_text(self, k: int, facts: tuple[int, ...]) -> str:
        """Level k's facts in words (the teacher's thinking block k): "often <z> recent <r>", the states' words
        for track, "recent <r>" for a one-fact level."""
        w = self.level_words[k]
        if k >= self.composite:
            return f"recent {w[facts[0]]}"
        if self.params["rule"] == "track":
            return " ".join(w[x] for x in facts)
        return f"often {w[facts[0]]} recent {w[facts[1]]}" + (f" first {w[facts[2]]}" if len(facts) == 3 else "")

    def rule_leaf(self, history) -> int:
        """The leaf the rule picks after `history`."""
        leaf = 0
        for k, f in enumerate(self.facts(history)):
            leaf = leaf * self.B + self.rule_code(k, f)
        return leaf

    def distribution(self, user: int, prefix) -> np.ndarray:
        """(N,) exact probability of each next item after the user's items `prefix` (all of them, oldest first;
        empty = the first item). `user` is unused: the rule depends on the history only."""
        leaf_p = np.full(self.num_leaves, 1.0 / self.num_leaves)
        if len(prefix):
            leaf_p *= self.params["noise"]
            leaf_p[self.rule_leaf(prefix)] += 1 - self.params["noise"]
        q = self.item_q.copy()
        consumed = np.zeros(self.N, dtype=bool)
        consumed[list(prefix)] = True
        q[consumed] = 0.0
        P = self.params["items_per_leaf"]
        per_leaf = q.reshape(self.num_leaves, P)
        full = per_leaf.sum(1) == 0  # every item of the leaf consumed: all of them are candidates again
        per_leaf[full] = self.item_q.reshape(self.num_leaves, P)[full]
        per_leaf /= per_leaf.sum(1, keepdims=True)
        return (per_leaf * leaf_p[:, None]).reshape(-1)

    def sample_sequences(self) -> tuple[list[list[int]], list[list[int]]]:
        return World.sample_sequences(self)


def make_world(params: dict, seed: int):
    """The world of `params["rule"]`: the taxonomy Markov world or a compose world."""
    return World(params, seed) if params["rule"] == "markov" else ComposeWorld(params, seed)


def generate(world: str, seed: int, **overrides) -> RawData:
    """Build the world and its interactions, ready for `write_processed`."""
    params = world_params(world, **overrides)
    w = make_world(params, seed)
    seqs, times = w.sample_sequences()
    inters = [(w.user_id(u), w.item_id(j), 5.0, float(t)) for u in range(w.U) for j, t in zip(seqs[u], times[u])]
    items = {w.item_id(j): [w.titles[j], w.categories[j]] for j in range(w.N)}
    info = {"source": "synthetic", "generator": {"world": world, "world_seed": int(seed), **params}}
    return RawData(inters, [("title", "token_seq"), ("category", "token_seq")], items, ["title"], info,
                   apply_filters=False)


class Oracle:
    """Exact next-item distributions for the samples of a synthetic `Dataset`."""

    def __init__(self, dataset):
        g = dict(dataset.info["generator"])
        world, seed = g.pop("world"), g.pop("world_seed")
        self.world = make_world(world_params(world, **g), seed)
        w = self.world
        wid = {w.item_id(j): j for j in range(w.N)}
        self.to_world = np.array([wid[i] for i in dataset.item_ids])  # (N,) dataset index -> world index
        uid = {w.user_id(u): u for u in range(w.U)}
        self.user_to_world = [uid[u] for u in dataset.user_ids]
        self.sequences = dataset.sequences

    def distribution(self, sample) -> np.ndarray:
        """(N,) exact probability of every item (dataset index order) being `sample`'s target, given everything
        the user consumed before it (`sample.pos`; the history alone when the position is unknown)."""
        prefix = self.sequences[sample.user][:sample.pos] if sample.pos >= 0 else sample.history
        p = self.world.distribution(self.user_to_world[sample.user], self.to_world[list(prefix)])
        return p[self.to_world]

    def ranking(self, sample, k: int | None = None) -> np.ndarray:
        """Items by decreasing probability (ties: lower index first); the top k if given."""
        order = np.argsort(-self.distribution(sample), kind="stable")
        return order if k is None else order[:k]


def is_compose(dataset) -> bool:
    """True for a compose world's dataset (the next item computed from facts of the history: its own codes are
    the SIDs, its facts the thinking); False for the taxonomy world and for real data."""
    rule = ((getattr(dataset, "info", None) or {}).get("generator") or {}).get("rule", "markov")
    return rule in COMPOSE_RULES


def oracle(dataset) -> Oracle | None:
    """The exact-distribution oracle for synthetic data; None for real data."""
    if dataset.info.get("source") != "synthetic":
        return None
    return Oracle(dataset)
