"""`alignlab lab export --world shapes`: PNG images plus TRL vision JSONL, deterministic."""

import json

from PIL import Image

from alignlab.cli import main
from alignlab.lab.shapes import Scene, ShapesPrompt, ShapesWorld, gold_score, read_back
from alignlab.lab.shapes.export import export_shapes

SIZES = {"n_train": 12, "n_valid": 5, "n_heldout": 7}


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def folder_bytes(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}  # fmt: skip


def text_of(turn):
    return next(part["text"] for part in turn["content"] if part["type"] == "text")


def test_export_writes_trl_vision_rows_with_relative_image_paths(tmp_path):
    paths = export_shapes(tmp_path, seed=0, image_size=80, **SIZES)
    assert {p.name for p in tmp_path.iterdir()} == {
        "images", "sft.jsonl", "captions.jsonl", "preference.jsonl", "train_prompts.jsonl",
        "valid_prompts.jsonl",
        "heldout_prompts.jsonl", "manifest.json",
    }  # fmt: skip
    assert len(list((tmp_path / "images").iterdir())) == 12 + 5 + 7
    sft = rows(paths["sft"])
    assert len(sft) == 12 and sft[3]["images"] == ["images/train_00003.png"]
    for row in sft:
        user, assistant = row["messages"]
        assert user["role"] == "user" and user["content"][0] == {"type": "image"}
        assert assistant == {
            "role": "assistant",
            "content": [{"type": "text", "text": row["answer"]}],
        }
        image = Image.open(tmp_path / row["images"][0])  # relative to the export folder
        assert image.size == (80, 80)
        assert read_back(image) == Scene.from_record(row["scene"])
    captions = rows(paths["captions"])
    assert [r["images"] for r in captions] == [r["images"] for r in sft]
    assert all(r["type"] == "caption" and text_of(r["messages"][1])[0].isupper() for r in captions)
    for split in ("valid", "heldout"):
        prompts = rows(paths[f"{split}_prompts"])
        assert len(prompts) == SIZES[f"n_{split}"]
        for i, row in enumerate(prompts):
            assert row["images"] == [f"images/{split}_{i:05d}.png"] and row["split"] == split
            prompt = ShapesPrompt.from_record(row)  # gold recomputed from the row alone
            assert gold_score(prompt, row["answer"]).correct
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["rows"] == {
        "sft": 12, "captions": 12, "preference": 12, "train_prompts": 12, "valid_prompts": 5,
        "heldout_prompts": 7,
    }  # fmt: skip
    assert manifest["images"] == {"train": 12, "valid": 5, "heldout": 7}
    assert manifest["image_size"] == 80 and manifest["world"] == "shapes"


def test_preference_rows_pair_the_gold_answer_with_a_corrupted_one(tmp_path):
    paths = export_shapes(tmp_path, seed=2, n_train=60, n_valid=0, n_heldout=0)
    corruptions = set()
    for row in rows(paths["preference"]):
        assert set(row) >= {"images", "prompt", "chosen", "rejected", "type", "scene"}
        assert row["prompt"][0]["content"][0] == {"type": "image"}
        prompt = ShapesPrompt(
            Scene.from_record(row["scene"]), text_of(row["prompt"][0]), row["type"],
            "train", row["answer"], row["gold"],
        )  # fmt: skip
        assert gold_score(prompt, text_of(row["chosen"][0])).correct
        assert not gold_score(prompt, text_of(row["rejected"][0])).correct
        corruptions.add(row["corruption"])
    assert {"wrong_count", "hallucinated_object"} <= corruptions


def test_heldout_images_show_no_train_triple(tmp_path):
    export_shapes(tmp_path, seed=0, n_train=150, n_valid=0, n_heldout=60)
    triples = {}
    for split in ("train", "heldout"):
        triples[split] = {
            s.triple
            for path in sorted((tmp_path / "images").glob(f"{split}_*.png"))
            for s in read_back(Image.open(path)).shapes
        }
    assert triples["heldout"] and not triples["heldout"] & triples["train"]


def test_re_export_is_byte_identical_and_drops_stale_images(tmp_path):
    first, again = tmp_path / "a", tmp_path / "b"
    export_shapes(first, seed=1, **SIZES)
    export_shapes(again, seed=1, **SIZES)
    assert folder_bytes(first) == folder_bytes(again)
    export_shapes(again, seed=1, **SIZES)  # over itself
    assert folder_bytes(first) == folder_bytes(again)
    export_shapes(again, seed=1, n_train=4, n_valid=5, n_heldout=7)
    assert sorted(p.name for p in (again / "images").glob("train_*")) == [
        f"train_{i:05d}.png" for i in range(4)
    ]
    assert not list(again.rglob(".*tmp*"))  # no temporary files left behind
    assert ShapesWorld(1).prompts("train", 3) != ShapesWorld(2).prompts("train", 3)


def test_cli_exports_the_shapes_world_and_names_a_bad_image_size(tmp_path, capsys):
    out = tmp_path / "shapes"
    argv = ["lab", "export", "--world", "shapes", "--out", str(out), "--n-train", "3"]
    assert main([*argv, "--n-heldout", "2", "--image-size", "64"]) == 0
    assert json.loads((out / "manifest.json").read_text())["rows"]["heldout_prompts"] == 2
    assert Image.open(out / "images" / "train_00000.png").size == (64, 64)
    for size in ("300", "63"):
        assert main([*argv, "--image-size", size]) == 2
        assert f"--image-size {size}: must be 64-224" in capsys.readouterr().err
    text = ["lab", "export", "--out", str(tmp_path / "text"), "--image-size", "96"]
    assert main(text) == 2
    assert "--image-size applies to --world shapes only" in capsys.readouterr().err
