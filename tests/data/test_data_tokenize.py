import pytest

from alignlab.config import DataConfig
from alignlab.data.report import DataReport
from alignlab.data.schema import DataError, Record, parse_examples
from alignlab.data.templates import (
    DEFAULT_CHAT_TEMPLATE,
    chat_segments,
    ensure_chat_template,
    render_messages,
    render_prompt,
)
from alignlab.data.tokenize import build_sft_dataset, tokenize_segments, tokenize_sft
from alignlab.ops import IGNORE_INDEX

SYS = {"role": "system", "content": "Be brief."}
U1 = {"role": "user", "content": "What is 2 + 2?"}
A1 = {"role": "assistant", "content": "4."}
U2 = {"role": "user", "content": "And 3 + 3?"}
A2 = {"role": "assistant", "content": "6."}


def tokenize(tokenizer, items, max_length=0, truncation="keep_start", completion_only_loss=True,
             on_bad_example="error", report=None):  # fmt: skip
    records = [Record(data, "data/train.jsonl", i) for i, data in enumerate(items, 1)]
    report = report if report is not None else DataReport()
    fmt, examples = parse_examples(records, "auto", on_bad_example, report)
    rows = tokenize_sft(
        examples,
        fmt,
        tokenizer,
        max_length,
        truncation,
        completion_only_loss,
        on_bad_example,
        report,
    )
    return rows, report


def trained_spans(tokenizer, row):
    """Decoded runs of consecutive trained tokens."""
    spans, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_default_template_is_chatml(tokenizer):
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    text = render_messages(tokenizer, [SYS, U1, A1])
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n4.<|im_end|>\n"
    )
    assert render_prompt(tokenizer, [U1]) == (
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(tokenizer, "The sky is") == "The sky is"


def test_missing_chat_template_falls_back_to_chatml(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "chat_template", None)
    assert render_messages(tokenizer, [U1, A1]).startswith("<|im_start|>user\n")
    assert tokenizer.chat_template is None  # rendering does not modify the tokenizer
    ensure_chat_template(tokenizer)
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    custom = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    monkeypatch.setattr(tokenizer, "chat_template", custom)
    ensure_chat_template(tokenizer)
    assert tokenizer.chat_template == custom  # an existing template is kept


def test_conversational_trains_every_assistant_turn(tokenizer):
    [row], report = tokenize(tokenizer, [{"messages": [SYS, U1, A1, U2, A2]}])
    assert trained_spans(tokenizer, row) == ["4.<|im_end|>", "6.<|im_end|>"]
    assert tokenizer.decode(row["input_ids"]) == render_messages(tokenizer, [SYS, U1, A1, U2, A2])
    assert len(row["labels"]) == len(row["input_ids"])
    assert report.summary() == "read 1 records: 1 used"


def test_trailing_user_turn_is_not_trained(tokenizer):
    [row], _ = tokenize(tokenizer, [{"messages": [U1, A1, U2]}])
    assert trained_spans(tokenizer, row) == ["4.<|im_end|>"]
    assert tokenizer.decode(row["input_ids"]).endswith("And 3 + 3?<|im_end|>\n")


def test_conversational_prompt_completion_trains_only_the_completion(tokenizer):
    [row], _ = tokenize(tokenizer, [{"prompt": [SYS, U1, A1, U2], "completion": [A2]}])
    assert trained_spans(tokenizer, row) == ["6.<|im_end|>"]
    assert tokenizer.decode(row["input_ids"]) == render_messages(tokenizer, [SYS, U1, A1, U2, A2])


def test_prompt_completion_strings(tokenizer):
    [row], _ = tokenize(tokenizer, [{"prompt": "The sky is", "completion": " blue."}])
    assert tokenizer.decode(row["input_ids"]) == "The sky is blue.<|endoftext|>"
    assert trained_spans(tokenizer, row) == [" blue.<|endoftext|>"]
    assert row["input_ids"][-1] == tokenizer.eos_token_id


def test_eos_not_doubled(tokenizer):
    [row], _ = tokenize(tokenizer, [{"prompt": "The sky is", "completion": " blue.<|endoftext|>"}])
    assert tokenizer.decode(row["input_ids"]) == "The sky is blue.<|endoftext|>"


def test_language_modeling_trains_everything_plus_eos(tokenizer):
    [row], _ = tokenize(tokenizer, [{"text": "The sky is blue."}])
    assert trained_spans(tokenizer, row) == ["The sky is blue.<|endoftext|>"]


def test_completion_only_loss_off(tokenizer, bos_tokenizer):
    [row], _ = tokenize(
        tokenizer, [{"prompt": "The sky is", "completion": " blue."}], completion_only_loss=False
    )
    assert trained_spans(tokenizer, row) == ["The sky is blue.<|endoftext|>"]
    [row], _ = tokenize(bos_tokenizer, [{"messages": [U1, A1]}], completion_only_loss=False)
    assert row["labels"][0] == IGNORE_INDEX  # BOS
    assert trained_spans(bos_tokenizer, row) == [render_messages(bos_tokenizer, [U1, A1])]


def test_bos_added_once(bos_tokenizer, monkeypatch):
    bos = bos_tokenizer.bos_token_id
    [row], _ = tokenize(bos_tokenizer, [{"prompt": "The sky is", "completion": " blue."}])
    assert row["input_ids"][0] == bos and row["labels"][0] == IGNORE_INDEX
    assert row["input_ids"].count(bos) == 1
    assert trained_spans(bos_tokenizer, row) == [" blue.<|endoftext|>"]
    # a template that writes the BOS itself: not added a second time
    monkeypatch.setattr(bos_tokenizer, "chat_template", "{{ bos_token }}" + DEFAULT_CHAT_TEMPLATE)
    [row], _ = tokenize(bos_tokenizer, [{"messages": [U1, A1]}])
    assert row["input_ids"][0] == bos and row["input_ids"].count(bos) == 1
    assert trained_spans(bos_tokenizer, row) == ["4.<|im_end|>"]


def test_no_bos_for_tokenizer_without_one(tokenizer):
    [row], _ = tokenize(tokenizer, [{"messages": [U1, A1]}])
    assert tokenizer.decode(row["input_ids"][:1]) == "<|im_start|>"


# a Qwen3-like template: only the last assistant turn carries an (empty) think block, so
# rendering [U1, A1] alone is not a prefix of rendering [U1, A1, U2, A2]
THINK_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['role'] == 'assistant' and loop.last %}{{ '<think></think>' }}{% endif %}"
    "{{ m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_template_that_is_not_prefix_consistent(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "chat_template", THINK_TEMPLATE)
    messages = [U1, A1, U2, A2]
    segments = chat_segments(tokenizer, messages)
    assert "".join(text for text, _ in segments) == render_messages(tokenizer, messages)
    assert [text for text, trained in segments if trained] == [
        "4.<|im_end|>",
        "<think></think>6.<|im_end|>",
    ]
    [row], _ = tokenize(tokenizer, [{"messages": messages}])
    assert trained_spans(tokenizer, row) == ["4.<|im_end|>", "<think></think>6.<|im_end|>"]


def test_chat_template_error_names_the_record(tokenizer, monkeypatch):
    template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    monkeypatch.setattr(tokenizer, "chat_template", template)
    items = [{"messages": [U1, A1]}, {"messages": [SYS, U1, A1]}]
    with pytest.raises(DataError, match=r"data/train.jsonl:2: field 'messages': the chat template "
                       r"failed: .*System role not supported"):  # fmt: skip
        tokenize(tokenizer, items)
    rows, report = tokenize(tokenizer, items, on_bad_example="skip")
    assert len(rows) == 1
    assert report.summary() == "read 2 records: 1 used, 1 skipped (1 chat template error)"


def test_tokenize_segments(tokenizer, bos_tokenizer):
    ids, labels = tokenize_segments(tokenizer, [("Q: hi", False), ("", True), (" A: yo", True)])
    assert tokenizer.decode(ids) == "Q: hi A: yo"
    assert tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]) == " A: yo"
    ids, labels = tokenize_segments(bos_tokenizer, [("Q", False), (" A", True)], append_eos=True)
    assert ids[0] == bos_tokenizer.bos_token_id and labels[0] == IGNORE_INDEX
    assert ids[-1] == labels[-1] == bos_tokenizer.eos_token_id
    ids, _ = tokenize_segments(bos_tokenizer, [("Q", False)], add_bos=False)
    assert bos_tokenizer.bos_token_id not in ids


# --- truncation ---

LONG = {"prompt": "Question: what color is the sky?", "completion": " " + "It is blue. " * 10}


def test_truncation_keep_start(tokenizer):
    [full], _ = tokenize(tokenizer, [LONG])
    rows, report = tokenize(tokenizer, [LONG, {"prompt": "a", "completion": " b"}], max_length=20)
    assert rows[0]["input_ids"] == full["input_ids"][:20]
    assert rows[0]["labels"] == full["labels"][:20]
    assert len(rows[1]["input_ids"]) < 20
    assert report.truncated == 1
    assert report.summary() == "read 2 records: 2 used, 1 truncated (keep_start)"


def test_truncation_keep_end(tokenizer, bos_tokenizer):
    [full], _ = tokenize(tokenizer, [LONG])
    [row], report = tokenize(tokenizer, [LONG], max_length=20, truncation="keep_end")
    assert row["input_ids"] == full["input_ids"][-20:]
    assert row["labels"] == full["labels"][-20:]
    assert report.summary() == "read 1 records: 1 used, 1 truncated (keep_end)"
    # the prompt's tail is kept when the completion fits; a leading BOS survives
    long_prompt = {"prompt": "Tell me. " * 20 + "Color?", "completion": " Blue."}
    [full], _ = tokenize(bos_tokenizer, [long_prompt])
    [row], _ = tokenize(bos_tokenizer, [long_prompt], max_length=12, truncation="keep_end")
    assert row["input_ids"] == full["input_ids"][:1] + full["input_ids"][-11:]
    assert trained_spans(bos_tokenizer, row) == [" Blue.<|endoftext|>"]
    assert bos_tokenizer.decode(row["input_ids"]).startswith("<s>")


def test_truncation_skip(tokenizer):
    rows, report = tokenize(
        tokenizer, [LONG, {"prompt": "a", "completion": " b"}], max_length=20, truncation="skip"
    )
    assert len(rows) == 1 and report.truncated == 0
    assert report.skipped == {"longer than max_length=20": 1}
    assert report.summary() == "read 2 records: 1 used, 1 skipped (1 longer than max_length=20)"
    assert report.skipped_at["longer than max_length=20"] == ["data/train.jsonl:1"]


def test_prompt_longer_than_max_length(tokenizer):
    long_prompt = {"prompt": "Tell me. " * 20 + "Color?", "completion": " Blue."}
    items = [{"prompt": "a", "completion": " b"}, long_prompt]
    with pytest.raises(DataError) as err:
        tokenize(tokenizer, items, max_length=12)
    n_prompt = len(tokenizer(long_prompt["prompt"], add_special_tokens=False)["input_ids"])
    assert str(err.value) == (
        f"data/train.jsonl:2: field 'prompt': the prompt is {n_prompt} tokens, so max_length=12 "
        "leaves no completion token to train on; raise data.max_length, use truncation=keep_end, "
        "or on_bad_example=skip"
    )
    rows, report = tokenize(tokenizer, items, max_length=12, on_bad_example="skip")
    assert len(rows) == 1
    assert report.summary() == (
        "read 2 records: 1 used, 1 skipped (1 prompt longer than max_length=12)"
    )
    # a conversation whose first turns fill max_length names 'messages'
    chat = {"messages": [{"role": "user", "content": "Tell me. " * 20}, A1]}
    with pytest.raises(DataError, match="data/train.jsonl:1: field 'messages': the prompt is"):
        tokenize(tokenizer, [chat], max_length=12)


def test_sft_rejects_other_formats(tokenizer):
    records = [Record({"prompt": "Q", "chosen": " a", "rejected": " b"}, "p.jsonl", 1)]
    fmt, examples = parse_examples(records)
    with pytest.raises(DataError, match="SFT cannot train on preference data; it accepts "
                       "language_modeling, prompt_completion, conversational"):  # fmt: skip
        tokenize_sft(examples, fmt, tokenizer, 0, "keep_start", True, "error", DataReport())


# --- the whole pipeline ---


def test_build_sft_dataset_on_the_sample(tokenizer, sample_path):
    cfg = DataConfig(path=str(sample_path), max_length=256)
    rows, report = build_sft_dataset(cfg, tokenizer)
    assert len(rows) == 200
    assert report.summary() == "read 200 records: 200 used"
    assert all(set(row) == {"input_ids", "labels"} for row in rows)
    for row in rows[:20]:
        spans = trained_spans(tokenizer, row)
        assert spans and all(span.endswith("<|im_end|>") for span in spans)

    packed_cfg = DataConfig(path=str(sample_path), max_length=256, packing=True, max_examples=50)
    packed, report = build_sft_dataset(packed_cfg, tokenizer)
    assert report.used == 50 and report.packed_rows == len(packed) < 50
    assert report.summary().endswith(f"; packed into {len(packed)} sequences of <= 256 tokens")
    assert all(len(row["input_ids"]) <= 256 and "position_ids" in row for row in packed)


def test_build_sft_dataset_reports_skips_and_truncation(tokenizer, write_jsonl):
    items = [
        {"prompt": "The sky is", "completion": " blue."},
        {"prompt": "The sky is", "completion": ""},
        "{not json",
        {"prompt": "Tell me. " * 20 + "Color?", "completion": " Blue."},
        LONG,
        {"prompt": "Grass is", "completion": ""},
        {"prompt": "Snow is", "completion": " white."},
    ]
    path = write_jsonl(items)
    cfg = DataConfig(path=path, max_length=16, on_bad_example="skip")
    rows, report = build_sft_dataset(cfg, tokenizer)
    assert len(rows) == 3
    assert report.summary() == (
        "read 7 records: 3 used, 4 skipped (2 empty completion, 1 malformed JSON, "
        "1 prompt longer than max_length=16), 1 truncated (keep_start)"
    )
    # with on_bad_example=error the loader stops at the malformed line before any parsing
    with pytest.raises(DataError, match=r"train.jsonl:3: malformed JSON: Expecting property name"):
        build_sft_dataset(DataConfig(path=path, max_length=16), tokenizer)
    del items[2]
    path = write_jsonl(items)
    with pytest.raises(DataError, match=r"train.jsonl:2: field 'completion': empty string"):
        build_sft_dataset(DataConfig(path=path, max_length=16), tokenizer)


def test_build_sft_dataset_refuses_preference_data(tokenizer, write_jsonl):
    path = write_jsonl([{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    with pytest.raises(DataError) as err:
        build_sft_dataset(DataConfig(path=path), tokenizer)
    assert str(err.value) == (
        f"{path}: this is preference data, which SFT cannot train on; SFT accepts "
        "language_modeling, prompt_completion, conversational (keys 'text', "
        "'prompt'+'completion', or 'messages')"
    )


def test_build_sft_dataset_eval_path_and_empty(tokenizer, write_jsonl):
    train = write_jsonl([{"text": "a b c"}], name="train.jsonl")
    held_out = write_jsonl([{"text": "d e"}, {"text": "f"}], name="eval.jsonl")
    rows, report = build_sft_dataset(DataConfig(path=train), tokenizer, path=held_out)
    assert len(rows) == 2 and report.records == 2
    empty = write_jsonl(["", ""], name="empty.jsonl")
    with pytest.raises(DataError, match=r"empty.jsonl: no records \(read 0 records: 0 used\)"):
        build_sft_dataset(DataConfig(path=empty), tokenizer)
    bad = write_jsonl([{"text": ""}], name="bad.jsonl")
    with pytest.raises(DataError, match=r"bad.jsonl: no usable examples: read 1 records: 0 used, "
                       r"1 skipped \(1 empty text\)"):  # fmt: skip
        build_sft_dataset(DataConfig(path=bad, on_bad_example="skip"), tokenizer)
