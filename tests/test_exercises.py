"""The exercise checker (tutorials/exercise_checks.py) grades: the untouched stubs score 0, the instructor key
full marks, and every planted bug (a small variant of the key) is caught by the right exercise, with a
message that shows the inputs, a shaped index and enough digits."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
KEY = TUTORIALS / "instructor" / "solutions_key.py"
STUBS = TUTORIALS / "solutions.py"
FULL = "score: 9/9 exercises, 100/100 points"


def _load_checker():
    spec = importlib.util.spec_from_file_location("exercise_checks", TUTORIALS / "exercise_checks.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["exercise_checks"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


ec = _load_checker()


def grade(path: Path, seed: int, numbers=None, require_wiring=False):
    """In-process run of the checker on the answers in `path` -> (full marks?, results, printed text)."""
    sol = ec.load_solutions(path, name=f"answers_{path.stem}_{seed}")
    out = io.StringIO()
    ok, results = ec.run(sol, path, seed, numbers, require_wiring, out=out)
    return ok, {r.exercise.number: r for r in results}, out.getvalue()


def variant(tmp_path: Path, old: str, new: str, name: str = "variant") -> Path:
    """The instructor key with one planted bug (`old` must occur exactly once)."""
    src = KEY.read_text()
    assert src.count(old) == 1, f"{old!r} occurs {src.count(old)} times in the key"
    path = tmp_path / f"{name}.py"
    path.write_text(src.replace(old, new))
    return path


def run_script(args, solutions: Path | None, script: Path = TUTORIALS / "exercise_checks.py", cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "MINISAPO_SOLUTIONS"}
    if solutions is not None:
        env["MINISAPO_SOLUTIONS"] = str(solutions)
    return subprocess.run([sys.executable, str(script), *args], env=env, cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=300)


# ---------------------------------------------------------------------------------------------
# stubs and key


def test_stubs_score_zero(capsys, monkeypatch):
    monkeypatch.delenv("MINISAPO_SOLUTIONS", raising=False)
    assert ec.main([]) == 1
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "score: 0/9 exercises, 0/100 points"
    lines = [l for l in out.splitlines() if l.startswith("exercise ")]
    assert len(lines) == 11
    graded = [l for l in lines if "----" not in l]
    assert len(graded) == 9 and all(" TODO " in l for l in graded), out
    assert "FAIL" not in out and "think answers: 0/12" in out
    assert re.search(r"^seed: \d+", out, re.M)


def test_key_full_marks_from_the_command_line():
    t0 = time.time()
    proc = run_script([], KEY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.rstrip().splitlines()[-1] == FULL
    assert "think answers: 12/12" in out
    assert "FAIL" not in out and "TODO" not in out
    # the library is untouched: its wiring is reported, not graded
    assert out.count("SKIP") == 2 and "not graded without --require-wiring" in out
    # no dataset / SID build logs between the exercise lines
    body = out.splitlines()[2:]
    assert all(re.match(r"(exercise |      |think answers|score: )", l) for l in body), out
    assert time.time() - t0 < 60


def test_key_passes_on_many_seeds():
    for seed in range(6):
        ok, results, text = grade(KEY, seed)
        assert ok, text


def test_seed_replays_the_same_hidden_inputs(tmp_path):
    bug = variant(tmp_path, "out[i, t] = advantages[i, k] * weight", "out[i, t] = advantages[i, k] * weight * 1.001")
    a = grade(bug, 5, [2])[2]
    b = grade(bug, 5, [2])[2]
    c = grade(bug, 6, [2])[2]
    assert "FAIL" in a and a == b and a != c
    assert "replay: python tutorials/exercise_checks.py 2 --seed=5" in a


def test_only_selected_exercises_and_unknown_number(capsys, monkeypatch):
    monkeypatch.setenv("MINISAPO_SOLUTIONS", str(KEY))
    assert ec.main(["1", "8", "--seed=3"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "score: 2/2 exercises, 15/15 points"
    with pytest.raises(SystemExit):
        ec.main(["12"])


def test_a_broken_answers_file_scores_zero(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "broken.py"
    bad.write_text("def prefix_reward(m):\n    return m +\n")
    monkeypatch.setenv("MINISAPO_SOLUTIONS", str(bad))
    assert ec.main([]) == 1
    out = capsys.readouterr().out
    assert "could not load your answers" in out and "SyntaxError" in out
    assert out.rstrip().splitlines()[-1] == "score: 0/9 exercises, 0/100 points"


# ---------------------------------------------------------------------------------------------
# planted bugs: each a one-line variant of the key; the right exercise (and part) FAILs on every seed

BUGS = [
    # (id, exercise, failing part, old, new, words the message must contain)
    ("prefix reward forgets the earlier steps", 1, "prefix_reward",
     "still_right = still_right * float(m[i, k])", "still_right = float(m[i, k])", "first difference at ["),
    ("prefix reward changes m in place", 1, "prefix_reward",
     "    out = torch.zeros_like(m, dtype=torch.float32)\n    for i in range(m.size(0)):",
     "    out = m\n    for i in range(m.size(0)):", "changed its input `m`"),
    ("prefix reward with cumprod (loop rule)", 1, "prefix_reward",
     "    out = torch.zeros_like(m, dtype=torch.float32)\n    for i in range(m.size(0)):",
     "    return m.cumprod(dim=1)\n    out = torch.zeros_like(m, dtype=torch.float32)\n    for i in range(m.size(0)):",
     "`cumprod`"),
    ("token credit: step mean over the response length", 2, "token_advantages_loops",
     "weight = n_i / (k_i * count[k]) if step_token_mean else 1.0",
     "weight = n_i / (k_i * n_i) if step_token_mean else 1.0", "(row "),
    ("token credit: gather (loop rule)", 2, "token_advantages_loops",
     "    B, T = steps.shape\n    out = torch.zeros(B, T)\n",
     "    B, T = steps.shape\n    out = torch.zeros(B, T)\n    _ = advantages.reshape(B, -1).gather(1, steps.clamp(min=0) * 0)\n",
     "`gather`"),
    ("token credit: masked tokens still get credit", 2, "token_advantages_loops",
     "            if mask[i, t] and steps[i, t] >= 0:\n                count",
     "            if steps[i, t] >= 0:\n                count", "first difference at ["),
    ("interleaved: off-by-one segmentation", 3, "interleaved_step_index",
     "        out.append(written)  # the dedup token comes after all num_steps semantic tokens: step num_steps\n"
     "        if 0 <= tokenizer.token_level[token] < num_steps:  # a semantic SID token (not the dedup one)\n"
     "            written += 1",
     "        if 0 <= tokenizer.token_level[token] < num_steps:\n            written += 1\n"
     "        out.append(written)", "first difference at ["),
    ("interleaved: the dedup token folded into the last step", 3, "interleaved_step_index",
     "out.append(written)  # the dedup", "out.append(min(written, num_steps - 1))  # the dedup", "expected"),
    ("interleaved: calls reasoning.step_index", 3, "interleaved_step_index",
     "    out, written, ended = [], 0, False\n    for token in response:",
     "    from minisapo.reasoning import step_index\n    out, written, ended = [], 0, False\n"
     "    for token in response:", "import of minisapo"),
    ("range: missing epsilon", 4, "range_advantages",
     "(centred / (hi - lo + 1e-4))", "(centred / (hi - lo))", "off by"),
    ("range: sign error in the advantages", 4, "range_advantages",
     "centred = col - col.mean()", "centred = col.mean() - col", "first difference at ["),
    ("by hand: population std", 4, "EX4_ONE_HIT_OF_8",
     '"group": {"hit": 0.875 / (math.sqrt(0.125) + 1e-4)', '"group": {"hit": 0.875 / (math.sqrt(0.109375) + 1e-4)',
     "sample std"),
    ("reward-to-go: exponent off by one", 6, "reward_to_go",
     "out[:, j] = advantages[:, j] + gamma * out[:, j + 1]",
     "out[:, j] = advantages[:, j] + gamma * gamma * out[:, j + 1]", "first difference at ["),
    ("reward-to-go: in place on its input", 6, "reward_to_go",
     "    out = advantages.clone()\n    for j in range(advantages.size(1) - 2",
     "    out = advantages\n    for j in range(advantages.size(1) - 2", "changed its input `advantages`"),
    ("ndcg: log2(rank) discount", 8, "ndcg_at_k",
     "return 1.0 / math.log2(rank + 1)", "return 1.0 / math.log2(rank + 1e-9)", "expected"),
    ("ndcg: 0-based rank in the discount", 8, "ndcg_at_k",
     "for rank, item in enumerate(ranked[:k], start=1):", "for rank, item in enumerate(ranked[:k], start=2):",
     "expected"),
    ("hit: top k + 1", 8, "hit_at_k",
     "return 1.0 if target in ranked[:k] else 0.0", "return 1.0 if target in ranked[:k + 1] else 0.0", "expected 0"),
    ("ndcg: calls minisapo.evaluate", 8, "ndcg_at_k",
     "    for rank, item in enumerate(ranked[:k], start=1):",
     "    from minisapo import evaluate\n    return evaluate.ndcg_at_k(ranked, target, k)\n"
     "    for rank, item in enumerate(ranked[:k], start=1):", "minisapo"),
    ("k-means: empty cluster moves to 0", 9, "centroid update",
     "    new_centroids = centroids.clone()\n", "    new_centroids = torch.zeros_like(centroids)\n", "(centroid "),
    ("k-means: centroid update in place", 9, "centroid update",
     "    new_centroids = centroids.clone()\n", "    new_centroids = centroids\n", "changed its input `centroids`"),
    ("k-means: nearest by absolute, not squared, distance sum", 9, "assignment",
     "d2 = ((x[n] - centroids) ** 2).sum(dim=1)", "d2 = (x[n] - centroids).abs().sum(dim=1)", "(row "),
    ("trie: an impossible prefix returns []", 10, "impossible",
     '            raise ValueError(f"impossible SID prefix {list(prefix)}")', "            return []",
     "must raise ValueError"),
    ("trie: keyed on the last token only", 10, "valid prefixes",
     "    node = trie\n    for token in prefix:", "    node = trie\n    for token in prefix[-1:]:", "valid prefix"),
    ("step loss: population std", 11, "step advantages", "std = col.std()", "std = col.std(unbiased=False)",
     "(rollout "),
    ("step loss: missing epsilon", 11, "step advantages", "((col - col.mean()) / (std + 1e-4))",
     "((col - col.mean()) / std)", "off by"),
    ("step loss: per-step mean over the wrong length", 11, "per-token credit",
     "    token_adv = token_advantages_loops(advantages, steps, mask, True)",
     "    token_adv = token_advantages_loops(advantages, steps, mask, False)", "(rollout "),
    ("step loss: sign error", 11, "loss value",
     "per_token = -torch.minimum(ratio * token_adv, clipped * token_adv)",
     "per_token = torch.minimum(ratio * token_adv, clipped * token_adv)", "loss"),
    ("step loss: max instead of the pessimistic min", 11, "loss value",
     "per_token = -torch.minimum(ratio * token_adv, clipped * token_adv)",
     "per_token = -torch.maximum(ratio * token_adv, clipped * token_adv)", "loss"),
    ("step loss: one token mean over the whole group", 11, "loss value",
     "loss = ((per_token * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)).mean()",
     "loss = (per_token * m).sum() / m.sum()", "loss"),
]


USES = {2: {11}}  # the key's exercise 11 reuses its exercise-2 function, so a bug there shows in both


@pytest.mark.parametrize("bug", BUGS, ids=[b[0] for b in BUGS])
def test_planted_bug_is_caught(bug, tmp_path):
    name, number, part, old, new, words = bug
    path = variant(tmp_path, old, new)
    ok, results, text = grade(path, seed=11)  # every exercise: only the right one fails
    assert not ok and FULL not in text, text
    failed = {n for n, r in results.items() if r.status == "FAIL"}
    assert number in failed and failed <= {number} | USES.get(number, set()), f"{name}: failed {failed}\n{text}"
    bad_parts = [p for p in results[number].parts if p.status == "FAIL"]
    assert bad_parts and part in bad_parts[0].name, text
    assert words in bad_parts[0].message, bad_parts[0].message
    assert results[number].points < results[number].out_of
    for seed in (12,):  # and on other hidden inputs too
        ok, results, text = grade(path, seed, [number])
        assert not ok and results[number].status == "FAIL", f"{name} not caught with seed {seed}\n{text}"


# ---------------------------------------------------------------------------------------------
# what a failure message shows


def test_message_has_shaped_index_inputs_and_digits(tmp_path):
    path = variant(tmp_path, "(centred / (hi - lo + 1e-4))", "(centred / (hi - lo))")
    msg = grade(path, 0, [4])[1][4].parts[0].message
    m = re.search(r"first difference at \[(\d+), (\d+)\] \(row \d+, column \d+\): got (\S+), expected (\S+) "
                  r"\(off by ([-+][\d.e-]+)\)", msg)
    assert m, msg
    got, want, off = float(m.group(3)), float(m.group(4)), float(m.group(5))
    assert 1e-6 < abs(off) < 1e-3 and got != want  # a 1e-4 relative error, visible
    assert "inputs:" in msg and "rewards = " in msg and "group_size = " in msg
    assert "got:" in msg and "expected:" in msg


def test_in_place_mutation_expected_comes_from_the_original(tmp_path):
    # mutates its input AND returns a wrong answer: the expected values must come from the original input
    path = variant(tmp_path, "    out = advantages.clone()\n    for j in range(advantages.size(1) - 2",
                   "    out = advantages\n    advantages[:, 0] += 1.0\n    for j in range(advantages.size(1) - 2")
    ok, results, text = grade(path, 0, [6])
    msg = results[6].parts[0].message
    assert "changed its input `advantages`" in msg and "BEFORE your call" in msg, msg
    sol = ec.load_solutions(KEY, name="key_for_mutation")
    for seed in range(3):  # the 'expected' printed is the key's answer on the untouched input
        m = re.search(r"reward_to_go\(advantages, gamma=([\d.]+)\): first difference at \[(\d+), (\d+)\].*"
                      r"expected (\S+)", msg)
        if m:
            break
    assert m, msg
    inp = re.search(r"advantages = (\[\[.*?\]\])", msg, re.S).group(1)
    adv = torch.tensor(eval(inp))  # noqa: S307  (the checker printed it)
    want = sol.reward_to_go(adv, float(m.group(1)))[int(m.group(2)), int(m.group(3))]
    assert abs(float(m.group(4)) - float(want)) < 1e-5


def test_rule_message_names_the_line(tmp_path):
    path = variant(tmp_path, "still_right = still_right * float(m[i, k])",
                   "still_right = float(m[i, :k + 1].cumprod(0)[-1])")
    msg = grade(path, 0, [1])[1][1].parts[0].message
    assert "rule broken" in msg and "`cumprod`" in msg and re.search(r"line \d+: `still_right = ", msg), msg


def test_rule_follows_helpers_and_aliases(tmp_path):
    src = KEY.read_text()
    helper = src.replace("def prefix_reward(m: torch.Tensor) -> torch.Tensor:\n",
                         "def _helper(m):\n    return torch.cumprod(m, 1)\n\n\n"
                         "def prefix_reward(m: torch.Tensor) -> torch.Tensor:\n    return _helper(m)\n", 1)
    (tmp_path / "helper.py").write_text(helper)
    msg = grade(tmp_path / "helper.py", 0, [1])[1][1].parts[0].message
    assert "`cumprod`" in msg, msg
    alias = src.replace("import torch\n", "import torch\nfrom minisapo.rl import token_advantages as spread\n", 1)
    alias = alias.replace("    B, T = steps.shape\n    out = torch.zeros(B, T)\n",
                          "    return spread(advantages, steps, mask, step_token_mean)\n"
                          "    B, T = steps.shape\n    out = torch.zeros(B, T)\n", 1)
    (tmp_path / "alias.py").write_text(alias)
    msg = grade(tmp_path / "alias.py", 0, [2])[1][2].parts[0].message
    assert "minisapo.rl.token_advantages" in msg, msg
    noloop = src.replace("    out = torch.zeros_like(m, dtype=torch.float32)\n    for i in range(m.size(0)):",
                         "    return torch.stack([m[:, :k + 1].prod(1) for k in range(m.size(1))], 1)\n"
                         "    out = torch.zeros_like(m, dtype=torch.float32)\n    for i in range(m.size(0)):", 1)
    (tmp_path / "noloop.py").write_text(noloop)  # a comprehension is a loop: allowed
    assert grade(tmp_path / "noloop.py", 0, [1])[0]
    hidden = src.replace("    out = torch.zeros_like(m, dtype=torch.float32)\n    for i in range(m.size(0)):",
                         "    try:\n        return getattr(torch, 'cum' + 'prod')(m, 1)\n    except Exception:\n"
                         "        pass\n    out = torch.zeros_like(m, dtype=torch.float32)\n    for i in range(m.size(0)):", 1)
    (tmp_path / "hidden.py").write_text(hidden)  # the source hides it; running it does not
    msg = grade(tmp_path / "hidden.py", 0, [1])[1][1].parts[0].message
    assert "`cumprod` was called while your answer ran" in msg, msg


def test_checker_references_agree_with_the_library():
    """The checker's brute force is independent code; it must agree with the library on well-formed input."""
    import numpy as np

    from minisapo import rl
    from minisapo.reasoning import build_response, step_index

    rng = np.random.default_rng(0)
    for _ in range(5):
        table, tok = ec.random_world(rng)
        K = table.num_levels
        for item in range(table.num_items):
            resp = build_response(item, ec.random_blocks(rng, K), table, tok, "interleaved")
            lib = step_index(torch.tensor([resp]), tok, K, has_prompt=False)[0].tolist()
            assert ec.ref_interleaved_steps(resp, tok.token_level, tok.eos_id, K) == lib
    for case in ec.loss_cases(rng):
        m, steps, mask, logp, old, eps = case
        adv = rl.step_advantages(m, len(m), "group")
        torch.testing.assert_close(torch.tensor(ec.ref_step_advantages(m.double().tolist(), len(m))).float(), adv)
        tok_adv = rl.token_advantages(adv, steps, mask, step_token_mean=True)
        ref_tok = ec.ref_token_credit(adv.double().tolist(), steps.tolist(), mask.tolist(), True)
        torch.testing.assert_close(torch.tensor(ref_tok).float(), tok_adv, atol=1e-5, rtol=1e-5)
        loss, _ = rl.policy_loss(logp, old, tok_adv, mask, loss_type="grpo", epsilon=eps, epsilon_high=eps,
                                 beta=0.0)
        ref = ec.ref_loss(tok_adv.double().tolist(), logp.double().tolist(), old.double().tolist(), mask.tolist(), eps)
        assert abs(float(loss) - ref) < 1e-5


# ---------------------------------------------------------------------------------------------
# library wiring of exercises 4 and 6, on a copy of the library with the edits appended

WIRING = '''

# --- exercises 4 and 6, wired in (appended by tests/test_exercises.py) ---------------------------
import importlib.util as _ilu

_spec = _ilu.spec_from_file_location("_exercise_key", {key!r})
_key = _ilu.module_from_spec(_spec)
_spec.loader.exec_module(_key)

SCALE_REWARDS = SCALE_REWARDS + ("range",)
_plain_group_advantages = _group_advantages


def _group_advantages(r, G, scale_rewards):
    if scale_rewards == "range":
        return {range_call}
    return _plain_group_advantages(r, G, scale_rewards)


@dataclass
class _RLConfigWithGamma(RLConfig):  # its own name, so that inspect finds this source for the comment
    step_gamma: float = {default}  # step advantage: step k's advantage also credits steps j < k, times gamma^(k-j)


RLConfig = _RLConfigWithGamma


_plain_score_rollouts = score_rollouts


def score_rollouts(responses, mask, parsed, target_sids, tokenizer, cfg, num_steps, given=None, dedup=False):
    out = _plain_score_rollouts(responses, mask, parsed, target_sids, tokenizer, cfg, num_steps, given, dedup)
    if cfg.advantage == "step" and cfg.step_gamma > 0:
        out["advantages"] = _key.reward_to_go(out["advantages"], cfg.step_gamma)
        {credit}
    return out
'''
GOOD = {"range_call": "_key.range_advantages(r.float(), G)", "default": "0.0",
        "credit": 'out["token_adv"] = token_advantages(out["advantages"], out["steps"], mask.cpu(), cfg.step_token_mean)'}


def wired_copy(tmp_path: Path, name: str, **changes) -> Path:
    """A copy of the library with the wiring appended to its rl.py -> the folder to put on sys.path."""
    root = tmp_path / name
    shutil.copytree(REPO / "minisapo", root / "minisapo", ignore=shutil.ignore_patterns("__pycache__"))
    rl = root / "minisapo" / "rl.py"
    rl.write_text(rl.read_text() + WIRING.format(key=str(KEY), **{**GOOD, **changes}))
    return root


@contextlib.contextmanager
def library_from(root: Path):
    """Import minisapo from `root` while the block runs (torch stays loaded); the real one is put back after."""
    def purge():
        return {k: sys.modules.pop(k) for k in list(sys.modules) if k == "minisapo" or k.startswith("minisapo.")}

    saved = purge()
    sys.path.insert(0, str(root))
    try:
        import minisapo.rl

        assert Path(minisapo.rl.__file__).resolve().is_relative_to(root.resolve())
        yield
    finally:
        sys.path.remove(str(root))
        purge()
        sys.modules.update(saved)


def test_wiring_is_graded_when_present_or_required(tmp_path):
    cases = {  # name -> (changes, exercises, require_wiring, full marks?, what the output must say)
        "good": ({}, [4, 6], True, True, "score: 2/2 exercises, 20/20 points"),
        "good_not_required": ({}, [4, 6], False, True, "score: 2/2 exercises, 20/20 points"),
        "default_gamma": ({"default": "0.5"}, [6], False, False, "defaults to 0.5"),
        "no_credit": ({"credit": "pass"}, [6], False, False, "['token_adv']"),
        "range_no_eps": ({"range_call": "_plain_group_advantages(r, G, 'none') / "
                          "(r.view(-1, G, r.size(1)).amax(1, keepdim=True) - r.view(-1, G, r.size(1)).amin(1, "
                          "keepdim=True)).clamp(min=1e-12).repeat_interleave(G, 0).reshape(r.shape)"},
                         [4], False, False, "library wiring: rl.step_advantages"),
    }
    for name, (changes, numbers, required, full, words) in cases.items():
        with library_from(wired_copy(tmp_path, name, **changes)):
            ok, results, text = grade(KEY, 1, numbers, require_wiring=required)
        assert ok == full and words in text, f"{name}:\n{text}"
        if full:  # the wiring parts were graded, not skipped
            assert "SKIP" not in text and all(r.parts[-1].status == "PASS" for r in results.values()), text
        else:
            assert results[numbers[0]].parts[-1].status == "FAIL", text
    from minisapo import rl  # the real library is back

    assert "range" not in rl.SCALE_REWARDS or "step_gamma" in {f.name for f in dataclasses.fields(rl.RLConfig)}
    assert Path(rl.__file__).resolve().is_relative_to(REPO)


def test_wiring_required_but_missing_is_todo():
    ok, results, text = grade(KEY, 0, [4, 6], require_wiring=True)
    assert not ok
    for n, (fn_points, wiring_points) in {4: (4, 3), 6: (6, 4)}.items():
        parts = results[n].parts
        assert parts[0].out_of == fn_points and parts[-1].out_of == wiring_points and parts[-1].status == "TODO"
        assert results[n].out_of == 10 and results[n].points == 10 - wiring_points
    assert "score: 0/2 exercises, 13/20 points" in text
