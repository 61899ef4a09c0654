"""The lab's LLaVA: the shapes-pretrained vision tower (`alignlab.lab.shapes.tower`) and the
lab's own language model, joined by a freshly initialised projector, so that stage 1 starts,
as in LLaVA, from two halves that were never trained together.

LLaVA (Liu et al. 2023, "Visual Instruction Tuning", arXiv:2304.08485) puts the projected
patch features of a CLIP tower where the prompt has image tokens, and its stage 1 trains the
projector alone on caption pairs to align the two. `build_lab_llava` assembles:

- the tower's weights, exactly, from a CLIPVisionModel folder (the projector reads layer
  `tower.FEATURE_LAYER`, the second last as in LLaVA, patches only: "default" strategy);
- the LM's weights, exactly, from a causal-LM folder (the lab's Llama, or any whose config
  LlavaConfig accepts), with `<image>` added to its tokenizer as a special token and one
  embedding row (and output row, where untied) initialised to the mean of the existing rows.
  Text-only prompts never hold `<image>`, so their logits are the LM's over its own vocab;
- a GELU MLP projector from `torch.manual_seed(seed)`;
- the LM's chat template where it renders image parts already; else, where the LM's template
  is ChatML (it renders text conversations exactly as `default_vlm_chat_template` does), that
  image-aware ChatML, so a text conversation renders as the LM was trained on; else an error;
- the processor of `vlm_tiny.llava_processor` (CLIP preprocessing at the tower's image size,
  one image token per patch) and the LM's stop tokens (`set_chat_stop_tokens`).

The model is built and saved in float32 (`vlm_tiny.save_vlm`, atomically); the folder loads with
`AutoModelForImageTextToText` / `AutoProcessor` (`alignlab.models.vlm.load_vlm`).

`lab_vlm(lm, out, tower_cfg)` is `alignlab lab vlm`: the tower (cached in out/tower) and
then the LLaVA (cached in out/llava).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from alignlab.config import ConfigError, UserInputError
from alignlab.lab.shapes.tower import FEATURE_LAYER, TowerConfig, pretrain_tower
from alignlab.models.folders import check_model_source
from alignlab.models.tiny import set_chat_stop_tokens
from alignlab.models.vlm import (
    IMAGE_TOKEN,
    PROBE,
    default_vlm_chat_template,
    ensure_vlm_chat_template,
    find_part,
)
from alignlab.models.vlm_tiny import llava_processor, save_vlm
from alignlab.recipes.stages import cached, input_stamp, stage_key

# Text conversations a ChatML template must render exactly as the image-aware ChatML does.
TEXT_PROBES = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 2 plus 2?"},
    ]
]


def build_lab_llava(
    tower_dir: str | Path, lm_dir: str | Path, out_dir: str | Path, seed: int = 0
) -> Path:
    """Assemble the LLaVA of `tower_dir`'s CLIPVisionModel and `lm_dir`'s causal LM with a
    projector initialised from `seed` (module docstring); save it to `out_dir` and return it.
    A folder that is not a vision tower / causal LM is a ConfigError naming the argument."""
    tower_config = _checked_config(tower_dir, "tower_dir")
    if not isinstance(tower_config, CLIPVisionConfig):
        raise ConfigError(
            f"tower_dir={tower_dir}: a {tower_config.model_type} model, not a CLIP vision tower "
            "(a CLIPVisionModel folder, as alignlab.lab.shapes.tower.pretrain_tower saves)"
        )
    lm_config = _checked_config(lm_dir, "lm_dir", tokenizer=True)
    if lm_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"lm_dir={lm_dir}: a {lm_config.model_type} model, not a causal LM")

    # --- the two halves, in float32 -------------------------------------------------------
    tower = CLIPVisionModel.from_pretrained(tower_dir, dtype=torch.float32)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    template = image_aware_template(tokenizer, f"lm_dir={lm_dir}")
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
        )
    tokenizer.chat_template = template
    add_mean_rows(lm, len(tokenizer))

    # --- the LLaVA: fresh projector, the halves' weights copied in ----------------------------
    text_config = lm.config
    text_config.pad_token_id = tokenizer.pad_token_id
    config = LlavaConfig(
        vision_config=tower.config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",  # drop CLS: one token per patch
        vision_feature_layer=FEATURE_LAYER,
        projector_hidden_act="gelu",
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    find_part(model, "tower").load_state_dict(tower.state_dict())
    find_part(model, "llm").load_state_dict(lm.get_decoder().state_dict())
    model.get_output_embeddings().load_state_dict(lm.get_output_embeddings().state_dict())
    set_chat_stop_tokens(model, tokenizer)

    processor = llava_processor(tokenizer, tower.config.image_size, tower.config.patch_size)
    ensure_vlm_chat_template(processor, f"lm_dir={lm_dir}")
    return save_vlm(out_dir, model, processor)


def _checked_config(folder: str | Path, field: str, tokenizer: bool = False) -> Any:
    """The config of the local model folder `folder` (argument `field`), or a ConfigError."""
    if not Path(folder).expanduser().is_dir():
        raise ConfigError(f"{field}={folder}: no such folder")
    check_model_source(str(folder), field, tokenizer=tokenizer)
    return AutoConfig.from_pretrained(folder)


def add_mean_rows(lm: Any, vocab_size: int) -> None:
    """Grow `lm`'s embedding (and untied output) matrix to `vocab_size` rows, each new row the
    mean of the existing ones: a new token starts where the average token is, not at a random
    point whose logit could dominate (J. Hewitt 2021, "Initializing new word embeddings for
    pretrained language models", blog post)."""
    old = lm.get_input_embeddings().num_embeddings
    if vocab_size <= old:
        return
    lm.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        modules = (lm.get_input_embeddings(), lm.get_output_embeddings())
        matrices = {id(m.weight): m.weight for m in modules if m is not None}  # tied: once
        for weight in matrices.values():
            weight[old:] = weight[:old].mean(0)


def image_aware_template(tokenizer: Any, source: str) -> str:
    """`tokenizer`'s chat template if it renders an image part as `<image>`; else
    `default_vlm_chat_template` where that renders text conversations exactly as the
    tokenizer's template does (ChatML); else a UserInputError naming `source`."""
    own = getattr(tokenizer, "chat_template", None)
    if not own:
        raise UserInputError(
            f"{source}: the tokenizer has no chat template; give the folder a "
            "chat_template.jinja (the image-aware one is made from it)"
        )
    try:
        rendered = tokenizer.apply_chat_template(PROBE, tokenize=False, image_token=IMAGE_TOKEN)
    except Exception:  # noqa: BLE001 - a text-only template fails on a list of parts
        rendered = ""
    if IMAGE_TOKEN in rendered:
        return own
    chatml = default_vlm_chat_template(tokenizer)
    for messages in TEXT_PROBES:
        for add_generation_prompt in (False, True):
            kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
            theirs = tokenizer.apply_chat_template(messages, **kwargs)
            ours = tokenizer.apply_chat_template(messages, chat_template=chatml, **kwargs)
            if theirs != ours:
                raise UserInputError(
                    f"{source}: its chat template renders no image parts and is not ChatML, so "
                    "no image-aware version of it is known; give the folder a "
                    f"chat_template.jinja that renders {{'type': 'image'}} parts as {IMAGE_TOKEN}"
                )
    return chatml


def lab_vlm(
    lm_dir: str | Path,
    out_dir: str | Path,
    tower_cfg: TowerConfig | None = None,
    tower_run: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """`alignlab lab vlm`: pretrain the tower into `tower_run` (default out/tower; cached),
    then build the LLaVA into out/llava (cached on the tower's and the LM's weight files)."""
    out = Path(out_dir)
    tower = pretrain_tower(tower_run or out / "tower", tower_cfg)
    key = stage_key("lab_llava", tower, input_stamp(tower), lm_dir, input_stamp(lm_dir), seed)
    return cached(
        out, key, out / "llava", lambda: build_lab_llava(tower, lm_dir, out / "llava", seed)
    )
