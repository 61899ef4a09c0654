"""The loop shared by the RL recipes (GRPO, RLOO, REINFORCE++, and PPO with its critic).

A recipe reads as its algorithm; everything else lives here:

    session = RLSession(cfg, "grpo")                  # runtime, prompts, model, reference, ...
    for step in session.steps():
        exp = session.collect(step)                   # rollout -> rewards -> reference log-probs
        advantages = <the recipe's estimator>(exp)    # (N, 1) sequence- or (N, T) token-level
        stats = session.update(step, exp, advantages, aggregation=..., kl_loss_coef=...)
        session.end_step(step, exp, stats)            # KL controller, guard-rails, metrics, save
    return session.finish()

`collect`: the step's prompts (a pure function of (seed, step), `BatchSchedule`), K samples
each (`alignlab.rl.rollout.rollout`, generation seed derived from (seed, step, rank)), the
reward (`rl.reward`, `alignlab.rl.rewards.build_reward_fn`), the optional gold reward
(`rl.gold`, logged beside the proxy, never trained on), the missing-EOS penalty, reward
clipping and normalisation, then the reference's per-token log-probs when the run has a
reference (`RLConfig.uses_reference`: β > 0, or KL logged for `rl.gold` / guarded by
`rl.max_kl` even at β = 0).

`update`: `rl.num_iterations` passes over the rollout in shuffled mini-batches of
`rl.mini_batch_size` samples (one optimizer step each), each split into micro-batches of
`train.micro_batch_size`. Per token: the PPO clipped surrogate
(`alignlab.losses.policy.ppo_clip_token_losses`, unclipped when `clip=False`) plus
`kl_loss_coef · k3(π_θ, π_ref)` when the KL is in the loss (GRPO), aggregated over the
mini-batch by `token_mean`, `sequence_mean`, `sequence_sum` (Σ_t then mean over sequences) or
`token_sum_constant` (Σ_t / max_new_tokens, Dr. GRPO). Micro-batch losses are weighted by their
share of the mini-batch's tokens or sequences (over all processes), so the gradient does not
depend on the micro-batch size or the number of processes.

Two hooks for recipes that train more than the policy (PPO): `update(..., extra_loss=fn)`
adds a loss term to every optimizer step (PPO-ptx), and `session.checkpoint_extras` returns
files saved inside each step checkpoint (the critic), read back from `session.resume_from`.

Guard-rails: a non-finite micro-batch loss is skipped (all processes agree) and counted; a
non-finite gradient norm skips the optimizer step; `rl.max_kl` stops the run with
`KLRunawayError` when the mean per-response KL to the reference exceeds it; a warning (and
`train/length_hack_warning` = 1) when the mean response length keeps growing while the reward
does not over `rl.length_watch_steps` steps.

Under torchrun the policy is sharded with FSDP2. HF `generate` cannot run on the sharded
model (the root's embeddings and output projection are only unsharded inside the root's
forward), so each process keeps an unsharded copy of the policy for sampling, refreshed from
the full state dict before every rollout (one all-gather per step, one full copy of the
weights per process). The log-prob, reference and training forwards use the sharded model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm.auto import tqdm

from alignlab.config import (
    ConfigError,
    LoraConfig,
    ModelConfig,
    TrainConfig,
    option,
)
from alignlab.data.report import DataReport
from alignlab.data.schema import DataError
from alignlab.data.sources import load_records
from alignlab.data.templates import render_prompt
from alignlab.eval.generation import prompt_token_ids
from alignlab.losses.policy import (
    ppo_clip_token_losses,
    sequence_mean,
    token_mean,
    token_sum_constant,
)
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import check_positions, is_peft, load_model, load_tokenizer
from alignlab.ops import masked_sum
from alignlab.rl.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k3
from alignlab.rl.rewards import RewardOptions
from alignlab.rl.rollout import Rollout, rollout, token_logps
from alignlab.training import distributed, loop
from alignlab.training.batches import BatchSchedule, micro_batches
from alignlab.training.checkpoint import (
    crash_point,
    latest_checkpoint,
    load_checkpoint_state,
    save_checkpoint,
    save_hf_folder,
)
from alignlab.training.loop import autocast
from alignlab.training.optim import build_optimizer, build_scheduler, refuse_step_in_backward

AGGREGATIONS: tuple[str, ...] = (
    "token_mean",
    "sequence_mean",
    "sequence_sum",
    "token_sum_constant",
)


class KLRunawayError(RuntimeError):
    """The policy's KL to the reference exceeded `rl.max_kl`."""


# --- config sections ---


@dataclasses.dataclass
class PromptDataConfig:
    """Prompt-only rows: `prompt` (string or message list); other keys go to reward fns."""

    path: str = option(
        "", "JSONL/JSON/Parquet file, a `datasets` folder, or a hub dataset id", kind="data"
    )
    split: str = option("train", "split to read from a hub dataset or a saved DatasetDict")
    max_examples: int = option(0, "use at most this many prompts; 0 = all", min=0)
    max_prompt_tokens: int = option(
        0, "skip (and count) prompts longer than this many tokens; 0 = no limit", min=0
    )
    on_bad_example: str = option(
        "error", "bad record: stop with an error or skip and count", choices=("error", "skip")
    )

    def check(self) -> None:
        if not self.path:
            raise ConfigError("data.path is required: a prompt file, folder or hub dataset id")


@dataclasses.dataclass
class RLReferenceConfig:
    """The reference policy of the KL term (loaded when `RLConfig.uses_reference`)."""

    mode: str = option(
        "model",
        "model: a frozen copy of reference.path; adapter: the LoRA policy with adapters disabled",
        choices=("model", "adapter"),
    )
    path: str = option("", "reference model (hub id or folder); empty = model.path", kind="model")


@dataclasses.dataclass
class RLConfig(RewardOptions):
    """Sampling, reward and policy-update options shared by PPO, GRPO, RLOO and REINFORCE++."""

    samples_per_prompt: int = option(4, "K responses sampled per prompt", min=1)
    prompts_per_step: int = option(8, "prompts per rollout (all processes together)", min=1)
    max_new_tokens: int = option(64, "response budget in tokens", min=1)
    temperature: float = option(1.0, "sampling temperature", min=0, min_exclusive=True)
    top_p: float = option(1.0, "nucleus sampling mass", min=0, max=1, min_exclusive=True)
    stop_strings: list[str] = option([], "cut responses at the first of these strings")
    generation_batch_size: int = option(32, "sequences per generation / scoring batch", min=1)
    num_iterations: int = option(1, "passes (PPO epochs) over each rollout", min=1)
    mini_batch_size: int = option(
        0, "samples per optimizer step (all processes); 0 = the whole rollout", min=0
    )
    clip_eps: float = option(0.2, "PPO ratio clip ε", min=0, min_exclusive=True)
    beta: float = option(0.04, "KL coefficient β (initial value when kl_target > 0)", min=0)
    kl_target: float = option(
        0.0, "adaptive β: target KL per response (Ziegler et al.); 0 = fixed β", min=0
    )
    kl_horizon: float = option(10000.0, "adaptive β horizon (samples)", min=0, min_exclusive=True)
    reward_clip: float = option(0.0, "clip rewards to [-c, c] before use; 0 = no clip", min=0)
    reward_normalization: str = option(
        "none", "whiten rewards over the step's batch (all processes)", choices=("none", "batch")
    )
    missing_eos_penalty: float = option(
        0.0, "subtracted from the reward of responses cut by max_new_tokens", min=0
    )
    max_kl: float = option(
        0.0, "stop when the mean per-response KL to the reference exceeds this; 0 = off", min=0
    )
    length_watch_steps: int = option(
        10, "warn when length grows and reward does not over this many steps; 0 = off", min=0
    )

    @property
    def uses_reference(self) -> bool:
        """Whether the run needs the reference's log-probs: for the KL term (β > 0), and at
        β = 0 still for the KL that over-optimisation tracking (`gold`) plots and that
        `max_kl` guards; β multiplies every use in a loss or reward, so those stay KL-free."""
        return self.beta > 0 or self.max_kl > 0 or bool(self.gold)

    def check(self) -> None:
        self.require_reward("rl.reward")
        rollout_size = self.prompts_per_step * self.samples_per_prompt
        if self.mini_batch_size and rollout_size % self.mini_batch_size:
            raise ConfigError(
                f"rl.mini_batch_size={self.mini_batch_size} must divide the rollout of "
                f"rl.prompts_per_step x rl.samples_per_prompt = {rollout_size} samples"
            )


def check_rl(
    rl: RLConfig, reference: RLReferenceConfig, model: ModelConfig, train: TrainConfig
) -> None:
    """Cross-section checks (call from the recipe config's `check`)."""
    refuse_step_in_backward(train)
    if rl.uses_reference and reference.mode == "adapter" and not model.lora.enabled:
        raise ConfigError("reference.mode=adapter needs model.lora.enabled=true")


# --- prompts ---


@dataclasses.dataclass
class PromptRow:
    prompt: str | list[dict[str, Any]]
    extras: dict[str, Any]


def check_generation_fits(
    model_cfg: ModelConfig, tokenizer: Any, rows: list[PromptRow], setting: str, new_tokens: int
) -> None:
    """Refuse, before any sampling, prompts + `new_tokens` longer than the model's positions."""
    longest_prompt = max(
        (len(prompt_token_ids(tokenizer, render_prompt(tokenizer, r.prompt))) for r in rows),
        default=0,
    )
    check_positions(
        model_cfg, longest_prompt + new_tokens,
        f"{setting}={new_tokens} after prompts of up to {longest_prompt} tokens",
        f"lower {setting}, or drop long prompts with data.max_prompt_tokens",
    )  # fmt: skip


def load_prompt_rows(
    cfg: PromptDataConfig, tokenizer: Any, report: DataReport | None = None
) -> list[PromptRow]:
    """Rows with a non-empty `prompt` (string or message list); other keys become extras."""
    report = report or DataReport()
    records = load_records(
        cfg.path, cfg.split, cfg.max_examples, on_bad_example=cfg.on_bad_example, report=report
    )
    rows = []
    for record in records:
        prompt = record.data.get("prompt")
        ok = (isinstance(prompt, str) and prompt.strip()) or (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt)
        )
        if not ok:
            error = DataError(
                "expected a non-empty 'prompt': a string or a list of {role, content} messages",
                record.source,
                record.line,
                field="prompt",
            )
            if cfg.on_bad_example == "error":
                raise error
            report.skip("bad prompt", record.where(), str(error))
            continue
        if cfg.max_prompt_tokens:
            length = len(prompt_token_ids(tokenizer, render_prompt(tokenizer, prompt)))
            if length > cfg.max_prompt_tokens:
                report.skip("prompt too long", record.where())
                continue
        extras = {k: v for k, v in record.data.items() if k != "prompt"}
        rows.append(PromptRow(prompt, extras))
    if not rows:
        raise DataError("no usable prompts", cfg.path)
    return rows


# --- reference ---


class RLReference:
    """Per-token reference log-probs: a frozen model, or the LoRA policy without adapters."""

    def __init__(
        self,
        cfg: RLReferenceConfig,
        model_cfg: ModelConfig,
        tokenizer: Any,
        runtime: distributed.Runtime,
        chunk_size: int,
        mixed_precision: str,
    ) -> None:
        self.mode = cfg.mode
        self.mixed_precision = mixed_precision
        self.module: TokenLogProbs | None = None
        if self.mode == "model":
            ref_cfg = dataclasses.replace(
                model_cfg,
                path=cfg.path or model_cfg.path,
                gradient_checkpointing=False,
                lora=LoraConfig(enabled=False),
            )
            model = load_model(ref_cfg, tokenizer, device=runtime.device)
            model.requires_grad_(False)
            self.module = TokenLogProbs(model, chunk_size=chunk_size).eval()
            if runtime.distributed:
                distributed.shard_model(self.module, model, runtime)

    def attach(self, policy: TokenLogProbs) -> None:
        if self.mode == "adapter":
            if not is_peft(policy.model):
                raise RuntimeError("reference.mode=adapter needs a LoRA (peft) policy")
            self.module = policy

    def __call__(self, roll: Rollout, batch_size: int) -> torch.Tensor:
        """(N, T) float32 CPU reference log-probs of the rollout's response tokens."""
        batch = {k: getattr(roll, k) for k in ("input_ids", "attention_mask", "labels")}
        batch["position_ids"] = roll.position_ids
        if self.mode == "adapter":
            with self.module.model.disable_adapter():
                return token_logps(self.module, batch, batch_size, self.mixed_precision)
        return token_logps(self.module, batch, batch_size, self.mixed_precision)


# --- experience ---


@dataclasses.dataclass
class Experience:
    """One step's rollout with everything the advantage estimators need (CPU tensors)."""

    rollout: Rollout
    scores: torch.Tensor
    """(N,) float32 reward used for training: penalised, clipped, normalised."""
    raw_rewards: torch.Tensor
    """(N,) the reward source's output."""
    gold: torch.Tensor | None
    ref_logps: torch.Tensor | None
    """(N, T) reference log-probs of the response tokens, or None without a reference."""
    beta: float
    timings: dict[str, float]

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.mask

    @property
    def token_kl(self) -> torch.Tensor:
        """(N, T) k1 = log π_old - log π_ref per response token (0 without a reference)."""
        if self.ref_logps is None:
            return torch.zeros_like(self.rollout.old_logps)
        return kl_k1(self.rollout.old_logps, self.ref_logps) * self.mask

    @property
    def sequence_kl(self) -> torch.Tensor:
        """(N,) Σ_t k1: the per-response KL estimate."""
        return self.token_kl.sum(1)

    def grouped(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) -> (P, K): one row per prompt."""
        return values.view(-1, self.rollout.samples_per_prompt)


def gather_rows(
    runtime: distributed.Runtime, *tensors: torch.Tensor
) -> tuple[torch.Tensor | tuple[slice, slice], ...]:
    """Every process's rows of (N, ...) CPU tensors, concatenated in rank order (token tensors
    right-padded with 0 to the widest), plus the index of this process's own block:
    `full[mine]` is this process's (N, T_local) part. One process: the tensors unchanged."""
    width = max((t.shape[1] for t in tensors if t.dim() == 2), default=0)
    mine = (slice(None), slice(0, width))
    if not runtime.distributed:
        return (*tensors, mine)
    parts = distributed.all_gather_objects([t.cpu() for t in tensors], runtime)
    widest = max((t.shape[1] for part in parts for t in part if t.dim() == 2), default=0)

    def padded(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, widest - t.shape[1])) if t.dim() == 2 else t

    gathered = tuple(torch.cat([padded(part[i]) for part in parts]) for i in range(len(tensors)))
    rows = tensors[0].shape[0]
    mine = (slice(runtime.rank * rows, (runtime.rank + 1) * rows), slice(0, width))
    return (*gathered, mine)


class LengthWatch:
    """Warns when the mean response length keeps growing while the reward does not."""

    def __init__(self, window: int, growth: float = 0.2) -> None:
        self.window = window
        self.growth = growth
        self.history: list[tuple[float, float]] = []

    def update(self, length: float, reward: float) -> bool:
        if not self.window:
            return False
        self.history = [*self.history, (length, reward)][-self.window :]
        if len(self.history) < self.window:
            return False
        half = self.window // 2
        first, last = self.history[:half], self.history[-half:]
        length_a = sum(x for x, _ in first) / half
        length_b = sum(x for x, _ in last) / half
        reward_a = sum(r for _, r in first) / half
        reward_b = sum(r for _, r in last) / half
        return length_b > (1 + self.growth) * length_a and reward_b <= reward_a

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [tuple(x) for x in state.get("history", [])]


# --- the session ---


class RLSession:
    """Set-up, rollout collection, policy update, guard-rails, metrics and checkpoints.

    `cfg` must have sections `model`, `data` (PromptDataConfig), `train` (TrainConfig),
    `rl` (RLConfig), `reference` (RLReferenceConfig) and a `final_dir` option.
    """

    def __init__(self, cfg: Any, name: str) -> None:
        # --- setup ---
        self.cfg, self.name = cfg, name
        self.runtime = runtime = distributed.init_runtime()
        train: TrainConfig = cfg.train
        rl: RLConfig = cfg.rl
        self.train_cfg, self.rl = train, rl
        self.output_dir = Path(train.output_dir)
        self.folder = loop.start_run(cfg, runtime)
        self.resume_from = resume_from = self.folder.resume_from

        # --- prompts ---
        self.tokenizer = load_tokenizer(cfg.model)
        self.rows = load_prompt_rows(cfg.data, self.tokenizer)
        if rl.prompts_per_step % runtime.world_size:
            raise ConfigError(
                f"rl.prompts_per_step={rl.prompts_per_step} must be a multiple of the "
                f"{runtime.world_size} processes"
            )
        new_tokens = rl.max_new_tokens
        check_generation_fits(cfg.model, self.tokenizer, self.rows, "rl.max_new_tokens", new_tokens)
        self.prompts_per_rank = rl.prompts_per_step // runtime.world_size
        self.local_samples = self.prompts_per_rank * rl.samples_per_prompt
        global_mini = rl.mini_batch_size or rl.prompts_per_step * rl.samples_per_prompt
        if global_mini % runtime.world_size:
            raise ConfigError(
                f"rl.mini_batch_size={global_mini} must be a multiple of the "
                f"{runtime.world_size} processes"
            )
        self.local_mini = global_mini // runtime.world_size
        self.schedule = BatchSchedule(len(self.rows), rl.prompts_per_step, train.seed)
        self.total_steps = self.schedule.total_steps(train.epochs, train.max_steps)
        updates = rl.num_iterations * (self.local_samples // self.local_mini)
        self.updates_per_step = updates
        # One optimizer step per rollout: the update's forward sees the sampling weights, so
        # its detached log-probs are the old ones and the separate scoring pass is skipped
        # (TRL does the same). RLOO and REINFORCE++ need old log-probs for their KL-shaped
        # advantages before the update, so they always score.
        self.old_logps_from_update = updates == 1 and name == "grpo"
        if runtime.is_main:
            print(
                f"{name}: {len(self.rows)} prompts, {self.total_steps} steps of "
                f"{rl.prompts_per_step} prompts x {rl.samples_per_prompt} samples, "
                f"{updates} optimizer steps each"
            )

        # --- model ---
        device = runtime.device
        self.model = load_model(cfg.model, self.tokenizer, weights_from=resume_from, device=device)
        self.policy = TokenLogProbs(self.model, chunk_size=train.loss_chunk_size)
        self.generation_model = None
        if runtime.distributed:
            self.generation_model = copy.deepcopy(self.model).eval()
            self.generation_model.requires_grad_(False)
            distributed.shard_model(self.policy, self.model, runtime)
        self.reference = None
        if rl.uses_reference:
            self.reference = RLReference(
                cfg.reference, cfg.model, self.tokenizer, runtime,
                train.loss_chunk_size, train.mixed_precision,
            )  # fmt: skip
            self.reference.attach(self.policy)
        self.optimizer = build_optimizer(self.policy, train)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps * updates, train)
        self.kl_ctl = (
            AdaptiveKLController(rl.beta, rl.kl_target, rl.kl_horizon)
            if rl.kl_target > 0
            else FixedKLController(rl.beta)
        )
        self.length_watch = LengthWatch(rl.length_watch_steps)
        # called on every process before each step checkpoint; the files it returns
        # (name -> object) go into the checkpoint folder (a recipe's second model)
        self.checkpoint_extras: Callable[[], dict[str, Any]] | None = None
        self.start_step = 0
        if resume_from is not None:
            state = load_checkpoint_state(
                resume_from, self.optimizer, self.scheduler, runtime, root=self.policy
            )
            self.start_step = state["step"]
            self.kl_ctl.load_state_dict(state["kl_controller"])
            self.length_watch.load_state_dict(state.get("length_watch", {}))
        self.metrics = loop.open_metrics(self.folder, train, self.start_step)

        # --- rewards ---
        self.reward_fn, self.gold_fn = rl.build(device)
        self.progress = tqdm(
            total=self.total_steps,
            initial=self.start_step,
            desc=name,
            disable=not (runtime.is_main and train.progress),
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )

    # --- loop pieces ---

    def steps(self) -> Iterator[int]:
        """Step indices still to run (from the resumed step)."""
        yield from range(self.start_step, self.total_steps)

    def step_seed(self, step: int, salt: int = 0) -> int:
        """A seed that depends only on (train.seed, step, rank, salt)."""
        value = ((self.train_cfg.seed * 1_000_003 + step) * 1_009 + self.runtime.rank) * 101
        return (value + salt) % (2**62)

    def _sync_generation_model(self) -> None:
        if self.generation_model is not None:
            # full tensors on every rank (with cpu_offload only rank 0 would get them)
            options = StateDictOptions(full_state_dict=True, cpu_offload=False)
            state = get_model_state_dict(self.model, options=options)
            self.generation_model.load_state_dict(state)

    def collect(self, step: int) -> Experience:
        """Rollout, rewards (penalty, clip, normalisation), gold, reference log-probs."""
        rl, runtime = self.rl, self.runtime
        indices = micro_batches(
            self.schedule.step_indices(step), runtime, self.prompts_per_rank, 1
        )[0]
        rows = [self.rows[i] for i in indices]
        start = time.perf_counter()
        self._sync_generation_model()
        roll = rollout(
            self.model,
            self.tokenizer,
            [row.prompt for row in rows],
            rl.samples_per_prompt,
            rl.max_new_tokens,
            rl.temperature,
            rl.top_p,
            seed=self.step_seed(step) * 10_007,
            batch_size=rl.generation_batch_size,
            stop_strings=rl.stop_strings,
            scorer=self.policy,
            mixed_precision=self.train_cfg.mixed_precision,
            generation_model=self.generation_model,
            score=not self.old_logps_from_update,
        )
        generated = time.perf_counter()
        extras = [row.extras for row in rows for _ in range(rl.samples_per_prompt)]
        raw = torch.tensor(self.reward_fn(roll.prompts, roll.texts, extras), dtype=torch.float32)
        gold = None
        if self.gold_fn is not None:
            gold = torch.tensor(self.gold_fn(roll.prompts, roll.texts, extras))
        scores = raw - rl.missing_eos_penalty * (~roll.finished).float()
        if rl.reward_clip:
            scores = scores.clamp(-rl.reward_clip, rl.reward_clip)
        if rl.reward_normalization == "batch":
            total, total_sq, count = distributed.sum_floats(
                [scores.sum().item(), (scores.double() ** 2).sum().item(), len(scores)], runtime
            )
            mean = total / count
            std = math.sqrt(max(total_sq / count - mean**2, 0.0))
            scores = (scores - mean) / (std + 1e-8)
        rewarded = time.perf_counter()
        ref_logps = None
        if self.reference is not None:
            ref_logps = self.reference(roll, rl.generation_batch_size)
        return Experience(
            rollout=roll,
            scores=scores.float(),
            raw_rewards=raw,
            gold=gold,
            ref_logps=ref_logps,
            beta=self.kl_ctl.value,
            timings={
                "generation_s": generated - start,
                "reward_s": rewarded - generated,
                "reference_s": time.perf_counter() - rewarded,
            },
        )

    def update(
        self,
        step: int,
        exp: Experience,
        advantages: torch.Tensor,
        aggregation: str,
        kl_loss_coef: float = 0.0,
        clip: bool = True,
        extra_loss: Callable[[], torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """PPO-style mini-batch updates on `exp` (module docstring); returns diagnostics.

        advantages: (N, 1) per sequence or (N, T) per token (the rollout's layout).
        extra_loss: called once per optimizer step, after the mini-batch's backward passes;
            its result, this process's share of a loss term (the shares sum to the term), is
            back-propagated into the same gradient (PPO-ptx's pretraining NLL). Its mean over
            optimizer steps is returned as `extra_loss`.
        """
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if kl_loss_coef and exp.ref_logps is None:
            raise ValueError("a KL term in the loss needs reference log-probs (rl.beta > 0)")
        start = time.perf_counter()
        rl, runtime, policy = self.rl, self.runtime, self.policy
        device, world = runtime.device, runtime.world_size
        roll = exp.rollout
        mask_all = roll.mask
        clip_eps = rl.clip_eps if clip else math.inf
        generator = torch.Generator().manual_seed(self.step_seed(step, salt=1))
        # loss, clipped, approx_kl, tokens, skipped, extra loss
        sums = torch.zeros(6, dtype=torch.float64)
        grad_norms: list[float] = []
        skipped_steps = 0
        policy.train()
        for _ in range(rl.num_iterations):
            order = torch.randperm(len(roll), generator=generator)
            for first in range(0, len(roll), self.local_mini):
                rows = order[first : first + self.local_mini]
                tokens, sequences = distributed.sum_floats(
                    [float(mask_all[rows].sum()), float(len(rows))], runtime
                )
                micro_size = self.train_cfg.micro_batch_size
                for chunk in rows.split(micro_size):
                    batch = roll.batch(chunk, device)
                    width = batch["input_ids"].shape[1]
                    mask = policy.mask(batch)
                    adv = advantages[chunk]
                    adv = (adv if adv.shape[1] == 1 else adv[:, :width]).to(device)
                    with autocast(device, self.train_cfg.mixed_precision):
                        logps = policy(batch)
                    logps = logps.float()
                    if self.old_logps_from_update:
                        roll.old_logps[chunk, :width] = logps.detach().cpu()
                    old = roll.old_logps[chunk, :width].to(device)
                    pg_losses = ppo_clip_token_losses(logps, old, adv, clip_eps)
                    losses = pg_losses
                    if kl_loss_coef:
                        ref = exp.ref_logps[chunk, :width].to(device)
                        losses = losses + kl_loss_coef * kl_k3(logps, ref)
                    if aggregation == "token_mean":
                        loss = token_mean(losses, mask) * (mask.sum() / tokens)
                    elif aggregation == "sequence_mean":
                        loss = sequence_mean(losses, mask) * (len(chunk) / sequences)
                    elif aggregation == "sequence_sum":
                        loss = token_sum_constant(losses, mask, 1) * (len(chunk) / sequences)
                    else:
                        constant = token_sum_constant(losses, mask, rl.max_new_tokens)
                        loss = constant * (len(chunk) / sequences)
                    finite = (
                        distributed.sum_floats([float(torch.isfinite(loss))], runtime)[0] == world
                    )
                    if not finite:
                        sums[4] += 1
                        distributed.reshard(policy)
                        continue
                    (loss * world).backward()
                    with torch.no_grad():
                        log_ratio = logps.detach() - old
                        ratio = torch.exp(log_ratio)
                        active = (pg_losses.detach() > -adv * ratio).float()
                        sums[0] += loss.detach().double().item()
                        sums[1] += masked_sum(active, mask).item()
                        sums[2] += masked_sum(ratio - 1 - log_ratio, mask).item()
                        sums[3] += mask.sum().item()
                if extra_loss is not None:
                    extra = extra_loss()
                    (extra * world).backward()  # FSDP averages gradients; we want the sum
                    sums[5] += extra.detach().double().item()
                max_norm = self.train_cfg.max_grad_norm or math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm)
                if torch.isfinite(grad_norm):
                    self.optimizer.step()
                    grad_norms.append(float(grad_norm))
                else:
                    skipped_steps += 1
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
        loss_sum, clipped, approx_kl, counted, skipped, extra_sum = distributed.sum_floats(
            sums.tolist(), runtime
        )
        updates = rl.num_iterations * (len(roll) // self.local_mini)
        extras = {"extra_loss": extra_sum / updates} if extra_loss is not None else {}
        return {
            "loss": loss_sum / updates,  # each rank holds its share of the global loss
            "clip_fraction": clipped / max(counted, 1),
            "approx_kl": approx_kl / max(counted, 1),
            "grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
            "skipped_nonfinite_losses": skipped,
            "skipped_optimizer_steps": skipped_steps,
            "lr": self.scheduler.get_last_lr()[0],
            "update_s": time.perf_counter() - start,
            **extras,
        }

    def end_step(self, step: int, exp: Experience, stats: dict[str, float]) -> None:
        """Step statistics, KL controller, guard-rails, metrics, checkpoint, crash point."""
        rl, runtime, roll = self.rl, self.runtime, exp.rollout
        mask = roll.mask
        n = float(len(roll))
        old_logps = roll.old_logps
        parts = [
            exp.raw_rewards.sum().item(),
            (exp.raw_rewards.double() ** 2).sum().item(),
            exp.scores.sum().item(),
            n,
            float(roll.response_lengths.sum()),
            float(roll.finished.sum()),
            -masked_sum(old_logps, mask).item(),
            float(mask.sum()),
            exp.sequence_kl.sum().item(),
            exp.gold.sum().item() if exp.gold is not None else 0.0,
        ]
        (
            reward_sum, reward_sq, score_sum, count, length_sum, finished,
            neg_logp, tokens, kl_sum, gold_sum,
        ) = distributed.sum_floats(parts, runtime)  # fmt: skip
        reward_mean = reward_sum / count
        kl_mean = kl_sum / count
        length_mean = length_sum / count
        self.kl_ctl.update(kl_mean, int(count))
        hacking = self.length_watch.update(length_mean, reward_mean)
        done = step + 1
        record = {
            "reward_mean": reward_mean,
            "reward_std": math.sqrt(max(reward_sq / count - reward_mean**2, 0.0)),
            "score_mean": score_sum / count,
            "response_length": length_mean,
            "finished_fraction": finished / count,
            "entropy": neg_logp / max(tokens, 1.0),
            "kl_ref": kl_mean,
            "beta": exp.beta,
            **stats,
            **exp.timings,
            "length_hack_warning": float(hacking),
        }
        if exp.gold is not None:
            record["gold_mean"] = gold_sum / count
        if done % self.train_cfg.log_every == 0 or done == self.total_steps or hacking:
            self.metrics.log(done, record, prefix="train/")
        self.progress.set_postfix(
            reward=f"{reward_mean:.3f}", kl=f"{kl_mean:.3f}", len=f"{length_mean:.1f}",
            refresh=False,
        )  # fmt: skip
        self.progress.update(1)
        if hacking and runtime.is_main:
            warnings.warn(
                f"{self.name} step {done}: mean response length grew by more than 20% over the "
                f"last {rl.length_watch_steps} steps while the reward did not improve: "
                "possible reward hacking (check the samples; consider rl.missing_eos_penalty, "
                "a length penalty or a larger rl.beta)",
                stacklevel=2,
            )
        if rl.max_kl and self.reference is not None and kl_mean > rl.max_kl:
            last = latest_checkpoint(self.output_dir)
            raise KLRunawayError(
                f"{self.name} step {done}: KL to the reference is {kl_mean:.3f} nats per "
                f"response, above rl.max_kl={rl.max_kl:g}: the policy ran away from the "
                "reference. Lower train.lr, raise rl.beta or rl.max_kl"
                + (f"; the last checkpoint is {last}" if last else "")
            )
        save_every = self.train_cfg.save_every
        if save_every and done % save_every == 0 and done < self.total_steps:
            save_checkpoint(
                self.output_dir, done, self.model, self.tokenizer, self.optimizer,
                self.scheduler, self.runtime, lora=self.cfg.model.lora,
                keep=self.train_cfg.keep_checkpoints, root=self.policy,
                extra_files=self.checkpoint_extras() if self.checkpoint_extras else None,
                trainer_state={
                    "total_steps": self.total_steps,
                    "kl_controller": self.kl_ctl.state_dict(),
                    "length_watch": self.length_watch.state_dict(),
                },
            )  # fmt: skip
        crash_point("step", done)

    def finish(self) -> Path:
        """Save the final model (a plain HF folder) and close; returns its folder."""
        self.progress.close()
        final_dir = Path(self.cfg.final_dir or self.output_dir / "final")
        save_hf_folder(
            final_dir, self.model, self.tokenizer, self.runtime, lora=self.cfg.model.lora,
            adapter=self.cfg.model.lora.save_adapter,
        )  # fmt: skip
        loop.finish(self.metrics, self.runtime, final_dir)
        return final_dir
