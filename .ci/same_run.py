"""Do two run folders hold the same run? For a refactor that must not change behaviour.

    python .ci/same_run.py runs/before runs/after

Compares metrics.jsonl record by record with the timing fields left out, and every eval_test*.json
(metrics and each user's ranks) exactly. Prints what differs and exits 1, or prints the counts and exits 0.
Both runs must come from the same machine, torch and seed: other kernels give other digits.
"""

import json
import sys
from pathlib import Path

TIMING = {"step_time", "tokens_per_s"}  # what metrics.jsonl records that depends on the clock


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines if line.strip()]


def main(before: Path, after: Path) -> int:
    problems = []
    a, b = records(before), records(after)
    if len(a) != len(b):
        problems.append(f"metrics.jsonl: {len(a)} records before, {len(b)} after")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            keys = sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))
            problems.append(f"metrics.jsonl record {i + 1}: {', '.join(keys)} differ")
    evals = sorted(p.name for p in before.glob("eval_test*.json"))
    if evals != sorted(p.name for p in after.glob("eval_test*.json")):
        problems.append(f"eval files differ: {evals} vs {sorted(p.name for p in after.glob('eval_test*.json'))}")
    for name in evals:
        if (after / name).exists() and json.loads((before / name).read_text()) != json.loads((after / name).read_text()):
            problems.append(f"{name} differs")
    for p in problems:
        print(p)
    if not problems:
        print(f"same run: {len(a)} metrics.jsonl records (timing aside) and {len(evals)} eval_test*.json files equal")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
