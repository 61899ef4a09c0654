"""Load any HF image-text-to-text model (LLaVA-style: vision tower + projector + LLM) and
choose which of its three parts train.

LLaVA (Liu et al., 2023, "Visual Instruction Tuning", arXiv:2304.08485) encodes an image
with a vision tower (CLIP ViT), maps its patch features into the LLM's embedding space with a
small projector, and puts those embeddings where the prompt has image tokens. Its stage 1
trains the projector alone, stage 2 the projector and the LLM; `set_trainable` sets either,
and `load_vlm_for_training` loads a model for a recipe with its parts frozen or LoRA on the
LLM.

Hub ids and local folders take the same `from_pretrained` path (AutoModelForImageTextToText,
AutoProcessor), so the tests that load from a local folder exercise the code a hub id would.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor

from alignlab.config import ConfigError, ModelConfig, UserInputError
from alignlab.data.templates import CHATML_END_OF_TURN, _is_added_token
from alignlab.models.folders import load_error
from alignlab.models.loading import (
    DTYPES,
    apply_lora,
    disable_dropout,
    ensure_pad_token,
    from_pretrained,
    unwrap_peft,
)

IMAGE_TOKEN = "<image>"
"""The image placeholder of LLaVA-family processors (`processor.image_token`)."""


def vlm_chat_template(end_of_turn: str) -> str:
    """ChatML whose content may be a string or a list of parts: an {"type": "image"} part
    renders as the processor's image token, a {"type": "text"} part as its text (the way
    llava-hf templates render parts; Qwen2-VL's ChatML does the same with its own tokens).
    `end_of_turn` is a jinja expression closing every message."""
    return (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ image_token }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ " + end_of_turn + " + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def default_vlm_chat_template(tokenizer: Any, image_token: str = IMAGE_TOKEN) -> str:
    """`vlm_chat_template` for `tokenizer`, with `image_token` written in: turns end with
    `<|im_end|>` where the tokenizer has it as a token of its own, else with its EOS (as the
    text fallback, `alignlab.data.templates.fallback_chat_template`)."""
    if _is_added_token(tokenizer, CHATML_END_OF_TURN):
        end = f"'{CHATML_END_OF_TURN}'"
    elif getattr(tokenizer, "eos_token", None):
        end = "eos_token"
    else:
        raise UserInputError(
            "the processor has no chat template and its tokenizer has neither <|im_end|> nor "
            "an EOS token to end a turn with; give the model folder a chat_template.jinja"
        )
    template = vlm_chat_template(end)
    return "{% set image_token = '" + image_token + "' %}" + template


PROBE = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]


def ensure_vlm_chat_template(processor: Any, source: str) -> None:
    """Give `processor` `default_vlm_chat_template` when it has no chat template, and refuse
    a template that does not render an {"type": "image"} part as the image token (a text-only
    template would drop the image and the model would never see it)."""
    tokenizer = processor.tokenizer
    image_token = getattr(processor, "image_token", None) or IMAGE_TOKEN
    if not getattr(processor, "chat_template", None):
        processor.chat_template = default_vlm_chat_template(tokenizer, image_token)
    if not getattr(tokenizer, "chat_template", None):  # tools that see the tokenizer alone
        tokenizer.chat_template = processor.chat_template
    text = processor.apply_chat_template(PROBE, tokenize=False)
    if not isinstance(text, str):
        text = text[0]
    if image_token not in text:
        raise UserInputError(
            f"the chat template of {source} does not render an image part as the image token "
            f"{image_token!r} (it rendered {text!r}); give the folder a chat_template.jinja "
            "that does"
        )


def load_vlm_processor(cfg: ModelConfig) -> Any:
    """The processor of the image-text-to-text model at `cfg.path` (or `cfg.tokenizer`), with
    a chat template that renders image parts (`ensure_vlm_chat_template`) and a pad token."""
    source = cfg.path
    revision = {"revision": cfg.revision} if cfg.revision else {}
    try:
        processor = AutoProcessor.from_pretrained(
            cfg.tokenizer or source, trust_remote_code=cfg.trust_remote_code, **revision
        )
    except (OSError, ValueError) as err:  # ValueError: a folder with no processor in it
        raise load_error(cfg.tokenizer or source, "processor", err) from err
    except ImportError as err:  # transformers 5's Qwen2-VL family: a video processor
        raise UserInputError(
            f"cannot load the processor of {cfg.tokenizer or source}: it needs a package "
            "this environment lacks (transformers builds the video processor of the Qwen2-VL "
            "family with torchvision); install the torchvision built for your torch (alignlab "
            f"itself reads images with PIL). {' '.join(str(err).split())[:300]}"
        ) from err
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        kind = type(processor).__name__
        raise UserInputError(
            f"{cfg.tokenizer or source} has no image-text processor (it loads a {kind}): the "
            "vision recipes need an image-text-to-text model folder or hub id (a text model "
            "goes to the text recipes; `alignlab lab vlm` builds the lab's LLaVA)"
        )
    ensure_vlm_chat_template(processor, source)
    ensure_pad_token(tokenizer)
    return processor


def load_vlm(
    cfg: ModelConfig, device: torch.device | None = None, processor: Any = None
) -> tuple[nn.Module, Any]:
    """(model, processor) of the image-text-to-text model at `cfg.path`: dtype, revision,
    attention kernel and dropout as `load_model`; the processor from `load_vlm_processor`
    unless given."""
    if cfg.lora.enabled or cfg.gradient_checkpointing:
        raise ConfigError(
            "model.lora.enabled / model.gradient_checkpointing are not supported for "
            "vision-language models yet; set them to false"
        )
    source = cfg.path
    revision = {"revision": cfg.revision} if cfg.revision else {}
    processor = processor if processor is not None else load_vlm_processor(cfg)
    tokenizer = processor.tokenizer
    kwargs: dict[str, Any] = {
        "dtype": DTYPES[cfg.dtype],
        "trust_remote_code": cfg.trust_remote_code,
    }
    if cfg.attn_implementation != "auto":
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = from_pretrained(AutoModelForImageTextToText, source, **kwargs, **revision)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    text_config = model.config.get_text_config()
    text_config.pad_token_id = tokenizer.pad_token_id
    if cfg.disable_dropout:
        disable_dropout(model)
    if device is not None:
        model = model.to(device)
    return model, processor


# --- freezing ---

PARTS: dict[str, tuple[str, ...]] = {
    # the projector first: Qwen2-VL's (`merger`) sits inside its tower and belongs to neither
    # the tower nor the LLM. transformers >= 4.52 nests the parts under `model`; older
    # versions (and some remote-code models) keep them on the top module.
    "projector": (
        "model.multi_modal_projector",  # LLaVA, LLaVA-NeXT, Gemma 3, Mistral 3
        "multi_modal_projector",
        "model.visual.merger",  # Qwen2-VL, Qwen2.5-VL
        "visual.merger",
        "model.connector",  # Idefics3, SmolVLM
        "connector",
    ),
    "tower": (
        "model.vision_tower",
        "vision_tower",
        "model.visual",
        "visual",
        "model.vision_model",
        "vision_model",
    ),
    "llm": ("model.language_model", "language_model", "model.text_model", "text_model"),
}
FAMILIES = "LLaVA, LLaVA-NeXT, Gemma 3, Qwen2-VL and Idefics3 layouts"


def part_path(model: nn.Module, part: str) -> str:
    """The module path of `part` ("tower", "projector" or "llm") in `model`; a
    UserInputError naming the model class and the paths looked at when it has none."""
    for path in PARTS[part]:
        try:
            model.get_submodule(path)
        except AttributeError:
            continue
        return path
    raise UserInputError(
        f"{type(model).__name__} has no {part} (looked for {' / '.join(PARTS[part])}); "
        f"set_trainable knows the {FAMILIES}"
    )


def find_part(model: nn.Module, part: str) -> nn.Module:
    """The submodule of `part` (see `part_path`)."""
    return model.get_submodule(part_path(model, part))


def _part_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The parameters of each part, each once (tied weights count in one part; a part nested
    in another, Qwen2-VL's merger in its tower, counts in the inner one). The LLM includes the
    output head, which sits outside `language_model` when that is the decoder alone
    (transformers >= 4.52). "other": whatever is in no part (LLaVA-NeXT's image_newline)."""
    seen: set[int] = set()
    parts: dict[str, list[nn.Parameter]] = {}
    for part in PARTS:
        modules = [find_part(model, part)]
        head = model.get_output_embeddings() if part == "llm" else None
        if head is not None:
            modules.append(head)
        parts[part] = [p for m in modules for p in m.parameters() if _first(p, seen)]
    parts["other"] = [p for p in model.parameters() if _first(p, seen)]
    return {part: parts[part] for part in ("tower", "projector", "llm", "other")}


def _first(param: nn.Parameter, seen: set[int]) -> bool:
    if id(param) in seen:
        return False
    seen.add(id(param))
    return True


def set_trainable(model: nn.Module, tower: bool, projector: bool, llm: bool) -> dict[str, int]:
    """Set `requires_grad` of the vision tower, the projector and the LLM (with its output
    head); return the trainable parameter count of each part and of "other" (parameters in no
    part, left as they are). LLaVA stage 1: (False, True, False); stage 2: (False, True, True).
    """
    parts = _part_parameters(model)
    for part, flag in (("tower", tower), ("projector", projector), ("llm", llm)):
        for param in parts[part]:
            param.requires_grad_(flag)
    return {part: sum(p.numel() for p in ps if p.requires_grad) for part, ps in parts.items()}


# --- loading for training: frozen parts, or LoRA on the LLM ---


def lora_targets(model: nn.Module, target_modules: list[str]) -> list[str]:
    """Full names of the LLM's linear layers that get adapters (`target_modules`: their last
    name parts, or ["all-linear"]); the tower, the projector and the output head get none."""
    llm = find_part(model, "llm")
    prefix = next(name for name, module in model.named_modules() if module is llm)
    everything = target_modules == ["all-linear"]
    return [
        f"{prefix}.{name}"
        for name, module in llm.named_modules()
        if isinstance(module, nn.Linear)
        and (everything or name.rsplit(".", 1)[-1] in target_modules)
    ]


def load_vlm_for_training(
    cfg: ModelConfig,
    tower: bool,
    projector: bool,
    llm: bool,
    device: torch.device | None = None,
    processor: Any = None,
    weights_from: str | Path | None = None,
) -> tuple[nn.Module, Any, dict[str, int]]:
    """(model, processor, trainable parameters per part) for a recipe: the parts flagged
    train (`set_trainable`). With `cfg.lora.enabled` the LLM trains through LoRA adapters
    on its linear layers (`lora_targets`) and the projector, when it trains, is a fully
    trained module peft saves beside them (modules_to_save); the tower stays frozen. Resuming
    (`weights_from`, a checkpoint of the run): its weights, or with LoRA the base from
    `cfg.path` and the adapter (and projector) from `weights_from/adapter`."""
    lora = cfg.lora
    if not lora.enabled:
        source = dataclasses.replace(cfg, path=str(weights_from)) if weights_from else cfg
        model, processor = load_vlm(source, device, processor)
        return model, processor, set_trainable(model, tower, projector, llm)
    if tower or not llm:
        raise ConfigError(
            "model.lora.enabled: LoRA trains the LLM, so trainable.llm must be true and "
            "trainable.tower false"
        )
    if lora.load_in_4bit:
        raise ConfigError("model.lora.load_in_4bit (QLoRA) is not supported for VLMs yet")
    base = dataclasses.replace(cfg, lora=dataclasses.replace(lora, enabled=False))
    model, processor = load_vlm(base, None, processor)
    set_trainable(model, tower=False, projector=projector, llm=False)
    targets = lora_targets(model, lora.target_modules)
    if not targets:
        raise ConfigError(
            f"model.lora.target_modules={lora.target_modules}: no linear layer of the LLM "
            "has such a name"
        )
    adapter_from = Path(weights_from) / "adapter" if weights_from else None
    model = apply_lora(
        model,
        dataclasses.replace(lora, target_modules=targets),
        adapter_from=adapter_from,
        task_type=None,
        # peft matches by the last name part: multi_modal_projector, merger, connector
        modules_to_save=[part_path(model, "projector").rsplit(".", 1)[-1]] if projector else None,
    )
    if device is not None:
        model = model.to(device)
    parts = _part_parameters(unwrap_peft(model))
    counts = {part: sum(p.numel() for p in ps if p.requires_grad) for part, ps in parts.items()}
    return model, processor, counts


def trainable_summary(counts: dict[str, int]) -> str:
    """The line a recipe prints of `set_trainable` / `load_vlm_for_training`'s counts."""
    return "trainable parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
