"""The shapes VLM evaluation: POPE on worked values, metrics of known answers, a tiny LLaVA
evaluated end to end (fields in range, KL 0 against itself, paired comparison, JSONL, figure),
bad exports named."""

import json
import math
import shutil

import pytest
import torch
from PIL import Image

from alignlab.config import ConfigError
from alignlab.data.schema import DataError
from alignlab.lab.shapes.evaluate import (
    _answer_row,
    answer_metrics,
    answers_figure,
    evaluate_vlm,
    evaluate_vlms,
    paired_answers,
    pick_examples,
    pope_metrics,
    pope_table,
    read_export_prompts,
    results_table,
)
from alignlab.lab.shapes.export import export_shapes
from alignlab.lab.shapes.gold import gold_score
from alignlab.lab.shapes.text import QUESTION_TYPES
from alignlab.models.generation import Generation
from alignlab.models.vlm_tiny import build_tiny_llava, tiny_vlm_tokenizer

N_HELDOUT = 14
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """An export with 64-pixel images and two tiny LLaVAs (64-pixel tower, one tokenizer)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("shapes-eval")
    export_shapes(root / "export", n_train=0, n_valid=3, n_heldout=N_HELDOUT, image_size=64)
    tokenizer = tiny_vlm_tokenizer()
    a = build_tiny_llava(root / "a", tokenizer, image_size=64, seed=0)
    b = build_tiny_llava(root / "b", tokenizer, image_size=64, seed=1)
    return root, root / "export", a, b


# --- POPE ------------------------------------------------------------------------------------


def test_pope_metrics_on_worked_values():
    predictions = ["yes", "yes", "no", None, "no", "yes"]
    labels = ["yes", "no", "no", "yes", "yes", "yes"]
    # TP: 0, 5; FP: 1; TN: 2; FN: 3 (unanswered), 4
    out = pope_metrics(predictions, labels)
    assert (out["tp"], out["fp"], out["tn"], out["fn"], out["unanswered"]) == (2, 1, 1, 2, 1)
    assert out["accuracy"] == pytest.approx(3 / 6)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 4)
    assert out["f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))  # = 4 / 7
    assert out["yes_ratio"] == pytest.approx(3 / 6)


def test_pope_metrics_edge_cases():
    never_yes = pope_metrics(["no", "no", None], ["yes", "no", "no"])
    assert never_yes["precision"] is None and never_yes["recall"] == 0 and never_yes["f1"] == 0
    assert never_yes["yes_ratio"] == 0 and never_yes["accuracy"] == pytest.approx(1 / 3)
    assert pope_metrics([], [])["accuracy"] is None
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        pope_metrics(["yes", "no"], ["yes"])
    with pytest.raises(ValueError, match="labels must be"):
        pope_metrics(["yes"], ["maybe"])


def test_pope_settings_pair_the_present_questions_with_each_negative_set():
    rows = [
        {"type": "exists", "pope": "present", "answer": "yes", "yes_no": "yes"},
        {"type": "exists", "pope": "present", "answer": "yes", "yes_no": "no"},
        {"type": "exists", "pope": "random", "answer": "no", "yes_no": "no"},
        {"type": "exists", "pope": "adversarial", "answer": "no", "yes_no": "yes"},
        {"type": "count", "pope": None, "answer": "2", "yes_no": None},  # not a POPE question
    ]
    table = pope_table(rows)
    assert table["n"] == 4 and table["accuracy"] == pytest.approx(2 / 4)
    assert set(table["by_strategy"]) == {"random", "adversarial"}  # no popular question
    random_, adversarial = table["by_strategy"]["random"], table["by_strategy"]["adversarial"]
    assert random_["n"] == 3 and random_["accuracy"] == pytest.approx(2 / 3)
    assert adversarial["n"] == 3 and adversarial["accuracy"] == pytest.approx(1 / 3)
    assert adversarial["yes_ratio"] == pytest.approx(2 / 3) and adversarial["fp"] == 1
    ci = table["accuracy_ci"]
    assert ci["method"] == "wilson" and ci["lower"] < 0.5 < ci["upper"]


# --- metrics of known answers ----------------------------------------------------------------


def scored(items, responses):
    golds = [gold_score(item.prompt, text) for item, text in zip(items, responses)]
    rows = []
    for item, text, gold in zip(items, responses, golds):
        generation = Generation("", [1], [5] * 3, text, finished=True)
        rows.append(_answer_row(item, text, gold, generation))
    return rows, golds


def test_gold_answers_score_perfectly_and_a_yes_to_an_absent_object_hallucinates(lab):
    _, export, _, _ = lab
    items = read_export_prompts(export, "heldout")
    assert [item.index for item in items] == list(range(N_HELDOUT))
    rows, golds = scored(items, [item.prompt.answer for item in items])
    metrics = answer_metrics(rows, golds)
    assert metrics["accuracy"]["mean"] == 1 and metrics["score"]["mean"] == 1
    assert sum(t["n"] for t in metrics["by_type"].values()) == N_HELDOUT
    assert all(t["accuracy"]["mean"] == 1 for t in metrics["by_type"].values())
    exists = [item for item in items if item.prompt.type == "exists"]
    yes = sum(item.prompt.answer == "yes" for item in exists)
    assert metrics["pope"]["n"] == len(exists) > 0 and metrics["pope"]["accuracy"] == 1
    assert metrics["pope"]["yes_ratio"] == pytest.approx(yes / len(exists))
    assert metrics["chair"]["all"]["chair_s"] == 0 and metrics["chair"]["descriptive"]["n"] > 0

    # "yes" to every exists question: the absent ones become false positives and hallucinations
    absent = [item for item in exists if item.prompt.answer == "no"]
    assert absent, "the export should ask about an absent object"
    responses = ["yes" if item.prompt.type == "exists" else item.prompt.answer for item in items]
    rows, golds = scored(items, responses)
    metrics = answer_metrics(rows, golds)
    assert metrics["pope"]["fp"] == len(absent) and metrics["pope"]["yes_ratio"] == 1
    assert metrics["pope"]["recall"] == 1
    assert metrics["pope"]["precision"] == pytest.approx(yes / len(exists))
    assert metrics["chair"]["all"]["chair_s"] == pytest.approx(len(absent) / N_HELDOUT)
    assert metrics["by_type"]["exists"]["chair_s"] == pytest.approx(len(absent) / len(exists))


# --- a tiny LLaVA end to end -----------------------------------------------------------------


def in_unit_interval(value):
    return value is None or 0 <= value <= 1


def test_evaluate_vlm_fields_in_range_and_kl_to_a_copy_of_itself_is_zero(lab, tmp_path):
    root, export, a, _ = lab
    copy = shutil.copytree(a, tmp_path / "a-copy")  # loaded twice: KL is really computed
    answers_path = tmp_path / "answers.jsonl"
    result = evaluate_vlm(a, export, n=10, ref=copy, max_new_tokens=MAX_NEW_TOKENS,
                          batch_size=4, answers_path=answers_path)  # fmt: skip
    assert result["n_prompts"] == 10 and result["split"] == "heldout"
    assert set(result["by_type"]) <= set(QUESTION_TYPES)
    assert sum(t["n"] for t in result["by_type"].values()) == 10
    for estimate in (result["accuracy"], result["score"], result["finished"]):
        assert in_unit_interval(estimate["mean"]) and estimate["n"] == 10
    for table in result["by_type"].values():
        assert all(in_unit_interval(table[k]) for k in ("score", "recall", "chair_i", "chair_s"))
        assert in_unit_interval(table["accuracy"]["mean"])
    pope = result["pope"]
    assert pope["n"] == result["by_type"]["exists"]["n"]
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert in_unit_interval(pope[key])
    for chair in result["chair"].values():
        assert in_unit_interval(chair["chair_i"]) and in_unit_interval(chair["chair_s"])
    assert 1 <= result["length"]["mean"] <= MAX_NEW_TOKENS
    # KL to the same weights loaded again: each log-prob is the same fp32 computation
    logps = torch.tensor([row["logp"] for row in result["answers"]])
    tolerance = 16 * torch.finfo(torch.float32).eps * logps.abs().max().item()
    assert abs(result["kl"]["mean"]) <= tolerance and result["kl"]["exact_sampling"]
    assert all(math.isfinite(row["logp"]) and row["logp"] < 0 for row in result["answers"])
    written = [json.loads(line) for line in answers_path.read_text().splitlines()]
    assert written == result["answers"] and [row["index"] for row in written] == list(range(10))
    json.dumps({k: v for k, v in result.items()})  # JSON-able as it is


def test_evaluate_vlms_shares_seeds_and_pairs_against_the_baseline(lab, tmp_path):
    root, export, a, b = lab
    results = evaluate_vlms({"a": a, "b": b}, export, ref=a, baseline="a", n=8,
                            max_new_tokens=MAX_NEW_TOKENS, answers_dir=tmp_path)  # fmt: skip
    # the reference's own folder is the loaded reference: the same log-probs, KL exactly 0
    assert results["a"]["kl"]["mean"] == 0.0
    kl_b = results["b"]["kl"]["mean"]
    assert math.isfinite(kl_b) and kl_b != 0
    rows = results["b"]["answers"]
    assert kl_b == pytest.approx(sum(r["logp"] - r["ref_logp"] for r in rows) / len(rows))
    # seeds are per prompt: a alone answers as a among others
    alone = evaluate_vlm(a, export, n=8, max_new_tokens=MAX_NEW_TOKENS, batch_size=3)
    assert [r["response"] for r in alone["answers"]] == [
        r["response"] for r in results["a"]["answers"]
    ]
    assert "kl" not in alone and alone["ref"] is None
    paired = results["a"]["paired"]
    assert set(paired) == {"correct", "score", "hallucinated"}
    assert paired["score"]["difference"]["mean"] == 0 and paired["score"]["win_rate"]["ties"] == 8
    assert set(results["b"]["paired"]["correct"]["by_family"]) == set(results["b"]["by_type"])
    assert (tmp_path / "a.jsonl").is_file() and (tmp_path / "b.jsonl").is_file()

    table = results_table(results)
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| a |") and lines[3].startswith("| b |")
    assert "POPE F1" in lines[0] and "CHAIR_i" in lines[0] and lines[0].endswith("KL |")

    out = answers_figure(export, {"a": tmp_path / "a.jsonl", "b": rows}, tmp_path / "fig.png", n=4)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 200


def test_paired_answers_on_hand_made_rows():
    def rows(correct):
        return [
            {"index": i, "image": f"images/heldout_{i:05d}.png", "question": "q",
             "type": "count" if i < 5 else "exists", "correct": c, "score": float(c),
             "hallucinated": not c}
            for i, c in enumerate(correct)
        ]  # fmt: skip

    baseline = rows([False] * 10)
    model = rows([True, True, False, False, False, True, False, False, False, False])
    out = paired_answers(model, baseline, baseline="stage 2")
    assert out["correct"]["difference"]["mean"] == pytest.approx(0.3)
    assert out["hallucinated"]["difference"]["mean"] == pytest.approx(-0.3)
    assert out["correct"]["baseline"] == "stage 2" and out["correct"]["by"] == "correct"
    by_type = out["correct"]["by_family"]
    assert by_type["count"]["difference"]["mean"] == pytest.approx(0.4)
    assert by_type["exists"]["difference"]["mean"] == pytest.approx(0.2)
    assert out["correct"]["bootstrap"]["method"] == "bootstrap"
    with pytest.raises(ValueError, match="same prompts"):
        paired_answers(model[:9], baseline)
    moved = [dict(r, question="other") if r["index"] == 3 else r for r in baseline]
    with pytest.raises(ValueError, match="prompt 3 differs"):
        paired_answers(model, moved)


def test_examples_take_question_types_in_turn():
    answers = [{"index": i, "type": t} for i, t in enumerate(["count"] * 5 + ["exists", "colour"])]
    assert pick_examples(answers, 4) == [0, 6, 5, 1]  # count, colour, exists, then count again


# --- bad input -------------------------------------------------------------------------------


def test_bad_exports_are_named(lab, tmp_path):
    _, export, a, _ = lab
    with pytest.raises(ConfigError, match="no heldout_prompts.jsonl"):
        read_export_prompts(tmp_path)
    with pytest.raises(ConfigError, match="split='test'"):
        read_export_prompts(export, "test")
    rows = (export / "valid_prompts.jsonl").read_text().splitlines()
    broken = json.loads(rows[1])
    del broken["scene"]
    (tmp_path / "valid_prompts.jsonl").write_text("\n".join([rows[0], json.dumps(broken)]) + "\n")
    with pytest.raises(DataError, match=r"valid_prompts.jsonl:2: field 'prompt'"):
        read_export_prompts(tmp_path, "valid")
    (tmp_path / "valid_prompts.jsonl").write_text(rows[0] + "\n")  # its image is not there
    with pytest.raises(DataError, match=r"valid_prompts.jsonl:1: field 'images\[0\]'"):
        evaluate_vlm(a, tmp_path, "valid", max_new_tokens=2)
