"""Your own function in place of a built-in one: `package.module:function` or `path/to/file.py:function`.

RL uses it for `--rl.reward=` and `--rl.advantage=` (see rl.reward_function): the function is imported
once (with a command line of its own: sys.argv is only the module's name), tried on a small example, and
every later call is checked (a real, finite tensor of the right shape on the input's device), so a mistake
is one line that names the option, never a failure deep inside a training step.

A run's config.json is data that people share, so a plug-in it names is never imported because of it
(`stored`): only when the command names it again (`trust`: `--rl.reward=...`, `--algo=sapo+reward=...`)
or with `--trust-plugins`. Evaluating a run never needs its plug-ins; RL from a run replaces them (--algo).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import torch

from minisapo.files import NonFiniteError

KEYS = ("rl.reward", "rl.advantage")  # the options that take a plug-in
_stored: dict[str, str] = {}  # plug-in spec -> the config.json that names it (not named by this command)
_trusted: set[str] = set()  # plug-in specs this command names itself
_trust_all = False  # --trust-plugins


def reset(trust_all: bool = False) -> None:
    """A new command: nothing stored or trusted yet; `trust_all` (--trust-plugins) loads every plug-in."""
    global _trust_all
    _stored.clear()
    _trusted.clear()
    _trust_all = trust_all


def is_plugin(spec) -> bool:
    return isinstance(spec, str) and ":" in spec


def trust(spec: str) -> None:
    """`spec` is named by the command itself (or by code): it may be imported."""
    if is_plugin(spec):
        _trusted.add(spec)
        _stored.pop(spec, None)


def stored(spec: str, where: str | Path) -> None:
    """`spec` was read from the file `where` (a run's config.json): not imported unless trusted."""
    if is_plugin(spec) and spec not in _trusted:
        _stored.setdefault(spec, str(where))


def may_load(spec: str) -> bool:
    return _trust_all or spec not in _stored


def load_function(spec: str, key: str) -> Callable:
    """The function named by `module:function` or `file.py:function`; a ValueError naming `--key` otherwise."""
    mod, _, name = spec.rpartition(":")
    if not mod or not name:
        raise ValueError(f"--{key}={spec}: expected a built-in name, module:function or path/to/file.py:function")
    argv, sys.argv = sys.argv, [mod]  # the plug-in sees a command line of its own, never minisapo's options
    try:
        if mod.endswith(".py"):
            if not Path(mod).is_file():
                raise FileNotFoundError(f"no file {mod}")
            spec_ = importlib.util.spec_from_file_location(f"minisapo_plugin_{Path(mod).stem}", mod)
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(mod)
    except SystemExit as e:
        raise ValueError(f"--{key}={spec}: the plug-in exited while {mod} was imported (SystemExit: {e.code}); "
                         f"a plug-in module must not call sys.exit or parse a command line when imported") from None
    except Exception as e:  # the user's module failed to import: say which and why, in one line
        raise ValueError(f"--{key}={spec}: importing {mod} failed ({type(e).__name__}: {e})") from None
    finally:
        sys.argv = argv
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--{key}={spec}: {mod} has no function {name!r}")
    return fn


def checked(fn: Callable, key: str, spec: str) -> Callable:
    """`fn`, wrapped so that every call checks its result: a real tensor (B,) or (B, K) for an input of
    B rows (K its columns, if any), on the input's device, all finite (NaN or inf: a NonFiniteError, which
    the RL loop names the step of). An advantage that turns per-step rewards (B, K) into (B,) is allowed,
    with a one-line note the first time. Returned as float."""
    noted = []

    def call(x: torch.Tensor, *args):
        try:
            out = fn(x, *args)
        except SystemExit as e:
            raise ValueError(f"--{key}={spec}: the plug-in exited when called (SystemExit: {e.code})") from None
        except Exception as e:
            raise ValueError(f"--{key}={spec} failed on an input of shape {tuple(x.shape)}: {type(e).__name__}: {e}") from None
        if torch.is_tensor(out) and (out.is_complex() or out.device != x.device):
            what = "complex numbers" if out.is_complex() else f"a tensor on device {out.device}"
            raise ValueError(f"--{key}={spec} returned {what} for an input on {x.device}: return a real tensor "
                             f"on the input's device")
        B = x.size(0)
        ok = torch.is_tensor(out) and (tuple(out.shape) == (B,) or (out.dim() == 2 and out.size(0) == B
                                                                     and (x.dim() == 1 or out.size(1) == x.size(1))))
        if not ok:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"--{key}={spec} returned {got} for an input of shape {tuple(x.shape)}: "
                             f"return a tensor of shape (B,) or (B, K)")
        if not torch.isfinite(out.float()).all():
            raise NonFiniteError(f"--{key}={spec} returned NaN or inf for an input of shape {tuple(x.shape)}")
        if key == "rl.advantage" and x.dim() == 2 and x.size(1) > 1 and out.dim() == 1 and not noted:
            noted.append(True)
            print(f"note: --{key}={spec} returned {tuple(out.shape)} for step rewards {tuple(x.shape)}: every step "
                  "of a response now gets the same advantage (a sequence-level advantage, as GRPO's)")
        return out.float()
    return call


# Plug-ins are tried on these per-step matches when a config is checked (RLConfig.problems): three groups of
# G = 4 rows, K = 3 steps; the last group is all equal (zero variance: a plug-in must not divide by a 0 std).
EXAMPLE_MATCHES = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]] * 2 + [[1, 0, 0]] * 4, dtype=torch.float)
EXAMPLE_GROUP = 4


def plugin(key: str, spec: str) -> Callable:
    """Load `spec` for option `key` (once per process, so its module state lives on); the checked function.
    A spec only read from a run's config.json (`stored`) is refused in one line naming the option and file."""
    if not may_load(spec):
        raise ValueError(f"--{key}={spec} is named in {_stored[spec]}, not on this command line: minisapo never "
                         f"runs code because a run folder names it; pass --{key}={spec} again (or --trust-plugins) "
                         f"if you trust that file")
    return _load(key, spec)


@functools.lru_cache(maxsize=None)
def _load(key: str, spec: str) -> Callable:
    return checked(load_function(spec, key), key, spec)


def forget() -> None:
    """Forget every plug-in loaded so far: the next use imports its file again (it changed since)."""
    _load.cache_clear()
