# %% setup: imports and settings
"""Tutorial 7: real data -- Amazon reviews and MovieLens-100k through the whole pipeline.

Run:  python tutorials/07_real_data.py          (about 1 minute)

Real logs have no oracle: the yardstick is what a few lines of counting achieve on the same users.
Every evaluation report carries three of them (`baselines`): `popularity` (training frequency),
`markov` (how often each item followed the user's last item) and `item_knn` (items co-consumed
with the user's recent items).

What you will see
  1. the committed Amazon 2018 fixture (data/samples/: 3 users, 4 items): data -> SIDs -> a tiny
     SFT -> evaluation, with the same functions `minisapo run` calls (a pipeline check, not a result);
  2. MovieLens-100k (943 users, 1,682 movies) as RecBole atomic files, when the `recbole` package is
     installed (its wheel ships the files): the same steps with tiny settings, next to the baselines;
     skipped with a message otherwise;
  3. what the numbers are worth, and where the real preset is.
Pictures: 07_real_data.png
"""

import importlib.util
import math
from pathlib import Path

import _common as C
import matplotlib.pyplot as plt

from minisapo.config import parse_overrides
from minisapo.pipeline import load_stack, make_run_config, stage_eval, stage_sft, start_run

C.start("Tutorial 7 - real data: Amazon reviews and MovieLens-100k, next to the classical baselines")

# Tiny settings for both datasets: the "tiny" preset (a 2-layer, 32-wide GPT), a short SFT, no RL
# (tutorials 5 and 6 are about RL). `--key=value` arguments go on top of both, e.g. --sft.max_steps=400.
TINY = {"preset": "tiny", "data_dir": str(C.DATA), "runs_dir": str(C.OUT / "runs"),
        "sft.max_steps": 400, "sft.learning_rate": 1e-2, "sft.eval_every": 0, "sft.log_every": 100, "rl.max_steps": 0,
        **parse_overrides(C.args())}
BASELINES = ("popularity", "markov", "item_knn")


def pipeline(overrides: dict) -> tuple[dict, object, object]:
    """data -> SIDs -> tokenizer -> grammar (cached), then SFT and the test evaluation: what
    `minisapo run --rl.max_steps=0` does. Returns (the evaluation report, the stack, the config)."""
    cfg = make_run_config({**TINY, **overrides})
    stack = load_stack(cfg)  # builds data/processed/<data.name>/ and its SIDs once; a cache hit afterwards
    run_dir = start_run(cfg, resume=False, stack=stack)  # runs/<name>/: config.json, the SIDs it trains with
    model = stage_sft(cfg, stack, run_dir)
    return stage_eval(cfg, stack, model, run_dir), stack, cfg


def se(p: float, n: int) -> float:
    """Standard error of a hit rate p measured on n users."""
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


# %% 1. Amazon reviews: the committed fixture
# ----------------------------------------------------------------------------------------------
# 1. Amazon reviews: the committed fixture
#
# `--source=amazon --reviews=<file>` reads a review dump as distributed (2014, 2018 or 2023: the
# release is told from the file name and first line) and its metadata file next to it; the fixture
# is tiny, so the k-core is lowered to 2 (data/README.md has the same command line:
#     minisapo data --source=amazon --reviews=data/samples/amazon2018/Toy_5.json --kcore=2 --name=toy18
# ). With 3 users the test split has 3 samples: this checks that the pipeline runs on real formats;
# its numbers mean nothing. For a real category, download e.g. Beauty_5.json.gz into
# data/raw/amazon2018/ and keep the default --kcore=5 (data/README.md).
# ----------------------------------------------------------------------------------------------
C.section("1. the Amazon 2018 fixture: data -> SIDs -> tiny SFT -> eval")

amazon, astack, _ = pipeline({"data.source": "amazon", "data.reviews": str(C.SAMPLES / "amazon2018" / "Toy_5.json"),
                           "data.kcore": 2, "data.name": "tutorial07_toy18", "name": "07_toy18"})
ads = astack.dataset
print(f"\n{len(ads.item_ids)} items, {ads.num_users} users, test samples {len(ads.splits['test'])}; every item and its SID:")
for i in range(len(ads.item_ids)):
    print(f"  {ads.item_ids[i]:<12} {''.join(astack.table.tokens(i)):<24} {ads.item_titles[i][:60]}")
print(f"hit@10: model {amazon['hit@10']:.2f}, " + ", ".join(f"{b} {amazon['baselines'][b]['hit@10']:.2f}"
                                                           for b in BASELINES if b in amazon["baselines"])
      + f" (on {amazon['num_samples']} test samples: with 4 items every top 10 holds the target)")

# %% 2. MovieLens-100k, when recbole is installed
# ----------------------------------------------------------------------------------------------
# 2. MovieLens-100k, when recbole is installed
#
# RecBole's atomic files (`ml-100k.inter`: user, item, rating, timestamp; `ml-100k.item`: title,
# release year, genres) are read by `--source=atomic --path=<folder>`; every text column becomes item
# text for the SIDs. The recbole wheel ships ml-100k in `recbole/dataset_example/ml-100k/` (install it
# with `pip install --no-deps recbole==1.2.1`); we only look the folder up, without importing recbole.
# The default 5-core keeps 943 users and 1,349 movies; leave-one-out gives one test sample per user.
# The model is tiny and SFT is short, and we evaluate the first 200 test users: a smoke check, far
# from what the data allows (README, "Real data": `minisapo run --data.name=ml-100k --preset=real`).
# ----------------------------------------------------------------------------------------------
C.section("2. MovieLens-100k (RecBole atomic files): the same pipeline, tiny settings")

spec = importlib.util.find_spec("recbole")
ml_dir = Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k" if spec else None
movielens = None
if ml_dir is None or not (ml_dir / "ml-100k.inter").exists():
    print("SKIPPED: no ml-100k here (the recbole package is not installed, or has no dataset_example/ml-100k). "
          "To run this part:\n"
          "    pip install --no-deps recbole==1.2.1\n"
          "then run this tutorial again (nothing else changes).")
else:
    print(f"ml-100k found at {ml_dir}")
    movielens, mstack, mcfg = pipeline({"data.source": "atomic", "data.path": str(ml_dir), "data.name": "tutorial07_ml100k",
                                  "name": "07_ml100k", "eval.max_samples": 200})
    mds = mstack.dataset
    print(f"\n{len(mds.item_ids)} movies, {mds.num_users} users, samples "
          f"{ {k: len(v) for k, v in mds.splits.items()} }; SIDs of {mstack.table.num_levels} levels")
    for i in range(3):
        print(f"  {''.join(mstack.table.tokens(i)):<26} {mds.item_titles[i][:60]}")

# %% 3. What the numbers are worth
# ----------------------------------------------------------------------------------------------
# 3. What the numbers are worth
#
# A hit rate p on n users has a standard error sqrt(p (1 - p) / n): on 200 users and p = 0.1 that is
# 0.02. The picture shows hit@10 of the model and the three baselines with these error bars.
# ----------------------------------------------------------------------------------------------
C.section("3. the model next to the classical baselines, with standard errors")

reports = {"Amazon 2018 fixture": amazon, **({"MovieLens-100k (smoke check)": movielens} if movielens else {})}
arms = ["model", *BASELINES]
fig, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 3.6), squeeze=False)
for ax, (title, rep) in zip(axes[0], reports.items()):
    n = rep["num_samples"]
    vals = [rep["hit@10"] if a == "model" else rep["baselines"].get(a, {}).get("hit@10", float("nan")) for a in arms]
    print(f"{title}, {n} test users:  " + ",  ".join(f"{a} {v:.3f} ± {se(v, n):.3f}" for a, v in zip(arms, vals)))
    ax.bar(arms, vals, yerr=[se(v, n) for v in vals], capsize=4, color=["tab:orange", "0.6", "0.45", "0.3"])
    ax.set_ylim(0, min(1.05, 1.3 * max(v + se(v, n) for v in vals)))  # each panel on its own scale: read the numbers
    ax.set_title(f"{title}: test hit@10 ± standard error ({n} users)", fontsize=9)
fig.tight_layout()
fig.savefig(C.OUT / "07_real_data.png", dpi=110)
plt.close(fig)
C.saved(C.OUT / "07_real_data.png")

# %% Takeaway
a_base = ", ".join(f"{b} {amazon['baselines'][b]['hit@10']:.2f}" for b in BASELINES)
points = [f"The Amazon fixture ({len(ads.item_ids)} items, {ads.num_users} users) went through data -> SIDs -> SFT -> "
          f"eval with the functions `minisapo run` uses. Its hit@10 on {amazon['num_samples']} test samples "
          f"({amazon['hit@10']:.2f}; {a_base}) shows only that the pipeline runs on the real format"
          + (f": with {len(ads.item_ids)} items every top 10 holds the target." if len(ads.item_ids) <= 10 else ".")]
if movielens:
    n, m10 = movielens["num_samples"], movielens["hit@10"]
    best = max(BASELINES, key=lambda b: movielens["baselines"][b]["hit@10"])
    b10 = movielens["baselines"][best]["hit@10"]
    gap = (m10 - b10) / math.hypot(se(m10, n), se(b10, n))
    where = ("above" if gap >= 2 else "below" if gap <= -2 else "within 2 standard errors of")
    points.append(f"MovieLens-100k, tiny settings, {n} test users: the model's hit@10 is {m10:.3f} ± {se(m10, n):.3f}, "
                  f"{where} the best classical baseline ({best}, {b10:.3f}; {gap:+.1f} standard errors of the "
                  f"difference). A smoke check: a {mcfg.model.n_layer}-layer, {mcfg.model.n_embd}-wide model after "
                  f"{mcfg.sft.max_steps} SFT steps, nowhere near converged.")
else:
    points.append("MovieLens-100k was skipped (no recbole package with its ml-100k files): "
                  "`pip install --no-deps recbole==1.2.1` adds it.")
points.append("For numbers that mean something, README \"Real data\": `minisapo data --source=atomic --path=<ml-100k> "
              "--name=ml-100k`, then `minisapo run --data.name=ml-100k --preset=real` (about 30 minutes on a CPU: "
              "pretraining, SFT sized in epochs, all test users) and `minisapo compare --from=runs/<that run>`.")
C.takeaway(*points)

C.done()
