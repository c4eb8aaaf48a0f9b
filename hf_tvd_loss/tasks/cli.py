"""``YamlArgumentParser``: ``HfArgumentParser`` plus ``--config FILE.yaml``.

The YAML file is a flat mapping of option names (the dataclass field names, as in ``--help``) to values. It sets
defaults; options given on the command line win; a key that is no option is an error naming the key::

    parser = YamlArgumentParser((ModelArguments, DataArguments, TVDArguments, Seq2SeqTrainingArguments))
    model_args, data_args, tvd_args, training_args = parser.parse_args_and_config(["--config", "run.yaml"])
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from transformers import HfArgumentParser

__all__ = ["YamlArgumentParser", "load_yaml_config"]


def load_yaml_config(path: str, *, option: str = "--config", allowed: Collection[str] | None = None) -> dict[str, Any]:
    """A config file's mapping (``yaml.safe_load``); an empty file is ``{}``.

    Every problem is a ``ValueError`` that starts with ``option`` (the command-line option that named the file).
    With ``allowed``, a key outside it is refused here; :class:`YamlArgumentParser` checks keys against its options.
    """
    import yaml

    if not os.path.isfile(path):
        raise ValueError(f"{option}: file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            content = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f"{option} {path}: not valid YAML: {err}") from err
    if content is None:
        return {}
    if not isinstance(content, Mapping):
        raise ValueError(
            f"{option} {path}: expected a mapping of option names to values, got {type(content).__name__}"
        )
    if allowed is not None:
        unknown = sorted(str(key) for key in content if key not in allowed)
        if unknown:
            raise ValueError(f"{option} {path}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(content)


class YamlArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` with ``--config FILE.yaml`` (defaults from the file, command line overrides)."""

    def __init__(self, dataclass_types: Any, **kwargs: Any) -> None:
        super().__init__(dataclass_types, **kwargs)
        self.add_argument(
            "--config",
            type=str,
            default=None,
            metavar="FILE.yaml",
            help="YAML file mapping option names (as listed here, without --) to values. It sets the defaults; "
            "options on the command line override it; an unknown key is an error.",
        )

    def option_names(self) -> set[str]:
        """Every destination name an option of this parser writes (the valid YAML keys)."""
        return {action.dest for action in self._actions if action.dest not in (argparse.SUPPRESS, "help", "config")}

    def apply_config(self, config: Mapping[str, Any], source: str = "config") -> None:
        """Set parser defaults from ``config``; raise ``ValueError`` naming any key that is not an option."""
        known = self.option_names()
        unknown = sorted(str(key) for key in config if key not in known)
        if unknown:
            raise ValueError(
                f"{source}: unknown option(s) {', '.join(repr(k) for k in unknown)}; run with --help for the "
                "list of options"
            )
        # argparse converts string defaults with the option's type (e.g. "1e-4" to a float, as YAML reads it as a
        # string) and passes other values through to the dataclass, whose own checks then apply.
        self.set_defaults(**dict(config))

    def parse_args_and_config(self, args: Sequence[str] | None = None) -> tuple[Any, ...]:
        """Parse ``args`` (default ``sys.argv[1:]``) after applying ``--config``; returns the dataclasses."""
        import sys

        args = list(sys.argv[1:] if args is None else args)
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--config", default=None)
        known, _ = pre.parse_known_args(args)
        if known.config is not None:
            self.apply_config(load_yaml_config(known.config), source=f"--config {known.config}")
        outputs = self.parse_args_into_dataclasses(args=args, look_for_args_file=False)
        # The trailing namespace holds only `config`.
        return tuple(o for o in outputs if not isinstance(o, argparse.Namespace))
