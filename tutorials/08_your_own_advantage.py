# %% setup: imports, data and settings
"""Tutorial 8: prototype your own algorithm -- a reward or an advantage in a file of your own.

Run:  python tutorials/08_your_own_advantage.py          (about 20 s)

A research idea about credit assignment is usually one small function: how a group of rollouts is
rewarded, or how rewards become advantages. minisapo takes such a function from a file of yours,
`--rl.reward=path/to/file.py:function` or `--rl.advantage=path/to/file.py:function` (or
`package.module:function`), with the same signature as the built-ins: nothing in minisapo is edited.

What you will see
  1. the contract: what the built-in rewards and advantages receive and return;
  2. a plug-in file, written to <OUT>/my_algos.py: a discounted "reward-to-go" advantage and an
     "exact-match bonus" reward;
  3. the plug-in checked by hand on one group, against the built-ins, where it must equal them;
  4. a few RL steps from one short SFT: the built-in SAPO, SAPO with the plug-in advantage, SAPO with
     the plug-in reward (same seed: the same rollouts at step 1, so only the update differs);
  5. the same from the command line (`minisapo rl --from=...`, `minisapo compare`);
  6. what a mistake looks like: one line that names the option.
Pictures: 08_advantages.png, 08_rl_curves.png
"""

import copy
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import _common as C
import matplotlib.pyplot as plt
import numpy as np

from minisapo.config import make_config, parse_overrides
from minisapo.evaluate import quick_hit_fn
from minisapo.pipeline import load_stack, new_model
from minisapo.plugins import load_function
from minisapo.reasoning import build_examples, build_prompt
from minisapo.rl import (ADVANTAGES, ALGOS, REWARDS, advantage_function, reward_exact, reward_function,
                         reward_position, rl_config, sequence_advantages, step_advantages, step_matches, train_rl)
from minisapo.metrics_log import read_metrics
from minisapo.sft import train_sft

C.start("Tutorial 8 - prototype your own algorithm: a reward or an advantage function in a file of your own")

# The "tiny" preset with tutorial 5's SFT and RL settings (G = 8 rollouts for each of 8 prompts per
# step, no KL term); `--key=value` arguments go on top, as with the `minisapo` command.
TUTORIAL = {"data_dir": str(C.DATA), "runs_dir": str(C.OUT / "runs"),
            "sft.max_steps": 150, "sft.batch_size": 16, "sft.learning_rate": 1e-2, "sft.warmup_steps": 10,
            "sft.eval_every": 0, "sft.eval_samples": 32,
            "rl.num_generations": 8, "rl.batch_size": 8, "rl.max_steps": 8, "rl.learning_rate": 1e-4,
            "rl.beta": 0.0, "rl.eval_every": 0, "rl.save_every": 0}
cfg = make_config({**TUTORIAL, **parse_overrides(C.args())}, preset="tiny")
np.set_printoptions(precision=3, suppress=True)

# %% 1. The contract
# ----------------------------------------------------------------------------------------------
# 1. The contract
#
# One RL step (tutorial 5): B = prompts x G rollouts, rows of one group contiguous. Parsing gives
# the per-step matches m (B, K): m[i, k] = 1 if SID token k of rollout i is the target's. Then
#   reward     fn(matches (B, K) float 0/1, group_size)              -> (B,) or (B, K)
#   advantage  fn(rewards (B,) or (B, K), group_size, scale_rewards) -> (B,) or (B, K)
# A (B,) advantage is one number per response, given to all its tokens (GRPO); a (B, K) one is one
# number per step, given to that step's tokens only (SAPO). `scale_rewards` is "group", "batch" or
# "none" (divide by the group's std, the batch's, or not at all). With a plug-in advantage the
# reward arrives as the reward function returned it. These are the built-ins:
# ----------------------------------------------------------------------------------------------
C.section("1. the contract: the built-in rewards and advantages")

for kind, table in (("reward", REWARDS), ("advantage", ADVANTAGES)):
    for name, fn in table.items():
        doc = textwrap.shorten(" ".join(fn.__doc__.split()), width=76, placeholder=" ...")
        print(f"  --rl.{kind + '=' + name:<21} {doc}")
print("\nthe algorithm presets (--algo=... / --algos=...) are pairs of them:")
for algo, settings in ALGOS.items():
    print(f"  {algo:<13} reward={settings['reward']:<12} advantage={settings['advantage']}")

# %% 2. A plug-in file
# ----------------------------------------------------------------------------------------------
# 2. A plug-in file
#
# The idea: SAPO gives step k the advantage of its own match only. But a right token at step 0
# is what makes a right token at step 1 likely (the model writes the SID left to right), so a step
# could also be credited for the steps after it: the discounted reward-to-go of RL textbooks,
#     R[i, k] = r[i, k] + gamma * R[i, k + 1],
# made group-relative per step exactly as SAPO does. gamma = 0 is SAPO; gamma = 1 credits step 0
# with every match of the response. Second idea, a reward: the per-step match plus a bonus on every
# step when the whole SID is right. The file imports only torch; you would keep it anywhere.
# ----------------------------------------------------------------------------------------------
C.section("2. a plug-in file of your own")

PLUGIN = '''"""My RL ideas for minisapo: a reward and an advantage with the built-ins' signatures.

    minisapo rl --from=<sft run> --rl.advantage=<this file>:reward_to_go
    minisapo rl --from=<sft run> --rl.reward=<this file>:exact_bonus
"""

import torch

GAMMA = 0.5  # how much of the later steps' reward flows back to a step (0 = SAPO, 1 = all of it)
BONUS = 1.0  # extra reward on every step of an exact hit
EPS = 1e-4  # added to a std before dividing, as the built-ins do


def exact_bonus(matches: torch.Tensor, group_size: int) -> torch.Tensor:
    """Reward: the per-step match m[i, k], plus BONUS on every step of an exact hit. (B, K) -> (B, K)"""
    exact = matches.prod(dim=-1, keepdim=True)  # (B, 1): 1 if every step matches
    return matches + BONUS * exact


def reward_to_go(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group",
                 gamma: float = GAMMA) -> torch.Tensor:
    """Advantage: the discounted reward-to-go R[i, k] = r[i, k] + gamma * R[i, k + 1] of every step,
    then group-relative per step as SAPO: (R[i, k] - mean_group R[., k]) / (std_group R[., k] + EPS).
    (B, K) -> (B, K); a scalar reward (B,) is a single step, i.e. GRPO's advantage."""
    r = rewards.float().reshape(rewards.size(0), -1)  # (B, K); K = 1 for a scalar reward
    R = r.clone()
    for k in range(r.size(1) - 2, -1, -1):  # from the last step back to the first
        R[:, k] = r[:, k] + gamma * R[:, k + 1]
    B, K = R.shape
    groups = R.view(B // group_size, group_size, K)  # (groups, G, K): rows of a group are contiguous
    std = groups.std(dim=1, keepdim=True)  # (groups, 1, K), unbiased like the built-ins
    adv = groups - groups.mean(dim=1, keepdim=True)
    if scale_rewards == "group":
        adv = adv / (std + EPS)
    elif scale_rewards == "batch":
        adv = adv / (R.std(dim=0) + EPS)
    adv = torch.where(std <= 1e-8, torch.zeros_like(adv), adv)  # all rewards equal: no signal, exactly 0
    return adv.reshape(B, K) if rewards.dim() == 2 else adv.reshape(B)
'''
plugin_file = C.OUT / "my_algos.py"
plugin_file.write_text(PLUGIN)
ADV, REW = f"{plugin_file}:reward_to_go", f"{plugin_file}:exact_bonus"
print(f"wrote {plugin_file} ({len(PLUGIN.splitlines())} lines, the source is in this tutorial)")
print(f"  --rl.advantage={ADV}\n  --rl.reward={REW}")

# %% 3. Checked by hand
# ----------------------------------------------------------------------------------------------
# 3. Checked by hand, against the built-ins
#
# `load_function` is what the command line uses to find your function: the raw function, for hand
# checks with other arguments (here gamma). `advantage_function(spec)` / `reward_function(spec)`
# return it as RL calls it: tried once on a small example when loaded, and every result checked
# (shape (B,) or (B, K), finite). The group is tutorial 5's: six SIDs against the target
# <a_3><b_1><c_7>. A new idea should reproduce a baseline where the two must agree, before it is
# allowed to differ anywhere else:
#   gamma = 0   ->  SAPO's step advantages, exactly;
#   gamma = 1   ->  step 0 gets GRPO's sequence advantage of the number of matches;
#   any gamma   ->  the last step has nothing after it: SAPO's advantage.
# ----------------------------------------------------------------------------------------------
C.section("3. the plug-in checked by hand on one group")

target = (3, 1, 7)
preds = [(3, 1, 7), (3, 1, 2), (3, 4, 7), (3, 4, 0), (8, 1, 5), (8, 2, 0)]
G, K = len(preds), len(target)
m = step_matches(preds, [target] * G, K)  # (G, K)
rtg = load_function(ADV, "rl.advantage")  # the raw function from your file
bonus = reward_function(REW)  # your reward as RL calls it (checked)
sapo = step_advantages(reward_position(m), G)  # (G, K) the built-in
mine = advantage_function(ADV)(reward_position(m), G, "group")  # (G, K) as RL calls it (gamma = GAMMA)


def row(v) -> str:
    return " ".join(f"{float(x):+.2f}" for x in v)


print(f"{'rollout':<8} {'SID':<10} m[i,k]  {'SAPO A[i,k]':<17}  {'reward_to_go A[i,k]':<19}  exact_bonus r[i,k]")
for i in range(G):
    marks = "".join("✓" if v else "✗" for v in m[i].tolist())
    print(f"{i:<8} {str(preds[i]):<10} {marks:<7} {row(sapo[i]):<17}  {row(mine[i]):<19}  {row(bonus(m, G)[i])}")
print("(reward_to_go with the file's GAMMA = 0.5)")

checks = {
    "gamma=0 equals SAPO (step_advantages)": (rtg(reward_position(m), G, "group", gamma=0.0), sapo),
    "gamma=1, step 0 equals GRPO on the number of matches": (rtg(reward_position(m), G, "group", gamma=1.0)[:, 0],
                                                              sequence_advantages(m.sum(dim=1), G)),
    "last step equals SAPO (gamma=0.5)": (mine[:, -1], sapo[:, -1]),
    "scalar reward (B,) equals GRPO (sequence_advantages)": (rtg(reward_exact(m), G, "group"),
                                                             sequence_advantages(reward_exact(m), G)),
    "exact_bonus equals position + exact (B, K)": (bonus(m, G), reward_position(m) + reward_exact(m)[:, None]),
}
worst = 0.0
for name, (a, b) in checks.items():
    diff = float((a - b).abs().max())
    worst = max(worst, diff)
    print(f"  {name:<55} max |difference| {diff:.1e}  {'ok' if diff < 1e-5 else 'DIFFERENT'}")
print(f"rollout 1 {preds[1]}, steps 0 and 1 right: SAPO {row(sapo[1])}, reward_to_go {row(mine[1])}.\n"
      f"rollout 3 {preds[3]}, step 0 right only: SAPO {row(sapo[3])}, reward_to_go {row(mine[3])}.\n"
      f"A right first step is now worth more when the steps after it go right too, and less when they go wrong.")

# The picture: the same group, the built-in and the plug-in on ONE colour scale.
fig, axes = plt.subplots(1, 2, figsize=(9.5, 4), sharey=True)
vmax = float(max(sapo.abs().max(), mine.abs().max()))
for ax, (title, adv) in zip(axes, (("built-in SAPO: step advantages", sapo),
                                   ("plug-in reward_to_go (gamma = 0.5)", mine))):
    im = ax.imshow(adv.numpy(), cmap="coolwarm", vmin=-vmax, vmax=vmax, aspect="auto")
    for i in range(G):
        for k in range(K):
            ax.text(k, i, f"{'✓' if m[i, k] else '✗'}  {float(adv[i, k]):+.2f}", ha="center", va="center",
                    fontsize=9)
    ax.set_xticks(range(K), [f"step {k}" for k in range(K)])
    ax.set_title(title, fontsize=9)
axes[0].set_yticks(range(G), [str(p) for p in preds])
axes[0].set_ylabel(f"rollout SID (target {target})")
fig.colorbar(im, ax=axes, shrink=0.8, label="advantage (one scale for both)")
fig.savefig(C.OUT / "08_advantages.png", dpi=110, bbox_inches="tight")
plt.close(fig)
C.saved(C.OUT / "08_advantages.png")

# %% 4. A few RL steps
# ----------------------------------------------------------------------------------------------
# 4. A few RL steps: the built-in and the plug-ins, from the same SFT model
#
# An RLConfig takes your function where it takes a built-in name: `advantage=ADV`. All three runs
# start from the same SFT weights with the same seed, so they draw the same prompts and, at step 1,
# the very same rollouts: the first row differs only in what each makes of those rollouts (the
# reward, for the bonus run) and so in the update (`grad_norm`). `hit_rate` (exact match of the
# sampled SIDs) means the same in every run; `reward` does not (exact_bonus pays up to 2 per step).
# ----------------------------------------------------------------------------------------------
C.section("4. a few RL steps: built-in SAPO, SAPO + your advantage, SAPO + your reward")

stack = load_stack(cfg)
ds, table, tok, grammar = stack.dataset, stack.table, stack.tokenizer, stack.grammar
model = new_model(cfg, stack)
train = build_examples(ds, table, tok, ds.splits["train"], cfg.reasoning, verbose=False)
train_sft(model, train, cfg.sft, C.OUT / "runs" / "08_sft", pad_id=tok.pad_id, seed=cfg.seed, progress=False)

samples = ds.splits["train"]
prompts = [build_prompt(s.history, table, tok, cfg.reasoning) for s in samples]
n_valid = cfg.sft.eval_samples
quick = quick_hit_fn(grammar, ds, table, tok, ds.splits["valid"][:n_valid], k=10, reasoning=cfg.reasoning)
base = dataclasses.replace(cfg.rl, **ALGOS["sapo"])  # this tutorial's RL settings + the paper's algorithm
RUNS = {"sapo": base,
        "sapo+reward_to_go": dataclasses.replace(base, advantage=ADV),
        "sapo+exact_bonus": dataclasses.replace(base, reward=REW)}
records = {}
for name, rl_cfg in RUNS.items():
    run_dir = C.OUT / "runs" / f"08_{name}"
    shutil.rmtree(run_dir, ignore_errors=True)  # train_rl appends to metrics.jsonl: start clean
    train_rl(copy.deepcopy(model), None, grammar, tok, table, samples, prompts, rl_cfg, run_dir, eval_fn=quick,
             seed=cfg.seed, progress=False)
    records[name] = read_metrics(run_dir / "metrics.jsonl")
    saved_cfg = json.loads((run_dir / "rl_config.json").read_text())
    print(f"{name:<18} rl_config.json: reward={saved_cfg['reward']!r}, advantage={saved_cfg['advantage']!r}")

steps_of = {name: [r for r in recs if "reward" in r] for name, recs in records.items()}
print((f"\n{'':>4} |" + "|".join(f"{name:^30}" for name in RUNS)).rstrip())
print((f"{'step':>4} |" + "|".join(["   reward hit_rate grad_norm  "] * len(RUNS))).rstrip())
for rows in zip(*steps_of.values()):
    print((f"{rows[0]['step']:>4} |" + "|".join(f"{r['reward']:>9.3f} {r['hit_rate']:>8.3f} {r['grad_norm']:>9.3f}  "
                                               for r in rows)).rstrip())
hits = {name: [r["eval/valid_hit@10"] for r in recs if "eval/valid_hit@10" in r] for name, recs in records.items()}
for name, h in hits.items():
    print(f"{name:<18} valid hit@10 {h[0]:.3f} -> {h[-1]:.3f} after {steps_of[name][-1]['step']} steps "
          f"({n_valid} validation samples)")

# The picture: the training rollouts' exact-match rate and the size of each update, step by step,
# and valid hit@10 before and after with its standard error (its axis starts at 0: a difference of
# one sample in 32 is 0.03). Lines that coincide are runs that did the same thing.
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
styles = dict(zip(RUNS, ({"ls": "-", "marker": "o"}, {"ls": "--", "marker": "s"}, {"ls": ":", "marker": "^"})))
for name, steps in steps_of.items():
    x = [r["step"] for r in steps]
    axes[0].plot(x, [r["hit_rate"] for r in steps], ms=4, label=name, **styles[name])
    axes[1].plot(x, [r["grad_norm"] for r in steps], ms=4, label=name, **styles[name])
    h = hits[name]
    se_h = [math.sqrt(v * (1 - v) / n_valid) for v in (h[0], h[-1])]
    axes[2].errorbar([0, x[-1]], [h[0], h[-1]], yerr=se_h, capsize=4, ms=4, label=name, **styles[name])
for ax, title in zip(axes, ("hit_rate: exact match of the training rollouts", "grad_norm: the size of each update",
                            f"valid hit@10 +- standard error ({n_valid} samples)")):
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("RL step")
    ax.legend(fontsize=7)
axes[2].set_ylim(0, 1)
fig.tight_layout()
fig.savefig(C.OUT / "08_rl_curves.png", dpi=110)
plt.close(fig)
C.saved(C.OUT / "08_rl_curves.png")

# %% 5. The same from the command line
# ----------------------------------------------------------------------------------------------
# 5. The same from the command line
#
# `minisapo rl` starts from an SFT run and takes the same spec: a file path (absolute, or relative
# to where the command runs), or `module:function` for a module Python can import (on PYTHONPATH, or
# in an installed package).
# `minisapo compare` runs SFT, RL and the test evaluation for every seed and reports mean +- std:
# what a claim needs. Its `--algos` takes preset names, and a `--rl.advantage=` given with it
# applies to every algorithm compared (it says so), so compare the built-in and your idea as two
# comparisons with the same seeds, each with its own --name. The second table still calls its row
# `sapo`, the preset's name: the runs' config.json files say which advantage was used.
# ----------------------------------------------------------------------------------------------
C.section("5. the same from the command line")

print(f"""  minisapo sft --preset=tiny --name=tiny_sft
  minisapo rl --from=runs/tiny_sft --rl.advantage={ADV} --name=tiny_rtg
  minisapo rl --from=runs/tiny_sft --rl.reward={REW} --name=tiny_bonus
  PYTHONPATH={C.OUT} minisapo rl --from=runs/tiny_sft --rl.advantage=my_algos:reward_to_go --name=tiny_rtg2

  minisapo compare --preset=tiny --seeds=3 --algos=sapo --name=tiny_sapo
  minisapo compare --preset=tiny --seeds=3 --algos=sapo --rl.advantage={ADV} --name=tiny_rtg
(the run's config.json and rl_config.json record the spec; the file is read again when the run resumes)""")

# %% 6. What a mistake looks like
# ----------------------------------------------------------------------------------------------
# 6. What a mistake looks like
#
# Two classic slips, in a second file. `per_group` returns ONE advantage per group instead of one
# per rollout: the plug-in is tried on a small example when it is loaded, so the run is refused
# before anything is trained, with one line that names the option. `no_eps` divides by the
# group's std with no epsilon and no zero-variance case: it loads (the example's groups all vary),
# and the first group whose rollouts all get the same reward gives 0/0. Every call is checked, so
# that is one line too, not a NaN deep inside the loss.
# ----------------------------------------------------------------------------------------------
C.section("6. what a mistake looks like")

mistakes = C.OUT / "my_mistakes.py"
mistakes.write_text('''import torch


def per_group(rewards, group_size, scale_rewards="group"):
    return rewards.float().reshape(-1, group_size).mean(dim=1)  # (B / G,): one number per GROUP


def no_eps(rewards, group_size, scale_rewards="group"):
    g = rewards.float().reshape(-1, group_size, *rewards.shape[1:])
    return ((g - g.mean(dim=1, keepdim=True)) / g.std(dim=1, keepdim=True)).reshape(rewards.shape)
''')
errors = {}
try:
    rl_config("sapo", advantage=f"{mistakes}:per_group")
except ValueError as e:
    errors["shape"] = str(e)
    print(f"rl_config(advantage='...:per_group')  -> ValueError: {e}")
# the command line, as a subprocess (`python -m minisapo.cli` is the `minisapo` command)
pythonpath = os.pathsep.join(p for p in (str(C.REPO), os.environ.get("PYTHONPATH")) if p)
cli = subprocess.run([sys.executable, "-m", "minisapo.cli", "run", "--preset=tiny", f"--data_dir={C.DATA}",
                      f"--runs_dir={C.OUT / 'runs'}", f"--rl.advantage={mistakes}:per_group"],
                     capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": pythonpath})
print(f"minisapo run ... --rl.advantage=...:per_group  -> exit status {cli.returncode}, stderr:\n"
      f"  {cli.stderr.strip()}")
all_miss = step_matches([(8, 2, 0)] * G, [target] * G, K)  # every rollout wrong at every step: zero variance
try:
    no_eps = advantage_function(f"{mistakes}:no_eps")
    print("no_eps loaded (every group of the example it is tried on has some variance)")
    no_eps(reward_position(all_miss), G, "group")
except ValueError as e:
    errors["nan"] = str(e)
    print(f"no_eps on a group where every rollout misses -> ValueError: {e}")

# %% Takeaway
first = {name: steps[0] for name, steps in steps_of.items()}
same_rollouts = len({(r["hit_rate"], r["completions/mean_length"]) for r in first.values()}) == 1


def first_difference(name: str) -> str:
    """When a plug-in run's update first differs from the built-in's, and why not earlier."""
    for a, b in zip(steps_of["sapo"], steps_of[name]):
        if not math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=1e-6):
            why = (" (until then no rollout was an exact hit, hit_rate 0, so the bonus never paid)"
                   if all(r["hit_rate"] == 0 for r in steps_of["sapo"][:a["step"] - 1]) and a["step"] > 1 else "")
            return f"{name} from step {a['step']}{why}"
    return f"{name} never in these {len(steps_of[name])} steps"


grad = ("grad norm at step 1: " + ", ".join(f"{name} {r['grad_norm']:.3f}" for name, r in first.items())
        + "; the update first differs from SAPO's: " + "; ".join(first_difference(n) for n in RUNS if n != "sapo"))
se_valid = max(math.sqrt(h[-1] * (1 - h[-1]) / n_valid) for h in hits.values())
spread = max(h[-1] for h in hits.values()) - min(h[-1] for h in hits.values())
verdict = (f"the spread {spread:.3f} is under 2 standard errors ({2 * math.sqrt(2) * se_valid:.2f})" if
           spread < 2 * math.sqrt(2) * se_valid else f"the spread {spread:.3f} exceeds 2 standard errors "
           f"({2 * math.sqrt(2) * se_valid:.2f}) on this one seed")
C.takeaway(
    "A new reward or advantage is one function in a file of yours with the built-ins' signature, named by "
    "--rl.reward= / --rl.advantage= as path.py:function (or module:function); nothing in minisapo is edited.",
    "Check it first where it must equal a baseline: "
    + (f"all {len(checks)} hand checks agree (largest difference {worst:.1e}): " if worst < 1e-5 else
       f"the hand checks DISAGREE (largest difference {worst:.1e}): ")
    + "gamma = 0 is SAPO exactly, gamma = 1 gives step 0 GRPO's advantage of the number of matches.",
    f"It ran inside the real loop: at step 1 the three runs drew {'the same' if same_rollouts else 'DIFFERENT'} "
    f"rollouts (hit_rate {first['sapo']['hit_rate']:.3f}); {grad}.",
    f"{steps_of['sapo'][-1]['step']} steps on one seed rank nothing: valid hit@10 ended at "
    + ", ".join(f"{name} {h[-1]:.3f}" for name, h in hits.items())
    + f"; {verdict}. A claim needs `minisapo compare` over seeds, next to its SFT start.",
    f"A mistake is one line that names the option: a wrong shape is refused when the plug-in loads "
    f"({'shown' if 'shape' in errors else 'NOT shown'}), a NaN at the first call that produces one "
    f"({'shown' if 'nan' in errors else 'NOT shown'}).")

C.done()
