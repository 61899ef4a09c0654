import pytest

from alignlab.data.report import DataReport
from alignlab.data.schema import (
    FORMATS,
    DataError,
    Record,
    detect_format,
    extract_prompt,
    parse_examples,
)
from alignlab.data.sources import load_records

U = {"role": "user", "content": "What color is the sky?"}
A_BLUE = {"role": "assistant", "content": "It is blue."}
A_GREEN = {"role": "assistant", "content": "It is green."}
SYS = {"role": "system", "content": "Be brief."}

# the examples of TRL's "Dataset formats and types" guide, plus ranked lists
TRL_EXAMPLES = {
    "language_modeling": {"text": "The sky is blue."},
    "prompt_completion": {"prompt": "The sky is", "completion": " blue."},
    "preference": {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    "unpaired_preference": {"prompt": "The sky is", "completion": " blue.", "label": True},
    "ranked": {"prompt": "The sky is", "responses": [" blue.", " green."], "scores": [1, 0.5]},
}
TRL_CONVERSATIONAL = {
    "conversational": [{"messages": [U, A_BLUE]}, {"prompt": [U], "completion": [A_BLUE]}],
    "preference": [
        {"prompt": [U], "chosen": [A_BLUE], "rejected": [A_GREEN]},
        {"chosen": [U, A_BLUE], "rejected": [U, A_GREEN]},
    ],
    "unpaired_preference": [{"prompt": [U], "completion": [A_BLUE], "label": False}],
    "ranked": [{"prompt": [U], "responses": [[A_BLUE], [A_GREEN]], "scores": [2, -1.5]}],
}


def rec(data, line=1, source="data/train.jsonl"):
    return Record(data, source, line)


def parse_one(data, fmt="auto"):
    return parse_examples([rec(data)], fmt)


@pytest.mark.parametrize("fmt", list(TRL_EXAMPLES))
def test_standard_formats_detected_and_parsed(fmt):
    data = {**TRL_EXAMPLES[fmt], "id": 7, "source": "extra keys are ignored"}
    assert detect_format(rec(data)) == fmt
    detected, [example] = parse_one(data)
    assert detected == fmt
    assert example.record.data is data
    assert not example.conversational


def test_standard_fields():
    _, [lm] = parse_one(TRL_EXAMPLES["language_modeling"])
    assert lm.text == "The sky is blue." and lm.prompt is None and lm.completion is None
    _, [pc] = parse_one(TRL_EXAMPLES["prompt_completion"])
    assert (pc.prompt, pc.completion) == ("The sky is", " blue.")
    _, [pref] = parse_one(TRL_EXAMPLES["preference"])
    assert (pref.prompt, pref.chosen, pref.rejected) == ("The sky is", " blue.", " green.")
    _, [kto] = parse_one(TRL_EXAMPLES["unpaired_preference"])
    assert (kto.prompt, kto.completion, kto.label) == ("The sky is", " blue.", True)
    _, [ranked] = parse_one(TRL_EXAMPLES["ranked"])
    assert ranked.responses == [" blue.", " green."]
    assert ranked.scores == [1.0, 0.5] and all(isinstance(s, float) for s in ranked.scores)


@pytest.mark.parametrize(
    "fmt,data", [(fmt, data) for fmt, items in TRL_CONVERSATIONAL.items() for data in items]
)
def test_conversational_variants_detected_and_parsed(fmt, data):
    assert detect_format(rec(data)) == fmt
    detected, [example] = parse_one(data)
    assert detected == fmt
    assert example.conversational


def test_conversational_fields():
    _, [chat] = parse_one({"messages": [SYS, U, A_BLUE]})
    assert chat.messages == [SYS, U, A_BLUE] and chat.prompt is None
    _, [pc] = parse_one({"prompt": [U], "completion": [A_BLUE]})
    assert pc.messages is None and pc.prompt == [U] and pc.completion == [A_BLUE]


def test_implicit_prompt_conversational():
    _, [ex] = parse_one({"chosen": [SYS, U, A_BLUE], "rejected": [SYS, U, A_GREEN]})
    assert ex.prompt == [SYS, U] and ex.chosen == [A_BLUE] and ex.rejected == [A_GREEN]


def test_implicit_prompt_strings():
    _, [ex] = parse_one({"chosen": "The sky is blue.", "rejected": "The sky is green."})
    assert (ex.prompt, ex.chosen, ex.rejected) == ("The sky is", " blue.", " green.")


EXTRACT_CASES = [
    ("The sky is blue.", "The sky is green."),
    ("Q: 2+2? A: 4", "Q: 2+2? A: 5"),
    ("abc", "abcd"),  # one is a prefix of the other
    ("xyz", "abc"),  # nothing shared
    ([SYS, U, A_BLUE], [SYS, U, A_GREEN]),
    ([U, A_BLUE, U, A_BLUE], [U, A_BLUE, U, A_GREEN]),
]


@pytest.mark.parametrize("chosen,rejected", EXTRACT_CASES)
def test_extract_prompt_matches_trl(chosen, rejected):
    prompt, new_chosen, new_rejected = extract_prompt(chosen, rejected)
    assert prompt + new_chosen == chosen and prompt + new_rejected == rejected
    trl_data_utils = pytest.importorskip("trl.data_utils")
    expected = trl_data_utils.extract_prompt({"chosen": chosen, "rejected": rejected})
    assert (prompt, new_chosen, new_rejected) == (
        expected["prompt"],
        expected["chosen"],
        expected["rejected"],
    )


def test_forcing_a_format():
    data = {"prompt": "The sky is", "completion": " blue.", "label": True, "text": "raw"}
    assert detect_format(rec(data)) == "unpaired_preference"
    fmt, [ex] = parse_one(data, fmt="prompt_completion")
    assert fmt == "prompt_completion" and ex.label is None and ex.completion == " blue."
    fmt, [ex] = parse_one(data, fmt="language_modeling")
    assert fmt == "language_modeling" and ex.text == "raw"
    with pytest.raises(DataError, match="data/train.jsonl:1: field 'chosen': missing"):
        parse_one(data, fmt="preference")
    with pytest.raises(DataError, match="unknown format 'sft'"):
        parse_one(data, fmt="sft")


def test_format_detected_from_first_detectable_record():
    records = [rec({"foo": 1}, 1), rec(TRL_EXAMPLES["prompt_completion"], 2)]
    with pytest.raises(DataError, match=r"data/train.jsonl:1: field 'prompt': missing"):
        parse_examples(records)
    fmt, examples = parse_examples(records, on_bad_example="skip")
    assert fmt == "prompt_completion" and len(examples) == 1


def test_undetectable_format():
    with pytest.raises(DataError) as err:
        parse_one({"question": "a", "answer": "b"})
    assert str(err.value).startswith(
        "data/train.jsonl:1: cannot tell the dataset format from the keys ['answer', 'question']"
    )
    assert "or set data.format" in str(err.value)


BAD_CASES = [
    # (format, record, expected message after "path:line: ", skip reason)
    (
        "prompt_completion",
        {"prompt": "Q", "completion": ""},
        "field 'completion': empty string",
        "empty completion",
    ),
    (
        "prompt_completion",
        {"prompt": "Q", "completion": "   "},
        "field 'completion': empty string",
        "empty completion",
    ),
    ("prompt_completion", {"prompt": "Q"}, "field 'completion': missing", "missing completion"),
    (
        "prompt_completion",
        {"prompt": "Q", "completion": None},
        "field 'completion': null",
        "missing completion",
    ),
    (
        "conversational",
        {"messages": [U, {"role": "assistant", "content": None}]},
        "field 'messages[1].content': null",
        "missing message content",
    ),
    (
        "prompt_completion",
        {"prompt": 3, "completion": "A"},
        "field 'prompt': expected a string, got int",
        "non-string prompt",
    ),
    (
        "prompt_completion",
        {"prompt": "Q", "completion": {"text": "A"}},
        "field 'completion': expected a string, got dict",
        "non-string completion",
    ),
    ("language_modeling", {"text": ""}, "field 'text': empty string", "empty text"),
    (
        "conversational",
        {"messages": [U, {"role": "assistant", "content": ""}]},
        "field 'messages[1].content': empty string",
        "empty assistant message",
    ),
    (
        "conversational",
        {"messages": [U, {"role": "bot", "content": "hi"}]},
        "field 'messages[1].role': unknown role 'bot'; expected one of system, developer, user, "
        "assistant, tool",
        "unknown role",
    ),
    (
        "conversational",
        {"messages": [U, {"content": "hi"}]},
        "field 'messages[1].role': missing",
        "missing role",
    ),
    (
        "conversational",
        {"messages": [U, {"role": "assistant", "content": ["hi"]}]},
        "field 'messages[1].content': expected a string, got list",
        "non-string message content",
    ),
    (
        "conversational",
        {"messages": [U]},
        "field 'messages': no assistant message to train on",
        "no assistant message",
    ),
    (
        "conversational",
        {"messages": "hello"},
        "field 'messages': expected a list of {role, content} messages, got str",
        "non-list messages",
    ),
    (
        "conversational",
        {"messages": [U, "hi"]},
        "field 'messages[1]': expected a {role, content} object, got str",
        "invalid message",
    ),
    (
        "conversational",
        {"prompt": [U], "completion": [U]},
        "field 'completion': no assistant message",
        "no assistant message in completion",
    ),
    (
        "prompt_completion",
        {"prompt": [U], "completion": "It is blue."},
        "field 'completion': the prompt is a message list but this is str; use message lists for "
        "both or strings for both",
        "mixed prompt and completion types",
    ),
    (
        "preference",
        {"prompt": "Q", "chosen": " a", "rejected": " a"},
        "field 'rejected': identical to 'chosen'; a pair needs two different responses",
        "identical chosen and rejected",
    ),
    (
        "preference",
        {"prompt": "Q", "chosen": " a", "rejected": ""},
        "field 'rejected': empty string",
        "empty rejected",
    ),
    (
        "unpaired_preference",
        {"prompt": "Q", "completion": " a", "label": 1},
        "field 'label': expected a bool (true: desirable, false: undesirable), got 1",
        "non-bool label",
    ),
    (
        "ranked",
        {"prompt": "Q", "responses": [" a"], "scores": [1]},
        "field 'responses': 1 response(s); ranking needs at least 2",
        "too few responses",
    ),
    (
        "ranked",
        {"prompt": "Q", "responses": [" a", " b"], "scores": [1]},
        "field 'scores': 1 scores for 2 responses; give one score per response",
        "mismatched responses and scores",
    ),
    (
        "ranked",
        {"prompt": "Q", "responses": [" a", " b"], "scores": [1, "high"]},
        "field 'scores[1]': expected a finite number, got 'high'",
        "non-numeric score",
    ),
    (
        "ranked",
        {"prompt": "Q", "responses": [" a", ""], "scores": [1, 0]},
        "field 'responses[1]': empty string",
        "empty responses",
    ),
]


@pytest.mark.parametrize("fmt,data,message,reason", BAD_CASES)
def test_bad_record_error_names_file_line_field(fmt, data, message, reason):
    good = rec(TRL_EXAMPLES.get(fmt, {"messages": [U, A_BLUE]}), line=16)
    records = [good, rec(data, line=17)]
    with pytest.raises(DataError) as err:
        parse_examples(records, fmt)
    assert str(err.value) == f"data/train.jsonl:17: {message}"
    assert err.value.line == 17 and err.value.source == "data/train.jsonl"

    report = DataReport()
    _, examples = parse_examples(records, fmt, on_bad_example="skip", report=report)
    assert [e.record.line for e in examples] == [16]
    assert report.skipped == {reason: 1}
    assert report.skipped_at[reason] == ["data/train.jsonl:17"]
    assert report.summary() == f"read 2 records: 1 used, 1 skipped (1 {reason})"


def test_skip_counts_in_summary(write_jsonl):
    path = write_jsonl(
        [
            {"prompt": "a", "completion": " b"},
            {"prompt": "a", "completion": ""},
            "{broken",
            {"prompt": "a", "completion": ""},
            {"prompt": "a"},
        ]
    )
    report = DataReport()
    records = load_records(path, on_bad_example="skip", report=report)
    fmt, examples = parse_examples(records, "auto", "skip", report)
    assert fmt == "prompt_completion" and len(examples) == 1
    assert report.summary() == (
        "read 5 records: 1 used, 4 skipped (2 empty completion, 1 malformed JSON, 1 missing completion)"
    )


def test_formats_tuple():
    assert FORMATS == (
        "language_modeling",
        "prompt_completion",
        "conversational",
        "preference",
        "unpaired_preference",
        "ranked",
    )


def test_data_error_str():
    assert str(DataError("empty string", "a.jsonl", 3, "completion")) == (
        "a.jsonl:3: field 'completion': empty string"
    )
    assert str(DataError("no such file", "a.jsonl")) == "a.jsonl: no such file"
    assert str(DataError("oops")) == "oops"
    assert isinstance(DataError("x"), ValueError)


def test_the_report_counts_conversions_itself():
    report = DataReport(records=3, used=3)
    report.converted(3, 6, "each pair split in two")
    report.packed(2, 128)
    assert report.used == 6
    assert report.summary() == (
        "read 3 records: 6 used, 3 examples became 6 (each pair split in two); "
        "packed into 2 sequences of <= 128 tokens"
    )
