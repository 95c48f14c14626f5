"""Progress reporting: a tqdm bar on a terminal, plain log lines anywhere else.

A bar redraws itself with carriage returns, which floods a redirected log (`minisapo run > log 2>&1`)
with thousands of half lines. `bar(...)` returns a tqdm bar only when stderr is a terminal; otherwise
a `LineProgress` with the same methods (update, set_postfix, write, close, iteration) that prints one
plain line every `every` fraction of the work (10 % by default; at most one per `min_interval` seconds,
so a loop of a few seconds stays silent) with elapsed and remaining time.
"""

from __future__ import annotations

import sys
import time


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class LineProgress:
    """tqdm's interface, printing `desc: n/total (p%) elapsed, ~left, postfix` lines to stdout."""

    def __init__(self, iterable=None, total: int | None = None, desc: str = "", initial: int = 0,
                 every: float = 0.1, disable: bool = False, min_interval: float = 10.0):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.n, self.disable = desc, initial, disable
        self.start_n, self.t0, self.postfix = initial, time.time(), ""
        self.min_interval, self.last_print = min_interval, self.t0
        self.step = max(1, int((self.total or 0) * every)) if self.total else None
        self.next_print = (initial // self.step + 1) * self.step if self.step else None

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.disable and self.next_print is not None and (self.n >= self.next_print or self.n == self.total):
            while self.next_print <= self.n:
                self.next_print += self.step
            if time.time() - self.last_print >= self.min_interval:
                self._print()

    def _print(self) -> None:
        dt = time.time() - self.t0
        done = self.n - self.start_n
        left = dt / done * (self.total - self.n) if done > 0 and self.total else None
        line = f"{self.desc}: {self.n}/{self.total} ({100 * self.n / self.total:.0f}%) {_clock(dt)} elapsed"
        line += f", ~{_clock(left)} left" if left is not None else ""
        print(line + (f", {self.postfix}" if self.postfix else ""), flush=True)
        self.last_print = time.time()

    @staticmethod
    def write(s: str) -> None:
        print(s, flush=True)

    def close(self) -> None:
        pass


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def bar(iterable=None, total: int | None = None, desc: str = "", initial: int = 0, enabled: bool = True,
        leave: bool = True, lines: bool = True):
    """A tqdm bar when stderr is a terminal, else plain `LineProgress` lines (none when `lines=False`,
    e.g. for short inner loops). `enabled=False` shows nothing either way."""
    if enabled and is_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave)
    return LineProgress(iterable, total=total, desc=desc, initial=initial, disable=not (enabled and lines))
