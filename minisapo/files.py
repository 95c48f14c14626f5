"""Files without torch: atomic writes, JSON, folder swaps, safe names, warnings, the NaN error class.

The bottom layer of the package (see README, "Code map"): the data, SID and tokenizer layers write
their files through these helpers without depending on torch or on run directories.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any


def warn(message: str) -> None:
    """One warning line on stderr (what a reader repaired or dropped, a lock taken over, ...)."""
    print(f"minisapo: warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# names: one path component, so everything a command writes stays under runs_dir / data_dir


def name_problem(name: str, key: str = "name") -> str | None:
    """Why `name` is not a plain folder name (one path component), with what to do; None when it is one.

    Refused: empty, `.`, `..`, anything with `/` or `\\`, absolute paths, control characters.
    """
    why = None
    if not isinstance(name, str) or not name.strip():
        why = "is empty"
    elif name in (".", ".."):
        why = "is not a folder name"
    elif "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        why = "contains a path separator"
    elif os.path.isabs(name) or name[1:2] == ":":
        why = "is an absolute path"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "contains a control character"
    if why is None:
        return None
    return f"{why}: a name is a single folder name such as --{key}=my_run (choose where it goes with --runs_dir / --data_dir)"


def check_name(name: str, key: str = "name") -> str:
    """`name` if it is a plain folder name (one path component), else a ValueError naming `key`."""
    why = name_problem(name, key)
    if why:
        raise ValueError(f"--{key}={name!r} {why}")
    return name


def same_path(a: str | Path, b: str | Path) -> bool:
    """True when a and b name the same place (after resolving `..` and symlinks)."""
    return Path(a).resolve() == Path(b).resolve()


def is_main_process() -> bool:
    """False on every torchrun rank but 0 (torchrun sets RANK), so only rank 0 writes files. The same answer
    as minisapo.distributed.is_main() there, read from the environment so this layer needs no torch."""
    return int(os.environ.get("RANK", "0")) == 0


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)`, then move the file into place with os.replace (never half a file).
    Under torchrun only rank 0 writes (the others read what it wrote)."""
    if not is_main_process():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def swap_dir(new: str | Path, out: str | Path) -> None:
    """Replace the folder `out` by the complete folder `new` (two renames; the old one is put back if the
    second fails), so a reader never sees a half-built folder and a failed build leaves `out` as it was."""
    new, out = Path(new), Path(out)
    if not out.exists():
        os.replace(new, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as pretty JSON, atomically."""
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def read_json(path: str | Path) -> Any:
    """The JSON in `path`; a file that is not valid JSON (or not text) is a ValueError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore or delete it") from None


class NonFiniteError(ValueError):
    """Training produced NaN or inf; the message names the stage and the step."""
