"""A pipeline stage is reused only when it was made from the same inputs, the preset's text
included: editing a preset retrains."""

from alignlab.lab.pipeline import recipe_stage


def test_stage_reruns_when_its_preset_text_changes(tiny_model_dir, sft_file, tmp_path, capsys):
    preset = tmp_path / "tiny_sft.yaml"
    preset.write_text("train:\n  max_steps: 1\n  lr: 1.0e-4\n")
    args = [
        f"model.path={tiny_model_dir}", f"data.path={sft_file}", "train.progress=false",
        "train.tensorboard=false", "train.micro_batch_size=4",
    ]  # fmt: skip
    out = tmp_path / "run"
    final = recipe_stage("sft", str(preset), args, out)
    assert (final / "model.safetensors").exists() and "cached" not in capsys.readouterr().out
    recipe_stage("sft", str(preset), args, out)
    assert "cached in" in capsys.readouterr().out
    preset.write_text("train:\n  max_steps: 1\n  lr: 2.0e-4\n")
    recipe_stage("sft", str(preset), args, out)
    assert "cached" not in capsys.readouterr().out
