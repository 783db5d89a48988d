"""Command-line flags from a config dataclass, so each field is documented once.

Every example declares its settings as a dataclass whose fields carry
``metadata={"help": ...}``; :func:`parse_config` turns that into ``--flag`` options
(``gae_lambda`` becomes ``--gae-lambda``) and returns a filled-in instance.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Optional, TypeVar

C = TypeVar("C")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _scalar_type(annotation: Any) -> Any:
    """``Optional[float]`` -> ``float``; plain types pass through."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return (
        args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation
    )


def parse_config(config_type: type[C], argv: Optional[list[str]] = None) -> C:
    """Build ``config_type`` from command-line flags (``argv`` defaults to ``sys.argv``)."""
    parser = argparse.ArgumentParser(
        description=(config_type.__doc__ or "").strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):  # type: ignore[arg-type]
        kind = _scalar_type(hints[field.name])
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=_parse_bool if kind is bool else kind,
            default=field.default,
            choices=field.metadata.get("choices"),
            help=field.metadata.get("help", ""),
        )
    return config_type(**vars(parser.parse_args(argv)))
