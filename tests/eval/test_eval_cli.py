"""`alignlab eval` (alignlab.eval.cli.main) on a small prompts file with a --reward callable."""

import json

import pytest

from alignlab.callables import resolve_callable
from alignlab.data.schema import DataError, Record
from alignlab.eval.cli import main, prompt_of


def word_count(prompt, response):
    assert isinstance(prompt, (str, list))
    return float(len(response.split()))


def char_count(prompt, response):
    return float(len(response))


def test_cli_end_to_end(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "What is 1 plus 2?", "family": "math"},
        {"prompt": [{"role": "user", "content": "What is 3 plus 4?"}]},
        {"messages": [{"role": "user", "content": "alpha"}, {"role": "assistant", "content": "x"}]},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report"
    main(
        [
            "--model",
            str(tiny_model_dir),
            "--ref",
            str(tiny_model_dir),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--num-samples",
            "2",
            "--max-new-tokens",
            "5",
            "--device",
            "cpu",
            "--reward",
            f"{__name__}:word_count",
            "--reward",
            f"{__file__}:char_count",
        ]
    )
    printed = capsys.readouterr().out
    assert "| model |" in printed and "| tiny-llama |" in printed
    assert "KL to ref" in printed and "Δ rewards.word_count vs ref (paired t)" in printed
    assert "win rate vs ref (per prompt, Wilson)" in printed and "| separated |" in printed
    for name in ("results.json", "report.md", "report.html", "samples.jsonl"):
        assert (out / name).is_file()
    metrics = json.loads((out / "results.json").read_text())["models"]["tiny-llama"]
    assert metrics["n_samples"] == 6 and metrics["kl"]["mean"] == 0.0
    # the model against itself on the same prompts and seeds: Δ exactly 0, not separated
    assert metrics["paired"]["same_seeds"] and metrics["paired"]["difference"]["mean"] == 0.0
    assert metrics["paired"]["separated"] is False
    assert set(metrics["rewards"]) == {"word_count", "char_count"}  # module and file specs
    assert all(v["mean"] >= 0 for v in metrics["rewards"].values())


def test_prompt_extraction():
    def rec(data):
        return Record(data, "f.jsonl", 1)

    assert prompt_of(rec({"prompt": "hi", "family": "x", "other": [1]})).meta == {"family": "x"}
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert prompt_of(rec({"messages": msgs})).prompt == msgs[:4]
    assert (
        prompt_of(rec({"chosen": "Q: hi A: yes", "rejected": "Q: hi A: no"})).prompt == "Q: hi A:"
    )
    with pytest.raises(DataError, match="no prompt"):
        prompt_of(rec({"text": "just text"}))


def test_resolve_callable_errors():
    assert resolve_callable(f"{__name__}:word_count") is word_count
    with pytest.raises(ValueError, match="module:function"):
        resolve_callable("nocolon")
    with pytest.raises(ValueError, match="no attribute"):
        resolve_callable(f"{__name__}:missing")
