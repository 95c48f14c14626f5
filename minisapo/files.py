"""Files without torch: atomic writes, JSON, folder swaps, safe names, the folders minisapo may write, warnings,
the NaN error class.

The bottom layer of the package (see README, "Code map"): the data, SID and tokenizer layers write
their files through these helpers without depending on torch or on run directories.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any


def warn(message: str) -> None:
    """One warning line on stderr (what a reader repaired or dropped, a lock taken over, ...)."""
    print(f"minisapo: warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# settings: every stage's config dataclass lists its own problems (`problems()`, beside its fields)


def finite(x) -> bool:
    """A real number that is not inf or nan (a bool is not a number here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def at_least(cfg, **minimums: int):
    """(field, "must be >= lo") for each of `cfg`'s fields below its minimum: `problems()`'s common case."""
    for key, lo in minimums.items():
        if getattr(cfg, key) < lo:
            yield key, f"must be >= {lo}"


def refuse_problems(cfg, section: str, error: type[ValueError] = ValueError) -> None:
    """An `error` (a ValueError) `section.key=value: what to change` for the first of `cfg.problems()` (a config
    dataclass calls this in `__post_init__`; `config.validate` asks every section of a whole config the same
    way, with section "--data" and its ConfigError)."""
    for key, why in cfg.problems():
        raise error(f"{section}.{key}={getattr(cfg, key, None)!r}: {why}")


# ----------------------------------------------------------------------------------------------
# names: one path component, so everything a command writes stays under runs_dir / data_dir


MAX_NAME_BYTES = 200  # a name's longest UTF-8 form: every file minisapo makes from it stays under 255 bytes


def name_problem(name: str, key: str = "name") -> str | None:
    """Why `name` is not a plain folder name (one path component), with what to do; None when it is one.

    Refused: empty, `.`, `..`, anything with `/` or `\\`, absolute paths, control characters, bytes that are
    not UTF-8, more than MAX_NAME_BYTES bytes (the temporary files beside a folder add to its name).
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
    elif not _is_utf8(name):
        why = "contains a byte that is not UTF-8"
    elif len(name.encode()) > MAX_NAME_BYTES:
        why = f"is {len(name.encode())} bytes long, more than {MAX_NAME_BYTES}"
    if why is None:
        return None
    return f"{why}: a name is a single folder name such as --{key}=my_run (choose where it goes with --runs_dir / --data_dir)"


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # an undecodable byte of a command line or folder name (a lone surrogate)
        return False
    return True


def check_name(name: str, key: str = "name") -> str:
    """`name` if it is a plain folder name (one path component), else a ValueError naming `key`."""
    why = name_problem(name, key)
    if why:
        raise ValueError(f"--{key}={name!r} {why}")
    return name


def same_path(a: str | Path, b: str | Path) -> bool:
    """True when a and b name the same place (after resolving `..` and symlinks)."""
    return Path(a).resolve() == Path(b).resolve()


def env_int(var: str, default: int) -> int:
    """The whole number in environment variable `var` (`default` when unset); else a ValueError naming it."""
    value = os.environ.get(var, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{var}={value!r} is not a whole number: it is one of torchrun's variables (RANK, "
                         f"WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE); unset it, or start the command with torchrun") from None


def env_rank() -> tuple[int, int]:
    """(rank, world size) as torchrun describes them in RANK and WORLD_SIZE: (0, 1) in a plain process. Read here
    and in minisapo.distributed.init (which joins a process group exactly when WORLD_SIZE > 1), so every part of
    minisapo agrees on which process writes files; a RANK that is not in 0 .. WORLD_SIZE - 1 is a ValueError."""
    world, rank = env_int("WORLD_SIZE", 1), env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} with WORLD_SIZE={world}: RANK must be in 0 .. WORLD_SIZE - 1. These are "
                         f"torchrun's variables: unset them in a plain command, or start it with torchrun")
    return rank, world


def is_main_process() -> bool:
    """False on every torchrun rank but 0, so only rank 0 writes files (the others read what it wrote)."""
    return env_rank()[0] == 0


def pid_alive(pid: int) -> bool:
    """True when a process with this id is running (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, OverflowError):  # not a process id at all
        return False
    return True


# ----------------------------------------------------------------------------------------------
# writing: a temporary file or folder beside the target, named `.<target>.<kind>-<pid>`, then one rename

LEFTOVER = re.compile(r"\.(.+)\.(tmp|building|old)-(\d+)")  # a temporary beside its target (kind, writer's pid)


def temp_path(target: str | Path, kind: str = "tmp") -> Path:
    """Where the temporary file or folder for `target` goes: `.<name>.<kind>-<pid>` in the same folder."""
    target = Path(target)
    return target.parent / f".{target.name}.{kind}-{os.getpid()}"


def remove(path: str | Path) -> None:
    """Remove a file, a link (never what it points to) or a folder with everything in it; nothing if absent."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)`, then move the file into place with os.replace (never half a file). `tmp_path` is
    a new file that this call created in the same folder (O_EXCL: never through a link), removed again when
    `write` fails or the command is interrupted. Under torchrun only rank 0 writes (the others read it)."""
    if not is_main_process():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    remove(tmp)  # left by a killed process that had our pid
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)  # a link at `path` is replaced, not followed
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # e.g. a full disk mid-write: name the file
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def new_dir(path: str | Path) -> Path:
    """A new, empty folder at `path` (a leftover there is removed first; never a link's target)."""
    path = Path(path)
    remove(path)
    path.mkdir()
    return path


def swap_dir(new: str | Path, out: str | Path) -> None:
    """Replace the folder `out` by the complete folder `new` (two renames; the old one is put back if the
    second fails), so a reader never sees a half-built folder and a failed build leaves `out` as it was."""
    new, out = Path(new), Path(out)
    if not out.exists():
        os.replace(new, out)
        return
    old = temp_path(out, "old")
    remove(old)
    os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a file (created if missing), never through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    with os.fdopen(fd, "a") as f:
        f.write(line + "\n")


# ----------------------------------------------------------------------------------------------
# the folders minisapo writes into: its own (a marker file), free of links, without leftovers


def find_link(folder: str | Path) -> Path | None:
    """The first symbolic link at or under `folder` (links are not followed), or None."""
    folder = Path(folder)
    if folder.is_symlink():
        return folder
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(root, name)):
                return Path(root) / name
    return None


def claim_dir(folder: str | Path, markers: tuple[str, ...], what: str) -> None:
    """Check that minisapo may write into `folder`, then clean it of dead processes' temporary files.

    Refused (a ValueError saying what to do): a symbolic link at or under `folder`, since a write through it
    would land elsewhere; and a folder that holds something but none of `markers` (e.g. config.json): minisapo
    did not make it, so it neither writes into it nor clears it. A temporary file or folder (`LEFTOVER`) of a
    process that is no longer running, beside `folder` or under it, is removed (a folder a swap moved aside
    goes back when nothing replaced it).
    """
    folder = Path(folder)
    link = find_link(folder)
    if link is not None:
        raise ValueError(f"{link} is a symbolic link: minisapo never writes through a link into {what}; "
                         f"replace it with the file itself, or use another name")
    if folder.is_dir():
        own = [p for p in folder.iterdir() if p.name != ".lock" and not LEFTOVER.fullmatch(p.name)]
        if own and not any((folder / m).exists() for m in markers):
            raise ValueError(f"{folder} exists but minisapo did not make it (it has no {' or '.join(markers)}): "
                             f"minisapo neither writes into nor clears a folder of yours; move it away, or use "
                             f"another name")
    beside = folder.parent.glob(f".{glob.escape(folder.name)}.*-*")
    inside = [Path(root) / n for root, dirs, files in os.walk(folder) for n in dirs + files]
    for p in [*beside, *inside]:
        m = LEFTOVER.fullmatch(p.name)
        if m and (p.parent != folder.parent or m.group(1) == folder.name) and not pid_alive(int(m.group(3))):
            target = p.parent / m.group(1)
            if m.group(2) == "old" and not target.exists():  # a swap_dir cut short: the old copy goes back
                os.replace(p, target)
            else:
                remove(p)


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
