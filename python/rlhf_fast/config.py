"""Config dataclasses -> command-line options, config files and their documentation.

A config is a ``@dataclass`` whose fields carry their documentation in
``metadata={"help": ...}`` (:func:`option`). Each option has one home:
:class:`RunConfig` holds what every stage shares (seed, device, output_dir, ...),
:class:`StageSettings` the knobs each stage has its own value of, and a stage's config
inherits both (``class PPOConfig(PPOSettings, RunConfig)``). ``pipeline`` and ``demo``
nest only the stage settings, so a shared option cannot be set twice; a misplaced one is
an error saying where it belongs (:func:`misplaced_option`). From that single source this
module derives:

- argparse options (:func:`add_config_arguments`): ``--output-dir`` (``--output_dir``
  also accepted), nested dataclass fields as ``--ppo.kl-coef``, booleans as
  ``--flag/--no-flag``, ``Optional`` fields accept ``none``, ``Literal`` fields list
  their choices, ``list[...]`` fields take several values;
- loading a TOML, YAML or JSON file into the dataclass (:func:`load_config`), with
  unknown keys and wrong types reported by key and file, and command-line flags
  overriding the file (:func:`config_from_args`);
- the documented config file (:func:`render_config`: the resolved values as TOML with
  every field's help as a comment) and a markdown table (:func:`render_config_markdown`);
- :func:`dump_config` saves the resolved config (TOML or JSON) into a run directory.

Supported field types: ``int``, ``float``, ``str``, ``bool``, ``pathlib.Path``,
``Optional[X]``, ``Literal[...]``, ``list[X]``/``tuple[X, ...]`` of those scalars, and
nested config dataclasses.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from rlhf_fast.errors import InvalidArgumentError

__all__ = [
    "ConfigBase",
    "check_flags",
    "ConfigError",
    "FieldSpec",
    "RunConfig",
    "StageSettings",
    "SupervisedSettings",
    "add_config_arguments",
    "config_fields",
    "field_defaults",
    "config_from_args",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
    "load_config_file",
    "misplaced_option",
    "option",
    "redefault",
    "render_config",
    "render_config_markdown",
    "run_settings",
    "settings_of",
]

_FIELD_DEST = "config_field:"
_NONE_WORDS = ("none", "null")


class ConfigError(InvalidArgumentError):
    """A config file, key or value is invalid."""


class OptionValueError(ConfigError):
    """One option holds a value outside its range; ``option`` is its (dotted) name."""

    def __init__(self, option: str, reason: str) -> None:
        self.option, self.reason = option, reason
        super().__init__(f"{option_strings(option)[0]} ({option}): {reason}")


# ------------------------------------------------------ config building blocks
def option(default: Any, help: str) -> Any:
    """A config field with its help text, the one place the CLI and config files read it from.

    A list default is copied for every instance.
    """
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def redefault(owner: type, name: str, default: Any) -> Any:
    """Field ``name`` of the base class ``owner`` with another default (the help stays there)."""
    return option(default, owner.__dataclass_fields__[name].metadata["help"])


class ConfigBase:
    """Base of the config dataclasses: assigning an attribute that is not a field is an
    error (a misspelt or misplaced setting would otherwise be dropped without a word),
    and ``__post_init__`` range checks chain through ``super()``."""

    def __setattr__(self, name: str, value: Any) -> None:
        fields = getattr(self, "__dataclass_fields__", {})
        if name not in fields and not name.startswith("_"):
            if name in RunConfig.__dataclass_fields__ and not isinstance(self, RunConfig):
                hint = ": it is shared by every stage; set it on the pipeline's or demo's config"
            else:
                hint = _suggest(name, list(fields))
            raise AttributeError(f"{type(self).__name__} has no option {name!r}{hint}")
        object.__setattr__(self, name, value)

    def __post_init__(self) -> None:
        pass

    def _require(self, name: str, ok: bool, expected: str) -> None:
        """Raise :class:`OptionValueError` for field ``name`` unless ``ok``."""
        if not ok:
            raise OptionValueError(name, f"expected {expected}, got {getattr(self, name)!r}")


def _suggest(key: str, known: Sequence[str], prefix: str = "") -> str:
    close = (
        difflib.get_close_matches(key, list(known), n=1)
        or [name for name in known if name.startswith(key) or key.startswith(name)][:1]
    )
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    return f"; known keys: {', '.join(prefix + k for k in known)}" if prefix else ""


@dataclasses.dataclass
class RunConfig(ConfigBase):
    """Settings every stage shares; ``pipeline`` and ``demo`` set them once for all stages."""

    output_dir: str = option(
        "runs/run", "Directory for the model, metrics, checkpoints and config.toml."
    )
    seed: int = option(0, "Random seed (weights of a new model or head, data order, sampling).")
    resume: bool = option(
        False,
        "Continue from the last checkpoint in output_dir (pipeline, demo: skip finished stages).",
    )
    tokenizer: str = option(
        "",
        "'bytes', 'demo-words' or a local directory; empty: the model directory's own, "
        "or 'bytes' for a built-in model.",
    )
    instruction: str = option("", "Text prepended to every prompt.")
    skip_invalid: bool = option(
        False,
        "Skip malformed data records instead of stopping; they are counted in the summary "
        "(n_skipped_records) and logged.",
    )
    device: str = option("auto", "'auto' (CUDA when available), 'cpu' or 'cuda[:N]'.")
    bf16_autocast: bool = option(False, "Run forward passes under bf16 autocast.")
    fsdp: bool = option(
        False,
        "Shard the trained model's weights, gradients and optimizer state over the ranks "
        "(FSDP2, per transformer block) instead of replicating them (DDP); for runs under "
        "torchrun. Without torchrun: a group of one process (the same code, no memory saved).",
    )
    tensorboard: bool = option(True, "Also write TensorBoard event files.")
    progress: bool = option(True, "Show progress bars.")


@dataclasses.dataclass
class StageSettings(ConfigBase):
    """Knobs every training stage has, each stage with its own value (``--ppo.log-every``)."""

    lr_multiplier: float = option(
        1.0, "Multiplies learning_rate (the per-stage knob of hosted pipelines)."
    )
    grad_clip: float = option(1.0, "Clip the global gradient norm to this (0: off).")
    log_every: int = option(10, "Log metrics every this many steps.")
    save_every: int = option(200, "Write a checkpoint every this many steps (and at the end).")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("lr_multiplier", _positive(self.lr_multiplier), "a number > 0")
        self._require("grad_clip", _positive(self.grad_clip, zero=True), "a number >= 0")
        self._require("log_every", self.log_every >= 1, "an integer >= 1")
        self._require("save_every", self.save_every >= 1, "an integer >= 1")


@dataclasses.dataclass
class SupervisedSettings(StageSettings):
    """The optimiser of the supervised stages (SFT, reward model): AdamW, a linear warm-up,
    then a cosine decay to 10% of the peak at the last step."""

    learning_rate: float = option(1e-3, "Peak learning rate (AdamW).")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    warmup_steps: int = option(20, "Linear warm-up steps, then cosine decay to 10%.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("learning_rate", _positive(self.learning_rate), "a number > 0")
        self._require("weight_decay", _positive(self.weight_decay, zero=True), "a number >= 0")
        self._require("warmup_steps", self.warmup_steps >= 0, "an integer >= 0")


def _positive(value: Any, *, zero: bool = False) -> bool:
    """``value`` is a finite number > 0 (``>= 0`` with ``zero``)."""
    return (
        isinstance(value, (int, float))
        and math.isfinite(value)
        and (value >= 0 if zero else value > 0)
    )


def run_settings(config: RunConfig) -> dict[str, Any]:
    """The :class:`RunConfig` options of ``config``, as keyword arguments for a stage config."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(RunConfig)}


def settings_of(settings: Any, cls: type, name: str) -> dict[str, Any]:
    """The options of a nested stage ``settings`` (exactly a ``cls``), as keyword arguments.

    A full stage config in its place (``PPOConfig`` for ``PPOSettings``) would carry a
    seed, device, ... that the stage would then not run with: an error.
    """
    if type(settings) is not cls:
        raise ConfigError(
            f"{name}: expected {cls.__name__} (the stage's own settings; the shared ones "
            f"are set once for every stage), got {type(settings).__name__}"
        )
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)}


def misplaced_option(cls: type, dotted: str) -> str:
    """A hint when ``dotted`` is no option of ``cls`` but is set elsewhere, else ``""``.

    ``ppo.seed`` of a pipeline: the seed is one top-level option shared by every stage.
    Classes that fill stage fields themselves list them in a ``WIRED`` class attribute
    (``{"ppo.policy": "the SFT model"}``).
    """
    wired = getattr(cls, "WIRED", {})
    if dotted in wired:
        return f": {cls.__name__} sets it to {wired[dotted]}"
    *_, leaf = dotted.split(".")
    if not dataclasses.is_dataclass(cls):
        return ""
    top = {f.name for f in dataclasses.fields(cls)}
    if "." in dotted and leaf in top:
        return (
            f": it is set once for every stage; use {option_strings(leaf)[0]} "
            f"(key {leaf!r} at the top level)"
        )
    if "." not in dotted:  # a stage setting given at the top level
        homes = [
            option_strings(f"{spec.name}.{leaf}")[0]
            for spec in config_fields(cls)
            if spec.is_nested
            and "." not in spec.name
            and leaf in {f.name for f in dataclasses.fields(spec.base)}
        ]
        if homes:
            return f": it is a stage setting; use {' or '.join(homes)}"
    return ""


# ---------------------------------------------------------------- field specs
@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One leaf or nested field of a config dataclass, with its type taken apart."""

    name: str  # dotted path, e.g. "ppo.kl_coef"
    field: dataclasses.Field
    annotation: Any  # the resolved type hint
    base: Any  # the type inside Optional / list: int, float, str, bool, Path, Literal, dataclass
    optional: bool
    sequence: type | None  # list or tuple when the field holds several values
    help: str

    @property
    def is_nested(self) -> bool:
        return dataclasses.is_dataclass(self.base)

    @property
    def choices(self) -> tuple[Any, ...] | None:
        return typing.get_args(self.base) if typing.get_origin(self.base) is Literal else None

    def default(self) -> Any:
        """The dataclass default, or ``dataclasses.MISSING`` for a required field."""
        if self.field.default is not dataclasses.MISSING:
            return self.field.default
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return dataclasses.MISSING

    def type_name(self) -> str:
        if self.choices is not None:
            inner = "{" + ",".join(str(c) for c in self.choices) + "}"
        else:
            inner = getattr(self.base, "__name__", str(self.base))
        if self.sequence is not None:
            inner = f"list[{inner}]"
        return f"{inner} | None" if self.optional else inner


def _is_union(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType)


def _analyse(owner: type, name: str, annotation: Any) -> tuple[Any, bool, type | None]:
    """Split a type hint into (base type, optional?, sequence kind)."""
    optional = False
    tp = annotation
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise ConfigError(
                f"{owner.__name__}.{name}: unsupported type {annotation!r} "
                "(only Optional[X] unions are supported)"
            )
        optional, tp = True, args[0]
    sequence = None
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence):
        item_args = typing.get_args(tp)
        if origin is tuple and not (len(item_args) == 2 and item_args[1] is Ellipsis):
            raise ConfigError(f"{owner.__name__}.{name}: use tuple[X, ...], got {annotation!r}")
        sequence = tuple if origin is tuple else list
        tp = item_args[0] if item_args else str
    scalar = tp in (int, float, str, bool, Path) or typing.get_origin(tp) is Literal
    if not scalar and not (dataclasses.is_dataclass(tp) and sequence is None and not optional):
        raise ConfigError(f"{owner.__name__}.{name}: unsupported field type {annotation!r}")
    return tp, optional, sequence


def config_fields(cls: type, prefix: str = "") -> list[FieldSpec]:
    """Every field of ``cls`` (nested ones included, depth first), as :class:`FieldSpec`."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"expected a dataclass type, got {cls!r}")
    hints = typing.get_type_hints(cls)
    specs: list[FieldSpec] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        base, optional, sequence = _analyse(cls, f.name, hints[f.name])
        spec = FieldSpec(
            name=prefix + f.name,
            field=f,
            annotation=hints[f.name],
            base=base,
            optional=optional,
            sequence=sequence,
            help=str(f.metadata.get("help", "")).strip(),
        )
        specs.append(spec)
        if spec.is_nested:
            specs.extend(config_fields(base, prefix=spec.name + "."))
    return specs


def _leaf_fields(cls: type) -> list[FieldSpec]:
    return [s for s in config_fields(cls) if not s.is_nested]


def field_defaults(cls: type, instance: Any = None, prefix: str = "") -> dict[str, Any]:
    """``{dotted leaf name: default}``; required fields map to ``dataclasses.MISSING``.

    A nested config takes its defaults from the parent field's default instance
    (``field(default_factory=lambda: SFTConfig(max_steps=300))`` shows 300), not
    from the nested class.
    """
    out: dict[str, Any] = {}
    for spec in config_fields(cls):
        if "." in spec.name:
            continue
        value = spec.default() if instance is None else getattr(instance, spec.name)
        if spec.is_nested:
            nested = None if value is dataclasses.MISSING else value
            out.update(field_defaults(spec.base, nested, prefix + spec.name + "."))
        else:
            out[prefix + spec.name] = value
    return out


# ------------------------------------------------------------ value conversion
def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _coerce_scalar(spec: FieldSpec, value: Any) -> Any:
    """Check a value read from a file (already typed) against a scalar type."""
    base = spec.base
    choices = spec.choices
    if choices is not None:
        if value in choices and not (isinstance(value, bool) and bool not in map(type, choices)):
            return value
        raise TypeError(f"expected one of {list(choices)}")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("expected true or false")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("expected an integer")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError("expected a number")
    if base is str:
        if isinstance(value, str):
            return value
        raise TypeError("expected a string")
    if base is Path:
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
        raise TypeError("expected a path string")
    raise TypeError(f"unsupported type {base!r}")  # pragma: no cover (rejected by _analyse)


def _coerce(spec: FieldSpec, value: Any) -> Any:
    if value is None or (
        spec.optional
        and isinstance(value, str)
        and value.lower() in _NONE_WORDS
        and spec.base is not str
    ):
        if spec.optional:
            return None
        raise TypeError(f"expected {spec.type_name()} (the field is not optional)")
    if spec.sequence is not None:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError(f"expected a list of {spec.base.__name__}")
        return spec.sequence(_coerce_scalar(spec, item) for item in value)
    return _coerce_scalar(spec, value)


def _parse_cli_scalar(spec: FieldSpec, text: str) -> Any:
    """Turn one command-line word into a value of the field's scalar type."""
    choices = spec.choices
    if choices is not None:
        for choice in choices:
            if str(choice) == text:
                return choice
        raise ValueError(f"invalid choice {text!r} (choose from {', '.join(map(str, choices))})")
    if spec.base is int:
        return int(text)
    if spec.base is float:
        return float(text)
    if spec.base is Path:
        return Path(text)
    if spec.base is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    return text


def _cli_type(spec: FieldSpec):
    def convert(text: str) -> Any:
        if spec.optional and spec.base is not str and text.lower() in _NONE_WORDS:
            return None
        try:
            return _parse_cli_scalar(spec, text)
        except ValueError as exc:
            message = (
                str(exc)
                if spec.choices is not None
                else f"expected {spec.type_name()}, got {text!r}"
            )
            raise argparse.ArgumentTypeError(message) from None

    convert.__name__ = spec.type_name()  # argparse names the type in its error messages
    return convert


# ------------------------------------------------------------------ argparse
def option_strings(name: str) -> list[str]:
    """``"ppo.kl_coef"`` -> ``["--ppo.kl-coef", "--ppo.kl_coef"]`` (the first is shown in help)."""
    dashed = "--" + name.replace("_", "-")
    plain = "--" + name
    return [dashed] if dashed == plain else [dashed, plain]


def _bool_option_strings(name: str) -> tuple[list[str], list[str], frozenset[str]]:
    """Spellings of a boolean flag: ``(shown, hidden aliases, negative ones)``.

    ``"sft.skip_invalid"`` is shown as ``--sft.skip-invalid`` / ``--sft.no-skip-invalid``;
    ``--no-sft.skip-invalid`` and the underscore spellings work too.
    """
    *parents, leaf = name.split(".")
    prefix = "".join(part + "." for part in parents)
    positives = option_strings(name)
    negatives: list[str] = []
    for leaf_spelling in dict.fromkeys((leaf.replace("_", "-"), leaf)):
        for no in ("no-", "no_"):
            negatives.append(f"--{prefix.replace('_', '-')}{no}{leaf_spelling}")
            negatives.append(f"--{prefix}{no}{leaf_spelling}")
            negatives.append(f"--{no}{prefix.replace('_', '-')}{leaf_spelling}")
            negatives.append(f"--{no}{prefix}{leaf_spelling}")
    negatives = list(dict.fromkeys(negatives))
    shown = [positives[0], negatives[0]]
    hidden = [s for s in positives[1:] + negatives[1:] if s not in shown]
    return shown, hidden, frozenset(negatives)


class _BoolFlag(argparse.Action):
    """``--flag`` sets True, any of its negative spellings sets False."""

    def __init__(
        self, option_strings: Sequence[str], dest: str, negatives: frozenset[str], **kwargs: Any
    ):
        self.negatives = negatives
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None):
        setattr(namespace, self.dest, option_string not in self.negatives)

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def _format_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if value == "" or value != value.strip() else value
    if isinstance(value, (list, tuple)):
        return " ".join(_format_default(v) for v in value) or "(empty)"
    return str(value)


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    reserved: Sequence[str] = (),
    title: str | None = None,
) -> list[FieldSpec]:
    """Add one option per leaf field of ``cls`` (nested fields in their own groups).

    Options default to ``argparse.SUPPRESS`` so that only the flags actually given
    override the config file; :func:`config_from_args` does the merge. ``reserved``
    lists option names the caller uses itself (e.g. ``config``); a field of that name
    is a programming error. With ``title`` the top-level fields get their own group.
    """
    groups: dict[str, Any] = {"": parser.add_argument_group(title) if title else parser}
    specs = config_fields(cls)
    defaults = field_defaults(cls)
    for spec in specs:
        if spec.name in reserved or spec.name.replace("_", "-") in reserved:
            raise ConfigError(
                f"{cls.__name__}.{spec.name}: the option name is reserved by the command line"
            )
        if spec.is_nested:
            group_title = f"{spec.name} options (--{spec.name}.*)"
            groups[spec.name] = parser.add_argument_group(group_title, spec.help or None)
            continue
        group = groups[spec.name.rsplit(".", 1)[0] if "." in spec.name else ""]
        default = defaults[spec.name]
        shown_default = (
            "required" if default is dataclasses.MISSING else f"default: {_format_default(default)}"
        )
        help_text = f"{spec.help} ({shown_default})" if spec.help else f"({shown_default})"
        help_text = help_text.replace("%", "%%")
        dest = _FIELD_DEST + spec.name
        names = option_strings(spec.name)
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
        if spec.base is bool and spec.sequence is None and not spec.optional:
            shown, hidden, negatives = _bool_option_strings(spec.name)
            kwargs["action"] = _BoolFlag
            kwargs["negatives"] = negatives
            group.add_argument(*shown, help=help_text, **kwargs)
            group.add_argument(*hidden, help=argparse.SUPPRESS, **kwargs)
            continue
        kwargs["type"] = _cli_type(spec)
        if spec.sequence is not None:
            kwargs["nargs"] = "*"
        if spec.choices is not None:
            none = "|none" if spec.optional else ""
            kwargs["metavar"] = "{" + ",".join(map(str, spec.choices)) + "}" + none
        else:
            kwargs["metavar"] = spec.type_name().upper().replace(" | NONE", "|none")
        group.add_argument(names[0], help=help_text, **kwargs)
        if len(names) > 1:  # the underscore spelling works but is not listed twice
            group.add_argument(names[1], help=argparse.SUPPRESS, **kwargs)
    return specs


def check_flags(cls: type, argv: Sequence[str]) -> None:
    """Stop on a flag that names an option ``cls`` sets elsewhere (``--ppo.seed`` of a
    pipeline), with a message that says where, before the parser calls it unknown."""
    known = {spec.name for spec in config_fields(cls)}
    for arg in argv:
        if arg == "--":
            break
        if not arg.startswith("--") or "." not in arg:
            continue
        dotted = arg[2:].split("=", 1)[0].replace("-", "_")
        *parents, leaf = dotted.split(".")
        candidates = [dotted]
        if leaf.startswith("no_"):
            candidates.append(".".join([*parents, leaf[3:]]))
        if parents and parents[0].startswith("no_"):
            candidates.append(".".join([parents[0][3:], *parents[1:], leaf]))
        if any(c in known for c in candidates):
            continue
        for candidate in candidates:
            hint = misplaced_option(cls, candidate)
            if hint:
                raise ConfigError(f"{arg.split('=', 1)[0]} is no option of {cls.__name__}{hint}")


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def config_from_args(
    cls: type, args: argparse.Namespace, *, config_file: str | os.PathLike[str] | None = None
):
    """Build ``cls`` from defaults, then the config file, then the flags given in ``args``.

    ``config_file`` defaults to ``args.config`` when the parser has such an option.
    """
    if config_file is None:
        config_file = getattr(args, "config", None)
    data = load_config_file(config_file) if config_file else {}
    source = str(config_file) if config_file else "<defaults>"
    data = _normalise_keys(cls, data, source)
    for dest, value in vars(args).items():
        if dest.startswith(_FIELD_DEST):
            _set_dotted(data, dest[len(_FIELD_DEST) :], value)
    return config_from_dict(cls, data, source=source)


# --------------------------------------------------------------- dict <-> config
def _normalise_keys(
    cls: type, data: Mapping[str, Any], source: str, prefix: str = "", root: Any = None
) -> dict[str, Any]:
    """Accept ``output-dir`` for ``output_dir``; reject unknown keys with a suggestion."""
    root = cls if root is None else root
    if not isinstance(data, Mapping):
        where = f"key {prefix[:-1]!r}" if prefix else "the top level"
        raise ConfigError(f"{source}: {where}: expected a table of options, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in fields:
            hint = misplaced_option(root, prefix + key) or _suggest(key, list(fields), prefix)
            if not prefix and not hint:
                hint = f"; known keys: {', '.join(fields)}"
            raise ConfigError(
                f"{source}: unknown key {prefix + str(raw_key)!r} for {cls.__name__}{hint}"
            )
        if key in out:
            raise ConfigError(f"{source}: key {prefix + key!r} is given twice (with '-' and '_')")
        base = _analyse(cls, key, hints[key])[0]
        if isinstance(base, type) and dataclasses.is_dataclass(base):
            value = _normalise_keys(base, value, source, prefix=prefix + key + ".", root=root)
        out[key] = value
    return out


def config_from_dict(cls: type, data: Mapping[str, Any], *, source: str = "<dict>"):
    """Build ``cls`` from a nested dict, checking every key and value.

    Missing keys take the dataclass defaults; unknown keys and values of the wrong type
    raise :class:`ConfigError` naming the key and ``source``.
    """
    data = _normalise_keys(cls, data, source)
    return _build(cls, data, source, prefix="")


def _build(cls: type, data: Mapping[str, Any], source: str, prefix: str, base: Any = None):
    """Build ``cls`` from ``data``; keys absent from it come from ``base`` (the default instance
    of the parent's field) or, without one, from the class defaults."""
    kwargs: dict[str, Any] = {}
    for spec in config_fields(cls):
        if "." in spec.name:
            continue  # nested leaves are built by the recursive call below
        key = prefix + spec.name
        if spec.is_nested:
            nested_base = getattr(base, spec.name) if base is not None else spec.default()
            nested_base = None if nested_base is dataclasses.MISSING else nested_base
            kwargs[spec.name] = _build(
                spec.base, data.get(spec.name, {}), source, prefix=key + ".", base=nested_base
            )
            continue
        if spec.name not in data:
            if base is not None:
                kwargs[spec.name] = getattr(base, spec.name)
            elif spec.default() is dataclasses.MISSING:
                raise ConfigError(
                    f"{source}: missing required option {key!r} "
                    f"(give {option_strings(key)[0]} or set {key} in the config file)"
                )
            continue
        try:
            kwargs[spec.name] = _coerce(spec, data[spec.name])
        except TypeError as exc:
            raise ConfigError(
                f"{source}: key {key!r}: {exc}, got {_describe(data[spec.name])}"
            ) from None
    try:
        return cls(**kwargs)
    except OptionValueError as exc:
        raise OptionValueError(prefix + exc.option, exc.reason) from None
    except (InvalidArgumentError, ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: invalid {cls.__name__}: {exc}") from exc


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as a nested dict of plain values (``Path`` -> ``str``, tuples -> lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init
            }
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ConfigError(f"expected a config dataclass instance, got {_describe(config)}")
    return plain(config)


# ---------------------------------------------------------------------- files
def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file into a dict."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} does not exist")
    suffix = file.suffix.lower()
    text = file.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
            data = {} if data is None else data
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(
                f"config file {str(file)!r}: unknown format {suffix!r}; "
                "use .toml, .yaml, .yml or .json"
            )
    except ConfigError:
        raise
    except Exception as exc:  # each parser has its own error class; all mean "bad syntax"
        detail = " ".join(str(exc).split())
        raise ConfigError(f"config file {str(file)!r}: cannot parse: {detail}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(file)!r}: expected a table of options, got {_describe(data)}"
        )
    return data


def load_config(
    cls: type,
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
):
    """Defaults <- ``path`` (TOML/YAML/JSON) <- ``overrides`` (``{"ppo.kl_coef": 0.1}``)."""
    data = _normalise_keys(cls, load_config_file(path), str(path)) if path else {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted.replace("-", "_"), value)
    return config_from_dict(cls, data, source=str(path) if path else "<overrides>")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {_describe(value)} to TOML")


def _comment(text: str, width: int = 88) -> list[str]:
    import textwrap

    return ["# " + line for line in textwrap.wrap(text, width - 2)] if text else []


def render_config(config_or_cls: Any, *, header: str = "") -> str:
    """A TOML file of the config's values (or a class's defaults), each field's help as comment.

    Fields that are ``None`` (TOML has no null) and required fields without a value are
    written commented out. The output loads back with :func:`load_config`.
    """
    if isinstance(config_or_cls, type):
        cls, values = config_or_cls, field_defaults(config_or_cls)
    else:
        cls, values = type(config_or_cls), field_defaults(type(config_or_cls), config_or_cls)
    lines: list[str] = [*_comment(header, 100), ""] if header else []

    def emit(table_cls: type, prefix: str) -> None:
        nested = []
        for spec in config_fields(table_cls):
            if "." in spec.name:
                continue
            if spec.is_nested:
                nested.append(spec)
                continue
            value = values[prefix + spec.name]
            lines.extend(_comment(f"{spec.help} [{spec.type_name()}]".strip()))
            if value is dataclasses.MISSING:
                lines.append(f"# {_toml_key(spec.name)} =   (required)")
            elif value is None:
                lines.append(f"# {_toml_key(spec.name)} =   (unset)")
            else:
                lines.append(f"{_toml_key(spec.name)} = {_toml_value(value)}")
        for spec in nested:
            lines.append("")
            lines.extend(_comment(spec.help))
            lines.append(f"[{prefix}{spec.name}]")
            emit(spec.base, prefix + spec.name + ".")

    emit(cls, "")
    return "\n".join(lines).rstrip() + "\n"


def render_config_markdown(cls: type) -> str:
    """A markdown table of every option: flag, type, default and help."""
    rows = ["| option | type | default | description |", "|---|---|---|---|"]
    defaults = field_defaults(cls)
    for spec in _leaf_fields(cls):
        default = defaults[spec.name]
        shown = "required" if default is dataclasses.MISSING else f"`{_format_default(default)}`"
        flag = option_strings(spec.name)[0]
        description = spec.help.replace("|", "\\|")
        rows.append(f"| `{flag}` | {spec.type_name()} | {shown} | {description} |")
    return "\n".join(rows) + "\n"


def dump_config(config: Any, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config to ``path``: ``.toml`` (documented) or ``.json``."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix == ".toml":
        text = render_config(config, header=f"Resolved {type(config).__name__}.")
    elif suffix == ".json":
        text = json.dumps(config_to_dict(config), indent=2) + "\n"
    else:
        raise ConfigError(f"dump_config: path must end in .toml or .json, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out
