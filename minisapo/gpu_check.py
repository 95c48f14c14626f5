"""The GPU check: `python -m minisapo.gpu_check [--budget=600] [--nproc=1]`, on a machine with a CUDA GPU.

In about 10 minutes (--budget seconds in all; each step gets what is left), from the repository root:

    1. tests     `python -m pytest -q` (tests that follow the config's device="auto" use the GPU; the tests'
                 own hand-built CPU models stay on the CPU: there is no per-test device switch)
    2. bench     `python -m minisapo bench --device=cuda`: sampling / RL step / SFT step / beam search speeds
                 (bench reports tokens/s and time ratios; it does not measure FLOP/s, so neither does this)
    3. run       `python -m minisapo run --preset=base --device=cuda` (with --nproc > 1: under
                 `torchrun --nproc_per_node=N`), its wall time, and its SFT tokens/s and test hit@10

then one summary. A step that runs past its share of the budget is stopped and reported as timed out.
On a machine without a CUDA GPU it says so and runs nothing (exit 0; `--strict`: exit 2).
README, "On a GPU", says what it has measured so far.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _step(name: str, cmd: list[str], deadline: float, env: dict | None = None) -> dict:
    """Run `cmd` until the deadline; -> {name, ok, seconds, tail (the last lines of its output)}."""
    left = deadline - time.time()
    if left < 10:
        return {"name": name, "ok": False, "seconds": 0.0, "tail": "skipped: no time left in the budget"}
    print(f"gpu_check: {name}: {' '.join(cmd)} (at most {left:.0f} s)", flush=True)
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=left, env={**os.environ, **(env or {})})
        out, ok = p.stdout + p.stderr, p.returncode == 0
    except subprocess.TimeoutExpired as e:
        out = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""))
        out, ok = out + f"\ntimed out after {left:.0f} s", False
    secs = time.time() - t0
    tail = "\n".join(out.strip().splitlines()[-25:])
    print(tail, flush=True)
    return {"name": name, "ok": ok, "seconds": secs, "tail": tail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minisapo.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=600.0, help="seconds for all three steps (default 600)")
    ap.add_argument("--nproc", type=int, default=1, help="GPUs for the run step (torchrun when > 1)")
    ap.add_argument("--strict", action="store_true", help="exit 2 (not 0) when there is no CUDA GPU")
    ap.add_argument("--skip_tests", action="store_true", help="only bench and run")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: skipped: no CUDA GPU on this machine (torch {torch.__version__}, "
              f"cuda build: {torch.version.cuda}); nothing was run")
        return 2 if args.strict else 0
    gpu = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    print(f"gpu_check: {gpu}; budget {args.budget:.0f} s", flush=True)
    t_start = time.time()
    deadline = t_start + args.budget
    work = Path(tempfile.mkdtemp(prefix="minisapo_gpu_check_"))
    py = sys.executable
    steps = []
    if not args.skip_tests:  # the tests get at most a third of the budget
        steps.append(_step("tests", [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"],
                           min(deadline, time.time() + args.budget / 3)))
    steps.append(_step("bench", [py, "-m", "minisapo", "bench", "--device=cuda"],
                       min(deadline, time.time() + args.budget / 6)))
    launcher = ([py, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}"] if args.nproc > 1 else [py])
    run = _step("run --preset=base", [*launcher, "-m", "minisapo", "run", "--preset=base", "--name=gpu_check",
                                      "--device=cuda", f"--runs_dir={work / 'runs'}", f"--data_dir={work / 'data'}"],
                deadline)
    steps.append(run)

    run_dir = work / "runs" / "gpu_check"
    facts = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        tps = [r["tokens_per_s"] for r in recs if r.get("stage") == "sft" and "tokens_per_s" in r]
        if tps:
            facts["sft tokens/s (median of the logged windows)"] = f"{sorted(tps)[len(tps) // 2]:,.0f}"
        rl_times = [r["step_time"] for r in recs if r.get("stage") == "rl" and "step_time" in r]
        if rl_times:
            facts["rl steps done / mean step time"] = f"{len(rl_times)} / {sum(rl_times) / len(rl_times):.2f} s"
    for name in ("eval_test_sft.json", "eval_test.json"):
        if (run_dir / name).exists():
            hit = json.loads((run_dir / name).read_text()).get("hit@10")
            if isinstance(hit, (int, float)):
                facts[f"{name} hit@10"] = f"{hit:.4f}"

    print("\n==================== gpu_check summary ====================")
    print(f"GPU: {gpu}")
    for s in steps:
        print(f"{s['name']:<20} {'ok' if s['ok'] else 'FAILED':<7} {s['seconds']:7.1f} s")
    for k, v in facts.items():
        print(f"{k}: {v}")
    print(f"run --preset=base wall time: {run['seconds']:.1f} s{'' if run['ok'] else ' (did not finish)'}")
    print(f"total {time.time() - t_start:.1f} s; files in {work}")
    return 0 if all(s["ok"] for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
