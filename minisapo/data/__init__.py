"""The data layer: synthetic world (with an exact oracle), Amazon reviews, RecBole atomic files.

    cfg = DataConfig(source="synthetic", world="default")
    path = prepare(cfg, "data")          # writes data/processed/default/ (or reuses it)
    ds = load("data", "default")         # Dataset: catalog, sequences, train/valid/test samples
    orc = oracle(ds)                     # exact next-item distribution (synthetic only)

Every source produces the same processed form (see dataset.py); the CLI is
`minisapo data --source=... --name=...` (see data/README.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from minisapo.data.dataset import Dataset, Sample, load, make_splits, user_subset, write_processed
from minisapo.data.filters import parse_date
from minisapo.data.synthetic import KNOBS, PRESETS, Oracle, WorldError, generate, oracle, world_params
from minisapo.files import check_name, claim_dir, finite, name_problem, refuse_problems, remove, swap_dir, temp_path

__all__ = ["DataConfig", "dataset_name", "Dataset", "Sample", "Oracle", "PRESETS", "prepare", "load", "oracle", "make_splits",
           "user_subset", "stored_settings", "named"]

FORMAT_VERSION = 1  # bump when the processed files change meaning (old caches then rebuild)


@dataclass
class DataConfig:
    source: str = "synthetic"
    """where the data comes from: synthetic | amazon | atomic"""
    name: str | None = None
    """processed dataset name (folder under <data_dir>/processed/); None = world / file name"""
    # --- synthetic world (source=synthetic) ---
    world: str = "default"
    """preset: "tiny" | "default" | "easy" | "sparse" | "compose" | "compose_tiny" (synthetic.PRESETS)"""
    rule: str | None = None
    """"markov" (the taxonomy world) | "mode_latin" | "coupled" | "track" | "nested" (compose worlds: reasoning
    computes)"""
    depth: int | None = None
    """taxonomy depth (levels of categories); None = preset's (3)"""
    branching: int | None = None
    """children per taxonomy node; None = preset's"""
    items_per_leaf: int | None = None
    """catalog size knob: items under each leaf (more = sparser exact match)"""
    num_users: int | None = None
    """number of users (= sequences); None = preset's"""
    seq_len: int | None = None
    """longest sequence; lengths are uniform in [seq_len // 2, seq_len]"""
    zipf: float | None = None
    """popularity exponent within a leaf (0 = uniform, larger = more peaked)"""
    noise: float | None = None
    """markov: chance a title word is swapped for another node's; compose: chance of a random leaf"""
    stay: float | None = None
    """chance the next item stays in the last item's leaf"""
    jump: float | None = None
    """chance the next item jumps to a top category drawn from the user's preference"""
    focus: float | None = None
    """weight of a user's home top category in their preference (0 = none)"""
    window: int | None = None
    """compose: the rule's facts come from the last `window` items (keep <= max_history)"""
    alpha: float | None = None
    """compose: share of SID levels that follow the two-fact rule (0 = all one-fact)"""
    facts: int | None = None
    """compose: facts a composite level combines, 2 (often, recent) or 3 (+ first)"""
    world_seed: int = 0
    """seed of the synthetic world (same seed -> byte-identical files)"""
    # --- real data ---
    reviews: str | None = None
    """source=amazon: reviews file (reviews_X_5.json.gz | X_5.json.gz | X.jsonl.gz ...)"""
    meta: str | None = None
    """source=amazon: metadata file; None = meta_X... next to the reviews file"""
    path: str | None = None
    """source=atomic: folder with <name>.inter (+ <name>.item), RecBole atomic format"""
    kcore: int = 5
    """real data: keep users and items with >= kcore interactions (iterated); 0/1 = off"""
    start: str | None = None
    """real data: keep interactions from this UTC date on (YYYY-MM-DD); None = no bound"""
    end: str | None = None
    """real data: keep interactions up to this UTC date, inclusive; None = no bound"""
    with_description: bool = True
    """amazon: add description/features to the item text SIDs embed (false: leave them out)"""
    strict: bool = False
    """a malformed input line is an error (file:line) instead of skipped and counted"""
    # --- samples ---
    split: str = "loo"
    """"loo" (leave-one-out, TIGER/SASRec) | "temporal" (global 8:1:1 by time, MiniOneRec)"""
    max_history: int = 10
    """history = the at most max_history items right before the target"""

    def __post_init__(self):
        refuse_problems(self, "data")

    def knobs(self) -> dict:
        """The synthetic world's knobs as set here ({name: value or None}), as generate / world_params take them."""
        return {k: getattr(self, k) for k in KNOBS}

    def problems(self):
        """(field, what to change) for every setting out of range; the folders they point at are config.py's."""
        if self.source not in ("synthetic", "amazon", "atomic"):
            yield "source", "use synthetic, amazon or atomic"
        if self.name is not None:
            why = name_problem(self.name, "data.name")
            if why:
                yield "name", why
        elif self.source in ("amazon", "atomic") and (self.reviews or self.path) and \
                name_problem(dataset_name(self), "data.name"):
            yield "name", (f"the dataset name taken from the input file ({dataset_name(self)!r}) is not a folder "
                           f"name: pass --data.name=NAME")
        if self.split not in ("loo", "temporal"):
            yield "split", "use loo (leave-one-out) or temporal"
        if self.max_history < 1:
            yield "max_history", "must be >= 1"
        if self.kcore < 0:
            yield "kcore", "must be >= 0 (0 or 1 = no k-core filter)"
        if self.world_seed < 0:
            yield "world_seed", "must be >= 0"
        if self.source == "synthetic":
            try:
                world_params(self.world, **self.knobs())
            except WorldError as e:
                yield e.key, str(e).split(" (got")[0]
            for k in ("zipf", "noise", "stay", "jump", "focus"):
                if getattr(self, k) is not None and not finite(getattr(self, k)):
                    yield k, "must be a finite number"
        if self.source == "amazon" and not self.reviews:
            yield "reviews", "--source=amazon needs --reviews=FILE (see data/README.md)"
        if self.source == "atomic" and not self.path:
            yield "path", "--source=atomic needs --path=DIR (a folder with <name>.inter)"
        for key in ("start", "end"):
            if getattr(self, key):
                try:
                    parse_date(getattr(self, key))
                except ValueError:
                    yield key, "use a date YYYY-MM-DD (UTC)"


def dataset_name(cfg: DataConfig) -> str:
    """The processed dataset's name: `cfg.name`, else the world (+ changed knobs, e.g. `tiny_items_per_leaf32`)
    / the Amazon category / the atomic folder name."""
    return cfg.name or _default_name(cfg)


def _default_name(cfg: DataConfig) -> str:
    if cfg.source == "synthetic":  # each changed knob is part of the name, so worlds never share a folder
        knobs = "".join(f"_{k}{getattr(cfg, k)}" for k in KNOBS if getattr(cfg, k) is not None)
        return cfg.world + knobs + (f"_seed{cfg.world_seed}" if cfg.world_seed else "")
    if cfg.source == "amazon" and cfg.reviews:
        from minisapo.data.amazon import category_of
        return category_of(cfg.reviews)
    if cfg.source == "atomic" and cfg.path:
        p = Path(cfg.path)
        return p.stem if p.is_file() else p.resolve().name
    return cfg.source


_SYNTHETIC_ONLY = ("world", "rule", "depth", "branching", "items_per_leaf", "num_users", "seq_len", "zipf", "noise",
                   "stay", "jump", "focus", "window", "alpha", "facts", "world_seed")
_REAL_ONLY = {"amazon": ("reviews", "meta", "with_description"), "atomic": ("path",)}
_PATHS = ("reviews", "meta", "path")  # input files: compared as absolute paths


def _settings_of(cfg: DataConfig) -> dict:
    """The DataConfig fields that shape this source's output: the cache key. A field another source
    uses is left out, so e.g. `--preset=tiny` (which sets data.world) does not rebuild an Amazon dataset."""
    real = {f for fields in _REAL_ONLY.values() for f in fields}
    if cfg.source == "synthetic":
        drop = real | {"strict"}
    else:
        drop = (real - set(_REAL_ONLY[cfg.source])) | set(_SYNTHETIC_ONLY)
    out = {k: v for k, v in asdict(cfg).items() if k not in drop}
    for k in _PATHS:  # the same file named from another folder is the same input
        if out.get(k):
            out[k] = _resolve(out[k])
    return out


def _resolve(p: str) -> str:
    return str(Path(p).resolve()) if Path(p).exists() else p


def _missing_inputs(cfg: DataConfig) -> list[str]:
    files = [cfg.reviews, cfg.meta] if cfg.source == "amazon" else [cfg.path] if cfg.source == "atomic" else []
    return [f for f in files if f and not Path(f).exists()]


def _flags_of(settings: dict) -> str:
    """The command-line data flags that rebuild a dataset with these (stored) settings."""
    default = asdict(DataConfig())
    keys = ["source"] + [k for k in settings if k in default and k not in ("source", "name") and settings[k] != default[k]]
    return " ".join(f"--{k}={settings[k]}" for k in keys)


def _file_facts(cfg: DataConfig) -> dict:
    """Sizes of the raw input files: part of the cache key, so a changed file rebuilds."""
    files = [cfg.reviews, cfg.meta] if cfg.source == "amazon" else [cfg.path] if cfg.source == "atomic" else []
    facts = {}
    for f in files:
        if f and Path(f).is_file():
            facts[_resolve(f)] = Path(f).stat().st_size
        elif f and Path(f).is_dir():
            facts[_resolve(f)] = {p.name: p.stat().st_size for p in sorted(Path(f).iterdir()) if p.suffix in (".inter", ".item")}
    return facts


def _but_paths(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in _PATHS + ("input_files",)}


def stored_settings(data_dir: str | Path, name: str) -> dict | None:
    """The settings `<data_dir>/processed/<name>/` was built with (its dataset.json), or None."""
    info_file = Path(data_dir) / "processed" / name / "dataset.json"
    try:
        return json.loads(info_file.read_text(encoding="utf-8")).get("settings") or None
    except (OSError, json.JSONDecodeError):
        return None


SOURCE_KEYS = ("source", "reviews", "meta", "path")  # the data flags that say where a dataset comes from


def named(cfg: DataConfig, data_dir: str | Path, given: set[str] | frozenset = frozenset()) -> DataConfig:
    """A dataset found by its name: `cfg` with the settings `<data_dir>/processed/<cfg.name>/` was built
    with, for every data field the command did not set itself (`given`: DataConfig field names).

    So `minisapo data --source=atomic --path=DIR --name=ml` once, then `--data.name=ml` alone (no
    --source/--path) in `sid`, `sft`, `run` and `compare`. Nothing changes without a name, or when the
    command names a source itself (SOURCE_KEYS in `given`). A name of no existing dataset is a ValueError
    (a typo must not build a synthetic world under it), unless the command says how to build it: a source,
    or a synthetic world's setting (`--world=tiny --data.name=mine`).
    """
    stored = stored_settings(data_dir, cfg.name) if cfg.name else None
    if cfg.name and not stored and not any(k in given for k in SOURCE_KEYS + _SYNTHETIC_ONLY) \
            and cfg.name != _default_name(cfg):
        raise ValueError(f"--data.name={cfg.name}: there is no dataset {Path(data_dir) / 'processed' / cfg.name} "
                         f"(with a dataset.json); make it first (minisapo data --source=... --name={cfg.name}), "
                         f"or say how to build it here (--source=synthetic --world=...)")
    if not stored or any(k in given for k in SOURCE_KEYS):
        return cfg
    fields = set(asdict(cfg))
    keep = {k: v for k, v in stored.items() if k in fields and k != "name" and k not in given}
    if stored.get("source") != cfg.source or any(getattr(cfg, k) != v for k, v in keep.items()):
        print(f"dataset {cfg.name!r}: using the settings it was built with ({_flags_of(stored)})")
    return DataConfig(**{**asdict(cfg), **keep})


def prepare(cfg: DataConfig, data_dir: str | Path = "data") -> Path:
    """Build `<data_dir>/processed/<name>/` from `cfg`; reuse it when the settings are unchanged."""
    refuse_problems(cfg, "data")  # settings changed after the config was made are checked again
    name = check_name(dataset_name(cfg), "data.name")  # one folder name: nothing is written outside processed/
    out = Path(data_dir) / "processed" / name
    claim_dir(out, ("dataset.json",), "a dataset folder")  # never a folder of the user's, never through a link
    settings = {**_settings_of(cfg), "name": name, "format_version": FORMAT_VERSION, "input_files": _file_facts(cfg)}
    if cfg.source == "synthetic":  # the world's resolved knobs: a preset that changes rebuilds its datasets
        settings["world_params"] = world_params(cfg.world, **cfg.knobs())
    info_file = out / "dataset.json"
    if info_file.exists():
        try:
            old = json.loads(info_file.read_text(encoding="utf-8")).get("settings", {})
        except json.JSONDecodeError:
            old = {}
        files_ok = (out / f"{name}.inter").exists() and (out / f"{name}.item").exists()
        if old == settings and files_ok:
            print(f"cache hit: {out} already holds {name!r} with these settings (delete it to rebuild)")
            return out
        missing = _missing_inputs(cfg)
        if missing and files_ok and _but_paths(old) == _but_paths(settings):
            # e.g. `minisapo eval --run=...` from another folder, with a relative --reviews in config.json
            print(f"{', '.join(missing)} not found: using the processed copy in {out} (same settings otherwise)")
            return out
        if old.get("source") and old["source"] != cfg.source:
            # almost always a forgotten --source (the default is synthetic): never overwrite real data for that
            raise ValueError(f"{out} holds a dataset built from --source={old['source']}, but this command asks for "
                             f"--source={cfg.source}; "
                             f"repeat its data flags ({_flags_of(old)}), or pick another dataset name "
                             f"(or delete {out} to replace it)")
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        print(f"settings of {out} changed ({', '.join(f'{k}: {old.get(k)!r} -> {settings.get(k)!r}' for k in changed)}); "
              f"rebuilding (the old copy stays until the new one is complete)")

    # read everything first, build into a temporary folder, and only then swap it in: a failed read
    # (a truncated .gz, a bad line in strict mode, an empty k-core) leaves the old dataset as it was
    if cfg.source == "synthetic":
        raw = generate(cfg.world, cfg.world_seed, **cfg.knobs())
    elif cfg.source == "amazon":
        from minisapo.data.amazon import read_amazon
        raw = read_amazon(cfg.reviews, cfg.meta, strict=cfg.strict, with_description=cfg.with_description)
    else:
        from minisapo.data.atomic import read_source
        raw = read_source(cfg.path, strict=cfg.strict)
        raw.info["source"] = "atomic"
    tmp = temp_path(out, "building")
    remove(tmp)
    try:
        info = write_processed(raw, tmp, name, kcore_k=cfg.kcore, start=cfg.start, end=cfg.end,
                               split=cfg.split, max_history=cfg.max_history, settings=settings)
        swap_dir(tmp, out)
    finally:
        remove(tmp)
    s = info["splits"]
    print(f"wrote {out}: {info['num_users']} users, {info['num_items']} items, {info['num_interactions']} interactions; "
          f"samples train {s['train']} / valid {s['valid']} / test {s['test']} ({cfg.split})")
    return out
