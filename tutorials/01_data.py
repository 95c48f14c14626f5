# %% setup: imports, data and settings
"""Tutorial 1: the data.

Run:  python tutorials/01_data.py          (a few seconds on a laptop CPU)

What you will see
  1. the synthetic world: a latent taxonomy, item titles generated from it, users' sequences;
  2. the EXACT next-item distribution of one test sample, and the oracle hit@10 ceiling;
  3. the two ways to cut sequences into train/valid/test samples: leave-one-out vs temporal;
  4. the three Amazon review releases (2014, 2018, 2023) read from the fixtures in data/samples/.
Pictures: 01_oracle_distribution.png, 01_splits.png
"""

from collections import Counter
from datetime import datetime, timezone

import _common as C
import matplotlib.pyplot as plt
import numpy as np

from minisapo.data import DataConfig, load, make_splits, oracle, prepare
from minisapo.evaluate import oracle_baseline, popularity_baseline

C.start("Tutorial 1 - the data: a synthetic world with an exact oracle, splits, Amazon reviews")

# %% 1. The synthetic world
# ----------------------------------------------------------------------------------------------
# 1. The synthetic world
#
# Real recommendation data has no ground truth for "what should come next": we only see what the
# user did. minisapo ships a synthetic world whose generating process is known, so we can compute
# the best possible recommendation and see how far a model is from it.
#
# The story: a taxonomy tree (depth 3, `branching` children per node), items under each leaf,
# titles made of one word per taxonomy level (plus a brand, two variant words and a little noise),
# and users who move through the tree with a Markov rule: stay in the last item's leaf, move to a
# nearby leaf, or jump to a top category they like. `prepare` writes the world as RecBole files
# under <DATA>/processed/tiny/ (a second call is a cache hit); `load` reads it back.
# ----------------------------------------------------------------------------------------------
C.section("1. the synthetic world", "prepare() writes the processed dataset once; load() reads it back.")

cfg = DataConfig(world="tiny")
path = prepare(cfg, C.DATA)
ds = load(C.DATA, path.name)
gen = ds.info["generator"]
print(f"dataset {ds.name!r}: {ds.num_users} users, {ds.num_items} items, "
      f"samples {({k: len(v) for k, v in ds.splits.items()})}")
print(f"generator knobs: depth={gen['depth']} branching={gen['branching']} items_per_leaf={gen['items_per_leaf']} "
      f"stay={gen['stay']} jump={gen['jump']} zipf={gen['zipf']} noise={gen['noise']}")

# The world object behind the oracle knows the taxonomy: every node owns two words, and a title
# uses (mostly) the first word of each node on the item's path. That is what SIDs will rediscover.
orc = oracle(ds)
world = orc.world
print("\nthe latent taxonomy (node: its words) and two titles under every leaf:")
by_leaf: dict[str, list[int]] = {}
for i, cat in enumerate(ds.item_categories):
    by_leaf.setdefault(cat.split()[-1], []).append(i)
for d in range(world.depth):
    for k in range(world.C ** (d + 1)):
        name = world.node_name(d, k)
        line = "    " * d + f"{name:<8} {'/'.join(world.node_words[d][k])}"
        if d == world.depth - 1:
            line += "   e.g. " + " | ".join(ds.item_titles[i] for i in by_leaf[name][:2])
        print(line)

# A user's sequence: watch the category path. Most moves stay in the leaf (`stay`), some go to a
# nearby leaf, a few jump to the user's favourite top category.
user = 0
print(f"\nuser {user}'s sequence (oldest first):")
for i in ds.sequences[user]:
    print(f"  item {i:>3}  {ds.item_categories[i]:<16} {ds.item_titles[i]}")

# %% 2. The exact next-item distribution and the oracle ceiling
# ----------------------------------------------------------------------------------------------
# 2. The exact next-item distribution and the oracle ceiling
#
# Because we generated the data, `oracle(ds).distribution(sample)` gives the exact probability of
# every item being the next one. Ranking items by it is the best any recommender can do: its
# expected hit@10 (probability mass of its top 10) is the ceiling for every model in this course.
# Note how far from 1 it is: the future is random, even for a perfect model.
# ----------------------------------------------------------------------------------------------
C.section("2. the exact next-item distribution of one test sample",
          "The oracle ranks items by the true probability; its expected hit@10 is the ceiling.")

sample = next(s for s in ds.splits["test"] if s.user == user)
p = orc.distribution(sample)  # (N,) sums to 1
last = sample.history[-1]
print(f"sample: user {sample.user}, last item {last} ({ds.item_categories[last]}), target {sample.target} "
      f"({ds.item_categories[sample.target]}), sum p = {p.sum():.6f}")


def shared_levels(a: int, b: int) -> int:
    """How many taxonomy levels two items share (3 = same leaf)."""
    n = 0
    for x, y in zip(ds.item_categories[a].split(), ds.item_categories[b].split()):
        if x != y:
            break
        n += 1
    return n


RELATION = {3: "same leaf", 2: "sibling leaf", 1: "same top category", 0: "other top category"}
top10 = orc.ranking(sample, 10)
print("\nrank  item  p(next)  relation to the last item    title")
for r, i in enumerate(top10, 1):
    mark = "  <- target" if i == sample.target else ""
    print(f"{r:>4}  {i:>4}  {p[i]:.4f}   {RELATION[shared_levels(i, last)]:<27} {ds.item_titles[i]}{mark}")
rank = int(np.where(orc.ranking(sample) == sample.target)[0][0]) + 1
print(f"\nthe target's rank under the oracle: {rank}; expected hit@10 of this sample = {p[top10].sum():.3f}")
mass = Counter()
for i in range(ds.num_items):
    mass[RELATION[shared_levels(i, last)]] += p[i]
print("probability mass by relation:", {k: round(float(v), 3) for k, v in mass.items()})

# Over the whole test split: the oracle (ceiling) and the popularity baseline (floor).
# `hit@10` is what the oracle got on the realised targets, `expected_hit@10` its average chance.
ora = oracle_baseline(ds, ds.splits["test"], ks=(1, 5, 10))
pop = popularity_baseline(ds, ds.splits["test"], ks=(1, 5, 10))
print(f"\ntest split ({ora['num_samples']} samples)        hit@1   hit@5   hit@10")
print(f"  oracle (realised)                 {ora['hit@1']:.3f}   {ora['hit@5']:.3f}   {ora['hit@10']:.3f}")
print(f"  oracle (expected)                 {ora['expected_hit@1']:.3f}   {ora['expected_hit@5']:.3f}   "
      f"{ora['expected_hit@10']:.3f}")
print(f"  popularity                        {pop['hit@1']:.3f}   {pop['hit@5']:.3f}   {pop['hit@10']:.3f}")

colors = {3: "tab:green", 2: "tab:olive", 1: "tab:orange", 0: "tab:grey"}
order = orc.ranking(sample)
fig, ax = plt.subplots(figsize=(11, 3.6))
ax.bar(np.arange(len(order)), p[order], color=[colors[shared_levels(i, last)] for i in order])
t = int(np.where(order == sample.target)[0][0])
ax.annotate("target", (t, p[sample.target]), xytext=(t + 3, p[order[0]] * 0.8),
            arrowprops=dict(arrowstyle="->"))
ax.axvline(9.5, color="k", ls="--", lw=0.8)
ax.text(10, p[order[0]] * 0.95, f"top 10: {p[top10].sum():.0%} of the mass", fontsize=8)
for k, c in colors.items():
    ax.bar([0], [0], color=c, label=RELATION[k])
ax.set_xlabel("items, ranked by the exact probability of being next")
ax.set_ylabel("p(next item)")
ax.set_title(f"exact next-item distribution for user {sample.user}'s test sample (colour: relation to the last item)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(C.OUT / "01_oracle_distribution.png", dpi=110)
plt.close(fig)
C.saved(C.OUT / "01_oracle_distribution.png")

# %% 3. Splits: leave-one-out vs temporal
# ----------------------------------------------------------------------------------------------
# 3. Splits: leave-one-out vs temporal
#
# A sample is (user, history = the <= max_history items before the target, target).
#   loo       per user: last item = test, second last = valid, earlier positions = train
#             (TIGER, SASRec). Every user is in every split, but the splits overlap in time:
#             one user's test item may be older than another user's training items.
#   temporal  all samples sorted by the target's time and cut 8:1:1 (MiniOneRec): the model
#             never trains on the future of a test sample, but some users have no test sample.
# `DataConfig(split="temporal")` picks it; here we call `make_splits` (what `load` uses) on the
# same sequences to compare both.
# ----------------------------------------------------------------------------------------------
C.section("3. leave-one-out vs temporal splits", "Same sequences, two ways to cut them into samples.")

big = 10 ** 6  # an unbounded history, so len(history) is the target's position in its sequence
splits = {name: make_splits(ds.sequences, ds.timestamps, name, max_history=big) for name in ("loo", "temporal")}
users_test, later = {}, {}  # per split: users with a test sample; training targets later than the first test target
for name, sp in splits.items():
    t_train = np.array([ds.timestamps[s.user][len(s.history)] for s in sp["train"]])
    t_test = np.array([ds.timestamps[s.user][len(s.history)] for s in sp["test"]])
    users_test[name] = len({s.user for s in sp["test"]})
    later[name] = float(np.mean(t_train > t_test.min()))
    print(f"{name:<9} train {len(sp['train']):>4}  valid {len(sp['valid']):>4}  test {len(sp['test']):>4}   "
          f"users with a test sample: {users_test[name]:>3}/{ds.num_users}   "
          f"train targets later than the first test target: {later[name]:.0%}")

part_of = {name: {(s.user, len(s.history)): part for part, ss in sp.items() for s in ss} for name, sp in splits.items()}
print(f"\nuser {user}: position -> split")
print("  position " + " ".join(f"{i:>5}" for i in range(len(ds.sequences[user]))))
for name in splits:
    print(f"  {name:<8} " + " ".join(f"{part_of[name].get((user, i), '-'):>5}" for i in range(len(ds.sequences[user]))))
print("('-' = the first item: never a target, only history)")

pal = {"train": "tab:blue", "valid": "tab:orange", "test": "tab:red", "-": "lightgrey"}
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
users = list(range(12))
for ax, name in zip(axes, splits):
    for u in users:
        days = (np.array(ds.timestamps[u]) - min(min(ds.timestamps[v]) for v in users)) / 86400
        cols = [pal[part_of[name].get((u, i), "-")] for i in range(len(days))]
        ax.plot(days, [u] * len(days), color="#dddddd", lw=0.8, zorder=0)
        ax.scatter(days, [u] * len(days), c=cols, s=18)
    ax.set_title(f"{name}: each row is a user, each dot an interaction")
    ax.set_xlabel("days")
for k, c in pal.items():
    axes[1].scatter([], [], c=c, label=k if k != "-" else "history only")
axes[0].set_ylabel("user")
axes[1].legend(fontsize=8, loc="upper right")
fig.tight_layout()
fig.savefig(C.OUT / "01_splits.png", dpi=110)
plt.close(fig)
C.saved(C.OUT / "01_splits.png")

# %% 4. Amazon reviews, three releases
# ----------------------------------------------------------------------------------------------
# 4. Amazon reviews, three releases
#
# The same `prepare` reads the public Amazon review dumps exactly as they are distributed:
#   2014  reviews_<Cat>_5.json(.gz) + meta_<Cat>.json(.gz): meta lines are Python literals
#   2018  <Cat>_5.json(.gz)         + meta_<Cat>.json(.gz): plain JSON, field `category`
#   2023  <Cat>.jsonl(.gz)          + meta_<Cat>.jsonl(.gz): key `parent_asin`, time in ms
# The fixtures in data/samples/ are tiny and deliberately dirty (HTML entities, markup, broken
# lines, an item without metadata): watch the cleaning and the reports. Real data is k-core
# filtered (default 5: keep users and items with >= 5 interactions); these 18-line files need 2.
# ----------------------------------------------------------------------------------------------
C.section("4. Amazon reviews 2014 / 2018 / 2023 (fixtures in data/samples/)",
          "Same prepare(), source='amazon'; the release is detected from the file name and first line.")

REVIEWS = {"2014": "amazon2014/reviews_Toy_5.json", "2018": "amazon2018/Toy_5.json", "2023": "amazon2023/Toy.jsonl"}
kcore5_error = None
try:
    prepare(DataConfig(source="amazon", reviews=str(C.SAMPLES / REVIEWS["2014"]), name="toy2014_5core"), C.DATA)
except ValueError as e:
    kcore5_error = e
    print(f"with the default kcore=5 -> ValueError: {e}\n")

releases = {}  # release -> (users, items, notes)
for release, rel_path in REVIEWS.items():
    acfg = DataConfig(source="amazon", reviews=str(C.SAMPLES / rel_path), name=f"toy{release}", kcore=2)
    ads = load(C.DATA, prepare(acfg, C.DATA).name)
    releases[release] = (ads.num_users, ads.num_items, len(ads.info.get("notes", [])))
    print(f"\n{release}: {ads.num_users} users, {ads.num_items} items, splits "
          f"{ {k: len(v) for k, v in ads.splits.items()} }, notes: {len(ads.info.get('notes', []))}")
    for iid, text in zip(ads.item_ids, ads.item_text):
        print(f"    {iid}: {text!r}")
    u = 0
    when = [datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d") for t in ads.timestamps[u]]
    print(f"    user {ads.user_ids[u]}: " + ", ".join(f"{ads.item_ids[i]} ({d})" for i, d in zip(ads.sequences[u], when)))

# %% Takeaway
sizes = {f"{u} users and {i} items" for u, i, _ in releases.values()}
if len(sizes) == 1:
    amazon = f"The three Amazon releases, in three file formats, read to the same {sizes.pop()}"
else:
    amazon = "The three Amazon releases read to " + ", ".join(f"{r}: {u} users / {i} items"
                                                               for r, (u, i, _) in releases.items())
notes = ", ".join(str(n) for _, _, n in releases.values())
C.takeaway(
    f"Even a perfect recommender misses: on the {ora['num_samples']} test samples the oracle's expected hit@10 is "
    f"{ora['expected_hit@10']:.2f} (realised {ora['hit@10']:.2f}), far from 1, and popularity gets "
    f"{pop['hit@10']:.2f}. A model lands between the two: judge it by its gap to the oracle, not to 1.",
    f"Leave-one-out gives every user a test sample ({users_test['loo']}/{ds.num_users}) but "
    f"{later['loo']:.0%} of its training targets are later than the first test target (it trains on the future); "
    f"temporal has {later['temporal']:.0%} but only {users_test['temporal']}/{ds.num_users} users with a test sample.",
    f"{amazon}; what was skipped or patched is reported, never silent ({notes} notes), and the default kcore=5 "
    + ("refuses these tiny files with a message that says what to change." if kcore5_error else "keeps them."))

C.done()
