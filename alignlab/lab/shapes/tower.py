"""The lab's vision tower: a small CLIP ViT pretrained contrastively on the shapes world, so
that the lab's LLaVA (`alignlab.lab.shapes.llava`) starts stage 1 as LLaVA does, from a tower
that sees and an LLM that reads, never trained together.

CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", arXiv:2103.00020): an image encoder and a text encoder, each with a linear
projection into one space, trained so that each image is closest to its own caption among
the batch's, by symmetric InfoNCE with a learned temperature
(`alignlab.losses.contrastive.clip_contrastive_loss`):

    loss = mean_i ( CE(s I_i . T^T, i) + CE(s T_i . I^T, i) ) / 2,    s = min(exp(t), 100)

Here the pairs are a fresh rendered scene of the train split per example (seeded) and the
world's reference caption (`text.caption`). The image encoder is a `CLIPVisionModel` (by
default 64 px, 8-px patches, width 96, 3 layers: 0.36M parameters); the text encoder a 2-layer
`CLIPTextModel` over a word-level vocabulary of the caption grammar, pooled at its end token
as CLIP's is. Only the vision tower is kept: the text encoder and both projections are
dropped, as LLaVA drops CLIP's text side.

Differences from CLIP: a closed synthetic world instead of 400M web pairs; a vocabulary of the
grammar's words instead of BPE; batches of 128 for a few hundred AdamW steps (CLIP: 32,768
for 32 epochs); no augmentation. The temperature is clipped in the loss's forward pass.

Evaluation, on valid scenes (whose (colour, kind, cell) triples train never shows):

- retrieval: top-1 accuracy image -> caption and caption -> image within batches of
  `eval_batch_size` scenes (chance 1 / 64 by default);
- caption vs corrupted: how often an image is closer to its caption than to the caption with
  one shape recoloured, invented or left out (`text.corrupt_caption`; chance 0.5), and vs
  the caption with one shape's kind changed (`kind_swapped`): binding of colour, kind and
  place, which batch retrieval can mostly do without;
- cell probe: a ridge least-squares linear classifier from the features LLaVA's projector
  reads (layer FEATURE_LAYER's features of the patches whose centres lie in a grid cell,
  side by side) to the cell's colour and kind, empty being a class of its own; fitted on
  train scenes, scored on the valid scenes' occupied cells. The same probe of the tower at
  initialisation (the `initial` record) is the baseline: the pixels themselves already carry
  much of it linearly.

`pretrain_tower(out, cfg)` is cached: a rerun with the same config returns the finished
tower. It writes out/metrics.jsonl (loss, scale s, lr per logged step; eval/... at each
evaluation) and out/final, a plain HF CLIPVisionModel folder (config.json,
model.safetensors, preprocessor_config.json) with tower_metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig, CLIPVisionModel

from alignlab.config import ConfigError, TrainConfig, build, check_all, option, to_dict
from alignlab.fileio import atomic_folder
from alignlab.lab.shapes.render import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, render
from alignlab.lab.shapes.spec import CELLS, COLOURS, KINDS, SIZES, Scene, Shape
from alignlab.lab.shapes.text import ShapesWorld, caption, corrupt_caption, describe
from alignlab.losses.contrastive import clip_contrastive_loss
from alignlab.models.vlm_tiny import clip_image_processor
from alignlab.recipes.stages import cached, stage_key
from alignlab.training.loop import progress_bar
from alignlab.training.metrics import MetricsLogger
from alignlab.training.optim import build_scheduler

FEATURE_LAYER = -2
"""The hidden state LLaVA's projector reads (LLaVA: the second last layer). CLIP's loss
trains the last layer's CLS output only, so the last layer's patch outputs are untrained."""
TOWER_METRICS = "tower_metrics.json"

# --- config -------------------------------------------------------------------------------


@dataclasses.dataclass
class TowerConfig:
    """Contrastive pretraining of the lab's vision tower (module docstring)."""

    seed: int = option(0, "shapes world seed (splits, scenes; as the lab's) and init seed")
    image_size: int = option(
        64, "image side in pixels (rendered at this size)", min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE
    )
    patch_size: int = option(8, "ViT patch side in pixels; must divide image_size", min=1)
    hidden_size: int = option(96, "tower width", min=8)
    num_layers: int = option(3, "tower layers (LLaVA reads the second last)", min=2)
    num_heads: int = option(4, "attention heads of the tower and the text encoder", min=1)
    text_hidden_size: int = option(64, "text encoder width (thrown away after)", min=8)
    text_layers: int = option(2, "text encoder layers", min=1)
    projection_dim: int = option(64, "size of the shared embedding space", min=1)
    steps: int = option(300, "optimizer steps", min=1)
    batch_size: int = option(
        128, "image-caption pairs per step: each has batch_size - 1 negatives", min=2
    )
    lr: float = option(1e-3, "peak AdamW learning rate", min=0, min_exclusive=True)
    weight_decay: float = option(0.1, "AdamW weight decay", min=0)
    warmup_steps: int = option(20, "linear warm-up steps, then cosine decay to 0", min=0)
    eval_every: int = option(
        100, "evaluate every N steps (and before the first, after the last)", min=1
    )
    n_eval: int = option(512, "valid scenes evaluated", min=2)
    eval_batch_size: int = option(64, "scenes per retrieval batch (chance: 1 / this)", min=2)
    n_probe: int = option(1024, "train scenes the cell probe is fitted on", min=1)
    log_every: int = option(10, "log the training loss every N steps", min=1)
    progress: bool = option(True, "show a tqdm progress bar")

    def check(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"patch_size={self.patch_size}: must divide image_size={self.image_size}"
            )
        for name in ("hidden_size", "text_hidden_size"):
            if getattr(self, name) % self.num_heads:
                raise ConfigError(
                    f"{name}={getattr(self, name)}: must be a multiple of "
                    f"num_heads={self.num_heads}"
                )
        if self.n_eval < self.eval_batch_size:
            raise ConfigError(
                f"n_eval={self.n_eval}: must be at least eval_batch_size={self.eval_batch_size}"
            )


# --- captions as word ids -----------------------------------------------------------------

PAD, EOS = "<pad>", "<eos>"
WORDS = sorted(
    {w for cell in CELLS for w in cell.split()}
    | set(COLOURS) | set(KINDS) | set(SIZES) | {"a", "in", "the", "and", ",", "."}
)  # fmt: skip
VOCAB = (PAD, EOS, *WORDS)
"""Every word of the caption grammar (`text.describe`), padding id 0, end token id 1."""
WORD_IDS = {word: index for index, word in enumerate(VOCAB)}
MAX_CAPTION_TOKENS = 64  # 6 shapes x 8 words + 4 commas + "and" + "." + end = 55


def caption_ids(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, T): the words of each caption, then the end
    token the text encoder pools at, right-padded."""
    sequences = []
    for text in texts:
        words = re.findall(r"[a-z]+|[,.]", text.lower())
        unknown = sorted(set(words) - set(WORD_IDS))
        if unknown:
            raise ValueError(f"caption {text!r}: words outside the shapes grammar: {unknown}")
        sequences.append([WORD_IDS[w] for w in words] + [WORD_IDS[EOS]])
    length = max(map(len, sequences))
    ids = torch.full((len(sequences), length), WORD_IDS[PAD], dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    return ids, mask


# --- model --------------------------------------------------------------------------------


def clip_config(cfg: TowerConfig) -> CLIPConfig:
    vision = CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=4 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.projection_dim,
    )
    text = CLIPTextConfig(
        vocab_size=len(VOCAB),
        hidden_size=cfg.text_hidden_size,
        intermediate_size=4 * cfg.text_hidden_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.num_heads,
        max_position_embeddings=MAX_CAPTION_TOKENS,
        pad_token_id=WORD_IDS[PAD],
        bos_token_id=WORD_IDS[PAD],  # unused: captions start with their first word
        eos_token_id=WORD_IDS[EOS],  # pooled here (an id other than 2: see CLIPTextTransformer)
        projection_dim=cfg.projection_dim,
    )
    return CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=cfg.projection_dim,
    )


class Batch:
    """Pixel values (B, 3, H, W) and caption ids of `scenes`, preprocessed as the LLaVA's
    processor will (`clip_image_processor`)."""

    def __init__(self, scenes: Sequence[Scene], image_size: int, processor: Any) -> None:
        images = [render(scene, image_size) for scene in scenes]
        self.pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        self.input_ids, self.attention_mask = caption_ids([caption(s) for s in scenes])


def image_embeddings(model: CLIPModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, projection_dim), unnormalised: the projected CLS output."""
    return model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)


def text_embeddings(model: CLIPModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, projection_dim), unnormalised: the projected end-token output."""
    pooled = model.text_model(input_ids=ids, attention_mask=mask).pooler_output
    return model.text_projection(pooled)


# --- evaluation ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: CLIPModel,
    batches: Sequence[Batch],
    negatives: dict[str, Sequence[tuple[torch.Tensor, torch.Tensor]]],
    probe: tuple,
) -> dict[str, float]:
    """Valid loss, retrieval, caption-vs-wrong-caption and cell-probe accuracies (module
    docstring). `negatives`: {name: per batch, the wrong captions' (ids, mask)}; `probe`:
    (fit pixels, fit scenes, eval scenes)."""
    was_training = model.training
    model.eval()
    losses, image_hits, text_hits = [], [], []
    binding: dict[str, list[torch.Tensor]] = {name: [] for name in negatives}
    for index, batch in enumerate(batches):
        images = F.normalize(image_embeddings(model, batch.pixel_values), dim=-1)
        texts = F.normalize(text_embeddings(model, batch.input_ids, batch.attention_mask), dim=-1)
        losses.append(clip_contrastive_loss(images, texts, model.logit_scale).mean())
        similarity = images @ texts.T  # (B, B): row i image i, column j caption j
        targets = torch.arange(len(similarity))
        image_hits.append((similarity.argmax(1) == targets).float().mean())
        text_hits.append((similarity.argmax(0) == targets).float().mean())
        for name, wrong_captions in negatives.items():
            wrong = F.normalize(text_embeddings(model, *wrong_captions[index]), dim=-1)
            closer = (images * texts).sum(-1) > (images * wrong).sum(-1)
            binding[name].append(closer.float().mean())
    fit_pixels, fit_scenes, eval_scenes = probe
    eval_pixels = torch.cat([b.pixel_values for b in batches])
    results = {
        "loss": torch.stack(losses).mean().item(),
        "image_to_caption_top1": torch.stack(image_hits).mean().item(),
        "caption_to_image_top1": torch.stack(text_hits).mean().item(),
    }
    results |= {f"caption_vs_{name}": torch.stack(v).mean().item() for name, v in binding.items()}
    results |= cell_probe(model.vision_model, fit_pixels, fit_scenes, eval_pixels, eval_scenes)
    model.train(was_training)
    return results


def swap_kind(scene: Scene, rng: random.Random) -> str:
    """The caption of `scene` with one shape's kind changed: only the kind tells it apart."""
    shapes = list(scene.shapes)
    index = rng.randrange(len(shapes))
    shape = shapes[index]
    kind = rng.choice([k for k in KINDS if k != shape.kind])
    shapes[index] = Shape(kind, shape.colour, shape.size, shape.cell)
    return describe(shapes)


def cell_features(vision_model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(N, 9, K * D): layer FEATURE_LAYER's features of each grid cell's patches (those whose
    centre lies in the cell, K at most, zero-padded), cells in reading order: what the
    projector sees of a cell, patch by patch."""
    features = []
    for start in range(0, len(pixel_values), 256):
        out = vision_model(
            pixel_values=pixel_values[start : start + 256], output_hidden_states=True
        )
        features.append(out.hidden_states[FEATURE_LAYER][:, 1:])  # drop CLS: (n, P, D)
    patches = torch.cat(features)
    grid = round(patches.shape[1] ** 0.5)
    centre_cell = ((torch.arange(grid) + 0.5) * 3 / grid).long()  # grid column -> cell column
    cell_of_patch = (3 * centre_cell[:, None] + centre_cell[None, :]).flatten()  # (P,)
    members = [(cell_of_patch == cell).nonzero().flatten() for cell in range(9)]
    most = max(len(m) for m in members)
    cells = patches.new_zeros(len(patches), 9, most, patches.shape[-1])
    for cell, patch_indices in enumerate(members):
        cells[:, cell, : len(patch_indices)] = patches[:, patch_indices]
    return cells.flatten(2)


def cell_labels(scenes: Sequence[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """(colour, kind) class of each cell, each (N, 9): 0 empty, i the i-th colour / kind."""
    colours = torch.zeros(len(scenes), 9, dtype=torch.long)
    kinds = torch.zeros(len(scenes), 9, dtype=torch.long)
    for row, scene in enumerate(scenes):
        for shape in scene.shapes:
            cell = CELLS.index(shape.cell)
            colours[row, cell] = 1 + list(COLOURS).index(shape.colour)
            kinds[row, cell] = 1 + KINDS.index(shape.kind)
    return colours, kinds


def cell_probe(
    vision_model: torch.nn.Module,
    fit_pixels: torch.Tensor,
    fit_scenes: Sequence[Scene],
    eval_pixels: torch.Tensor,
    eval_scenes: Sequence[Scene],
    ridge: float = 1e-3,
) -> dict[str, float]:
    """Accuracy of linear least-squares probes for a cell's colour and kind, on occupied
    cells of `eval_scenes`, fitted on `fit_scenes` (one classifier for all cells)."""
    fit_x = cell_features(vision_model, fit_pixels).flatten(0, 1)  # (N * 9, D)
    eval_x = cell_features(vision_model, eval_pixels).flatten(0, 1)
    mean, std = fit_x.mean(0), fit_x.std(0) + 1e-6
    fit_x, eval_x = [F.pad((x - mean) / std, (0, 1), value=1.0) for x in (fit_x, eval_x)]
    gram = fit_x.T @ fit_x + ridge * len(fit_x) * torch.eye(fit_x.shape[1])
    results = {}
    for name, classes, fit_y, eval_y in zip(
        ("colour", "kind"),
        (1 + len(COLOURS), 1 + len(KINDS)),
        cell_labels(fit_scenes),
        cell_labels(eval_scenes),
    ):
        fit_y, eval_y = fit_y.flatten(), eval_y.flatten()
        targets = F.one_hot(fit_y, classes).float()
        weights = torch.linalg.solve(gram, fit_x.T @ targets)
        predicted = (eval_x @ weights).argmax(-1)
        occupied = eval_y > 0
        results[f"probe_{name}"] = (predicted[occupied] == eval_y[occupied]).float().mean().item()
    return results


# --- pretraining --------------------------------------------------------------------------


def pretrain_tower(out_dir: str | Path, cfg: TowerConfig | None = None) -> Path:
    """Pretrain the tower into `out_dir` (module docstring); the tower's HF folder
    (`out_dir`/final). Cached: a finished folder made with the same config is returned as is."""
    cfg = build(TowerConfig, to_dict(cfg or TowerConfig()))  # checks the ranges
    check_all(cfg)
    out = Path(out_dir)
    made_from = {k: v for k, v in to_dict(cfg).items() if k != "progress"}
    key = stage_key("shapes_tower", json.dumps(made_from, sort_keys=True))
    return cached(out, key, out / "final", lambda: _pretrain(out, cfg, made_from))


def _pretrain(out: Path, cfg: TowerConfig, made_from: dict[str, Any]) -> Path:
    # --- set-up -----------------------------------------------------------------------------
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = CLIPModel(clip_config(cfg))
    model.train()
    processor = clip_image_processor(cfg.image_size)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98)
    )  # CLIP's beta2 for ViTs
    schedule = TrainConfig(warmup_steps=cfg.warmup_steps, schedule="cosine", min_lr_ratio=0.0)
    scheduler = build_scheduler(optimizer, cfg.steps, schedule)
    metrics = MetricsLogger(out, tensorboard=False)

    # --- data: fresh train scenes every step; fixed valid scenes to evaluate on -----------------
    world = ShapesWorld(cfg.seed)
    train_scenes = world.scenes("train", cfg.steps * cfg.batch_size, stream="tower")
    n_batches = cfg.n_eval // cfg.eval_batch_size
    valid = world.scenes("valid", n_batches * cfg.eval_batch_size, stream="tower")
    eval_batches = [
        Batch(valid[i : i + cfg.eval_batch_size], cfg.image_size, processor)
        for i in range(0, len(valid), cfg.eval_batch_size)
    ]
    rng = random.Random(f"alignlab-shapes/{cfg.seed}/tower/corrupt")
    wrong_captions = {
        "corrupted": [corrupt_caption(s, rng)[0] for s in valid],
        "kind_swapped": [swap_kind(s, rng) for s in valid],
    }
    negatives = {
        name: [
            caption_ids(texts[i : i + cfg.eval_batch_size])
            for i in range(0, len(valid), cfg.eval_batch_size)
        ]
        for name, texts in wrong_captions.items()
    }
    fit_scenes = world.scenes("train", cfg.n_probe, stream="tower-probe")
    probe = (Batch(fit_scenes, cfg.image_size, processor).pixel_values, fit_scenes, valid)

    def run_eval(step: int) -> dict[str, float]:
        results = evaluate(model, eval_batches, negatives, probe)
        metrics.log(step, results, prefix="eval/")
        return results

    # --- loop -------------------------------------------------------------------------------
    initial = run_eval(0)
    bar = progress_bar(cfg.steps, 0, "tower", cfg.progress)
    train_seconds = 0.0
    for step in range(cfg.steps):
        tick = time.perf_counter()
        batch = Batch(
            train_scenes[step * cfg.batch_size : (step + 1) * cfg.batch_size],
            cfg.image_size,
            processor,
        )
        images = image_embeddings(model, batch.pixel_values)
        texts = text_embeddings(model, batch.input_ids, batch.attention_mask)
        loss = clip_contrastive_loss(images, texts, model.logit_scale).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        train_seconds += time.perf_counter() - tick
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if done % cfg.log_every == 0 or done == cfg.steps:
            scale = model.logit_scale.exp().clamp(max=100).item()
            metrics.log(
                done, {"loss": loss.item(), "scale": scale, "lr": scheduler.get_last_lr()[0]}
            )
        if done % cfg.eval_every == 0 and done != cfg.steps:
            run_eval(done)
    bar.close()
    final = run_eval(cfg.steps)
    metrics.close()

    # --- save: the vision tower alone, as a plain HF folder ------------------------------------
    tower: CLIPVisionModel = model.vision_model  # transformers 5: CLIPModel holds one
    record = {
        "config": made_from,
        "final": final,
        "initial": initial,
        "steps": cfg.steps,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in tower.parameters()),
    }
    with atomic_folder(out / "final") as tmp:
        tower.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / TOWER_METRICS).write_text(json.dumps(record, indent=2) + "\n")
    return out / "final"


def read_tower_metrics(tower_dir: str | Path) -> dict[str, Any]:
    """The `tower_metrics.json` of a finished tower folder."""
    return json.loads((Path(tower_dir) / TOWER_METRICS).read_text())
