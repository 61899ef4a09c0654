import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignlab.data import sources
from alignlab.data.report import DataReport
from alignlab.data.schema import DataError, Record
from alignlab.data.sources import load_records

ROWS = [
    {"prompt": "The sky is", "completion": " blue."},
    {"prompt": "Grass is", "completion": " green."},
    {"prompt": "Snow is", "completion": " white."},
]
CHAT_ROWS = [
    {
        "messages": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ]
    },
]


def test_jsonl_lines_are_numbered_and_blank_lines_skipped(write_jsonl):
    path = write_jsonl([ROWS[0], "", "   ", ROWS[1], ROWS[2]])
    records = load_records(path)
    assert [r.data for r in records] == ROWS
    assert [r.line for r in records] == [1, 4, 5]
    assert records[1].where() == f"{path}:4"
    assert records[1].source == path


def test_jsonl_max_records(write_jsonl):
    path = write_jsonl(ROWS)
    assert [r.line for r in load_records(path, max_records=2)] == [1, 2]


def test_malformed_jsonl_line_names_the_line(write_jsonl):
    path = write_jsonl([ROWS[0], '{"prompt": "x", "completion": ', ROWS[1]])
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value).startswith(f"{path}:2: malformed JSON")
    assert err.value.line == 2


def test_malformed_jsonl_line_skipped_and_counted(write_jsonl):
    path = write_jsonl([ROWS[0], "{not json", "[1, 2]", ROWS[1]])
    report = DataReport()
    records = load_records(path, on_bad_example="skip", report=report)
    assert [r.line for r in records] == [1, 4]
    assert report.skipped == {"malformed JSON": 1, "not a JSON object": 1}
    assert report.skipped_at["malformed JSON"] == [f"{path}:2"]
    assert report.records == 2  # the two bad lines; parse_examples counts the rest


def test_non_object_line_is_an_error(write_jsonl):
    path = write_jsonl(['"just a string"'])
    with pytest.raises(DataError, match=r":1: expected a JSON object \(one record\), got str"):
        load_records(path)


def test_json_list_and_data_and_split_objects(tmp_path):
    plain = tmp_path / "list.json"
    plain.write_text(json.dumps(ROWS))
    records = load_records(str(plain))
    assert [r.data for r in records] == ROWS
    assert [r.line for r in records] == [1, 2, 3]

    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS, "version": 1}))
    assert [r.data for r in load_records(str(wrapped))] == ROWS

    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": ROWS[:1], "test": ROWS[1:]}))
    assert [r.data for r in load_records(str(splits), split="test")] == ROWS[1:]
    with pytest.raises(DataError, match="'validation' or 'data' list"):
        load_records(str(splits), split="validation")


def test_json_file_holding_json_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert [r.data for r in load_records(str(path))] == ROWS


def test_malformed_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"prompt": "a",\n "completion": }]')
    with pytest.raises(DataError, match=r"bad\.json:2: malformed JSON"):
        load_records(str(path))


def test_parquet_round_trip(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(CHAT_ROWS), path)
    records = load_records(str(path))
    assert [r.line for r in records] == [1, 2]
    # struct columns get every key; the message lists survive with their roles and contents
    assert records[1].data["messages"][2] == {"role": "assistant", "content": "Hello!"}
    assert len(load_records(str(path), max_records=1)) == 1


def test_saved_dataset_and_dataset_dict(tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    records = load_records(str(folder))
    assert [r.data for r in records] == ROWS
    assert records[2].where() == f"{folder}:3"

    dict_folder = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
    ).save_to_disk(str(dict_folder))
    assert [r.data for r in load_records(str(dict_folder), split="test")] == ROWS[:1]
    assert len(load_records(str(dict_folder), max_records=2)) == 2
    with pytest.raises(
        DataError, match="split 'validation' not found; the saved DatasetDict has test, train"
    ):
        load_records(str(dict_folder), split="validation")


def test_folder_with_split_file(tmp_path, write_jsonl):
    write_jsonl(ROWS, name="test.jsonl")
    records = load_records(str(tmp_path), split="test")
    assert records[0].where() == f"{tmp_path / 'test.jsonl'}:1"
    with pytest.raises(DataError, match="not a folder saved by datasets.save_to_disk"):
        load_records(str(tmp_path), split="train")


def test_missing_local_file_and_unsupported_type(tmp_path):
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file or folder"):
        load_records(str(tmp_path / "missing.jsonl"))
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_records(str(csv))


def test_hub_id_is_a_thin_load_dataset_call(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = sources.load_records("someone/some-dataset", split="test", max_records=2)
    assert calls == [("someone/some-dataset", "test")]
    assert records == [
        Record(ROWS[0], "someone/some-dataset", 1),
        Record(ROWS[1], "someone/some-dataset", 2),
    ]

    def failing(name, split):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(
        DataError, match="someone/x: not a local file or folder.*ConnectionError: offline"
    ):
        sources.load_records("someone/x")
