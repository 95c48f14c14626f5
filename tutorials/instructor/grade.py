"""The teacher's grader for tutorials/EXERCISES.md: the checks students run (visible examples, the rules) plus
the hidden ones (random inputs against brute-force references, hidden_checks.py).

    python tutorials/instructor/grade.py alice.py                    # one file: the full report
    python tutorials/instructor/grade.py alice.py --exercises 2 9    # only exercises 2 and 9
    python tutorials/instructor/grade.py submissions/                # a class: one .py file per student

For a class (a folder, or several files) every file is graded in its own process, on the same hidden inputs
(one seed, printed; `--seed=N` replays it), with a time limit; it prints a table of points per exercise and
writes, in --out (default: grades/), scores.csv and one report per student (<file name>.txt: what that
student's own run would print, with the hidden failures too). A file that imports, opens or runs the
checker or this folder, or that changes torch, numpy or the checker's functions, gets no points.
The exit status is 0 when every file has full marks.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INSTRUCTOR = Path(__file__).resolve().parent
sys.path.insert(0, str(INSTRUCTOR.parent))
sys.path.insert(0, str(INSTRUCTOR))

import exercise_checks as ec  # noqa: E402
import hidden_checks  # noqa: E402

for _name in ("hidden_checks", "grade", "solutions_key", "planted_bugs", "make_student_copy"):
    ec.PROTECTED_NAMES.add(_name)
ec.protect(INSTRUCTOR)

GRADED = [e.number for e in ec.EXERCISES if e.parts]


def grade_file(path: Path, seed: int, numbers: list[int] | None = None, out=None) -> dict:
    """Grade one file in this process -> {"status", "points" {exercise: points}, "out_of", "passed", "think"};
    the report goes to `out`."""
    out = out or sys.stdout
    numbers = numbers or GRADED
    path = Path(path).resolve()
    row = {"status": "graded", "points": {n: 0 for n in numbers},
           "out_of": {n: ec.BY_NUMBER[n].points for n in numbers}, "passed": 0, "think": 0}
    baseline = ec.fingerprint()
    try:
        sol = ec.load_solutions(path, name=f"submission_{abs(hash(str(path)))}")
    except ec.LoadError as e:
        print(f"could not load the answers:\n{e}", file=out)
        print(f"score: 0/{len(numbers)} exercises, 0/{sum(row['out_of'].values())} points", file=out)
        return {**row, "status": "could not load"}
    replay = f"python tutorials/instructor/grade.py {os.path.relpath(path)} --exercises {{n}} --seed={seed}"
    _, results = ec.run(sol, path, numbers, hidden_checks.HIDDEN, seed, out, replay, baseline)
    graded = [r for r in results if r.status != "EXPERIMENT"]
    row["points"] = {r.exercise.number: r.points for r in graded}
    row["passed"] = sum(r.status == "PASS" for r in graded)
    row["think"] = len(ec.think_answers(sol))
    return row


def grade_class(files: list[Path], seed: int, numbers: list[int] | None, out_dir: Path, timeout: int) -> list[dict]:
    """Each file in its own process (a crash or an endless loop costs only that file) -> one row per file."""
    numbers = numbers or GRADED
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for f in files:
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "row.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), str(f), f"--seed={seed}", f"--json={result}",
                   "--exercises", *map(str, numbers)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                      env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
                text = proc.stdout + (f"\n{proc.stderr}" if proc.returncode not in (0, 1) else "")
                row = json.loads(result.read_text()) if result.exists() else None
            except subprocess.TimeoutExpired:
                text, row = f"grading took more than {timeout} s: no points\n", None
            if row is None:
                row = {"status": "timed out" if "took more than" in text else "crashed",
                       "points": {str(n): 0 for n in numbers}, "passed": 0, "think": 0}
        (out_dir / f"{f.stem}.txt").write_text(text)
        rows.append({"student": f.stem, "file": f.name, **row,
                     "points": {int(n): p for n, p in row["points"].items()}})
    return rows


def table(rows: list[dict], numbers: list[int]) -> str:
    width = max([len(r["student"]) for r in rows] + [7])
    head = f"{'student':<{width}}" + "".join(f"{n:>4}" for n in numbers) + "   total  think  status"
    lines = [head, f"{'(out of)':<{width}}" + "".join(f"{ec.BY_NUMBER[n].points:>4}" for n in numbers)
             + f"  {sum(ec.BY_NUMBER[n].points for n in numbers):>6}  {len(ec.THINK_KEYS):>5}"]
    for r in rows:
        total = sum(r["points"].values())
        lines.append(f"{r['student']:<{width}}" + "".join(f"{r['points'].get(n, 0):>4}" for n in numbers)
                     + f"  {total:>6}  {r['think']:>5}  {r['status']}")
    return "\n".join(lines)


def write_csv(rows: list[dict], numbers: list[int], path: Path, seed: int) -> None:
    out_of = sum(ec.BY_NUMBER[n].points for n in numbers)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "file", *[f"ex{n}" for n in numbers], "total", "out_of", "exercises_passed",
                    "think_answers", "status", "seed"])
        for r in rows:
            w.writerow([r["student"], r["file"], *[r["points"].get(n, 0) for n in numbers], sum(r["points"].values()),
                        out_of, r["passed"], r["think"], r["status"], seed])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="answer files, or folders of them (one .py per student)")
    parser.add_argument("--exercises", nargs="*", type=int, default=None, help="exercise numbers (default: all)")
    parser.add_argument("--seed", type=int, default=None, help="replay the hidden inputs of an earlier run")
    parser.add_argument("--out", type=Path, default=Path("grades"), help="a class's scores.csv and reports go here")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per file (a class)")
    parser.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)  # one file, for grade_class
    args = parser.parse_args(argv)
    numbers = args.exercises or GRADED
    bad = [n for n in numbers if n not in GRADED]
    if bad:
        parser.error(f"no graded exercise {bad[0]}; they are {', '.join(map(str, GRADED))}")
    files = []
    for p in args.paths:
        if p.is_dir():
            files += sorted(f for f in p.glob("*.py") if not f.name.startswith("_"))
        elif p.is_file():
            files.append(p)
        else:
            parser.error(f"{p}: no such file or folder")
    if not files:
        parser.error("no .py files to grade")
    seed = secrets.randbelow(1_000_000) if args.seed is None else args.seed
    if len(files) == 1 and not args.paths[0].is_dir():
        print(f"answers: {files[0].resolve()}\nseed: {seed}  (replay these hidden inputs with --seed={seed})")
        t0 = time.time()
        row = grade_file(files[0], seed, numbers)
        if args.json is not None:
            args.json.write_text(json.dumps(row))
        else:
            print(f"(graded in {time.time() - t0:.1f} s)", file=sys.stderr)
        return 0 if sum(row["points"].values()) == sum(row["out_of"].values()) else 1
    print(f"{len(files)} files; seed: {seed} (the same hidden inputs for every file; replay with --seed={seed})")
    rows = grade_class(files, seed, numbers, args.out, args.timeout)
    print(table(rows, numbers))
    write_csv(rows, numbers, args.out / "scores.csv", seed)
    print(f"wrote {args.out / 'scores.csv'} and one report per file in {args.out}/")
    full = sum(ec.BY_NUMBER[n].points for n in numbers)
    return 0 if all(sum(r["points"].values()) == full for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
