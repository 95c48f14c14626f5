"""The `minisapo` command.

    minisapo run     [--preset=small] [--name=RUN] [--key=value ...]   data -> SIDs -> SFT -> RL -> eval
    minisapo data    [--source=synthetic|amazon|atomic] [--name=...] [--reviews=..] [--meta=..] [--path=..]
    minisapo sid     [--name=<dataset>] [--levels=3] [--codebook_size=0] ...
    minisapo sft     [--preset=..] [--name=RUN] [--resume] ...             data -> SIDs -> SFT -> eval
    minisapo rl      --from=<sft run dir> [--algo=sapo|grpo|...] [--name=RUN] [--resume] ...
    minisapo eval    --run=<run dir> [--split=test|valid]   (--split here picks the split to evaluate;
                     other settings, e.g. --eval.beam_width=20, write a file of their own: eval_test_beam_width20.json)
    minisapo compare [--algos=grpo,sapo] [--seeds=3] [--preset=..] [--sweep=items_per_leaf:4,16,64]
                     [--from=<sft run dir>]   (--from: every seed starts from that run's SFT model)
                     [--tune=rl.learning_rate:1e-5,3e-5,1e-4]   (each arm's value picked on validation users)
                     arms: rl presets, sft_continued (the control), supervised, preset+key=value
    minisapo bench   [--device=auto] [--preset=small] [--threads=1]

Several processes (GPUs, or CPU shares): `torchrun --nproc_per_node=N -m minisapo run|sft|rl|compare ...`
(minisapo/distributed.py): the same results as one process, in less time.

Every `--key=value` that is not one of the flags above is a config override (see
`minisapo run --help-config` for every key and its default). Settings apply in one order everywhere:
defaults, then `--preset`, then `--algo`, then your overrides. A dataset made once with
`minisapo data --source=... --name=X` is found by name later: `--data.name=X` (`--name=X` in sid).

A run folder's config.json is data: a plug-in it names (`--rl.reward=file.py:fn`) is imported only when
the command names it again, or with --trust-plugins.

An expected failure (a bad setting or name, a missing, corrupt or unreadable file, a device that is not
there, NaN in training, a busy run, memory running out) is one line on stderr naming the file or key, exit
code 2; `--debug` (or MINISAPO_DEBUG=1) shows the traceback instead. An interrupted command (Ctrl-C,
SIGTERM) removes its temporary files and exits with code 130.
"""

from __future__ import annotations

import argparse
import errno
import gzip
import os
import pickle
import signal
import sys
import threading
import zipfile
import zlib

from minisapo.config import ConfigError, describe, make_config, parse_overrides

COMMANDS = ("run", "data", "sid", "sft", "rl", "eval", "compare", "bench")

# What a user can cause (bad settings, names, files, devices; NaN; a busy run): one line, exit code 2.
# Anything else is a bug in minisapo and keeps its traceback.
EXPECTED = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError, MemoryError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line (argparse prints the whole usage first)
        print(f"minisapo: error: {message} (see `minisapo --help`)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="minisapo", description=__doc__, allow_abbrev=False,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and exit")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--from", dest="from_run", help="rl, compare: the SFT run directory to start from")
    p.add_argument("--algo", help="rl: algorithm preset (see minisapo.rl.ALGOS)")
    p.add_argument("--run", help="eval: the run directory to evaluate")
    p.add_argument("--algos", default="grpo,sapo", help="compare: comma-separated algorithm presets")
    p.add_argument("--seeds", type=int, default=3, help="compare: number of seeds")
    p.add_argument("--sweep", help="compare: KNOB:V1,V2,... e.g. items_per_leaf:4,16,64")
    p.add_argument("--tune", help="compare: KEY:V1,V2,... an RL setting chosen per arm on validation users (seed 0), "
                                  "e.g. rl.learning_rate:1e-5,3e-5,1e-4")
    p.add_argument("--trust-plugins", action="store_true",
                   help="import the plug-ins a run's config.json names (--rl.reward/--rl.advantage=file.py:fn)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (also MINISAPO_DEBUG=1)")
    return p


def error_line(e: BaseException) -> str:
    """One line naming the file or key and what to change."""
    if isinstance(e, OSError) and not isinstance(e, (gzip.BadGzipFile, zipfile.BadZipFile)) and e.filename:
        what = {errno.ENOENT: "does not exist: check the path",
                errno.EISDIR: "is a directory, but a file is expected there",
                errno.ENOTDIR: "has a file where a folder is expected in its path",
                errno.EACCES: "cannot be accessed (permission denied)",
                errno.EPERM: "cannot be accessed (operation not permitted)",
                errno.ENOSPC: "cannot be written: the disk is full",
                errno.EEXIST: "already exists as a file where a folder is needed",
                errno.EROFS: "is on a read-only file system",
                errno.ELOOP: "is a symbolic link: minisapo never writes through a link; replace it with the file itself",
                errno.EFBIG: "cannot be written: it would pass the file-size limit (ulimit -f)",
                errno.ENAMETOOLONG: "has a name too long for the file system: use a shorter --name"
                }.get(e.errno, e.strerror or str(e))
        return f"{e.filename} {what}"
    if isinstance(e, MemoryError) or _out_of_memory(e):
        return ("out of memory: use a smaller --preset, --sft.batch_size, --rl.batch_size, --rl.num_generations or "
                "--eval.batch_size")
    msg = str(e) or type(e).__name__
    if isinstance(e, (EOFError, zlib.error, pickle.UnpicklingError, zipfile.BadZipFile)):
        msg = f"a file is truncated or corrupt ({type(e).__name__}: {msg})"
    return " ".join(msg.split())  # one line


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, rest = _parser().parse_known_args(argv)
    except SystemExit as e:  # --help, or a bad command line (already reported in one line)
        return int(e.code or 0)
    debug = args.debug or os.environ.get("MINISAPO_DEBUG", "") not in ("", "0")
    from minisapo import distributed, plugins  # under torchrun: join the process group (else nothing happens)

    plugins.reset(trust_all=args.trust_plugins)
    on_term = _interrupt_on_sigterm()
    try:
        distributed.init()
        code = _dispatch(args, rest)
        distributed.cleanup()
        return code
    except KeyboardInterrupt:
        _close_bars()
        print(f"minisapo {args.command}: interrupted (checkpoints are written atomically: --resume continues)",
              file=sys.stderr)
        return 130
    except Exception as e:
        # bad input is reported in one line that says what to change; --debug / MINISAPO_DEBUG=1 show the traceback
        if debug or not (isinstance(e, EXPECTED) or _out_of_memory(e)):
            raise
        _close_bars()
        print(f"minisapo {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2
    finally:
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)


def _interrupt_on_sigterm():
    """SIGTERM (`kill`, a scheduler's time limit) interrupts the command like Ctrl-C, so the same cleanup runs
    (temporary files and folders removed, the lock released). Returns the handler it replaced (None when
    this is not the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _out_of_memory(e: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA's; torch.OutOfMemoryError is the same class), or the CPU allocator's
    RuntimeError, which has no class of its own."""
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def _close_bars() -> None:
    """Finish any progress bar the failed stage left open, so the error starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def _dispatch(args, rest: list[str]) -> int:
    from minisapo import pipeline  # imported here so `minisapo --help` is instant

    overrides = parse_overrides(rest)
    if args.command in ("data", "sid") and "name" in overrides:  # there, --name is the dataset's name
        overrides["data.name"] = overrides.pop("name")
    if args.algo is not None and args.command not in ("run", "rl"):
        raise ConfigError(f"--algo is for run and rl (compare takes --algos=a,b; minisapo {args.command} has no RL stage)")
    if args.help_config:
        print(describe(make_config(overrides, algo=args.algo)))
        return 0
    if args.command == "bench":
        from minisapo.bench import cmd_bench

        return cmd_bench(overrides)
    if args.command == "eval":
        if not args.run:
            raise ConfigError("minisapo eval needs --run=<run dir>, e.g. --run=runs/small")
        return pipeline.cmd_eval(args.run, str(overrides.pop("split", "test")), overrides)
    if args.command == "rl":
        if not args.from_run:
            raise ConfigError("minisapo rl needs --from=<sft run dir>, e.g. --from=runs/small")
        return pipeline.cmd_rl(args.from_run, args.algo or "sapo", overrides, resume=args.resume)
    if args.command == "compare":
        from minisapo.compare import cmd_compare

        return cmd_compare(overrides, args.algos.split(","), args.seeds, args.sweep, args.from_run, args.tune)
    if args.command == "run":  # the one precedence rule: defaults, preset, --algo, overrides
        return pipeline.cmd_run(pipeline.make_run_config(overrides, algo=args.algo or "sapo"), resume=args.resume)
    cfg = pipeline.make_run_config(overrides)
    if args.command == "data":
        return pipeline.cmd_data(cfg)
    if args.command == "sid":
        return pipeline.cmd_sid(cfg)
    return pipeline.cmd_sft(cfg, resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
