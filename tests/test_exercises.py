"""The exercise checker and the teacher's grader.

Students' side (tutorials/exercise_checks.py, always): the stubs score 0 on the visible examples, whose written
answers agree with the library; the rules are checked while an answer runs; a file that imports the checker gets
no points. Teachers' side (tutorials/instructor/, skipped where that folder is absent, as in the students'
copy): the key gets full marks on the hidden checks, every planted bug of planted_bugs.py is caught by the right
exercise, a folder of submissions is graded into a table and a CSV, and the students' copy holds no answer and
passes its own tests.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
INSTRUCTOR = TUTORIALS / "instructor"
STUBS = TUTORIALS / "solutions.py"
HAS_KEY = (INSTRUCTOR / "solutions_key.py").exists()
teacher = pytest.mark.skipif(not HAS_KEY, reason="tutorials/instructor/ is not in this copy")
FULL = "score: 9/9 exercises, 100/100 points"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


ec = load("exercise_checks", TUTORIALS / "exercise_checks.py")


def check(path: Path, numbers=None, hidden=None, seed: int = 0):
    """Grade the answers in `path` in this process -> (full marks?, {exercise: result}, printed text)."""
    baseline = ec.fingerprint()
    sol = ec.load_solutions(path, name=f"answers_{path.stem}_{abs(hash(str(path)))}")
    out = io.StringIO()
    ok, results = ec.run(sol, path, numbers, hidden, seed, out, baseline=baseline)
    return ok, {r.exercise.number: r for r in results}, out.getvalue()


# ---------------------------------------------------------------------------------------------
# the students' side


def test_stubs_score_zero(capsys, monkeypatch):
    monkeypatch.delenv("MINISAPO_SOLUTIONS", raising=False)
    assert ec.main([]) == 1
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith("score: 0/9 exercises, 0/100 points (visible examples")
    lines = [line for line in out.splitlines() if line.startswith("exercise ")]
    assert len(lines) == 11
    graded = [line for line in lines if "----" not in line]
    assert len(graded) == 9 and all(" TODO " in line for line in graded), out
    assert "FAIL" not in out and "think answers: 0/12" in out


def test_only_selected_exercises_and_unknown_number(capsys, monkeypatch):
    monkeypatch.delenv("MINISAPO_SOLUTIONS", raising=False)
    assert ec.main(["1", "8"]) == 1
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("score: 0/2 exercises, 0/15 points")
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


def test_a_file_that_imports_the_checker_gets_no_points(tmp_path, capsys, monkeypatch):
    for i, line in enumerate(("import exercise_checks", "from exercise_checks import compare",
                              "import importlib\nec = importlib.import_module('exercise' + '_checks')",
                              f"text = open({str(TUTORIALS / 'exercise_checks.py')!r}).read()")):
        path = tmp_path / f"sneaky{i}.py"
        path.write_text(STUBS.read_text() + "\n" + line + "\n")
        monkeypatch.setenv("MINISAPO_SOLUTIONS", str(path))
        assert ec.main([]) == 1
        out = capsys.readouterr().out
        assert "may not import, open or run the checker" in out, out
        assert out.rstrip().splitlines()[-1] == "score: 0/9 exercises, 0/100 points"


def test_the_rules_are_checked_while_the_answer_runs(tmp_path):
    """Shortcuts the source does not show: a name built at run time, a library module imported by a computed
    name, a vectorised index, an int64 result. Each is a FAIL of its exercise that names the line."""
    answers = {
        1: ("def prefix_reward(m):\n    f = getattr(m, 'cum' + 'prod')\n    for _ in range(1):\n        pass\n"
            "    return f(1)\n", "getattr"),
        2: ("def token_advantages_loops(advantages, steps, mask, step_token_mean):\n    out = torch.zeros(steps.shape)\n"
            "    for i in range(len(steps)):\n        out[i] = advantages[i][steps[i].clamp(min=0)] * mask[i]\n"
            "    return out\n", "indexing with a tensor"),
        8: ("def hit_at_k(ranked, target, k):\n    import importlib\n"
            "    return importlib.import_module('mini' + 'sapo.evaluate').hit_at_k(ranked, target, k)\n",
            "minisapo.evaluate"),
        9: ("def kmeans_step(x, centroids):\n    codes = ((x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)\n"
            "    return codes.int(), centroids, x\n", "dtype torch.int32"),
    }
    for number, (body, words) in answers.items():
        path = tmp_path / f"answer{number}.py"
        path.write_text("import torch\n\n\n" + body)
        ok, results, text = check(path, [number])
        r = results[number]
        assert r.status == "FAIL" and words in r.parts[0].message, text
        if number != 9:
            assert re.search(r"line \d+: `", r.parts[0].message), r.parts[0].message


def test_visible_examples_agree_with_the_library():
    """The answers written into the checker are the library's (where the library has the function)."""
    from minisapo import evaluate, rl
    from minisapo.reasoning import build_response, step_index
    from minisapo.sid.rqkmeans import assign

    for m, want in ((torch.tensor([[1.0, 1.0, 0.0, 1.0]]), [[1.0, 1.0, 0.0, 0.0]]),):
        assert rl.reward_prefix(m).tolist() == want
    for steps, mask, adv, stm, want in ec.TOKEN_CREDIT_EXAMPLES:
        got = rl.token_advantages(torch.tensor(adv), torch.tensor(steps), torch.tensor(mask).bool(), stm)
        torch.testing.assert_close(got, torch.tensor(want), atol=1e-6, rtol=1e-6)
    table, tok = ec.make_world(ec.EX3_CODES, ec.EX3_SIZES)
    for item, blocks, variant, want in ec.EX3_EXAMPLES:
        resp = build_response(item, blocks, table, tok, "interleaved")
        lib = step_index(torch.tensor([resp]), tok, table.num_levels, has_prompt=False)[0].tolist()
        assert lib[:len(want)] == want[:len(lib)]
    for ranked, target, k, hit, ndcg in ec.NDCG_EXAMPLES:
        assert evaluate.hit_at_k(ranked, target, k) == hit and math.isclose(evaluate.ndcg_at_k(ranked, target, k), ndcg)
    for x, c, codes, _, _ in ec.KMEANS_EXAMPLES:
        assert assign(torch.tensor(x), torch.tensor(c))[0].tolist() == codes
    m = torch.tensor(ec.HAND_CASE["matches"])
    adv = rl.step_advantages(m, 2)
    torch.testing.assert_close(adv, torch.tensor(ec.HAND_CASE["advantages"]))
    tok_adv = rl.token_advantages(adv, torch.tensor(ec.HAND_CASE["steps"]), torch.tensor(ec.HAND_CASE["mask"]), True)
    torch.testing.assert_close(tok_adv, torch.tensor(ec.HAND_CASE["token_adv"]))
    logp, mask = torch.tensor(ec.HAND_CASE["logprobs"]), torch.tensor(ec.HAND_CASE["mask"])
    for old, want in ((logp, ec.HAND_CASE["loss"]), (torch.tensor(ec.HAND_CASE["old_logprobs_moved"]),
                                                      ec.HAND_CASE["loss_moved"])):
        loss, _ = rl.policy_loss(logp, old, tok_adv, mask, "grpo", 0.2, 0.2, 0.0)
        assert abs(float(loss) - want) < 1e-6


# ---------------------------------------------------------------------------------------------
# the teachers' side


@pytest.fixture(scope="module")
def grader():
    return load("grade", INSTRUCTOR / "grade.py")


@pytest.fixture(scope="module")
def hidden(grader):
    return grader.hidden_checks.HIDDEN


def planted(tmp_path: Path, bug) -> Path:
    """The key with one planted bug."""
    src = (INSTRUCTOR / "solutions_key.py").read_text()
    assert src.count(bug.old) == 1, f"{bug.name}: `old` occurs {src.count(bug.old)} times in the key"
    path = tmp_path / "planted.py"
    path.write_text(src.replace(bug.old, bug.new.replace("INSTRUCTOR", str(INSTRUCTOR))))
    return path


BUGS = load("planted_bugs", INSTRUCTOR / "planted_bugs.py") if HAS_KEY else None


def bug_named(name: str):
    return next(b for b in BUGS.BUGS if b.name == name)


@teacher
def test_key_full_marks_on_the_hidden_checks(hidden):
    for seed in range(2):
        ok, results, text = check(INSTRUCTOR / "solutions_key.py", hidden=hidden, seed=seed)
        assert ok and text.rstrip().splitlines()[-1] == FULL, text
        assert "think answers: 12/12" in text


@teacher
def test_the_stubs_get_nothing_from_the_hidden_checks(hidden):
    ok, results, text = check(STUBS, hidden=hidden, seed=0)
    assert text.rstrip().splitlines()[-1] == "score: 0/9 exercises, 0/100 points"


@teacher
def test_seed_replays_the_same_hidden_inputs(tmp_path, hidden):
    path = planted(tmp_path, bug_named("token credit: step mean over the response length"))
    a, b, c = (check(path, [2], hidden, seed)[2] for seed in (5, 5, 6))
    assert "FAIL" in a and a == b


@teacher
def test_there_are_at_least_40_planted_bugs_of_every_kind():
    names = " | ".join(b.name for b in BUGS.BUGS)
    assert len(BUGS.BUGS) >= 40
    kinds = ["population std", "log", "mask forgotten", "in place (a view)", "ties broken the other way",
             "empty cluster", "hidden reference (and an empty loop", "np.multiply.accumulate", "itertools.accumulate",
             "torch.triu", "fancy indexing", "importlib", "int64", "as floats", "returns an int", "imports the checker",
             "rebinds"]
    assert all(k in names for k in kinds), [k for k in kinds if k not in names]
    assert {b.exercise for b in BUGS.BUGS} == {e.number for e in ec.EXERCISES if e.parts}


@teacher
@pytest.mark.parametrize("bug", BUGS.BUGS if BUGS else [], ids=lambda b: b.name)
def test_planted_bug_is_caught(bug, tmp_path, hidden, monkeypatch):
    for space in (math, np, torch):  # an answer that rebinds a function: put it back afterwards
        for name, value in list(vars(space).items()):
            monkeypatch.setattr(space, name, value)
    path = planted(tmp_path, bug)
    if bug.load:
        with pytest.raises(ec.LoadError, match=re.escape(bug.words)):
            ec.load_solutions(path, name=f"planted_{abs(hash(bug.name))}")
        return
    ok, results, text = check(path, [bug.exercise], hidden, seed=11)
    r = results[bug.exercise]
    bad = [p for p in r.parts if p.status == "FAIL"]
    assert not ok and r.status == "FAIL" and bad, f"{bug.name}: not caught\n{text}"
    assert bug.part in bad[0].name, f"{bug.name}: failed in {bad[0].name}\n{text}"
    assert bug.words in bad[0].message, f"{bug.name}: {bad[0].message}"
    assert r.points < r.out_of


@teacher
def test_message_has_shaped_index_inputs_and_digits(tmp_path, hidden):
    path = planted(tmp_path, bug_named("range: missing epsilon"))
    msg = check(path, [4], hidden, seed=0)[1][4].parts[0].message
    m = re.search(r"first difference at \[(\d+)(, \d+)?\] \(row \d+(, column \d+)?\): got (\S+), expected (\S+) "
                  r"\(off by ([-+][\d.e-]+)\)", msg)
    assert m, msg
    got, want, off = float(m.group(4)), float(m.group(5)), float(m.group(6))
    assert 1e-6 < abs(off) < 1e-3 and got != want  # a 1e-4 relative error, visible
    assert "inputs:" in msg and "rewards = " in msg and "group_size = " in msg
    assert "got:" in msg and "expected:" in msg


@teacher
def test_in_place_change_expected_comes_from_the_original_input(tmp_path, hidden):
    path = planted(tmp_path, bug_named("reward-to-go: shifts its input in place, and the answer with it"))
    msg = check(path, [6], hidden, seed=0)[1][6].parts[0].message
    assert "changed its input `advantages`" in msg and "BEFORE your call" in msg, msg
    m = re.search(r"gamma=([\d.]+)\): first difference at \[(\d+), (\d+)\].*expected (\S+)", msg)
    adv = torch.tensor(eval(re.search(r"advantages = (\[\[.*?\]\])", msg, re.S).group(1)))  # noqa: S307
    gamma, i, j = float(m.group(1)), int(m.group(2)), int(m.group(3))
    want = sum(gamma ** (k - j) * float(adv[i, k]) for k in range(j, adv.size(1)))
    assert abs(float(m.group(4)) - want) < 1e-5


@teacher
def test_rule_message_names_the_line(tmp_path, hidden):
    msg = check(planted(tmp_path, bug_named("prefix reward with prod over the prefix")), [1], hidden)[1][1].parts[0].message
    assert "rule broken" in msg and "`.prod`" in msg and re.search(r"line \d+: `still_right = ", msg), msg


@teacher
def test_hidden_references_agree_with_the_library(grader):
    """The brute force of hidden_checks.py is independent code; it must agree with the library on well-formed
    input."""
    from minisapo import rl
    from minisapo.reasoning import build_response, step_index

    hc = grader.hidden_checks
    rng = np.random.default_rng(0)
    for _ in range(5):
        table, tok = ec.random_world(rng)
        K = table.num_levels
        for item in range(table.num_items):
            resp = build_response(item, ec.random_blocks(rng, K), table, tok, "interleaved")
            lib = step_index(torch.tensor([resp]), tok, K, has_prompt=False)[0].tolist()
            assert hc.ref_interleaved_steps(resp, tok.token_level, tok.eos_id, K) == lib
    for m, steps, mask, logp, old, eps in hc.loss_cases(rng):
        adv = rl.step_advantages(m, len(m), "group")
        torch.testing.assert_close(torch.tensor(hc.ref_step_advantages(m.double().tolist(), len(m))).float(), adv)
        tok_adv = rl.token_advantages(adv, steps, mask, step_token_mean=True)
        ref_tok = hc.ref_token_credit(adv.double().tolist(), steps.tolist(), mask.tolist(), True)
        torch.testing.assert_close(torch.tensor(ref_tok).float(), tok_adv, atol=1e-5, rtol=1e-5)
        loss, _ = rl.policy_loss(logp, old, tok_adv, mask, loss_type="grpo", epsilon=eps, epsilon_high=eps, beta=0.0)
        ref = hc.ref_loss(tok_adv.double().tolist(), logp.double().tolist(), old.double().tolist(), mask.tolist(), eps)
        assert abs(float(loss) - ref) < 1e-5


def half_right(tmp_path: Path) -> Path:
    """The key with exercises 2, 9 and 11 put back to their stubs, and a bug in exercise 8's ndcg."""
    key, stubs = (INSTRUCTOR / "solutions_key.py").read_text(), STUBS.read_text()
    src = key.replace(bug_named("ndcg: the natural log").old, bug_named("ndcg: the natural log").new)
    for name in ("token_advantages_loops", "kmeans_step", "sapo_group_loss"):
        start = src.index(f"def {name}(")
        end = src.index("\n\n\n#", start)
        stub_start = stubs.index(f"def {name}(")
        stub_end = stubs.index("\n\n\n", stub_start)
        src = src[:start] + stubs[stub_start:stub_end] + src[end:]
    path = tmp_path / "half_right.py"
    path.write_text(src)
    return path


@teacher
def test_grading_a_class_folder_prints_a_table_and_writes_a_csv(tmp_path, grader, capsys):
    folder = tmp_path / "submissions"
    folder.mkdir()
    (folder / "key.py").write_text((INSTRUCTOR / "solutions_key.py").read_text())
    (folder / "stubs.py").write_text(STUBS.read_text())
    half_right(folder)
    assert grader.main([str(folder), f"--out={tmp_path / 'grades'}", "--seed=7"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("student"))
    assert lines[head].split() == ["student", "1", "2", "3", "4", "6", "8", "9", "10", "11", "total", "think", "status"]
    rows = {line.split()[0]: line.split() for line in lines[head + 2:head + 5]}
    assert rows["key"][1:11] == ["5", "15", "10", "10", "10", "10", "15", "10", "15", "100"]
    assert rows["stubs"][1:11] == ["0"] * 9 + ["0"]
    assert rows["half_right"][1:11] == ["5", "0", "10", "10", "10", "3", "0", "10", "0", "48"]
    with open(tmp_path / "grades" / "scores.csv") as f:
        table = {r["student"]: r for r in csv.DictReader(f)}
    assert set(table) == {"key", "stubs", "half_right"}
    assert table["key"]["total"] == "100" and table["key"]["out_of"] == "100" and table["key"]["think_answers"] == "12"
    assert table["half_right"]["total"] == "48" and table["half_right"]["exercises_passed"] == "5"
    assert table["stubs"]["status"] == "graded" and table["stubs"]["seed"] == "7"
    report = (tmp_path / "grades" / "half_right.txt").read_text()
    assert "exercise  8  FAIL" in report and re.search(r"replay: python tutorials/instructor/grade.py \S*half_right.py "
                                                       r"--exercises 8 --seed=7", report), report


@teacher
def test_the_students_copy_has_no_answers_and_passes_its_tests(tmp_path):
    out = tmp_path / "students"
    proc = subprocess.run([sys.executable, str(INSTRUCTOR / "make_student_copy.py"), str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (out / "tutorials" / "instructor").exists() and (out / "tutorials" / "solutions.py").exists()
    copier = load("make_student_copy", INSTRUCTOR / "make_student_copy.py")
    assert copier.leaks(out) == []
    docs = [p for p in out.rglob("*.md") if "tutorials/instructor" in p.read_text()]
    assert not docs, f"teachers' notes left in {docs}"
    log = subprocess.run(["git", "log", "--oneline"], cwd=out, capture_output=True, text=True).stdout.splitlines()
    assert len(log) == 1  # a fresh history
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(out)}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_exercises.py"],
                           cwd=out, env=env, capture_output=True, text=True, timeout=600)
    # among them: the stubs score 0, and a file that imports the copy's checker gets no points
    assert tests.returncode == 0 and "6 passed" in tests.stdout and "failed" not in tests.stdout, tests.stdout[-3000:]


@teacher
@pytest.mark.slow
def test_the_students_copy_passes_its_whole_test_suite(tmp_path):
    out = tmp_path / "students"
    subprocess.run([sys.executable, str(INSTRUCTOR / "make_student_copy.py"), str(out)], check=True, timeout=300)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(out)}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=out, env=env,
                           capture_output=True, text=True, timeout=1800)
    assert tests.returncode == 0, tests.stdout[-3000:]
