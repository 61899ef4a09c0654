"""The tiny LLaVA (build, save, reload, forward, generate), `load_vlm` and `set_trainable`."""

import shutil
import sys

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from alignlab.config import ConfigError, LoraConfig, ModelConfig, UserInputError
from alignlab.models.vlm import load_vlm, set_trainable
from alignlab.models.vlm_tiny import image_token_count, save_vlm, tiny_llava

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Shape?"}]}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(in-memory model, processor, the folder they were saved to)."""
    torch.set_num_threads(1)
    model, processor = tiny_llava(image_size=32, patch_size=8)
    folder = save_vlm(tmp_path_factory.mktemp("vlm") / "tiny-llava", model, processor)
    return model.eval(), processor, folder


def _inputs(processor, size=(40, 24)):
    text = processor.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    image = Image.new("RGB", size, (200, 30, 30))
    return processor(text=[text], images=[image], return_tensors="pt")


def test_reloaded_model_computes_what_the_built_one_does(built):
    model, processor, folder = built
    reloaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    reprocessor = AutoProcessor.from_pretrained(folder)
    inputs = _inputs(processor)
    assert torch.equal(_inputs(reprocessor)["input_ids"], inputs["input_ids"])
    assert torch.equal(_inputs(reprocessor)["pixel_values"], inputs["pixel_values"])
    with torch.no_grad():
        logits = model(**inputs).logits
        again = reloaded(**inputs).logits
    assert torch.isfinite(logits).all()
    # same weights, same kernels: equal up to fp32 rounding of the largest logit
    tolerance = 16 * torch.finfo(torch.float32).eps * logits.abs().max().item()
    torch.testing.assert_close(again, logits, atol=tolerance, rtol=0)


def test_processor_expands_image_tokens_to_the_towers_patch_count(built):
    model, processor, _ = built
    inputs = _inputs(processor, size=(50, 70))  # any size: resized and cropped to 32 x 32
    count = (inputs["input_ids"] == model.config.image_token_index).sum().item()
    assert count == image_token_count(32, 8) == 16
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"])
    features = getattr(features, "pooler_output", features)
    features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
    assert features.reshape(-1, model.config.text_config.hidden_size).shape[0] == count
    # the PIL/numpy path: nothing imported torchvision (it does not import beside this torch)
    assert "torchvision" not in sys.modules


def test_generation_adds_tokens(built):
    model, processor, _ = built
    inputs = _inputs(processor)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_load_vlm_dtype_pad_and_template(built):
    _, _, folder = built
    model, processor = load_vlm(ModelConfig(path=str(folder), dtype="bf16"))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert processor.tokenizer.pad_token_id is not None
    text = processor.apply_chat_template(MESSAGES, tokenize=False)
    assert "<image>" in text


def test_load_vlm_gives_a_folder_without_template_the_default(built, tmp_path):
    _, _, folder = built
    bare = shutil.copytree(folder, tmp_path / "bare")
    (bare / "chat_template.jinja").unlink()
    assert AutoProcessor.from_pretrained(bare).chat_template is None
    _, processor = load_vlm(ModelConfig(path=str(bare)))
    text = processor.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n<image>Shape?<|im_end|>\n<|im_start|>assistant\n"


def test_load_vlm_refuses_a_template_that_drops_images(built, tmp_path):
    _, _, folder = built
    text_only = shutil.copytree(folder, tmp_path / "text-only")
    (text_only / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    )
    with pytest.raises(UserInputError, match="does not render an image part"):
        load_vlm(ModelConfig(path=str(text_only)))


def test_load_vlm_bad_source_and_unsupported_settings(built, tmp_path):
    _, _, folder = built
    with pytest.raises(UserInputError, match="cannot load the processor"):
        load_vlm(ModelConfig(path=str(tmp_path)))  # an empty folder
    with pytest.raises(ConfigError, match="not supported for vision-language"):
        load_vlm(ModelConfig(path=str(folder), lora=LoraConfig(enabled=True)))


def test_set_trainable_counts_and_flags(built):
    model, _, _ = built
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    tower = sum(p.numel() for p in model.model.vision_tower.parameters())
    counts = set_trainable(model, tower=False, projector=True, llm=False)
    assert counts == {"tower": 0, "projector": projector, "llm": 0, "other": 0}
    assert not any(p.requires_grad for p in model.model.language_model.parameters())
    assert not model.lm_head.weight.requires_grad
    counts = set_trainable(model, tower=True, projector=True, llm=True)
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert counts["tower"] == tower and sum(counts.values()) == total
    assert all(p.requires_grad for p in model.parameters())


def test_set_trainable_names_a_model_without_the_part(tiny_model_dir):
    llm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(UserInputError, match="LlamaForCausalLM has no projector"):
        set_trainable(llm, tower=False, projector=True, llm=True)


def test_a_text_model_folder_is_refused_by_name(tiny_model_dir):
    from alignlab.config import ModelConfig, UserInputError
    from alignlab.models.vlm import load_vlm_processor

    with pytest.raises(UserInputError, match="no image-text processor"):
        load_vlm_processor(ModelConfig(path=str(tiny_model_dir)))
