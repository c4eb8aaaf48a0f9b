"""``YamlArgumentParser``: ``HfArgumentParser`` plus ``--config FILE.yaml``.

The YAML file is a flat mapping of option names (the dataclass field names, as in ``--help``) to values. It sets
defaults; options given on the command line win; a key that is no option is an error naming the key::

    parser = YamlArgumentParser((ModelArguments, DataArguments, TVDArguments, Seq2SeqTrainingArguments))
    model_args, data_args, tvd_args, training_args = parser.parse_args_and_config(["--config", "run.yaml"])
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

from transformers import HfArgumentParser

from . import hf_examples

__all__ = ["YamlArgumentParser", "key_value_keys", "load_yaml_config", "repeated_keys"]


# TrainingArguments options that take a JSON object on the command line (or a path, left to transformers).
_JSON_OPTIONS = ("lr_scheduler_kwargs", "gradient_checkpointing_kwargs", "accelerator_config", "fsdp_config",
                 "deepspeed")  # fmt: skip


def repeated_keys(keys: Sequence[Any]) -> list[Any]:
    """The keys (or other values) that occur more than once in ``keys``, sorted (where a later one would silently
    win, or the same thing would be done twice)."""
    return sorted({key for key in keys if keys.count(key) > 1})


def key_value_keys(text: str) -> list[str]:
    """The keys of a ``k=v,k=v`` list (``--config_overrides``, ``--optim_args``), in order."""
    return [part.split("=", 1)[0].strip() for part in text.split(",") if part.strip()]


def _strict_yaml_loader() -> type:
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged by SafeLoader, explicit keys win
                continue
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (lines {seen[key]} and {line}): which value is meant?",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return StrictLoader


def load_yaml_config(path: str, *, option: str = "--config", allowed: Collection[str] | None = None) -> dict[str, Any]:
    """A config file's mapping (``yaml.safe_load`` rules, a key given twice refused); a file that sets nothing
    (empty, or comments only) is refused: it is most likely not the file meant.

    Every problem is a ``ValueError`` that starts with ``option`` (the command-line option that named the file).
    With ``allowed``, a key outside it is refused here; :class:`YamlArgumentParser` checks keys against its options.
    """
    import yaml

    if os.path.isdir(path):
        raise ValueError(f"{option}: {path} is a folder, not a YAML file")
    if not os.path.isfile(path):
        raise ValueError(f"{option}: file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(f"{option} {path}: line {line} is not UTF-8 text (byte {raw[err.start]:#04x})") from None
    try:
        content = yaml.load(text, Loader=_strict_yaml_loader())  # noqa: S506  # a SafeLoader subclass
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise ValueError(f"{option} {path}: not valid YAML: {detail}") from None
    if content is None:
        raise ValueError(f"{option} {path}: the file sets no option (it is empty, or holds only comments)")
    if not isinstance(content, Mapping):
        raise ValueError(
            f"{option} {path}: expected a mapping of option names to values, got {type(content).__name__}"
        )
    if allowed is not None:
        unknown = sorted(str(key) for key in content if key not in allowed)
        if unknown:
            raise ValueError(f"{option} {path}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(content)


def _field_types(dataclass_types: Sequence[type]) -> dict[str, Any]:
    """Option name -> the resolved annotation of its dataclass field."""
    import dataclasses
    import typing

    types: dict[str, Any] = {}
    for cls in dataclass_types:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001  # an annotation that cannot be resolved: its options are not type-checked
            hints = {}
        for f in dataclasses.fields(cls):
            if f.init and f.name in hints:
                types[f.name] = hints[f.name]
    return types


_BOOL_WORDS = {"true": True, "false": False}


def convert_config_value(name: str, value: Any, annotation: Any) -> Any:
    """``value`` from a YAML file for option ``name`` (field type ``annotation``), checked and converted.

    Raises ``ValueError`` (without the file name) when the value does not have the option's type or is
    ambiguous: a float for an integer (``2.7``), a list for a number, ``yes``/``no``/``on``/``off`` (booleans
    in YAML) for a text option, a number for a boolean, ``null`` for an option that cannot be unset. Strings that
    spell a value of the option's type exactly are converted (PyYAML reads ``1e-4`` as a string).

    Why here and not in ``HfArgumentParser``: its ``parse_dict`` / ``parse_yaml_file`` hand YAML values to the
    dataclass unchecked (a ``2.7`` for an integer option stays a float, ``yes`` for a text option becomes True),
    while the command line goes through argparse's typed options; this gives a YAML file the command line's rules.
    """
    import enum
    import types
    import typing

    origin = typing.get_origin(annotation)
    members = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    optional = type(None) in members
    members = tuple(m for m in members if m is not type(None))
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name}: null is not allowed (the option needs a value; leave the key out for the default)")
    if len(members) != 1:
        if all(m is str or typing.get_origin(m) is list for m in members):  # e.g. report_to: str | list[str]
            if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                return value
            raise ValueError(f"{name}: expected a text or a list of texts, got {value!r} ({type(value).__name__})")
        return value  # unions of other kinds (dict | str, ...): passed on to the dataclass
    kind = members[0]
    if typing.get_origin(kind) is typing.Literal or (isinstance(kind, type) and issubclass(kind, enum.Enum)):
        choices = list(typing.get_args(kind)) if typing.get_origin(kind) is typing.Literal else [m.value for m in kind]
        if value not in choices and str(value) not in [str(c) for c in choices]:
            raise ValueError(f"{name}: {value!r} is not one of {choices}")
        return value
    convert = _CONVERTERS.get("list" if typing.get_origin(kind) is list else kind)
    if convert is None:
        return value
    converted, expected = convert(value)
    if converted is _WRONG:
        raise ValueError(
            f"{name}: expected {expected}, got {value!r} ({type(value).__name__}){_text_hint(kind, value)}"
        )
    return converted


_WRONG = object()  # what a converter returns for a value of the wrong kind


def _to_bool(value: Any) -> tuple[Any, str]:
    if isinstance(value, bool):
        return value, ""
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()], ""
    return _WRONG, "true or false"


def _to_number(kind: type, expected: str) -> Callable[[Any], tuple[Any, str]]:
    def convert(value: Any) -> tuple[Any, str]:
        if isinstance(value, bool):
            return _WRONG, expected
        if isinstance(value, int) or (kind is float and isinstance(value, float)):
            return kind(value), ""
        if isinstance(value, str):
            try:
                return kind(value.strip()), ""
            except ValueError:
                pass
        return _WRONG, expected

    return convert


def _to_str(value: Any) -> tuple[Any, str]:
    return (value, "") if isinstance(value, str) else (_WRONG, "a text")


def _to_list(value: Any) -> tuple[Any, str]:
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return value, ""
    if isinstance(value, str):
        return [value], ""
    return _WRONG, "a list"


def _text_hint(kind: Any, value: Any) -> str:
    """For a text option given a YAML boolean or number: how to write the text."""
    if kind is not str:
        return ""
    if isinstance(value, bool):
        return " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote the text)"
    if isinstance(value, (int, float)):
        return " (quote it if you mean the text)"
    return ""


_CONVERTERS: dict[Any, Callable[[Any], tuple[Any, str]]] = {
    bool: _to_bool,
    int: _to_number(int, "an integer"),
    float: _to_number(float, "a number"),
    str: _to_str,
    "list": _to_list,
}


class YamlArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` with ``--config FILE.yaml`` (defaults from the file, command line overrides)."""

    def __init__(self, dataclass_types: Any, **kwargs: Any) -> None:
        # `--learn 0.1` must not silently mean --learning_rate: options are spelled out
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(dataclass_types, **kwargs)
        self.given_options: frozenset[str] = frozenset()  # set by parse_args_and_config
        self.add_argument(
            "--config",
            type=str,
            default=None,
            metavar="FILE.yaml",
            help="YAML file mapping option names (as listed here, without --) to values. It sets the defaults; "
            "options on the command line override it; an unknown key is an error.",
        )
        # transformers' example scripts' option names: aliases, options accepted where they change nothing, refusals
        self.example_aliases: dict[str, str] = hf_examples.install(self)
        if self.example_aliases:
            note = hf_examples.help_epilog(self.example_aliases)
            self.epilog = f"{self.epilog} {note}" if self.epilog else note

    def option_names(self) -> set[str]:
        """Every destination name an option of this parser writes (the valid YAML keys, less transformers' example
        option names: :meth:`example_keys` maps those)."""
        return {
            action.dest
            for action in self._actions
            if action.dest not in (argparse.SUPPRESS, "help", "config")
            and not action.dest.startswith(hf_examples.HIDDEN_PREFIX)
        }

    def example_keys(self, config: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
        """``config`` with transformers' example option names as this parser reads them: an alias becomes its
        target (refused when the target is a key too), an accepted or refused option its hidden destination."""
        mapped: dict[str, Any] = {}
        for key, value in config.items():
            name = str(key)
            if name in self.example_aliases:
                target = self.example_aliases[name]
                if target in config:
                    raise ValueError(
                        f"{source}: {name} and {target} set the same option ({name} is transformers' name of "
                        f"{target}): give one"
                    )
                mapped[target] = value
            elif (
                ("--" + name) in self._option_string_actions
                and hf_examples.example_option(name) is not None
                and (self._option_string_actions["--" + name].dest == hf_examples.HIDDEN_PREFIX + name)
            ):
                mapped[hf_examples.HIDDEN_PREFIX + name] = value
            else:
                mapped[key] = value
        return mapped

    def apply_config(self, config: Mapping[str, Any], source: str = "config") -> None:
        """Set parser defaults from ``config``; raise ``ValueError`` naming any key that is not an option."""
        config = self.example_keys(config, source)
        hidden = {key: value for key, value in config.items() if str(key).startswith(hf_examples.HIDDEN_PREFIX)}
        config = {key: value for key, value in config.items() if key not in hidden}
        self.set_defaults(**hidden)  # checked after parsing, with the command line (hf_examples.check_values)
        known = self.option_names()
        unknown = sorted(str(key) for key in config if key not in known)
        if unknown:
            raise ValueError(
                f"{source}: unknown option(s) {', '.join(repr(k) + self._suggestion(k) for k in unknown)}; run with "
                "--help for the list of options"
            )
        types = _field_types(self.dataclass_types)
        converted: dict[str, Any] = {}
        for key, value in config.items():
            if key == "resume_from_checkpoint" and isinstance(value, bool):  # `true`: the latest checkpoint
                converted[key] = "latest" if value else None
                continue
            if value is None and key == "output_dir":  # transformers would write to ./trainer_output instead
                raise ValueError(
                    f"{source}: output_dir: null would send the outputs to 'trainer_output'; give a folder"
                )
            try:
                converted[key] = convert_config_value(key, value, types[key]) if key in types else value
            except ValueError as err:
                raise ValueError(f"{source}: {err}") from None
            choices = next((a.choices for a in self._actions if a.dest == key and a.choices), None)
            values = converted[key] if isinstance(converted[key], list) else [converted[key]]
            if choices is not None and converted[key] is not None:
                allowed = [str(getattr(c, "value", c)) for c in choices]
                bad = [v for v in values if str(getattr(v, "value", v)) not in allowed]
                if bad:
                    raise ValueError(f"{source}: {key}: {bad[0]!r} is not one of {allowed}")
        self.set_defaults(**converted)

    def merge_args(self, *layers: Sequence[str]) -> list[str]:
        """One argument list from ``layers``, where an option given in a later layer replaces the same option (its
        value tokens included) of every earlier layer: shared settings first, then per-run overrides. An option
        repeated within one layer is kept twice, so that parsing refuses it."""
        merged: list[tuple[str | None, list[str]]] = []
        for layer in layers:
            groups: list[tuple[str | None, list[str]]] = []
            tokens = list(layer)
            while tokens:
                token = tokens.pop(0)
                if token == "--":
                    groups.append((None, [token, *tokens]))
                    break
                action = self._option_string_actions.get(token.split("=", 1)[0]) if token.startswith("--") else None
                if action is not None:
                    groups.append((action.dest, [token]))
                elif groups:
                    groups[-1][1].append(token)
                else:
                    groups.append((None, [token]))
            replaced = {dest for dest, _ in groups if dest is not None}
            merged = [(dest, toks) for dest, toks in merged if dest not in replaced] + groups
        return [token for _, toks in merged for token in toks]

    def _suggestion(self, name: str) -> str:
        """`` (did you mean --x?)`` for the option closest to ``name`` (with or without its dashes), or ``""``."""
        import difflib

        options = sorted(
            option
            for option, action in self._option_string_actions.items()
            if option.startswith("--") and action.help != argparse.SUPPRESS
        )
        close = difflib.get_close_matches("--" + name.lstrip("-"), options, n=1, cutoff=0.75)
        return f" (did you mean {close[0]}?)" if close else ""

    def _refuse_unknown_options(self, remaining: Sequence[str]) -> None:
        """An option no dataclass has: named with the closest known one (HfArgumentParser lists the leftovers)."""
        unknown = [token.split("=", 1)[0] for token in remaining if token.startswith("--") and token != "--"]
        if unknown:
            raise ValueError(
                "unknown option(s) "
                + ", ".join(f"{option}{self._suggestion(option)}" for option in unknown)
                + "; run with --help for the list of options"
            )

    def check_option_names(self, args: Sequence[str]) -> None:
        """Refuse (``ValueError``) an option given twice or one no dataclass has, without parsing values: for a caller
        that passes ``args`` on to processes that parse them later (the loss study's runs), so that such a mistake
        is named before any of them starts."""
        self._refuse_repeated_options(args)
        unknown = []
        for arg in args:
            if arg == "--":
                break
            if arg.startswith("--") and arg.split("=", 1)[0] not in self._option_string_actions:
                unknown.append(arg)
        self._refuse_unknown_options(unknown)

    def _refuse_repeated_options(self, args: Sequence[str]) -> None:
        """argparse keeps the last of repeated options; a long command line edited by hand (or built by a script
        appending overrides) then runs with a value its author may not have meant. Refuse instead, naming both."""
        seen: dict[str, str] = {}
        for option, action in self._options_in(args):
            if action.dest in (argparse.SUPPRESS, "help", "config"):
                continue
            if action.dest in seen:
                first = seen[action.dest]
                names = {option[2:].replace("-", "_"), first[2:].replace("-", "_")}
                if option != first and names & set(self.example_aliases):
                    alias = option if option[2:].replace("-", "_") in self.example_aliases else first
                    raise ValueError(
                        f"{action.dest}: {first} and {option} set the same option ({alias} is transformers' name of "
                        f"--{action.dest}): give one"
                    )
                also = f" (and {option})" if option != first else ""
                raise ValueError(
                    f"{action.dest}: {first} is given more than once{also}; argparse would silently keep the last "
                    "value. Give it once"
                )
            seen[action.dest] = option

    def _refuse_repeated_keys(self, namespace: argparse.Namespace) -> None:
        """Options that hold a JSON object (``--lr_scheduler_kwargs '{"a": 1, "a": 2}'``) or a ``k=v,k=v`` list
        (``--optim_args``): transformers parses them with the last repeated key silently winning. Refuse."""
        import json

        for dest in _JSON_OPTIONS:
            value = getattr(namespace, dest, None)
            if isinstance(value, str) and value.lstrip().startswith("{"):

                def pairs(items: list[tuple[str, Any]], dest: str = dest) -> dict[str, Any]:
                    repeated = repeated_keys([k for k, _ in items])
                    if repeated:
                        raise ValueError(f"--{dest}: key(s) {', '.join(map(repr, repeated))} given more than once; "
                                         "the last would silently win. Give each key once")  # fmt: skip
                    return dict(items)

                try:
                    json.loads(value, object_pairs_hook=pairs)
                except json.JSONDecodeError as err:
                    raise ValueError(f"--{dest}: not a JSON object ({err})") from None
        optim_args = getattr(namespace, "optim_args", None)
        if isinstance(optim_args, str):
            repeated = repeated_keys(key_value_keys(optim_args))
            if repeated:
                raise ValueError(f"--optim_args: {', '.join(repeated)} given more than once; the last would silently "
                                 "win. Give each key once")  # fmt: skip

    def _options_in(self, args: Sequence[str]) -> Iterator[tuple[str, argparse.Action]]:
        """``(option string, action)`` of each option token of ``args`` (``--lr`` or ``--lr=1e-3``), up to ``--``."""
        for arg in args:
            if arg == "--":
                break
            option = arg.split("=", 1)[0]
            action = self._option_string_actions.get(option) if arg.startswith("--") else None
            if action is not None:
                yield option, action

    def _refuse_epochs_under_max_steps(
        self, namespace: argparse.Namespace, config: Mapping[str, Any], config_path: str | None, args: Sequence[str]
    ) -> None:
        """``max_steps > 0`` replaces ``num_train_epochs`` without a word. Layer-aware: a command-line
        ``--max_steps`` over a config file's ``num_train_epochs`` is an override (a shorter run) and fine; both in
        one place, or ``--num_train_epochs`` on the command line under a config file's ``max_steps``, would leave
        the epochs unapplied, and are refused."""
        if getattr(namespace, "max_steps", -1) <= 0:
            return
        cli = {action.dest for _, action in self._options_in(args)}
        places = {"the command line": cli, f"--config {config_path}": set(config)}
        epochs_at = [place for place, keys in places.items() if "num_train_epochs" in keys]
        steps_at = [place for place, keys in places.items() if "max_steps" in keys]
        problem = None
        for place in epochs_at:
            if place in steps_at:
                problem = f"{place} sets both num_train_epochs and max_steps={namespace.max_steps}"
            elif place == "the command line":
                problem = (
                    f"--num_train_epochs on the command line is under max_steps={namespace.max_steps} of {steps_at[0]}"
                )
        if problem:
            raise ValueError(
                f"{problem}, and max_steps > 0 replaces num_train_epochs, which would not apply: give one of them "
                "(--max_steps -1 trains by epochs)"
            )

    def parse_args_and_config(self, args: Sequence[str] | None = None) -> tuple[Any, ...]:
        """Parse ``args`` (default ``sys.argv[1:]``) after applying ``--config``; returns the dataclasses."""
        import sys

        args = list(sys.argv[1:] if args is None else args)
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--config", default=None)
        known, _ = pre.parse_known_args(args)
        given = [a for a in args if a == "--config" or a.startswith("--config=")]
        if len(given) > 1:
            raise ValueError("--config is given more than once: which file is meant? Merge them into one")
        self._refuse_repeated_options(args)
        config: dict[str, Any] = {}
        if known.config is not None:
            config = load_yaml_config(known.config)
            self.apply_config(config, source=f"--config {known.config}")
            aliases_used = {str(key) for key in config if key in self.example_aliases}
            config = self.example_keys(config, source=f"--config {known.config}")
        else:
            aliases_used = set()
        aliases_used |= {
            name for name in (option[2:].replace("-", "_") for option, _ in self._options_in(args))
            if name in self.example_aliases
        }  # fmt: skip
        namespace, remaining = self.parse_known_args(args)
        hf_examples.check_values(namespace, aliases_used)
        self._refuse_unknown_options(remaining)
        # What the user set, on the command line or in the config file (a value equal to the default included).
        given = {action.dest for _, action in self._options_in(args)} | set(config)
        self.given_options = frozenset(d for d in given if not str(d).startswith(hf_examples.HIDDEN_PREFIX))
        self._refuse_epochs_under_max_steps(namespace, config, known.config, args)
        self._refuse_repeated_keys(namespace)
        # TrainingArguments replaces eval_steps=0 by logging_steps without a word: refuse it while it is visible.
        if getattr(namespace, "eval_steps", None) == 0:
            raise ValueError("eval_steps must be > 0 (leave it unset to evaluate every logging_steps), got 0")
        outputs = self.parse_args_into_dataclasses(args=args, look_for_args_file=False)
        # The trailing namespace holds only `config`.
        return tuple(o for o in outputs if not isinstance(o, argparse.Namespace))
