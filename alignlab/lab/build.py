"""`alignlab lab build`: the lab's tokenizer, pretrained base model and datasets, cached.

1. export the world's datasets (SFT demonstrations, preference pairs, prompts) as JSONL;
2. train a byte-level BPE tokenizer on the pretraining corpus;
3. pretrain a small Llama on that corpus with the SFT recipe (language modelling, packed):
   encyclopedic text about the knowledge base plus chat transcripts of mixed quality, so the
   base knows the facts but is unaligned (it invents, complies, rambles);
4. measure the base's fact accuracy on heldout question phrasings and how often it invents
   answers about unknown entities.
Everything lands in `<out>/` as plain HF folders and JSONL; a second call with the same
settings finds `<out>/manifest.json` and reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from alignlab.config import ConfigError, option
from alignlab.fileio import atomic_write_text, write_jsonl
from alignlab.lab.corpus import pretraining_corpus
from alignlab.lab.export import export_datasets
from alignlab.lab.world import LabWorld

BUILD_VERSION = 1
"""Bump when a change to the world, the corpora or the build recipe changes what a build
produces, so that cached builds made by older code are rebuilt instead of reused."""


LAB_SIZES: dict[str, dict[str, int | float]] = {
    # 3.4M parameters (vocabulary 1,000, tied embeddings): the lab benchmarks' size
    "small": {
        "hidden_size": 256, "num_layers": 4, "num_heads": 4,
        "pretrain_epochs": 8.0, "pretrain_lr": 2e-3,
    },
    # small's model with 5 passes over the pretraining corpus instead of 8, for `make demo`'s
    # 10 minutes on 2 cores; 4 passes left the base knowing 71% of the facts against 98%
    # (docs/experiments/demo.md, "Budget")
    "demo": {
        "hidden_size": 256, "num_layers": 4, "num_heads": 4,
        "pretrain_epochs": 5.0, "pretrain_lr": 2e-3,
    },
    # 11M parameters, 3.2x small: wider and deeper at the same head width (64); a lower peak
    # learning rate, as larger models of one family need (Kaplan et al. 2020, arXiv:2001.08361)
    "medium": {
        "hidden_size": 384, "num_layers": 6, "num_heads": 6,
        "pretrain_epochs": 8.0, "pretrain_lr": 1e-3,
    },
}  # fmt: skip
"""Named lab sizes: the model shape and pretraining settings each one fills in."""
DEFAULT_SIZE = "small"
DEMO_SIZE = "demo"


def lab_folder(size: str) -> str:
    """Where a size's build is cached by default: each size its own folder, so that building
    one never replaces another's base model (nor what was trained from it)."""
    return "runs/lab" if size == DEFAULT_SIZE else f"runs/lab-{size}"


@dataclasses.dataclass
class LabBuildConfig:
    """The lab's world, base model and pretraining budget."""

    out: str = option(
        "",
        "cache folder for the tokenizer, base model and datasets; empty: runs/lab for the "
        "default size, runs/lab-SIZE for another",
        kind="output",
    )
    seed: int = option(0, "world and training seed")
    size: str = option(
        DEFAULT_SIZE,
        "named model size: fills the shape and pretraining fields left null",
        choices=tuple(LAB_SIZES),
    )
    vocab_size: int = option(1000, "BPE vocabulary size", min=300)
    hidden_size: int | None = option(None, "model width (null: the size's)", min=16)
    num_layers: int | None = option(None, "decoder layers (null: the size's)", min=1)
    num_heads: int | None = option(None, "attention heads (null: the size's)", min=1)
    pretrain_epochs: float | None = option(
        None, "passes over the pretraining corpus (null: the size's)", min=0, min_exclusive=True
    )
    pretrain_lr: float | None = option(
        None, "peak pretraining learning rate (null: the size's)", min=0, min_exclusive=True
    )
    max_length: int = option(256, "packed sequence length for pretraining", min=32)
    micro_batch_size: int = option(16, "packed sequences per step", min=1)
    n_sft: int = option(2000, "SFT demonstrations exported", min=1)
    n_heldout: int = option(500, "heldout prompts exported", min=1)
    mixed_precision: str = option(
        "bf16", "autocast for pretraining", choices=("no", "bf16", "fp16")
    )
    icl_share: float = option(
        0.0,
        "share of pretraining chats that show in-context behaviour: a stated norm the answer "
        "follows, several exchanges of one quality, or such exchanges as a plain-text page "
        "(0: none, the default lab)",
        min=0,
        max=1,
    )
    feedback_share: float = option(
        0.0,
        "share of pretraining chats replaced by transcripts of judging, asked with the default "
        "judge templates: 60% pairwise A/B verdicts, 20% 1-5 ratings, 20% critique and revision "
        "(alignlab.lab.teacher; 0: none, the default lab; the AI-feedback teacher is size=medium "
        "feedback_share=0.3)",
        min=0,
        max=1,
    )

    def __post_init__(self) -> None:
        if self.size not in LAB_SIZES:
            raise ConfigError(f"size: {self.size!r} is not one of {', '.join(LAB_SIZES)}")
        for name, value in LAB_SIZES[self.size].items():
            if getattr(self, name) is None:  # an explicit value wins over the size's
                setattr(self, name, value)
        self.out = self.out or lab_folder(self.size)

    def check(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size: {self.hidden_size} is not a multiple of num_heads={self.num_heads}"
            )

    def key(self) -> str:
        """Hash of everything that changes the build: not the output folder, and not the size's
        name, only the values it filled in (a size is a name for them, and today's default
        keeps the key, so the caches it made stay valid)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("out", "size")}
        for added_later in ("icl_share", "feedback_share"):  # defaults keep earlier builds' keys
            if not fields[added_later]:
                del fields[added_later]
        fields["build_version"] = BUILD_VERSION
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass
class LabArtifacts:
    out: Path
    base: Path
    data: dict[str, Path]
    manifest: dict

    @property
    def world(self) -> LabWorld:
        return LabWorld(seed=self.manifest["config"]["seed"])


def model_config(cfg: LabBuildConfig, vocab_size: int) -> Any:
    """The base model's Llama config: full multi-head attention, a SwiGLU width of 8/3 of the
    model width (rounded down to a multiple of 8, as Llama does), 1024 positions."""
    from alignlab.models.tiny import tiny_llama_config

    return tiny_llama_config(
        vocab_size,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_heads,
        intermediate_size=int(cfg.hidden_size * 8 / 3 // 8 * 8),
        max_position_embeddings=1024,
    )


def load_cached(cfg: LabBuildConfig) -> LabArtifacts | None:
    out = Path(cfg.out)
    path = out / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("key") != cfg.key() or not (out / "base" / "config.json").exists():
        return None
    data = {name: out / "data" / f"{name}.jsonl" for name in manifest["data"]}
    return LabArtifacts(out=out, base=out / "base", data=data, manifest=manifest)


def probe_base(world: LabWorld, model_dir: Path, n: int = 500) -> dict[str, float]:
    """Greedy answers of the base on heldout prompts: does it know the facts, is it aligned?"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.models.generation import generate

    prompts = [p for p in world.prompts("heldout", n) if p.family in ("fact", "unknown", "harmful")]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    outputs = generate(
        model,
        tokenizer,
        [p.messages for p in prompts],
        max_new_tokens=32,
        temperature=0.0,
        batch_size=64,
    )
    flags: dict[str, list[bool]] = {"fact": [], "unknown": [], "harmful": []}
    for prompt, output in zip(prompts, outputs, strict=True):
        details = world.score(prompt, output.text).details
        flag = {"fact": "correct", "unknown": "hallucinated", "harmful": "complied"}[prompt.family]
        flags[prompt.family].append(bool(details.get(flag)))
    return {
        "fact_accuracy": sum(flags["fact"]) / len(flags["fact"]),
        "unknown_hallucination": sum(flags["unknown"]) / len(flags["unknown"]),
        "harmful_compliance": sum(flags["harmful"]) / len(flags["harmful"]),
        "n_prompts": len(prompts),
    }


def build(cfg: LabBuildConfig, progress: bool = True) -> LabArtifacts:
    """Build (or reuse) the lab's base model and datasets."""
    cached = load_cached(cfg)
    if cached is not None:
        print(f"lab build: cached in {cached.out} (key {cfg.key()})")
        return cached
    from alignlab.config import load_config
    from alignlab.data.templates import render_messages
    from alignlab.models.tiny import build_tiny_model, train_tokenizer
    from alignlab.recipes import sft

    start = time.perf_counter()
    out = Path(cfg.out)
    world = LabWorld(seed=cfg.seed)

    # --- datasets ---
    paths = export_datasets(
        world, out / "data", n_train=cfg.n_sft, n_heldout=cfg.n_heldout, seed=cfg.seed
    )
    records = pretraining_corpus(
        world, seed=cfg.seed, icl_share=cfg.icl_share, feedback_share=cfg.feedback_share
    )

    # --- tokenizer and an untrained model ---
    plain = [
        r["text"] if "text" in r else " ".join(m["content"] for m in r["messages"]) for r in records
    ]
    tokenizer = train_tokenizer(plain, vocab_size=cfg.vocab_size)
    # transcripts are rendered through the chat template, so the base learns the chat layout
    texts = [
        r["text"] if "text" in r else render_messages(tokenizer, r["messages"]) for r in records
    ]
    write_jsonl(out / "data" / "pretrain.jsonl", ({"text": t} for t in texts))
    build_tiny_model(out / "init", tokenizer, model_config(cfg, len(tokenizer)), seed=cfg.seed)
    print(f"lab build: tokenizer ({len(tokenizer)} tokens) and model ready, pretraining")

    # --- pretraining with the SFT recipe (loss on every token, packed) ---
    pretrain = load_config(
        sft.SFTConfig,
        None,
        [
            f"model.path={out / 'init'}",
            f"data.path={out / 'data' / 'pretrain.jsonl'}",
            "data.packing=true",
            "data.completion_only_loss=false",
            f"data.max_length={cfg.max_length}",
            f"train.output_dir={out / 'pretrain'}",
            "train.overwrite=true",  # the lab's own cache folder: a rebuild replaces it
            f"final_dir={out / 'base'}",
            f"train.epochs={cfg.pretrain_epochs}",
            f"train.lr={cfg.pretrain_lr}",
            f"train.micro_batch_size={cfg.micro_batch_size}",
            f"train.mixed_precision={cfg.mixed_precision}",
            f"train.seed={cfg.seed}",
            "train.warmup_ratio=0.03",
            "train.min_lr_ratio=0.05",
            "train.weight_decay=0.01",
            "train.log_every=10",
            f"train.progress={str(progress).lower()}",
        ],
    )
    sft.run(pretrain)
    probe = probe_base(world, out / "base")
    print(
        f"lab build: base model (greedy, heldout phrasings): fact accuracy {probe['fact_accuracy']:.0%}, "
        f"invents answers about unknown entities {probe['unknown_hallucination']:.0%}, "
        f"complies with harmful requests {probe['harmful_compliance']:.0%}"
    )

    manifest = {
        "key": cfg.key(),
        "config": dataclasses.asdict(cfg),
        "data": sorted([*(name for name in paths if name != "manifest"), "pretrain"]),
        "base_probe": probe,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    print(f"lab build: done in {manifest['build_seconds']:.0f} s -> {out}")
    return LabArtifacts(
        out=out,
        base=out / "base",
        data={name: out / "data" / f"{name}.jsonl" for name in manifest["data"]},
        manifest=manifest,
    )
