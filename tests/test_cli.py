"""The rlhf-fast command line: help texts, file + flag precedence, error exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from rlhf_fast.cli import COMMANDS, Command, main
from rlhf_fast.config import config_fields, load_config
from rlhf_fast.data import load_preference_pairs


@dataclass
class InnerConfig:
    """Settings of an inner stage."""

    kl_coef: float = field(default=0.05, metadata={"help": "KL penalty coefficient."})


@dataclass
class ToyConfig:
    """A toy stage that records the config it was given."""

    output_dir: str = field(default="", metadata={"help": "Where the toy writes."})
    steps: int = field(default=3, metadata={"help": "How many toy steps."})
    resume: bool = field(default=False, metadata={"help": "Continue the toy run."})
    data: str = field(default="", metadata={"help": "Preference pairs to load."})
    inner: InnerConfig = field(default_factory=InnerConfig, metadata={"help": "The inner stage."})


@dataclass
class NoResumeConfig:
    name: str = field(default="x", metadata={"help": "A name."})


@dataclass(frozen=True)
class LocalCommand(Command):
    """A Command whose stage is given directly instead of imported by name."""

    config: type = ToyConfig
    run: Callable[[Any], Any] = print

    def load(self):
        return self.config, self.run, "Toy stage.\n\n    rlhf-fast toy --steps 3"


def toy_commands(seen: list):
    def run(config):
        seen.append(config)
        if config.data:
            load_preference_pairs(config.data)
        if config.steps == 13:
            raise RuntimeError("a genuine bug")
        return {"steps_done": config.steps}

    return {
        "toy": LocalCommand("A toy.", "", "", "", config=ToyConfig, run=run),
        "plain": LocalCommand("No resume.", "", "", "", config=NoResumeConfig, run=seen.append),
    }


# ----------------------------------------------------------------- help
def test_top_level_help_lists_commands_and_loads_no_torch():
    code = (
        "import sys\nfrom rlhf_fast.cli import main\nrc = main(['--help'])\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    for name in ("sft", "train-reward", "ppo", "pipeline", "demo"):
        assert f"  {name} " in result.stdout
    assert result.stdout.strip().endswith("NO_TORCH 0")


def test_command_help_explains_every_option(capsys):
    assert main(["toy", "--help"], commands=toy_commands([])) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rlhf-fast toy")
    assert "Toy stage." in out and "rlhf-fast toy --steps 3" in out
    for spec in config_fields(ToyConfig):
        assert spec.help in out
    assert "--inner.kl-coef FLOAT" in out and "--resume, --no-resume" in out
    assert "--config FILE" in out and "--print-config" in out


def test_usage_errors_exit_2(capsys):
    commands = toy_commands([])
    assert main([], commands=commands) == 2
    assert "a command is required" in capsys.readouterr().err
    assert main(["tyo"], commands=commands) == 2
    assert "unknown command 'tyo'; did you mean 'toy'?" in capsys.readouterr().err
    assert main(["toy", "--steps", "many"], commands=commands) == 2
    assert "--steps: expected int, got 'many'" in capsys.readouterr().err
    assert main(["toy", "--no-such-flag"], commands=commands) == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    assert main(["toy", "--stepz", "4"], commands=commands) == 2
    err = capsys.readouterr().err  # one line, with the closest flag
    assert err == (
        "rlhf-fast toy: error: unrecognized arguments: --stepz 4; did you mean --steps? "
        "('rlhf-fast toy --help' lists every option)\n"
    )


# ------------------------------------------------------- config precedence
def test_file_then_flags_and_config_dump(tmp_path, capsys):
    seen: list = []
    config_file = tmp_path / "toy.yaml"
    config_file.write_text(f"output_dir: {tmp_path / 'run'}\nsteps: 5\ninner:\n  kl_coef: 0.5\n")
    argv = ["toy", "--config", str(config_file), "--inner.kl_coef", "0.25", "--resume"]
    assert main(argv, commands=toy_commands(seen)) == 0
    assert seen == [
        ToyConfig(output_dir=str(tmp_path / "run"), steps=5, resume=True, inner=InnerConfig(0.25))
    ]
    # The resolved config is saved next to the outputs and loads back to the same thing.
    assert load_config(ToyConfig, tmp_path / "run" / "config.toml") == seen[0]
    assert json.loads(capsys.readouterr().out) == {"steps_done": 5}  # the stage's summary

    assert (
        main(["toy", "--config", str(config_file), "--print-config"], commands=toy_commands(seen))
        == 0
    )
    printed = capsys.readouterr().out
    assert "# How many toy steps. [int]\nsteps = 5\n" in printed and len(seen) == 1  # not run
    assert main(["--debug", "plain", "--name", "y"], commands=toy_commands(seen)) == 0
    assert seen[-1] == NoResumeConfig(name="y")


# ------------------------------------------------------------ error codes
def test_bad_input_is_one_line_on_stderr(tmp_path, capsys):
    commands = toy_commands([])
    bad_config = tmp_path / "toy.toml"
    bad_config.write_text("stepz = 3\n")
    assert main(["toy", "--config", str(bad_config)], commands=commands) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"rlhf-fast toy: error: {bad_config}: unknown key 'stepz'")

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": 1}\n'
    )
    assert main(["toy", "--data", str(pairs)], commands=commands) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{pairs}: line 2: field 'chosen': expected a string, got 1 (int)" in err

    assert main(["toy", "--config", str(tmp_path / "missing.toml")], commands=commands) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["plain", "--resume"], commands=commands) == 2
    assert "plain does not support --resume" in capsys.readouterr().err


def test_debug_shows_the_traceback_and_bugs_are_not_hidden(tmp_path):
    commands = toy_commands([])
    bad_config = tmp_path / "toy.toml"
    bad_config.write_text("stepz = 3\n")
    with pytest.raises(ValueError, match="unknown key 'stepz'"):
        main(["toy", "--config", str(bad_config), "--debug"], commands=commands)
    with pytest.raises(RuntimeError, match="a genuine bug"):
        main(["toy", "--steps", "13"], commands=commands)


def test_stage_import_failure_is_one_line(capsys):
    broken = {"gone": Command("Missing stage.", "rlhf_fast.no_such_module", "X", "run_x")}
    assert main(["gone"], commands=broken) == 1
    err = capsys.readouterr().err
    assert "cannot import rlhf_fast.no_such_module" in err and err.count("\n") == 1


# --------------------------------------------------- the real subcommands
def test_real_commands_point_at_existing_stages():
    stages = ["demo", "pipeline", "ppo", "sft", "train-reward"]
    assert set(stages) <= set(COMMANDS)
    for name, command in COMMANDS.items():
        config_cls, run, _ = command.load()
        specs = config_fields(config_cls)
        assert callable(run), name
        assert all(spec.help for spec in specs), f"{name}: fields without help"
        if name in stages:
            assert any(spec.name == "output_dir" for spec in specs), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_real_command_help(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    config_cls, _, _ = COMMANDS[name].load()
    for spec in config_fields(config_cls):
        if not spec.is_nested:
            assert "--" + spec.name.replace("_", "-") in out, spec.name


def test_real_command_print_config_round_trips(tmp_path, capsys):
    assert main(["demo", "--print-config", "--output_dir", str(tmp_path / "d")]) == 0
    path = tmp_path / "demo.toml"
    path.write_text(capsys.readouterr().out)
    config_cls, _, _ = COMMANDS["demo"].load()
    assert load_config(config_cls, path).output_dir == str(tmp_path / "d")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pipeline", "--ppo.seed", "5"], "--ppo.seed is no option of PipelineConfig: it is set "
         "once for every stage; use --seed"),
        (["pipeline", "--ppo.no-progress"], "use --progress"),
        (["demo", "--sft.data", "x"], "DemoConfig sets it to its generated corpus"),
        (["pipeline", "--ppo.policy=x"], "PipelineConfig sets it to the SFT model"),
        (["ppo", "--lr-multiplier", "-1"], "--lr-multiplier (lr_multiplier): expected a number > 0, "
         "got -1.0"),
        (["pipeline", "--reward.lr-multiplier", "0"], "--reward.lr-multiplier "
         "(reward.lr_multiplier): expected a number > 0"),
        (["demo", "--reward.eval-data", "x.jsonl"], "the demo holds out its own labelled pairs"),
    ],
)  # fmt: skip
def test_stage_options_are_honoured_or_refused_by_name(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_stage_setting_in_a_file_at_the_wrong_level_says_where_it_goes(tmp_path, capsys):
    config = tmp_path / "demo.toml"
    config.write_text("max_new_tokens = 8\n")
    assert main(["demo", "--config", str(config)]) == 2
    assert (
        "unknown key 'max_new_tokens' for DemoConfig: it is a stage setting; use "
        "--ppo.max-new-tokens" in capsys.readouterr().err
    )
    config.write_text("[sft]\nseed = 3\n")
    assert main(["pipeline", "--config", str(config)]) == 2
    assert "unknown key 'sft.seed' for SFTSettings: it is set once for every stage" in (
        capsys.readouterr().err
    )


# ------------------------------------------- end to end through the CLI (slow)
TINY_PIPELINE = """
model = "tiny-gpt2"
tokenizer = "demo-words"
device = "cpu"
progress = false
[sft]
max_steps = 3
batch_size = 8
warmup_steps = 1
log_every = 1
[reward]
max_steps = 3
batch_size = 8
warmup_steps = 1
eval_every = 3
log_every = 1
[ppo]
max_steps = 2
rollout_batch_size = 8
minibatch_size = 4
ppo_epochs = 1
max_new_tokens = 6
save_every = 1
"""


def write_tiny_task_data(directory) -> dict[str, str]:
    import json as json_lib

    from rlhf_fast.demo.task import gold_score, make_prompts, make_sft_corpus

    sft = make_sft_corpus(64, seed=0)
    files = {"sft": directory / "sft.jsonl", "prefs": directory / "prefs.parquet"}
    files["sft"].write_text("".join(json_lib.dumps(r) + "\n" for r in sft))
    prompts = directory / "prompts.jsonl"
    prompts.write_text(
        "".join(json_lib.dumps({"prompt": p}) + "\n" for p in make_prompts(16, seed=1))
    )
    pairs = []
    for first, second in zip(sft[0::2], sft[1::2]):
        gold = gold_score([first["response"], second["response"]], [first["prompt"]] * 2)
        pairs.append(
            {
                "prompt": first["prompt"],
                "candidate_0": first["response"],
                "candidate_1": second["response"],
                "choice": int(gold[1] > gold[0]),
            }
        )
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(pairs), files["prefs"])
    return {"sft": str(files["sft"]), "prefs": str(files["prefs"]), "prompts": str(prompts)}


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_resumes(tmp_path):
    from rlhf_fast.metrics import read_jsonl

    data = write_tiny_task_data(tmp_path)
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_PIPELINE)
    run = tmp_path / "run"
    argv = ["pipeline", "--config", str(config), "--output-dir", str(run),
            "--sft-data", data["sft"], "--preference-data", data["prefs"],
            "--prompts", data["prompts"]]  # fmt: skip
    assert main(argv) == 0
    for stage in ("sft", "reward", "ppo"):
        assert read_jsonl(run / stage / "metrics" / f"{stage}.jsonl"), stage
        assert (run / stage / "plots" / f"{stage}.png").is_file(), stage
    assert [r["step"] for r in read_jsonl(run / "ppo" / "metrics" / "ppo.jsonl")] == [1, 2]
    assert load_config(COMMANDS["pipeline"].load()[0], run / "config.toml").ppo.max_steps == 2

    # Resume: finished stages are skipped, PPO continues from its step-2 checkpoint.
    assert main([*argv, "--resume", "--ppo.max-steps", "3"]) == 0
    assert [r["step"] for r in read_jsonl(run / "ppo" / "metrics" / "ppo.jsonl")] == [1, 2, 3]


# ------------------------------------------------------ example config files
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("file_name", "command"), [("demo.toml", "demo"), ("pipeline.toml", "pipeline")]
)
def test_example_configs_load_and_say_how_they_were_tested(file_name, command):
    path = CONFIGS / file_name
    header = path.read_text().split("\n\n")[0]
    assert "Tested on:" in header and f"rlhf-fast {command} --config configs/{file_name}" in header
    config_cls, _, _ = COMMANDS[command].load()
    config = load_config(config_cls, path)
    if command == "demo":  # the file spells out the defaults `make demo` runs with
        assert config == config_cls(), "configs/demo.toml no longer matches DemoConfig's defaults"
    else:
        assert config.sft_data and config.preference_data and config.prompts
