"""Vision-language reward models: an image-text-to-text model's body with a scalar head, read
at the last real token.

    r(image, x, y) = w · h_T(image, x ⊕ y)

h_T is the final hidden state of `alignlab.models.lm.body_of(vlm)` (for LLaVA its base model,
which puts the projected image features at the image tokens before the decoder runs) at the
last position whose attention_mask is 1 (`alignlab.models.reward.last_token_index`: right or
left padding, whatever the pad id). w is a bias-free linear head H -> 1, initialised as the
text reward head (N(0, 1/(H + 1)), `alignlab.models.reward.init_score_head`). LLaVA-RLHF
(Sun et al., 2023, arXiv:2309.14525) trains its reward model this way: the SFT LLaVA with a
linear head on the last token, fitted with the Bradley-Terry loss (`alignlab vlm_rm`).

transformers has no sequence-classification class for LLaVA-family models, so the saved
folder is the VLM's own folder plus the head:

    config.json, model.safetensors, processor and tokenizer files
                              the VLM, as `AutoModelForImageTextToText` / `AutoProcessor` load
                              it (its LM head is kept, unused by the reward)
    reward_head.safetensors   {"weight": (1, H)}, in the model's dtype
    reward_head.json          {"format": "alignlab-vlm-reward", "version": 1,
                               "hidden_size": H, "pooling": "last_attention_mask"}

`VlmRewardModel.save_pretrained` writes it (so `alignlab.training.checkpoint.save_hf_folder`
saves checkpoints and the final folder atomically, as for any HF model); `load_vlm_reward`
loads it back for inference, `load_vlm_reward_model` for training; `VlmRewardFn` scores RL
rollouts with it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignlab.config import ModelConfig, UserInputError
from alignlab.data.schema import Record
from alignlab.data.vlm import check_vlm_row, collate_vlm
from alignlab.models.forward_inputs import model_inputs
from alignlab.models.lm import body_of
from alignlab.models.reward import HEAD, init_score_head, last_token_index
from alignlab.models.vlm import load_vlm, set_trainable

HEAD_FILE = "reward_head.safetensors"
INFO_FILE = "reward_head.json"
FORMAT = "alignlab-vlm-reward"
VERSION = 1
VLM_PREFIX = "vlm."


class VlmRewardModel(nn.Module):
    """forward(batch) -> (B,) float32 rewards of an image-text batch
    (`alignlab.data.vlm.collate_vlm`: input_ids, attention_mask and the images' pixel_values).

    `vlm`: an image-text-to-text model; `score`: the head (H -> 1), a fresh one (seeded by
    `seed`) when None. An `nn.Module`, so FSDP2 can shard it as the root."""

    def __init__(self, vlm: nn.Module, score: nn.Linear | None = None, seed: int = 0) -> None:
        super().__init__()
        self.vlm = vlm
        fresh = score is None
        if fresh:
            like = vlm.get_input_embeddings().weight  # the decoder's dtype and device
            hidden = vlm.config.get_text_config().hidden_size
            score = nn.Linear(hidden, 1, bias=False, device=like.device, dtype=like.dtype)
        self.score = score  # `HEAD`, the name the text reward head has
        if fresh:
            init_score_head(self, seed)  # as the text reward head, from its own generator

    @property
    def config(self) -> Any:
        return self.vlm.config

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:
            raise ValueError("VlmRewardModel needs an attention_mask to find the last real token")
        hidden = body_of(self.vlm)(
            **model_inputs(self.vlm, batch), use_cache=False
        ).last_hidden_state
        last = last_token_index(attention_mask).to(hidden.device)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
        head = self.score
        # only the B pooled states go through the head; under autocast the matmul runs in the
        # autocast dtype, else in the head's (the model's) dtype
        return head(pooled.to(head.weight.dtype)).squeeze(-1).float()

    def save_pretrained(
        self, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """The folder of the module docstring. `state_dict`: this module's (full, unsharded)
        state, as `save_hf_folder` gathers it; default `self.state_dict()`. The VLM's tied
        weights are one tensor in it, and `save_pretrained` stores the tie as HF does."""
        folder = Path(folder)
        state = state_dict if state_dict is not None else self.state_dict()
        vlm_state = {k[len(VLM_PREFIX) :]: v for k, v in state.items() if k.startswith(VLM_PREFIX)}
        self.vlm.save_pretrained(folder, state_dict=vlm_state)
        weight = state[f"{HEAD}.weight"].detach().to("cpu").contiguous()
        save_file({"weight": weight}, folder / HEAD_FILE)
        info = {
            "format": FORMAT,
            "version": VERSION,
            "hidden_size": int(weight.shape[-1]),
            "pooling": "last_attention_mask",
        }
        (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


# --- loading ---


def is_vlm_reward_folder(path: str | Path) -> bool:
    """Whether `path` is a local folder saved by `VlmRewardModel.save_pretrained`."""
    return (Path(path).expanduser() / INFO_FILE).is_file()


def read_head(folder: Path, vlm: nn.Module) -> nn.Linear:
    """The head saved in `folder`, on `vlm`'s device and in its dtype; a UserInputError naming
    the file when it does not fit the model."""
    try:
        info = json.loads((folder / INFO_FILE).read_text())
        weight = load_file(str(folder / HEAD_FILE))["weight"]
    except (OSError, ValueError, KeyError) as err:
        raise UserInputError(
            f"{folder}: cannot read the reward head ({HEAD_FILE}, {INFO_FILE}): {err}"
        ) from err
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise UserInputError(
            f"{folder / INFO_FILE}: format {info.get('format')!r} version "
            f"{info.get('version')!r}; expected {FORMAT!r} version {VERSION}"
        )
    hidden = vlm.config.get_text_config().hidden_size
    if tuple(weight.shape) != (1, hidden):
        raise UserInputError(
            f"{folder / HEAD_FILE}: head of shape {tuple(weight.shape)}, but the model's "
            f"hidden size is {hidden} (expected (1, {hidden}))"
        )
    like = vlm.get_input_embeddings().weight
    head = nn.Linear(hidden, 1, bias=False, device=like.device, dtype=like.dtype)
    with torch.no_grad():
        head.weight.copy_(weight.to(like.dtype))
    return head


def load_vlm_reward_model(
    cfg: ModelConfig,
    device: torch.device | None = None,
    processor: Any = None,
    weights_from: str | Path | None = None,
    seed: int = 0,
) -> tuple[VlmRewardModel, Any]:
    """(reward model, processor) to train: the VLM at `cfg.path` (or `weights_from`, a
    checkpoint of this run), loaded by `load_vlm`, with the head saved beside it when the
    folder is a VLM reward-model folder, else a fresh head from generator `seed`."""
    source = dataclasses.replace(cfg, path=str(weights_from)) if weights_from else cfg
    vlm, processor = load_vlm(source, device, processor)
    folder = Path(source.path).expanduser()
    score = read_head(folder, vlm) if is_vlm_reward_folder(folder) else None
    return VlmRewardModel(vlm, score, seed), processor


def load_vlm_reward(
    folder: str | Path, device: torch.device | str | None = None, dtype: str = "fp32"
) -> tuple[VlmRewardModel, Any]:
    """(reward model in eval mode, processor) of a saved VLM reward-model folder."""
    if not is_vlm_reward_folder(folder):
        raise UserInputError(
            f"{folder}: not a vision-language reward-model folder (no {INFO_FILE}); train one "
            "with `alignlab vlm_rm`"
        )
    cfg = ModelConfig(path=str(folder), dtype=dtype)
    model, processor = load_vlm_reward_model(cfg, torch.device(device) if device else None)
    return model.eval(), processor


def set_reward_trainable(
    model: VlmRewardModel, tower: bool, projector: bool, llm: bool
) -> dict[str, int]:
    """`alignlab.models.vlm.set_trainable` on the VLM, the head always trained; returns the
    trainable parameter count of each part and of "head". An LM head that is not tied to the
    input embeddings is frozen: the reward never reads it (a tied one trains as the
    embeddings)."""
    counts = set_trainable(model.vlm, tower=tower, projector=projector, llm=llm)
    output = model.vlm.get_output_embeddings()
    tied = output is None or output.weight is model.vlm.get_input_embeddings().weight
    if not tied and output.weight.requires_grad:
        output.weight.requires_grad_(False)
        counts["llm"] -= output.weight.numel()
    head = model.score
    head.requires_grad_(True)
    counts["head"] = sum(p.numel() for p in head.parameters())
    return counts


# --- scoring RL rollouts ---


class VlmRewardFn:
    """A VLM reward-model folder as an RL reward function:

        fn(prompts, responses, extras) -> list[float]

    A prompt is a message list whose user turns may hold {"type": "image"} parts (or a string,
    one user turn); `extras[i]["images"]` are the absolute paths of prompt i's images, one per
    image part (as `alignlab.rl.prompts` passes them). Each (prompt, response) is rendered as
    the training pairs were, prompt + the response as the assistant turn
    (`alignlab.data.vlm.collate_vlm`), and scored at its last token. A sample whose images do
    not match its image parts is a DataError naming the sample.

    Args:
        folder: a VLM reward-model folder (`alignlab vlm_rm`).
        batch_size: sequences per forward.
        max_length: tokens per sequence, image tokens included (the end is cut, as in
            training); 0 = no limit.
        device: where the model runs (default: CUDA when present, else CPU).
        dtype: fp32, bf16 or fp16 weights.
    """

    def __init__(
        self,
        folder: str | Path,
        batch_size: int = 8,
        max_length: int = 0,
        device: torch.device | str | None = None,
        dtype: str = "fp32",
    ) -> None:
        self.folder = Path(folder)
        self.batch_size = batch_size
        self.max_length = max_length or sys.maxsize
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.processor = load_vlm_reward(folder, self.device, dtype)

    def rows(
        self,
        prompts: Sequence[str | list[dict]],
        responses: Sequence[str | list[dict]],
        extras: Sequence[dict] | None,
    ) -> list[Any]:
        """The checked `VlmRow` of each (prompt, response)."""
        extras = list(extras) if extras is not None else [{} for _ in prompts]
        rows = []
        for i, (prompt, response, extra) in enumerate(zip(prompts, responses, extras)):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            if isinstance(response, str):
                response = [{"role": "assistant", "content": response}]
            data = {"messages": list(messages) + list(response), "images": extra.get("images", [])}
            rows.append(check_vlm_row(Record(data, f"reward sample of {self.folder}", i + 1)))
        return rows

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[str | list[dict]],
        responses: Sequence[str | list[dict]],
        extras: Sequence[dict] | None = None,
    ) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        rows = self.rows(prompts, responses, extras)
        scores: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            batch = collate_vlm(
                rows[start : start + self.batch_size], self.processor, self.max_length
            )
            batch = {k: v.to(self.device) for k, v in batch.items()}
            scores += self.model(batch).cpu().tolist()
        return scores
