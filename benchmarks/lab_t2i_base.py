"""How well a short pretraining of the lab's text-to-image base draws what it is asked.

    OMP_NUM_THREADS=2 python benchmarks/lab_t2i_base.py --steps 300 --width 16

Pretrains `alignlab.lab.shapes.t2i_base.pretrain_generator` (loose captions), then draws one
image for each of `--prompts` heldout scenes' exact captions (DDIM-free: the pipeline's DDPM
scheduler with `--sample-steps`, no classifier-free guidance: the base is not trained with
dropped captions) and scores them with the text-to-image gold. Prints time, the gold's
all-or-nothing accuracy, its partial score, and the degenerate-image rate. Work in progress
for issue 18: a probe of how small and short a base can be, not a result.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from alignlab.config import ModelConfig
from alignlab.lab.shapes.t2i_base import pretrain_generator
from alignlab.lab.shapes.t2i_gold import from_scene, prompt_text, score
from alignlab.lab.shapes.text import ShapesWorld
from alignlab.models.t2i import load_t2i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lab_t2i_probe")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=50)
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    folder = pretrain_generator(
        out / "base", steps=args.steps, batch_size=args.batch_size, width=args.width
    )
    trained = time.perf_counter() - start
    pipe = load_t2i(ModelConfig(path=str(folder)))
    scenes = ShapesWorld(0).scenes("heldout", args.prompts, stream="t2i-probe")
    requests = [from_scene(s) for s in scenes]
    generator = torch.Generator().manual_seed(0)
    images = pipe(
        [prompt_text(r) for r in requests], num_inference_steps=args.sample_steps,
        guidance_scale=1.0, height=32, width=32, generator=generator,
    ).images  # fmt: skip
    golds = [score(r, image) for r, image in zip(requests, images)]
    summary = {
        "steps": args.steps, "width": args.width, "batch_size": args.batch_size,
        "train_s": round(trained, 1), "sample_s": round(time.perf_counter() - start - trained, 1),
        "accuracy": sum(g.accuracy for g in golds) / len(golds),
        "partial": sum(g.partial for g in golds) / len(golds),
        "objects": sum(g.objects for g in golds) / len(golds),
        "degenerate": dict(Counter(g.reason for g in golds if g.degenerate)),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for i, image in enumerate(images[:16]):
        image.save(out / f"sample_{i:02d}.png")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
