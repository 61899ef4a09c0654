"""Pairwise labels read as per-response win rates: KTO's unpaired labels, RRHF's ranked lists."""

import json

from alignlab.config import DataConfig
from alignlab.data.preference import build_preference_dataset
from alignlab.data.schema import Record, parse_examples
from alignlab.data.win_rate import ranked_by_win_rate, unpaired_by_win_rate, win_rates

# prompt "x": A beats B and C, C beats B -> A 2/2, B 0/2, C 1/2.
# prompt "y": P beats Q, then Q beats P -> both 1/2: no order.
PAIRS = [
    {"prompt": "x", "chosen": " A", "rejected": " B"},
    {"prompt": "y", "chosen": " P", "rejected": " Q"},
    {"prompt": "x", "chosen": " A", "rejected": " C"},
    {"prompt": "x", "chosen": " C", "rejected": " B"},
    {"prompt": "y", "chosen": " Q", "rejected": " P"},
]


def examples(rows):
    return parse_examples([Record(r, "p.jsonl", i + 1) for i, r in enumerate(rows)])[1]


def test_win_rates_count_every_comparison_per_prompt():
    (first_x, x), (first_y, y) = win_rates(examples(PAIRS))
    assert x == [(" A", 2, 2), (" B", 0, 2), (" C", 1, 2)]
    assert y == [(" P", 1, 2), (" Q", 1, 2)]
    assert (first_x.record.line, first_y.record.line) == (1, 2)  # errors name the first pair


def test_unpaired_labels_majority_of_comparisons_and_drops_ties():
    out = unpaired_by_win_rate(examples(PAIRS))
    assert [(e.prompt, e.completion, e.label) for e in out] == [
        ("x", " A", True),
        ("x", " B", False),
    ]
    # splitting each pair would have made C desirable once and undesirable once


def test_ranked_lists_score_win_rate_and_drop_all_tied_prompts():
    (row,) = ranked_by_win_rate(examples(PAIRS))
    assert row.prompt == "x" and row.responses == [" A", " B", " C"]
    assert row.scores == [1.0, 0.0, 0.5]


def test_one_pair_per_prompt_is_the_plain_split():
    one = examples([PAIRS[0]])
    assert [(e.completion, e.label) for e in unpaired_by_win_rate(one)] == [
        (" A", True), (" B", False),
    ]  # fmt: skip
    assert ranked_by_win_rate(one)[0].scores == [1.0, 0.0]


def test_conversational_pairs_group_by_message_lists(tokenizer, tmp_path):
    def pair(prompt, chosen, rejected):
        return {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }

    path = tmp_path / "pairs.jsonl"
    rows = [pair("x", "A", "B"), pair("x", "A", "C"), pair("x", "C", "B"), pair("y", "P", "Q")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(path=str(path))
    unpaired, report = build_preference_dataset(
        cfg, tokenizer, kind="unpaired", pairs_as="win_rate"
    )
    assert [r["label"] for r in unpaired] == [True, False, True, False]  # x: A, B; y: P, Q
    assert report.used == 4
    split, _ = build_preference_dataset(cfg, tokenizer, kind="unpaired")
    assert len(split) == 8
    ranked, _ = build_preference_dataset(cfg, tokenizer, kind="ranked", pairs_as="win_rate")
    assert [r["scores"] for r in ranked] == [[1.0, 0.0, 0.5], [1.0, 0.0]]
