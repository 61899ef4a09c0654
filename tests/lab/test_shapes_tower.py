"""The lab's vision tower (CLIP loss, contrastive pretraining, cache) and the lab's LLaVA
(the tower and an LM joined by a fresh projector: weights kept, loads as a hub LLaVA)."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

from alignlab.cli import main
from alignlab.config import ConfigError, ModelConfig, UserInputError
from alignlab.lab.shapes import ShapesWorld, caption, render
from alignlab.lab.shapes import tower as tower_module
from alignlab.lab.shapes.llava import build_lab_llava, image_aware_template
from alignlab.lab.shapes.tower import (
    VOCAB,
    TowerConfig,
    caption_ids,
    pretrain_tower,
    read_tower_metrics,
)
from alignlab.losses.contrastive import clip_contrastive_loss
from alignlab.models.vlm import IMAGE_TOKEN, find_part, load_vlm

TINY = {
    "hidden_size": 32, "num_layers": 2, "text_hidden_size": 32, "text_layers": 1,
    "projection_dim": 32, "steps": 30, "batch_size": 32, "lr": 2e-3, "warmup_steps": 5,
    "n_eval": 64, "eval_batch_size": 32, "n_probe": 64, "log_every": 10, "progress": False,
}  # fmt: skip
TINY_CFG = TowerConfig(**TINY)


def softplus_of_minus(x):
    """-log sigmoid(x) = log(1 + e^-x): a 2-way cross-entropy with margin x."""
    return math.log1p(math.exp(-x))


# --- the loss -----------------------------------------------------------------------------


def test_clip_loss_matches_values_worked_by_hand():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # s = 2: logits 2 * [[1, 0.6], [0, 0.8]] = [[2, 1.2], [0, 1.6]]
    loss = clip_contrastive_loss(images, texts, torch.tensor(math.log(2.0)))
    image_to_text = [softplus_of_minus(2 - 1.2), softplus_of_minus(1.6 - 0)]  # rows
    text_to_image = [softplus_of_minus(2 - 0), softplus_of_minus(1.6 - 1.2)]  # columns
    expected = torch.tensor([(a + b) / 2 for a, b in zip(image_to_text, text_to_image)])
    torch.testing.assert_close(loss, expected)
    assert loss.tolist() == pytest.approx([0.249014, 0.348458], abs=1e-6)


def test_clip_loss_normalises_its_inputs_and_clips_the_scale_at_100():
    images, texts = torch.randn(5, 8), torch.randn(5, 8)
    base = clip_contrastive_loss(images, texts, torch.tensor(1.0))
    scaled = clip_contrastive_loss(3 * images, 0.5 * texts, torch.tensor(1.0))
    torch.testing.assert_close(scaled, base)
    at_100 = clip_contrastive_loss(images, texts, torch.tensor(math.log(100.0)))
    beyond = clip_contrastive_loss(images, texts, torch.tensor(math.log(1e4)))
    torch.testing.assert_close(beyond, at_100)
    # identical unit pairs, orthogonal to the rest, scale 100: every loss ~ 4 e^-100 ~ 0
    eye = torch.eye(4)
    assert clip_contrastive_loss(eye, eye, torch.tensor(math.log(100.0))).max() < 1e-6


# --- captions and pretraining -------------------------------------------------------------


def test_caption_ids_end_each_caption_with_the_end_token_and_refuse_unknown_words():
    scenes = ShapesWorld(0).scenes("train", 20)
    ids, mask = caption_ids([caption(s) for s in scenes])
    lengths = mask.sum(1)
    assert (ids[torch.arange(20), lengths - 1] == VOCAB.index("<eos>")).all()
    assert (ids[mask == 0] == VOCAB.index("<pad>")).all()
    with pytest.raises(ValueError, match="outside the shapes grammar"):
        caption_ids(["A large red hexagon in the center."])


@pytest.fixture(scope="module")
def tower_run(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("tower") / "tower"
    return run, pretrain_tower(run, TINY_CFG)


def test_pretraining_lowers_the_contrastive_loss_and_saves_a_loadable_tower(tower_run):
    run, folder = tower_run
    metrics = read_tower_metrics(folder)
    assert metrics["final"]["loss"] < metrics["initial"]["loss"] - 0.2
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [10, 20, 30]
    tower = CLIPVisionModel.from_pretrained(folder)
    assert tower.config.image_size == 64 and tower.config.hidden_size == 32
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert tower(pixel_values=pixels).last_hidden_state.shape == (1, 65, 32)  # CLS + 8x8
    assert (folder / "preprocessor_config.json").is_file()


def test_a_finished_tower_is_reused_and_a_changed_config_retrains(tower_run, monkeypatch):
    run, folder = tower_run
    calls = []
    monkeypatch.setattr(tower_module, "_pretrain", lambda *args: calls.append(args) or folder)
    assert pretrain_tower(run, TowerConfig(**{**TINY, "progress": True})) == folder
    assert calls == []  # the progress bar is not part of what the tower is made from
    pretrain_tower(run, TowerConfig(**{**TINY, "steps": 31}))
    assert len(calls) == 1


def test_bad_tower_options_name_the_field():
    with pytest.raises(ConfigError, match="patch_size=7"):
        pretrain_tower("unused", TowerConfig(patch_size=7))
    with pytest.raises(ConfigError, match="image_size"):
        pretrain_tower("unused", TowerConfig(image_size=32))


# --- the LLaVA ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llava(tower_run, tiny_model_dir, tmp_path_factory):
    _, tower = tower_run
    out = build_lab_llava(tower, tiny_model_dir, tmp_path_factory.mktemp("llava") / "llava")
    model, processor = load_vlm(ModelConfig(path=str(out)))
    return model.eval(), processor


def test_llava_text_logits_are_the_lms_and_its_tower_is_the_towers(
    llava, tower_run, tiny_model_dir
):
    model, processor = llava
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    vocab = lm.config.vocab_size
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 3 plus 4?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = processor.tokenizer(text, return_tensors="pt").input_ids
    assert ids.max() < vocab  # a text prompt holds no <image>
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, lm(input_ids=ids).logits
    assert ours.shape[-1] == vocab + 1  # <image> added
    tolerance = 16 * torch.finfo(torch.float32).eps * theirs.abs().max().item()
    torch.testing.assert_close(ours[..., :vocab], theirs, atol=tolerance, rtol=0)
    source = CLIPVisionModel.from_pretrained(tower_run[1]).state_dict()
    built = find_part(model, "tower").state_dict()
    assert built.keys() == source.keys()
    assert all(torch.equal(built[k], source[k]) for k in source)
    # the new row is the mean of the LM's rows (the output head is tied to it)
    embeddings = model.get_input_embeddings().weight
    torch.testing.assert_close(embeddings[vocab], lm.get_input_embeddings().weight.mean(0))


def test_llava_sees_a_rendered_scene_through_one_token_per_patch(llava):
    model, processor = llava
    assert processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_index
    assert model.config.vision_feature_layer == -2
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\n<image>Hi?<|im_end|>\n")
    scene = ShapesWorld(0).scenes("valid", 1)[0]
    inputs = processor(text=[text], images=[render(scene, 64)], return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_index).sum() == 64  # (64 / 8)^2
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    assert model.generation_config.eos_token_id == [
        processor.tokenizer.eos_token_id, processor.tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]  # fmt: skip


def test_image_aware_template_keeps_chatml_text_rendering_and_refuses_other_templates(
    tiny_model_dir,
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Yo."}]
    template = image_aware_template(tokenizer, "lm_dir=x")
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
    )
    tokenizer.chat_template = "{% for m in messages %}### {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(UserInputError, match="lm_dir=x: its chat template renders no image"):
        image_aware_template(tokenizer, "lm_dir=x")


def test_wrong_folders_are_config_errors_naming_the_argument(tower_run, tiny_model_dir, tmp_path):
    _, tower = tower_run
    out = tmp_path / "llava"
    with pytest.raises(ConfigError, match="tower_dir=.*missing: no such folder"):
        build_lab_llava(tmp_path / "missing", tiny_model_dir, out)
    with pytest.raises(ConfigError, match="lm_dir=.*missing: no such folder"):
        build_lab_llava(tower, tmp_path / "missing", out)
    with pytest.raises(ConfigError, match="tower_dir=.*a llama model, not a CLIP vision tower"):
        build_lab_llava(tiny_model_dir, tiny_model_dir, out)
    with pytest.raises(ConfigError, match="lm_dir=.*no tokenizer"):
        build_lab_llava(tower, tower, out)
    assert not out.exists()


def test_cli_builds_tower_and_llava_once(tower_run, tiny_model_dir, tmp_path, capsys):
    run, _ = tower_run
    argv = ["lab", "vlm", "--lm", str(tiny_model_dir), "--out", str(tmp_path), "--tower", str(run)]
    overrides = [f"{k}={v}" for k, v in TINY.items()]
    assert main([*argv, *overrides]) == 0
    assert (tmp_path / "llava" / "config.json").is_file()
    stamp = (tmp_path / "llava" / "model.safetensors").stat().st_mtime_ns
    assert main([*argv, *overrides]) == 0
    assert (tmp_path / "llava" / "model.safetensors").stat().st_mtime_ns == stamp
    assert "cached in" in capsys.readouterr().out
    assert main([*argv, "stepz=3"]) == 2
    assert "stepz" in capsys.readouterr().err
