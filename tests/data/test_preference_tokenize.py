"""Tokenization of preference data: masks, shared prompts, truncation, bad examples, CoH."""

import json

import pytest
import torch

from alignlab.config import DataConfig
from alignlab.data.hindsight import chain_of_hindsight, hindsight_chat_template, hindsight_prompt
from alignlab.data.pairs import collate_pairs, split_pairs, tokenize_pairs
from alignlab.data.preference import build_preference_dataset
from alignlab.data.ranked import tokenize_ranked
from alignlab.data.report import DataReport
from alignlab.data.schema import DataError, Record, parse_examples
from alignlab.data.templates import DEFAULT_CHAT_TEMPLATE
from alignlab.data.unpaired import mismatched_row, tokenize_unpaired
from alignlab.ops import IGNORE_INDEX

STRING_PAIR = {"prompt": "What color is the sky?", "chosen": " It is blue.", "rejected": " Green."}
CHAT_PAIR = {
    "prompt": [{"role": "user", "content": "What color is the sky?"}],
    "chosen": [{"role": "assistant", "content": "It is blue."}],
    "rejected": [{"role": "assistant", "content": "Green."}],
}


def examples(*records):
    return parse_examples([Record(r, "p.jsonl", i + 1) for i, r in enumerate(records)])


def trained(tokenizer, ids, labels):
    assert len(ids) == len(labels)
    kept = [label for label in labels if label != IGNORE_INDEX]
    assert kept == [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    return tokenizer.decode(kept)


def pairs(tokenizer, *records, max_length=0, truncation="keep_start", on_bad="error"):
    fmt, exs = examples(*records)
    report = DataReport()
    report.used = len(exs)
    rows = tokenize_pairs(exs, fmt, tokenizer, max_length, truncation, on_bad, report)
    return rows, report


def test_string_pair_trains_response_and_eos_only(tokenizer):
    (row,), _ = pairs(tokenizer, STRING_PAIR)
    assert trained(tokenizer, row["chosen_input_ids"], row["chosen_labels"]) == (
        " It is blue.<|endoftext|>"
    )
    assert trained(tokenizer, row["rejected_input_ids"], row["rejected_labels"]) == (
        " Green.<|endoftext|>"
    )
    prompt = tokenizer("What color is the sky?", add_special_tokens=False)["input_ids"]
    assert row["chosen_input_ids"][: len(prompt)] == row["rejected_input_ids"][: len(prompt)]
    assert row["chosen_input_ids"][: len(prompt)] == prompt


def test_conversational_pair_trains_assistant_turn_with_end_marker(tokenizer):
    (row,), _ = pairs(tokenizer, CHAT_PAIR)
    assert trained(tokenizer, row["chosen_input_ids"], row["chosen_labels"]) == (
        "It is blue.<|im_end|>"
    )
    assert tokenizer.decode(row["rejected_input_ids"]).startswith("<|im_start|>user\nWhat color")
    assert trained(tokenizer, row["rejected_input_ids"], row["rejected_labels"]) == (
        "Green.<|im_end|>"
    )


def test_implicit_prompt_is_the_shared_prefix(tokenizer):
    record = {
        "chosen": "What color is the sky? It is blue.",
        "rejected": "What color is the sky? Green.",
    }
    (row,), _ = pairs(tokenizer, record)
    assert trained(tokenizer, row["chosen_input_ids"], row["chosen_labels"]) == (
        " It is blue.<|endoftext|>"
    )


def test_truncation_keeps_prompt_tail_and_response_head(tokenizer):
    record = {**STRING_PAIR, "chosen": " It is blue, the sky is blue number one."}
    (full,), _ = pairs(tokenizer, record)
    length = len(full["chosen_input_ids"]) - 4
    (start,), report = pairs(tokenizer, record, max_length=length)
    assert report.truncated == 1
    assert start["chosen_input_ids"] == full["chosen_input_ids"][:length]  # response head
    assert start["rejected_input_ids"] == full["rejected_input_ids"]  # short side untouched
    (end,), _ = pairs(tokenizer, record, max_length=length, truncation="keep_end")
    # the prompt keeps its tail: max(max_length - longest response, min(prompt, max_length // 2))
    # tokens (no BOS here); the responses keep their head; both sides share that prompt
    ids, labels = full["chosen_input_ids"], full["chosen_labels"]
    prompt = next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
    kept = max(length - (len(ids) - prompt), min(prompt, length // 2))
    assert end["chosen_input_ids"] == ids[prompt - kept : prompt] + ids[prompt:][: length - kept]
    assert end["rejected_input_ids"][:kept] == ids[prompt - kept : prompt]
    assert trained(tokenizer, end["chosen_input_ids"], end["chosen_labels"]).startswith(" It is")
    _, skipped = pairs(tokenizer, record, max_length=length, truncation="skip")
    assert skipped.used == 0 and skipped.total_skipped == 1


def test_prompt_longer_than_max_length_is_a_located_error_or_a_counted_skip(tokenizer):
    short = {"prompt": "Sky?", "chosen": " Blue.", "rejected": " Green."}
    with pytest.raises(DataError, match=r"p\.jsonl:2: field 'prompt'.*max_length=6"):
        pairs(tokenizer, short, STRING_PAIR, max_length=6)
    rows, report = pairs(tokenizer, short, STRING_PAIR, max_length=6, on_bad="skip")
    assert len(rows) == 1 and report.total_skipped == 1 and report.used == 1


def test_bad_record_names_file_line_field(tokenizer, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(STRING_PAIR) + "\n" + json.dumps({**STRING_PAIR, "rejected": ""}))
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: field 'rejected'"):
        build_preference_dataset(DataConfig(path=str(path)), tokenizer)
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    with pytest.raises(DataError, match="prompt_completion data"):
        build_preference_dataset(DataConfig(path=str(sft)), tokenizer)


def test_collate_pairs_puts_chosen_first_and_split_recovers_them(tokenizer):
    rows, _ = pairs(tokenizer, STRING_PAIR, CHAT_PAIR)
    batch = collate_pairs(rows, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4
    chosen, rejected = split_pairs(batch["input_ids"])
    for b, row in enumerate(rows):
        n = len(row["chosen_input_ids"])
        assert chosen[b, :n].tolist() == row["chosen_input_ids"]
        assert rejected[b, : len(row["rejected_input_ids"])].tolist() == row["rejected_input_ids"]
    assert torch.equal(split_pairs(torch.arange(4))[1], torch.tensor([2, 3]))


def test_unpaired_rows_and_pairs_split_for_kto(tokenizer):
    fmt, exs = examples(
        {"prompt": "What color is the sky?", "completion": " Blue.", "label": True},
        {"prompt": "What color is the sky?", "completion": " Green.", "label": False},
    )
    rows = tokenize_unpaired(exs, fmt, tokenizer, 0, "keep_start", "error", DataReport())
    assert [r["label"] for r in rows] == [True, False]
    assert trained(tokenizer, rows[0]["input_ids"], rows[0]["labels"]) == " Blue.<|endoftext|>"
    fmt, exs = examples(STRING_PAIR)
    report = DataReport()
    split = tokenize_unpaired(exs, fmt, tokenizer, 0, "keep_start", "error", report)
    assert [r["label"] for r in split] == [True, False]
    assert trained(tokenizer, split[1]["input_ids"], split[1]["labels"]) == " Green.<|endoftext|>"
    mixed = mismatched_row(rows[0], split[1])
    assert tokenizer.decode(mixed["input_ids"]) == "What color is the sky? Green.<|endoftext|>"
    assert trained(tokenizer, mixed["input_ids"], mixed["labels"]) == " Green.<|endoftext|>"


def test_ranked_rows_keep_every_response_and_score(tokenizer):
    fmt, exs = examples(
        {"prompt": "What color is the sky?", "responses": [" Blue.", " Green.", " Red."],
         "scores": [2, 0, 1]}
    )  # fmt: skip
    (row,) = tokenize_ranked(exs, fmt, tokenizer, 0, "keep_start", "error", DataReport())
    assert row["scores"] == [2.0, 0.0, 1.0]
    texts = [trained(tokenizer, r["input_ids"], r["labels"]) for r in row["responses"]]
    assert texts == [" Blue.<|endoftext|>", " Green.<|endoftext|>", " Red.<|endoftext|>"]
    fmt, exs = examples(STRING_PAIR)
    (pair,) = tokenize_ranked(exs, fmt, tokenizer, 0, "keep_start", "error", DataReport())
    assert pair["scores"] == [1.0, 0.0]


def test_chain_of_hindsight_template_and_inference_prompt(tokenizer):
    _, exs = examples(STRING_PAIR)
    first, second = chain_of_hindsight(exs, order="positive_first")
    assert first.prompt == "What color is the sky?\nA helpful answer:"
    assert first.completion == " It is blue."
    assert (
        second.prompt
        == "What color is the sky?\nA helpful answer: It is blue.\nAn unhelpful answer:"
    )
    assert second.completion == " Green."
    assert hindsight_prompt(STRING_PAIR["prompt"]) == first.prompt
    neg = chain_of_hindsight(exs, order="negative_first")
    assert neg[0].prompt.endswith("An unhelpful answer:") and neg[1].completion == " It is blue."
    assert len(chain_of_hindsight(exs, order="both")) == 4
    _, chats = examples(CHAT_PAIR)
    first, second = chain_of_hindsight(chats, order="positive_first")
    assert first.prompt[-1]["content"] == "What color is the sky?\n\nA helpful answer:"
    assert second.prompt[-1] == {"role": "user", "content": "An unhelpful answer:"}
    assert hindsight_prompt(CHAT_PAIR["prompt"]) == first.prompt


def test_chain_of_hindsight_rows_train_only_the_responses(tokenizer, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(STRING_PAIR) + "\n")
    rows, _ = build_preference_dataset(
        DataConfig(path=str(path)), tokenizer, kind="hindsight",
        hindsight={"order": "positive_first"},
    )  # fmt: skip
    texts = [trained(tokenizer, r["input_ids"], r["labels"]) for r in rows]
    assert texts == [" It is blue.<|endoftext|>", " Green.<|endoftext|>"]
    full = tokenizer.decode(rows[1]["input_ids"])
    assert full == (
        "What color is the sky?\nA helpful answer: It is blue.\nAn unhelpful answer: Green."
        "<|endoftext|>"
    )


def test_hindsight_chat_template_conditions_generation_prompts_only(tokenizer):
    template = hindsight_chat_template(DEFAULT_CHAT_TEMPLATE)
    assert hindsight_chat_template(template) == template  # a resumed run does not add it twice

    def render(messages, chat_template, generation=True):
        return tokenizer.apply_chat_template(
            messages, chat_template=chat_template, add_generation_prompt=generation,
            tokenize=False,
        )  # fmt: skip

    for messages in (
        CHAT_PAIR["prompt"],  # ends with a user turn: the phrase joins it
        CHAT_PAIR["prompt"] + CHAT_PAIR["chosen"],  # ends with the assistant: a new user turn
    ):
        expected = render(hindsight_prompt(messages), DEFAULT_CHAT_TEMPLATE)
        assert render(messages, template) == expected
        assert hindsight_prompt(messages) != messages
        # training renders (no generation prompt) are unchanged
        assert render(messages, template, False) == render(messages, DEFAULT_CHAT_TEMPLATE, False)
    assert "sky?\n\nA helpful answer:" in render(CHAT_PAIR["prompt"], template)
    quoted = hindsight_chat_template(DEFAULT_CHAT_TEMPLATE, 'Très "bien" \\ :')
    assert render(CHAT_PAIR["prompt"], quoted).count('Très "bien" \\ :') == 1
