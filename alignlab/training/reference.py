"""Reference-model log-probabilities for preference recipes, in three interchangeable modes.

- `model`:       a frozen copy of the reference model (`reference.path`, default `model.path`)
                 runs a no-grad forward next to the policy at every step (sharded with FSDP2
                 under torchrun, like the policy).
- `precomputed`: one pass over every sequence the run will need, before training, with the
                 reference model loaded only for that pass and freed before the policy loads.
                 The summed log-probs go to `<output_dir>/reference_logps.pt`, keyed by the
                 recipe's sequence keys and fingerprinted by the token ids and the reference
                 settings, so a resumed (or repeated) run reuses them.
- `adapter`:     with LoRA, the policy itself with its adapters disabled (peft's
                 `disable_adapter()`): the base weights are the reference, no second copy.

All modes return the same quantity as the policy side: the sum over trained tokens of
log p(token), from `TokenLogProbs` with the same chunking, mixed precision and masks, in
float32, without gradient. The reference runs in eval mode (no dropout).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import io
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignlab.config import ConfigError, ModelConfig, option
from alignlab.data.collate import collate
from alignlab.fileio import atomic_write_bytes
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import is_peft, load_model
from alignlab.training import distributed
from alignlab.training.batches import eval_rounds
from alignlab.training.distributed import Runtime

MODES: tuple[str, ...] = ("model", "precomputed", "adapter")
CACHE_NAME = "reference_logps.pt"


@dataclasses.dataclass
class ReferenceConfig:
    """Where the reference log-probs come from (reference-based losses only)."""

    mode: str = option(
        "model",
        "model: frozen copy run each step; precomputed: one pass before training, cached in "
        "output_dir; adapter: the LoRA policy with adapters disabled",
        choices=MODES,
    )
    path: str = option("", "reference model (hub id or folder); empty = model.path", kind="model")
    batch_size: int = option(
        0, "sequences per forward of the precompute pass; 0 = 2 x train.micro_batch_size", min=0
    )


def check_reference(cfg: ReferenceConfig, model: ModelConfig) -> None:
    """Refuse combinations that cannot work (call from the recipe config's `check`)."""
    if cfg.mode == "adapter" and not model.lora.enabled:
        raise ConfigError(
            "reference.mode=adapter uses the LoRA policy with adapters disabled; it needs "
            "model.lora.enabled=true (or use reference.mode=model / precomputed)"
        )
    if cfg.mode == "adapter" and cfg.path and cfg.path != model.path:
        raise ConfigError(
            "reference.mode=adapter: the reference is the base of model.path; "
            f"reference.path={cfg.path!r} cannot be used (use reference.mode=model)"
        )


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T) per-token log-probs, 0 where untrained -> (N,) float32 sums over `mask`."""
    return (token_logps.float() * mask.to(torch.float32)).sum(-1)


def _autocast(device: torch.device, mixed_precision: str) -> contextlib.AbstractContextManager:
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def fingerprint(items: list[tuple[Hashable, dict[str, Any]]], settings: dict) -> str:
    """sha256 of the sequences (keys, ids, labels, and for image rows the image files' bytes)
    and the reference settings."""
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    for key, row in items:
        digest.update(repr(key).encode())
        digest.update(repr(row["input_ids"]).encode())
        digest.update(repr(row["labels"]).encode())
        for image in getattr(row.get("row"), "images", ()):  # a path, or inline bytes
            data = image if isinstance(image, bytes) else Path(image).read_bytes()
            digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


class ReferenceLogProbs:
    """Summed reference log-probs of the sequences of a collated batch.

    Use: `ref = ReferenceLogProbs(...)`; `ref.prepare(items)` before the policy is built (loads
    the model, or fills/reuses the cache); `ref.attach(policy)` after (adapter mode);
    `ref(batch, keys)` inside the loop. `keys` name the batch's rows in `items` (precomputed
    mode looks them up; the other modes ignore them).
    """

    def __init__(
        self,
        cfg: ReferenceConfig,
        model_cfg: ModelConfig,
        tokenizer: Any,
        runtime: Runtime,
        *,
        chunk_size: int = 1024,
        mixed_precision: str = "no",
        batch_size: int = 8,
        cache_dir: str | Path | None = None,
        claim_folder: Callable[[], None] | None = None,
        load: Callable[[ModelConfig, torch.device], nn.Module] | None = None,
        collate_fn: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.mode = cfg.mode
        self.tokenizer = tokenizer
        self.runtime = runtime
        self.chunk_size = chunk_size
        self.mixed_precision = mixed_precision
        self.batch_size = cfg.batch_size or batch_size
        self.cache_path = Path(cache_dir) / CACHE_NAME if cache_dir else None
        self.claim_folder = claim_folder  # called before the cache is written (RunFolder.claim)
        # how to load the reference and batch the precompute pass's rows: a causal LM and
        # token rows by default; a vision-language recipe passes its loader and image collate
        self.load = load or (lambda cfg, device: load_model(cfg, tokenizer, device=device))
        self.collate = collate_fn or (lambda rows: collate(rows, tokenizer.pad_token_id))
        # the reference is the plain base model: no adapters, no checkpointing, no resume weights
        self.model_cfg = dataclasses.replace(
            model_cfg,
            path=cfg.path or model_cfg.path,
            gradient_checkpointing=False,
            lora=dataclasses.replace(model_cfg.lora, enabled=False, load_in_4bit=False),
        )
        self.module: TokenLogProbs | None = None
        self.policy: TokenLogProbs | None = None
        self.cache: dict[Hashable, float] = {}
        self.reused_cache = False

    # --- set-up ---

    def settings(self) -> dict[str, Any]:
        return {
            "path": self.model_cfg.path,
            "revision": self.model_cfg.revision,
            "dtype": self.model_cfg.dtype,
            "mixed_precision": self.mixed_precision,
        }

    def load_module(self) -> TokenLogProbs:
        """The frozen reference model wrapped in TokenLogProbs (sharded under torchrun)."""
        model = self.load(self.model_cfg, self.runtime.device)
        model.requires_grad_(False)
        module = TokenLogProbs(model, chunk_size=self.chunk_size)
        module.eval()
        if self.runtime.distributed:
            distributed.shard_model(module, model, self.runtime)
        return module

    def prepare(self, items: Iterable[tuple[Hashable, dict[str, list[int]]]] = ()) -> None:
        """model: load the reference; precomputed: compute (or reuse) the cached log-probs of
        `items` [(key, {"input_ids", "labels"} and what `collate_fn` needs)] then free the
        model; adapter: nothing."""
        if self.mode == "model":
            self.module = self.load_module()
        elif self.mode == "precomputed":
            self._precompute(list(items))

    def attach(self, policy: TokenLogProbs) -> None:
        """Adapter mode: the policy (a peft model inside TokenLogProbs) is the reference."""
        if self.mode == "adapter":
            if not is_peft(policy.model):
                raise RuntimeError("reference.mode=adapter needs a LoRA (peft) policy")
            self.policy = policy

    def _precompute(self, items: list[tuple[Hashable, dict[str, list[int]]]]) -> None:
        print_main = self.runtime.is_main
        stamp = fingerprint(items, self.settings())
        if self.cache_path is not None and self.cache_path.exists():
            saved = torch.load(self.cache_path, map_location="cpu", weights_only=True)
            if saved.get("fingerprint") == stamp:
                self.cache = dict(zip(saved["keys"], saved["logps"].tolist()))
                self.reused_cache = True
                if print_main:
                    print(f"reference log-probs: reusing {self.cache_path}")
                return
        module = self.load_module()
        size = self.batch_size
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        mine: list[tuple[Hashable, float]] = []
        # every process runs the same number of forwards: FSDP2 forwards are collective
        for i in eval_rounds(len(batches), self.runtime):
            chunk = batches[i % len(batches)]
            batch = self._to_device(self.collate([row for _, row in chunk]))
            values = self._forward(module, batch)
            if i < len(batches):
                mine.extend(zip([key for key, _ in chunk], values.tolist()))
        distributed.reshard(module)
        for part in distributed.all_gather_objects(mine, self.runtime):
            self.cache.update(part)
        del module
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.cache_path is not None and self.runtime.is_main:
            keys = [key for key, _ in items]
            logps = torch.tensor([self.cache[key] for key in keys], dtype=torch.float32)
            if self.claim_folder is not None:
                self.claim_folder()
            buffer = io.BytesIO()
            torch.save({"fingerprint": stamp, "keys": keys, "logps": logps}, buffer)
            atomic_write_bytes(self.cache_path, buffer.getvalue())
        distributed.barrier(self.runtime)
        if print_main:
            print(f"reference log-probs: computed {len(items)} sequences")

    # --- use ---

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.runtime.device) for k, v in batch.items()}

    def _forward(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad(), _autocast(self.runtime.device, self.mixed_precision):
            token_logps = module(batch)
        return sequence_logps(token_logps, TokenLogProbs.mask(batch))

    def __call__(
        self, batch: dict[str, torch.Tensor], keys: list[Hashable] | None = None
    ) -> torch.Tensor:
        """(N,) float32 summed reference log-probs of the N rows of `batch` (no gradient).

        Under FSDP2 this is a collective forward in the model and adapter modes: every rank
        must call it the same number of times.
        """
        if self.mode == "precomputed":
            if keys is None:
                raise ValueError("precomputed reference log-probs need the rows' keys")
            missing = [key for key in keys if key not in self.cache]
            if missing:
                raise KeyError(f"no precomputed reference log-prob for {missing[:3]}")
            device = batch["input_ids"].device
            return torch.tensor([self.cache[k] for k in keys], dtype=torch.float32, device=device)
        if self.mode == "model":
            if self.module is None:
                raise RuntimeError("call prepare() before using the reference")
            values = self._forward(self.module, batch)
            distributed.reshard(self.module)
            return values
        if self.policy is None:
            raise RuntimeError("call attach(policy) before using the adapter reference")
        policy = self.policy
        was_training = policy.training
        policy.eval()
        try:
            with policy.model.disable_adapter():
                values = self._forward(policy, batch)
        finally:
            policy.train(was_training)
        distributed.reshard(policy)
        return values
