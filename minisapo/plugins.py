"""Your own function in place of a built-in one: `package.module:function` or `path/to/file.py:function`.

RL uses it for `--rl.reward=` and `--rl.advantage=` (see rl.reward_function): the function is imported
once, tried on a small example, and every later call is checked (a tensor of the right shape, finite),
so a mistake is one line that names the option, never a failure deep inside a training step.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from pathlib import Path
from typing import Callable

import torch

from minisapo.files import NonFiniteError


def load_function(spec: str, key: str) -> Callable:
    """The function named by `module:function` or `file.py:function`; a ValueError naming `--key` otherwise."""
    mod, _, name = spec.rpartition(":")
    if not mod or not name:
        raise ValueError(f"--{key}={spec}: expected a built-in name, module:function or path/to/file.py:function")
    try:
        if mod.endswith(".py"):
            if not Path(mod).is_file():
                raise FileNotFoundError(f"no file {mod}")
            spec_ = importlib.util.spec_from_file_location(f"minisapo_plugin_{Path(mod).stem}", mod)
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(mod)
    except Exception as e:  # the user's module failed to import: say which and why, in one line
        raise ValueError(f"--{key}={spec}: importing {mod} failed ({type(e).__name__}: {e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--{key}={spec}: {mod} has no function {name!r}")
    return fn


def checked(fn: Callable, key: str, spec: str) -> Callable:
    """`fn`, wrapped so that every call checks its result: a tensor (B,) or (B, K) for an input of
    B rows (K its columns, if any), all finite (NaN or inf: a NonFiniteError, which the RL loop names the
    step of). An advantage that turns per-step rewards (B, K) into (B,) is allowed, with a one-line note
    the first time. Returned as float."""
    noted = []

    def call(x: torch.Tensor, *args):
        try:
            out = fn(x, *args)
        except Exception as e:
            raise ValueError(f"--{key}={spec} failed on an input of shape {tuple(x.shape)}: {type(e).__name__}: {e}") from None
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


# Plug-ins are tried on these per-step matches when a config is checked (config.check_rl): three groups of
# G = 4 rows, K = 3 steps; the last group is all equal (zero variance: a plug-in must not divide by a 0 std).
EXAMPLE_MATCHES = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]] * 2 + [[1, 0, 0]] * 4, dtype=torch.float)
EXAMPLE_GROUP = 4


@functools.lru_cache(maxsize=None)
def plugin(key: str, spec: str) -> Callable:
    """Load `spec` for option `key` (once per process, so its module state lives on); the checked function."""
    return checked(load_function(spec, key), key, spec)
