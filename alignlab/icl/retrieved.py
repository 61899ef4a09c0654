"""Retrieved demonstrations: the K pool examples most like the query, shown before it.

In-context alignment (Han 2023, "In-Context Alignment: Chat with Vanilla Language Models
Before Fine-Tuning", arXiv:2308.04275) retrieves, per query, demonstrations of the desired
behaviour from a pool and puts them in the context. Similarity is BM25 over words (Robertson
and Zaragoza 2009; k1 = 1.5, b = 0.75) or the cosine of mean last-layer hidden states of the
wrapped model itself (`similarity: hidden`), so no extra encoder is needed.

A message-list query gets the demonstrations as earlier user / assistant turns (after any
system turn); a string query gets them in URIAL's plain-text blocks (`urial.urial_prompt`
without a preamble principle), most similar last, nearest the query.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import weakref
from collections.abc import Sequence

import torch

from alignlab.config import ConfigError, option
from alignlab.icl.base import Answer, Answerer, Backend, Query, Sampling, Strategy
from alignlab.icl.demonstrations import Demonstration, load_demonstrations
from alignlab.icl.urial import STOPS, urial_prompt
from alignlab.models.generation import inference_mode, model_device, prompt_token_ids

WORD = re.compile(r"\w+")


@dataclasses.dataclass
class RetrievedConfig:
    pool: str = option("", "prompt/completion or messages dataset to retrieve from", kind="data")
    k: int = option(3, "demonstrations per query", min=1)
    similarity: str = option("bm25", "how queries are compared", choices=("bm25", "hidden"))

    def check(self) -> None:
        if not self.pool:
            raise ConfigError("retrieved.pool is required: a dataset of demonstrations")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class BM25:
    """Okapi BM25 over a fixed list of documents."""

    def __init__(self, documents: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.docs = [collections.Counter(words(d)) for d in documents]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.mean_length = sum(self.lengths) / max(len(self.docs), 1) or 1.0
        frequency = collections.Counter(w for d in self.docs for w in d)
        n = len(self.docs)
        self.idf = {w: math.log((n - f + 0.5) / (f + 0.5) + 1.0) for w, f in frequency.items()}

    def scores(self, query: str) -> list[float]:
        terms = [w for w in words(query) if w in self.idf]
        out = []
        for doc, length in zip(self.docs, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / self.mean_length)
            out.append(
                sum(
                    self.idf[w] * doc[w] * (self.k1 + 1) / (doc[w] + norm)
                    for w in terms
                    if w in doc
                )
            )
        return out


def mean_hidden_states(
    backend: Backend, texts: Sequence[str], batch_size: int = 16
) -> torch.Tensor:
    """(len(texts), H) unit vectors: each text's last-layer hidden states averaged over its
    tokens, as the wrapped model computes them."""
    model, tokenizer = backend.model, backend.tokenizer
    device = model_device(model)
    vectors = []
    with inference_mode(model):
        for start in range(0, len(texts), batch_size):
            encoded = [
                prompt_token_ids(tokenizer, t) or [0] for t in texts[start : start + batch_size]
            ]
            width = max(len(ids) for ids in encoded)
            ids = torch.zeros((len(encoded), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, e in enumerate(encoded):
                ids[row, : len(e)] = torch.tensor(e)
                mask[row, : len(e)] = 1
            out = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
            )
            hidden = out.hidden_states[-1].float()
            weights = mask.to(device).unsqueeze(-1).float()
            mean = (hidden * weights).sum(1) / weights.sum(1)
            vectors.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
    return torch.cat(vectors)


def _last_user_text(query: Query) -> str:
    if isinstance(query, str):
        return query
    users = [str(m["content"]) for m in query if m.get("role") == "user"]
    return users[-1] if users else ""


def with_demonstrations(query: Query, demos: Sequence[Demonstration]) -> Query:
    if isinstance(query, str):
        return urial_prompt(query, demos, principle="")
    system = [m for m in query if m.get("role") == "system"]
    rest = [m for m in query if m.get("role") != "system"]
    shots = []
    for d in demos:
        shots += [{"role": "user", "content": d.query}, {"role": "assistant", "content": d.answer}]
    return [*system, *shots, *rest]


class Retrieved(Strategy):
    name = "retrieved"
    Config = RetrievedConfig

    def __init__(self, config: RetrievedConfig) -> None:
        super().__init__(config)
        self.pool = load_demonstrations(config.pool)
        self.bm25 = BM25([d.query for d in self.pool]) if config.similarity == "bm25" else None
        self._vectors: tuple[weakref.ref, torch.Tensor] | None = None
        """The pool's hidden-state vectors and the model they came from."""

    def nearest(self, backend: Backend, texts: Sequence[str]) -> list[list[Demonstration]]:
        """Each text's K nearest demonstrations, least similar first (the nearest sits next to
        the query); ties keep the pool's order."""
        k = min(self.config.k, len(self.pool))
        if self.bm25 is not None:
            similarity = torch.tensor([self.bm25.scores(t) for t in texts])
        else:
            if self._vectors is None or self._vectors[0]() is not backend.model:
                pool = mean_hidden_states(backend, [d.query for d in self.pool])
                self._vectors = (weakref.ref(backend.model), pool)
            similarity = mean_hidden_states(backend, texts) @ self._vectors[1].T
        picked = []
        for row in similarity.tolist():
            order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
            picked.append([self.pool[i] for i in reversed(order)])
        return picked

    def answer(
        self,
        backend: Backend,
        queries: Sequence[Query],
        sampling: Sampling,
        seeds: Sequence[int],
        inner: Answerer,
        originals: Sequence[Query],
    ) -> list[Answer]:
        demos = self.nearest(backend, [_last_user_text(q) for q in queries])
        prompts = [with_demonstrations(q, d) for q, d in zip(queries, demos)]
        plain = any(isinstance(q, str) for q in queries)
        answers = inner(prompts, sampling.with_stop(*STOPS) if plain else sampling, seeds)
        if plain:
            for a in answers:
                a.text = a.text.strip()
        return answers
