"""Loading the raw splits (synthetic corpus, local files or a Hub dataset) and checking them before any training."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import TYPE_CHECKING, Any

from datasets import Dataset, DatasetDict

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from .arguments import DataArguments
    from .base import Task

__all__ = ["FILE_BUILDERS", "SPLITS", "check_columns_present", "check_rows", "diagnose_file", "load_raw_splits"]

logger = logging.getLogger("hf_tvd_loss.tasks")

SPLITS = ("train", "validation", "test")
# file extension -> datasets builder
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_json_rows(rows: Any, where: str) -> str | None:
    """The first problem among JSON rows: a row that is no object, a column whose kind changes between rows."""
    kinds: dict[str, tuple[str, int]] = {}
    for number, row in rows:
        if not isinstance(row, dict):
            return f"{where} {number} is {_json_kind(row)}, where every row must be an object {{column: value}}"
        for key, value in row.items():
            if value is None:
                continue
            kind = _json_kind(value)
            if key not in kinds:
                kinds[key] = (kind, number)
            elif kinds[key][0] != kind:
                first_kind, first = kinds[key]
                return f"{where} {number}: column {key!r} holds {kind} where {where} {first} holds {first_kind}"
    return None


class DuplicateKeyError(ValueError):
    """A JSON object that gives one key twice (every JSON reader keeps one of the values, silently)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKeyError(f"key {key!r} is given twice in one object (a JSON reader would keep one value)")
        seen[key] = value
    return seen


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicate_keys)


def diagnose_file(path: str) -> str | None:
    """Read a data file line by line and name the first line that breaks it (encoding, JSON, CSV fields).

    Used when ``datasets`` could not load a file (its errors name no line) and when a column has mixed types.
    Returns a message such as ``"line 22: not valid JSON (...)"``, or None when no such line is found.
    """
    import csv

    extension = os.path.splitext(path)[1].lower()
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    lines: list[str] = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            return f"line {number} is not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1})"
    if extension in (".jsonl", ".json"):
        text = "\n".join(lines)
        if extension == ".json" and text.lstrip()[:1] in ("[", "{"):
            try:
                whole = _loads(text)
            except DuplicateKeyError:
                whole = None  # found, with its line, line by line below (or by the whole-file pass's message)
            except ValueError:
                whole = None  # JSON lines in a .json file: checked line by line below
            else:
                if isinstance(whole, list):
                    return _check_json_rows(enumerate(whole, start=1), "row")
                return None
        parsed = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                parsed.append((number, _loads(line)))
            except DuplicateKeyError as err:
                return f"line {number}: {err}"
            except ValueError as err:
                return f"line {number} is not valid JSON ({getattr(err, 'msg', err)} at column {getattr(err, 'colno', '?')})"
        return _check_json_rows(parsed, "line")
    if extension == ".csv":
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None:
            return None
        try:
            for row in reader:
                if row and len(row) != len(header):
                    return f"line {reader.line_num} has {len(row)} fields where the header has {len(header)}"
        except csv.Error as err:
            return f"line {reader.line_num}: {err}"
    return None


def _check_utf8(path: str, option: str) -> None:
    """Refuse a text data file that is not UTF-8, naming the line (one streaming pass, bounded memory)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            nul = chunk.find(b"\x00")  # valid UTF-8, but never in a text file: a binary file given as text
            try:
                decoder.decode(chunk if nul < 0 else chunk[:nul])
            except UnicodeDecodeError as err:
                position = max(err.start, 0)
                text_before = chunk[:position]
                line += text_before.count(b"\n")
                column = position - (text_before.rfind(b"\n") + 1) + 1
                raise ValueError(
                    f"{option} {path}: line {line} is not UTF-8 text (byte {chunk[position]:#04x} at column {column})"
                ) from None
            if nul >= 0:
                before = chunk[:nul]
                where, column = line + before.count(b"\n"), nul - (before.rfind(b"\n") + 1) + 1
                raise ValueError(
                    f"{option} {path}: line {where} holds a NUL byte (column {column}): a binary file, not text; "
                    "give a UTF-8 text file"
                )
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError(
                f"{option} {path}: line {line} is not UTF-8 text (the file ends inside a character)"
            ) from None


def _check_json_keys(path: str, option: str) -> None:
    """A JSON document (``[...]`` or ``{...}`` over the whole file, read by Python's JSON reader, which keeps the
    last of two values silently) with a key given twice is refused, naming the line. JSON lines are left to
    pyarrow, which refuses such a line itself (and :func:`diagnose_file` names it)."""
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(1 << 16).lstrip()
    if not head.startswith(("[", "{")):
        return
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    try:
        _loads(text)
    except DuplicateKeyError:
        problem = next((f"line {n}: {_duplicate_in(line)}" for n, line in enumerate(text.splitlines(), start=1)
                        if _duplicate_in(line)), None)  # fmt: skip
        raise ValueError(f"{option} {path}: {problem or 'an object gives one key twice'}") from None
    except ValueError:
        return  # not one JSON document (JSON lines in a .json file): pyarrow reads and checks it


def _duplicate_in(line: str) -> str | None:
    """The duplicate-key message for the objects of one line of a JSON document, if that line holds one whole."""
    text = line.strip().rstrip(",")
    try:
        _loads(text)
    except DuplicateKeyError as err:
        return str(err)
    except ValueError:
        return None
    return None


def _csv_options(path: str, option: str, split: str) -> dict[str, Any]:
    """CSV cells are text: every column is read as a string and no cell text means "missing" (pandas would read
    ``None``, ``NA``, ``null``, ``NaN``, ``n/a`` ... as missing values, and digits as numbers); only an empty cell is
    empty. A header naming a column twice is refused (pandas would rename the second one)."""
    import csv

    from datasets import Features, Value

    with open(path, encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader(f), [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(f"the {split} split ({option} {path}): the CSV header names the column(s) {repeated} more "
                         "than once; rename them so that each column has one name")  # fmt: skip
    if not header:
        return {"keep_default_na": False}
    return {"keep_default_na": False, "features": Features({name: Value("string") for name in header})}


def _load_file(path: str, option: str, split: str, cache_dir: str | None) -> Dataset:
    from datasets import load_dataset

    builder = FILE_BUILDERS[os.path.splitext(path)[1].lower()]
    if builder != "parquet":
        _check_utf8(path, option)  # pyarrow's JSON reader keeps invalid bytes, which break only when read later
    options: dict[str, Any] = {}
    if builder == "csv":
        options = _csv_options(path, option, split)
    if builder == "json":
        _check_json_keys(path, option)
        # One chunk for the whole file (up to 1 GiB): datasets casts every later chunk to the columns of the first,
        # so a valid file whose field first appears past the first chunk (10 MB) failed with a cast error.
        options = {"chunksize": max(os.path.getsize(path) + 1, 10 << 20)} if os.path.getsize(path) < 1 << 30 else {}
    try:
        return load_dataset(builder, data_files={"data": path}, split="data", cache_dir=cache_dir, **options)
    except Exception as err:  # datasets raises many types for malformed files
        if "corresponds to no data" in str(err):
            raise ValueError(f"the {split} split ({option} {path}) is empty: the file has no rows") from err
        problem = diagnose_file(path) if builder != "parquet" else None
        if problem:
            raise ValueError(f"{option} {path}: {problem}") from None
        cause = err.__cause__ or err.__context__
        detail = f"{type(err).__name__}: {err}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
        detail = " ".join(detail.split())[:300]
        raise ValueError(f"{option} {path}: could not be read as {builder}: {detail}") from err


def _row_list(rows: list[int], total: int) -> str:
    shown = ", ".join(str(r) for r in rows[:5])
    return f"rows {shown}{', ...' if total > 5 else ''}" if total > 1 else f"row {shown}"


TOOLS_COLUMN = "tools"  # as TRL's SFTTrainer: tool definitions for the chat template, a JSON text or a list of dicts


def is_chat_message(message: Any) -> bool:
    """``{'role': text, 'content': text}``, or an assistant turn that calls tools (``tool_calls`` with content null)."""
    if not (isinstance(message, dict) and isinstance(message.get("role"), str)):
        return False
    if isinstance(message.get("content"), str):
        return True
    calls = message.get("tool_calls")
    return (
        message.get("content") is None and message["role"] == "assistant" and isinstance(calls, list) and bool(calls)
    )


def without_nulls(value: Any) -> Any:
    """``value`` with the null entries of its dicts removed, recursively: a dataset read from JSON lines gives every
    dict of a column the union of the keys seen in it, filling the others with null, which a chat template would
    render (``tool_calls: null`` on a plain turn, ``"enum": null`` in a tool's parameters)."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def parse_tools(value: Any) -> list[dict[str, Any]] | None:
    """A row's tool definitions: None, a JSON text of a list of dicts, or a list of dicts. Raises ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"is not valid JSON ({error.msg} at character {error.pos})") from None
    if not (isinstance(value, list) and all(isinstance(tool, dict) for tool in value)):
        raise ValueError(f"holds {str(value)[:80]!r} where a list of tool definitions (JSON objects) is expected")
    return without_nulls(value)


def check_rows(
    task: Task[Any, Any], dataset: Dataset, split: str, origin: str, data_args: DataArguments
) -> dict[str, Any] | None:
    """Count the rows the task will drop (text null, absent or, for pairs, empty); refuse too many.

    Returns a report (``{"dropped": n, "rows": total, "reasons": {...}}``) when rows are dropped, None otherwise.
    A value of the wrong kind (e.g. a text where ``{language: text}`` dicts are expected) is an error naming the
    row. Rows are numbered from 1 in the order of the file.
    """
    fields = task.text_fields(data_args, list(dataset.column_names), features=dataset.features)
    chats = task.message_fields(data_args, list(dataset.column_names), features=dataset.features)
    if not fields and not chats:
        return None
    seen: dict[tuple[str, str | None], str] = {}
    for column, key, option in fields:
        if (column, key) in seen:
            what = f"column {column!r}" if key is None else f"the {key!r} entry of column {column!r}"
            raise ValueError(
                f"--{seen[(column, key)]} and --{option} both name {what}: the input would be its own target"
            )
        seen[(column, key)] = option
    columns = sorted({column for column, _, _ in fields} | {column for column, _, _ in chats})
    tools = bool(chats) and TOOLS_COLUMN in dataset.column_names  # rendered with chat messages only
    if tools and TOOLS_COLUMN not in columns:
        columns.append(TOOLS_COLUMN)
    where = f"the {split} data ({origin})"
    reasons: dict[str, list[int]] = {}
    index = 0
    for batch in dataset.select_columns(columns).iter(batch_size=10_000):
        size = len(batch[columns[0]])
        for offset in range(size):
            row = index + offset + 1
            found = [_text_problem(task, batch[column][offset], column, key, option, f"{where}: row {row}")
                     for column, key, option in fields]  # fmt: skip
            if tools:
                try:
                    parse_tools(batch[TOOLS_COLUMN][offset])
                except ValueError as error:
                    raise ValueError(f"{where}: row {row}: column {TOOLS_COLUMN!r} {error}") from None
            found += [_chat_problem(batch[column][offset], column, option, needs_assistant, f"{where}: row {row}")
                      for column, option, needs_assistant in chats]  # fmt: skip
            for reason in found:
                if reason is not None:
                    reasons.setdefault(reason, []).append(row)
        index += size
    return _drop_report(reasons, len(dataset), where, data_args.max_dropped_fraction)


def _text_problem(
    task: Task[Any, Any], value: Any, column: str, key: str | None, option: str, where: str
) -> str | None:
    """Why the task would drop this text field (null, missing, empty), or None; a value of the wrong kind is an
    error."""
    label = f"column {column!r}" if key is None else f"the {key!r} entry of column {column!r}"
    if key is not None and value is not None:
        if not isinstance(value, dict):
            raise ValueError(
                f"{where}: column {column!r} holds {_json_kind(value)} where {{language: text}} dicts are expected"
            )
        value = value.get(key)
    if value is None:
        return f"{label} (--{option}) is null or missing"
    if not isinstance(value, str):
        raise ValueError(f"{where}: {label} (--{option}) holds {_json_kind(value)}, not a text")
    if task.drops_text(option, value):
        return f"{label} (--{option}) is empty"
    return None


def _chat_problem(value: Any, column: str, option: str, needs_assistant: bool, where: str) -> str | None:
    """Why the task would drop this chat-messages field (null, empty, no assistant turn), or None; a value that
    is not a list of messages is an error."""
    if value is None or (isinstance(value, list) and not value):
        return f"column {column!r} (--{option}) is null or empty"
    if not (isinstance(value, list) and all(is_chat_message(m) for m in value)):
        raise ValueError(
            f"{where}: column {column!r} (--{option}) holds {str(value)[:80]!r} where a list of "
            "{'role': text, 'content': text} messages (or assistant turns with 'tool_calls' and content null) is "
            "expected"
        )
    if needs_assistant and not any(m["role"] == "assistant" for m in value):
        roles = sorted({m["role"] for m in value})
        return f"column {column!r} (--{option}) has no assistant turn (roles {', '.join(roles)})"
    return None


def _drop_report(reasons: dict[str, list[int]], total: int, where: str, max_fraction: float) -> dict[str, Any] | None:
    """The report of the rows to drop, or None; refuses a split with no usable row or above ``max_fraction``."""
    dropped = {row for rows in reasons.values() for row in rows}
    if not dropped:
        return None
    detail = "; ".join(f"{reason} in {len(rows)} ({_row_list(rows, len(rows))})" for reason, rows in reasons.items())
    fraction = len(dropped) / total
    summary = f"{len(dropped)} of {total} rows ({100 * fraction:.1f}%)"
    if len(dropped) == total:
        raise ValueError(f"{where} has no usable row: {detail}")
    if fraction > max_fraction:
        raise ValueError(
            f"{where}: {summary} would be dropped, more than max_dropped_fraction="
            f"{max_fraction:g}: {detail}. Fix the data, or pass --max_dropped_fraction to accept"
        )
    logger.warning("%s: dropping %s: %s", where, summary, detail)
    return {"dropped": len(dropped), "rows": total, "reasons": {r: len(v) for r, v in reasons.items()}}


FILE_OPTIONS = ("train_file", "validation_file", "test_file")  # the data file of each split, in SPLITS order


def evaluates(training_args: Any) -> bool:
    """Whether the run evaluates, so needs a validation split: ``do_eval`` or an evaluation strategy."""
    return bool(training_args.do_eval or training_args.eval_strategy != "no")


def load_raw_splits(
    task: Task[Any, Any],
    data_args: DataArguments,
    training_args: TrainingArguments,
    cache_dir: str | None,
    dropped: dict[str, Any] | None = None,
) -> DatasetDict:
    """The splits the run needs (``train`` / ``validation`` / ``test``), capped, with their columns and rows checked.

    Rows the task would drop are counted per split (:func:`check_rows`) and reported in ``dropped`` when given.
    """
    needed = {
        "train": training_args.do_train,
        "validation": evaluates(training_args),
        "test": training_args.do_predict,
    }
    source = data_args.data_source()
    splits, origin = _read_splits(task, data_args, training_args.seed, needed, cache_dir)
    if needed["train"] and "train" not in splits:
        raise ValueError(f"do_train is set but the data ({source}) has no train split")
    for split in SPLITS:
        if split in splits and len(splits[split]) == 0:
            raise ValueError(f"the {split} split ({origin[split]}) is empty")
    paths = {split: getattr(data_args, option) for split, option in zip(SPLITS, FILE_OPTIONS, strict=True)}
    for split, dataset in splits.items():
        try:
            task.check_columns(dataset, split, origin[split], data_args)
        except ValueError as err:
            problem = diagnose_file(paths[split]) if source == "files" and paths.get(split) else None
            raise ValueError(f"{err}: {problem}" if problem else str(err)) from None
        report = check_rows(task, dataset, split, origin[split], data_args)
        if report is not None and dropped is not None:
            dropped[split] = {"origin": origin[split], **report}
    if needed["validation"] and "validation" not in splits:
        _hold_out_validation(splits, origin, data_args.validation_split_percentage, training_args.seed)
    if needed["test"] and "test" not in splits:
        if "validation" not in splits:
            raise ValueError("do_predict needs test_file or validation_file")
        logger.info("no test split: predicting on the validation split")
        splits["test"], origin["test"] = splits["validation"], origin["validation"] + " (no test split given)"

    caps = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
            "test": data_args.max_predict_samples}  # fmt: skip
    for split, dataset in splits.items():
        if caps[split] is not None and caps[split] < len(dataset):
            splits[split] = dataset.select(range(caps[split]))
        if len(splits[split]) == 0:
            raise ValueError(f"the {split} split ({origin[split]}) is empty")
    return DatasetDict(splits)


def _read_splits(
    task: Task[Any, Any], data_args: DataArguments, seed: int, needed: dict[str, bool], cache_dir: str | None
) -> tuple[dict[str, Dataset], dict[str, str]]:
    """The needed splits as the source gives them (synthetic, files or a Hub dataset), and where each came from."""
    source = data_args.data_source()
    splits: dict[str, Dataset] = {}
    origin: dict[str, str] = {}
    if source == "synthetic":
        sizes = {"train": data_args.synthetic_train_examples, "validation": data_args.synthetic_eval_examples,
                 "test": data_args.synthetic_eval_examples}  # fmt: skip
        for index, split in enumerate(SPLITS):
            if needed[split]:
                # A different seed per split: the three splits are disjoint samples of the same generator.
                rows = task.synthetic_rows(split, sizes[split], seed=seed + 1000 * index)
                splits[split], origin[split] = Dataset.from_list(rows), f"synthetic {task.name} corpus"
        return splits, origin
    if source == "files":
        for split, option in zip(SPLITS, FILE_OPTIONS, strict=True):
            path = getattr(data_args, option)
            if path and needed[split]:
                splits[split], origin[split] = _load_file(path, option, split, cache_dir), f"{option} {path}"
        return splits, origin
    from datasets import load_dataset

    name = data_args.dataset_name
    try:
        hub = load_dataset(name, data_args.dataset_config_name, cache_dir=cache_dir)
    except Exception as err:  # offline, unknown name or config: many exception types
        raise ValueError(
            f"dataset_name {name!r} (config {data_args.dataset_config_name!r}) could not be "
            f"loaded: {type(err).__name__}: {err}"
        ) from err
    for split in SPLITS:
        if split in hub and needed[split]:
            splits[split], origin[split] = hub[split], f"dataset {name} split {split}"
    if "validation" not in hub and "valid" in hub and needed["validation"]:
        splits["validation"], origin["validation"] = hub["valid"], f"dataset {name} split valid"
    return splits, origin


def _hold_out_validation(splits: dict[str, Dataset], origin: dict[str, str], percentage: float, seed: int) -> None:
    """Split ``validation_split_percentage`` % of the train split off as the validation split (in place)."""
    if "train" not in splits:
        raise ValueError("evaluation needs validation_file (or a train split to hold some out)")
    rows = len(splits["train"])
    held = math.ceil(rows * percentage / 100)  # as datasets' train_test_split
    if held < 1 or rows - held < 1:
        raise ValueError(
            f"validation_split_percentage={percentage} of {rows} training "
            f"row{'s' if rows != 1 else ''} ({origin['train']}) leaves {'no validation' if held < 1 else 'no training'} row: give a "
            "validation_file, or change validation_split_percentage"
        )
    held_out = splits["train"].train_test_split(test_size=percentage / 100, seed=seed)
    splits["train"], splits["validation"] = held_out["train"], held_out["test"]
    origin["validation"] = f"{percentage}% of {origin['train']}"


def check_columns_present(dataset: Dataset, split: str, origin: str, columns: dict[str, str]) -> None:
    """``columns`` maps each required column to the option that names it."""
    for column, option in columns.items():
        if column not in dataset.column_names:
            raise ValueError(
                f"the {split} data ({origin}) has no column {column!r} (set by --{option}); its columns are "
                f"{dataset.column_names}"
            )
        feature = dataset.features.get(column)
        dtype = getattr(feature, "dtype", type(feature).__name__)
        if dtype not in ("string", "large_string"):
            raise ValueError(
                f"the {split} data ({origin}): column {column!r} (set by --{option}) must hold text, but holds "
                f"{dtype} values"
            )
