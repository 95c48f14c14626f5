"""The run lock: one minisapo command at a time per run directory (`runs/<name>/.lock`).

A command that writes a run holds `run_lock(run_dir)` while it runs. The lock file is created with O_EXCL
and holds the command's PID and start time, so a lock left by a command that is no longer running (killed,
or its PID now used by another process) is taken over with a warning, and a live one is a RunBusyError that
names the file and what to do. `check_not_busy` is the same check for a run that is only read. Under
torchrun rank 0 holds the lock for all the ranks.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from minisapo import distributed
from minisapo.files import claim_dir, pid_alive, warn

LOCK_FILE = ".lock"
_HELD: set[str] = set()  # lock files this process holds


def _start_token(pid: int) -> str:
    """When process `pid` started (clock ticks after boot, /proc/<pid>/stat), so a lock is not mistaken for
    a live one when its PID now belongs to another process; "-" where that cannot be read (no /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return "-"


def _lock_owner(lock: Path) -> tuple[int, str] | None:
    """(PID, start token) written in a lock file ("?" when there is no token); None when it holds no PID."""
    try:
        parts = lock.read_text().split()
        return int(parts[0]), parts[1] if len(parts) > 1 else "?"
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _owner_running(owner: tuple[int, str] | None) -> bool:
    """True when the command that wrote the lock is still running: its PID is alive and started when it did."""
    if owner is None or owner[0] == os.getpid():
        return False
    pid, token = owner
    return pid_alive(pid) and (token == "-" or _start_token(pid) in (token, "-"))


class RunBusyError(ValueError):
    """Another command is using this run directory."""


@contextmanager
def run_lock(run_dir: str | Path, markers: tuple[str, ...] = ("config.json",)):
    """Hold `<run_dir>/.lock` (created with O_EXCL, holding our PID and start time) while the block runs.

    First the folder is claimed (files.claim_dir): no symbolic link in it, made by minisapo (it holds one
    of `markers`, or nothing), and temporary files of dead commands removed. A lock whose command is no
    longer running (a killed command, a PID now used by another process, unreadable contents) is taken
    over with a warning; a live one is a RunBusyError. The lock is removed at the end, and so is the run
    directory when this command created it and left it empty (a refused command leaves no trace).
    """
    run_dir = Path(run_dir)
    if not distributed.is_main():  # under torchrun rank 0 holds the lock for all the ranks
        yield run_dir
        return
    claim_dir(run_dir, markers, "a run folder")
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # deepest first
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    key = str(lock.resolve())
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            busy = key in _HELD or _owner_running(owner)
            if owner is None and not busy:  # being written right now (busy while fresh), or garbage (stale)
                try:
                    busy = time.time() - lock.stat().st_mtime < 10 and lock.stat().st_size == 0
                except FileNotFoundError:
                    continue
            if busy:
                who = "this process" if key in _HELD else f"process {owner[0] if owner else '?'}"
                raise RunBusyError(f"{run_dir} is in use by another minisapo command ({who}; lock file {lock}): "
                                   f"wait for it to finish, or use another --name; if no such command is running, "
                                   f"delete {lock}") from None
            stale = lock.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
            try:  # take over: move the stale lock aside, and check it was the one we judged stale
                os.replace(lock, stale)
            except FileNotFoundError:
                continue
            if _lock_owner(stale) != owner:  # someone else took it over meanwhile: put theirs back
                try:
                    os.link(stale, lock)
                except OSError:
                    pass
                stale.unlink(missing_ok=True)
                continue
            stale.unlink(missing_ok=True)
            why = "it holds no PID" if owner is None else f"pid {owner[0]} " + (
                "is another program now" if pid_alive(owner[0]) else "has ended")
            warn(f"{lock} was left by a command that is no longer running ({why}); taking it over")
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {_start_token(os.getpid())}\n")
        break
    else:
        raise RunBusyError(f"{run_dir}: could not take the lock {lock}; try again")
    _HELD.add(key)
    try:
        yield run_dir
    finally:
        _HELD.discard(key)
        if _lock_owner(lock) == (os.getpid(), _start_token(os.getpid())):
            lock.unlink(missing_ok=True)
        for p in created:  # folders this command created and left empty go again
            try:
                p.rmdir()
            except OSError:
                break


def check_not_busy(run_dir: str | Path) -> None:
    """A RunBusyError if another live command holds `<run_dir>/.lock` (for a run that is only read)."""
    lock = Path(run_dir) / LOCK_FILE
    if lock.exists() and (str(lock.resolve()) in _HELD or _owner_running(_lock_owner(lock))):
        raise RunBusyError(f"{run_dir} is in use by another minisapo command (lock file {lock}): wait for it to "
                           f"finish; if no such command is running, delete {lock}")
