"""A local HF causal LM as a judge: the verdict read from the verdict tokens' logits, no sampling.

    judge = load_local_judge("Qwen/Qwen2.5-0.5B-Instruct")          # or a model folder
    judge = LocalJudge(model, tokenizer, templates=JudgeTemplates(scale="yes_no"))

The judge's conversation (`JudgeTemplates`) is rendered with the tokenizer's chat template and
its generation prompt, then `answer_prefix`; a tokenizer without a chat template gets the
turns' text joined, then `plain_answer_prefix`. One forward gives the next-token logits z at
that answer position, and over the K allowed verdict tokens v_1..v_K

    P(v_k) = exp(z[v_k]) / sum_j exp(z[v_j])

the next-token distribution renormalised over the verdicts (RLAIF, Lee et al. 2023,
arXiv:2309.00267, reads its preference distribution this way). Which token a verdict is
depends on the text before it (" A" and "A" are different tokens in most BPE vocabularies),
so each verdict is found by tokenizing the prompt followed by it: the prompt's tokens are what
every such encoding shares, and each verdict must add exactly one token after them (else a
JudgeError names it: "10" is two tokens in Qwen's and Llama's tokenizers, so the default scale
is 1-5).

Conversations are sorted by length into batches of `batch_size`, left-padded, with positions
counted from each row's first real token (as `alignlab.models.decode` prefills), and each
batch is one forward pass that keeps only the last position's logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from alignlab.config import ModelConfig
from alignlab.data.templates import Messages, has_chat_template, render_messages
from alignlab.data.tokenize import adds_bos, tokenize_segments
from alignlab.judges.base import Judge, JudgeError
from alignlab.judges.templates import JudgeTemplates
from alignlab.models.forward_inputs import forward_arguments
from alignlab.models.generation import (
    inference_mode,
    left_padded,
    length_batches,
    model_device,
    pad_token_id,
    stop_token_ids,
)
from alignlab.models.loading import POSITION_KEYS, load_model, load_tokenizer, unwrap_peft


class LocalJudge(Judge):
    """A causal LM (and its tokenizer) judging through `compare` and `score`.

    `batch_size`: judge conversations per forward pass (a compare of n pairs runs 2n).
    `forward_passes` counts the forwards run so far.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        templates: JudgeTemplates | None = None,
        batch_size: int = 16,
    ) -> None:
        super().__init__(templates)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.forward_passes = 0
        self._adds_bos = adds_bos(tokenizer)
        self._pad_id = pad_token_id(tokenizer, stop_token_ids(model, tokenizer))
        hf_model = unwrap_peft(model)
        self._keep_last = "logits_to_keep" in forward_arguments(type(hf_model))
        config = getattr(hf_model, "config", None)
        limits = (getattr(config, key, None) for key in POSITION_KEYS)
        self._positions = next((v for v in limits if isinstance(v, int) and v > 0), None)

    def judge_text(self, conversation: Messages) -> str:
        """The text the verdict token follows (module docstring)."""
        if has_chat_template(self.tokenizer):
            rendered = render_messages(self.tokenizer, conversation, add_generation_prompt=True)
            return rendered + self.templates.answer_prefix
        text = "\n\n".join(str(m["content"]) for m in conversation)
        return text + self.templates.plain_answer_prefix

    def encode(self, text: str, verdicts: Sequence[str]) -> tuple[list[int], list[int]]:
        """(token ids the model is given, the token id of each verdict after them)."""
        rows = [
            tokenize_segments(self.tokenizer, [(text + v, False)], add_bos=self._adds_bos)[0]
            for v in verdicts
        ]
        shared = _common_prefix(rows)
        for verdict, ids in zip(verdicts, rows):
            if len(ids) != shared + 1:
                pieces = self.tokenizer.convert_ids_to_tokens(ids[shared:])
                raise JudgeError(
                    f"judge verdict {verdict!r} is not one token after the judge prompt: it "
                    f"encodes as {pieces}; choose verdicts that are single tokens (scale 1-5 or "
                    "yes_no) or another answer_prefix / plain_answer_prefix"
                )
        verdict_ids = [ids[-1] for ids in rows]
        if len(set(verdict_ids)) != len(verdict_ids):
            raise JudgeError(f"judge verdicts {list(verdicts)} share a token: {verdict_ids}")
        return rows[0][:shared], verdict_ids

    def verdict_probs(
        self, conversations: Sequence[Messages], verdicts: Sequence[str]
    ) -> list[list[float]]:
        encoded = [self.encode(self.judge_text(c), verdicts) for c in conversations]
        if self._positions is not None:
            for i, (ids, _) in enumerate(encoded):
                if len(ids) > self._positions:
                    raise JudgeError(
                        f"judge prompt {i} has {len(ids)} tokens; the judge model has "
                        f"{self._positions} positions (shorten the prompt or the responses)"
                    )
        probs = torch.zeros(len(encoded), len(verdicts), dtype=torch.float64)
        device = model_device(self.model)
        with inference_mode(self.model):
            for members in length_batches([len(ids) for ids, _ in encoded], self.batch_size):
                input_ids, attention_mask = left_padded(
                    [encoded[i][0] for i in members], self._pad_id
                )
                logits = self._last_logits(
                    input_ids.to(device), attention_mask.to(device)
                )  # (B, V)
                verdict_ids = torch.tensor(
                    [encoded[i][1] for i in members], device=device
                )  # (B, K)
                verdict_logits = logits.float().gather(1, verdict_ids)  # (B, K)
                # softmax over the K logits = the full softmax renormalised over the verdicts
                probs[members] = verdict_logits.double().softmax(-1).cpu()
        return probs.tolist()

    def _last_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, V) next-token logits after each left-padded row: one forward pass."""
        # positions from each row's first real token, so padding does not shift them
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=False,
            **({"logits_to_keep": 1} if self._keep_last else {}),
        )
        self.forward_passes += 1
        return output.logits[:, -1, :]


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix every row shares."""
    shortest = min(len(row) for row in rows)
    for position in range(shortest):
        if any(row[position] != rows[0][position] for row in rows):
            return position
    return shortest


def load_local_judge(
    path: str,
    *,
    tokenizer: str = "",
    dtype: str = "fp32",
    device: torch.device | str | None = None,
    templates: JudgeTemplates | None = None,
    batch_size: int = 16,
    trust_remote_code: bool = False,
    revision: str = "",
) -> LocalJudge:
    """A LocalJudge of a hub id or model folder, loaded as every recipe loads a model
    (`alignlab.models.loading`: a chat template and pad token guaranteed) on `device`
    (default: CUDA when present, else CPU)."""
    cfg = ModelConfig(
        path=path,
        tokenizer=tokenizer,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        revision=revision,
    )
    cfg.check()
    loaded_tokenizer = load_tokenizer(cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(cfg, loaded_tokenizer, device=device)
    model.eval()
    return LocalJudge(model, loaded_tokenizer, templates=templates, batch_size=batch_size)
