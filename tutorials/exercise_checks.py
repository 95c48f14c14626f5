"""Grader for tutorials/EXERCISES.md.

    python tutorials/exercise_checks.py                  # every exercise, fresh hidden inputs
    python tutorials/exercise_checks.py 2 9              # only exercises 2 and 9
    python tutorials/exercise_checks.py 2 --seed=81234   # replay the hidden inputs of an earlier run
    python tutorials/exercise_checks.py --require-wiring # also grade the library edits of exercises 4 and 6

Answers are read from tutorials/solutions.py, or from the file named by $MINISAPO_SOLUTIONS, e.g. the
instructor key: `MINISAPO_SOLUTIONS=tutorials/instructor/solutions_key.py python tutorials/exercise_checks.py`.

What it prints: the seed of this run, one line per exercise (PASS / FAIL / TODO, points, difficulty,
expected time; exercises 5 and 7 are experiments and are not graded here), how many "Think" answers are
filled in (free text is read by a person, never graded here), and a last line

    score: 7/9 exercises, 70/100 points

The exit status is 0 only at full marks (of the exercises selected).

How it grades (so a right answer passes and a wrong one cannot):
* hidden inputs are random and new on every run (the seed is printed; `--seed=N` replays them), plus
  fixed edge cases that every run includes; your answer is compared with brute-force code written in
  this file (plain Python loops in float64), never only with the library;
* where an exercise says "write it yourself" (with loops, without `cumprod`, without the library's own
  function), the source of your function and of the helpers it calls is read with `ast`, and the banned
  calls also raise while your function runs;
* your function must not change its inputs in place: the expected values are computed from a copy taken
  before your function was called, and a changed input is reported as such;
* a failure shows the inputs, the first differing element with its index in the output's shape
  (e.g. `[2, 1]`), both values to 9 significant digits and the difference.

Library edits (exercises 4 and 6 ask you to wire your function into `minisapo/rl.py`): the points are for
the functions in solutions.py, so the instructor key reaches full marks without touching the library.
The wiring is checked whenever it is there (a wrong wiring FAILs the exercise); when it is not there it is
reported and not graded, unless `--require-wiring` is given: then it is worth 3 of exercise 4's points and
4 of exercise 6's, and a missing wiring is a TODO.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import importlib.util
import inspect
import io
import math
import os
import secrets
import signal
import sys
import textwrap
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # grade the library of the repository this file lives in
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_SOLUTIONS = Path(__file__).with_name("solutions.py")
TIME_LIMIT_S = 60  # per exercise: an endless loop in an answer becomes a FAIL, not a hang
RTOL, ATOL = 1e-5, 1e-6  # float answers: a relative error of 1e-4 (a missing epsilon) always shows


# ================================================================================================
# outcomes


class Todo(Exception):
    """The answer is not written yet (NotImplementedError, or an empty answer slot)."""


class Fail(Exception):
    """A wrong answer; the message is what the student sees."""


class Skip(Exception):
    """Not graded in this run (library wiring that is not there and not required)."""


class _Timeout(BaseException):  # BaseException: a student's `except Exception` cannot swallow it
    pass


class _RuleBroken(BaseException):  # a banned call while the answer ran (same reason)
    pass


# ================================================================================================
# formatting


def fmt_value(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.9g}"
    return repr(v)


def fmt_array(a) -> str:
    """An input or output, readable, with enough digits that a 1e-4 error shows."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    if isinstance(a, np.ndarray):
        if a.dtype.kind == "f":
            return np.array2string(a, separator=", ", precision=7, floatmode="maxprec", max_line_width=110,
                                   threshold=400)
        return np.array2string(a, separator=", ", max_line_width=110, threshold=400)
    if isinstance(a, float):
        return fmt_value(a)
    text = repr(a)
    return text if len(text) < 2000 else text[:2000] + " ..."


def fmt_inputs(inputs: dict | None, title: str = "inputs") -> str:
    if not inputs:
        return ""
    lines = [f"{title}:"]
    for name, value in inputs.items():
        body = fmt_array(value)
        pad = " " * (len(name) + 5)
        lines.append(f"  {name} = " + body.replace("\n", "\n" + pad))
    return "\n" + "\n".join(lines)


def as_numpy(x, integer: bool = False) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.long() if integer and not x.is_floating_point() else x.double()
        return x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError("not a rectangular array of numbers")
    return arr.astype(np.int64 if integer and arr.dtype.kind in "biu" else np.float64)


def compare(what: str, got, want, inputs: dict | None = None, exact: bool = False, note: str = "",
            index_names: tuple[str, ...] | None = None, show_arrays: bool = True) -> None:
    """Raise Fail with the first differing element (index in the output's shape) unless got ~= want."""
    want = np.asarray(want, dtype=np.int64 if exact else np.float64)
    try:
        g = as_numpy(got, integer=exact)
    except Exception:
        raise Fail(f"{what}: returned {type(got).__name__} {fmt_array(got)}, expected an array of shape "
                   f"{list(want.shape)}{note}{fmt_inputs(inputs)}") from None
    if g.shape != want.shape:
        raise Fail(f"{what}: returned shape {list(g.shape)}, expected {list(want.shape)}{note}"
                   f"{fmt_inputs(inputs)}\ngot:\n  {fmt_array(g)}\nexpected:\n  {fmt_array(want)}")
    if exact:
        bad = g != want
    else:
        bad = ~np.isclose(g, want, rtol=RTOL, atol=ATOL)
    if not bad.any():
        return
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    gv, wv = g[idx], want[idx]
    where = f" at {list(idx)}" if idx else ""
    if index_names and idx:
        where += " (" + ", ".join(f"{n} {i}" for n, i in zip(index_names, idx)) + ")"
    msg = f"{what}: first difference{where}: got {fmt_value(gv)}, expected {fmt_value(wv)}"
    if not exact and np.isfinite(gv) and np.isfinite(wv):
        msg += f" (off by {gv - wv:+.3g})"
    if bad.size > 1:
        msg += f"; {int(bad.sum())} of {bad.size} values differ"
    msg += note + fmt_inputs(inputs)
    if show_arrays and g.ndim:
        msg += f"\ngot:\n  {fmt_array(g).replace(chr(10), chr(10) + '  ')}"
        msg += f"\nexpected:\n  {fmt_array(want).replace(chr(10), chr(10) + '  ')}"
    raise Fail(msg)


def first_change(before, after) -> str | None:
    """Where `after` differs from `before` (tensors, arrays, nested lists), or None."""
    if isinstance(before, torch.Tensor):
        if not isinstance(after, torch.Tensor) or after.shape != before.shape:
            return "its type or shape"
        same = before == after
        if before.is_floating_point():
            same = same | (torch.isnan(before) & torch.isnan(after))
        diff = ~same
        if not diff.any():
            return None
        idx = [int(i) for i in diff.nonzero()[0]]
        return f"{idx}: was {fmt_value(before[tuple(idx)].item())}, now {fmt_value(after[tuple(idx)].item())}"
    if isinstance(before, (list, tuple)):
        if not isinstance(after, (list, tuple)) or len(after) != len(before):
            return f"its length (was {len(before)}, now {len(after) if hasattr(after, '__len__') else '?'})"
        for i, (b, a) in enumerate(zip(before, after)):
            inner = first_change(b, a)
            if inner is not None:
                return f"[{i}]" + ("" if inner.startswith(":") else " -> ") + inner
        return None
    return None if before == after else f"was {before!r}, now {after!r}"


def snapshot(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    return copy.deepcopy(x)


# ================================================================================================
# the rules: "write it yourself", read from the source with ast and enforced while the answer runs


@dataclass(frozen=True)
class Rule:
    banned: frozenset = frozenset()  # names of functions/methods the answer may not use
    need_loop: bool = False  # the answer must be written with loops
    why: str = "write it yourself"


NO_LIBRARY = Rule(why="write it yourself: your answer may not call minisapo (that is what it is compared with)")
DYNAMIC = {"eval", "exec", "compile", "__import__"}


def _banned_object(obj, rule: Rule, own_module: str) -> str | None:
    """Why a global an answer refers to is banned, or None."""
    if inspect.ismodule(obj):
        return f"the library module `{obj.__name__}`" if obj.__name__.split(".")[0] == "minisapo" else None
    mod = getattr(obj, "__module__", None) or ""
    if mod == own_module:
        return None
    if mod.split(".")[0] == "minisapo":
        return f"the library's `{mod}.{getattr(obj, '__name__', '?')}`"
    if getattr(obj, "__name__", None) in rule.banned:
        return f"`{obj.__name__}`"
    return None


def is_stub(fn) -> bool:
    """True for an untouched stub: a docstring (optional) and `raise NotImplementedError`."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.FunctionDef) else []
    body = [b for b in body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    exc = body[0].exc.func if isinstance(body[0].exc, ast.Call) else body[0].exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


def rule_problems(fn, rule: Rule, module) -> list[str]:
    """Banned calls in `fn` and in every function or class of the answers' module it uses (transitively)."""
    own = module.__name__
    glob = vars(module)
    if is_stub(fn):  # not written yet: calling it gives the TODO
        return []
    todo, seen, problems, has_loop = [fn], set(), [], False
    while todo:
        f = todo.pop()
        if id(f) in seen:
            continue
        seen.add(id(f))
        try:
            lines, first = inspect.getsourcelines(f)
            tree = ast.parse(textwrap.dedent("".join(lines)))
        except (OSError, TypeError, SyntaxError):
            continue
        src = textwrap.dedent("".join(lines)).splitlines()

        def where(node):
            return f"line {first + node.lineno - 1}: `{src[node.lineno - 1].strip()}`"

        for node in ast.walk(tree):
            if isinstance(node, (ast.For, ast.While, ast.comprehension)):
                has_loop = True
            if isinstance(node, ast.Attribute) and node.attr in rule.banned:
                problems.append(f"`{node.attr}` ({where(node)})")
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                if node.id in DYNAMIC:
                    problems.append(f"`{node.id}` ({where(node)})")
                elif node.id in glob:
                    obj = glob[node.id]
                    why = _banned_object(obj, rule, own)
                    if why:
                        problems.append(f"{why} ({where(node)})")
                    elif (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "") == own:
                        todo.append(obj)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(n.split(".")[0] == "minisapo" for n in names):
                    problems.append(f"an import of minisapo ({where(node)})")
                if isinstance(node, ast.ImportFrom):
                    problems += [f"`{a.name}` ({where(node)})" for a in node.names if a.name in rule.banned]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                  and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in rule.banned):
                problems.append(f"`{node.args[1].value}` ({where(node)})")
    if rule.need_loop and not has_loop and not problems:
        problems.append("no loop at all (the exercise asks for plain `for` loops)")
    return list(dict.fromkeys(problems))


@contextlib.contextmanager
def banned_at_runtime(rule: Rule):
    """While the answer runs, the banned torch functions/methods raise (catches indirect uses too)."""
    patched = []

    def raiser(name):
        def _banned(*args, **kwargs):
            raise _RuleBroken(f"rule broken: `{name}` was called while your answer ran ({rule.why})")
        return _banned

    for owner in (torch, torch.Tensor, torch.nn.functional):
        for name in rule.banned:
            if hasattr(owner, name):
                patched.append((owner, name, name in vars(owner), getattr(owner, name)))
    try:
        for owner, name, _, _ in patched:
            setattr(owner, name, raiser(name))
        yield
    finally:
        for owner, name, own, old in reversed(patched):
            if own:
                setattr(owner, name, old)
            else:
                delattr(owner, name)


# ================================================================================================
# calling an answer


@dataclass
class Ctx:
    sol: object  # the answers' module
    sol_path: Path
    seed: int
    number: int
    require_wiring: bool
    rule: Rule = NO_LIBRARY
    rng: np.random.Generator | None = None
    _checked: set | None = None

    def fn(self, name: str) -> Callable:
        """The answer function `name`, after checking its source against the exercise's rule."""
        f = getattr(self.sol, name, None)
        if f is None or not callable(f):
            raise Fail(f"{self.sol_path.name} has no function `{name}` (keep the names of the stubs)")
        key = (name, self.rule)
        if self._checked is None:
            self._checked = set()
        if key not in self._checked:
            problems = rule_problems(f, self.rule, self.sol)
            if problems:
                raise Fail(f"rule broken: `{name}` uses " + "; ".join(problems) + f".\n{self.rule.why[0].upper()}"
                           f"{self.rule.why[1:]} (EXERCISES.md, exercise {self.number}).")
            self._checked.add(key)
        return f

    def call(self, name: str, inputs: dict, *, show: dict | None = None, shared: tuple = ()):
        """Call answer `name` with `inputs` (positional, in order) -> (result, note).

        The answer gets copies; `inputs` stay the originals, so expected values come from them. `note` says
        which inputs the answer changed in place (empty if none); a crash is a Fail that shows the inputs
        (or `show`). Inputs named in `shared` (a tokenizer, the answer's own trie) are passed as they are.
        """
        f = self.fn(name)
        passed = {k: v if k in shared else snapshot(v) for k, v in inputs.items()}
        shown = show if show is not None else inputs
        try:
            with banned_at_runtime(self.rule):
                out = f(*passed.values())
        except NotImplementedError as e:
            raise Todo(str(e) or f"`{name}` is not written yet") from None
        except (Fail, Todo, _Timeout):
            raise
        except _RuleBroken as e:
            raise Fail(str(e)) from None
        except Exception as e:
            raise Fail(self.crash(name, e) + fmt_inputs(shown)) from None
        changed = []
        for k, v in inputs.items():
            where = None if k in shared else first_change(v, passed[k])
            if where is not None:
                changed.append(f"`{k}` (first change at {where})")
        note = ""
        if changed:
            note = (f"\nnote: `{name}` changed its input " + ", ".join(changed) + " in place; the expected values "
                    "and the inputs shown are from BEFORE your call. Work on a copy (x = x.clone()).")
        return out, note

    def crash(self, name: str, e: BaseException) -> str:
        frames = traceback.extract_tb(e.__traceback__)
        mine = [fr for fr in frames if Path(fr.filename).resolve() == self.sol_path.resolve()]
        where = "".join(traceback.format_list(mine[-3:] or frames[-2:])).rstrip()
        return f"`{name}` raised {type(e).__name__}: {e}\n{where}"


def unchanged(note: str, name: str) -> None:
    """After the outputs are right: an input changed in place is still a FAIL."""
    if note:
        raise Fail(f"`{name}` returns the right values but" + note.split(f"`{name}`", 1)[1])


# ================================================================================================
# brute-force references (plain Python, float64; written independently of the library)


def ref_sample_std(xs: list[float]) -> float:
    n = len(xs)
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0


def ref_step_advantages(m: list[list[float]], G: int) -> list[list[float]]:
    """Group-relative advantages of each column; groups are G consecutive rows; sample std + 1e-4."""
    B, K = len(m), len(m[0])
    out = [[0.0] * K for _ in range(B)]
    for g0 in range(0, B, G):
        for k in range(K):
            col = [m[i][k] for i in range(g0, g0 + G)]
            if max(col) == min(col):
                continue
            mu, sd = sum(col) / G, ref_sample_std(col)
            for i in range(g0, g0 + G):
                out[i][k] = (m[i][k] - mu) / (sd + 1e-4)
    return out


def ref_range_advantages(r: list[list[float]], G: int) -> list[list[float]]:
    B, C = len(r), len(r[0])
    out = [[0.0] * C for _ in range(B)]
    for g0 in range(0, B, G):
        for c in range(C):
            col = [r[i][c] for i in range(g0, g0 + G)]
            hi, lo = max(col), min(col)
            if hi == lo:
                continue
            mu = sum(col) / G
            for i in range(g0, g0 + G):
                out[i][c] = (r[i][c] - mu) / (hi - lo + 1e-4)
    return out


def ref_token_credit(adv: list, steps: list[list[int]], mask: list[list[bool]], step_token_mean: bool):
    """One number per token: sequence advantage on every real token; step advantage on its step's tokens."""
    B, T = len(steps), len(steps[0])
    out = [[0.0] * T for _ in range(B)]
    for i in range(B):
        if not isinstance(adv[i], list):  # a sequence advantage
            for t in range(T):
                out[i][t] = float(adv[i]) if mask[i][t] else 0.0
            continue
        K = len(adv[i])
        counts = [0] * K
        for t in range(T):
            if mask[i][t] and steps[i][t] >= 0:
                counts[steps[i][t]] += 1
        n, k_i = sum(counts), sum(1 for c in counts if c > 0)
        for t in range(T):
            k = steps[i][t]
            if mask[i][t] and k >= 0:
                out[i][t] = adv[i][k] * (n / (k_i * counts[k]) if step_token_mean else 1.0)
    return out


def ref_loss(tok_adv, logp, old, mask, eps: float) -> float:
    """TRL's "grpo" aggregation of the PPO-clip loss: mean over rows of each row's token mean."""
    rows = []
    for i in range(len(mask)):
        total, n = 0.0, 0
        for t in range(len(mask[i])):
            if not mask[i][t]:
                continue
            w = math.exp(logp[i][t] - old[i][t])
            a = tok_adv[i][t]
            total += -min(w * a, min(max(w, 1 - eps), 1 + eps) * a)
            n += 1
        rows.append(total / max(n, 1))
    return sum(rows) / len(rows)


def ref_interleaved_steps(response: list[int], level: list[int], eos: int, K: int) -> list[int]:
    out, written, ended = [], 0, False
    for x in response:
        if x == eos:
            ended = True
        if ended:
            out.append(-1)
            continue
        out.append(written)
        if 0 <= level[x] < K:
            written += 1
    return out


# ================================================================================================
# small random worlds (no dataset is built; library setup output is silenced)

WORDS = ("red blue green warm cold tea apple sky river stone light dark sweet sour soft loud quiet old new "
         "small large fresh dry wet").split()


def random_world(rng: np.random.Generator, K: int | None = None):
    """A random SID table with at least one collision (-> a dedup token) and its tokenizer."""
    from minisapo.sid.table import SIDTable
    from minisapo.tokenizer import Tokenizer

    K = int(rng.integers(2, 5)) if K is None else K
    sizes = [int(rng.integers(2, 5)) for _ in range(K)]
    N = int(rng.integers(8, 16))
    codes = np.stack([rng.integers(0, s, N) for s in sizes], 1)
    codes[1] = codes[0]  # a collision: those items get a dedup token
    with contextlib.redirect_stdout(io.StringIO()):
        table = SIDTable.from_codes(codes, codebook_sizes=sizes)
        tok = Tokenizer.build([" ".join(WORDS)], table)
    return table, tok


def random_blocks(rng, K: int, min_words: int = 0, max_words: int = 4) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(min_words, max_words + 1)))) for _ in range(K)]


def synthetic_batch(rng, groups: int = 3, G: int = 4, layout: str = "blocks_first"):
    """Real responses (built by the library's formatter, parsed by its grammar) for score_rollouts."""
    from minisapo.grammar import Grammar
    from minisapo.reasoning import build_response
    from minisapo.sid.trie import SIDTrie

    table, tok = random_world(rng, K=3)
    K = table.num_levels
    with contextlib.redirect_stdout(io.StringIO()):
        grammar = Grammar(tok, SIDTrie(table, tok), K, layout=layout, max_think_tokens=6)
    rows, targets = [], []
    for _ in range(groups):
        target = int(rng.integers(table.num_items))
        for _ in range(G):
            item = target if rng.random() < 0.3 else int(rng.integers(table.num_items))
            rows.append(build_response(item, random_blocks(rng, K, 1, 4), table, tok, layout))
            targets.append(tok.sid_ids(table, target))
    T = max(map(len, rows))
    responses = torch.tensor([r + [tok.pad_id] * (T - len(r)) for r in rows])
    mask = torch.tensor([[True] * len(r) + [False] * (T - len(r)) for r in rows])
    parsed = [grammar.parse(r) for r in responses]
    return responses, mask, parsed, targets, tok, K


def wiring(ctx: Ctx, present: bool, what: str) -> None:
    """Library wiring absent: TODO when required, else not graded."""
    if not present:
        if ctx.require_wiring:
            raise Todo(f"library wiring: {what}")
        raise Skip(f"not there yet ({what}); not graded without --require-wiring")


# ================================================================================================
# exercise 1


CUM = frozenset({"cumprod", "cumprod_", "cumsum", "cumsum_", "cummin", "cummax", "logcumsumexp"})


def check_prefix_reward(ctx: Ctx) -> None:
    rng = ctx.rng
    cases = []
    for K in range(1, 5):  # every 0/1 pattern
        cases.append(np.array(list(np.ndindex(*([2] * K))), dtype=np.float32).reshape(-1, K))
    for _ in range(10):  # hidden random shapes
        B, K = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        cases.append((rng.random((B, K)) < 0.7).astype(np.float32))
    for m_np in cases:
        m = torch.from_numpy(m_np)
        got, note = ctx.call("prefix_reward", {"m": m})
        want = [[float(all(row[: k + 1])) for k in range(len(row))] for row in m_np.tolist()]
        compare("prefix_reward(m)", got, want, {"m": m}, note=note, index_names=("row", "step"))
        unchanged(note, "prefix_reward")


# ================================================================================================
# exercise 2


def random_steps(rng, B: int, T: int, K: int, structured: bool):
    """Step index per token: either a realistic layout (prompt/-1, contiguous steps, eos, pad) or noise."""
    if not structured:
        return rng.integers(-1, K, (B, T))
    steps = np.full((B, T), -1)
    for i in range(B):
        t = int(rng.integers(0, 3))  # a few -1 tokens first
        for k in range(K):
            if rng.random() < 0.15:  # a step that is missing (a cut response)
                continue
            n = int(rng.integers(1, 4))
            steps[i, t:t + n] = k
            t += n
    return steps


def check_token_credit(ctx: Ctx) -> None:
    rng = ctx.rng
    fixed = [  # a row with no step at all, a step with no token, masked step tokens
        (np.array([[0, 0, 1, 2, -1], [-1, -1, -1, -1, -1]]), np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], bool), 3),
        (np.array([[0, 2, 2, 2, -1, -1]]), np.array([[1, 1, 1, 0, 1, 0]], bool), 3),
    ]
    cases = list(fixed)
    for trial in range(14):
        B, T, K = int(rng.integers(1, 6)), int(rng.integers(1, 11)), int(rng.integers(1, 5))
        steps = random_steps(rng, B, T, K, structured=trial % 2 == 0)[:, :T]
        mask = rng.random((B, T)) > 0.2
        cases.append((steps, mask, K))
    for steps_np, mask_np, K in cases:
        B = len(steps_np)
        steps, mask = torch.from_numpy(steps_np.astype(np.int64)), torch.from_numpy(mask_np)
        for adv_np in (rng.normal(size=B).round(4), rng.normal(size=(B, K)).round(4)):
            adv = torch.from_numpy(adv_np).float()
            for stm in (False, True):
                inputs = {"advantages": adv, "steps": steps, "mask": mask, "step_token_mean": stm}
                got, note = ctx.call("token_advantages_loops", inputs)
                want = ref_token_credit(adv.double().tolist(), steps_np.tolist(), mask_np.tolist(), stm)
                compare(f"token_advantages_loops(advantages {list(adv.shape)}, step_token_mean={stm})", got, want,
                        inputs, note=note, index_names=("row", "token"))
                unchanged(note, "token_advantages_loops")


# ================================================================================================
# exercise 3


def check_interleaved(ctx: Ctx) -> None:
    from minisapo.reasoning import build_response

    rng = ctx.rng
    for _ in range(4):  # four random worlds, K = 2..4, each with a dedup token
        table, tok = random_world(rng)
        K = table.num_levels
        items = [0, 1] + [int(i) for i in rng.integers(0, table.num_items, 6)]  # 0, 1 collide: dedup
        for n, item in enumerate(items):
            resp = build_response(item, random_blocks(rng, K), table, tok, "interleaved")
            variant = n % 4
            if variant == 1:  # padding after <eos>
                resp = resp + [tok.pad_id] * int(rng.integers(1, 4))
            elif variant == 2:  # cut before <eos> (a response that hit the length cap)
                resp = resp[: int(rng.integers(1, len(resp)))]
            elif variant == 3:  # anything after <eos> is outside the response
                resp = resp + [tok.think_id, tok.sid_ids(table, item)[0], tok.eos_id]
            tokens = " ".join(f"[{t}]{tok.id_to_token(x)}" for t, x in enumerate(resp))
            got, note = ctx.call("interleaved_step_index", {"response": resp, "tokenizer": tok, "num_steps": K},
                                 show={"response": tokens, "num_steps": K}, shared=("tokenizer",))
            want = ref_interleaved_steps(resp, tok.token_level, tok.eos_id, K)
            compare(f"interleaved_step_index(response, tokenizer, num_steps={K})", got, want,
                    {"response": tokens}, exact=True, note=note, index_names=("token",))
            unchanged(note, "interleaved_step_index")


# ================================================================================================
# exercise 4


def range_cases(rng):
    cases = []
    for real in (False, True, False, True):
        groups, G, C = int(rng.integers(2, 5)), int(rng.integers(2, 7)), int(rng.integers(1, 4))
        r = rng.random((groups * G, C)).round(3) if real else (rng.random((groups * G, C)) < 0.4).astype(float)
        r[:G] = 1.0 if not real else 0.25  # a group with no variance
        if not real:
            r[G:2 * G, 0] = 0.0
            r[G, 0] = 1.0  # one hit out of G
        cases.append((r.astype(np.float32), G))
    return cases


def check_range_function(ctx: Ctx) -> None:
    for r_np, G in range_cases(ctx.rng):
        r = torch.from_numpy(r_np)
        inputs = {"rewards": r, "group_size": G}
        got, note = ctx.call("range_advantages", inputs)
        want = ref_range_advantages(r.double().tolist(), G)
        compare(f"range_advantages(rewards, group_size={G})", got, want, inputs, note=note,
                index_names=("row", "column"))
        unchanged(note, "range_advantages")


def one_hit_of_8() -> dict:
    r = [1.0] + [0.0] * 7
    mu, sd = 1 / 8, ref_sample_std(r)
    return {"group": {"hit": (1 - mu) / (sd + 1e-4), "miss": (0 - mu) / (sd + 1e-4)},
            "range": {"hit": (1 - mu) / (1 + 1e-4), "miss": (0 - mu) / (1 + 1e-4)}}


def check_range_by_hand(ctx: Ctx) -> None:
    slot = getattr(ctx.sol, "EX4_ONE_HIT_OF_8", None)
    if slot is None:
        raise Fail(f"{ctx.sol_path.name} has no EX4_ONE_HIT_OF_8 (keep the answer slot of the stub)")
    want = one_hit_of_8()
    for scale in ("group", "range"):
        for who in ("hit", "miss"):
            try:
                v = slot[scale][who]
            except (KeyError, TypeError, IndexError):
                raise Fail(f'EX4_ONE_HIT_OF_8["{scale}"]["{who}"] is missing (keep the slot\'s layout)') from None
            if v is None or v is Ellipsis:
                raise Todo(f'fill in EX4_ONE_HIT_OF_8["{scale}"]["{who}"] (your hand computation)')
            try:
                ok = abs(float(v) - want[scale][who]) <= 2e-3
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise Fail(f'EX4_ONE_HIT_OF_8["{scale}"]["{who}"] = {v!r} is not the advantage of the '
                           f"{who}{'' if who == 'hit' else 'es'} in a group of 8 with one hit under "
                           f'scale_rewards="{scale}" (to 3 decimals). Hint: the group std is the sample std '
                           "(divide by G - 1), as torch.std.")


def check_range_wiring(ctx: Ctx) -> None:
    from minisapo import config, rl
    from minisapo.config import make_config

    wiring(ctx, "range" in rl.SCALE_REWARDS, '"range" is not in rl.SCALE_REWARDS')
    try:
        config.rl_config("sapo", scale_rewards="range")
        with contextlib.redirect_stdout(io.StringIO()):
            cfg = make_config({"scale_rewards": "range"}, preset="tiny")  # what `--scale_rewards=range` does
            config.check_rl(cfg.rl)
    except Exception as e:
        raise Fail(f"library wiring: the config does not accept scale_rewards='range': {type(e).__name__}: {e}")
    for r_np, G in range_cases(ctx.rng):
        r = torch.from_numpy(r_np)
        want = ref_range_advantages(r.double().tolist(), G)
        compare(f"library wiring: rl.step_advantages(rewards, {G}, 'range')", rl.step_advantages(r, G, "range"),
                want, {"rewards": r})
        compare(f"library wiring: rl.sequence_advantages(rewards[:, 0], {G}, 'range')",
                rl.sequence_advantages(r[:, 0].clone(), G, "range"), [row[0] for row in want], {"rewards[:, 0]": r[:, 0]})
    for algo in ("sapo", "grpo"):  # the run: score_rollouts with the new mode, as tutorial 5 calls it
        batch = synthetic_batch(ctx.rng, G=4)
        responses, mask, parsed, targets, tok, K = batch
        cfg = config.rl_config(algo, num_generations=4, scale_rewards="range")
        s = rl.score_rollouts(responses, mask, parsed, targets, tok, cfg, K, dedup=True)
        rew = s["rewards"].double()
        want = ref_range_advantages(rew.reshape(len(rew), -1).tolist(), 4)
        compare(f"library wiring: rl.score_rollouts(.., rl_config('{algo}', scale_rewards='range'))['advantages']",
                s["advantages"].reshape(len(rew), -1), want, {"rewards": s["rewards"]})


# ================================================================================================
# exercise 6


def ref_reward_to_go(adv: list[list[float]], gamma: float) -> list[list[float]]:
    return [[sum(gamma ** (k - j) * row[k] for k in range(j, len(row))) for j in range(len(row))] for row in adv]


def check_reward_to_go(ctx: Ctx) -> None:
    rng = ctx.rng
    for trial in range(10):
        B, K = int(rng.integers(1, 7)), int(rng.integers(1, 6))
        adv = torch.from_numpy(rng.normal(size=(B, K)).round(4)).float()
        gamma = [0.0, 1.0][trial] if trial < 2 else round(float(rng.uniform(0.1, 0.95)), 3)
        inputs = {"advantages": adv, "gamma": gamma}
        got, note = ctx.call("reward_to_go", inputs)
        compare(f"reward_to_go(advantages, gamma={gamma})", got, ref_reward_to_go(adv.double().tolist(), gamma),
                inputs, note=note, index_names=("row", "step"))
        unchanged(note, "reward_to_go")


def check_reward_to_go_wiring(ctx: Ctx) -> None:
    from minisapo import config, rl
    from minisapo.config import field_comments, make_config

    fields = {f.name: f for f in dataclasses.fields(rl.RLConfig)}
    wiring(ctx, "step_gamma" in fields, "RLConfig has no field `step_gamma`")
    default = fields["step_gamma"].default
    if not isinstance(default, (int, float)) or default != 0.0:
        raise Fail(f"library wiring: RLConfig.step_gamma defaults to {default!r}; it must be 0.0, so that nothing "
                   "changes unless a run asks for it")
    if not field_comments(rl.RLConfig).get("step_gamma", "").strip():
        raise Fail("library wiring: RLConfig.step_gamma has no comment; every field says what it does "
                   "(`step_gamma: float = 0.0  # ...`)")
    with contextlib.redirect_stdout(io.StringIO()):
        if make_config({"step_gamma": "0.5"}, preset="tiny").rl.step_gamma != 0.5:
            raise Fail("library wiring: `--step_gamma=0.5` does not reach cfg.rl.step_gamma")
    for layout in ("blocks_first", "interleaved"):
        responses, mask, parsed, targets, tok, K = synthetic_batch(ctx.rng, G=4, layout=layout)
        gamma = round(float(ctx.rng.uniform(0.3, 0.9)), 3)
        args = (responses, mask, parsed, targets, tok)
        plain = rl.score_rollouts(*args, config.rl_config("sapo", num_generations=4), K, dedup=True)
        zero = rl.score_rollouts(*args, config.rl_config("sapo", num_generations=4, step_gamma=0.0), K, dedup=True)
        for key in ("advantages", "token_adv"):
            compare(f"library wiring: score_rollouts with step_gamma=0.0, '{key}' (must equal plain SAPO)",
                    zero[key], plain[key].double().numpy(), show_arrays=False)
        cfg = config.rl_config("sapo", num_generations=4, step_gamma=gamma)
        s = rl.score_rollouts(*args, cfg, K, dedup=True)
        want = ref_reward_to_go(plain["advantages"].double().tolist(), gamma)
        compare(f"library wiring: score_rollouts(.., step_gamma={gamma})['advantages'] (reward-to-go of plain "
                "SAPO's step advantages)", s["advantages"], want, {"plain SAPO advantages": plain["advantages"]})
        credit = ref_token_credit(s["advantages"].double().tolist(), s["steps"].tolist(), mask.tolist(),
                                  cfg.step_token_mean)
        compare(f"library wiring: score_rollouts(.., step_gamma={gamma})['token_adv'] (the credit of the new "
                "advantages)", s["token_adv"], credit, index_names=("row", "token"), show_arrays=False)
        g0 = rl.score_rollouts(*args, config.rl_config("grpo", num_generations=4), K, dedup=True)
        g1 = rl.score_rollouts(*args, config.rl_config("grpo", num_generations=4, step_gamma=gamma), K, dedup=True)
        compare("library wiring: GRPO (advantage='sequence') must ignore step_gamma", g1["token_adv"],
                g0["token_adv"].double().numpy(), show_arrays=False)


# ================================================================================================
# exercise 8


def ref_rank(ranked: list[int], target: int, k: int) -> int | None:
    for r, item in enumerate(ranked[:k], start=1):
        if item == target:
            return r
    return None


def ndcg_cases(rng):
    cases = [([], 3, 1), ([7], 7, 1), ([4, 9, 2], 9, 1), ([4, 9, 2], 9, 2), ([4, 9, 2], 2, 3), ([4, 9, 2], 2, 2),
             ([4, 9, 2], 5, 3), ([4, 9, 2], 4, 10)]
    for _ in range(40):
        L = int(rng.integers(1, 13))
        ranked = [int(x) for x in rng.choice(100, L, replace=False)]
        pos = int(rng.integers(0, L))
        target = ranked[pos] if rng.random() < 0.8 else 100 + int(rng.integers(10))
        k = [pos + 1, pos + 2, pos, int(rng.integers(1, L + 3))][int(rng.integers(4))]  # the edges: rank k, k +- 1
        cases.append((ranked, target, max(k, 1)))
    return cases


def check_scalar(ctx: Ctx, name: str, args: dict, want: float) -> None:
    got, note = ctx.call(name, args)
    call = f"{name}(ranked, target={args['target']}, k={args['k']})"
    try:
        g = float(got)
    except Exception:
        raise Fail(f"{call} returned {got!r}, expected a number{fmt_inputs(args)}") from None
    if not (math.isfinite(g) and math.isclose(g, want, rel_tol=1e-9, abs_tol=1e-12)):
        rank = ref_rank(args["ranked"], args["target"], len(args["ranked"]))
        raise Fail(f"{call}: got {g:.9g}, expected {want:.9g} (the target's 1-based rank in the whole list is "
                   f"{rank}){note}{fmt_inputs(args)}")
    unchanged(note, name)


def check_hit(ctx: Ctx) -> None:
    for ranked, target, k in ndcg_cases(ctx.rng):
        r = ref_rank(ranked, target, k)
        check_scalar(ctx, "hit_at_k", {"ranked": ranked, "target": target, "k": k}, 0.0 if r is None else 1.0)


def check_ndcg(ctx: Ctx) -> None:
    for ranked, target, k in ndcg_cases(ctx.rng):
        r = ref_rank(ranked, target, k)
        check_scalar(ctx, "ndcg_at_k", {"ranked": ranked, "target": target, "k": k},
                     0.0 if r is None else 1.0 / math.log2(r + 1))


# ================================================================================================
# exercise 9


def kmeans_cases(rng):
    """(x, centroids) in float32 where the nearest centroid of every row wins by a clear margin, after two
    fixed cases: squared distance vs |.| distance disagree; exact ties (-> the lowest index) and an empty cluster."""
    f32 = torch.float32
    cases = [(torch.tensor([[0.0, 0.0], [2.0, 2.0], [0.1, 0.0]], dtype=f32), torch.tensor([[1.0, 1.0], [1.8, 0.0]])),
             (torch.tensor([[0.0, 0.0], [3.0, 3.0]], dtype=f32), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))]
    for trial in range(12):
        N, d, k = int(rng.integers(3, 13)), int(rng.integers(1, 4)), int(rng.integers(1, 5))
        k = min(k, N)
        for _ in range(100):
            x = rng.normal(size=(N, d)).round(3)
            c = (x[rng.choice(N, k, replace=False)] + rng.normal(scale=0.3, size=(k, d))).round(3)
            if trial % 3 == 0 and k > 1:
                c[int(rng.integers(k))] = 40.0 + rng.random(d).round(3)  # a centroid nobody is close to
            d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
            srt = np.sort(d2, axis=1)
            if k == 1 or (srt[:, 1] - srt[:, 0] > 1e-2 * (1 + srt[:, 0])).all():
                break
        cases.append((torch.from_numpy(x.astype(np.float32)), torch.from_numpy(c.astype(np.float32))))
    return cases


def kmeans_outputs(ctx: Ctx, x, c):
    inputs = {"x": x, "centroids": c}
    got, note = ctx.call("kmeans_step", inputs)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise Fail(f"kmeans_step must return (codes, new_centroids, residual), got {type(got).__name__}"
                   f"{fmt_inputs(inputs)}")
    return got, note, inputs


def ref_assign(x: list[list[float]], c: list[list[float]]) -> list[int]:
    out = []
    for row in x:
        d = [sum((a - b) ** 2 for a, b in zip(row, cen)) for cen in c]
        out.append(min(range(len(c)), key=lambda j: (d[j], j)))
    return out


def ref_update(x, c, codes) -> list[list[float]]:
    out = []
    for j in range(len(c)):
        members = [x[n] for n in range(len(x)) if codes[n] == j]
        out.append([sum(col) / len(members) for col in zip(*members)] if members else list(c[j]))
    return out


def student_codes(got, x, inputs) -> list[int]:
    try:
        codes = [int(v) for v in as_numpy(got[0], integer=True).reshape(-1)]
    except Exception:
        raise Fail(f"kmeans_step: codes must be N integers, got {fmt_array(got[0])}{fmt_inputs(inputs)}") from None
    return codes


def check_assign(ctx: Ctx) -> None:
    for x, c in kmeans_cases(ctx.rng):
        got, note, inputs = kmeans_outputs(ctx, x, c)
        compare("kmeans_step(x, centroids): codes", got[0], ref_assign(x.double().tolist(), c.double().tolist()),
                inputs, exact=True, note=note, index_names=("row",))


def check_update(ctx: Ctx) -> None:  # an input changed in place costs this part (not all three)
    for x, c in kmeans_cases(ctx.rng):
        got, note, inputs = kmeans_outputs(ctx, x, c)
        codes = student_codes(got, x, inputs)
        if len(codes) != len(x) or not all(0 <= a < len(c) for a in codes):
            raise Fail(f"kmeans_step: codes {codes} are not N = {len(x)} indices in [0, {len(c)}){fmt_inputs(inputs)}")
        want = ref_update(x.double().tolist(), c.double().tolist(), codes)
        compare("kmeans_step(x, centroids): new_centroids (given your codes)", got[1], want,
                {**inputs, "your codes": codes}, note=note, index_names=("centroid", "dim"))
        unchanged(note, "kmeans_step")


def check_residual(ctx: Ctx) -> None:
    for x, c in kmeans_cases(ctx.rng):
        got, note, inputs = kmeans_outputs(ctx, x, c)
        codes = student_codes(got, x, inputs)
        try:
            new_c = as_numpy(got[1])
            want = x.double().numpy() - new_c[codes]
        except Exception:
            raise Fail("kmeans_step: residual needs codes (N,) and new_centroids (k, d) first") from None
        compare("kmeans_step(x, centroids): residual = x - new_centroids[codes] (given your codes and centroids)",
                got[2], want, inputs, note=note, index_names=("row", "dim"))


# ================================================================================================
# exercise 10


def random_sid_table(rng) -> list[list[int]]:
    """SIDs as token ids: level l codes are 10 + 100 l + code; colliding items get a dedup token."""
    K, N = int(rng.integers(2, 5)), int(rng.integers(3, 13))
    sizes = [int(rng.integers(2, 5)) for _ in range(K)]
    codes = [tuple(int(rng.integers(s)) for s in sizes) for _ in range(N)]
    codes[1] = codes[0]
    seen: dict[tuple, int] = {}
    counts = {c: codes.count(c) for c in codes}
    sids = []
    for c in codes:
        sid = [10 + 100 * level + code for level, code in enumerate(c)]
        if counts[c] > 1:
            sid.append(10 + 100 * K + seen.get(c, 0))
            seen[c] = seen.get(c, 0) + 1
        sids.append(sid)
    order = rng.permutation(N)
    return [sids[i] for i in order]


def ref_next(sids: list[list[int]], prefix: list[int]) -> list[int] | None:
    """Scan the table: sorted next tokens, [] for a complete SID, None if no SID starts with prefix."""
    starts = [s for s in sids if s[:len(prefix)] == prefix]
    if not starts:
        return None
    return sorted({s[len(prefix)] for s in starts if len(s) > len(prefix)})


def trie_cases(rng):
    for _ in range(12):
        sids = random_sid_table(rng)
        valid = sorted({tuple(s[:d]) for s in sids for d in range(len(s) + 1)})
        impossible = []
        for _ in range(8):
            p = list(valid[int(rng.integers(len(valid)))])
            kind = int(rng.integers(3))
            if kind == 0:  # a next token no SID has there
                p.append(10 + 100 * len(p) + int(rng.integers(5, 9)))
            elif kind == 1:  # a complete SID, then anything
                s = sids[int(rng.integers(len(sids)))]
                p = s + [s[-1]]
            else:  # a valid path whose last token is swapped for an unused sibling
                if not p:
                    p = [999]
                else:
                    p[-1] = 10 + 100 * (len(p) - 1) + 7
            if ref_next(sids, p) is None:
                impossible.append(p)
        yield sids, [list(v) for v in valid], impossible


def build(ctx: Ctx, sids, check_inputs: bool):
    trie, note = ctx.call("build_trie", {"sids": sids})
    if check_inputs:  # an input changed in place costs one part, not both
        unchanged(note, "build_trie")
    return trie


def check_trie_valid(ctx: Ctx) -> None:
    for sids, valid, _ in trie_cases(ctx.rng):
        trie = build(ctx, sids, check_inputs=True)
        for p in valid:
            args = {"trie": trie, "prefix": p}
            try:
                got, note = ctx.call("next_tokens", args, show={"sids": sids, "prefix": p}, shared=("trie",))
            except Fail as e:
                raise Fail(f"next_tokens(trie, {p}) on a valid prefix: {e}") from None
            want = ref_next(sids, p)
            if not isinstance(got, (list, tuple)) or [int(v) for v in got] != want:
                raise Fail(f"next_tokens(trie, prefix={p}): got {got!r}, expected {want} (sorted next token ids; "
                           f"[] after a complete SID){note}{fmt_inputs({'sids': sids})}")
            unchanged(note, "next_tokens")


def check_trie_impossible(ctx: Ctx) -> None:
    for sids, _, impossible in trie_cases(ctx.rng):
        trie = build(ctx, sids, check_inputs=False)
        for p in impossible:
            f = ctx.fn("next_tokens")
            try:
                with banned_at_runtime(ctx.rule):
                    got = f(trie, list(p))
            except NotImplementedError as e:
                raise Todo(str(e) or "`next_tokens` is not written yet") from None
            except ValueError:
                continue
            except _RuleBroken as e:
                raise Fail(str(e)) from None
            except Exception as e:
                raise Fail(f"next_tokens(trie, {p}) raised {type(e).__name__}: {e}; no SID starts with this prefix, "
                           f"so it must raise ValueError{fmt_inputs({'sids': sids})}") from None
            raise Fail(f"next_tokens(trie, {p}) returned {got!r}; no SID starts with this prefix, so it must raise "
                       f"ValueError (constrained decoding must never fall back to 'anything goes')"
                       f"{fmt_inputs({'sids': sids})}")


# ================================================================================================
# exercise 11

HAND_CASE = {  # EXERCISES.md works this one out by hand
    "matches": [[1.0, 0.0], [0.0, 0.0]],
    "steps": [[0, 0, 1, -1], [0, 1, -1, -1]],
    "mask": [[True, True, True, True], [True, True, True, False]],
    "logprobs": [[-1.0, -0.5, -0.2, -0.1], [-0.7, -0.3, -0.1, -2.0]],
    "epsilon": 0.2,
}


def loss_cases(rng):
    h = HAND_CASE
    cases = [(torch.tensor(h["matches"]), torch.tensor(h["steps"]), torch.tensor(h["mask"]),
              torch.tensor(h["logprobs"]), torch.tensor(h["logprobs"]), h["epsilon"])]
    for _ in range(10):
        G, K, T = int(rng.integers(2, 7)), int(rng.integers(2, 4)), 14
        m = (rng.random((G, K)) < 0.5).astype(np.float32)
        m[:, int(rng.integers(K))] = float(rng.integers(2))  # a step with no variance
        steps = random_steps(rng, G, T, K, structured=True)
        lengths = [int((row >= 0).nonzero()[0].max()) + 2 if (row >= 0).any() else 1 for row in steps]  # + <eos>
        mask = np.array([[t < n for t in range(T)] for n in lengths])
        logp = -rng.uniform(0.05, 3.0, (G, T)).round(4)
        old = (logp + rng.normal(scale=0.3, size=(G, T))).round(4)
        eps = float(rng.choice([0.1, 0.2, 0.28]))
        cases.append((torch.from_numpy(m), torch.from_numpy(steps), torch.from_numpy(mask),
                      torch.from_numpy(logp).float(), torch.from_numpy(old).float(), eps))
    return cases


def loss_outputs(ctx: Ctx, case):
    m, steps, mask, logp, old, eps = case
    inputs = {"matches": m, "steps": steps, "mask": mask, "logprobs": logp, "old_logprobs": old, "epsilon": eps}
    got, note = ctx.call("sapo_group_loss", inputs)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise Fail(f"sapo_group_loss must return (advantages, token_adv, loss), got {type(got).__name__}"
                   f"{fmt_inputs(inputs)}")
    return got, note, inputs


def check_loss_advantages(ctx: Ctx) -> None:  # an input changed in place costs this part (not all three)
    for case in loss_cases(ctx.rng):
        got, note, inputs = loss_outputs(ctx, case)
        want = ref_step_advantages(case[0].double().tolist(), len(case[0]))
        compare("sapo_group_loss: advantages", got[0], want, inputs, note=note, index_names=("rollout", "step"))
        unchanged(note, "sapo_group_loss")


def check_loss_credit(ctx: Ctx) -> None:
    for case in loss_cases(ctx.rng):
        got, note, inputs = loss_outputs(ctx, case)
        adv = as_numpy(got[0]).tolist()
        want = ref_token_credit(adv, case[1].tolist(), case[2].tolist(), True)
        compare("sapo_group_loss: token_adv (given your advantages)", got[1], want, {**inputs, "your advantages":
                np.asarray(adv)}, note=note, index_names=("rollout", "token"))


def check_loss_value(ctx: Ctx) -> None:
    for case in loss_cases(ctx.rng):
        got, note, inputs = loss_outputs(ctx, case)
        tok_adv = as_numpy(got[1]).tolist()
        want = ref_loss(tok_adv, case[3].double().tolist(), case[4].double().tolist(), case[2].tolist(), case[5])
        compare("sapo_group_loss: loss (given your token_adv)", got[2], want,
                {**inputs, "your token_adv": np.asarray(tok_adv)}, note=note)


# ================================================================================================
# the exercises


@dataclass
class Part:
    name: str
    points: int  # points in the default mode
    check: Callable[[Ctx], None]
    points_wired: int | None = None  # points with --require-wiring (None: the same)

    def worth(self, require_wiring: bool) -> int:
        return self.points_wired if require_wiring and self.points_wired is not None else self.points


@dataclass
class Exercise:
    number: int
    title: str
    difficulty: str  # easy | medium | hard
    minutes: int
    parts: list[Part]  # [] = an experiment: nothing to grade automatically
    rule: Rule = NO_LIBRARY

    def points(self, require_wiring: bool) -> int:
        return sum(p.worth(require_wiring) for p in self.parts)


EXERCISES = [
    Exercise(1, "prefix-gated rewards, by hand", "easy", 10,
             [Part("prefix_reward", 5, check_prefix_reward)],
             Rule(CUM, need_loop=True, why="write it with plain loops: no cumprod/cumsum/cummin, no minisapo")),
    Exercise(2, "per-token credit with loops", "medium", 30,
             [Part("token_advantages_loops", 15, check_token_credit)],
             Rule(frozenset({"gather", "take_along_dim", "one_hot", "scatter", "scatter_", "scatter_add",
                             "scatter_add_", "index_select", "bincount"}), need_loop=True,
                  why="write it with loops over rows and positions: no gather/one_hot/scatter, no minisapo")),
    Exercise(3, "the interleaved layout and step_index", "medium", 20,
             [Part("interleaved_step_index", 10, check_interleaved)],
             Rule(why="write the rule yourself: no reasoning.step_index, no minisapo")),
    Exercise(4, 'a new scale_rewards mode: "range"', "medium", 30,
             [Part("range_advantages", 7, check_range_function, points_wired=4),
              Part("EX4_ONE_HIT_OF_8 (by hand)", 3, check_range_by_hand),
              Part("library wiring (minisapo/rl.py) and the run", 0, check_range_wiring, points_wired=3)]),
    Exercise(5, "make exact match sparser (experiment)", "easy", 30, []),
    Exercise(6, "let a step's reward also credit earlier steps", "medium", 25,
             [Part("reward_to_go", 10, check_reward_to_go, points_wired=6),
              Part("library wiring (RLConfig.step_gamma, score_rollouts)", 0, check_reward_to_go_wiring,
                   points_wired=4)]),
    Exercise(7, "how many SID levels? (experiment)", "easy", 20, []),
    Exercise(8, "hit@K and ndcg@K", "easy", 10,
             [Part("hit_at_k", 3, check_hit), Part("ndcg_at_k", 7, check_ndcg)],
             Rule(why="write it yourself: no minisapo.evaluate")),
    Exercise(9, "one step of one RQ-KMeans level", "medium", 25,
             [Part("assignment (codes)", 5, check_assign), Part("centroid update", 7, check_update),
              Part("residual", 3, check_residual)],
             Rule(why="write it yourself: no minisapo.sid.rqkmeans")),
    Exercise(10, "the prefix trie", "medium", 20,
             [Part("next tokens of valid prefixes", 6, check_trie_valid),
              Part("impossible prefixes raise ValueError", 4, check_trie_impossible)],
             Rule(why="write it yourself: no minisapo.sid.SIDTrie")),
    Exercise(11, "the step-aligned loss on one group", "hard", 40,
             [Part("step advantages", 5, check_loss_advantages), Part("per-token credit", 5, check_loss_credit),
              Part("loss value", 5, check_loss_value)],
             Rule(why="write it yourself: no minisapo.rl (step_advantages, token_advantages, policy_loss)")),
]
BY_NUMBER = {e.number: e for e in EXERCISES}

THINK_KEYS = ("1", "2", "3a", "3b", "4", "5", "6", "7", "8", "9", "10", "11")


# ================================================================================================
# grading


@dataclass
class PartResult:
    name: str
    status: str  # PASS | FAIL | TODO | SKIP
    points: int
    out_of: int
    message: str = ""


@dataclass
class Result:
    exercise: Exercise
    status: str  # PASS | FAIL | TODO | EXPERIMENT
    points: int
    out_of: int
    parts: list[PartResult]

    @property
    def message(self) -> str:
        return "\n".join(p.message for p in self.parts if p.status == "FAIL")


def load_solutions(path: str | Path, name: str = "solutions"):
    path = Path(path).resolve()
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise FileNotFoundError(f"cannot load answers from {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # so that inspect can read the source of its classes
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def time_limit(seconds: int):
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():  # no limit
        yield
        return

    def _alarm(*_):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def grade(ex: Exercise, sol, sol_path: Path, seed: int, require_wiring: bool = False) -> Result:
    if not ex.parts:
        return Result(ex, "EXPERIMENT", 0, 0, [])
    parts = []
    for i, part in enumerate(ex.parts):
        worth = part.worth(require_wiring)
        ctx = Ctx(sol, sol_path, seed, ex.number, require_wiring, ex.rule, np.random.default_rng([seed, ex.number, i]))
        torch.manual_seed(seed)
        try:
            with time_limit(TIME_LIMIT_S):
                part.check(ctx)
            parts.append(PartResult(part.name, "PASS", worth, worth))
        except Todo as e:
            parts.append(PartResult(part.name, "TODO", 0, worth, str(e)))
        except Skip as e:
            parts.append(PartResult(part.name, "SKIP", 0, worth, str(e)))
        except Fail as e:
            parts.append(PartResult(part.name, "FAIL", 0, worth, str(e)))
        except _Timeout:
            parts.append(PartResult(part.name, "FAIL", 0, worth, f"took more than {TIME_LIMIT_S} s (an endless loop?)"))
        except Exception:  # an output the check could not even read, or (wiring) the library raised
            parts.append(PartResult(part.name, "FAIL", 0, worth, "the check could not grade this part (your "
                                    "answer's output is unreadable, or the library raised):\n"
                                    + traceback.format_exc(limit=-3)))
    graded = [p for p in parts if p.status != "SKIP"]
    statuses = {p.status for p in graded}
    status = "FAIL" if "FAIL" in statuses else "TODO" if "TODO" in statuses else "PASS"
    return Result(ex, status, sum(p.points for p in parts), ex.points(require_wiring), parts)


def think_answers(sol) -> list[str]:
    answers = getattr(sol, "THINK_ANSWERS", None)
    if not isinstance(answers, dict):
        return []
    return [k for k in THINK_KEYS if isinstance(answers.get(k), str) and answers[k].strip()]


def indent(text: str, n: int) -> str:
    return textwrap.indent(text, " " * n)


def report(results: list[Result], sol, seed: int, numbers: list[int], out=None) -> bool:
    out = out or sys.stdout
    graded = [r for r in results if r.status != "EXPERIMENT"]
    for r in results:
        ex = r.exercise
        about = f"{ex.title}  ({ex.difficulty}, ~{ex.minutes} min)"
        if r.status == "EXPERIMENT":
            print(f"exercise {ex.number:>2}  ----     -     {ex.title} (~{ex.minutes} min): not graded here; write "
                  f'what you saw in THINK_ANSWERS["{ex.number}"]', file=out)
            continue
        print(f"exercise {ex.number:>2}  {r.status:<4}  {r.points:>3}/{r.out_of:<3}  {about}", file=out)
        said = set()
        for p in r.parts:
            msg = p.message if p.status != "PASS" else ""
            short = msg and "\n" not in msg and len(msg) < 110 and p.status != "FAIL"
            if len(r.parts) > 1:
                score = f"{p.points}/{p.out_of}" if p.status != "SKIP" else "-"
                tail = f": {msg}" if short and msg not in said else ""
                print(f"      {p.status:<4} {score:>5}  {p.name}{tail}", file=out)
                if short:
                    said.add(msg)
                    continue
            if msg and msg not in said:
                print(indent(msg, 16 if len(r.parts) > 1 else 6), file=out)
                said.add(msg)
        if r.status == "FAIL":
            print(f"      replay: python tutorials/exercise_checks.py {ex.number} --seed={seed}", file=out)
    filled = think_answers(sol)
    print(f"think answers: {len(filled)}/{len(THINK_KEYS)} filled in (THINK_ANSWERS; free text is read by your "
          "teacher, not graded here)", file=out)
    n_pass = sum(r.status == "PASS" for r in graded)
    pts, total = sum(r.points for r in graded), sum(r.out_of for r in graded)
    print(f"score: {n_pass}/{len(graded)} exercises, {pts}/{total} points", file=out)
    return n_pass == len(graded) and pts == total


def run(sol, sol_path: Path, seed: int, numbers: list[int] | None = None, require_wiring: bool = False,
        out=None) -> tuple[bool, list[Result]]:
    """Grade `numbers` (default: all) -> (full marks?, results). Used by main() and by the tests."""
    torch.set_num_threads(1)
    numbers = numbers or [e.number for e in EXERCISES]
    results = [grade(BY_NUMBER[n], sol, sol_path, seed, require_wiring) for n in numbers]
    return report(results, sol, seed, numbers, out), results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exercises", nargs="*", type=int, help="exercise numbers (default: all)")
    parser.add_argument("--seed", type=int, default=None, help="replay the hidden inputs of an earlier run")
    parser.add_argument("--require-wiring", action="store_true",
                        help="grade the library edits of exercises 4 and 6 (minisapo/rl.py) too")
    args = parser.parse_args(argv)
    unknown = [n for n in args.exercises if n not in BY_NUMBER]
    if unknown:
        parser.error(f"no exercise {unknown[0]}; the exercises are {', '.join(map(str, BY_NUMBER))}")
    seed = secrets.randbelow(1_000_000) if args.seed is None else args.seed
    sol_path = Path(os.environ.get("MINISAPO_SOLUTIONS") or DEFAULT_SOLUTIONS).resolve()
    t0 = time.time()
    print(f"answers: {sol_path}\nseed: {seed}  (replay these hidden inputs with --seed={seed})"
          + ("\nlibrary wiring of exercises 4 and 6: required" if args.require_wiring else ""))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the answers' own prints while loading
            sol = load_solutions(sol_path)
    except Exception:
        print(f"could not load your answers:\n{traceback.format_exc(limit=-2)}")
        graded = [BY_NUMBER[n] for n in (args.exercises or BY_NUMBER) if BY_NUMBER[n].parts]
        print(f"score: 0/{len(graded)} exercises, 0/{sum(e.points(args.require_wiring) for e in graded)} points")
        return 1
    ok, _ = run(sol, sol_path, seed, args.exercises, args.require_wiring)
    print(f"(graded in {time.time() - t0:.1f} s)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
