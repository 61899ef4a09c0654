"""On-policy VLM pairs labelled by simulated annotators: best against worst, labels as noisy
as the panel, rows VLM DPO reads; the sampling path end to end on a tiny LLaVA."""

import json

import pytest
import torch

from alignlab.data.vlm_pairs import read_vlm_pairs
from alignlab.fileio import write_jsonl
from alignlab.lab.annotators import Annotator
from alignlab.lab.shapes.annotate import annotated_pairs, label_answers, utility
from alignlab.lab.shapes.evaluate import read_export_prompts
from alignlab.lab.shapes.export import export_shapes
from alignlab.models.vlm_tiny import build_tiny_llava

EXACT = (Annotator(temperature=1e-6, flip_rate=0.0),)  # always picks the gold-better side
COIN = (Annotator(temperature=1e6, flip_rate=0.0),)  # margins move nothing: a fair coin


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotate")
    export_shapes(root / "export", n_train=40, n_valid=0, n_heldout=0, image_size=64)
    return root / "export"


def right_and_wrong(items):
    """Per prompt: the gold answer, a wrong one, and the gold answer again (a tie)."""
    return [[i.prompt.answer, "There are 7 purple stars.", i.prompt.answer] for i in items]


def test_exact_panel_prefers_the_gold_answer(export, tmp_path):
    items = read_export_prompts(export, "train")
    rows, report = label_answers(items, right_and_wrong(items), annotators=EXACT)
    assert report.prompts == 40 and report.pairs == len(rows) > 30
    assert report.labels_bought == report.pairs and report.gold_agreement == 1.0
    for row, item in zip(rows, items):  # a pair per prompt here: the wrong answer loses
        if row["chosen"][0]["content"][0]["text"] == item.prompt.answer:
            assert row["chosen_utility"] > row["rejected_utility"]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert len(read_vlm_pairs(tmp_path / "pairs.jsonl")) == len(rows)  # TRL vision rows


def test_coin_panel_flips_about_half(export):
    items = read_export_prompts(export, "train")
    rows, report = label_answers(items, right_and_wrong(items), annotators=COIN)
    flipped = [r for r in rows if not r["label_agrees_with_gold"]]
    assert all(r["chosen_utility"] < r["rejected_utility"] for r in flipped)
    assert 0.2 < len(flipped) / len(rows) < 0.8
    assert report.gold_agreement == pytest.approx(1 - len(flipped) / len(rows))


def test_tied_answers_give_no_pair(export):
    items = read_export_prompts(export, "train")[:5]
    rows, report = label_answers(items, [[i.prompt.answer] * 3 for i in items])
    assert rows == [] and report.ties == 5


def test_utility_charges_hallucination():
    assert utility(1.0, False, 0.5) == 1.0
    assert utility(1.0, True, 0.5) == 0.5
    assert utility(0.0, True, 0.5) == -0.5


def test_sampled_pairs_from_a_tiny_llava(export, tmp_path):
    torch.set_num_threads(1)
    model = build_tiny_llava(tmp_path / "llava", image_size=64)
    out = tmp_path / "pairs.jsonl"
    report = annotated_pairs(model, export, out, n=8, k=3, annotators=EXACT, max_new_tokens=6)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert report.prompts == 8 and report.pairs + report.ties == 8 and len(rows) == report.pairs
    assert all(r["chosen_utility"] > r["rejected_utility"] for r in rows)
