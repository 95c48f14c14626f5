import json

import pytest

from minisapo.config import (PRESETS, Config, ConfigError, all_keys, apply_overrides, from_dict, make_config, parse_overrides,
                             resolve_key, to_dict)


def test_defaults_then_preset_then_overrides():
    cfg = make_config({"n_layer": "3", "sft.learning_rate": "3e-4", "beta": "0"}, preset="tiny")
    assert cfg.model.n_layer == 3  # override beats the preset's 2
    assert cfg.model.n_embd == PRESETS["tiny"]["model.n_embd"]
    assert cfg.sft.learning_rate == pytest.approx(3e-4)
    assert cfg.rl.beta == 0.0 and isinstance(cfg.rl.beta, float)
    assert cfg.name == "tiny" and cfg.preset == "tiny"


def test_unknown_key_names_the_closest_one():
    with pytest.raises(ConfigError, match="did you mean --n_layer"):
        make_config({"n_layers": "2"})
    with pytest.raises(ConfigError, match="learning_rate"):
        make_config({"sft.learnin_rate": "2"})


def test_ambiguous_bare_key_lists_the_sections():
    with pytest.raises(ConfigError, match="ambiguous.*--rl.batch_size"):
        resolve_key("batch_size")


def test_values_are_type_checked():
    with pytest.raises(ConfigError, match="expected int"):
        make_config({"n_layer": "two"})
    with pytest.raises(ConfigError, match="expected bool"):
        make_config({"strict": "maybe"})
    assert make_config({"strict": "true"}).data.strict is True
    assert make_config({"data.meta": "none"}).data.meta is None


def test_unknown_preset_and_bad_argument():
    with pytest.raises(ConfigError, match="did you mean tiny"):
        make_config(preset="tinyy")
    with pytest.raises(ConfigError, match="--key=value"):
        parse_overrides(["--n_layer", "2"])


def test_section_checks_run_after_overrides():
    with pytest.raises(ConfigError, match="dedup"):
        make_config({"sid.dedup": "sometimes"})


def test_json_round_trip():
    cfg = make_config({"n_embd": "48", "layout": "interleaved"}, preset="tiny")
    again = from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    assert isinstance(again, Config)


def test_every_config_field_has_a_docstring():
    from minisapo.config import SECTIONS, describe, field_docs

    cfg = Config()
    for obj in [cfg] + [getattr(cfg, s) for s in SECTIONS]:
        docs = field_docs(type(obj))
        missing = [f for f in vars(obj) if f not in SECTIONS and not docs.get(f)]
        assert not missing, f"{type(obj).__name__}: fields without a docstring: {missing}"
    help_lines = describe().splitlines()
    assert len(help_lines) == len(all_keys()) and all("  # " in line for line in help_lines)
    assert any(line.startswith("  --sft.learning_rate=0.001") and line.endswith("# peak AdamW learning rate")
               for line in help_lines)


def test_field_docs_reads_the_string_under_each_field():
    from dataclasses import dataclass

    from minisapo.config import field_docs

    @dataclass
    class Demo:
        a: int = 1
        """the first
        knob"""
        b: int = 2  # a comment is not a docstring
        c: int = 3
        """the third"""

    assert field_docs(Demo) == {"a": "the first knob", "c": "the third"}


def test_each_section_refuses_its_own_bad_settings():
    from minisapo.data import DataConfig
    from minisapo.evaluate import EvalConfig
    from minisapo.model import ModelConfig
    from minisapo.reasoning import ReasoningConfig
    from minisapo.rl import RLConfig
    from minisapo.sft import SFTConfig
    from minisapo.sid import SIDConfig

    for cls, key, bad, why in [(DataConfig, "max_history", 0, "must be >= 1"), (SIDConfig, "codebook_size", 1, "or >= 2"),
                               (ModelConfig, "n_embd", 33, "divisible by model.n_head=2"),
                               (ReasoningConfig, "recent", 0, "must be >= 1"), (SFTConfig, "ema", 1.0, "in \\[0, 1\\)"),
                               (RLConfig, "num_generations", 1, "need a group"), (EvalConfig, "ks", "1,x", "like 1,5,10")]:
        assert list(cls().problems()) == []  # the defaults are fine
        with pytest.raises(ValueError, match=f"\\.{key}={bad!r}: .*{why}"):
            cls(**{key: bad})  # refused when made (a library user's config) ...
        cfg = make_config(preset="tiny")
        with pytest.raises(ConfigError, match=f"--[a-z]+\\.{key}={bad!r}: .*{why}"):
            apply_overrides(cfg, {key: bad})  # ... and when set on a whole config


def test_settings_that_need_beam_rollouts_say_so():
    from minisapo.rl import RLConfig

    for key, value in (("exclude_seen", True), ("reward", "rank")):
        with pytest.raises(ValueError, match=f"rl.{key}={value!r}: .*needs --rl.rollout=beam"):
            RLConfig(**{key: value})
        RLConfig(**{key: value}, rollout="beam")  # fine with beam rollouts


def test_real_preset_is_sized_in_epochs_and_validates_on_enough_users():
    from minisapo.sft import total_steps

    cfg = make_config(preset="real")
    assert cfg.sft.max_steps == 0 and cfg.sft.epochs > 0 and cfg.sft.pretrain_epochs > 0
    assert total_steps(cfg.sft, 96458) == int(-(-cfg.sft.epochs * 96458 // cfg.sft.batch_size))  # from the data
    assert cfg.sft.eval_samples == 0 and cfg.sft.keep_best and cfg.sid.unique_last  # every validation user
    assert cfg.eval.beam_width == 10 and cfg.eval.max_samples == 0  # the paper's beam, every test user


def test_a_model_without_words_must_be_sid_only_without_titles():
    assert not make_config({"model.words": "false", "reasoning.mode": "sid_only"}).model.words
    for bad in ({"reasoning.mode": "reasoning"}, {"reasoning.mode": "sid_only", "reasoning.prompt_titles": "true"}):
        with pytest.raises(ConfigError, match="model.words"):
            make_config({"model.words": "false", **bad})


@pytest.mark.parametrize("key,value,says", [
    ("data.branching", 1, "branching must be >= 2"),
    ("data.alpha", 2, "alpha must be in [0, 1]"),
    ("data.stay", 0.5, "stay does nothing under rule=mode_latin"),  # a taxonomy knob in the compose world
    ("data.world", "nope", "unknown synthetic world 'nope'"),
    ("data.rule", "zz", "rule must be one of"),
])
def test_a_bad_world_setting_names_its_own_key(key, value, says):
    """The synthetic world's checks (data.synthetic.WorldError) say which knob is wrong; config names it."""
    with pytest.raises(ConfigError) as e:
        make_config({key: value})
    assert str(e.value).startswith(f"--{key}=") and says in str(e.value)
