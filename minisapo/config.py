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

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from minisapo import plugins, rl
from minisapo.data import DataConfig, dataset_name
from minisapo.evaluate import EvalConfig
from minisapo.files import name_problem, refuse_problems
from minisapo.model import ModelConfig
from minisapo.reasoning import ReasoningConfig
from minisapo.rl import RLConfig
from minisapo.runs import device_problem
from minisapo.sft import SFTConfig
from minisapo.sid import SIDConfig


@dataclass
class Config:
    """Everything a run needs. `config.json` in every run directory is this, resolved."""

    preset: str = "small"
    """preset the run started from (see PRESETS); overrides are applied on top"""
    name: str = ""
    """run name: outputs go to <runs_dir>/<name>/ (default: the preset's name)"""
    seed: int = 0
    """seed for model init, data order and sampling (the data itself has data.world_seed)"""
    device: str = "auto"
    """auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps"""
    data_dir: str = "data"
    """raw and processed datasets live under here"""
    runs_dir: str = "runs"
    """every run writes <runs_dir>/<name>/"""
    data: DataConfig = field(default_factory=DataConfig)
    sid: SIDConfig = field(default_factory=SIDConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = ("data", "sid", "model", "reasoning", "sft", "rl", "eval")

# The compose world (README "Results"): computing thinking, SFT on a fifth of users' traces, the paper's RL.
_COMPOSE: dict[str, object] = {
    "data.world": "compose",  # sid.method and reasoning.teacher "auto": the world's own codes and facts
    "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 64,
    "sft.user_fraction": 0.2, "sft.batch_size": 64, "sft.learning_rate": 3e-3, "sft.eval_samples": 1000,
}  # RL: rl.py's defaults (the paper's setting)

# The taxonomy world's CPU budget (presets `taxonomy`, `sparse`, `easy`): a first-order world where the thinking
# restates what the history shows; next-item pretraining, SFT on every user's traces, the beam recipe of RL.
_TAXONOMY: dict[str, object] = {
    "data.world": "default", "model.n_layer": 3, "model.n_head": 4, "model.n_embd": 96,
    "sft.pretrain_epochs": 10.0, "sft.pretrain_stride": 4,
    "sft.max_steps": 600, "sft.batch_size": 64, "sft.learning_rate": 3e-3, "sft.eval_every": 300,
    "sft.eval_samples": 250,
    "rl.rollout": "beam", "rl.think_credit": False, "rl.num_generations": 16, "rl.beta": 0.0,
    "rl.learning_rate": 1e-4, "rl.batch_size": 16,
    "rl.max_steps": 60, "rl.eval_every": 30, "rl.keep_best": True,
    "eval.max_samples": 500,
}

# Presets are plain override dicts applied to the defaults, so a preset never hides a setting:
# `minisapo run --preset=tiny --n_layer=4` is exactly "tiny, then n_layer=4".
PRESETS: dict[str, dict[str, object]] = {
    # about a minute on a laptop CPU: tests and smoke checks (a tiny compose world: 2 SID levels, 128 items)
    "tiny": {
        **_COMPOSE, "data.world": "compose_tiny", "sid.levels": 2,
        "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32,
        "sft.user_fraction": 1.0, "sft.max_steps": 600, "sft.batch_size": 32, "sft.eval_every": 200,
        "sft.eval_samples": 16,
        "rl.max_steps": 8, "rl.batch_size": 4, "rl.num_generations": 8, "rl.eval_every": 4,
        "eval.max_samples": 0,  # all 300 test users
    },
    # the default: the compose world in minutes on one CPU thread, with the sid_only comparison
    "small": {
        **_COMPOSE, "sft.max_steps": 1200, "sft.eval_every": 600, "sft.compare_sid_only": True,
        "rl.max_steps": 40, "rl.eval_every": 20, "rl.keep_best": True, "eval.max_samples": 1000,
        "rl.gradient_accumulation_steps": 4,  # a step's 64 x 16 rows in 4 chunks: the same gradient, 1/4 the memory
    },
    # the compose world's race (README "Results"): SFT to its plateau, 50 RL steps, every test user
    "fewtraces": {
        **_COMPOSE, "sft.max_steps": 3200, "sft.eval_every": 400,
        "rl.max_steps": 50, "rl.eval_every": 25, "rl.save_every": 25, "rl.keep_best": False,
        "eval.max_samples": 0,
    },
    # one consumer GPU: bigger model, longer training
    "base": {
        **_COMPOSE, "model.n_layer": 6, "model.n_head": 6, "model.n_embd": 384,
        "sft.max_steps": 4000, "sft.batch_size": 128, "sft.eval_every": 500,
        "rl.max_steps": 400, "rl.batch_size": 64, "rl.eval_every": 50,
        "eval.max_samples": 0,
    },
    # real data of about 100k interactions (MovieLens-100k, an Amazon 5-core category), ~20 min on a CPU thread
    # (README "Real data": how each setting was chosen)
    "real": {
        "sid.unique_last": True, "reasoning.mode": "sid_only",
        "model.n_layer": 3, "model.n_head": 4, "model.n_embd": 96, "model.dropout": 0.1, "model.words": False,
        "sft.pretrain_epochs": 12.0, "sft.pretrain_stride": 4, "sft.max_steps": 0, "sft.epochs": 0.3,
        "sft.batch_size": 16, "sft.learning_rate": 3e-3, "sft.eval_every": 2000, "sft.eval_samples": 0,
        "sft.ema": 0.999, "sft.log_every": 50,
        "rl.rollout": "beam", "rl.think_credit": False, "rl.learning_rate": 1e-4, "rl.batch_size": 16,
        "rl.max_steps": 30, "rl.eval_every": 15, "rl.keep_best": True,
        "eval.max_samples": 0, "eval.item_id_baseline": True,
    },
    # the first-order taxonomy world (the earlier default): thinking restates the history (see _TAXONOMY)
    "taxonomy": _TAXONOMY,
    # the taxonomy world where exact match is sparse (large catalog, many items per leaf)
    "sparse": {**_TAXONOMY, "data.world": "sparse"},
    # the taxonomy world where exact match is easy (few items per leaf, peaked popularity)
    "easy": {**_TAXONOMY, "data.world": "easy"},
    # the taxonomy world's fewtraces regime: SFT on a fifth of the users' traces, the beam recipe on the others'
    "taxonomy_fewtraces": {
        **_TAXONOMY, "data.num_users": 5000, "sft.pretrain_epochs": 0.0,
        "sft.user_fraction": 0.2, "sft.max_steps": 3000, "sft.eval_every": 500, "sft.eval_samples": 500,
        "rl.max_steps": 600, "rl.eval_every": 50, "rl.save_every": 50, "rl.keep_best": False,
        "eval.max_samples": 0,
    },
}


class ConfigError(ValueError):
    """A bad preset, key or value; the message says what to change."""


def did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    """'; did you mean --n_layer?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


@functools.lru_cache(maxsize=None)
def _type_hints(cls) -> dict:
    return typing.get_type_hints(cls)  # slow (it compiles every annotation): once per class


def _fields(obj) -> dict[str, type]:
    hints = _type_hints(type(obj))
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
        return _check_type(value, typ, key)
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


def _check_type(value, typ, key: str):
    """A non-string value (from config.json or code) must already have the field's type (ints pass as floats)."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        if value is None:
            return None
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    ok = (isinstance(value, bool) if typ is bool else
          isinstance(value, int) and not isinstance(value, bool) if typ is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if typ is float else
          isinstance(value, typ) if isinstance(typ, type) else True)
    if not ok:
        raise ConfigError(f"--{key}={value!r}: expected {getattr(typ, '__name__', typ)}")
    return float(value) if typ is float else value


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


def make_config(overrides: dict[str, object] | None = None, preset: str | None = None,
                algo: str | None = None) -> Config:
    """Defaults, then the preset, then the `--algo` preset (rl keys), then the overrides (all type-checked);
    the whole config is validated before it is returned. This is the one precedence rule of every command."""
    overrides = dict(overrides or {})
    preset = preset or str(overrides.pop("preset", "small"))
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}{did_you_mean(preset, list(PRESETS))} "
                          f"(choose from {', '.join(PRESETS)})")
    cfg = Config(preset=preset)
    for k, v in PRESETS[preset].items():
        set_value(cfg, k, v)
    apply_overrides(cfg, overrides, algo=algo, validate_now=False)
    if not cfg.name:
        cfg.name = preset
    validate(cfg)
    return cfg


def plus_settings(name: str, mods: list[str], form: str, bare: str | None = "rl") -> dict[str, str]:
    """The `+key=value` pieces of an algorithm or arm name (`sapo+reward=prefix`) as {key: value}, a bare key in
    section `bare` (None: resolved as any other key); a piece without `=` is an error that names `form`."""
    out = {}
    for mod in mods:
        key, eq, value = mod.partition("=")
        if not eq or not key:
            raise ConfigError(f"{name}: expected {form}, got {mod!r}")
        out[key if "." in key or bare is None else f"{bare}.{key}"] = value
    return out


def apply_algo(cfg: Config, algo: str) -> None:
    """Set the rl keys of an algorithm on `cfg`: a preset of `minisapo.rl.ALGOS` (`--algo=grpo`), optionally
    followed by `+key=value` rl settings, e.g. `--algo=sapo+advantage=my_algos.py:reward_to_go` (your own
    advantage with SAPO's rewards) or `--algos=grpo,sapo,sapo+reward=prefix` in `minisapo compare`."""
    name, *mods = algo.split("+")
    if name not in rl.ALGOS:
        raise ConfigError(f"unknown --algo={algo}{did_you_mean(name, list(rl.ALGOS))}; choose one of {', '.join(rl.ALGOS)}, "
                          f"optionally with +key=value rl settings (e.g. sapo+advantage=my_algos.py:fn)")
    for k, v in rl.ALGOS[name].items():
        set_value(cfg, f"rl.{k}", v)
    for key, value in plus_settings(f"--algo={algo}", mods, "PRESET+key=value").items():
        _set_given(cfg, key, value)


def _set_given(cfg: Config, key: str, value) -> None:
    """`set_value` for a setting the command (or code) gives itself: a plug-in it names may be imported."""
    set_value(cfg, key, value)
    section, _, name = resolve_key(key, cfg).rpartition(".")
    if f"{section}.{name}" in plugins.KEYS:
        plugins.trust(getattr(getattr(cfg, section), name))


def apply_overrides(cfg: Config, overrides: dict[str, object], algo: str | None = None,
                    validate_now: bool = True) -> Config:
    """`--algo` first (if given), then the user's overrides on an existing config (e.g. a run's config.json),
    then `validate` (unless validate_now=False)."""
    if algo is not None:
        apply_algo(cfg, algo)
    for k, v in overrides.items():
        if k == "preset":
            raise ConfigError("--preset only applies when a run starts; this command reads the run's config.json")
        _set_given(cfg, k, v)
    if validate_now:
        validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every section's own checks (`problems()`, beside its fields) and the checks that span sections or name
    the folders, so a bad setting is refused when the config is made, before any stage runs."""
    for s in SECTIONS:
        try:
            refuse_problems(getattr(cfg, s), f"--{s}", ConfigError)
        except ConfigError:
            raise
        except ValueError as e:  # a plug-in that fails on the example says so in its own words
            raise ConfigError(str(e)) from None
    for key, why in _composition_problems(cfg):
        section, _, name = key.rpartition(".")
        raise ConfigError(f"--{key}={getattr(getattr(cfg, section) if section else cfg, name)!r}: {why}")


def _composition_problems(cfg: Config):
    """(key, what to change) for the top-level settings and for settings that only make sense together."""
    why = name_problem(cfg.name, "name")
    if why:
        yield "name", why
    for key in ("data_dir", "runs_dir"):
        p = Path(str(getattr(cfg, key)))
        if not str(getattr(cfg, key)).strip():
            yield key, "must name a folder"
        elif p.exists() and not p.is_dir():
            yield key, f"{p} is a file, not a folder: point --{key} at a folder (it is created if missing)"
    if not 0 <= cfg.seed < 2 ** 32:
        yield "seed", "must be in 0 .. 2**32 - 1"
    if why := device_problem(str(cfg.device)):
        yield "device", why
    d = cfg.data
    if name_problem(dataset_name(d), "data.name") is None:
        out = (Path(str(cfg.data_dir)) / "processed" / dataset_name(d)).resolve()
        for key in ("reviews", "meta", "path"):
            f = getattr(d, key)
            if d.source != "synthetic" and f and out in (Path(f).resolve(), *Path(f).resolve().parents):
                yield f"data.{key}", (f"is inside {out}, the folder this dataset is written to: point it at the raw "
                                      f"files elsewhere (e.g. data/raw/), or pick another --data.name")
    r = cfg.reasoning
    if not cfg.model.words and (r.mode == "reasoning" or r.prompt_titles):
        yield "model.words", "a model that writes thinking or reads titles needs the words: use sid_only without titles"
    if cfg.rl.max_completion_length is not None:
        K = cfg.sid.levels
        shortest = K + 1 if r.mode == "sid_only" else 4 * K + 1
        if cfg.rl.max_completion_length < shortest:
            what = "" if r.mode == "sid_only" else f"{K} thinking blocks of >= 3 tokens, "
            yield "rl.max_completion_length", (f"shorter than the shortest complete response ({shortest} tokens: {what}"
                                               f"{K} SID tokens, <eos>), so every rollout would be cut and get reward 0; "
                                               f"set it >= {shortest} or to none (the grammar's own cap)")


# Settings that may change when a run is resumed (more steps, another device, other evaluation);
# any other difference from the run's config.json is an error (see `config_changes`).
SAFE_ON_RESUME = ("device", "data_dir", "runs_dir", "sft.max_steps", "rl.max_steps", "rl.eval_every",
                  "rl.save_every", "eval.*")


def _flat_dict(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: Config, new: Config) -> list[str]:
    """'key: old -> new' for every setting that differs and is not in SAFE_ON_RESUME."""
    a, b = _flat_dict(to_dict(old)), _flat_dict(to_dict(new))

    def safe(k: str) -> bool:
        return any(k == s or (s.endswith(".*") and k.startswith(s[:-1])) for s in SAFE_ON_RESUME)

    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in b if a.get(k) != b.get(k) and not safe(k)]


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """Rebuild a Config from `config.json` (unknown keys are errors, so stale files are noticed)."""
    cfg = Config()
    if not isinstance(d, dict):
        raise ConfigError("a config must be a JSON object of sections and keys")
    for k, v in d.items():
        if k in SECTIONS:
            if not isinstance(v, dict):
                raise ConfigError(f"config section {k!r} must be a JSON object")
            for kk, vv in v.items():
                set_value(cfg, f"{k}.{kk}", vv)
        else:
            set_value(cfg, k, v)
    return cfg


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """{field: its docstring}: the string under each field of a config dataclass (cleanrl's convention), read
    from the class's syntax tree."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {a.target.id: " ".join(b.value.value.split()) for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)}


def describe(cfg: Config | None = None) -> str:
    """Every key with its current value and its comment (for `--help-config`)."""
    cfg = cfg or Config()
    lines = []
    for k in all_keys(cfg):
        obj, name = (cfg, k) if "." not in k else (getattr(cfg, k.split(".")[0]), k.split(".")[1])
        doc = field_docs(type(obj)).get(name, "")
        lines.append(f"  --{k}={getattr(obj, name)!r}".ljust(44) + (f"  # {doc}" if doc else ""))
    return "\n".join(lines)
