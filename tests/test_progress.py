"""Progress: a tqdm bar on a terminal, plain lines in a log."""

import io

from minisapo import progress


def test_plain_lines_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())  # a redirected log
    bar = progress.bar(total=100, desc="sft")
    assert isinstance(bar, progress.LineProgress)
    bar.min_interval = 0.0
    for _ in range(100):
        bar.set_postfix(loss="1.0")
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and lines[0].startswith("sft: 10/100 (10%)") and "loss=1.0" in lines[0]
    assert "\r" not in "".join(lines)
    quiet = progress.bar(range(5), desc="eval")  # a few seconds of work: no line at all
    assert list(quiet) == list(range(5)) and capsys.readouterr().out == ""
    assert progress.bar(total=3, enabled=False).disable


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(progress.sys, "stderr", Tty())
    bar = progress.bar(total=2, desc="sft")
    assert not isinstance(bar, progress.LineProgress)
    bar.close()
