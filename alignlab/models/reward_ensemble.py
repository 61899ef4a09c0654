"""Score (prompt, response) pairs with one reward model or an ensemble of K.

    scorer = RewardScorer(["runs/rm-0/final", "runs/rm-1/final"], aggregate="lcb", k=1.0)
    scorer(prompt, response) -> float                       # the eval harness reward_fns hook
    scorer.score_batch(prompts, responses) -> list[float]
    scorer.member_scores(prompts, responses) -> (K, N) tensor

Aggregates over the K members' rewards r_1..r_K of one response (Coste et al. 2023,
"Reward Model Ensembles Help Mitigate Overoptimization", arXiv:2310.02743):
- mean: (1/K) Σ r_k
- min:  min_k r_k                          (their worst-case optimisation, WCO)
- lcb:  mean - k · std, std = sqrt((1/K) Σ (r_k - mean)²)   (population std, so K = 1 gives
        the mean; Coste et al.'s uncertainty-weighted optimisation penalises the variance,
        mean - λ·Var, available as "uwo")
Members are trained with different seeds and, optionally, bootstrap resamples of the pairs
(`alignlab.recipes.rm.train_ensemble`). Their reward scales are whatever training gave them:
train them alike (same recipe, same centring) so that they are comparable.

A prompt is rendered exactly as the training pairs were: a message-list prompt with the chat
template and the response as the assistant turn (end-of-turn marker included); a string
prompt followed by the response and EOS (`alignlab.data.preference.response_segments`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alignlab.data.collate import collate
from alignlab.data.responses import response_segments
from alignlab.data.tokenize import adds_bos, tokenize_segments
from alignlab.models.reward import load_reward_folder, reward_forward

AGGREGATES: tuple[str, ...] = ("mean", "min", "lcb", "uwo")


def aggregate_rewards(scores: torch.Tensor, how: str = "mean", k: float = 1.0) -> torch.Tensor:
    """(K, N) member rewards -> (N,) ensemble rewards (see the module docstring)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be (K, N), got shape {tuple(scores.shape)}")
    scores = scores.double()
    if how == "mean":
        return scores.mean(0)
    if how == "min":
        return scores.min(0).values
    if how == "lcb":
        return scores.mean(0) - k * scores.std(0, correction=0)
    if how == "uwo":
        return scores.mean(0) - k * scores.var(0, correction=0)
    raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")


def response_sequence(
    tokenizer: Any, prompt: str | list[dict], response: str | list[dict]
) -> list[int]:
    """Token ids of `prompt` + `response`, rendered exactly as the reward model's training
    pairs were (`alignlab.data.preference.response_segments`): a message-list prompt gets a
    string response as its assistant turn; a message-list response is used as it is."""
    completion = response
    if isinstance(prompt, list) and isinstance(response, str):
        completion = [{"role": "assistant", "content": response}]
    segments, append_eos = response_segments(tokenizer, prompt, completion)
    ids, _ = tokenize_segments(
        tokenizer, segments, add_bos=adds_bos(tokenizer), append_eos=append_eos
    )
    return ids


class RewardScorer:
    """One or K saved reward-model folders as a reward function `(prompt, response) -> float`.

    Args:
        paths: reward-model folder(s) (`alignlab rm` final folders, or any HF
            sequence-classification folder with num_labels=1). All members must share the
            tokenizer and chat template of the first (it renders the inputs).
        aggregate: how K members' rewards combine: mean, min, lcb (mean - k·std), uwo
            (mean - k·var).
        k: the penalty weight of lcb / uwo.
        batch_size: sequences per forward.
        max_length: keep at most this many tokens, the last ones (the reward is read at the
            last token); 0 = no limit.
        device: where the models run (default: CUDA when present, else CPU).
        dtype: fp32, bf16 or fp16 weights.
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        aggregate: str = "mean",
        k: float = 1.0,
        batch_size: int = 16,
        max_length: int = 0,
        device: torch.device | str | None = None,
        dtype: str = "fp32",
    ) -> None:
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if not paths:
            raise ValueError("RewardScorer needs at least one reward-model folder")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        self.paths = [Path(p) for p in paths]
        self.aggregate = aggregate
        self.k = k
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.models = []
        self.tokenizer = None
        for path in self.paths:
            model, tokenizer = load_reward_folder(path, device=self.device, dtype=dtype)
            self.models.append(model)
            self.tokenizer = self.tokenizer or tokenizer

    def encode(self, prompt: str | list[dict], response: str | list[dict]) -> list[int]:
        ids = response_sequence(self.tokenizer, prompt, response)
        if self.max_length and len(ids) > self.max_length:
            ids = ids[-self.max_length :]
        return ids

    @torch.no_grad()
    def member_scores(
        self, prompts: Sequence[str | list[dict]], responses: Sequence[str | list[dict]]
    ) -> torch.Tensor:
        """(K, N) float32 rewards of every member for every (prompt, response)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        sequences = [self.encode(p, r) for p, r in zip(prompts, responses)]
        out = torch.zeros(len(self.models), len(sequences))
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # less padding
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            rows = [{"input_ids": sequences[i], "labels": sequences[i]} for i in chunk]
            batch = collate(rows, self.tokenizer.pad_token_id)
            batch = {key: batch[key].to(self.device) for key in ("input_ids", "attention_mask")}
            for m, model in enumerate(self.models):
                out[m, chunk] = reward_forward(model, batch).cpu()
        return out

    def score_batch(
        self, prompts: Sequence[str | list[dict]], responses: Sequence[str | list[dict]]
    ) -> list[float]:
        """Aggregated rewards, one per (prompt, response)."""
        if not prompts:
            return []
        scores = self.member_scores(prompts, responses)
        return aggregate_rewards(scores, self.aggregate, self.k).tolist()

    def __call__(self, prompt: str | list[dict], response: str) -> float:
        return self.score_batch([prompt], [response])[0]
