"""Checker for tutorials/EXERCISES.md: the visible examples and the rules.

    python tutorials/exercise_checks.py          # every exercise: PASS / FAIL / TODO, points, a score line
    python tutorials/exercise_checks.py 2 9      # only exercises 2 and 9

Answers are read from tutorials/solutions.py, or from the file named by $MINISAPO_SOLUTIONS.

What it checks, for every exercise:
* the visible examples: fixed inputs whose right outputs are written in this file (the examples of
  EXERCISES.md and a few edge cases), with the type, dtype and shape the docstring asks for;
* the rules, while your function runs (not only by reading its source): "write it yourself" means no
  minisapo function may run and no minisapo module be imported; "with loops" means your code may call
  only what is on the lists below (Python's builtins, list and dict methods, math, and from torch: making
  tensors, reading and writing one element or a slice, shapes, and element-wise arithmetic) and index with
  numbers and slices only (no tensor or list of indices);
* that no input is changed in place;
* exercises 4 and 6 also as plug-ins: your function loaded from your file by minisapo, as
  `--rl.advantage=tutorials/solutions.py:range_advantages` loads it, inside a real RL scoring step.

The last line is a score (exit status 0 at full marks). Passing here means passing the visible
examples: your teacher's grader runs the same checks plus hidden random inputs compared with
brute-force code, so an answer written for these examples only will not pass there.

A submission may not import, open or run this checker (or the teacher's grader), nor change the
functions of torch, numpy or the checker: it then gets no points.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import copy
import importlib
import importlib.util
import inspect
import io
import math
import os
import signal
import sys
import textwrap
import threading
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # check against the library of the repository this file lives in
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

import minisapo  # noqa: E402

CHECKER = Path(__file__).resolve()
DEFAULT_SOLUTIONS = CHECKER.with_name("solutions.py")
LIBRARY = Path(minisapo.__file__).resolve().parent  # the library the answers are compared with
TORCH_DIR = Path(torch.__file__).resolve().parent
TIME_LIMIT_S = 60  # per part: an endless loop in an answer becomes a FAIL, not a hang
RTOL, ATOL = 1e-5, 1e-6  # float answers: a relative error of 1e-4 (a missing epsilon) always shows


# ================================================================================================
# outcomes


class Todo(Exception):
    """The answer is not written yet (NotImplementedError, or an empty answer slot)."""


class Fail(Exception):
    """A wrong answer; the message is what the student sees."""


class _Timeout(BaseException):  # BaseException: a student's `except Exception` cannot swallow it
    pass


class _RuleBroken(BaseException):  # a rule broken while the answer ran (same reason)
    pass


# ================================================================================================
# formatting and comparing


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


KINDS = {  # what a docstring promises -> (test, what the message calls it)
    "float": (lambda x: isinstance(x, torch.Tensor) and x.is_floating_point(), "a float tensor"),
    "long": (lambda x: isinstance(x, torch.Tensor) and x.dtype == torch.int64, "a long (int64) tensor"),
    "ints": (lambda x: isinstance(x, list) and all(type(v) is int for v in x), "a list of Python ints"),
    "number": (lambda x: isinstance(x, float), "a Python float"),
    "loss": (lambda x: isinstance(x, float) or (isinstance(x, torch.Tensor) and x.dim() == 0 and x.is_floating_point()),
             "a Python float or a 0-d float tensor"),
}


def describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of dtype {x.dtype} and shape {list(x.shape)}"
    if isinstance(x, list) and x and not all(type(v) is int for v in x):
        bad = next(v for v in x if type(v) is not int)
        return f"a list holding {type(bad).__name__} {bad!r}"
    return f"{type(x).__name__} {fmt_array(x)}"[:300]


def check_kind(what: str, got, kind: str, inputs: dict | None = None, note: str = "") -> None:
    """Fail unless `got` is the type / dtype the docstring asks for (kind: a key of KINDS)."""
    test, name = KINDS[kind]
    if not test(got):
        raise Fail(f"{what}: returned {describe(got)}; the docstring asks for {name}{note}{fmt_inputs(inputs)}")


def compare(what: str, got, want, inputs: dict | None = None, exact: bool = False, note: str = "",
            index_names: tuple[str, ...] | None = None, show_arrays: bool = True, kind: str | None = None) -> None:
    """Raise Fail unless got has the promised kind and shape and ~= want (first differing element shown)."""
    if kind is not None:
        check_kind(what, got, kind, inputs, note)
    want = np.asarray(want, dtype=np.int64 if exact else np.float64)
    try:
        g = as_numpy(got, integer=exact)
    except Exception:
        raise Fail(f"{what}: returned {type(got).__name__} {fmt_array(got)}, expected an array of shape "
                   f"{list(want.shape)}{note}{fmt_inputs(inputs)}") from None
    if g.shape != want.shape:
        raise Fail(f"{what}: returned shape {list(g.shape)}, expected {list(want.shape)}{note}"
                   f"{fmt_inputs(inputs)}\ngot:\n  {fmt_array(g)}\nexpected:\n  {fmt_array(want)}")
    bad = g != want if exact else ~np.isclose(g, want, rtol=RTOL, atol=ATOL)
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
# the rules of an exercise, checked on the source (with line numbers) and while the answer runs


@dataclass(frozen=True)
class Rule:
    why: str = "write it yourself: your answer may not use minisapo (that is what it is compared with)"
    loops: bool = False  # "with loops": only the calls on the lists below, no vectorised indexing
    library: tuple[str, ...] = ()  # minisapo modules the answer may use; ("*",): all of them (plug-ins)

    def library_ok(self, module: str) -> bool:
        return "*" in self.library or module in self.library


NO_LIBRARY = Rule()
PLUGIN = Rule(why="a plug-in runs inside minisapo's RL step: minisapo is fine here", library=("*",))

# "with loops": what an answer may call. Everything else (cumprod, prod, sum, gather, one_hot, matmul, triu,
# numpy, itertools, functools, ...) is a FAIL that names the line.
LOOP_BUILTINS = {"range", "len", "enumerate", "zip", "reversed", "sorted", "min", "max", "abs", "sum", "round",
                 "float", "int", "bool", "list", "tuple", "dict", "set", "str", "isinstance", "print", "all", "any",
                 "divmod", "pow", "iter", "next", "repr", "map", "filter", "NotImplementedError", "ValueError"}
LOOP_MATH = {"sqrt", "log", "log2", "log10", "exp", "isclose", "isfinite", "isnan", "isinf", "floor", "ceil", "fabs",
             "pow", "copysign"}
LOOP_TORCH = {  # torch functions and tensor methods
    "zeros", "zeros_like", "ones", "ones_like", "empty", "empty_like", "full", "full_like", "tensor", "as_tensor",
    "is_tensor", "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor",
    "__getitem__", "__setitem__", "__get__", "__len__", "__iter__", "__bool__", "__float__", "__int__", "__index__",
    "__format__", "__repr__", "__str__", "__contains__", "__hash__", "item", "tolist", "size", "dim", "numel",
    "unbind", "view", "reshape", "unsqueeze", "squeeze", "clone", "detach", "contiguous", "float", "double", "long",
    "int", "bool", "to", "cpu", "type", "type_as", "fill_", "zero_", "copy_", "is_floating_point",
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "remainder", "fmod", "neg", "pow", "abs", "exp",
    "log", "log2", "sqrt", "minimum", "maximum", "clamp", "clamp_min", "clamp_max", "clip", "where", "isnan",
    "isfinite", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "logical_xor",
    "add_", "sub_", "mul_", "div_", "neg_",
} | {f"__{op}__" for op in ("add", "sub", "mul", "truediv", "div", "floordiv", "mod", "pow", "neg", "pos", "abs",
                             "and", "or", "xor", "invert", "eq", "ne", "lt", "le", "gt", "ge")} \
  | {f"__{p}{op}__" for p in ("r", "i") for op in ("add", "sub", "mul", "truediv", "div", "floordiv", "mod", "pow",
                                                    "and", "or", "xor")}
PY_METHODS = {"append", "extend", "insert", "pop", "get", "setdefault", "items", "keys", "values", "index", "count",
              "copy", "update", "add", "remove", "discard", "clear", "sort", "reverse", "join", "is_integer"}
# never, in any exercise: running code from a string, walking the interpreter's frames or objects, switching
# off the checker's watch or its clock
DENIED = {"eval", "exec", "compile", "_getframe", "setprofile", "settrace", "get_objects", "get_referrers",
          "get_referents", "addaudithook", "alarm", "setitimer", "signal"}
INTROSPECTION = {"__dict__", "__globals__", "__builtins__", "__code__", "__subclasses__", "__closure__", "__bases__",
                 "__mro__", "f_globals", "f_locals", "f_back", "f_builtins", "tb_frame", "gi_frame", "cr_frame"}


# what a submission may not import, open or run: this checker (and whatever the teacher's grader adds)
PROTECTED_FILES: set[str] = {str(CHECKER)}
PROTECTED_DIRS: list[str] = []
PROTECTED_NAMES = {"exercise_checks", "__main__"}


def protect(path: str | Path, module_name: str | None = None) -> None:
    """Add a file or a folder (and a module name) to what a submission may not import, open or run."""
    path = Path(path).resolve()
    if path.is_dir():
        PROTECTED_DIRS.append(str(path) + os.sep)
    else:
        PROTECTED_FILES.add(str(path))
    if module_name:
        PROTECTED_NAMES.add(module_name)


def is_protected(filename: str) -> bool:
    if not filename or filename.startswith("<"):
        return False
    path = os.path.realpath(filename)
    return path in PROTECTED_FILES or any(path.startswith(d) for d in PROTECTED_DIRS)


def library_module(filename: str) -> str | None:
    """'minisapo.sid.trie' for .../minisapo/sid/trie.py; None outside the library."""
    path = Path(os.path.realpath(filename)) if filename and not filename.startswith("<") else None
    if path is None or LIBRARY not in path.parents:
        return None
    return ".".join(("minisapo",) + path.relative_to(LIBRARY).with_suffix("").parts).replace(".__init__", "")


# ----------------------------------------------------------------------------------------------
# the source: what a reader of the answer sees, with line numbers


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


def _banned_object(obj, rule: Rule, own_module: str) -> str | None:
    """Why a global an answer refers to is not allowed, or None."""
    if inspect.ismodule(obj):
        name = obj.__name__
        if name.split(".")[0] == "minisapo" and not rule.library_ok(name):
            return f"the library module `{name}`"
        if name in PROTECTED_NAMES or is_protected(getattr(obj, "__file__", "") or ""):
            return f"the checker module `{name}`"
        return None
    mod = getattr(obj, "__module__", None) or ""
    if mod == own_module:
        return None
    if mod.split(".")[0] == "minisapo" and not rule.library_ok(mod):
        return f"the library's `{mod}.{getattr(obj, '__name__', '?')}`"
    code = getattr(obj, "__code__", None)
    if mod in PROTECTED_NAMES or (code is not None and is_protected(code.co_filename)):
        return f"the checker's `{getattr(obj, '__name__', '?')}`"
    return None


def _loop_call_problem(node: ast.Call, glob: dict, local_defs: set[str]) -> str | None:
    """Under "with loops": why this call is not on the lists, or None."""
    f = node.func
    if isinstance(f, ast.Name):
        if f.id in local_defs:
            return None
        if f.id in glob:
            obj = glob[f.id]
            if inspect.isfunction(obj) or inspect.isclass(obj):
                if getattr(obj, "__module__", "") == glob.get("__name__"):
                    return None
            if obj is torch or obj is math:
                return None
            owner = getattr(obj, "__module__", "") or ""
            if owner.split(".")[0] == "torch" and getattr(obj, "__name__", "") in LOOP_TORCH:
                return None
            if owner == "math" and getattr(obj, "__name__", "") in LOOP_MATH:
                return None
            return f"`{f.id}` ({owner + '.' if owner else ''}{getattr(obj, '__name__', f.id)})"
        return None if f.id in LOOP_BUILTINS else f"`{f.id}`"
    if isinstance(f, ast.Attribute):
        base = f.value
        if isinstance(base, ast.Name) and base.id in glob and inspect.ismodule(glob[base.id]):
            module = glob[base.id]
            ok = {"torch": LOOP_TORCH, "math": LOOP_MATH}.get(module.__name__, set())
            return None if f.attr in ok else f"`{base.id}.{f.attr}`"
        if isinstance(base, ast.Name) and base.id in glob and inspect.isclass(glob[base.id]):
            return None
        return None if f.attr in LOOP_TORCH | PY_METHODS else f"`.{f.attr}`"
    return None


def rule_problems(fn, rule: Rule, module) -> list[str]:
    """What the source of `fn` and of the functions of the answers' file it uses (transitively) breaks."""
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

        local_defs = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        local_defs |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Lambda)
                       for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.For, ast.While, ast.comprehension)):
                has_loop = True
            if isinstance(node, ast.Attribute) and node.attr in INTROSPECTION:
                problems.append(f"`{node.attr}` ({where(node)})")
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                if node.id in ("eval", "exec", "compile", "__import__", "globals", "vars"):
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
                for n in names:
                    if n.split(".")[0] == "minisapo" and not rule.library_ok(n):
                        problems.append(f"an import of {n} ({where(node)})")
                    elif n.split(".")[0] in PROTECTED_NAMES:
                        problems.append(f"an import of the checker ({where(node)})")
            if rule.loops and isinstance(node, ast.Call):
                bad = _loop_call_problem(node, glob, local_defs)
                if bad:
                    problems.append(f"{bad}, not on the list of what this exercise may call ({where(node)})")
    if rule.loops and not has_loop and not problems:
        problems.append("no loop at all (the exercise asks for plain `for` loops)")
    return list(dict.fromkeys(problems))


# ----------------------------------------------------------------------------------------------
# while the answer runs: a profile function sees every Python function that starts and every C function
# the answer's file calls; with loop rules a torch function mode sees every torch operation


def _basic_index(idx) -> bool:
    """Numbers, slices, None and ...: one element or a slice at a time (no tensor or list of indices)."""
    for x in idx if isinstance(idx, tuple) else (idx,):
        if x is None or x is Ellipsis or isinstance(x, (int, slice)):
            continue
        if isinstance(x, torch.Tensor) and x.dim() == 0 and not x.is_floating_point() and x.dtype != torch.bool:
            continue
        return False
    return True


def _c_function_ok(fn) -> bool:
    """Under loop rules: may the answer's own code call this C function? (torch's: the torch mode decides)"""
    owner = getattr(fn, "__self__", None)
    module = getattr(fn, "__module__", None) or ""
    if isinstance(owner, torch.Tensor) or module.split(".")[0] == "torch":
        return True
    name = getattr(fn, "__name__", "")
    if owner is builtins:
        return name in LOOP_BUILTINS
    if owner is math:
        return name in LOOP_MATH
    return type(owner) in (list, dict, set, tuple, str, int, float, bool)


class Watch:
    """The rules of one call of an answer. `problem` is the first rule it broke (None: none)."""

    def __init__(self, rule: Rule, own_file: Path):
        self.rule, self.own = rule, os.path.realpath(own_file)
        self.problem: str | None = None
        self.kinds: dict = {}  # code object -> "own" | "checker" | "library" | "torch" | "other" | "safe"

    def kind(self, code) -> str:
        k = self.kinds.get(code)
        if k is None:
            name = code.co_filename
            if code in SAFE_CODE:
                k = "safe"
            elif name and os.path.realpath(name) == self.own:
                k = "own"
            elif is_protected(name):
                k = "checker"
            elif library_module(name):
                k = "library"
            elif name and os.path.realpath(name).startswith(str(TORCH_DIR)):
                k = "torch"
            else:
                k = "other"
            self.kinds[code] = k
        return k

    def own_frame(self, frame):
        while frame is not None and self.kind(frame.f_code) != "own":
            frame = frame.f_back
        return frame

    def broke(self, what: str, frame=None) -> None:
        if self.problem is None:
            frame = self.own_frame(frame)
            where = ""
            if frame is not None:
                line = (inspect.getframeinfo(frame).code_context or [""])[0].strip()
                where = f" (line {frame.f_lineno}: `{line}`)"
            self.problem = f"{what}{where}"
        raise _RuleBroken(self.problem)

    def profile(self, frame, event, arg):
        if event == "call":
            k = self.kind(frame.f_code)
            if k == "checker":
                self.broke(f"it ran the checker's own `{frame.f_code.co_name}` "
                           f"({Path(frame.f_code.co_filename).name})", frame.f_back)
            if k == "library":
                module = library_module(frame.f_code.co_filename)
                if not self.rule.library_ok(module):
                    self.broke(f"the library's `{module}.{frame.f_code.co_name}` ran", frame.f_back)
            elif k == "other" and self.rule.loops and frame.f_back is not None and self.kind(frame.f_back.f_code) == "own":
                module = frame.f_globals.get("__name__", "?")
                if module in ("warnings", "linecache"):  # a warning being shown, not a call of the answer's
                    return
                self.broke(f"`{module}.{frame.f_code.co_name}` was called, which is not on the list of what this "
                           "exercise may call", frame.f_back)
        elif event == "c_call" and self.kind(frame.f_code) == "own":
            name = getattr(arg, "__name__", "")
            if name in DENIED:
                self.broke(f"`{name}` was called", frame)
            if self.rule.loops and not _c_function_ok(arg):
                owner = getattr(arg, "__self__", None)
                owner = getattr(owner, "__name__", type(owner).__name__)
                self.broke(f"`{owner}.{name}` was called, which is not on the list of what this exercise may call",
                           frame)

    def check_import(self, name: str, fromlist) -> None:
        top = name.split(".")[0]
        if top in PROTECTED_NAMES:
            self.broke(f"it imports the checker (`{name}`)", sys._getframe(2))
        if top == "minisapo":
            wanted = [f"{name}.{f}" for f in fromlist or ()] or [name]
            bad = [w for w in wanted if not self.rule.library_ok(w) and not (w == "minisapo" and fromlist)]
            if bad:
                self.broke(f"it imports `{bad[0]}`", sys._getframe(2))


class _TorchRules(TorchFunctionMode):
    """Loop rules: every torch operation must be on the list, and indexing takes numbers and slices only."""

    def __init__(self, watch: Watch):
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name not in LOOP_TORCH:
            self.watch.broke(f"`{name}` was called, which is not on the list of what this exercise may call",
                             sys._getframe(1))
        if name in ("__getitem__", "__setitem__") and len(args) > 1 and not _basic_index(args[1]):
            self.watch.broke("indexing with a tensor or a list of indices (vectorised: index one position at a "
                             "time, with numbers and slices)", sys._getframe(1))
        return func(*args, **(kwargs or {}))


_WATCHES: list[Watch] = []
_real_import, _real_import_module = builtins.__import__, importlib.import_module


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    if _WATCHES and level == 0:
        _WATCHES[-1].check_import(name, fromlist)
    return _real_import(name, globals, locals, fromlist, level)


def _import_module(name, package=None):
    if _WATCHES:
        _WATCHES[-1].check_import(name, ())
    return _real_import_module(name, package)


def _audit(event, args):
    if event == "open" and _WATCHES and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = Path(os.fsdecode(args[0]))
        source = path.parent.parent / (path.name.split(".")[0] + ".py") if path.parent.name == "__pycache__" else path
        if os.path.realpath(source) == _WATCHES[-1].own:  # the answers' own file (and its .pyc)
            return
        if is_protected(str(path)) or is_protected(str(source)):
            _WATCHES[-1].broke(f"it opened {path.name}, a file of the checker", sys._getframe(1))


def _on_alarm(*_):
    raise _Timeout()


def _codes(fn) -> set:
    """The code objects of a function, a method or a class (and the ones nested in them)."""
    out, todo = set(), []
    if inspect.isclass(fn):
        todo += [v.__code__ for v in vars(fn).values() if hasattr(v, "__code__")]
    elif hasattr(fn, "__code__"):
        todo.append(fn.__code__)
    while todo:
        c = todo.pop()
        out.add(c)
        todo += [k for k in c.co_consts if isinstance(k, types.CodeType)]
    return out


SAFE_CODE: set = set()  # the checker's code that runs while an answer runs: the watch itself (filled in below)
sys.addaudithook(_audit)  # acts only while an answer runs (_WATCHES), and only on the checker's files


@contextlib.contextmanager
def watching(rule: Rule, own_file: Path):
    """Run the block under `rule`: yields the Watch; afterwards `watch.problem` says what was broken."""
    watch = Watch(rule, Path(own_file))
    mode = _TorchRules(watch) if rule.loops else contextlib.nullcontext()
    old = sys.getprofile()
    _WATCHES.append(watch)
    builtins.__import__, importlib.import_module = _import, _import_module
    try:
        with mode:
            sys.setprofile(watch.profile)
            threading.setprofile(watch.profile)
            try:
                yield watch
            finally:
                intact = sys.getprofile() == watch.profile
                sys.setprofile(old)
                threading.setprofile(None)
                if not intact and watch.problem is None:
                    watch.problem = "it switched off the checker's watch (sys.setprofile)"
    finally:
        builtins.__import__, importlib.import_module = _real_import, _real_import_module
        _WATCHES.pop()


SAFE_CODE.update(*(_codes(f) for f in (Rule, Watch, _TorchRules, _import, _import_module, _audit, _on_alarm, _basic_index,
                                        _c_function_ok, is_protected, library_module, watching.__wrapped__)))


def fingerprint() -> dict:
    """Which object every name of torch, numpy, math, builtins and the checker's modules is bound to: an
    answer that rebinds one (to fool a comparison) is caught by `tampered`."""
    spaces = {"builtins": builtins, "math": math, "numpy": np, "torch": torch, "torch.Tensor": torch.Tensor,
              "torch.TensorBase": getattr(torch._C, "TensorBase", None) or torch._C._TensorBase,
              "torch.nn.functional": torch.nn.functional}
    for name, mod in list(sys.modules.items()):
        if mod is not None and name in PROTECTED_NAMES and is_protected(getattr(mod, "__file__", "") or ""):
            spaces[name] = mod
            spaces.update({f"{name}.{k}": v for k, v in vars(mod).items()
                           if inspect.isclass(v) and getattr(v, "__module__", None) == mod.__name__})
    return {(s, k): id(v) for s, obj in spaces.items() for k, v in list(vars(obj).items())
            if not (s == "builtins" and k == "__import__")}


def tampered(before: dict) -> list[str]:
    now = fingerprint()
    return [f"{s}.{k}" for (s, k), i in before.items() if now.get((s, k), i) != i]


# ================================================================================================
# calling an answer


@dataclass
class Ctx:
    sol: object  # the answers' module
    sol_path: Path
    number: int
    rule: Rule = NO_LIBRARY
    rng: np.random.Generator | None = None  # hidden checks: their random inputs
    seed: int | None = None
    _checked: set = field(default_factory=set)

    def fn(self, name: str) -> Callable:
        """The answer function `name`, after checking its source against the exercise's rule."""
        f = getattr(self.sol, name, None)
        if f is None or not callable(f):
            raise Fail(f"{self.sol_path.name} has no function `{name}` (keep the names of the stubs)")
        if name not in self._checked:
            problems = rule_problems(f, self.rule, self.sol)
            if problems:
                raise Fail(f"rule broken: `{name}` uses " + "; ".join(problems) + f".\n{self.why()}")
            self._checked.add(name)
        return f

    def why(self) -> str:
        return f"{self.rule.why[0].upper()}{self.rule.why[1:]} (EXERCISES.md, exercise {self.number})."

    @contextlib.contextmanager
    def watch(self):
        """Run library code that calls the answer (a plug-in) under this part's rule; a broken rule is a Fail."""
        try:
            with watching(self.rule, self.sol_path) as w:
                try:
                    yield
                except _RuleBroken:
                    pass
        except NotImplementedError as e:
            raise Todo(str(e) or "not written yet") from None
        if w.problem:
            raise Fail(f"rule broken while your answer ran: {w.problem}.\n{self.why()}")

    def call(self, name: str, inputs: dict, *, show: dict | None = None, shared: tuple = ()):
        """Call answer `name` with `inputs` (positional, in order) -> (result, note).

        The answer gets copies; `inputs` stay the originals, so expected values come from them. `note` says
        which inputs the answer changed in place (empty if none); a crash is a Fail that shows the inputs
        (or `show`). Inputs named in `shared` (a tokenizer, the answer's own trie) are passed as they are.
        """
        f = self.fn(name)
        passed = {k: v if k in shared else snapshot(v) for k, v in inputs.items()}
        shown = show if show is not None else inputs
        out, error = None, None
        with watching(self.rule, self.sol_path) as w:
            try:
                out = f(*passed.values())
            except _RuleBroken:
                pass
            except (_Timeout, Todo, Fail):
                raise
            except Exception as e:
                error = e
        if w.problem:
            raise Fail(f"rule broken while `{name}` ran: {w.problem}.\n{self.why()}")
        if isinstance(error, NotImplementedError):
            raise Todo(str(error) or f"`{name}` is not written yet")
        if error is not None:
            raise Fail(self.crash(name, error) + fmt_inputs(shown))
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


SAFE_CODE.update(_codes(Ctx.watch.__wrapped__))


def written(ctx: Ctx, *names: str) -> None:
    """A Todo unless every function in `names` is written (before library code calls them as plug-ins)."""
    for name in names:
        if is_stub(ctx.fn(name)):
            raise Todo(f"`{name}` is not written yet")


def unchanged(note: str, name: str) -> None:
    """After the outputs are right: an input changed in place is still a FAIL."""
    if note:
        raise Fail(f"`{name}` returns the right values but" + note.split(f"`{name}`", 1)[1])


# ================================================================================================
# small worlds built with the library (the checker may use it; answers may not)

WORDS = ("red blue green warm cold tea apple sky river stone light dark sweet sour soft loud quiet old new "
         "small large fresh dry wet").split()


def make_world(codes, sizes):
    """A SID table from codes (N, K) (repeated codes get a dedup token) and its tokenizer."""
    from minisapo.sid.table import SIDTable
    from minisapo.tokenizer import Tokenizer

    with contextlib.redirect_stdout(io.StringIO()):
        table = SIDTable.from_codes(np.asarray(codes), codebook_sizes=list(sizes))
        tok = Tokenizer.build([" ".join(WORDS)], table)
    return table, tok


def random_world(rng: np.random.Generator, K: int | None = None):
    """A random SID table with at least one collision (-> a dedup token) and its tokenizer."""
    K = int(rng.integers(2, 5)) if K is None else K
    sizes = [int(rng.integers(2, 5)) for _ in range(K)]
    N = int(rng.integers(8, 16))
    codes = np.stack([rng.integers(0, s, N) for s in sizes], 1)
    codes[1] = codes[0]  # a collision: those items get a dedup token
    return make_world(codes, sizes)


def random_blocks(rng, K: int, min_words: int = 0, max_words: int = 4) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(min_words, max_words + 1)))) for _ in range(K)]


def synthetic_batch(rng, groups: int = 3, G: int = 4, layout: str = "blocks_first"):
    """Real responses (built by the library's formatter, parsed by its grammar), ready for rl.score_rollouts."""
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


def score_with_plugin(ctx: Ctx, algo: str, spec: str, batch, G: int = 4) -> dict:
    """rl.score_rollouts with `--rl.advantage=spec` (loaded from the answers' file by minisapo, fresh), as an
    RL step calls it; the answer's code runs under the part's rule."""
    from minisapo import plugins, rl
    from minisapo.rl import rl_config

    responses, mask, parsed, targets, tok, K = batch
    plugins.forget()  # read the file as it is now
    out = io.StringIO()
    try:
        with ctx.watch(), contextlib.redirect_stdout(out):
            cfg = rl_config(algo, num_generations=G, advantage=spec)  # the plug-in is tried on an example here
            scored = rl.score_rollouts(responses, mask, parsed, targets, tok, cfg, K, dedup=True)
    except ValueError as e:
        raise Fail(f"as a plug-in (--rl.advantage={Path(spec.rsplit(':', 1)[0]).name}:{spec.rsplit(':', 1)[1]}, "
                   f"--algo={algo}): {e}") from None
    printed = out.getvalue().strip()
    scored["note"] = f"\n{printed}" if printed else ""
    return scored


# ================================================================================================
# the visible examples (their right outputs are written here; the grader adds hidden random inputs)


def visible_prefix_reward(ctx: Ctx) -> None:
    cases = [([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]],
              [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]),
             ([[0.0]], [[0.0]]), ([[1.0, 1.0]], [[1.0, 1.0]])]
    for m, want in cases:
        m = torch.tensor(m)
        got, note = ctx.call("prefix_reward", {"m": m})
        compare("prefix_reward(m)", got, want, {"m": m}, note=note, index_names=("row", "step"), kind="float")
        unchanged(note, "prefix_reward")


TOKEN_CREDIT_EXAMPLES = [  # steps, mask, advantages, step_token_mean -> expected
    ([[0, 0, 1, 2, -1], [-1, -1, -1, -1, -1]], [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], [0.5, -1.0], False,
     [[0.5, 0.5, 0.5, 0.5, 0.5], [-1.0, -1.0, -1.0, -1.0, 0.0]]),
    ([[0, 0, 1, 2, -1], [-1, -1, -1, -1, -1]], [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], [[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]],
     False, [[0.5, 0.5, -1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]),
    ([[0, 0, 1, 2, -1], [-1, -1, -1, -1, -1]], [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], [[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]],
     True, [[1 / 3, 1 / 3, -4 / 3, 8 / 3, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]),
    ([[0, 2, 2, 2, -1, -1], [1, 1, 0, 2, 2, 2]], [[1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]], [0.25, 2.0], True,
     [[0.25, 0.25, 0.25, 0.0, 0.25, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]]),
    ([[0, 2, 2, 2, -1, -1], [1, 1, 0, 2, 2, 2]], [[1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]],
     [[1.5, 0.5, -2.0], [-0.5, 1.0, 3.0]], False, [[1.5, -2.0, -2.0, 0.0, 0.0, 0.0], [1.0, 1.0, -0.5, 3.0, 3.0, 3.0]]),
    ([[0, 2, 2, 2, -1, -1], [1, 1, 0, 2, 2, 2]], [[1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]],
     [[1.5, 0.5, -2.0], [-0.5, 1.0, 3.0]], True, [[2.25, -1.5, -1.5, 0.0, 0.0, 0.0], [1.0, 1.0, -1.0, 2.0, 2.0, 2.0]]),
]


def visible_token_credit(ctx: Ctx) -> None:
    for steps, mask, adv, stm, want in TOKEN_CREDIT_EXAMPLES:
        inputs = {"advantages": torch.tensor(adv), "steps": torch.tensor(steps), "mask": torch.tensor(mask).bool(),
                  "step_token_mean": stm}
        got, note = ctx.call("token_advantages_loops", inputs)
        compare(f"token_advantages_loops(advantages {list(inputs['advantages'].shape)}, step_token_mean={stm})",
                got, want, inputs, note=note, index_names=("row", "token"), kind="float")
        unchanged(note, "token_advantages_loops")


# one small world (K = 3; items 0 and 1 share a code, so they get dedup tokens) and a few responses
EX3_CODES, EX3_SIZES = [[0, 1, 2], [0, 1, 2], [1, 0, 0], [2, 2, 1]], [3, 3, 3]
EX3_EXAMPLES = [  # item, thinking blocks, what is done to the response -> steps
    (2, ["red sky", "tea", "cold apple river"], "as built",
     [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, -1]),
    (0, ["warm", "", "old new"], "as built", [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, -1]),
    (1, ["sky", "soft", "dry"], "padded after <eos>", [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, -1, -1, -1]),
    (3, ["blue blue", "sour", "light"], "cut before <eos>", [0, 0, 0, 0, 0, 1, 1, 1]),
    (2, ["", "", ""], "tokens after <eos>", [0, 0, 0, 1, 1, 1, 2, 2, 2, -1, -1, -1, -1]),
]


def visible_interleaved(ctx: Ctx) -> None:
    from minisapo.reasoning import build_response

    table, tok = make_world(EX3_CODES, EX3_SIZES)
    K = table.num_levels
    for item, blocks, variant, want in EX3_EXAMPLES:
        resp = build_response(item, blocks, table, tok, "interleaved")
        if variant == "padded after <eos>":
            resp = resp + [tok.pad_id] * 2
        elif variant == "cut before <eos>":
            resp = resp[:8]
        elif variant == "tokens after <eos>":
            resp = resp + [tok.think_id, tok.sid_ids(table, item)[0], tok.eos_id]
        tokens = " ".join(f"[{t}]{tok.id_to_token(x)}" for t, x in enumerate(resp))
        got, note = ctx.call("interleaved_step_index", {"response": resp, "tokenizer": tok, "num_steps": K},
                             show={"response": tokens, "num_steps": K}, shared=("tokenizer",))
        compare(f"interleaved_step_index(response ({variant}), tokenizer, num_steps={K})", got, want,
                {"response": tokens}, exact=True, note=note, index_names=("token",), kind="ints")
        unchanged(note, "interleaved_step_index")


RANGE_EXAMPLES = [  # rewards, group_size -> advantages
    ([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5], 4,
     [0.5 / 1.0001, -0.5 / 1.0001, -0.5 / 1.0001, 0.5 / 1.0001, 0.0, 0.0, 0.0, 0.0]),
    ([[1.0, 0.2], [0.0, 0.2], [0.0, 0.2], [0.0, 0.2], [0.25, 1.0], [0.75, 0.0], [0.5, 0.5], [0.25, 0.0]], 4,
     [[0.75 / 1.0001, 0.0], [-0.25 / 1.0001, 0.0], [-0.25 / 1.0001, 0.0], [-0.25 / 1.0001, 0.0],
      [-0.1875 / 0.5001, 0.625 / 1.0001], [0.3125 / 0.5001, -0.375 / 1.0001], [0.0625 / 0.5001, 0.125 / 1.0001],
      [-0.1875 / 0.5001, -0.375 / 1.0001]]),
]


def visible_range_function(ctx: Ctx) -> None:
    for r, G, want in RANGE_EXAMPLES:
        inputs = {"rewards": torch.tensor(r), "group_size": G}
        got, note = ctx.call("range_advantages", inputs)
        compare(f"range_advantages(rewards {list(inputs['rewards'].shape)}, group_size={G})", got, want, inputs,
                note=note, index_names=("row", "column"), kind="float")
        unchanged(note, "range_advantages")


def hand_numbers(ctx: Ctx) -> dict:
    """EX4_ONE_HIT_OF_8, filled in: {"group": {"hit": x, "miss": y}, "range": {...}} as floats."""
    slot = getattr(ctx.sol, "EX4_ONE_HIT_OF_8", None)
    if slot is None:
        raise Fail(f"{ctx.sol_path.name} has no EX4_ONE_HIT_OF_8 (keep the answer slot of the stub)")
    out = {}
    for scale in ("group", "range"):
        for who in ("hit", "miss"):
            try:
                v = slot[scale][who]
            except (KeyError, TypeError, IndexError):
                raise Fail(f'EX4_ONE_HIT_OF_8["{scale}"]["{who}"] is missing (keep the slot\'s layout)') from None
            if v is None or v is Ellipsis:
                raise Todo(f'fill in EX4_ONE_HIT_OF_8["{scale}"]["{who}"] (your hand computation)')
            try:
                out.setdefault(scale, {})[who] = float(v)
            except (TypeError, ValueError):
                raise Fail(f'EX4_ONE_HIT_OF_8["{scale}"]["{who}"] = {v!r} is not a number') from None
    return out


def visible_range_by_hand(ctx: Ctx) -> None:
    numbers = hand_numbers(ctx)
    for scale, v in numbers.items():
        if not (math.isfinite(v["hit"]) and math.isfinite(v["miss"]) and v["hit"] > 0 > v["miss"]):
            raise Fail(f'EX4_ONE_HIT_OF_8["{scale}"] = {v}: the hit is above the group mean (advantage > 0) and '
                       "a miss below it (< 0). (The numbers themselves are checked by your teacher's grader.)")


def visible_range_plugin(ctx: Ctx) -> None:
    written(ctx, "range_advantages")
    spec = f"{ctx.sol_path}:range_advantages"
    for algo in ("sapo", "grpo"):  # step rewards (B, K), then one exact-match reward per response (B,)
        scored = score_with_plugin(ctx, algo, spec, synthetic_batch(np.random.default_rng(4)))
        got, note = ctx.call("range_advantages", {"rewards": scored["rewards"], "group_size": 4})
        compare(f"the plug-in's advantages in rl.score_rollouts (--algo={algo}) vs range_advantages(rewards, 4)",
                scored["advantages"], as_numpy(got), {"rewards": scored["rewards"]}, note=scored["note"], kind="float")


REWARD_TO_GO_EXAMPLES = [  # advantages, gamma -> expected
    ([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], 0.0, [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]),
    ([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], 0.5, [[2.75, 3.5, 3.0], [0.5, 0.0, 2.0]]),
    ([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], 1.0, [[6.0, 5.0, 3.0], [1.5, 1.0, 2.0]]),
    ([[-2.0]], 0.7, [[-2.0]]),
]


def visible_reward_to_go(ctx: Ctx) -> None:
    for adv, gamma, want in REWARD_TO_GO_EXAMPLES:
        inputs = {"advantages": torch.tensor(adv), "gamma": gamma}
        got, note = ctx.call("reward_to_go", inputs)
        compare(f"reward_to_go(advantages, gamma={gamma})", got, want, inputs, note=note,
                index_names=("row", "step"), kind="float")
        unchanged(note, "reward_to_go")


def step_gamma(ctx: Ctx) -> float:
    gamma = getattr(ctx.sol, "STEP_GAMMA", None)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
        raise Fail(f"STEP_GAMMA = {gamma!r}: the discount the plug-in uses, a number in (0, 1] (keep the slot of "
                   "the stub; 0 would be plain SAPO)")
    return float(gamma)


def visible_reward_to_go_plugin(ctx: Ctx) -> None:
    from minisapo import rl

    written(ctx, "reward_to_go", "step_reward_to_go")
    gamma = step_gamma(ctx)
    scored = score_with_plugin(ctx, "sapo", f"{ctx.sol_path}:step_reward_to_go", synthetic_batch(np.random.default_rng(6)))
    sapo = rl.step_advantages(scored["rewards"], 4, "group")
    got, note = ctx.call("reward_to_go", {"advantages": sapo, "gamma": gamma})
    compare(f"the plug-in's advantages in rl.score_rollouts (--algo=sapo) vs reward_to_go(SAPO's step "
            f"advantages, STEP_GAMMA={gamma})", scored["advantages"], as_numpy(got), {"rewards": scored["rewards"]},
            note=scored["note"], index_names=("row", "step"), kind="float")


NDCG_EXAMPLES = [  # ranked, target, k -> hit, ndcg
    ([], 3, 1, 0.0, 0.0), ([7], 7, 1, 1.0, 1.0), ([4, 9, 2], 9, 1, 0.0, 0.0),
    ([4, 9, 2], 9, 2, 1.0, 0.6309297535714575), ([4, 9, 2], 2, 3, 1.0, 0.5), ([4, 9, 2], 5, 3, 0.0, 0.0),
    ([4, 9, 2], 4, 10, 1.0, 1.0),
]


def check_scalar(ctx: Ctx, name: str, args: dict, want: float) -> None:
    got, note = ctx.call(name, args)
    call = f"{name}(ranked, target={args['target']}, k={args['k']})"
    check_kind(call, got, "number", args, note)
    if not (math.isfinite(got) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)):
        raise Fail(f"{call}: got {got:.9g}, expected {want:.9g}{note}{fmt_inputs(args)}")
    unchanged(note, name)


def visible_hit(ctx: Ctx) -> None:
    for ranked, target, k, hit, _ in NDCG_EXAMPLES:
        check_scalar(ctx, "hit_at_k", {"ranked": ranked, "target": target, "k": k}, hit)


def visible_ndcg(ctx: Ctx) -> None:
    for ranked, target, k, _, ndcg in NDCG_EXAMPLES:
        check_scalar(ctx, "ndcg_at_k", {"ranked": ranked, "target": target, "k": k}, ndcg)


KMEANS_EXAMPLES = [  # x, centroids -> codes, new centroids, residual
    # nearest by squared distance (row 1 is closer to centroid 1 by |.| distance)
    ([[0.0, 0.0], [2.0, 2.0], [0.1, 0.0]], [[1.0, 1.0], [1.8, 0.0]],
     [0, 0, 0], [[0.7, 2 / 3], [1.8, 0.0]], [[-0.7, -2 / 3], [1.3, 4 / 3], [-0.6, -2 / 3]]),
    # exact ties: the lowest index
    ([[0.0, 0.0], [3.0, 3.0]], [[1.0, 0.0], [0.0, 1.0]], [0, 0], [[1.5, 1.5], [0.0, 1.0]], [[-1.5, -1.5], [1.5, 1.5]]),
    # a centroid no row is close to keeps its place
    ([[1.0], [2.0], [4.0], [10.0]], [[1.5], [3.5], [50.0]], [0, 0, 1, 1], [[1.5], [7.0], [50.0]],
     [[-0.5], [0.5], [-3.0], [3.0]]),
]


def kmeans_outputs(ctx: Ctx, x, c):
    inputs = {"x": x, "centroids": c}
    got, note = ctx.call("kmeans_step", inputs)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise Fail(f"kmeans_step must return (codes, new_centroids, residual), got {describe(got)}"
                   f"{fmt_inputs(inputs)}")
    return got, note, inputs


def visible_assign(ctx: Ctx) -> None:
    for x, c, codes, _, _ in KMEANS_EXAMPLES:
        got, note, inputs = kmeans_outputs(ctx, torch.tensor(x), torch.tensor(c))
        compare("kmeans_step(x, centroids): codes", got[0], codes, inputs, exact=True, note=note,
                index_names=("row",), kind="long")


def visible_update(ctx: Ctx) -> None:
    for x, c, _, cen, _ in KMEANS_EXAMPLES:
        got, note, inputs = kmeans_outputs(ctx, torch.tensor(x), torch.tensor(c))
        compare("kmeans_step(x, centroids): new_centroids", got[1], cen, inputs, note=note,
                index_names=("centroid", "dim"), kind="float")
        unchanged(note, "kmeans_step")


def visible_residual(ctx: Ctx) -> None:
    for x, c, _, _, res in KMEANS_EXAMPLES:
        got, note, inputs = kmeans_outputs(ctx, torch.tensor(x), torch.tensor(c))
        compare("kmeans_step(x, centroids): residual", got[2], res, inputs, note=note, index_names=("row", "dim"),
                kind="float")


TRIE_SIDS = [[10, 110, 210], [10, 111, 210, 310], [10, 111, 210, 311], [11, 110, 212]]
TRIE_NEXT = [([], [10, 11]), ([10], [110, 111]), ([11], [110]), ([10, 111], [210]), ([10, 111, 210], [310, 311]),
             ([10, 110, 210], []), ([11, 110, 212], [])]
TRIE_IMPOSSIBLE = [[12], [10, 112], [11, 111], [10, 110, 210, 310], [10, 111, 212]]


def build(ctx: Ctx, sids, check_inputs: bool):
    trie, note = ctx.call("build_trie", {"sids": sids})
    if check_inputs:  # an input changed in place costs one part, not both
        unchanged(note, "build_trie")
    return trie


def next_of(ctx: Ctx, trie, prefix, sids):
    try:
        return ctx.call("next_tokens", {"trie": trie, "prefix": prefix}, show={"sids": sids, "prefix": prefix},
                        shared=("trie",))
    except Fail as e:
        raise Fail(f"next_tokens(trie, {prefix}) on a valid prefix: {e}") from None


def check_next(ctx: Ctx, trie, sids, prefix, want) -> None:
    got, note = next_of(ctx, trie, prefix, sids)
    check_kind(f"next_tokens(trie, prefix={prefix})", got, "ints", {"sids": sids}, note)
    if got != want:
        raise Fail(f"next_tokens(trie, prefix={prefix}): got {got!r}, expected {want} (sorted next token ids; "
                   f"[] after a complete SID){note}{fmt_inputs({'sids': sids})}")
    unchanged(note, "next_tokens")


def check_impossible(ctx: Ctx, trie, sids, prefix) -> None:
    f = ctx.fn("next_tokens")
    error, got = None, None
    with watching(ctx.rule, ctx.sol_path) as w:
        try:
            got = f(trie, list(prefix))
        except _RuleBroken:
            pass
        except Exception as e:
            error = e
    if w.problem:
        raise Fail(f"rule broken while `next_tokens` ran: {w.problem}.\n{ctx.why()}")
    if isinstance(error, NotImplementedError):
        raise Todo(str(error) or "`next_tokens` is not written yet")
    if isinstance(error, ValueError):
        return
    if error is not None:
        raise Fail(f"next_tokens(trie, {prefix}) raised {type(error).__name__}: {error}; no SID starts with this "
                   f"prefix, so it must raise ValueError{fmt_inputs({'sids': sids})}")
    raise Fail(f"next_tokens(trie, {prefix}) returned {got!r}; no SID starts with this prefix, so it must raise "
               f"ValueError (constrained decoding must never fall back to 'anything goes')"
               f"{fmt_inputs({'sids': sids})}")


def visible_trie_valid(ctx: Ctx) -> None:
    trie = build(ctx, TRIE_SIDS, check_inputs=True)
    for prefix, want in TRIE_NEXT:
        check_next(ctx, trie, TRIE_SIDS, prefix, want)


def visible_trie_impossible(ctx: Ctx) -> None:
    trie = build(ctx, TRIE_SIDS, check_inputs=False)
    for prefix in TRIE_IMPOSSIBLE:
        check_impossible(ctx, trie, TRIE_SIDS, prefix)


HAND_CASE = {  # EXERCISES.md works this one out by hand (ratio 1); the second case moves the ratio
    "matches": [[1.0, 0.0], [0.0, 0.0]],
    "steps": [[0, 0, 1, -1], [0, 1, -1, -1]],
    "mask": [[True, True, True, True], [True, True, True, False]],
    "logprobs": [[-1.0, -0.5, -0.2, -0.1], [-0.7, -0.3, -0.1, -2.0]],
    "epsilon": 0.2,
    "advantages": [[0.5 / (0.5 ** 0.5 + 1e-4), 0.0], [-0.5 / (0.5 ** 0.5 + 1e-4), 0.0]],
    "token_adv": [[0.375 / (0.5 ** 0.5 + 1e-4), 0.375 / (0.5 ** 0.5 + 1e-4), 0.0, 0.0],
                  [-0.5 / (0.5 ** 0.5 + 1e-4), 0.0, 0.0, 0.0]],
    "loss": -0.014729298651218414,
    "old_logprobs_moved": [[-0.7, -0.8, -0.2, 0.0], [-1.2, 0.1, -0.1, -2.0]],
    "loss_moved": 0.0656351,
}


def loss_outputs(ctx: Ctx, case):
    m, steps, mask, logp, old, eps = case
    inputs = {"matches": m, "steps": steps, "mask": mask, "logprobs": logp, "old_logprobs": old, "epsilon": eps}
    got, note = ctx.call("sapo_group_loss", inputs)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise Fail(f"sapo_group_loss must return (advantages, token_adv, loss), got {describe(got)}"
                   f"{fmt_inputs(inputs)}")
    return got, note, inputs


def hand_cases():
    h = HAND_CASE
    base = (torch.tensor(h["matches"]), torch.tensor(h["steps"]), torch.tensor(h["mask"]), torch.tensor(h["logprobs"]))
    return [(*base, torch.tensor(h["logprobs"]), h["epsilon"], h["loss"]),
            (*base, torch.tensor(h["old_logprobs_moved"]), h["epsilon"], h["loss_moved"])]


def visible_loss_advantages(ctx: Ctx) -> None:
    for *case, _ in hand_cases():
        got, note, inputs = loss_outputs(ctx, case)
        compare("sapo_group_loss: advantages", got[0], HAND_CASE["advantages"], inputs, note=note,
                index_names=("rollout", "step"), kind="float")
        unchanged(note, "sapo_group_loss")


def visible_loss_credit(ctx: Ctx) -> None:
    for *case, _ in hand_cases():
        got, note, inputs = loss_outputs(ctx, case)
        compare("sapo_group_loss: token_adv", got[1], HAND_CASE["token_adv"], inputs, note=note,
                index_names=("rollout", "token"), kind="float")


def visible_loss_value(ctx: Ctx) -> None:
    for *case, want in hand_cases():
        got, note, inputs = loss_outputs(ctx, case)
        compare("sapo_group_loss: loss", got[2], want, inputs, note=note, kind="loss")


# ================================================================================================
# the exercises


@dataclass
class Part:
    name: str
    points: int
    check: Callable[[Ctx], None]  # the visible examples
    rule: Rule | None = None  # None: the exercise's


@dataclass
class Exercise:
    number: int
    title: str
    difficulty: str  # easy | medium | hard
    minutes: int
    parts: list[Part]  # [] = an experiment: nothing to grade automatically
    rule: Rule = NO_LIBRARY

    @property
    def points(self) -> int:
        return sum(p.points for p in self.parts)


EXERCISES = [
    Exercise(1, "prefix-gated rewards, by hand", "easy", 10,
             [Part("prefix_reward", 5, visible_prefix_reward)],
             Rule("write it with plain loops: no cumprod, prod or any other vectorised shortcut, no minisapo",
                  loops=True)),
    Exercise(2, "per-token credit with loops", "medium", 30,
             [Part("token_advantages_loops", 15, visible_token_credit)],
             Rule("write it with loops over rows and positions: no gather/one_hot/scatter, no indexing with a "
                  "tensor of indices, no minisapo", loops=True)),
    Exercise(3, "the interleaved layout and step_index", "medium", 20,
             [Part("interleaved_step_index", 10, visible_interleaved)],
             Rule("write the rule yourself: no reasoning.step_index, no minisapo (the tokenizer you are given is fine)",
                  library=("minisapo.tokenizer",))),
    Exercise(4, 'a new scale_rewards mode: "range"', "medium", 30,
             [Part("range_advantages", 5, visible_range_function),
              Part("EX4_ONE_HIT_OF_8 (by hand)", 3, visible_range_by_hand),
              Part("as a plug-in (--rl.advantage=...:range_advantages)", 2, visible_range_plugin, PLUGIN)]),
    Exercise(5, "make exact match sparser (experiment)", "easy", 30, []),
    Exercise(6, "let a step's reward also credit earlier steps", "medium", 25,
             [Part("reward_to_go", 6, visible_reward_to_go),
              Part("as a plug-in (--rl.advantage=...:step_reward_to_go)", 4, visible_reward_to_go_plugin, PLUGIN)]),
    Exercise(7, "how many SID levels? (experiment)", "easy", 20, []),
    Exercise(8, "hit@K and ndcg@K", "easy", 10,
             [Part("hit_at_k", 3, visible_hit), Part("ndcg_at_k", 7, visible_ndcg)],
             Rule("write it yourself: no minisapo.evaluate")),
    Exercise(9, "one step of one RQ-KMeans level", "medium", 25,
             [Part("assignment (codes)", 5, visible_assign), Part("centroid update", 7, visible_update),
              Part("residual", 3, visible_residual)],
             Rule("write it yourself: no minisapo.sid.rqkmeans")),
    Exercise(10, "the prefix trie", "medium", 20,
             [Part("next tokens of valid prefixes", 6, visible_trie_valid),
              Part("impossible prefixes raise ValueError", 4, visible_trie_impossible)],
             Rule("write it yourself: no minisapo.sid.SIDTrie")),
    Exercise(11, "the step-aligned loss on one group", "hard", 40,
             [Part("step advantages", 5, visible_loss_advantages), Part("per-token credit", 5, visible_loss_credit),
              Part("loss value", 5, visible_loss_value)],
             Rule("write it yourself: no minisapo.rl (step_advantages, token_advantages, policy_loss)")),
]
BY_NUMBER = {e.number: e for e in EXERCISES}

THINK_KEYS = ("1", "2", "3a", "3b", "4", "5", "6", "7", "8", "9", "10", "11")


# ================================================================================================
# grading


@dataclass
class PartResult:
    name: str
    status: str  # PASS | FAIL | TODO
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


class LoadError(Exception):
    """The answers' file could not be loaded (a syntax error, a crash, or it reached for the checker)."""


def load_solutions(path: str | Path, name: str = "solutions"):
    """Import the answers' file under the rules (no checker imports, opens or runs) and a time limit."""
    path = Path(path).resolve()
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise LoadError(f"cannot load answers from {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # so that inspect can read the source of its classes
    error = None
    with time_limit(TIME_LIMIT_S), contextlib.redirect_stdout(io.StringIO()):
        with watching(Rule(library=("*",)), path) as w:
            try:
                spec.loader.exec_module(mod)
            except _RuleBroken:
                pass
            except Exception as e:
                error = e
    if w.problem:
        raise LoadError(f"{path.name} may not import, open or run the checker: {w.problem}. No points.")
    if error is not None:
        raise LoadError("".join(traceback.format_exception(type(error), error, error.__traceback__, limit=-2)))
    return mod


@contextlib.contextmanager
def time_limit(seconds: int):
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():  # no limit
        yield
        return
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def grade(ex: Exercise, sol, sol_path: Path, hidden: dict | None = None, seed: int = 0,
          baseline: dict | None = None) -> Result:
    """Grade one exercise: each part's visible examples, then (the teacher's grader) its hidden check
    hidden[(number, part name)](ctx). `baseline` (a fingerprint) catches an answer that rebinds torch, numpy or
    checker functions."""
    if not ex.parts:
        return Result(ex, "EXPERIMENT", 0, 0, [])
    parts = []
    for i, part in enumerate(ex.parts):
        checks = [part.check] + ([hidden[(ex.number, part.name)]] if hidden is not None else [])
        status, message = "PASS", ""
        for check in checks:
            ctx = Ctx(sol, Path(sol_path), ex.number, part.rule or ex.rule, np.random.default_rng([seed, ex.number, i]),
                      seed)
            torch.manual_seed(seed)
            try:
                with time_limit(TIME_LIMIT_S):
                    check(ctx)
            except Todo as e:
                status, message = "TODO", str(e)
            except Fail as e:
                status, message = "FAIL", str(e)
            except _Timeout:
                status, message = "FAIL", f"took more than {TIME_LIMIT_S} s (an endless loop?)"
            except Exception:  # an output the check could not even read, or the library raised
                status, message = "FAIL", ("the check could not grade this part (your answer's output is unreadable, "
                                           "or the library raised):\n" + traceback.format_exc(limit=-3))
            if baseline is not None and status != "TODO":
                changed = tampered(baseline)
                if changed:
                    status, message = "FAIL", (f"your answers changed `{changed[0]}`, which the checker relies on: "
                                               "not graded")
            if status != "PASS":
                break
        parts.append(PartResult(part.name, status, part.points if status == "PASS" else 0, part.points, message))
    statuses = {p.status for p in parts}
    status = "FAIL" if "FAIL" in statuses else "TODO" if "TODO" in statuses else "PASS"
    return Result(ex, status, sum(p.points for p in parts), ex.points, parts)


def think_answers(sol) -> list[str]:
    answers = getattr(sol, "THINK_ANSWERS", None)
    if not isinstance(answers, dict):
        return []
    return [k for k in THINK_KEYS if isinstance(answers.get(k), str) and answers[k].strip()]


def indent(text: str, n: int) -> str:
    return textwrap.indent(text, " " * n)


def score_line(results: list[Result]) -> str:
    graded = [r for r in results if r.status != "EXPERIMENT"]
    n_pass = sum(r.status == "PASS" for r in graded)
    return (f"score: {n_pass}/{len(graded)} exercises, {sum(r.points for r in graded)}/"
            f"{sum(r.out_of for r in graded)} points")


def report(results: list[Result], sol, out=None, replay: str = "python tutorials/exercise_checks.py {n}",
           visible_only: bool = True) -> bool:
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
                tail = f": {msg}" if short and msg not in said else ""
                print(f"      {p.status:<4} {p.points:>2}/{p.out_of:<2}  {p.name}{tail}", file=out)
                if short:
                    said.add(msg)
                    continue
            if msg and msg not in said:
                print(indent(msg, 16 if len(r.parts) > 1 else 6), file=out)
                said.add(msg)
        if r.status == "FAIL":
            print(f"      replay: {replay.format(n=ex.number)}", file=out)
    filled = think_answers(sol)
    print(f"think answers: {len(filled)}/{len(THINK_KEYS)} filled in (THINK_ANSWERS; free text is read by your "
          "teacher, not graded here)", file=out)
    print(score_line(results) + (" (visible examples; your teacher's grader adds hidden random inputs)"
                                 if visible_only else ""), file=out)
    return all(r.status == "PASS" for r in graded)


def run(sol, sol_path: Path, numbers: list[int] | None = None, hidden: dict | None = None, seed: int = 0,
        out=None, replay: str = "python tutorials/exercise_checks.py {n}", baseline: dict | None = None):
    """Grade `numbers` (default: all) -> (full marks?, results). Used by main(), the teacher's grader and tests."""
    torch.set_num_threads(1)
    numbers = numbers or [e.number for e in EXERCISES]
    results = [grade(BY_NUMBER[n], sol, sol_path, hidden, seed, baseline) for n in numbers]
    return report(results, sol, out, replay, visible_only=hidden is None), results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exercises", nargs="*", type=int, help="exercise numbers (default: all)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.exercises if n not in BY_NUMBER]
    if unknown:
        parser.error(f"no exercise {unknown[0]}; the exercises are {', '.join(map(str, BY_NUMBER))}")
    sol_path = Path(os.environ.get("MINISAPO_SOLUTIONS") or DEFAULT_SOLUTIONS).resolve()
    t0 = time.time()
    print(f"answers: {sol_path}")
    baseline = fingerprint()
    try:
        sol = load_solutions(sol_path)
    except LoadError as e:
        graded = [BY_NUMBER[n] for n in (args.exercises or BY_NUMBER) if BY_NUMBER[n].parts]
        print(f"could not load your answers:\n{e}")
        print(f"score: 0/{len(graded)} exercises, 0/{sum(e.points for e in graded)} points")
        return 1
    ok, _ = run(sol, sol_path, args.exercises, baseline=baseline)
    print(f"(checked in {time.time() - t0:.1f} s)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
