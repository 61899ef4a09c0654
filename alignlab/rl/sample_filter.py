"""Sample, score, filter, fine-tune: the pieces shared by ReST, RAFT and best-of-n.

A recipe reads as its algorithm; the plumbing lives here:

    session = SampleFilterSession(cfg, "rest", sft.stage)  # prompts, rewards, metrics
    samples = session.sample(policy, rows, stage_dir, seed)   # K per prompt, scored, saved
    keep = at_or_above(samples.rewards, threshold)     # ReST's Improve filter, or
    keep = best_per_prompt(samples.rewards, K)         # RAFT / best-of-n: argmax per prompt
    policy = session.finetune(policy, samples.records(keep), stage_dir)   # an SFT stage
    return session.finish(policy)                      # <output_dir>/final

Samples are prompt-major: sample n answers prompt n // K (as in `alignlab.rl.rollout`). A
record is an SFT row in TRL's prompt/completion format (a string prompt gets a string
completion, a message-list prompt an assistant message, so the chat template renders it as it
was sampled) plus its `reward`, `finished`, `prompt_index` and `gold`: a filtered set of
records is a training file as it stands. The SFT recipe ends a string completion with EOS, so
a response cut by max_new_tokens is trained as if it ended there; an empty response (EOS
first) is not trained on at all.

Each fine-tuning stage is the SFT recipe (`alignlab.recipes.sft.stage`, handed in by the
recipe) in its own folder with
the run's `model` and `train` sections, so checkpoints, metrics and `train.resume` work as for
SFT. With `train.resume=true` a rerun reads back a stage's samples when its samples.jsonl
exists, skips a stage whose final/ exists (both are written atomically, so they are complete)
and continues an unfinished one from its last checkpoint; a resumed run assumes the same
config. Without it every stage runs again.

Under torchrun one process group serves the whole run (the session's `init_runtime`; each SFT
stage joins it and leaves it up, `finish` ends it). Each process samples and scores a
contiguous block of the stage's prompts with its own seed on an unsharded copy of the policy;
the blocks are gathered in rank order, so every process holds the same prompt-major samples
(as one process would lay them out) and the filters pick the same records everywhere. Rank 0
writes the files (samples.jsonl, sft.jsonl, config.yaml, metrics, final/), and the SFT stage
trains on them under FSDP2 like `alignlab sft` under torchrun.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from alignlab.config import (
    ConfigError,
    DataConfig,
    LoraConfig,
    ModelConfig,
    TrainConfig,
    option,
)
from alignlab.data.templates import Messages
from alignlab.fileio import atomic_folder, write_jsonl
from alignlab.models.generation import Generation
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.rl.prompts import PromptRow, check_generation_fits, load_prompt_rows
from alignlab.rl.rewards import RewardFn, RewardOptions
from alignlab.rl.rollout import rollout
from alignlab.training import distributed, loop
from alignlab.training.batches import micro_batches
from alignlab.training.metrics import MetricsLogger
from alignlab.training.run_folder import RunFolder

Prompt = str | Messages


@dataclasses.dataclass
class SampleConfig(RewardOptions):
    """How responses are sampled from the current policy and scored."""

    samples_per_prompt: int = option(4, "responses sampled per prompt", min=1)
    max_new_tokens: int = option(64, "response budget in tokens", min=1)
    temperature: float = option(1.0, "sampling temperature", min=0, min_exclusive=True)
    top_p: float = option(1.0, "nucleus sampling mass", min=0, max=1, min_exclusive=True)
    stop_strings: list[str] = option([], "cut responses at the first of these strings")
    batch_size: int = option(32, "sequences per generation batch", min=1)

    def check(self) -> None:
        self.require_reward("sampling.reward")


def check_stages(model: ModelConfig) -> None:
    """Cross-section check (call from the recipe config's `check`): every stage's final folder
    is loaded as plain weights by the next stage's sampling."""
    if model.lora.enabled and not model.lora.save_merged:
        raise ConfigError(
            "model.lora.save_merged=false: the next stage samples from each stage's final "
            "folder, which needs merged weights; keep save_merged=true"
        )


# --- sampling and scoring ---


@dataclasses.dataclass
class ScoredSamples:
    """K responses per prompt with their rewards, prompt-major (sample n answers prompt n // K)."""

    prompts: list[Prompt]
    """(N,) the prompt of each sample, as given (not rendered)."""
    texts: list[str]
    finished: list[bool]
    rewards: list[float]
    gold: list[float] | None
    samples_per_prompt: int
    generations: list[Generation] = dataclasses.field(default_factory=list)
    """The sampled token ids; empty when read back from a file or gathered from processes."""

    def __len__(self) -> int:
        return len(self.texts)

    def records(self, indices: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """The samples at `indices` (default all) as SFT rows with their scores."""
        rows = []
        for n in range(len(self)) if indices is None else indices:
            row = sft_row(self.prompts[n], self.texts[n])
            row["reward"] = self.rewards[n]
            if self.gold is not None:
                row["gold"] = self.gold[n]
            row["finished"] = self.finished[n]
            row["prompt_index"] = n // self.samples_per_prompt
            rows.append(row)
        return rows

    @classmethod
    def read(cls, path: Path, samples_per_prompt: int) -> ScoredSamples:
        """All of `records()` back from a JSONL file (without token ids)."""
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return cls(
            prompts=[row["prompt"] for row in rows],
            texts=[response_text(row) for row in rows],
            finished=[bool(row["finished"]) for row in rows],
            rewards=[float(row["reward"]) for row in rows],
            gold=[float(row["gold"]) for row in rows] if rows and "gold" in rows[0] else None,
            samples_per_prompt=samples_per_prompt,
        )

    @classmethod
    def concat(cls, parts: Sequence[ScoredSamples], samples_per_prompt: int) -> ScoredSamples:
        """The samples of `parts` one after another (without token ids); each part holds
        whole prompts, so the result stays prompt-major."""
        has_gold = bool(parts) and parts[0].gold is not None
        return cls(
            prompts=[p for part in parts for p in part.prompts],
            texts=[t for part in parts for t in part.texts],
            finished=[f for part in parts for f in part.finished],
            rewards=[r for part in parts for r in part.rewards],
            gold=[g for part in parts for g in part.gold or []] if has_gold else None,
            samples_per_prompt=samples_per_prompt,
        )


def sft_row(prompt: Prompt, text: str) -> dict[str, Any]:
    """A prompt/completion SFT row of one response (see the module docstring)."""
    if isinstance(prompt, str):
        return {"prompt": prompt, "completion": text}
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": text}]}


def response_text(row: dict[str, Any]) -> str:
    """The response of an `sft_row`."""
    completion = row["completion"]
    return completion if isinstance(completion, str) else completion[0]["content"]


def sample_and_score(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    extras: Sequence[dict[str, Any]] | None,
    reward_fn: RewardFn,
    samples_per_prompt: int,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop_strings: Sequence[str] = (),
    batch_size: int = 32,
    seed: int = 0,
    gold_fn: RewardFn | None = None,
) -> ScoredSamples:
    """`samples_per_prompt` responses per prompt (`alignlab.rl.rollout.rollout` without
    log-probs) scored by `reward_fn(prompts, texts, extras)` and `gold_fn`; `extras[i]` (the
    prompt row's other keys) go with every sample of prompt i."""
    roll = rollout(
        model, tokenizer, prompts, samples_per_prompt, max_new_tokens, temperature, top_p,
        seed=seed, batch_size=batch_size, stop_strings=stop_strings, score=False,
    )  # fmt: skip
    extras = list(extras) if extras is not None else [{} for _ in prompts]
    sample_extras = [extra for extra in extras for _ in range(samples_per_prompt)]
    rewards = reward_fn(roll.prompts, roll.texts, sample_extras)
    gold = gold_fn(roll.prompts, roll.texts, sample_extras) if gold_fn is not None else None
    return ScoredSamples(
        prompts=roll.prompts,
        texts=roll.texts,
        finished=roll.finished.tolist(),
        rewards=[float(r) for r in rewards],
        gold=[float(g) for g in gold] if gold is not None else None,
        samples_per_prompt=samples_per_prompt,
        generations=roll.generations,
    )


# --- filters ---


def quantile_threshold(rewards: Sequence[float], quantile: float) -> float:
    """The `quantile` of `rewards`, taken at an observed value (the lower one), so keeping the
    rewards >= it keeps at least a (1 - quantile) fraction of the samples."""
    values = torch.tensor(list(rewards), dtype=torch.float64)
    return float(torch.quantile(values, quantile, interpolation="lower"))


def at_or_above(rewards: Sequence[float], threshold: float) -> list[int]:
    """Indices of the samples whose reward is >= `threshold`."""
    return [n for n, reward in enumerate(rewards) if reward >= threshold]


def best_per_prompt(rewards: Sequence[float], samples_per_prompt: int) -> list[int]:
    """Index of the highest-reward sample of each prompt (the first one on ties)."""
    if len(rewards) % samples_per_prompt:
        raise ValueError(f"{len(rewards)} rewards are not groups of {samples_per_prompt}")
    grouped = torch.tensor(list(rewards), dtype=torch.float64).view(-1, samples_per_prompt)
    first_max = grouped.argmax(1)  # torch returns the first maximal index
    return (first_max + torch.arange(len(grouped)) * samples_per_prompt).tolist()


def mean(values: Sequence[float]) -> float | None:
    """The mean, None for no values (JSON null in metrics)."""
    return sum(values) / len(values) if values else None


# --- the session ---


# The SFT recipe run as a stage of this run (`alignlab.recipes.sft.stage`): the recipes hand it
# in, so this module does not import a recipe.
SFTStage = Callable[[ModelConfig, DataConfig, TrainConfig, RunFolder], Path]


class SampleFilterSession:
    """Set-up, sampling stages, SFT stages, metrics and the final folder of a sample-filter-
    fine-tune recipe. `cfg` must have sections `model`, `data` (PromptDataConfig), `train`
    (TrainConfig), `sampling` (SampleConfig) and a `final_dir` option."""

    def __init__(self, cfg: Any, name: str, sft_stage: SFTStage) -> None:
        self.cfg, self.name, self.sft_stage = cfg, name, sft_stage
        # the run's process group: the SFT stages join it, `finish` ends it
        self.runtime = runtime = distributed.init_runtime()
        self.resume = cfg.train.resume
        self.output_dir = Path(cfg.train.output_dir)
        self.folder = loop.start_run(cfg, runtime)
        self.device = runtime.device
        tokenizer = load_tokenizer(cfg.model)
        self.rows: list[PromptRow] = load_prompt_rows(cfg.data, tokenizer)
        new_tokens = cfg.sampling.max_new_tokens
        check_generation_fits(
            cfg.model, tokenizer, self.rows, "sampling.max_new_tokens", new_tokens
        )
        self.reward_fn, self.gold_fn = cfg.sampling.build(self.device)
        # a resumed run logs its completed stages again from their files: one record per stage
        self.folder.claim()
        self.metrics = MetricsLogger(
            self.output_dir,
            enabled=runtime.is_main,
            tensorboard=cfg.train.tensorboard,
            resume_step=0 if self.resume else None,
        )
        if runtime.is_main:
            print(f"{name}: {len(self.rows)} prompts")

    def seed(self, stage: int) -> int:
        """A generation seed that depends only on (train.seed, stage, rank)."""
        value = (self.cfg.train.seed * 1_000_003 + stage) * 10_007 + self.runtime.rank * 1_009
        return value % (2**62)

    def sample(
        self, policy: str | Path, rows: Sequence[PromptRow], stage_dir: Path, seed: int
    ) -> ScoredSamples:
        """K scored samples per row from the policy folder; saved to stage_dir/samples.jsonl.
        Under torchrun each process samples its block of `rows`; all of them get every sample."""
        sampling, runtime = self.cfg.sampling, self.runtime
        k = sampling.samples_per_prompt
        path = stage_dir / "samples.jsonl"
        if self.resume and path.exists():
            return ScoredSamples.read(path, k)
        # contiguous blocks (the last ones shorter, or empty, when the count does not divide):
        # gathered in rank order they are the prompt-major layout of one process
        per_rank = -(-len(rows) // runtime.world_size)
        mine = [rows[i] for i in micro_batches(list(range(len(rows))), runtime, per_rank, 1)[0]]
        local = ScoredSamples([], [], [], [], [] if self.gold_fn is not None else None, k)
        if mine:
            local = self._sample_rows(policy, mine, seed)
            local.generations = []  # token ids stay here; the records need only the texts
        samples = ScoredSamples.concat(distributed.all_gather_objects(local, runtime), k)
        if runtime.is_main:
            write_jsonl(path, samples.records())
        return samples

    def _sample_rows(
        self, policy: str | Path, rows: Sequence[PromptRow], seed: int
    ) -> ScoredSamples:
        """K scored samples per row, on this process (an unsharded copy of the policy)."""
        sampling = self.cfg.sampling
        model_cfg = dataclasses.replace(
            self.cfg.model,
            path=str(policy),
            revision=self._revision(policy),
            gradient_checkpointing=False,
            lora=LoraConfig(enabled=False),  # stages save merged weights
        )
        tokenizer = load_tokenizer(model_cfg)
        model = load_model(model_cfg, tokenizer, device=self.device)
        samples = sample_and_score(
            model, tokenizer, [row.prompt for row in rows], [row.extras for row in rows],
            self.reward_fn, sampling.samples_per_prompt,
            max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
            top_p=sampling.top_p, stop_strings=sampling.stop_strings,
            batch_size=sampling.batch_size, seed=seed, gold_fn=self.gold_fn,
        )  # fmt: skip
        del model  # the SFT stage loads its own copy
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return samples

    def finetune(
        self, policy: str | Path, records: list[dict[str, Any]], stage_dir: Path
    ) -> str | Path:
        """The SFT recipe from `policy` on `records` in `stage_dir`; returns its final folder
        (`policy` unchanged when there is nothing to train on). Empty responses are left out:
        an SFT completion cannot be empty (the data check refuses it). Every process passes the
        same records and takes the same branch."""
        is_main = self.runtime.is_main
        stage = stage_dir.relative_to(self.output_dir)
        records = [row for row in records if response_text(row).strip()]
        if not records:
            if is_main:
                warnings.warn(
                    f"{self.name} {stage}: no non-empty sample passed the filter; the policy is "
                    "unchanged",
                    stacklevel=2,
                )
            return policy
        final_dir = stage_dir / "final"
        if self.resume and (final_dir / "config.json").exists():
            if is_main:
                print(f"{self.name} {stage}: done before, skipped")
            return final_dir
        if is_main:
            write_jsonl(stage_dir / "sft.jsonl", records)
        distributed.barrier(self.runtime)  # every process's SFT stage reads the file
        return self.sft_stage(
            dataclasses.replace(self.cfg.model, path=str(policy), revision=self._revision(policy)),
            # no length limit: prompt + response were sampled from this model, so they fit
            DataConfig(path=str(stage_dir / "sft.jsonl"), max_length=0),
            dataclasses.replace(self.cfg.train, output_dir=str(stage_dir)),
            self.folder,
        )

    def _revision(self, policy: str | Path) -> str:
        """The base's hub revision; stage folders are local, a revision does not apply."""
        return self.cfg.model.revision if str(policy) == self.cfg.model.path else ""

    def finish(self, policy: str | Path) -> Path:
        """Copy the last policy to final_dir (default <output_dir>/final), end the process
        group; return the folder."""
        final_dir = Path(self.cfg.final_dir or self.output_dir / "final")
        if not Path(policy).is_dir():
            raise RuntimeError(
                f"{self.name}: no stage had samples to train on, and the base {policy} is not a "
                "local folder to copy as the final model; lower the filter threshold"
            )
        if self.runtime.is_main:
            with atomic_folder(final_dir) as tmp:
                shutil.copytree(policy, tmp, dirs_exist_ok=True)
        loop.finish(self.metrics, self.runtime, final_dir)  # its barrier waits for the copy
        return final_dir
