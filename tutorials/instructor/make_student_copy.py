"""Write the students' copy of this repository: everything but tutorials/instructor/.

    python tutorials/instructor/make_student_copy.py OUT            # a new repository with one commit
    python tutorials/instructor/make_student_copy.py OUT --no-git   # just the files

What is copied: the files git knows (tracked, or new and not ignored), as they are in the working tree; without
git, every file but caches, virtual environments, runs and processed data. What changes on the way: the folder
tutorials/instructor/ (the key, the hidden checks, the planted bugs, the grader, this script) is left out, and
the parts of the Markdown files between `<!-- teachers -->` and `<!-- /teachers -->` are cut. The copy is then
searched for the key: any three consecutive lines of one of its functions (one line for a one-line function;
so a bugged twin of the key is found too) or the start of one of its Think answers, in any file, and for a
`def ref_` reference function; if one is found, the copy is deleted and the command fails. Its git history, if
any, is new: one commit, so nothing of the instructor's history goes with it.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

INSTRUCTOR = Path(__file__).resolve().parent
REPO = INSTRUCTOR.parent.parent
KEY = INSTRUCTOR / "solutions_key.py"
LEFT_OUT = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".mypy_cache", "runs", "grades", "out",
            "processed", "raw", "build", "dist"}
TEACHERS = re.compile(r"<!-- teachers -->.*?<!-- /teachers -->\n?", re.S)


def repository_files(repo: Path) -> list[Path]:
    """Relative paths of what to copy (git's view when there is one)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                             capture_output=True, check=True).stdout
        files = [Path(p) for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        files = [p.relative_to(repo) for p in repo.rglob("*")
                 if p.is_file() and not LEFT_OUT & set(p.relative_to(repo).parts[:-1])]
    instructor = INSTRUCTOR.relative_to(repo)
    return sorted(p for p in files if instructor not in p.parents and (repo / p).is_file())


def code_lines(text: str) -> list[str]:
    """The lines of `text` with comments, indentation and blank lines removed."""
    out = []
    for line in text.splitlines():
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def key_fingerprints(key: Path = KEY) -> tuple[list[str], list[str]]:
    """What gives the key away: (every 3 consecutive code lines of each of its functions' bodies, or the whole
    body when shorter; the first 60 characters of each Think answer)."""
    source = key.read_text()
    tree = ast.parse(source)
    windows = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            body = [b for b in node.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
            lines = code_lines("\n".join(source.splitlines()[body[0].lineno - 1:body[-1].end_lineno]))
            n = min(3, len(lines))
            windows += ["\n".join(lines[i:i + n]) for i in range(len(lines) - n + 1)]
    answers: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "THINK_ANSWERS" for t in node.targets):
            answers = ast.literal_eval(node.value)
    return windows, [" ".join(a.split())[:60] for a in answers.values() if len(a) >= 60]


def leaks(root: Path, key: Path = KEY) -> list[str]:
    """'file: what' for every file under `root` that holds a piece of the key or a reference function."""
    windows, answers = key_fingerprints(key)
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or ".git" in path.relative_to(root).parts:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        lines, words = "\n" + "\n".join(code_lines(text)) + "\n", " ".join(text.split())
        hit = next((w for w in windows if f"\n{w}\n" in lines), None) or next((a for a in answers if a in words), None)
        if hit:
            found.append(f"{path.relative_to(root)}: {hit.splitlines()[0][:70]}")
        if re.search(r"^\s*def ref_", text, re.M):
            found.append(f"{path.relative_to(root)}: a reference function (def ref_...)")
    return found


def make_copy(out: Path, git: bool = True) -> list[Path]:
    files = repository_files(REPO)
    for rel in files:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel.suffix == ".md":
            dst.write_text(TEACHERS.sub("", (REPO / rel).read_text()))
        else:
            shutil.copy2(REPO / rel, dst)
    found = leaks(out)
    if found:
        shutil.rmtree(out)
        raise SystemExit("the copy gives the key away, so it was deleted:\n  " + "\n  ".join(found))
    if git:
        env = {**os.environ, "GIT_AUTHOR_NAME": "minisapo", "GIT_AUTHOR_EMAIL": "minisapo@localhost",
               "GIT_COMMITTER_NAME": "minisapo", "GIT_COMMITTER_EMAIL": "minisapo@localhost"}
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "minisapo: the course repository"]):
            subprocess.run(cmd, cwd=out, env=env, check=True, capture_output=True)
    return files


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a new (or empty) folder")
    parser.add_argument("--no-git", action="store_true", help="no git repository in the copy")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty")
    if args.out.resolve() == REPO or REPO in args.out.resolve().parents:
        parser.error("the copy must be outside this repository")
    files = make_copy(args.out, git=not args.no_git)
    print(f"wrote {len(files)} files to {args.out} (no tutorials/instructor/, no teachers' notes"
          f"{'' if args.no_git else ', a fresh git repository with one commit'}); nothing of the key is in it")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
