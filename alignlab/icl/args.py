"""Reward-guided decoding: ARGS (Khanov et al. 2024, arXiv:2402.01694).

At each step the k most likely next tokens are rescored with the reward model on the prefix
extended by each of them, and the next token is chosen by

    s(v) = log π(v | x, y_<t) + w · r(x, y_<t ⊕ v),        v ∈ top-k of π(. | x, y_<t)

greedily (ARGS-greedy, the paper's default; temperature 0) or sampled from softmax(s / T)
over the k candidates (ARGS-stochastic). With w = 0, greedy ARGS is greedy decoding.

Batched: B prompts x k candidates go through the reward model in one forward per step. The
reward model is causal, so its KV cache of the prefix is kept: each step expands it to B·k
rows, feeds the k candidate tokens (one position each) and keeps the rows of the chosen
tokens, so a step costs one token per candidate, not the whole prefix. The reward model reads
the policy's token ids (the same tokenizer is required) after the policy's rendering of the
prompt, and scores a partial answer as it stands (no end-of-turn appended), as the paper does.

`Generation.sampler_logps` records log π_ARGS(y_t | ·) of each chosen token (0 for greedy),
so KL(π_ARGS ‖ π) can be measured from samples. `top_p` plays no part: the k candidates are
the nucleus.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alignlab.config import ConfigError, UserInputError, option
from alignlab.data.templates import render_prompt
from alignlab.icl.base import (
    Answer,
    Answerer,
    Backend,
    Cost,
    Query,
    Sampling,
    Strategy,
    cut_at_stop,
)
from alignlab.models.decode import cache_argument, returned_cache
from alignlab.models.generation import (
    Generation,
    inference_mode,
    left_padded,
    model_device,
    pad_token_id,
    prompt_token_ids,
    row_uniforms,
    stop_token_ids,
)
from alignlab.models.loading import unwrap_peft
from alignlab.models.reward import load_reward_folder, score_head


@dataclasses.dataclass
class ArgsConfig:
    reward: str = option(
        "", "reward-model folder (a causal LM body with a score head)", kind="model"
    )
    weight: float = option(1.0, "w: the reward's weight against the log-prob", min=0)
    top_k: int = option(10, "candidate tokens rescored per step", min=1)

    def check(self) -> None:
        if not self.reward:
            raise ConfigError("args.reward is required: a reward-model folder")


class RewardPrefixScorer:
    """r(x, y_<t ⊕ v) for the k candidates v of every row, reusing the prefix's KV cache."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.body = unwrap_peft(model).base_model
        self.head = score_head(model)
        self.cache_key = cache_argument(self.body)
        self.cache: Any = None

    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> None:
        out = self.body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
        )
        self.cache = returned_cache(out)

    def score(
        self, candidates: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """(B, k) rewards; the cache then holds B·k rows (`keep` selects B of them)."""
        rows, k = candidates.shape
        self.cache.batch_repeat_interleave(k)
        mask = attention_mask.repeat_interleave(k, 0)
        out = self.body(
            input_ids=candidates.reshape(-1, 1),
            attention_mask=mask,
            position_ids=positions.repeat_interleave(k, 0),
            use_cache=True,
            **{self.cache_key: self.cache},
        )
        self.cache = returned_cache(out)
        return self.head(out.last_hidden_state[:, -1]).float().reshape(rows, k)

    def keep(self, flat_rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(flat_rows)


def args_decode(
    model: Any,
    tokenizer: Any,
    scorer: RewardPrefixScorer | None,
    prompts: Sequence[Query],
    sampling: Sampling,
    seeds: Sequence[int],
    weight: float,
    top_k: int,
) -> list[tuple[Generation, int]]:
    """(generation, forward passes) per prompt, ARGS-decoded one prompt batch at a time."""
    stop_set = set(stop_token_ids(model, tokenizer))
    pad_id = pad_token_id(tokenizer, sorted(stop_set))
    device = model_device(model)
    key = cache_argument(model)
    results: list[tuple[Generation, int]] = []
    for start in range(0, len(prompts), sampling.batch_size):
        chunk = list(range(start, min(start + sampling.batch_size, len(prompts))))
        texts = [render_prompt(tokenizer, prompts[i]) for i in chunk]
        encoded = [prompt_token_ids(tokenizer, t) for t in texts]
        ids, mask = (t.to(device) for t in left_padded(encoded, pad_id))
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        uniforms = torch.stack([row_uniforms(seeds[i], sampling.max_new_tokens) for i in chunk])
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = returned_cache(out)
        use_reward = scorer is not None and weight > 0
        if use_reward:
            scorer.prefill(ids, mask, positions)
        positions = positions[:, -1:]
        active = list(range(len(chunk)))
        tokens_of: list[list[int]] = [[] for _ in chunk]
        logps_of: list[list[float]] = [[] for _ in chunk]
        finished = [False] * len(chunk)
        steps = 0
        for step in range(sampling.max_new_tokens):
            steps += 1
            logp = out.logits[:, -1, :].float().log_softmax(-1)
            values, candidates = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
            scores = values
            if use_reward:
                extended = torch.cat([mask, mask.new_ones(len(active), 1)], 1)
                scores = values + weight * scorer.score(candidates, extended, positions + 1)
            if sampling.temperature == 0:
                pick = scores.argmax(-1)
                picked_logp = torch.zeros(len(active))
            else:
                probs = (scores / sampling.temperature).softmax(-1).double()
                cumulative = probs.cumsum(-1)
                draws = uniforms[active, step].unsqueeze(1).to(cumulative)
                pick = torch.searchsorted(
                    cumulative, draws * cumulative[:, -1:], right=True
                ).squeeze(1)
                pick = pick.clamp(max=probs.shape[-1] - 1)
                picked_logp = probs.gather(1, pick[:, None]).squeeze(1).log().cpu()
            chosen = candidates.gather(1, pick[:, None]).squeeze(1)
            if use_reward:
                scorer.keep(torch.arange(len(active), device=device) * candidates.shape[1] + pick)
            still = []
            for position, token in enumerate(chosen.tolist()):
                row = active[position]
                tokens_of[row].append(token)
                logps_of[row].append(float(picked_logp[position]))
                if token in stop_set:
                    finished[row] = True
                else:
                    still.append(position)
            if not still or step == sampling.max_new_tokens - 1:
                break
            if len(still) < len(active):
                keep = torch.tensor(still, device=device)
                cache.batch_select_indices(keep)
                if use_reward:
                    scorer.keep(keep)
                active = [active[p] for p in still]
                chosen, mask, positions = chosen[keep], mask[keep], positions[keep]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], 1)
            positions = positions + 1
            out = model(
                input_ids=chosen.unsqueeze(1), attention_mask=mask, position_ids=positions,
                use_cache=True, **{key: cache},
            )  # fmt: skip
            cache = returned_cache(out)
        for row in range(len(chunk)):
            response = tokens_of[row]
            shown = response[:-1] if finished[row] else response
            text = tokenizer.decode(shown, skip_special_tokens=False)
            text, stopped = cut_at_stop(text, sampling.stop)
            generation = Generation(
                texts[row], encoded[row], response, text, finished[row] or stopped, logps_of[row]
            )
            forwards = len(response) * (2 if use_reward else 1)
            results.append((generation, forwards))
    return results


class Args(Strategy):
    name = "args"
    Config = ArgsConfig
    replaces_decoding = True

    def __init__(self, config: ArgsConfig) -> None:
        super().__init__(config)
        if not Path(config.reward).is_dir():
            raise UserInputError(f"args.reward: {config.reward} is not a reward-model folder")
        self.reward_model: Any = None
        self._loading = threading.Lock()

    def _scorer(self, backend: Backend) -> RewardPrefixScorer:
        """A scorer of its own per call (its KV cache is per call: calls may run at once, the
        server's requests among them); the reward model is loaded once."""
        with self._loading:
            if self.reward_model is None:
                device = model_device(backend.model)
                model, tokenizer = load_reward_folder(self.config.reward, device=device)
                if tokenizer.get_vocab() != backend.tokenizer.get_vocab():
                    raise UserInputError(
                        f"args.reward: {self.config.reward} has another vocabulary than the "
                        "model; ARGS feeds the reward model the policy's token ids"
                    )
                self.reward_model = model
        return RewardPrefixScorer(self.reward_model)

    def answer(
        self,
        backend: Backend,
        queries: Sequence[Query],
        sampling: Sampling,
        seeds: Sequence[int],
        inner: Answerer,
        originals: Sequence[Query],
    ) -> list[Answer]:
        scorer = self._scorer(backend) if self.config.weight > 0 else None
        start = time.perf_counter()
        with inference_mode(backend.model):
            decoded = args_decode(
                backend.model, backend.tokenizer, scorer, queries, sampling, seeds,
                self.config.weight, self.config.top_k,
            )  # fmt: skip
        share = (time.perf_counter() - start) / max(len(queries), 1)
        return [
            Answer(g.text, g.finished, g, Cost(len(g.response_ids), forwards, share))
            for g, forwards in decoded
        ]
