"""Configuration: one dataclass per stage, composed into `Config`, plus presets and overrides.

Each stage keeps its own config dataclass next to the code that uses it (cleanrl style: the
hyperparameters sit beside the algorithm, each with a comment):

    data      -> minisapo.data.DataConfig
    sid       -> minisapo.sid.SIDConfig
    model     -> minisapo.model.ModelConfig
    reasoning -> minisapo.reasoning.ReasoningConfig
    sft       -> minisapo.sft.SFTConfig
    rl        -> minisapo.rl.RLConfig
    eval      -> minisapo.evaluate.EvalConfig

Command-line overrides are `--key=value`. A key is either `section.field` (`--sft.learning_rate=1e-3`)
or a bare field name when only one section has it (`--n_layer=2`). Values are parsed to the
field's type; an unknown key is an error that names the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field

from minisapo.data import DataConfig
from minisapo.evaluate import EvalConfig
from minisapo.model import ModelConfig
from minisapo.reasoning import ReasoningConfig
from minisapo.rl import RLConfig
from minisapo.sft import SFTConfig
from minisapo.sid import SIDConfig


@dataclass
class Config:
    """Everything a run needs. `config.json` in every run directory is this, resolved."""

    preset: str = "small"  # preset the run started from (see PRESETS); overrides are applied on top
    name: str = ""  # run name: outputs go to <runs_dir>/<name>/ (default: the preset's name)
    seed: int = 0  # seed for model init, data order and sampling (the data itself has data.world_seed)
    device: str = "auto"  # "auto" (cuda > mps > cpu), "cpu", "cuda", "mps"
    data_dir: str = "data"  # raw and processed datasets live under here
    runs_dir: str = "runs"  # every run writes <runs_dir>/<name>/
    data: DataConfig = field(default_factory=DataConfig)
    sid: SIDConfig = field(default_factory=SIDConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = ("data", "sid", "model", "reasoning", "sft", "rl", "eval")

# The CPU budget shared by `small`, `sparse` and `easy` (a few minutes on 2 cores).
# SFT: ~3 epochs of the ~12k train samples at a high learning rate (a 0.39M model wants it);
# RL: 60 steps x 8 prompts x 8 generations at lr 3e-5 with a firm KL (beta 0.04): at this budget a
# larger step or a looser KL only drifts (measured: lr 1e-4, beta 0.001 cost 2-4 points of hit@10);
# test metrics on the first 500 test users.
_CPU: dict[str, object] = {
    "model.n_layer": 3, "model.n_head": 4, "model.n_embd": 96,
    "sft.max_steps": 600, "sft.batch_size": 64, "sft.learning_rate": 3e-3, "sft.eval_every": 300,
    "rl.max_steps": 60, "rl.batch_size": 8, "rl.num_generations": 8, "rl.eval_every": 30, "rl.beta": 0.04,
    "eval.max_samples": 500,
}

# Presets are plain override dicts applied to the defaults, so a preset never hides a setting:
# `minisapo run --preset=tiny --n_layer=4` is exactly "tiny, then n_layer=4".
PRESETS: dict[str, dict[str, object]] = {
    # seconds on a laptop CPU: for tests and smoke checks (numbers only need to be sane)
    "tiny": {
        "data.world": "tiny",
        "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32,
        "sft.max_steps": 200, "sft.batch_size": 32, "sft.learning_rate": 3e-3, "sft.eval_every": 100,
        "sft.eval_samples": 16,
        "rl.max_steps": 8, "rl.batch_size": 4, "rl.num_generations": 8, "rl.eval_every": 4,
        "eval.max_samples": 0,  # all 100 test users
    },
    # the default: the synthetic world, a small model, a few minutes on a 2-core CPU (see _CPU)
    "small": _CPU,
    # one consumer GPU: bigger model, longer training
    "base": {
        "model.n_layer": 6, "model.n_head": 6, "model.n_embd": 384,
        "sft.max_steps": 4000, "sft.batch_size": 128,
        "rl.max_steps": 400, "rl.batch_size": 32, "rl.num_generations": 16,
        "eval.max_samples": 0,
    },
    # real data of about 100k interactions (MovieLens-100k, an Amazon 5-core category), ~30 min on a CPU.
    # A real catalog's SIDs (codebook auto-sized to it: 64 codes per level for ~1.3k items) get distinct
    # last codes (sid.unique_last). Training is sized in epochs, not steps: first next-item pretraining on
    # the training sequences (cheap: every item of a window is a target), then SFT; small batches (16)
    # learned the most per token (measured). Validation on 500 users steers the kept checkpoint.
    "real": {
        "sid.unique_last": True,
        "model.n_layer": 3, "model.n_head": 4, "model.n_embd": 96,
        "sft.pretrain_epochs": 20.0, "sft.max_steps": 0, "sft.epochs": 0.3, "sft.batch_size": 16,
        "sft.learning_rate": 3e-3, "sft.eval_every": 600, "sft.eval_samples": 500, "sft.log_every": 50,
        "rl.max_steps": 30, "rl.batch_size": 8, "rl.num_generations": 8, "rl.eval_every": 15, "rl.beta": 0.04,
        "eval.max_samples": 0,
    },
    # the same budget on a world where exact match is sparse (large catalog, many items per leaf):
    # where the paper says SAPO helps most
    "sparse": {**_CPU, "data.world": "sparse"},
    # the same budget on a world where exact match is easy (few items per leaf, peaked popularity)
    "easy": {**_CPU, "data.world": "easy"},
}


class ConfigError(ValueError):
    """A bad preset, key or value; the message says what to change."""


def did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    """'; did you mean --n_layer?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def _fields(obj) -> dict[str, type]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def all_keys(cfg: Config | None = None) -> list[str]:
    """Every valid `section.field` key (and top-level field) of the config."""
    cfg = cfg or Config()
    keys = [k for k in _fields(cfg) if k not in SECTIONS]
    for s in SECTIONS:
        keys += [f"{s}.{k}" for k in _fields(getattr(cfg, s))]
    return keys


def resolve_key(key: str, cfg: Config | None = None) -> str:
    """Turn a user key (`sft.learning_rate` or bare `n_layer`) into its full `section.field` name."""
    keys = all_keys(cfg)
    if key in keys:
        return key
    owners = [k for k in keys if k.split(".")[-1] == key]
    if len(owners) == 1:
        return owners[0]
    if len(owners) > 1:
        raise ConfigError(f"--{key} is ambiguous: use one of {', '.join('--' + o for o in owners)}")
    bare = sorted({k.split(".")[-1] for k in keys})
    raise ConfigError(f"unknown config key --{key}{did_you_mean(key, keys + bare, '--')} "
                      f"(see `minisapo run --help-config`)")


def _parse(value: str | object, typ, key: str):
    """Parse a command-line string into `typ` (int, float, bool, str, or Optional of those)."""
    if not isinstance(value, str):
        return value
    args = typing.get_args(typ)
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null", ""):
            return None
        typ = next(a for a in args if a is not type(None))
    try:
        if typ is bool:
            low = value.lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return low in ("1", "true", "yes")
        if typ is int:
            return int(value)
        if typ is float:
            return float(value)
        return typ(value)
    except ValueError:
        raise ConfigError(f"--{key}={value}: expected {getattr(typ, '__name__', typ)}") from None


def set_value(cfg: Config, key: str, value) -> None:
    """Set one (possibly bare) key on `cfg`, parsing strings to the field's type."""
    full = resolve_key(key, cfg)
    obj, name = (cfg, full) if "." not in full else (getattr(cfg, full.split(".")[0]), full.split(".")[1])
    setattr(obj, name, _parse(value, _fields(obj)[name], full))


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`["--a=1", "--b.c=x"]` -> `{"a": "1", "b.c": "x"}`; anything else is an error."""
    out = {}
    for a in args:
        if not a.startswith("--") or "=" not in a:
            raise ConfigError(f"expected --key=value, got {a!r}")
        k, v = a[2:].split("=", 1)
        out[k] = v
    return out


def make_config(overrides: dict[str, object] | None = None, preset: str | None = None) -> Config:
    """Defaults, then the preset, then the overrides (all type-checked)."""
    overrides = dict(overrides or {})
    preset = preset or str(overrides.pop("preset", "small"))
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}{did_you_mean(preset, list(PRESETS))} "
                          f"(choose from {', '.join(PRESETS)})")
    cfg = Config(preset=preset)
    for k, v in PRESETS[preset].items():
        set_value(cfg, k, v)
    for k, v in overrides.items():
        set_value(cfg, k, v)
    if not cfg.name:
        cfg.name = preset
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Re-run each section's own checks (`__post_init__`) after overrides were set."""
    for s in SECTIONS:
        post = getattr(getattr(cfg, s), "__post_init__", None)
        if post is not None:
            try:
                post()
            except ValueError as e:
                raise ConfigError(f"{s}: {e}") from None


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """Rebuild a Config from `config.json` (unknown keys are errors, so stale files are noticed)."""
    cfg = Config()
    for k, v in d.items():
        if k in SECTIONS:
            for kk, vv in v.items():
                set_value(cfg, f"{k}.{kk}", vv)
        else:
            set_value(cfg, k, v)
    return cfg


def field_comments(cls) -> dict[str, str]:
    """{field: its trailing `# comment`} read from the dataclass's source (the comments are the docs)."""
    import inspect
    import re

    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)", line)
        if m:
            out.setdefault(m.group(1), m.group(2).strip())
    return out


def describe(cfg: Config | None = None) -> str:
    """Every key with its current value and its comment (for `--help-config`)."""
    cfg = cfg or Config()
    lines = []
    for k in all_keys(cfg):
        obj, name = (cfg, k) if "." not in k else (getattr(cfg, k.split(".")[0]), k.split(".")[1])
        comment = field_comments(type(obj)).get(name, "")
        lines.append(f"  --{k}={getattr(obj, name)!r}".ljust(44) + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)
