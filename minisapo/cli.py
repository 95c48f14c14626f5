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
    minisapo bench   [--device=auto] [--preset=small] [--threads=1]

Every `--key=value` that is not one of the flags above is a config override (see
`minisapo run --help-config` for every key and its default). A dataset made once with
`minisapo data --source=... --name=X` is found by name later: `--data.name=X` (`--name=X` in sid).
"""

from __future__ import annotations

import argparse
import os
import sys

from minisapo.config import ConfigError, describe, make_config, parse_overrides

COMMANDS = ("run", "data", "sid", "sft", "rl", "eval", "compare", "bench")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minisapo", description=__doc__, allow_abbrev=False,
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
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = _parser().parse_known_args(argv)
    from minisapo import pipeline  # imported here so `minisapo --help` is instant

    try:
        overrides = parse_overrides(rest)
        if args.command in ("data", "sid") and "name" in overrides:  # there, --name is the dataset's name
            overrides["data.name"] = overrides.pop("name")
        if args.help_config:
            print(describe(make_config(overrides)))
            return 0
        if args.command == "bench":
            return pipeline.cmd_bench(overrides)
        if args.command == "eval":
            if not args.run:
                raise ConfigError("minisapo eval needs --run=<run dir>, e.g. --run=runs/small")
            return pipeline.cmd_eval(args.run, str(overrides.pop("split", "test")), overrides)
        if args.command == "rl":
            if not args.from_run:
                raise ConfigError("minisapo rl needs --from=<sft run dir>, e.g. --from=runs/small")
            return pipeline.cmd_rl(args.from_run, args.algo or "sapo", overrides, resume=args.resume)
        if args.command == "compare":
            return pipeline.cmd_compare(overrides, args.algos.split(","), args.seeds, args.sweep, args.from_run)
        cfg = pipeline.make_run_config(overrides)
        if args.command == "data":
            return pipeline.cmd_data(cfg)
        if args.command == "sid":
            return pipeline.cmd_sid(cfg)
        if args.command == "sft":
            return pipeline.cmd_sft(cfg, resume=args.resume)
        return pipeline.cmd_run(cfg, algo=args.algo or "sapo", resume=args.resume)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        # bad input is reported in one line that says what to change; MINISAPO_DEBUG=1 shows the traceback
        if os.environ.get("MINISAPO_DEBUG"):
            raise
        print(f"minisapo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
