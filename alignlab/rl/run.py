"""The run object of the RL recipes: set-up, the step loop's seeds, logging, checkpoints, finish.

    run = RLRun(cfg, "grpo")            # runtime, prompts, policy, reference, optimizer, resume
    for step in run.steps():
        exp = run.collect(step)         # alignlab.rl.experience.Collector
        ...                             # the recipe: advantages, loss, run.update_policy(...)
        run.end_step(step, record)      # guard-rails, metrics, progress, step checkpoint
    return run.finish()                 # the final policy, a plain HF folder

`cfg` must have sections `model`, `data` (PromptDataConfig), `train` (TrainConfig), `rl`
(RLConfig), `reference` (RLReferenceConfig) and a `final_dir` option. `vision=True`: the
policy is an image-text-to-text model (`alignlab.models.vlm.load_vlm`; `cfg.trainable` says
which parts train), the prompts carry images, and `self.tokenizer` is the processor, saved
beside the model; the rollout, the loss and the update are the text ones
(`alignlab.rl.rollout`).

Sizes: `rl.prompts_per_step` prompts x `rl.samples_per_prompt` samples per rollout, split
evenly over the processes; `rl.mini_batch_size` samples per optimizer step (0 = the whole
rollout), `rl.num_iterations` passes: `updates_per_step` optimizer steps per rollout, which
also set the learning-rate schedule's length.

Under torchrun the policy is sharded with FSDP2. HF `generate` cannot run on the sharded
model (the root's embeddings and output projection are only unsharded inside the root's
forward), so each process keeps an unsharded copy of the policy for sampling, refreshed from
the full state dict before every rollout (one all-gather per step, one full copy of the
weights per process). The log-prob, reference and training forwards use the sharded model.

Resuming (`train.resume`): weights, optimizer, scheduler, the KL controller and the length
watch come back from the last step checkpoint; prompts and seeds are functions of the step,
so the resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from alignlab.config import ConfigError, TrainConfig
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.vlm import (
    load_vlm,
    load_vlm_for_training,
    load_vlm_processor,
    trainable_summary,
)
from alignlab.models.vlm_generation import encode_vlm_prompt
from alignlab.rl.config import RLConfig
from alignlab.rl.experience import Collector
from alignlab.rl.guards import LengthWatch, check_kl_runaway, warn_length_hacking
from alignlab.rl.kl import AdaptiveKLController, FixedKLController
from alignlab.rl.minibatch import Aggregation, TokenLosses, UpdateSizes, minibatch_update
from alignlab.rl.prompts import check_generation_fits, load_prompt_rows
from alignlab.rl.reference import RLReference
from alignlab.training import distributed, loop
from alignlab.training.batches import BatchSchedule
from alignlab.training.checkpoint import (
    crash_point,
    load_checkpoint_state,
    save_checkpoint,
    save_hf_folder,
)
from alignlab.training.optim import build_optimizer, build_scheduler


class RLRun:
    """Set-up and bookkeeping of an RL run (module docstring); the recipe owns the step."""

    def __init__(self, cfg: Any, name: str, vision: bool = False) -> None:
        self.cfg, self.name = cfg, name
        self.runtime = runtime = distributed.init_runtime()
        self.train_cfg: TrainConfig = cfg.train
        self.rl: RLConfig = cfg.rl
        train, rl = self.train_cfg, self.rl
        self.output_dir = Path(train.output_dir)
        self.folder = loop.start_run(cfg, runtime)
        self.resume_from = self.folder.resume_from

        # --- prompts and sizes ---
        prompt_length = None
        if vision:
            if cfg.data.max_prompt_tokens:
                raise ConfigError(
                    "data.max_prompt_tokens does not count image tokens yet; set it to 0 for "
                    "vision-language prompts"
                )
            self.tokenizer = processor = load_vlm_processor(cfg.model)
            text_tokenizer = processor.tokenizer

            def prompt_length(row: Any) -> int:
                return len(encode_vlm_prompt(processor, row.prompt, row.load_images()).ids)

        else:
            self.tokenizer = text_tokenizer = load_tokenizer(cfg.model)
        rows = load_prompt_rows(cfg.data, text_tokenizer)
        if vision:  # a plain-text prompt is one user turn
            for row in rows:
                if isinstance(row.prompt, str):
                    row.prompt = [{"role": "user", "content": row.prompt}]
        elif any(row.images for row in rows):
            raise ConfigError(
                f"data.path={cfg.data.path}: its prompts carry images, which a text policy "
                f"cannot see; use the vision recipe (alignlab vlm_{name}) with a VLM"
            )
        check_generation_fits(
            cfg.model, text_tokenizer, rows, "rl.max_new_tokens", rl.max_new_tokens, prompt_length
        )
        world = runtime.world_size
        global_mini = rl.mini_batch_size or rl.prompts_per_step * rl.samples_per_prompt
        for setting, value in (
            ("rl.prompts_per_step", rl.prompts_per_step),
            ("rl.mini_batch_size", global_mini),
        ):
            if value % world:
                raise ConfigError(f"{setting}={value} must be a multiple of the {world} processes")
        prompts_per_rank = rl.prompts_per_step // world
        self.sizes = UpdateSizes(
            passes=rl.num_iterations,
            mini_batch=global_mini // world,
            micro_batch=train.micro_batch_size,
            max_grad_norm=train.max_grad_norm,
            mixed_precision=train.mixed_precision,
        )
        self.updates_per_step = self.sizes.optimizer_steps(prompts_per_rank * rl.samples_per_prompt)
        schedule = BatchSchedule(len(rows), rl.prompts_per_step, train.seed)
        self.total_steps = schedule.total_steps(train.epochs, train.max_steps)
        if runtime.is_main:
            print(
                f"{name}: {len(rows)} prompts, {self.total_steps} steps of "
                f"{rl.prompts_per_step} prompts x {rl.samples_per_prompt} samples, "
                f"{self.updates_per_step} optimizer steps each"
            )

        # --- policy, its sampling copy under FSDP2, reference, optimizer ---
        device = runtime.device
        load_reference = None
        if vision:
            self.model, _, counts = load_vlm_for_training(
                cfg.model, **dataclasses.asdict(cfg.trainable), device=device,
                processor=processor, weights_from=self.resume_from,
            )  # fmt: skip
            if runtime.is_main:
                print(trainable_summary(counts))

            def load_reference(model_cfg: Any, device: torch.device) -> torch.nn.Module:
                return load_vlm(model_cfg, device, processor)[0]

        else:
            self.model = load_model(
                cfg.model, self.tokenizer, weights_from=self.resume_from, device=device
            )
        self.policy = TokenLogProbs(self.model, chunk_size=train.loss_chunk_size)
        generation_model = None
        if runtime.distributed:
            generation_model = copy.deepcopy(self.model).eval()
            generation_model.requires_grad_(False)
            distributed.shard_model(self.policy, self.model, runtime)
        reference = None
        if rl.uses_reference:
            reference = RLReference(
                cfg.reference, cfg.model, self.tokenizer, runtime,
                train.loss_chunk_size, train.mixed_precision, load=load_reference,
            )  # fmt: skip
            reference.attach(self.policy)
        self.optimizer = build_optimizer(self.policy, train)
        total_updates = self.total_steps * self.updates_per_step
        self.scheduler = build_scheduler(self.optimizer, total_updates, train)

        # --- KL controller, guard-rails, resume, metrics ---
        self.kl_ctl = (
            AdaptiveKLController(rl.kl_coef, rl.kl_target, rl.kl_horizon)
            if rl.kl_target > 0
            else FixedKLController(rl.kl_coef)
        )
        self.length_watch = LengthWatch(rl.length_watch_steps)
        self.start_step = 0
        if self.resume_from is not None:
            state = load_checkpoint_state(
                self.resume_from, self.optimizer, self.scheduler, runtime, root=self.policy
            )
            self.start_step = state["step"]
            self.kl_ctl.load_state_dict(state["kl_controller"])
            self.length_watch.load_state_dict(state.get("length_watch", {}))
        self.metrics = loop.open_metrics(self.folder, train, self.start_step)

        # --- rewards and experience ---
        reward_fn, gold_fn = rl.build(device)
        self.collect = Collector(
            rl, rows, schedule, prompts_per_rank, runtime, self.tokenizer, self.model,
            self.policy, generation_model, reference, reward_fn, gold_fn,
            train.mixed_precision, seed=lambda step: self.step_seed(step) * 10_007, vision=vision,
        )  # fmt: skip
        self.progress = tqdm(
            total=self.total_steps,
            initial=self.start_step,
            desc=name,
            disable=not (runtime.is_main and train.progress),
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )

    def steps(self) -> Iterator[int]:
        """Step indices still to run (from the resumed step)."""
        yield from range(self.start_step, self.total_steps)

    def step_seed(self, step: int, salt: int = 0) -> int:
        """A seed that depends only on (train.seed, step, rank, salt)."""
        value = ((self.train_cfg.seed * 1_000_003 + step) * 1_009 + self.runtime.rank) * 101
        return (value + salt) % (2**62)

    def generator(self, step: int, salt: int) -> torch.Generator:
        """The mini-batch shuffle of one model's update at `step` (salt: which model)."""
        return torch.Generator().manual_seed(self.step_seed(step, salt))

    def update_policy(
        self,
        step: int,
        roll: Any,
        token_losses: TokenLosses,
        aggregate: Aggregation,
        extra_loss: Callable[[], torch.Tensor] | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """The policy's mini-batch updates on the rollout (`alignlab.rl.minibatch`)."""
        return minibatch_update(
            self.policy, self.optimizer, self.scheduler, roll, token_losses, aggregate,
            self.sizes, self.runtime, self.generator(step, salt=1), extra_loss=extra_loss,
            loss_mask=loss_mask,
        )  # fmt: skip

    def end_step(
        self,
        step: int,
        record: dict[str, float],
        extra_files: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Guard-rails, metrics, progress bar, the step checkpoint (with `extra_files()`, e.g.
        the critic, when one is due) and the test suite's crash point. `record` holds the
        step's summary (`Experience.summary`) and update statistics."""
        done = step + 1
        hacking = self.length_watch.update(record["response_length"], record["reward_mean"])
        record = {**record, "length_hack_warning": float(hacking)}
        if done % self.train_cfg.log_every == 0 or done == self.total_steps or hacking:
            self.metrics.log(done, record, prefix="train/")
        self.progress.set_postfix(
            reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl_ref']:.3f}",
            len=f"{record['response_length']:.1f}", refresh=False,
        )  # fmt: skip
        self.progress.update(1)
        if hacking and self.runtime.is_main:
            warn_length_hacking(self.name, done, self.rl.length_watch_steps)
        if self.collect.reference is not None:
            check_kl_runaway(self.name, done, record["kl_ref"], self.rl.max_kl, self.output_dir)
        save_every = self.train_cfg.save_every
        if save_every and done % save_every == 0 and done < self.total_steps:
            save_checkpoint(
                self.output_dir, done, self.model, self.tokenizer, self.optimizer,
                self.scheduler, self.runtime, lora=self.cfg.model.lora,
                keep=self.train_cfg.keep_checkpoints, root=self.policy,
                extra_files=extra_files() if extra_files else None,
                trainer_state={
                    "total_steps": self.total_steps,
                    "kl_controller": self.kl_ctl.state_dict(),
                    "length_watch": self.length_watch.state_dict(),
                },
            )  # fmt: skip
        crash_point("step", done)

    def finish(self) -> Path:
        """Save the final policy (a plain HF folder) and close; returns its folder."""
        self.progress.close()
        final_dir = Path(self.cfg.final_dir or self.output_dir / "final")
        save_hf_folder(
            final_dir, self.model, self.tokenizer, self.runtime, lora=self.cfg.model.lora,
            adapter=self.cfg.model.lora.save_adapter,
        )  # fmt: skip
        loop.finish(self.metrics, self.runtime, final_dir)
        return final_dir
