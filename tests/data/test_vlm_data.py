"""VLM rows: reading and checking, completion-only labels, image tokens, padding, truncation."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from alignlab.data.schema import DataError
from alignlab.data.vlm import collate_vlm, read_vlm_rows
from alignlab.models.vlm_tiny import build_tiny_llava, image_token_count

IMAGE_TOKENS = image_token_count(32, 8)  # 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny_llava(tmp_path_factory.mktemp("vlm") / "tiny-llava", image_size=32)


@pytest.fixture
def processor(folder):
    return AutoProcessor.from_pretrained(folder)


def _row(question, answer, images=("images/a.png",)):
    parts = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    return {
        "images": list(images),
        "messages": [
            {"role": "user", "content": parts},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
    }


def _write(tmp_path, rows, name="train.jsonl"):
    (tmp_path / "images").mkdir(exist_ok=True)
    for colour, file in (((255, 0, 0), "a.png"), ((0, 0, 255), "b.png")):
        Image.new("RGB", (40, 30), colour).save(tmp_path / "images" / file)
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_labels_train_exactly_the_assistant_turn(tmp_path, processor):
    rows = read_vlm_rows(_write(tmp_path, [_row("What shape is it?", "A red circle.")]))
    assert rows[0].images == [tmp_path / "images" / "a.png"]
    batch = collate_vlm(rows, processor, max_length=128)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    trained = ids[labels != -100]
    assert processor.tokenizer.decode(trained) == "A red circle.<|im_end|>"
    assert (ids == processor.image_token_id).sum() == IMAGE_TOKENS
    assert (labels[ids == processor.image_token_id] == -100).all()
    assert batch["pixel_values"].shape == (1, 3, 32, 32)


def test_batch_runs_through_the_model_with_a_finite_loss(tmp_path, processor, folder):
    rows = read_vlm_rows(_write(tmp_path, [_row("Shape?", "A circle."), _row("Colour?", "Red.")]))
    model = AutoModelForImageTextToText.from_pretrained(folder)
    with torch.no_grad():
        loss = model(**collate_vlm(rows, processor, max_length=128)).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize("side", ["right", "left"])
def test_two_rows_of_different_lengths_pad_on_the_processors_side(tmp_path, processor, side):
    processor.tokenizer.padding_side = side
    short, long = _row("Shape?", "Red."), _row("Shape?", "A circle.", ["images/a.png"] * 2)
    long["messages"].append({"role": "user", "content": "And its colour, in many words?"})
    long["messages"].append({"role": "assistant", "content": "It is a bright and vivid red."})
    rows = read_vlm_rows(_write(tmp_path, [short, long]))
    batch = collate_vlm(rows, processor, max_length=256)
    alone = [collate_vlm([row], processor, max_length=256) for row in rows]
    lengths = [a["input_ids"].shape[1] for a in alone]
    assert lengths[0] < lengths[1] == batch["input_ids"].shape[1]
    assert batch["pixel_values"].shape[0] == 3  # one image, then two
    mask = batch["attention_mask"][0]
    assert mask.sum() == lengths[0]
    real = slice(None, lengths[0]) if side == "right" else slice(-lengths[0], None)
    pads = ~mask.bool()
    assert bool(mask[real].all())
    assert torch.equal(batch["input_ids"][0][real], alone[0]["input_ids"][0])
    assert torch.equal(batch["labels"][0][real], alone[0]["labels"][0])
    assert (batch["input_ids"][0][pads] == processor.tokenizer.pad_token_id).all()
    assert (batch["labels"][0][pads] == -100).all()
    trained = batch["input_ids"][1][batch["labels"][1] != -100]
    decoded = processor.tokenizer.decode(trained)
    assert decoded == "A circle.<|im_end|>It is a bright and vivid red.<|im_end|>"
    assert (batch["input_ids"][1] == processor.image_token_id).sum() == 2 * IMAGE_TOKENS


def test_completion_only_false_trains_all_but_image_tokens(tmp_path, processor):
    rows = read_vlm_rows(_write(tmp_path, [_row("Shape?", "Red.")]))
    batch = collate_vlm(rows, processor, max_length=128, completion_only=False)
    images = batch["input_ids"][0] == processor.image_token_id
    assert (batch["labels"][0][images] == -100).all()
    assert torch.equal(batch["labels"][0][~images], batch["input_ids"][0][~images])


def test_absolute_image_paths_and_text_only_rows(tmp_path, processor):
    path = _write(tmp_path, [])
    rows = [_row("Shape?", "Red.", [str(tmp_path / "images" / "b.png")]), _row("Hi?", "Hi.", [])]
    rows = read_vlm_rows(_write(tmp_path, rows, "abs.jsonl"))
    assert rows[0].images == [tmp_path / "images" / "b.png"] and rows[1].images == []
    batch = collate_vlm(rows, processor, max_length=128)
    assert batch["pixel_values"].shape[0] == 1 and path.exists()


def test_truncation_keeps_the_image_tokens_and_cuts_the_end(tmp_path, processor):
    row = _row("Shape?", "A circle that is red and round and large and bright.")
    rows = read_vlm_rows(_write(tmp_path, [row]))
    full = collate_vlm(rows, processor, max_length=512)["input_ids"][0]
    first_trained = int((collate_vlm(rows, processor, 512)["labels"][0] != -100).nonzero()[0])
    cut = collate_vlm(rows, processor, max_length=first_trained + 2)
    assert cut["input_ids"].shape[1] == first_trained + 2 < len(full)
    assert torch.equal(cut["input_ids"][0], full[: first_trained + 2])
    assert (cut["input_ids"][0] == processor.image_token_id).sum() == IMAGE_TOKENS
    assert (cut["labels"][0] != -100).sum() == 2


def test_a_budget_without_room_for_images_and_one_trained_token_is_refused(tmp_path, processor):
    path = _write(tmp_path, [_row("Shape?", "A circle.")])
    rows = read_vlm_rows(path)
    first_trained = int((collate_vlm(rows, processor, 512)["labels"][0] != -100).nonzero()[0])
    for budget in (IMAGE_TOKENS, first_trained):  # cuts the image tokens / keeps no answer
        with pytest.raises(DataError, match=f"{path}:1: .*max_length={budget}") as err:
            collate_vlm(rows, processor, max_length=budget)
        assert f"first is token {first_trained + 1}" in str(err.value)


def test_a_missing_image_names_file_line_and_field(tmp_path):
    path = _write(tmp_path, [_row("Shape?", "Red."), _row("Shape?", "Red.", ["images/no.png"])])
    with pytest.raises(DataError, match=f"{path}:2: field 'images\\[0\\]': no such image file"):
        read_vlm_rows(path)


def test_an_image_pil_cannot_read_names_file_line_and_field(tmp_path, processor):
    path = _write(tmp_path, [_row("Shape?", "Red.", ["images/a.png", "images/bad.png"])])
    (tmp_path / "images" / "bad.png").write_text("not a png")
    rows = read_vlm_rows(path)
    with pytest.raises(DataError, match=f"{path}:1: field 'images\\[1\\]': cannot read the image"):
        collate_vlm(rows, processor, max_length=128)


@pytest.mark.parametrize("images", [[], ["images/a.png", "images/b.png"]])
def test_image_parts_and_images_must_match_in_number(tmp_path, images):
    row = _row("Shape?", "Red.")
    row["images"] = images
    path = _write(tmp_path, [row])
    with pytest.raises(DataError, match=f"{path}:1: field 'images': {len(images)} images for 1"):
        read_vlm_rows(path)


def test_bad_parts_name_their_field(tmp_path):
    row = _row("Shape?", "Red.")
    row["messages"][0]["content"][1] = {"type": "video"}
    path = _write(tmp_path, [row])
    with pytest.raises(DataError, match=r":1: field 'messages\[0\].content\[1\]'"):
        read_vlm_rows(path)


def test_reads_and_collates_a_shapes_export(tmp_path, processor):
    from alignlab.lab.shapes.export import export_shapes  # the lab only here, never in core

    files = export_shapes(tmp_path, n_train=2, n_valid=0, n_heldout=0, image_size=64)
    rows = read_vlm_rows(files["sft"])
    batch = collate_vlm(rows, processor, max_length=128)
    assert batch["pixel_values"].shape == (len(rows), 3, 32, 32)  # resized to the tower's size
    for ids, labels, row in zip(batch["input_ids"], batch["labels"], rows):
        answer = row.messages[-1]["content"][0]["text"]
        assert processor.tokenizer.decode(ids[labels != -100]) == answer + "<|im_end|>"


def test_inline_images_in_parquet_collate_as_their_files(tmp_path, processor):
    """A Parquet file as `datasets` writes image columns ({"bytes", "path"} structs) gives the
    same batch as the JSONL naming the files; an entry of another kind is a DataError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        _row("What shape is it?", "A red circle."),
        _row("And this?", "Blue.", ["images/b.png"]),
    ]
    files = read_vlm_rows(_write(tmp_path, rows))
    inline = []
    for row in rows:
        data = [(tmp_path / name).read_bytes() for name in row["images"]]
        inline.append({**row, "images": [{"bytes": b, "path": None} for b in data]})
    pq.write_table(pa.Table.from_pylist(inline), tmp_path / "inline.parquet")
    read = read_vlm_rows(tmp_path / "inline.parquet")
    assert all(isinstance(image, bytes) for row in read for image in row.images)
    a, b = collate_vlm(files, processor, 512), collate_vlm(read, processor, 512)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "odd.jsonl").write_text(json.dumps({**rows[0], "images": [3]}) + "\n")
    with pytest.raises(DataError, match=r"odd.jsonl:1.*images\[0\]"):
        read_vlm_rows(tmp_path / "odd.jsonl")
    garbage = [{**inline[0], "images": [{"bytes": b"not an image", "path": None}]}]
    pq.write_table(pa.Table.from_pylist(garbage), tmp_path / "garbage.parquet")
    with pytest.raises(DataError, match=r"garbage.parquet:1.*images\[0\].*inline image"):
        collate_vlm(read_vlm_rows(tmp_path / "garbage.parquet"), processor, 512)
