"""transformers' example scripts' option names (hf_tvd_loss.tasks.hf_examples): the command lines their READMEs
document (run_summarization.py, run_translation.py, run_clm.py, run_classification.py), adapted to local files and
a tiny local model, parse and prepare here with the same meaning; every other option of theirs is refused, naming
this project's equivalent. prepare() only: nothing is trained or written."""

from __future__ import annotations

import json

import pytest

from hf_tvd_loss.tasks import get_task
from hf_tvd_loss.tasks.hf_examples import EXAMPLE_OPTIONS
from hf_tvd_loss.tasks.modeling import train_tokenizer
from hf_tvd_loss.tasks.run import prepare

TASK_OF_SCRIPT = {"run_summarization": "summarization", "run_translation": "translation",
                  "run_clm": "language_modeling", "run_classification": "classification"}  # fmt: skip

WORDS = [
    "the",
    "a",
    "small",
    "green",
    "tree",
    "house",
    "river",
    "stone",
    "bird",
    "sings",
    "over",
    "under",
    "quiet",
    "morning",
    "light",
]


def _sentence(i: int, n: int = 8) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny BART and a tiny GPT-2, each with a tokenizer trained here (no downloads)."""
    from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("models")
    texts = [_sentence(i) for i in range(60)]
    bart = BartForConditionalGeneration(
        BartConfig(vocab_size=120, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                   decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=128)
    )  # fmt: skip
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=120, n_embd=16, n_layer=1, n_head=2, n_positions=256,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2))  # fmt: skip
    out = {}
    for name, model in (("bart", bart), ("gpt2", gpt2)):
        train_tokenizer(iter(texts), vocab_size=120, model_max_length=128).save_pretrained(root / name)
        model.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def test_run_summarization_readme_own_files(models, tmp_path):
    rows = [{"text": _sentence(i, 12), "summary": _sentence(i, 4)} for i in range(8)]
    train, val = _jsonl(tmp_path / "train.json", rows), _jsonl(tmp_path / "val.json", rows[:4])
    prepared = prepare(get_task("summarization"), [
        "--model_name_or_path", models["bart"], "--do_train", "--do_eval",
        "--train_file", train, "--validation_file", val, "--text_column", "text", "--summary_column", "summary",
        "--source_prefix", "summarize: ", "--output_dir", str(tmp_path / "out"), "--overwrite_output_dir",
        "--per_device_train_batch_size=4", "--per_device_eval_batch_size=4", "--predict_with_generate",
        # their DataTrainingArguments, same meaning here
        "--num_beams", "3", "--max_target_length", "20", "--val_max_target_length", "20", "--pad_to_max_length",
        "false", "--ignore_pad_token_for_loss", "--use_fast_tokenizer",
    ])  # fmt: skip
    args, data = prepared.training_args, prepared.data_args
    assert (args.do_train, args.do_eval, args.predict_with_generate) == (True, True, True)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (4, 4)
    assert args.generation_num_beams == 3 and args.generation_max_length == 20 and data.max_target_length == 20
    assert (data.source_prefix, data.text_column, data.summary_column) == ("summarize: ", "text", "summary")
    assert data.overwrite_output_dir and len(prepared.raw["train"]) == 8 and len(prepared.raw["validation"]) == 4
    assert {"generation_num_beams", "generation_max_length"} <= prepared.defaults.given
    assert not any(name.startswith("hf_example") for name in prepared.defaults.given)


def test_run_translation_readme_own_files(models, tmp_path):
    rows = [{"translation": {"en": _sentence(i), "ro": _sentence(i + 3)}} for i in range(8)]
    train, val = _jsonl(tmp_path / "train.json", rows), _jsonl(tmp_path / "val.json", rows[:4])
    prepared = prepare(get_task("translation"), [
        "--model_name_or_path", models["bart"], "--do_train", "--do_eval",
        "--source_lang", "en", "--target_lang", "ro", "--source_prefix", "translate English to Romanian: ",
        "--train_file", train, "--validation_file", val, "--output_dir", str(tmp_path / "out"),
        "--per_device_train_batch_size=4", "--per_device_eval_batch_size=4", "--overwrite_output_dir",
        "--predict_with_generate", "--num_beams", "2",
    ])  # fmt: skip
    data = prepared.data_args
    assert (data.source_lang, data.target_lang, data.source_prefix) == ("en", "ro", "translate English to Romanian: ")
    assert prepared.training_args.generation_num_beams == 2 and prepared.training_args.predict_with_generate
    assert len(prepared.raw["train"]) == 8


def test_run_clm_readme_own_files_and_from_scratch(models, tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("\n".join(_sentence(i, 20) for i in range(30)) + "\n")
    val = tmp_path / "val.txt"
    val.write_text("\n".join(_sentence(i, 20) for i in range(5)) + "\n")
    task = get_task("language_modeling")
    common = ["--train_file", str(train), "--validation_file", str(val), "--per_device_train_batch_size", "8",
              "--per_device_eval_batch_size", "8", "--do_train", "--do_eval", "--block_size", "32"]  # fmt: skip
    prepared = prepare(task, ["--model_name_or_path", models["gpt2"], *common, "--output_dir", str(tmp_path / "a"),
                              "--torch_dtype", "auto"])  # fmt: skip
    assert prepared.model is not None and prepared.data_args.block_size == 32
    assert prepared.training_args.per_device_train_batch_size == 8
    scratch = prepare(task, ["--model_type", "gpt2", "--tokenizer_name", models["gpt2"],
                             "--config_overrides", "n_embd=16,n_head=2,n_layer=1,n_positions=64", *common,
                             "--output_dir", str(tmp_path / "b")])  # fmt: skip
    assert scratch.model is None and scratch.config.n_embd == 16 and scratch.config.n_layer == 1


def test_run_classification_readme_own_files(models, tmp_path):
    rows = [{"text": _sentence(i), "label": ["world", "sports", "business"][i % 3]} for i in range(12)]
    train, val = _jsonl(tmp_path / "train.json", rows), _jsonl(tmp_path / "val.json", rows[:6])
    prepared = prepare(get_task("classification"), [
        "--model_name_or_path", models["gpt2"], "--train_file", train, "--validation_file", val,
        "--shuffle_train_dataset", "--metric_name", "accuracy", "--text_column_name", "text",
        "--text_column_delimiter", "\\n", "--label_column_name", "label", "--do_train", "--do_eval",
        "--max_seq_length", "64", "--per_device_train_batch_size", "32", "--learning_rate", "2e-5",
        "--num_train_epochs", "1", "--output_dir", str(tmp_path / "out"),
    ])  # fmt: skip
    data, args = prepared.data_args, prepared.training_args
    assert (data.text_column_names, data.label_column_name, data.max_seq_length) == ("text", "label", 64)
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (2e-5, 1, 32)
    assert prepared.config.num_labels == 3


def _value(entry, refused: bool) -> list[str]:
    """Command-line tokens giving ``entry`` a value that is refused."""
    special = {"val_max_target_length": ["999"], "metric_name": ["f1"], "dtype": ["bfloat16"],
               "torch_dtype": ["float16"], "use_fast_tokenizer": ["false"], "ignore_pad_token_for_loss": ["false"],
               "text_column_delimiter": ["|", "--text_column_names", "a,b"],
               "shuffle_train_dataset": ["true", "--max_train_samples", "5"],
               "shuffle_seed": ["3", "--max_train_samples", "5"]}  # fmt: skip
    if entry.name in special:
        return special[entry.name]
    return ["true"] if entry.flag else ["x"]


REFUSED = [(entry, script) for entry in EXAMPLE_OPTIONS if entry.kind() != "alias" or entry.check
           for script in entry.scripts[:1]]  # fmt: skip


@pytest.mark.parametrize(("entry", "script"), REFUSED, ids=[e.name for e, _ in REFUSED])
def test_other_options_are_refused_naming_the_equivalent(entry, script):
    parser = get_task(TASK_OF_SCRIPT[script]).build_parser()
    with pytest.raises(ValueError) as err:
        parser.parse_args_and_config(["--" + entry.name, *_value(entry, True), "--output_dir", "o"])
    message = str(err.value)
    assert message.startswith(f"--{entry.name} (an option of transformers' ") and message.count(" is refused: ") == 1
    reason = message.split(" is refused: ", 1)[1]
    assert len(reason) > 30  # says why, and what to use here
    if entry.name == "val_max_target_length":
        assert "--max_target_length" in reason and "--generation_max_length" in reason


def test_alias_given_with_its_target_is_refused_on_the_command_line_and_in_yaml(tmp_path):
    parser = get_task("summarization").build_parser()
    with pytest.raises(ValueError, match="--num_beams and --generation_num_beams set the same option"):
        parser.parse_args_and_config(["--num_beams", "3", "--generation_num_beams", "2"])
    with pytest.raises(ValueError, match="--num-beams and --generation_num_beams set the same option"):
        parser.parse_args_and_config(["--num-beams", "3", "--generation_num_beams", "2"])
    config = tmp_path / "run.yaml"
    config.write_text("num_beams: 3\ngeneration_num_beams: 2\n")
    with pytest.raises(ValueError, match="num_beams and generation_num_beams set the same option"):
        get_task("summarization").build_parser().parse_args_and_config(["--config", str(config)])


def test_aliases_and_refusals_as_yaml_keys(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("num_beams: 3\ndataset_config: x\noutput_dir: o\n")
    parser = get_task("summarization").build_parser()
    parsed = parser.parse_args_and_config(["--config", str(config)])
    assert parsed[3].generation_num_beams == 3 and parsed[1].dataset_config_name == "x"
    assert {"generation_num_beams", "dataset_config_name"} <= parser.given_options
    # the command line overrides a YAML alias (another layer), through either name
    parsed = (
        get_task("summarization")
        .build_parser()
        .parse_args_and_config(["--config", str(config), "--generation_num_beams", "4"])
    )
    assert parsed[3].generation_num_beams == 4
    config.write_text("streaming: true\n")
    with pytest.raises(ValueError, match=r"^--streaming \(an option of transformers' run_clm.py\) is refused"):
        get_task("language_modeling").build_parser().parse_args_and_config(["--config", str(config)])
    config.write_text("pad_to_max_length: false\noutput_dir: o\n")  # their default: accepted
    get_task("summarization").build_parser().parse_args_and_config(["--config", str(config)])


def test_unknown_options_keep_their_suggestion_and_help_names_the_aliases(capsys):
    parser = get_task("summarization").build_parser()
    with pytest.raises(ValueError, match=r"--learning_rat \(did you mean --learning_rate\?\)"):
        parser.parse_args_and_config(["--learning_rat", "1e-3"])
    # an alias of another task's option is not an option here: unknown, as before
    with pytest.raises(ValueError, match="unknown option"):
        get_task("classification").build_parser().parse_args_and_config(["--num_beams", "2"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--num_beams (= --generation_num_beams)" in text and "transformers' example scripts" in text
    assert "--num_beams GENERATION_NUM_BEAMS" in text  # beside --generation_num_beams, with its help
    assert "--streaming" not in text.split("transformers' example scripts")[0]  # refusals are not listed as options
