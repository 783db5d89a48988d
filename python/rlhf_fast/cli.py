"""The ``rlhf-fast`` command line: ``sft``, ``train-reward``, ``ppo``, ``grpo``, ``rloo``, ``dpo``,
``pipeline``, ``demo``, ``label``.

Every subcommand is one config dataclass and one ``run_*(config)`` function. Options
come from the dataclass fields (their ``metadata["help"]`` is the ``--help`` text), a
``--config`` file (TOML, YAML or JSON) sets any of them, and flags given on the command
line override the file::

    rlhf-fast demo --output-dir runs/demo
    rlhf-fast ppo --config configs/ppo.toml --ppo.kl-coef 0.1   # (pipeline: nested keys)
    rlhf-fast ppo --print-config > my_ppo.toml                  # a documented config file

The resolved config is saved as ``<output_dir>/config.toml`` before the stage runs, and
the summary the stage returns is printed as JSON on stdout when it ends.
Bad input (a config key, a data record, a missing file) ends with one line on stderr
and exit code 2 (config and usage errors) or 1 (everything else); ``--debug`` shows
the traceback instead. Stage modules are imported only when their subcommand runs, so
``rlhf-fast --help`` does not load torch.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rlhf_fast.config import (
    ConfigError,
    add_config_arguments,
    check_flags,
    config_fields,
    config_from_args,
    dump_config,
    render_config,
)
from rlhf_fast.errors import RlhfFastError

__all__ = ["COMMANDS", "Command", "main"]

PROG = "rlhf-fast"
# Options of the command line itself; no config field may use these names.
_RESERVED = ("config", "print-config", "print_config", "debug", "help", "h")


@dataclass(frozen=True)
class Command:
    """A subcommand: where its config dataclass and its run function live."""

    summary: str
    module: str
    config_class: str
    runner: str

    def load(self) -> tuple[type, Callable[[Any], Any], str]:
        """Import the stage: ``(config class, run function, module docstring)``.

        ``runner`` is a name in ``module`` or ``other.module:name``.
        """
        try:
            module = importlib.import_module(self.module)
            runner_module, _, runner = self.runner.rpartition(":")
            run_from = importlib.import_module(runner_module) if runner_module else module
        except ImportError as exc:
            raise _StageImportError(
                f"cannot import {self.module}: {exc} "
                "(the training stack needs the 'train' extra: pip install 'rlhf_fast[train]')"
            ) from exc
        return getattr(module, self.config_class), getattr(run_from, runner), module.__doc__ or ""


class _StageImportError(RlhfFastError):
    pass


class _UsageError(ConfigError):
    """A flag the command line does not take (no traceback worth showing)."""


# The training commands run through rlhf_fast.preflight: every input file is loaded and
# checked against the model before the first step.
COMMANDS: dict[str, Command] = {
    "sft": Command(
        "Supervised fine-tuning: next-token loss on the response tokens.",
        "rlhf_fast.trainers.sft",
        "SFTConfig",
        "rlhf_fast.preflight:run_sft",
    ),
    "train-reward": Command(
        "Train a Bradley-Terry reward model on preference pairs.",
        "rlhf_fast.trainers.reward",
        "RewardConfig",
        "rlhf_fast.preflight:run_reward",
    ),
    "ppo": Command(
        "PPO against a reward model with a KL penalty to the reference policy.",
        "rlhf_fast.trainers.ppo",
        "PPOConfig",
        "rlhf_fast.preflight:run_ppo",
    ),
    "grpo": Command(
        "GRPO: groups of completions per prompt, group-relative advantages, no critic.",
        "rlhf_fast.trainers.grpo",
        "GRPOConfig",
        "run_grpo",
    ),
    "rloo": Command(
        "RLOO: REINFORCE with a leave-one-out group baseline and the KL in the reward.",
        "rlhf_fast.trainers.rloo",
        "RLOOConfig",
        "run_rloo",
    ),
    "dpo": Command(
        "DPO (sigmoid, IPO or hinge loss) on preference pairs against a frozen reference.",
        "rlhf_fast.trainers.dpo",
        "DPOConfig",
        "run_dpo",
    ),
    "pipeline": Command(
        "SFT, then the reward model, then PPO, each stage starting from the last.",
        "rlhf_fast.pipeline",
        "PipelineConfig",
        "run_pipeline",
    ),
    "demo": Command(
        "The offline built-in example end to end, with a report (no downloads).",
        "rlhf_fast.demo",
        "DemoConfig",
        "run_demo",
    ),
    "compare": Command(
        "PPO, GRPO, RLOO and DPO on the demo task over several seeds, with one report.",
        "rlhf_fast.demo.compare",
        "CompareConfig",
        "run_compare",
    ),
    "label": Command(
        "A local labelling page: people pick the better of two answers, into prefs.jsonl.",
        "rlhf_fast.label",
        "LabelConfig",
        "run_label",
    ),
}


# ------------------------------------------------------------------ parsers
def _version() -> str:
    try:
        from rlhf_fast import __version__

        return __version__
    except ImportError:  # pragma: no cover (the extension is part of every install)
        return "unknown"


def _top_parser(commands: Mapping[str, Command]) -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<14}{command.summary}" for name, command in commands.items())
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="RLHF for language models: SFT, reward model and PPO, per-token math in Rust.",
        usage=f"{PROG} [--debug] [--version] COMMAND [options]",
        epilog=(
            f"commands:\n{listing}\n\n"
            f"'{PROG} COMMAND --help' explains every option of a command. Options can also be\n"
            "set in a --config file (TOML, YAML or JSON, same names); flags override the file."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks instead of one-line errors"
    )
    return parser


def _config_doc(config_cls: type) -> str:
    doc = (config_cls.__doc__ or "").strip()
    return "" if doc.startswith(config_cls.__name__ + "(") else doc  # skip dataclass' generated one


class _CommandParser(argparse.ArgumentParser):
    """argparse with one-line usage errors and a did-you-mean for an unknown flag."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{message} ('{self.prog} --help' lists every option)")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            flag = next((a for a in extra if a.startswith("--")), extra[0]).split("=", 1)[0]
            close = difflib.get_close_matches(flag, list(self._option_string_actions), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            self.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
        return parsed


def build_command_parser(
    name: str, command: Command, config_cls: type, module_doc: str = ""
) -> argparse.ArgumentParser:
    """The parser of ``rlhf-fast NAME``: ``--config``, ``--print-config``, ``--debug`` + fields."""
    # The stage module's docstring says what it does and how to launch it.
    description = module_doc.strip() or _config_doc(config_cls) or command.summary
    parser = _CommandParser(
        prog=f"{PROG} {name}",
        description=description,
        epilog=(
            "Every option can also be set in the --config file under the same name (dashes or\n"
            "underscores; nested options as tables, e.g. [ppo] kl_coef = 0.1). Flags given on the\n"
            f"command line override the file. '{PROG} {name} --print-config' prints the resolved\n"
            "config as a documented TOML file."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    general = parser  # the command line's own options, listed first
    general.add_argument(
        "--config",
        metavar="FILE",
        help="TOML, YAML or JSON file of options; command-line flags override its values",
    )
    general.add_argument(
        "--print-config",
        "--print_config",
        action="store_true",
        help="print the resolved config (file + flags) as documented TOML and exit",
    )
    general.add_argument(
        "--debug", action="store_true", help="show tracebacks instead of one-line errors"
    )
    has_resume = any(spec.name == "resume" for spec in config_fields(config_cls))
    if not has_resume:
        general.add_argument(
            "--resume",
            action="store_true",
            help="(not supported by this command: it has no checkpoints)",
        )
    add_config_arguments(
        parser, config_cls, reserved=_RESERVED, title=f"{name} options ({config_cls.__name__})"
    )
    return parser


# --------------------------------------------------------------------- main
def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, RlhfFastError):
        text = f"{type(exc).__name__}: {text}"
    return text


def _is_input_error(exc: BaseException) -> bool:
    """Errors a user fixes by changing the input, shown without a traceback."""
    if isinstance(exc, (RlhfFastError, ValueError, OSError)):
        return True
    return type(exc).__name__ == "OutOfMemoryError"  # torch's CUDA OOM, without importing torch


def _split_argv(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """``[global options] COMMAND [command options]`` -> the three parts."""
    for index, arg in enumerate(argv):
        if not arg.startswith("-"):
            return list(argv[:index]), arg, list(argv[index + 1 :])
    return list(argv), None, []


def main(
    argv: Sequence[str] | None = None, *, commands: Mapping[str, Command] | None = None
) -> int:
    """Run the command line; returns the exit code (0 success, 1 error, 2 bad usage/config)."""
    commands = COMMANDS if commands is None else commands
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser(commands)
    global_args, name, rest = _split_argv(argv)
    try:
        options = top.parse_args(global_args)
        if name is None:
            top.print_usage(sys.stderr)
            print(f"{PROG}: error: a command is required: {', '.join(commands)}", file=sys.stderr)
            return 2
        if name not in commands:
            close = difflib.get_close_matches(name, list(commands), n=1)
            hint = (
                f"; did you mean {close[0]!r}?" if close else f"; choose from {', '.join(commands)}"
            )
            top.print_usage(sys.stderr)
            print(f"{PROG}: error: unknown command {name!r}{hint}", file=sys.stderr)
            return 2
    except SystemExit as exit_:  # --help, --version, or an argparse usage error
        return _exit_code(exit_)
    debug = options.debug or "--debug" in rest
    try:
        return _run_command(name, commands[name], rest, debug=debug)
    except KeyboardInterrupt:
        print(f"{PROG} {name}: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:
        if debug or isinstance(exc, SystemExit) or not _is_input_error(exc):
            raise
        code = 2 if isinstance(exc, ConfigError) else 1
        hint = "" if isinstance(exc, _UsageError) else " (--debug shows the traceback)"
        print(f"{PROG} {name}: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return code


def _exit_code(exit_: SystemExit) -> int:
    return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)


def _run_command(name: str, command: Command, argv: list[str], *, debug: bool) -> int:
    config_cls, run, module_doc = command.load()
    check_flags(config_cls, argv)
    parser = build_command_parser(name, command, config_cls, module_doc)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return _exit_code(exit_)
    if getattr(args, "resume", False):  # only present when the config has no resume field
        raise ConfigError(f"{name} does not support --resume")
    config = config_from_args(config_cls, args)
    if args.print_config:
        sys.stdout.write(
            render_config(config, header=f"{PROG} {name}: resolved {config_cls.__name__}.")
        )
        return 0
    # Under torchrun only rank 0 writes (the process group does not exist yet, so
    # the launcher's RANK variable tells).
    main_process = os.environ.get("RANK", "0") == "0"
    output_dir = getattr(config, "output_dir", None)
    if output_dir and main_process:
        dump_config(config, Path(output_dir) / "config.toml")
    result = run(config)
    if isinstance(result, Mapping) and main_process:  # the stage's summary, for people and scripts
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
