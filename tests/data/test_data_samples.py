import importlib.util
import json

from alignlab.data.schema import parse_examples
from alignlab.data.sources import load_records


def load_generator(sample_path):
    spec = importlib.util.spec_from_file_location(
        "make_sample", sample_path.with_name("make_sample.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_file_is_what_the_script_writes(sample_path):
    generator = load_generator(sample_path)
    assert sample_path.read_text(encoding="utf-8") == generator.render(generator.build_examples())


def test_sample_is_clean_conversational_data(sample_path):
    records = load_records(str(sample_path))
    fmt, examples = parse_examples(records)
    assert fmt == "conversational" and len(examples) == 200
    roles = [[m["role"] for m in ex.messages] for ex in examples]
    assert sum(r[0] == "system" for r in roles) >= 20
    assert sum(r.count("assistant") >= 2 for r in roles) >= 10
    assert all(r[-1] == "assistant" for r in roles)
    contents = [json.dumps(ex.messages) for ex in examples]
    assert len(set(contents)) >= 150  # mostly distinct
    # short: well under ~60 tokens of any real tokenizer
    assert max(sum(len(m["content"]) for m in ex.messages) for ex in examples) < 200
    refusals = [
        ex
        for ex in examples
        if ex.messages[-1]["content"].startswith(("Sorry", "I can't", "I'm sorry"))
    ]
    assert len(refusals) >= 15
