"""Config dataclasses: argparse options, file loading, precedence, documentation."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Optional

import pytest

from rlhf_fast.config import (
    ConfigError,
    OptionValueError,
    StageSettings,
    add_config_arguments,
    config_from_args,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    load_config_file,
    redefault,
    render_config,
    render_config_markdown,
)
from rlhf_fast.config import RunConfig as SharedRunConfig


@dataclass
class OptimConfig:
    """Optimizer settings."""

    lr: float = field(default=1e-4, metadata={"help": "Learning rate (AdamW)."})
    betas: tuple[float, ...] = field(default=(0.9, 0.95), metadata={"help": "Adam betas."})


@dataclass
class StageConfig:
    """PPO-ish stage settings."""

    kl_coef: float = field(
        default=0.05, metadata={"help": "KL penalty coefficient, 100% per token."}
    )
    target_kl: Optional[float] = field(default=None, metadata={"help": "Adaptive KL target."})  # noqa: UP045 (the typing spelling must work)
    estimator: Literal["k1", "k2", "k3"] = field(default="k1", metadata={"help": "KL estimator."})
    whiten: bool = field(default=True, metadata={"help": "Whiten advantages."})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "Optimizer."})


@dataclass
class RunConfig:
    output_dir: str = field(default="runs/x", metadata={"help": "Where outputs go."})
    max_steps: int = field(default=10, metadata={"help": "Training steps."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    data: Path = field(default=Path("data.jsonl"), metadata={"help": "Training data."})
    tags: list[str] = field(default_factory=list, metadata={"help": "Free-form run tags."})
    ppo: StageConfig = field(default_factory=StageConfig, metadata={"help": "PPO stage."})


@dataclass
class RequiredConfig:
    data: str = field(metadata={"help": "Training data (required)."})
    steps: int = field(default=1, metadata={"help": "Steps."})

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")


def make_parser(cls=RunConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test", exit_on_error=False)
    parser.add_argument("--config")
    add_config_arguments(parser, cls, reserved=("config",))
    return parser


def parse(argv, cls=RunConfig):
    return config_from_args(cls, make_parser(cls).parse_args(argv))


# ----------------------------------------------------------------- flags
def test_defaults_and_every_flag_kind():
    assert parse([]) == RunConfig()
    config = parse(
        [
            "--output-dir", "out",
            "--max_steps", "3",
            "--no-progress",
            "--data", "d.parquet",
            "--tags", "a", "b",
            "--ppo.kl-coef", "0.2",
            "--ppo.target_kl", "6",
            "--ppo.estimator", "k3",
            "--ppo.optim.lr", "3e-5",
            "--ppo.optim.betas", "0.8", "0.9",
        ]
    )  # fmt: skip
    assert config == RunConfig(
        output_dir="out",
        max_steps=3,
        progress=False,
        data=Path("d.parquet"),
        tags=["a", "b"],
        ppo=StageConfig(
            kl_coef=0.2, target_kl=6.0, estimator="k3", optim=OptimConfig(lr=3e-5, betas=(0.8, 0.9))
        ),
    )
    assert parse(["--progress"]).progress is True
    assert parse(["--no-progress", "--progress"]).progress is True  # the last flag wins
    assert parse(["--ppo.target-kl", "none"]).ppo.target_kl is None
    for flag, expected in [("--ppo.no-whiten", False), ("--no-ppo.whiten", False),
                           ("--ppo.no_whiten", False), ("--ppo.whiten", True)]:  # fmt: skip
        assert parse(["--ppo.no-whiten", flag]).ppo.whiten is expected, flag


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-steps", "1.5"], "expected int, got '1.5'"),
        (["--ppo.kl-coef", "lots"], "expected float, got 'lots'"),
        (["--ppo.estimator", "k9"], "invalid choice 'k9'"),
        (["--ppo.optim.lr", "none"], "expected float, got 'none'"),
    ],
)
def test_bad_flag_values_name_the_option(argv, message):
    with pytest.raises(argparse.ArgumentError) as info:
        make_parser().parse_args(argv)
    assert message in str(info.value) and argv[0].split("=")[0] in str(info.value)


def test_help_comes_from_the_field_metadata():
    text = make_parser().format_help()
    assert "--output-dir STR" in text and "Where outputs go. (default: runs/x)" in text
    assert "--progress, --no-progress" in text and "--ppo.whiten, --ppo.no-whiten" in text
    assert "--ppo.kl-coef FLOAT" in text and "100% per token" in text
    assert "--ppo.target-kl FLOAT|none" in text and "(default: none)" in text
    assert "--ppo.estimator {k1,k2,k3}" in text
    assert "ppo.optim options (--ppo.optim.*)" in text and "Adam betas. (default: 0.9 0.95)" in text
    assert "--output_dir" not in text  # the alias works but is not listed twice


def test_reserved_and_unsupported_fields_are_programming_errors():
    with pytest.raises(ConfigError, match="reserved"):
        add_config_arguments(argparse.ArgumentParser(), RunConfig, reserved=("max-steps",))

    @dataclass
    class Bad:
        value: dict = field(default_factory=dict)

    with pytest.raises(ConfigError, match=r"Bad.value: unsupported field type"):
        add_config_arguments(argparse.ArgumentParser(), Bad)


# ----------------------------------------------------------------- files
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


TOML = """
output-dir = "from_file"
max_steps = 7
tags = ["t"]
[ppo]
kl_coef = 1          # an int is fine for a float field
estimator = "k2"
[ppo.optim]
lr = 0.001
"""
YAML = """
output_dir: from_file
max_steps: 7
tags: [t]
ppo:
  kl_coef: 1
  estimator: k2
  optim: {lr: 0.001}
"""


@pytest.mark.parametrize(("name", "text"), [("c.toml", TOML), ("c.yaml", YAML), ("c.json", None)])
def test_file_then_flags_precedence(tmp_path, name, text):
    if text is None:
        text = json.dumps(
            {"output_dir": "from_file", "max_steps": 7, "tags": ["t"],
             "ppo": {"kl_coef": 1, "estimator": "k2", "optim": {"lr": 0.001}}}
        )  # fmt: skip
    path = write(tmp_path / name, text)
    from_file = parse(["--config", str(path)])
    assert (from_file.output_dir, from_file.max_steps, from_file.tags) == ("from_file", 7, ["t"])
    assert from_file.ppo == StageConfig(kl_coef=1.0, estimator="k2", optim=OptimConfig(lr=0.001))
    assert isinstance(from_file.ppo.kl_coef, float)
    overridden = parse(["--config", str(path), "--max-steps", "9", "--ppo.optim.lr", "0.5"])
    assert (overridden.output_dir, overridden.max_steps) == ("from_file", 9)  # file kept, flag wins
    assert overridden.ppo.optim.lr == 0.5 and overridden.ppo.estimator == "k2"
    assert load_config(RunConfig, path, {"ppo.kl-coef": 3.0}).ppo.kl_coef == 3.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "max_stepz = 3",
            r"c.toml: unknown key 'max_stepz' for RunConfig; did you mean 'max_steps'\?",
        ),
        ("[ppo]\nkl = 3", r"unknown key 'ppo.kl' for StageConfig; did you mean 'ppo.kl_coef'\?"),
        (
            "[ppo.optim]\nzzz = 3",
            r"unknown key 'ppo.optim.zzz' for OptimConfig; known keys: ppo.optim.lr",
        ),
        ('max_steps = "3"', r"key 'max_steps': expected an integer, got '3' \(str\)"),
        ("max_steps = 2.0", r"key 'max_steps': expected an integer, got 2.0 \(float\)"),
        ("progress = 1", r"key 'progress': expected true or false, got 1 \(int\)"),
        ("[ppo]\nkl_coef = true", r"key 'ppo.kl_coef': expected a number, got True \(bool\)"),
        ('[ppo]\nestimator = "k7"', r"key 'ppo.estimator': expected one of \['k1', 'k2', 'k3'\]"),
        ('tags = "a"', r"key 'tags': expected a list of str"),
        ("ppo = 3", r"key 'ppo': expected a table of options, got 3 \(int\)"),
        ("output-dir = 'a'\noutput_dir = 'b'", r"key 'output_dir' is given twice"),
        ("max_steps = = 3", r"c.toml': cannot parse: "),
    ],
)
def test_file_errors_name_key_and_file(tmp_path, text, message):
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError, match=message) as info:
        parse(["--config", str(path)])
    assert str(path) in str(info.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match=r"unknown format '.ini'"):
        load_config_file(write(tmp_path / "c.ini", "[a]"))
    with pytest.raises(ConfigError, match="expected a table of options, got \\[1, 2\\]"):
        load_config_file(write(tmp_path / "c.yaml", "[1, 2]"))
    assert load_config_file(write(tmp_path / "empty.yaml", "")) == {}
    with pytest.raises(
        ConfigError, match=r"'max_steps': expected int \(the field is not optional\), got None"
    ):
        config_from_dict(RunConfig, {"max_steps": None, "ppo": {"target_kl": None}})


def test_required_fields_and_post_init_validation():
    with pytest.raises(ConfigError, match=r"missing required option 'data' \(give --data"):
        parse([], RequiredConfig)
    assert parse(["--data", "x.jsonl"], RequiredConfig) == RequiredConfig(data="x.jsonl")
    with pytest.raises(ConfigError, match=r"invalid RequiredConfig: steps: expected >= 1, got 0"):
        parse(["--data", "x", "--steps", "0"], RequiredConfig)
    assert "(required)" in make_parser(RequiredConfig).format_help()


# ------------------------------------------------------ rendering and dumping
def test_render_config_round_trips_and_documents(tmp_path):
    config = RunConfig(max_steps=4, tags=["x", 'q"uote'], ppo=StageConfig(estimator="k3"))
    text = render_config(config, header="Tested on nothing in particular.")
    assert text.startswith("# Tested on nothing in particular.\n")
    assert "# Training steps. [int]\nmax_steps = 4\n" in text
    assert "# Adaptive KL target. [float | None]\n# target_kl =   (unset)\n" in text
    assert "[ppo.optim]" in text
    path = dump_config(config, tmp_path / "run" / "config.toml")
    assert load_config(RunConfig, path) == config
    path = dump_config(config, tmp_path / "run" / "config.json")
    assert json.loads(path.read_text()) == config_to_dict(config)
    assert load_config(RunConfig, path) == config
    assert (
        load_config(RunConfig, write(tmp_path / "t.toml", render_config(RunConfig))) == RunConfig()
    )
    with pytest.raises(ConfigError, match="must end in .toml or .json"):
        dump_config(config, tmp_path / "config.yaml")


def test_markdown_table_lists_every_option():
    table = render_config_markdown(RunConfig)
    assert "| `--ppo.optim.lr` | float | `0.0001` | Learning rate (AdamW). |" in table
    assert table.count("\n") == 2 + 11  # header, rule, eleven leaf options


@dataclass
class TunedConfig:
    """Nested defaults come from the parent's factory, as in the demo's stage settings."""

    ppo: StageConfig = field(
        default_factory=lambda: StageConfig(kl_coef=0.3, optim=OptimConfig(lr=0.5)),
        metadata={"help": "PPO stage, tuned."},
    )


def test_nested_defaults_come_from_the_parent_default_factory(tmp_path):
    assert parse([], TunedConfig) == TunedConfig()
    assert parse(["--ppo.estimator", "k2"], TunedConfig).ppo == StageConfig(
        kl_coef=0.3, estimator="k2", optim=OptimConfig(lr=0.5)
    )
    path = write(tmp_path / "t.toml", "[ppo.optim]\nbetas = [0.5, 0.6]\n")
    assert load_config(TunedConfig, path).ppo.optim == OptimConfig(lr=0.5, betas=(0.5, 0.6))
    assert "KL penalty coefficient, 100% per token. (default: 0.3)" in make_parser(
        TunedConfig
    ).format_help().replace("\n                        ", " ")
    assert "kl_coef = 0.3\n" in render_config(TunedConfig)
    assert "| `--ppo.optim.lr` | float | `0.5` |" in render_config_markdown(TunedConfig)


# ------------------------------------------- shared run options, stage settings
@dataclass
class ToyStage(StageSettings):
    steps: int = field(default=3, metadata={"help": "Steps."})
    log_every: int = redefault(StageSettings, "log_every", 1)


@dataclass
class ToyRun(ToyStage, SharedRunConfig):
    data: str = field(default="", metadata={"help": "Data."})


@dataclass
class ToyPipeline(SharedRunConfig):
    WIRED: ClassVar[dict[str, str]] = {"toy.data": "its own file"}
    toy: ToyStage = field(default_factory=ToyStage, metadata={"help": "Toy stage."})


def test_run_and_stage_options_have_one_home():
    fields = {f.name: f for f in dataclasses.fields(ToyRun)}
    assert fields["log_every"].default == 1
    assert (
        fields["log_every"].metadata["help"]
        == StageSettings.__dataclass_fields__["log_every"].metadata["help"]
    )  # the help is written once, in StageSettings
    assert ToyRun(seed=3).seed == 3 and ToyRun().output_dir == SharedRunConfig().output_dir
    with pytest.raises(OptionValueError, match=r"^--lr-multiplier \(lr_multiplier\): expected"):
        ToyRun(lr_multiplier=-1.0)
    with pytest.raises(OptionValueError, match=r"^--toy.grad-clip \(toy.grad_clip\): expected"):
        config_from_dict(ToyPipeline, {"toy": {"grad_clip": float("nan")}})
    with pytest.raises(ConfigError, match=r"'toy.seed' for ToyStage: it is set once for every"):
        config_from_dict(ToyPipeline, {"toy": {"seed": 1}}, source="p.toml")
    with pytest.raises(ConfigError, match=r"'toy.data' for ToyStage: ToyPipeline sets it to its"):
        config_from_dict(ToyPipeline, {"toy": {"data": "x"}}, source="p.toml")
    with pytest.raises(ConfigError, match=r"'steps' for ToyPipeline: it is a stage setting; use"):
        config_from_dict(ToyPipeline, {"steps": 1}, source="p.toml")
    run = ToyRun()
    with pytest.raises(AttributeError, match=r"ToyRun has no option 'stpes'; did you mean 'steps'"):
        run.stpes = 4
    with pytest.raises(AttributeError, match=r"ToyStage has no option 'seed': it is shared"):
        ToyPipeline().toy.seed = 4
