"""Tiny Qwen2-VL, Gemma 3 and Idefics3 built from their configs, with their real processors and
chat templates (the templates as their hub folders ship them), for the tests that check the
vision-language code beyond LLaVA: part names, 3-D rotary positions, token types, image
markers and per-row image counts.

Qwen2-VL's processor cannot be built beside this torch build as transformers ships it: its
video processor needs torchvision, and transformers 5 checks the processor's video slot
against a class it only exports with torchvision. `qwen2_vl` gives that check the mixin it
looks for and the processor a bare video processor it never calls (alignlab feeds images
only); a saved Qwen2-VL folder's processor still needs torchvision to load.
"""

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Gemma3TextConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    SiglipVisionConfig,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from alignlab.models.tiny import train_tokenizer
from alignlab.models.vlm import default_vlm_chat_template
from alignlab.models.vlm_tiny import TEXTS

QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate '
    'user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

FAMILIES = ("qwen2_vl", "gemma3", "idefics3")

# every family's decoder and SigLIP-style tower at the same tiny width
TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}
SIGLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}


def _tokenizer(specials, **extra):
    base = train_tokenizer(TEXTS, vocab_size=300)
    base.add_special_tokens({"additional_special_tokens": specials})
    if not extra:
        return base
    return PreTrainedTokenizerFast(
        tokenizer_object=base._tokenizer,
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        **extra,
    )


def _stop_at(model, tokenizer, end_of_turn):
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids(end_of_turn),
    ]


def qwen2_vl(seed=0):
    """(Qwen2VLForConditionalGeneration, Qwen2VLProcessor): 32 x 32 images of 16 patches of 8
    px, merged 2 x 2 into 4 image tokens; M-RoPE over (time, row, column)."""
    from transformers import processing_utils
    from transformers.video_processing_utils import BaseVideoProcessor, VideoProcessorMixin

    processing_utils.transformers_module.VideoProcessorMixin = VideoProcessorMixin
    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = _tokenizer(specials)
    tokenizer.chat_template = QWEN2_VL_TEMPLATE
    images = Qwen2VLImageProcessorPil(
        min_pixels=32 * 32, max_pixels=32 * 32, patch_size=8, merge_size=2, temporal_patch_size=2
    )
    processor = Qwen2VLProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        video_processor=BaseVideoProcessor(),
        chat_template=QWEN2_VL_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 4,
            "patch_size": 8,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "mlp_ratio": 2,
        },
        text_config={
            **TEXT,
            "vocab_size": len(tokenizer),
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    _stop_at(model, tokenizer, "<|im_end|>")
    return model.eval(), processor


def gemma3(seed=0):
    """(Gemma3ForConditionalGeneration, Gemma3Processor): a SigLIP tower on 32 x 32 images,
    pooled to 4 soft tokens between <start_of_image> and <end_of_image>; the template writes
    <start_of_image> where an image goes and names the assistant "model"."""
    specials = ["<start_of_turn>", "<end_of_turn>"]
    specials += ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tokenizer = _tokenizer(
        specials,
        bos_token="<bos>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    tokenizer.chat_template = GEMMA3_TEMPLATE
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=GEMMA3_TEMPLATE,
        image_seq_length=4,
    )
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(**SIGLIP),
        text_config=Gemma3TextConfig(
            **TEXT,
            vocab_size=len(tokenizer),
            head_dim=8,
            sliding_window=8,  # one sliding layer, one global: the image must reach the answer
            layer_types=["sliding_attention", "full_attention"],
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        mm_tokens_per_image=4,
        image_token_index=tokenizer.image_token_id,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    _stop_at(model, tokenizer, "<end_of_turn>")
    return model.eval(), processor


def idefics3(seed=0):
    """(Idefics3ForConditionalGeneration, Idefics3Processor): a SigLIP tower on 32 x 32 images
    (no splitting), pixel-shuffled into 4 <image> tokens between <fake_token_around_image>
    <global-img> markers; pixel_values are (rows, images, C, H, W)."""
    specials = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    tokenizer = _tokenizer(specials)
    tokenizer.chat_template = default_vlm_chat_template(tokenizer)
    images = Idefics3ImageProcessorPil(
        size={"longest_edge": 32}, max_image_size={"longest_edge": 32}, do_image_splitting=False
    )
    processor = Idefics3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        image_seq_len=4,
    )
    text = LlamaConfig(
        **TEXT,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = Idefics3Config(
        vision_config=SIGLIP,
        text_config=text,
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    _stop_at(model, tokenizer, "<|im_end|>")
    return model.eval(), processor


def build(family, seed=0, std=0.2):
    """(model, processor) of `family`, its matrices drawn with `std`: at HF's 0.02 a random
    model's attention is near uniform, and a wrong position or mask moves its log-probs by
    1e-4; at 0.2 by whole nats, so the tests see it."""
    model, processor = {"qwen2_vl": qwen2_vl, "gemma3": gemma3, "idefics3": idefics3}[family](seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, std, generator=generator)
    return model, processor
