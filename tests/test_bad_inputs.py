"""Bad inputs and faults, tried as a hostile or careless user would (safe by default).

Every case runs the `minisapo` command in-process on its own copy of a small world (a tiny synthetic
dataset, a finished tiny run `runs/toy`, an Amazon 2014 dataset `toy14`, and hand-made bad files in
`inputs/`) and checks
  - the exit code (2 for an expected failure),
  - exactly one `minisapo <command>: error: ...` line on stderr, naming the file or key, and no traceback,
  - that no file outside the command's own outputs changed, appeared or vanished (content hashes of the
    whole workspace before and after): a failed command loses no earlier result.
Section 10 is what others send you: a received run folder (its config.json names a plug-in and folders
elsewhere), links in run and dataset folders, folders of the user's under a minisapo name, settings only the
dataset can check, and the leftovers of failed or interrupted commands; nothing there may run code (the
plug-in would create MARKER), write outside runs/ and data/, or remove anything before every setting is checked.
A few checks that need more than one command (NaN, lock, precedence, malicious checkpoints, signals, torchrun
variables) follow the table.
"""

from __future__ import annotations

import builtins
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import torch

from minisapo.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
DIRS = ["--data_dir=data", "--runs_dir=runs"]  # relative: every case runs inside its own copy of the world
TINY = ["--preset=tiny", "--sft.max_steps=2", "--sft.eval_every=0", "--sft.eval_samples=4", "--rl.max_steps=1",
        "--rl.batch_size=2", "--num_generations=2", "--rl.eval_every=0", "--eval.max_samples=8", "--beam_width=10",
        *DIRS]
# the finished run runs/toy: `run` with the sapo preset and two user overrides of its keys (precedence check)
TOY = [*TINY, "--rl.reward=prefix", "--rl.step_token_mean=false"]
A14 = ["--source=amazon", "--kcore=2", "--data_dir=data"]
MARKER = "PWNED"  # a malicious checkpoint would create this file if it ran code


# ----------------------------------------------------------------------------------------------
# the world: built once per session, copied for every case


class Evil:
    """Unpickling this would call open(MARKER, "w"): the file appears only if code from the checkpoint runs."""

    def __reduce__(self):
        return (builtins.open, (os.path.abspath(MARKER), "w"))


def _write(path: str | Path, data: str | bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _review14(user: str, item: str, day: int, rating="5.0") -> bytes:
    return (f'{{"reviewerID": "{user}", "asin": "{item}", "helpful": [0, 0], "overall": {rating}, '
            f'"unixReviewTime": {1388534400 + day * 86400}}}\n').encode("utf-8", "surrogateescape")


def _valid_lines(path: Path, keys: tuple[str, ...]) -> bytes:
    """The sample's well-formed lines only (the samples hold two malformed lines on purpose)."""
    out = []
    for line in path.read_bytes().splitlines(keepends=True):
        try:
            if all(k in json.loads(line) for k in keys):
                out.append(line)
        except ValueError:
            pass
    return b"".join(out)


def _make_inputs() -> None:
    good = _valid_lines(SAMPLES / "amazon2014" / "reviews_Toy_5.json", ("reviewerID", "asin", "overall", "unixReviewTime"))
    meta = (SAMPLES / "amazon2014" / "meta_Toy.json").read_bytes()
    gz = gzip.compress(good)
    for folder, reviews in {"trunc": gz[: len(gz) // 2], "corrupt": b"\x1f\x8b" + os.urandom(200),
                            "empty": b"", "allbad": b"not json\n{}\n[1, 2]\n"}.items():
        name = "reviews_Toy_5.json.gz" if folder in ("trunc", "corrupt") else "reviews_Toy_5.json"
        _write(f"inputs/{folder}/{name}", reviews)
        _write(f"inputs/{folder}/meta_Toy.json", meta)
    _write("inputs/metatrunc/reviews_Toy_5.json", good)
    _write("inputs/metatrunc/meta_Toy.json.gz", gzip.compress(meta)[:40])
    # two users whose ids differ only in a byte that is not UTF-8 (they must never become one user)
    extra = b"".join(_review14(u, i, d) for u in ("U\udcff", "U\udcfe") for i, d in (("B001", 2), ("B002", 3)))
    _write("inputs/badutf8/reviews_Toy_5.json", good + extra)
    _write("inputs/badutf8/meta_Toy.json", meta)
    nan = _review14("A1", "B006", 60, rating="NaN") + _review14("A2", "B004", 61).replace(b"1393804800", b"Infinity")
    _write("inputs/nanrev/reviews_Toy_5.json", good + nan)
    _write("inputs/nanrev/meta_Toy.json", meta)
    _write("inputs/weird/reviews_.._5.json", good)  # its dataset name would be ".."
    _write("inputs/weird/meta_...json", meta)
    # Amazon 2023 with wrongly typed metadata fields
    _write("inputs/a23/Toy.jsonl", _valid_lines(SAMPLES / "amazon2023" / "Toy.jsonl", ("user_id", "parent_asin", "rating", "timestamp")))
    _write("inputs/a23/meta_Toy.jsonl", "\n".join(json.dumps(d) for d in [
        {"parent_asin": "B001", "title": ["list", "title"], "store": {"a": 1}, "categories": ["Toys", 3]},
        {"parent_asin": "B002", "title": "Kite", "store": "SkyCo", "categories": ["Toys"]},
        {"parent_asin": "B003", "title": "Ball", "store": "Co", "categories": ["Toys"]}]) + "\n")
    # RecBole atomic folders
    rows = [f"u{u}\ti{i}\t1\t{10 * u + i}" for u in range(4) for i in range(4)]
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n"
    bad_rows = "u8\ti0\t1\tnan\nu9\ti1\tinf\t5\nU\udcff\ti0\t1\t3\nU\udcfe\ti1\t1\t4\n"  # line 18: NaN
    _write("inputs/atom/atom.inter", (inter + bad_rows).encode("utf-8", "surrogateescape"))
    _write("inputs/atom/atom.item", "item_id:token\ttitle:token_seq\ni0\tred kite\ni1\tblue ball\ni2\tgreen car\n"
                                    "i3\tpink doll\ni0\tduplicate kite\n")
    _write("inputs/badhdr/badhdr.inter", "user_id\titem_id\n1\t2\n")
    _write("inputs/noitem/noitem.inter", "user_id:token\tthing:token\n1\t2\n")
    Path("inputs/interdir/interdir.inter").mkdir(parents=True)
    _write("inputs/itemdir/itemdir.inter", inter)
    Path("inputs/itemdir/itemdir.item").mkdir(parents=True)
    _write("inputs/notinter.txt", "hello\n")
    # traces
    _write("inputs/traces_bad.jsonl", "not json\n{\"user\": \"x\"}\n[1]\n")
    _write("inputs/traces_utf8.jsonl", b'{"user": 0, "target": 1, "steps": ["a\xff", "b", "c"]}\n')
    Path("inputs/tracesdir").mkdir()
    # item vectors for the tiny world (128 items)
    vec = np.random.default_rng(0).normal(size=(128, 8)).astype(np.float32)
    np.save("inputs/zeros.npy", np.zeros((128, 8), np.float32))
    np.save("inputs/nodims.npy", np.zeros((128, 0), np.float32))
    np.save("inputs/rows10.npy", vec[:10])
    np.save("inputs/flat.npy", vec[:, 0])
    np.save("inputs/nan.npy", np.where(np.arange(128)[:, None] == 3, np.nan, vec))
    np.save("inputs/object.npy", np.array([{"a": 1}] * 128, dtype=object), allow_pickle=True)
    np.save("inputs/complex.npy", vec.astype(np.complex64))
    np.save("inputs/strings.npy", np.array([["a"] * 8] * 128))
    np.savez("inputs/arrays.npz", a=vec)
    _write("inputs/garbage.npy", os.urandom(100))
    partial = vec.copy()
    partial[5] = 0
    np.save("inputs/somezero.npy", partial)
    Path("inputs/vecdir.npy").mkdir()
    _write("inputs/a_file", "I am a file, not a folder\n")
    # plug-ins that misbehave
    _write("inputs/plug.py", PLUGINS)
    _write("inputs/exits.py", "import sys\n\nsys.exit(0)\n")


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["run", *TOY, "--name=toy"]) == 0
        assert main(["data", *A14, f"--reviews={SAMPLES / 'amazon2014' / 'reviews_Toy_5.json'}", "--name=toy14"]) == 0
        _make_inputs()
        for png in root.glob("runs/*/*.png"):  # a run's pictures are inputs of no command: lighter copies
            png.unlink()
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture()
def ws(world, tmp_path, monkeypatch):
    """A private copy of the world; the test runs inside it (all paths relative)."""
    dst = tmp_path / "ws"
    shutil.copytree(world, dst, symlinks=True)
    monkeypatch.chdir(dst)
    return dst


@pytest.fixture(scope="session")
def shared_ws(world, tmp_path_factory):
    """One copy of the world shared by the cases that change nothing (each still checks that it did not)."""
    dst = tmp_path_factory.mktemp("shared") / "ws"
    shutil.copytree(world, dst, symlinks=True)
    return dst


def snapshot(root: Path) -> dict[str, str]:
    """{relative path: sha1 of the content} for every file under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def changed(before: dict, after: dict) -> set[str]:
    return {p for p in set(before) | set(after) if before.get(p) != after.get(p)}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if re.search(r"\berror: ", line)]


# ----------------------------------------------------------------------------------------------
# setups: what a case does to its copy of the world before the command runs


def put(path: str, data) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        p = ws / path
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        if data == "DIR":
            p.mkdir(parents=True)
        elif data is None:
            pass
        elif callable(data):
            data(p)
        else:
            _write(p, data)
    return setup


def chain(*fns) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        for f in fns:
            f(ws)
    return setup


def save(obj) -> Callable[[Path], None]:
    return lambda p: torch.save(obj, p)


def ckpt_edit(path: str, fn: Callable[[dict], dict]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        p = ws / path
        c = torch.load(p, weights_only=True)
        torch.save(fn(c), p)
    return setup


def wrong_vocab(c: dict) -> dict:
    """The token embedding of a model with one more token in its vocabulary."""
    c["model"] = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if k == "wte.weight" else v for k, v in c["model"].items()}
    return c


def config_edit(run: str, fn: Callable[[dict], None], dst: str | None = None) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        cfg = json.loads((ws / "runs" / run / "config.json").read_text())
        fn(cfg)
        _write(ws / "runs" / (dst or run) / "config.json", json.dumps(cfg))
    return setup


def metrics_tail(text: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        p = ws / "runs/toy/metrics.jsonl"
        p.write_text(p.read_text() + text)
    return setup


def metrics_middle(ws: Path) -> None:
    p = ws / "runs/toy/metrics.jsonl"
    lines = p.read_text().splitlines()
    p.write_text("\n".join([lines[0], '{"stage": "sft", "step": 1, "loss": 1.', *lines[1:]]) + "\n")


def toy_sapo_with(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """runs/toy_sapo/config.json as `rl --from=runs/toy` would write it, then `change` applied."""
    def fn(c: dict) -> None:
        c["name"] = "toy_sapo"
        c["rl"].update({"reward": "position", "advantage": "step", "step_token_mean": True})
        change(c)
    return config_edit("toy", fn, dst="toy_sapo")


def set_key(section: str, key: str, value) -> Callable[[dict], None]:
    def fn(c: dict) -> None:
        (c[section] if section else c)[key] = value
    return fn


def corrupt_processed(ws: Path) -> None:
    p = ws / "data/processed/compose_tiny/compose_tiny.inter"
    p.write_text(p.read_text() + "u1\tNOT_AN_ITEM\t1\t2\n")


# what others send you: a run folder whose config.json names a plug-in (it would create MARKER when imported)
PLUGIN = "runs/recv/helper.py:fn"
EVIL_PLUGIN = (f"import os\nopen(os.path.abspath({MARKER!r}), 'w').close()\n\n\n"
               "def fn(m, group_size=1):\n    return m.clone()\n")
PLUGINS = """import argparse
import sys

import torch

ARGS = argparse.ArgumentParser().parse_args()  # a plug-in that reads the command line when imported


def meta(m, group_size=1):
    return torch.empty(m.shape, device="meta")


def complex_(m, group_size=1):
    return m.to(torch.complex64)


def fine(m, group_size=1):
    return m.clone()
"""


def received(change: Callable[[dict], None] = lambda c: None) -> Callable[[Path], None]:
    """runs/recv: a copy of runs/toy as someone sends it, its config.json naming PLUGIN, then `change` applied."""
    def setup(ws: Path) -> None:
        shutil.copytree(ws / "runs/toy", ws / "runs/recv")
        _write(ws / "runs/recv/helper.py", EVIL_PLUGIN)
        cfg = json.loads((ws / "runs/recv/config.json").read_text())
        cfg["name"], cfg["rl"]["reward"] = "recv", PLUGIN
        change(cfg)
        _write(ws / "runs/recv/config.json", json.dumps(cfg))
    return setup


def link(path: str, target: str, content: str | None = "the user's own file\n") -> Callable[[Path], None]:
    """`path` replaced by a symbolic link to `target` (a file of the user's outside runs/ and data/; with
    content None it does not exist: a dangling link)."""
    def setup(ws: Path) -> None:
        if content is not None:
            _write(ws / target, content)
        put(path, None)(ws)
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(ws / target, ws / path)
    return setup


def own_folder(folder: str, names: tuple[str, ...]) -> Callable[[Path], None]:
    """A folder of the user's own files (no config.json / dataset.json) under a name minisapo would use."""
    def setup(ws: Path) -> None:
        for n in names:
            _write(ws / folder / n, f"the user's {n}\n")
    return setup


class Case(NamedTuple):
    id: str
    argv: list[str]
    expect: tuple[str, ...] = ()  # substrings of the error line (case-insensitive)
    setup: Callable[[Path], None] | None = None
    code: int = 2
    may_change: tuple[str, ...] = ()  # path prefixes the command may write (its own outputs)


EVAL = ["eval", "--run=runs/toy"]
RL = ["rl", "--from=runs/toy", "--name=toy2"]
RESUME = ["run", *TOY, "--name=toy", "--resume"]
SFT_RESUME = ["sft", *TOY, "--name=toy", "--resume"]
NOT_LOADED = "not loaded"

CASES = [
    # --- 1. checkpoints: never code, and a broken one is one line naming it -------------------------------
    Case("evil-sft-pt-rl-from", RL, ("sft.pt", NOT_LOADED), put("runs/toy/sft.pt", save({"model": Evil()}))),
    Case("evil-rl-ckpt-eval", EVAL, ("rl_checkpoint.pt", NOT_LOADED), put("runs/toy/rl_checkpoint.pt", save({"model": Evil()}))),
    Case("evil-sft-pt-eval", EVAL, ("sft.pt", NOT_LOADED),
         chain(put("runs/toy/rl_checkpoint.pt", None), put("runs/toy/sft.pt", save({"model": Evil(), "step": 2})))),
    Case("evil-sft-pt-sft-resume", SFT_RESUME, ("sft.pt", NOT_LOADED), put("runs/toy/sft.pt", save({"model": Evil()})),
         may_change=("runs/toy/",)),
    Case("evil-in-optimizer-state", SFT_RESUME, ("sft.pt", NOT_LOADED),
         ckpt_edit("runs/toy/sft.pt", lambda c: {**c, "optimizer": Evil()}), may_change=("runs/toy/",)),
    Case("evil-rl-ckpt-run-resume", RESUME, ("rl_checkpoint.pt", NOT_LOADED),
         put("runs/toy/rl_checkpoint.pt", save({"model": Evil(), "step": 1})), may_change=("runs/toy/",)),
    Case("empty-rl-ckpt", EVAL, ("rl_checkpoint.pt", "unreadable"), put("runs/toy/rl_checkpoint.pt", b"")),
    Case("truncated-rl-ckpt", EVAL, ("rl_checkpoint.pt", "unreadable"),
         put("runs/toy/rl_checkpoint.pt", lambda p: p.write_bytes(p.with_name("sft.pt").read_bytes()[:3000]))),
    Case("random-bytes-rl-ckpt", EVAL, ("rl_checkpoint.pt", "unreadable"), put("runs/toy/rl_checkpoint.pt", os.urandom(500))),
    Case("zip-not-torch-rl-ckpt", EVAL, ("rl_checkpoint.pt", "unreadable"),
         put("runs/toy/rl_checkpoint.pt", lambda p: shutil.make_archive(str(p.with_suffix("")), "zip", p.parent / "sid")
             and os.replace(p.with_suffix(".zip"), p))),
    Case("directory-rl-ckpt", EVAL, ("rl_checkpoint.pt", "directory"), put("runs/toy/rl_checkpoint.pt", "DIR")),
    Case("list-rl-ckpt", EVAL, ("rl_checkpoint.pt", "not a minisapo checkpoint"), put("runs/toy/rl_checkpoint.pt", save([1, 2]))),
    Case("no-model-rl-ckpt", EVAL, ("rl_checkpoint.pt", "'model'"), put("runs/toy/rl_checkpoint.pt", save({"step": 1}))),
    Case("model-not-tensors", EVAL, ("rl_checkpoint.pt", "state dict"), put("runs/toy/rl_checkpoint.pt", save({"model": {"a": 1}}))),
    Case("wrong-vocab-rl-ckpt", EVAL, ("rl_checkpoint.pt", "another vocabulary"), ckpt_edit("runs/toy/rl_checkpoint.pt", wrong_vocab)),
    Case("nan-weights-rl-ckpt", EVAL, ("rl_checkpoint.pt", "nan/inf weights"),
         ckpt_edit("runs/toy/rl_checkpoint.pt", lambda c: {**c, "model": {k: v * float("nan") for k, v in c["model"].items()}})),
    Case("empty-sft-pt-rl-from", RL, ("sft.pt", "unreadable"), put("runs/toy/sft.pt", b"")),
    Case("directory-sft-pt-rl-from", RL, ("sft.pt", "directory"), put("runs/toy/sft.pt", "DIR")),
    Case("missing-sft-pt-rl-from", RL, ("sft.pt", "minisapo sft"), put("runs/toy/sft.pt", None)),
    Case("wrong-vocab-sft-pt-rl-from", RL, ("sft.pt", "another vocabulary"), ckpt_edit("runs/toy/sft.pt", wrong_vocab)),
    Case("sft-pt-without-rng", SFT_RESUME, ("sft.pt", "'rng'"), ckpt_edit("runs/toy/sft.pt", lambda c: {k: v for k, v in c.items() if k != "rng"}),
         may_change=("runs/toy/",)),
    Case("sft-pt-damaged-rng", SFT_RESUME, ("sft.pt", "rng"), ckpt_edit("runs/toy/sft.pt", lambda c: {**c, "rng": {"torch": 1}}),
         may_change=("runs/toy/",)),
    Case("sft-pt-step-not-a-number", SFT_RESUME, ("sft.pt", "'step'"), ckpt_edit("runs/toy/sft.pt", lambda c: {**c, "step": "two"}),
         may_change=("runs/toy/",)),
    Case("sft-pt-optimizer-mismatch", SFT_RESUME, ("sft.pt", "optimizer"),
         ckpt_edit("runs/toy/sft.pt", lambda c: {**c, "optimizer": {"state": {}, "param_groups": []}}), may_change=("runs/toy/",)),
    Case("rl-ckpt-without-optimizer", ["rl", "--from=runs/toy", "--resume"], ("rl_checkpoint.pt", "'optimizer'"),
         chain(toy_sapo_with(lambda c: None), lambda ws: torch.save(
             {k: v for k, v in torch.load(ws / "runs/toy/rl_checkpoint.pt", weights_only=True).items() if k != "optimizer"},
             ws / "runs/toy_sapo/rl_checkpoint.pt")), may_change=("runs/toy_sapo/",)),
    # --- 2. names are one folder name; nothing is written outside runs_dir / data_dir ----------------------
    *[Case(f"run-name-{i}", ["run", *TINY, f"--name={n}"], ("--name=", why)) for i, (n, why) in enumerate([
        ("../escape", "separator"), ("../../x", "separator"), ("/tmp/abs", "separator"), (".", "not a folder name"),
        ("..", "not a folder name"), ("a/b", "separator"), ("a\\b", "separator"), ("tab\there", "control")])],
    Case("sft-name-dotdot", ["sft", *TINY, "--name=.."], ("--name='..'",)),
    Case("data-name-victim", ["data", "--name=../../../victim", "--data_dir=data"], ("--data.name=", "separator")),
    Case("data-name-dot", ["data", "--name=.", "--data_dir=data"], ("--data.name='.'",)),
    Case("data-name-absolute", ["data", "--name=/tmp/x", "--data_dir=data"], ("--data.name=",)),
    Case("sid-name-escape", ["sid", "--name=../x", "--data_dir=data"], ("--data.name=",)),
    Case("run-data-name-escape", ["run", *TINY, "--data.name=../d"], ("--data.name=",)),
    Case("rl-name-escape", ["rl", "--from=runs/toy", "--name=../../escape"], ("--name=",)),
    Case("compare-name-escape", ["compare", *TINY, "--name=../c"], ("--name=",)),
    Case("sweep-name-escape", ["compare", *TINY, "--sweep=name:a/b"], ("--name=",)),
    Case("amazon-file-named-dotdot", ["data", *A14, "--reviews=inputs/weird/reviews_.._5.json"], ("data.name",)),
    Case("atomic-root-path", ["data", "--source=atomic", "--path=/", "--data_dir=data"], ("data.name",)),
    # --- 3. outputs are replaced only after every input was read ----------------------------------------
    Case("rl-into-its-own-sft-run", ["rl", "--from=runs/toy", "--name=toy"], ("--name=toy", "another --name")),
    Case("rl-into-its-own-sft-run-resume", ["rl", "--from=runs/toy", "--name=toy", "--resume"], ("--name=toy",)),
    Case("rerun-with-missing-traces", ["run", *TOY, "--name=toy", "--traces=inputs/nope.jsonl"], ("inputs/nope.jsonl",)),
    Case("rerun-with-traces-dir", ["sft", *TOY, "--name=toy", "--traces=inputs/tracesdir"], ("tracesdir", "directory")),
    Case("rerun-with-bad-traces", ["run", *TOY, "--name=toy", "--traces=inputs/traces_bad.jsonl"], ("traces_bad.jsonl", "none of its")),
    Case("rerun-with-missing-vectors", ["run", *TOY, "--name=toy", "--sid.method=rqkmeans", "--sid.vectors=inputs/nope.npy"],
         ("nope.npy",)),
    Case("rl-model-does-not-fit", ["rl", "--from=runs/toy", "--name=toy2", "--n_layer=3"], ("sft.pt", "another vocabulary")),
    Case("truncated-gz-keeps-dataset", ["data", *A14, "--reviews=inputs/trunc/reviews_Toy_5.json.gz", "--name=toy14"],
         ("reviews_Toy_5.json.gz", "truncated")),
    Case("corrupt-gz-keeps-dataset", ["data", *A14, "--reviews=inputs/corrupt/reviews_Toy_5.json.gz", "--name=toy14"],
         ("reviews_Toy_5.json.gz", "corrupt")),
    Case("truncated-meta-gz", ["data", *A14, "--reviews=inputs/metatrunc/reviews_Toy_5.json", "--name=toy14"],
         ("meta_Toy.json.gz", "truncated")),
    Case("strict-bad-line-keeps-dataset", ["data", *A14, f"--reviews={SAMPLES}/amazon2014/reviews_Toy_5.json",
                                             "--name=toy14", "--strict=true"], ("reviews_Toy_5.json:4", "strict")),
    Case("kcore-empties-dataset", ["data", *A14, f"--reviews={SAMPLES}/amazon2014/reviews_Toy_5.json", "--name=toy14",
                                   "--kcore=50"], ("--kcore",)),
    Case("time-window-empties-dataset", ["data", *A14, f"--reviews={SAMPLES}/amazon2014/reviews_Toy_5.json", "--name=toy14",
                                         "--start=2030-01-01"], ("time window",)),
    Case("other-source-keeps-dataset", ["data", "--name=toy14", "--source=synthetic", "--data_dir=data"], ("--source=amazon",)),
    Case("eval-bad-split", [*EVAL, "--split=bogus"], ("--split=bogus",)),
    Case("eval-preset-override", [*EVAL, "--preset=small"], ("--preset",)),
    # --- 4. every setting is checked before anything runs (run refuses a bad RL/eval setting before SFT) ---
    *[Case(f"setting-{key}={value}", ["run", *TINY, "--name=fresh", f"--{key}={value}"], (key.split(".")[-1],))
      for key, value in [
          ("n_layer", "0"), ("n_layer", "-1"), ("n_embd", "0"), ("n_head", "0"), ("n_embd", "30"), ("n_embd", "6"),
          ("dropout", "2"), ("dropout", "-0.1"), ("dropout", "nan"), ("init_std", "nan"), ("init_std", "0"),
          ("mlp_ratio", "0"), ("max_seq_len", "0"), ("rope_base", "0"), ("vocab_size", "-1"),
          ("sft.grad_accum", "0"), ("sft.batch_size", "0"), ("sft.log_every", "0"), ("sft.learning_rate", "nan"),
          ("sft.learning_rate", "0"), ("sft.learning_rate", "-1"), ("sft.warmup_steps", "-1"), ("sft.grad_clip", "nan"),
          ("sft.grad_clip", "-1"), ("sft.beta2", "1"), ("sft.min_lr_ratio", "2"), ("sft.max_steps", "-5"),
          ("sft.eval_every", "-1"), ("sft.eval_samples", "-1"), ("sft.ema", "1"), ("sft.ema", "-0.5"), ("sft.weight_decay", "inf"), ("sft.epochs", "inf"),
          ("rl.epsilon", "-1"), ("rl.epsilon", "1"), ("rl.epsilon_high", "-0.1"), ("rl.beta", "-1"), ("rl.beta", "nan"),
          ("rl.temperature", "0"), ("rl.temperature", "-1"), ("rl.temperature", "inf"), ("rl.num_generations", "1"),
          ("rl.batch_size", "0"), ("rl.max_completion_length", "2"), ("rl.learning_rate", "0"),
          ("rl.max_grad_norm", "-1"), ("rl.gradient_accumulation_steps", "3"), ("rl.num_iterations", "0"),
          ("rl.loss_type", "bogus"), ("rl.reward", "bogus"), ("rl.max_steps", "-1"), ("rl.save_every", "-2"),
          ("eval.ks", "0"), ("eval.ks", "a,b"), ("eval.ks", ","), ("eval.beam_width", "0"), ("eval.batch_size", "0"),
          ("eval.max_samples", "-1"), ("seed", "-1"), ("device", "tpu"), ("device", "cuda:x"),
          ("max_history", "0"), ("kcore", "-1"), ("world", "nope"), ("items_per_leaf", "1"), ("zipf", "nan"),
          ("noise", "2"), ("data.split", "random"), ("source", "web"), ("start", "notadate"), ("world_seed", "-1"),
          ("sid.levels", "0"), ("sid.levels", "9"), ("sid.codebook_size", "1"), ("sid.dedup", "maybe"),
          ("sid.embed_dim", "0"), ("sid.kmeans_iters", "0"), ("max_think_tokens", "0"), ("layout", "diagonal"),
          ("reasoning.mode", "x"), ("teacher", "x"), ("recent", "0"),
          ("sft.pretrain_epochs", "nan"), ("sft.pretrain_epochs", "-1"), ("sft.pretrain_window", "1"),
          ("sft.pretrain_stride", "-2"), ("rl.warmup_steps", "-5"), ("rl.eval_prompts", "0"),
      ]],
    Case("setting-n_embd-30-n_head-4", ["run", *TINY, "--n_embd=30", "--n_head=4"], ("n_embd", "divisible")),
    Case("setting-sft-steps-and-epochs-zero", ["run", *TINY, "--sft.max_steps=0", "--sft.epochs=0"], ("sft.max_steps",)),
    Case("amazon-without-reviews", ["run", *TINY, "--source=amazon"], ("--reviews",)),
    Case("atomic-without-path", ["data", "--source=atomic", "--data_dir=data"], ("--path",)),
    Case("runs-dir-is-a-file", ["run", *TINY, "--runs_dir=inputs/a_file"], ("runs_dir", "is a file")),
    Case("data-dir-is-a-file", ["data", "--data_dir=inputs/a_file"], ("data_dir", "is a file")),
    Case("processed-is-a-file", ["data", "--world=tiny", "--data_dir=inputs/pdata"], ("processed",),
         put("inputs/pdata/processed", "a file")),
    Case("unknown-key", ["run", "--n_layers=2"], ("did you mean --n_layer",)),
    Case("ambiguous-key", ["run", "--batch_size=2"], ("ambiguous",)),
    Case("int-expected", ["run", "--n_layer=two"], ("expected int",)),
    Case("bool-expected", ["run", "--strict=maybe"], ("expected bool",)),
    Case("unknown-preset", ["run", "--preset=huge"], ("unknown preset",)),
    Case("not-key-value", ["run", "--n_layer", "2"], ("--key=value",)),
    Case("unknown-command", ["fly"], ("invalid choice",)),
    Case("bad-seeds", ["compare", "--seeds=x"], ("--seeds",)),
    Case("zero-seeds", ["compare", *TINY, "--seeds=0"], ("--seeds=0",)),
    Case("duplicate-algos", ["compare", *TINY, "--algos=grpo,grpo"], ("--algos",)),
    Case("unknown-algos", ["compare", *TINY, "--algos=grpo,bogus"], ("--algo=bogus",)),
    Case("unknown-algo-run", ["run", *TINY, "--algo=bogus"], ("--algo=bogus",)),
    Case("unknown-algo-rl", ["rl", "--from=runs/toy", "--algo=bogus"], ("--algo=bogus",)),
    Case("algo-for-sft", ["sft", *TINY, "--algo=grpo"], ("--algo",)),
    Case("sweep-without-colon", ["compare", *TINY, "--sweep=items_per_leaf"], ("--sweep",)),
    Case("sweep-empty-value", ["compare", *TINY, "--sweep=items_per_leaf:4,"], ("--sweep",)),
    Case("sweep-unknown-knob", ["compare", *TINY, "--sweep=bogus_knob:1"], ("bogus_knob",)),
    Case("sweep-bad-value", ["compare", *TINY, "--sweep=items_per_leaf:1"], ("items_per_leaf",)),
    Case("bench-bad-threads", ["bench", "--threads=0"], ("--threads",)),
    Case("bench-unknown-option", ["bench", "--n_layer=2"], ("bench",)),
    Case("rl-bad-override", ["rl", "--from=runs/toy", "--rl.temperature=0"], ("rl.temperature",)),
    Case("eval-bad-override", [*EVAL, "--eval.ks=0"], ("eval.ks",)),
    # --- 5. --resume continues with the run's own settings ------------------------------------------------
    Case("resume-other-seed", [*RESUME, "--seed=7"], ("--resume", "seed: 0 -> 7", "config.json")),
    Case("resume-other-lr", [*RESUME, "--sft.learning_rate=0.05"], ("sft.learning_rate",)),
    Case("resume-without-preset", ["run", "--name=toy", "--resume", *DIRS], ("preset: 'tiny' -> 'small'",)),
    Case("resume-other-algo", [*RESUME, "--algo=grpo", "--rl.reward=exact"], ("rl.advantage",)),
    Case("sft-resume-other-layout", [*SFT_RESUME, "--layout=interleaved"], ("reasoning.layout",)),
    Case("rl-resume-other-beta", ["rl", "--from=runs/toy", "--resume"], ("rl.beta",),
         toy_sapo_with(set_key("rl", "beta", 0.5))),
    # --- 6. NaN / inf stops training, names the stage and step, keeps the last good checkpoint ---------------
    Case("sft-diverges", ["sft", *TINY, "--name=nan", "--sft.max_steps=4", "--sft.learning_rate=1e30",
                          "--sft.warmup_steps=0"], ("sft:", "nan", "at step 2"), may_change=("runs/nan/",)),
    Case("rl-diverges", ["rl", "--from=runs/toy", "--name=nanrl", "--rl.learning_rate=1e30", "--rl.max_steps=3",
                                "--rl.rollout=sample", "--rl.think_credit=true"],
         ("rl", "nan", "at step "), may_change=("runs/nanrl/",)),
    # --- 7. a busy or half-written run ---------------------------------------------------------------------
    Case("metrics-bad-middle-line", RESUME, ("metrics.jsonl:2",), metrics_middle, may_change=("runs/toy/",)),
    # --- 8. every expected failure is one line naming the file or key --------------------------------------
    Case("eval-without-run", ["eval"], ("--run",)),
    Case("eval-missing-run", ["eval", "--run=runs/nope"], ("runs/nope/config.json",)),
    Case("rl-without-from", ["rl"], ("--from",)),
    Case("rl-from-missing", ["rl", "--from=runs/nope"], ("runs/nope/config.json",)),
    Case("rl-from-runs-dir", ["rl", "--from=runs"], ("runs/config.json",)),
    Case("config-json-invalid", EVAL, ("runs/toy/config.json", "not valid json"), put("runs/toy/config.json", "{not json")),
    Case("config-json-binary", EVAL, ("runs/toy/config.json",), put("runs/toy/config.json", b"\xff\xfe\x00")),
    Case("config-json-unknown-key", EVAL, ("runs/toy/config.json", "unknown config key"), config_edit("toy", set_key("model", "n_layerz", 2))),
    Case("config-json-wrong-type", EVAL, ("runs/toy/config.json", "expected int"), config_edit("toy", set_key("model", "n_layer", [2]))),
    Case("config-json-not-object", EVAL, ("runs/toy/config.json",), put("runs/toy/config.json", "[1, 2]")),
    Case("config-json-directory", EVAL, ("runs/toy/config.json", "not found"), put("runs/toy/config.json", "DIR")),
    Case("config-json-bad-value", EVAL, ("model.dropout",), config_edit("toy", set_key("model", "dropout", 5.0))),
    Case("tokenizer-json-corrupt", EVAL, ("runs/toy/sid/tokenizer.json", "tokenizer"), put("runs/toy/sid/tokenizer.json", "{garbage")),
    Case("tokenizer-json-empty-object", EVAL, ("tokenizer.json",), put("runs/toy/sid/tokenizer.json", "{}")),
    Case("sid-table-corrupt", EVAL, ("runs/toy/sid", "damaged"), put("runs/toy/sid/sid_table.json", "[[[")),
    Case("sid-meta-missing-key", EVAL, ("runs/toy/sid", "damaged"), put("runs/toy/sid/sid_meta.json", "{}")),
    Case("processed-dataset-damaged", EVAL, ("data/processed/compose_tiny", "damaged"), corrupt_processed),
    Case("unavailable-device-cuda7", [*EVAL, "--device=cuda:7"], ("--device=cuda:7",)),
    Case("unavailable-device-rl", ["rl", "--from=runs/toy", "--device=cuda:7"], ("--device=cuda:7",)),
    Case("unavailable-device-bench", ["bench", "--device=cuda:7"], ("--device=cuda:7",)),
    # --- 9. data readers: --strict applies everywhere, files of the wrong kind are one line ------------------
    Case("strict-undecodable-user", ["data", *A14, "--reviews=inputs/badutf8/reviews_Toy_5.json", "--strict=true"],
         ("reviews_Toy_5.json:", "utf-8")),
    Case("strict-nan-rating", ["data", *A14, "--reviews=inputs/nanrev/reviews_Toy_5.json", "--strict=true"],
         ("reviews_Toy_5.json:", "nan")),
    Case("strict-wrong-meta-type", ["data", *A14, "--reviews=inputs/a23/Toy.jsonl", "--strict=true", "--kcore=0"],
         ("meta_Toy.jsonl:1", "wrongly typed")),
    Case("strict-atomic-nan", ["data", "--source=atomic", "--path=inputs/atom", "--kcore=0", "--strict=true",
                               "--data_dir=data"], ("atom.inter:18", "nan")),
    Case("strict-traces", ["sft", *TINY, "--name=fresh", "--traces=inputs/traces_bad.jsonl", "--strict=true"],
         ("traces_bad.jsonl:1", "invalid json")),
    Case("strict-traces-utf8", ["sft", *TINY, "--name=fresh", "--traces=inputs/traces_utf8.jsonl", "--strict=true"],
         ("traces_utf8.jsonl:1", "utf-8")),
    Case("all-traces-bad", ["sft", *TINY, "--name=fresh", "--traces=inputs/traces_bad.jsonl"], ("none of its 3 rows",)),
    Case("reviews-empty", ["data", *A14, "--reviews=inputs/empty/reviews_Toy_5.json"], ("no valid reviews",)),
    Case("reviews-all-bad", ["data", *A14, "--reviews=inputs/allbad/reviews_Toy_5.json"], ("no valid reviews", "3 malformed")),
    Case("reviews-missing", ["data", *A14, "--reviews=inputs/nope/reviews_Toy_5.json"], ("not found",)),
    Case("reviews-directory", ["data", *A14, "--reviews=inputs/trunc", "--name=x"], ("directory",)),
    Case("meta-directory", ["data", *A14, f"--reviews={SAMPLES}/amazon2014/reviews_Toy_5.json", "--meta=inputs/trunc",
                            "--name=x"], ("--meta", "directory")),
    Case("atomic-bad-header", ["data", "--source=atomic", "--path=inputs/badhdr", "--data_dir=data"], ("badhdr.inter:1",)),
    Case("atomic-no-item-column", ["data", "--source=atomic", "--path=inputs/noitem", "--data_dir=data"], ("item_id",)),
    Case("atomic-inter-is-dir", ["data", "--source=atomic", "--path=inputs/interdir", "--data_dir=data"], ("directory",)),
    Case("atomic-item-is-dir", ["data", "--source=atomic", "--path=inputs/itemdir", "--kcore=0", "--data_dir=data"],
         ("itemdir.item", "directory")),
    Case("atomic-path-not-inter", ["data", "--source=atomic", "--path=inputs/notinter.txt", "--data_dir=data"], (".inter",)),
    *[Case(f"vectors-{f}", ["sid", "--preset=tiny", "--data_dir=data", "--sid.method=rqkmeans",
                            f"--sid.vectors=inputs/{f}"], (f, why))
      for f, why in [("zeros.npy", "all zero"), ("nodims.npy", "(128, 0)"), ("rows10.npy", "10 rows"), ("flat.npy", "2-d"),
                     ("nan.npy", "nan"), ("object.npy", "not a readable"), ("complex.npy", "complex"),
                     ("strings.npy", "numeric"), ("arrays.npz", "several arrays"), ("garbage.npy", "not a readable"),
                     ("vecdir.npy", "directory"), ("nope.npy", "does not exist")]],
    # --- 10. what others send you: received run folders, links, the user's folders, late checks, leftovers ---
    # a received run folder is data: its plug-in is never imported, its folders are never destinations
    Case("received-plugin-eval", ["eval", "--run=runs/recv", "--split=bogus"], ("--split=bogus",), received()),
    Case("received-plugin-compare-from", ["compare", "--from=runs/recv", "--seeds=0"], ("--seeds=0",), received()),
    Case("received-advantage-plugin-rl-from", ["rl", "--from=runs/recv", "--rl.temperature=0"], ("rl.temperature",),
         received(lambda c: c["rl"].update(reward="position", advantage=PLUGIN))),
    Case("received-data-dir-elsewhere", ["eval", "--run=runs/recv", "--split=bogus"], ("--split=bogus",),
         received(lambda c: c.update(data_dir="elsewhere/data", runs_dir="elsewhere"))),
    # links: refused with one line, the file they point to untouched (or never created)
    Case("link-report-md", ["sft", *TOY, "--name=toy"], ("runs/toy/report.md", "symbolic link"),
         link("runs/toy/report.md", "mine/notes.md")),
    Case("link-metrics-jsonl", RESUME, ("metrics.jsonl", "symbolic link"), link("runs/toy/metrics.jsonl", "mine/log.txt")),
    Case("link-sft-curves-png", ["sft", *TOY, "--name=toy"], ("sft_curves.png", "symbolic link"),
         link("runs/toy/sft_curves.png", "mine/photo.png")),
    Case("dangling-link-sid-tree", ["sid", "--preset=tiny", "--data_dir=data"], ("sid_tree.png", "symbolic link"),
         link("data/processed/compose_tiny/sid/sid_tree.png", "mine/created.png", content=None)),
    Case("link-run-folder", [*EVAL, "--eval.max_samples=4"], ("runs/toy", "symbolic link"),
         lambda ws: os.replace(ws / "runs/toy", ws / "mine_run") or os.symlink(ws / "mine_run", ws / "runs/toy")),
    # a folder of the user's under the name: refused, not cleared
    Case("own-folder-under-run-name", ["sft", *TINY, "--name=photos"], ("runs/photos", "did not make it"),
         own_folder("runs/photos", ("a.png", "b.jsonl", "c.pt", "eval_x.json"))),
    Case("own-folder-under-dataset-name", ["data", "--world=tiny", "--name=half", "--data_dir=data"],
         ("data/processed/half", "did not make it"), own_folder("data/processed/half", ("half.inter", "half.item"))),
    Case("atomic-path-is-the-output", ["data", "--source=atomic", "--path=data/processed/ml", "--name=ml",
                                        "--data_dir=data"], ("data.path", "inside"),
         own_folder("data/processed/ml", ("ml.inter", "ml.item"))),
    # every setting is checked before a finished run is replaced
    Case("rerun-bad-pretrain-stride", ["sft", *TOY, "--name=toy", "--sft.pretrain_stride=-2"], ("sft.pretrain_stride",)),
    Case("rerun-inf-pretrain-epochs", ["sft", *TOY, "--name=toy", "--sft.pretrain_epochs=inf"], ("sft.pretrain_epochs",)),
    Case("rerun-group-larger-than-catalog", ["run", *TOY, "--name=toy", "--rl.rollout=beam", "--rl.num_generations=200"],
         ("rl.num_generations=200", "has 128")),
    Case("rerun-no-rl-users-left", ["run", *TOY, "--name=toy", "--sft.user_fraction=0.9999"], ("sft.user_fraction",)),
    Case("rl-from-group-larger-than-catalog", ["rl", "--from=runs/toy", "--rl.rollout=beam", "--rl.num_generations=200"],
         ("rl.num_generations=200",)),
    Case("data-name-of-no-dataset", ["run", *TINY, "--data.name=ml100k_typo"], ("--data.name=ml100k_typo", "no dataset")),
    # a SID build that fails keeps the old cache (nothing of the new one is left, no fingerprint over new files)
    Case("failed-sid-build-keeps-cache", ["sid", "--preset=tiny", "--data_dir=data", "--sid.sid_seed=7",
                                          "--sid.max_vocab=1"], ("max_vocab",)),
    # names: every temporary file beside a folder must fit; undecodable bytes are refused at once
    Case("name-too-long", ["run", *TINY, f"--name={'n' * 250}"], ("--name=", "250 bytes")),
    Case("name-undecodable", ["sft", *TINY, "--name=bad\udcffname"], ("--name=", "not utf-8")),
    Case("data-name-too-long", ["data", "--world=tiny", f"--name={'d' * 240}", "--data_dir=data"], ("--data.name=",)),
    # plug-ins named on the command line that misbehave: one line each
    Case("plugin-returns-meta-tensor", ["run", *TINY, "--rl.reward=inputs/plug.py:meta"], ("rl.reward", "device meta")),
    Case("plugin-returns-complex", ["run", *TINY, "--rl.reward=inputs/plug.py:complex_"], ("rl.reward", "complex")),
    Case("plugin-exits-on-import", ["run", *TINY, "--rl.advantage=inputs/exits.py:fn"], ("rl.advantage", "exited")),
    Case("plugin-reads-argv-on-import", ["run", *TINY, "--rl.reward=inputs/plug.py:fine", "--eval.ks=0"], ("eval.ks",)),
]

OK_CASES = [  # handled correctly: exit 0, nothing outside the command's own outputs touched
    # safe changes on resume (more RL steps, other eval settings, another device) after a kill mid-write
    Case("resume-safe-changes-after-partial-metrics-line",
         [*RESUME, "--rl.max_steps=2", "--eval.max_samples=4", "--device=cpu"], code=0,
         setup=metrics_tail('{"stage": "rl", "step": 1, "rew'), may_change=("runs/toy/",)),
    Case("stale-lock-is-taken-over", [*EVAL, "--eval.max_samples=4"], code=0,
         setup=put("runs/toy/.lock", "999999999\n"), may_change=("runs/toy/",)),
    # what others send you: handled, and nothing of theirs runs or lands outside runs/ and data/
    Case("received-run-evaluates-without-its-plugin", ["eval", "--run=runs/recv", "--eval.max_samples=4"], code=0,
         setup=received(lambda c: c.update(data_dir="elsewhere/data")), may_change=("runs/recv/eval_test",)),
    Case("received-run-rl-writes-beside-it", ["rl", "--from=runs/recv", "--rl.max_steps=1", "--eval.max_samples=4"],
         code=0, setup=chain(received(lambda c: c.update(runs_dir="elsewhere")),
                             own_folder("elsewhere/recv_sapo", ("sft.pt", "metrics.jsonl", "eval_test.json"))),
         may_change=("runs/recv_sapo/",)),
    Case("lock-of-a-live-process-that-is-not-minisapo", [*EVAL, "--eval.max_samples=4"], code=0,
         setup=put("runs/toy/.lock", "1\n"), may_change=("runs/toy/",)),
    Case("lock-with-a-huge-pid", [*EVAL, "--eval.max_samples=4"], code=0,
         setup=put("runs/toy/.lock", "99999999999999999999\n"), may_change=("runs/toy/",)),
    Case("lock-with-garbage", [*EVAL, "--eval.max_samples=4"], code=0,
         setup=put("runs/toy/.lock", "not a pid at all\n"), may_change=("runs/toy/",)),
    Case("stale-leftovers-are-cleaned", [*EVAL, "--eval.max_samples=4"], code=0,
         setup=chain(put("runs/toy/.sft.pt.tmp-999999999", b"half a checkpoint"), put("runs/toy/.sid.tmp-999999999", "DIR"),
                     put("data/processed/.compose_tiny.building-999999999/compose_tiny.inter", "half a dataset"),
                     put("data/processed/compose_tiny/.dataset.json.tmp-999999999", "{")),
         may_change=("runs/toy/", "data/processed/")),
    Case("sft-over-a-full-run-drops-its-rl-files", ["sft", *TOY, "--name=toy"], code=0, may_change=("runs/toy/",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(case, request, monkeypatch, capsys):
    if case.id.startswith("unavailable-device") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    if case.setup or case.may_change:
        ws = request.getfixturevalue("ws")
    else:  # a case that may change nothing at all can share one copy
        ws = request.getfixturevalue("shared_ws")
        monkeypatch.chdir(ws)
    if case.setup:
        case.setup(ws)
    before = snapshot(ws)
    capsys.readouterr()
    code = main(list(case.argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    lines = error_lines(err)
    assert code == case.code, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("minisapo"), err[-2000:]
    for text in case.expect:
        assert text.lower() in lines[0].lower(), lines[0]
    assert not Path(MARKER).exists(), "code from a checkpoint ran"
    lost = {p for p in changed(before, snapshot(ws)) if not p.startswith(case.may_change or ("\0",))}
    assert not lost, f"files outside the command's own outputs changed: {sorted(lost)}"


@pytest.mark.parametrize("case", OK_CASES, ids=[c.id for c in OK_CASES])
def test_handled_cases_succeed_and_touch_only_their_outputs(case, ws, capsys):
    if case.setup:
        case.setup(ws)
    before = snapshot(ws)
    assert main(list(case.argv)) == case.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and not error_lines(err)
    assert not Path(MARKER).exists(), "code named by a received run ran"
    lost = {p for p in changed(before, snapshot(ws)) if not p.startswith(case.may_change)}
    assert not lost, sorted(lost)
    assert not (ws / "elsewhere/data").exists()  # a received run's folders are never destinations
    if case.id.startswith("lock-"):
        assert "taking it over" in err and not (ws / "runs/toy/.lock").exists()
    if case.id.startswith("stale-leftovers"):
        assert not [p for p in ws.rglob("*") if re.search(r"\.(tmp|building|old)-\d+$", p.name)]
    if case.id.startswith("sft-over-a-full-run"):
        assert not [p.name for p in (ws / "runs/toy").iterdir() if p.name.startswith("rl_")]
        assert "test metrics, model (toy; " in out and "SFT+RL" not in (ws / "runs/toy/report.md").read_text()
    if case.id.startswith("resume-safe"):
        assert "runs/toy/metrics.jsonl: dropped a partial last line" in err
        records = [json.loads(line) for line in (ws / "runs/toy/metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if r.get("stage") == "rl" and "reward" in r] == [1, 2]  # RL continued
        cfg = json.loads((ws / "runs/toy/config.json").read_text())
        assert (cfg["rl"]["max_steps"], cfg["eval"]["max_samples"], cfg["device"]) == (2, 4, "cpu")
    if case.id.startswith("stale-lock"):
        assert "taking it over" in err and not (ws / "runs/toy/.lock").exists()


# ----------------------------------------------------------------------------------------------
# data readers count and report what they drop or repair


def test_undecodable_ids_never_merge_two_users(ws, capsys):
    assert main(["data", *A14, "--reviews=inputs/badutf8/reviews_Toy_5.json", "--name=u8"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "user/item id is not valid UTF-8" in out
    users = {line.split("\t")[0] for line in (ws / "data/processed/u8/u8.inter").read_text().splitlines()[1:]}
    assert users == {"A1", "A2", "A3"}  # the two undecodable users were dropped, not merged into one "U\ufffd"
    info = json.loads((ws / "data/processed/u8/dataset.json").read_text())
    assert info["bad_review_lines"] == 4


def test_non_finite_ratings_and_timestamps_are_dropped_and_counted(ws, capsys):
    assert main(["data", *A14, "--reviews=inputs/nanrev/reviews_Toy_5.json", "--name=nanrev"]) == 0
    out = capsys.readouterr().out
    assert "NaN, infinite" in out
    inter = (ws / "data/processed/nanrev/nanrev.inter").read_text().lower()
    assert "nan" not in inter and "inf" not in inter
    assert json.loads((ws / "data/processed/nanrev/dataset.json").read_text())["bad_review_lines"] == 2


def test_wrongly_typed_meta_fields_are_emptied_and_counted(ws, capsys):
    assert main(["data", *A14, "--reviews=inputs/a23/Toy.jsonl", "--kcore=0", "--name=a23"]) == 0
    out = capsys.readouterr().out
    assert "repaired 1 line(s)" in out and "title: list" in out
    item = (ws / "data/processed/a23/a23.item").read_text()
    assert "['list'" not in item and "{'a'" not in item
    assert item.splitlines()[1].split("\t")[:2] == ["B001", "B001"]  # no usable title: the id stands in


def test_atomic_reader_counts_duplicates_nan_and_undecodable_ids(ws, capsys):
    assert main(["data", "--source=atomic", "--path=inputs/atom", "--kcore=0", "--data_dir=data"]) == 0
    out = capsys.readouterr().out
    assert "skipped 4 malformed line(s)" in out and "NaN or infinite" in out and "not valid UTF-8" in out
    assert "duplicate item id" in out
    items = (ws / "data/processed/atom/atom.item").read_text()
    assert "red kite" in items and "duplicate kite" not in items  # the first row of an id wins
    users = {line.split("\t")[0] for line in (ws / "data/processed/atom/atom.inter").read_text().splitlines()[1:]}
    assert users == {"u0", "u1", "u2", "u3"}


def test_vectors_with_some_zero_rows_warn(ws, capsys):
    assert main(["sid", "--preset=tiny", "--data_dir=data", "--sid.method=rqkmeans",
                 "--sid.vectors=inputs/somezero.npy"]) == 0
    assert "1 of 128 rows" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# malicious checkpoints, NaN, the lock, precedence, debug


def test_a_malicious_checkpoint_does_not_run(ws, capsys):
    for name in ("sft.pt", "rl_checkpoint.pt"):
        torch.save({"model": Evil(), "step": 1}, ws / "runs/toy" / name)
    for argv in (EVAL, ["rl", "--from=runs/toy", "--name=x"], RESUME, SFT_RESUME):
        assert main(argv) == 2
        assert not (ws / MARKER).exists()
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 4 and all("so it was not loaded" in line for line in lines)
    # the same file loaded with weights_only=False would have run it: the test can fail
    torch.load(ws / "runs/toy/sft.pt", weights_only=False)
    assert (ws / MARKER).exists()


def test_nan_in_training_stops_and_keeps_the_last_good_checkpoint(ws, capsys, monkeypatch):
    import minisapo.sft as sft

    real_loss, real_indices, now = sft.response_loss, sft.batch_indices, {}

    def indices(step, *a, **k):  # remember which optimiser step is running (0-based)
        now["step"] = step
        return real_indices(step, *a, **k)

    def nan_from_step_3(model, x, targets, mask, normalizer=None):
        loss = real_loss(model, x, targets, mask, normalizer)
        return loss * float("nan") if torch.is_grad_enabled() and now.get("step", 0) >= 2 else loss

    monkeypatch.setattr(sft, "batch_indices", indices)
    monkeypatch.setattr(sft, "response_loss", nan_from_step_3)
    assert main(["sft", *TINY, "--name=n", "--sft.max_steps=4", "--sft.eval_every=2", "--sft.log_every=1"]) == 2
    line = error_lines(capsys.readouterr().err)[0]
    assert line.startswith("minisapo sft: error: sft: the loss is nan at step 3") and "last good checkpoint is kept" in line
    ckpt = torch.load(ws / "runs/n/sft.pt", weights_only=True)
    assert ckpt["step"] == 2 and not ckpt["done"]  # the last good checkpoint
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    rows = [json.loads(r, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))
            for r in (ws / "runs/n/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]  # nothing was logged for the NaN step
    # resuming with the bad ingredient gone continues from step 2
    monkeypatch.setattr(sft, "response_loss", real_loss)
    assert main(["sft", *TINY, "--name=n", "--sft.max_steps=4", "--sft.eval_every=2", "--sft.log_every=1",
                 "--resume"]) == 0
    assert torch.load(ws / "runs/n/sft.pt", weights_only=True)["step"] == 4


LATE_NAN = """import torch
from minisapo.rl import step_advantages

CALLS = [0]


def late_nan(rewards, group_size, scale_rewards="group"):
    adv = step_advantages(rewards, group_size, scale_rewards)
    if rewards.size(0) == 4:  # an RL batch (2 prompts x 2 rollouts), not the example the option is tried on
        CALLS[0] += 1
        if CALLS[0] >= {nan_from}:
            return adv * float("nan")
    return adv
"""


def test_a_plugin_nan_at_a_later_step_names_it_and_leaves_a_resumable_run(ws, capsys):
    from minisapo import plugins

    rl = ["rl", "--from=runs/toy", "--name=late", "--rl.max_steps=4", "--rl.save_every=0", *DIRS]
    Path("late.py").write_text(LATE_NAN.format(nan_from=3))
    assert main([*rl, "--rl.advantage=late.py:late_nan"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "rl: at step 3, --rl.advantage=late.py:late_nan returned NaN" in lines[0], lines
    assert "the run is saved at step 2" in lines[0] and "--resume" in lines[0]
    ckpt = torch.load(ws / "runs/late/rl_checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and not ckpt["done"]  # written when the NaN stopped the run (save_every=0)
    rows = [json.loads(r) for r in (ws / "runs/late/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2]
    Path("late.py").write_text(LATE_NAN.format(nan_from=99))  # the cause fixed: --resume finishes the run
    plugins.forget()  # a new command is a new process: the file is read again
    assert main([*rl, "--rl.advantage=late.py:late_nan", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert torch.load(ws / "runs/late/rl_checkpoint.pt", weights_only=True)["step"] == 4


def test_a_step_plugin_that_returns_one_advantage_per_response_says_so_once(tmp_path, capsys):
    from minisapo.rl import rl_config
    from minisapo.rl import advantage_function, reward_position
    from minisapo.plugins import EXAMPLE_GROUP, EXAMPLE_MATCHES

    (tmp_path / "mean.py").write_text("def mean_steps(rewards, group_size, scale_rewards='group'):\n"
                                      "    r = rewards.float().mean(dim=-1)\n"
                                      "    g = r.view(-1, group_size)\n"
                                      "    return (g - g.mean(dim=1, keepdim=True)).reshape(-1)\n")
    spec = f"{tmp_path / 'mean.py'}:mean_steps"
    rl_config("sapo", advantage=spec)  # tried on the example when the config is made
    adv = advantage_function(spec)(reward_position(EXAMPLE_MATCHES), EXAMPLE_GROUP, "group")
    assert adv.shape == (len(EXAMPLE_MATCHES),)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1 and "every step of a response now gets the same advantage" in lines[0], lines
    assert "(12,) for step rewards (12, 3)" in lines[0]


def test_metrics_logger_writes_null_for_non_finite_values(tmp_path):
    from minisapo.metrics_log import MetricsLogger

    log = MetricsLogger(tmp_path / "m.jsonl")
    log.log({"a": float("nan"), "b": float("inf"), "c": torch.tensor(1.5), "d": [1.0, float("-inf")]})
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"a": None, "b": None, "c": 1.5, "d": [1.0, None]}


def test_a_busy_run_is_refused(ws, capsys):
    from minisapo.lock import run_lock

    with run_lock(ws / "runs/toy"):  # another command of this process holds it
        before = snapshot(ws)
        assert main([*EVAL, "--eval.max_samples=4"]) == 2
        assert main(RESUME) == 2
        assert main(["rl", "--from=runs/toy", "--name=other"]) == 2  # its SFT run is still being written
        assert snapshot(ws) == before
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 3 and all("in use by another minisapo command" in line for line in lines)


def test_two_commands_on_one_run_at_once(ws, capsys):
    """Two processes: while one holds runs/toy (a stand-in that only takes the lock, like a running command
    would), a real `minisapo eval` on that run is refused with exit code 2; once it is gone, its lock is stale."""
    code = ("import time; from minisapo.lock import run_lock\n"
            "with run_lock('runs/toy'):\n    print('locked', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(ws)
        r = subprocess.run([sys.executable, "-m", "minisapo.cli", *EVAL], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        lines = error_lines(r.stderr)
        assert len(lines) == 1 and f"in use by another minisapo command (process {holder.pid}" in lines[0]
        assert snapshot(ws) == before
    finally:
        holder.kill()
        holder.wait()
    assert main([*EVAL, "--eval.max_samples=4"]) == 0  # its process is gone: the stale lock is taken over
    assert "taking it over" in capsys.readouterr().err and not (ws / "runs/toy/.lock").exists()


def test_precedence_run(world):
    """`run --algo=sapo --rl.reward=prefix --rl.step_token_mean=false` keeps the user's settings."""
    cfg = json.loads((world / "runs/toy/config.json").read_text())
    assert (cfg["rl"]["reward"], cfg["rl"]["advantage"], cfg["rl"]["step_token_mean"]) == ("prefix", "step", False)


def test_precedence_rl(ws):
    assert main(["rl", "--from=runs/toy", "--algo=grpo", "--rl.reward=sidreasoner", "--rl.max_steps=0",
                 "--name=prec"]) == 0
    cfg = json.loads((ws / "runs/prec/config.json").read_text())
    # the SFT run's config, then grpo's preset (advantage, step_token_mean), then the user's reward
    assert (cfg["rl"]["reward"], cfg["rl"]["advantage"], cfg["rl"]["step_token_mean"]) == ("sidreasoner", "sequence", False)


@pytest.mark.filterwarnings("ignore:No artists with labels")  # rl.max_steps=0: the RL curves are empty
def test_precedence_compare(ws, capsys):
    from minisapo.compare import algo_configs

    assert main(["compare", *TINY, "--rl.max_steps=0", "--seeds=1", "--algos=grpo,sapo", "--rl.step_token_mean=true",
                 "--name=prec"]) == 0
    assert "applies to every algorithm" in capsys.readouterr().out
    got = {a: json.loads((ws / f"runs/compare_prec/seed0/{a}/config.json").read_text())["rl"] for a in ("grpo", "sapo")}
    assert (got["grpo"]["reward"], got["grpo"]["advantage"], got["grpo"]["step_token_mean"]) == ("exact", "sequence", True)
    assert (got["sapo"]["reward"], got["sapo"]["advantage"], got["sapo"]["step_token_mean"]) == ("position", "step", True)
    cfgs = algo_configs({"preset": "tiny", "rl.reward": "prefix"}, ["grpo", "sapo_seq_adv"])
    assert [c.rl.reward for c in cfgs.values()] == ["prefix", "prefix"]
    assert [c.rl.advantage for c in cfgs.values()] == ["sequence", "sequence"]
    # changing a setting of an existing comparison is refused, not silently mixed with the old pieces
    assert main(["compare", *TINY, "--rl.max_steps=0", "--seeds=1", "--algos=grpo,sapo", "--name=prec",
                 "--sft.learning_rate=0.01"]) == 2
    assert "was made with other settings" in error_lines(capsys.readouterr().err)[0]


def test_debug_shows_the_traceback(ws, monkeypatch, capsys):
    with pytest.raises(ValueError, match="another --name"):
        main(["rl", "--from=runs/toy", "--name=toy", "--debug"])
    monkeypatch.setenv("MINISAPO_DEBUG", "1")
    with pytest.raises(ValueError, match="is not a folder name"):
        main(["run", "--name=.."])


def test_a_real_bug_keeps_its_traceback(ws, monkeypatch):
    import minisapo.pipeline as pipeline

    def bug(*a, **k):
        raise KeyError("a bug in minisapo")

    monkeypatch.setattr(pipeline, "cmd_data", bug)
    with pytest.raises(KeyError):
        main(["data", "--data_dir=data"])


def test_path_escapes_are_refused(ws, capsys):
    """Two escapes that once got through: `data --name=../../../victim` removed a folder outside data/, `--name=.` deleted
    *.pt files directly under runs_dir. Both are refused before anything is touched, inside or outside."""
    victim = ws.parent / "victim"
    _write(victim / "someone_else.txt", "keep me")
    _write(ws / "runs/precious.pt", b"keep me")
    outside = snapshot(ws.parent)
    assert main(["data", "--name=../../../victim", "--world=tiny", "--data_dir=data"]) == 2
    assert main(["sft", *TINY, "--name=."]) == 2
    assert main(["run", *TINY, f"--name={victim}"]) == 2
    assert main(["data", f"--name={victim}", "--data_dir=data"]) == 2
    assert snapshot(ws.parent) == outside
    assert len(error_lines(capsys.readouterr().err)) == 4


def test_out_of_memory_is_one_line(ws, monkeypatch, capsys):
    import minisapo.pipeline as pipeline

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(pipeline, "cmd_data", oom)
    assert main(["data", "--data_dir=data"]) == 2
    assert "out of memory: use a smaller" in error_lines(capsys.readouterr().err)[0]


def test_device_cuda_without_cuda(ws, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = snapshot(ws)
    assert main(["run", *TINY, "--name=gpu", "--device=cuda"]) == 2
    assert "CUDA is not available" in error_lines(capsys.readouterr().err)[0]
    assert snapshot(ws) == before


# ----------------------------------------------------------------------------------------------
# what others send you, beyond one command: trusted plug-ins, torchrun variables, memory, signals, file sizes


def test_a_received_plugin_runs_only_when_named_again_or_trusted(ws, capsys):
    received()(ws)
    assert main(["eval", "--run=runs/recv", "--split=bogus"]) == 2
    assert not (ws / MARKER).exists()
    # where a command would need it, it is one line naming the option and the file (here: a library user)
    from minisapo import plugins, rl
    from minisapo.pipeline import load_run_config

    plugins.reset()
    cfg = load_run_config("runs/recv")
    with pytest.raises(ValueError, match=r"--rl.reward=runs/recv/helper.py:fn is named in runs/recv/config.json"):
        rl.reward_function(cfg.rl.reward)
    assert not (ws / MARKER).exists()
    # named again on the command line, or with --trust-plugins, it is imported: the marker shows the test can fail
    assert main(["eval", "--run=runs/recv", f"--rl.reward={PLUGIN}", "--split=bogus"]) == 2
    assert (ws / MARKER).exists()
    (ws / MARKER).unlink()
    plugins.forget()  # imported once per process: forget it, so it is imported again
    assert main(["eval", "--run=runs/recv", "--trust-plugins", "--split=bogus"]) == 2
    assert (ws / MARKER).exists()
    assert len(error_lines(capsys.readouterr().err)) == 3


@pytest.mark.parametrize("env, expect", [({"RANK": "1"}, "RANK=1 with WORLD_SIZE=1"),
                                         ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number")])
def test_torchrun_variables_without_torchrun(ws, monkeypatch, capsys, env, expect):
    """RANK / WORLD_SIZE without a process group: one line naming them, before a file is touched (the file
    writer and the cleaner read the rank from the same place)."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = snapshot(ws)
    assert main(["sft", *TOY, "--name=toy"]) == 2
    assert main([*EVAL, "--eval.max_samples=4"]) == 2
    out, err = capsys.readouterr()
    lines = error_lines(err)
    assert len(lines) == 2 and all(expect in line for line in lines) and "wrote" not in out
    assert snapshot(ws) == before


def test_cpu_out_of_memory_is_one_line(ws, monkeypatch, capsys):
    import minisapo.pipeline as pipeline

    def huge(*a, **k):
        return torch.empty(1 << 50, dtype=torch.uint8)  # the CPU allocator's own RuntimeError

    monkeypatch.setattr(pipeline, "new_model", huge)
    before = snapshot(ws)
    assert main(["sft", *TINY, "--name=oom"]) == 2
    line = error_lines(capsys.readouterr().err)
    assert len(line) == 1 and "out of memory: use a smaller" in line[0]
    assert {p for p in changed(before, snapshot(ws)) if not p.startswith("runs/oom/")} == set()


def test_sigterm_mid_checkpoint_leaves_no_temporary_file(ws, monkeypatch, capsys):
    import signal

    import minisapo.runs as runs

    real_save = torch.save

    def save_then_term(obj, path, *a, **k):
        Path(path).write_bytes(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGTERM)  # the command is stopped mid-write
        real_save(obj, path, *a, **k)

    monkeypatch.setattr(runs.torch, "save", save_then_term)
    assert main(["sft", *TINY, "--name=term"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the process's own again
    assert not [p for p in ws.rglob("*") if ".tmp" in p.name or ".building" in p.name or p.name == ".lock"]
    assert not (ws / "runs/term/sft.pt").exists()


def test_a_file_size_limit_leaves_no_temporary_file(ws):
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))\n"
            "from minisapo.cli import main; sys.exit(main(sys.argv[1:]))\n")
    before = snapshot(ws)
    r = subprocess.run([sys.executable, "-c", code, *EVAL, "--eval.max_samples=8", "--split=valid"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "eval_valid.json" in lines[0] and "file-size limit" in lines[0]
    assert snapshot(ws) == before
