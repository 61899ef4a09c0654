"""`alignlab lab build|export|demo|vlm`: the simulated world from the command line."""

from __future__ import annotations

import argparse

from alignlab.config import ArgumentParser, describe, load_config
from alignlab.lab.build import DEFAULT_SIZE, DEMO_SIZE, LabBuildConfig, build
from alignlab.models.folders import check_model_source
from alignlab.preflight import check_inputs, check_output_folder


def eval_main(argv: list[str]) -> None:
    """`alignlab eval --model [NAME=]DIR ... [--ref DIR]` on the lab's heldout (or valid)
    prompts, scored by gold; several models share the prompts and sampling seeds."""
    from alignlab.eval.cli import EVAL_MODES
    from alignlab.eval.report import markdown_table, write_report
    from alignlab.eval.verdict import verdict_of_results
    from alignlab.lab.evaluate import HEADLINE, evaluate_lab
    from alignlab.lab.world import LabWorld

    parser = ArgumentParser(
        prog="alignlab eval", description=eval_main.__doc__, epilog=EVAL_MODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--model", required=True, action="append",
        help="model folder or hub id, optionally NAME=DIR; repeat for several models",
    )  # fmt: skip
    parser.add_argument(
        "--ref", help="reference model for KL and the paired gold comparison (default: none)"
    )
    parser.add_argument("--out", default="runs/eval", help="report folder")
    parser.add_argument("--n-prompts", type=int, default=500, help="prompts of the split")
    parser.add_argument(
        "--split", default="heldout", choices=("heldout", "valid"),
        help="heldout for reported numbers, valid to choose settings",
    )  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size")
    parser.add_argument("--seed", type=int, default=0, help="world seed (must match the build)")
    args = parser.parse_args(argv)
    models: dict[str, str] = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or "/" in name:  # a bare folder (whose path may hold "=")
            name, path = "", spec
        name = name or (path if len(args.model) > 1 else "model")
        if name in models:
            parser.error(f"--model {spec}: the name {name!r} is taken; use distinct NAME=DIR")
        models[name] = path
    for path in models.values():
        check_model_source(path, "--model", tokenizer=True)
    if args.ref:
        check_model_source(args.ref, "--ref", tokenizer=True)
    results = evaluate_lab(
        LabWorld(seed=args.seed), models, ref=args.ref, n_prompts=args.n_prompts,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, split=args.split,
    )  # fmt: skip
    title = f"lab evaluation ({args.split}) of {', '.join(models)}"
    lines = verdict_of_results(results, unit=f"{args.split} prompts", leave_out=("oracle",))
    paths = write_report(results, args.out, title=title, table_keys=HEADLINE, verdict=lines)
    print(markdown_table(results, table_keys=HEADLINE))
    for line in lines:
        print(line)
    print(f"report: {paths['markdown']}")


def main(argv: list[str]) -> None:
    parser = ArgumentParser(
        prog="alignlab lab",
        description="The lab: a simulated HHH world with a gold reward (docs/lab.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="build options (key=value):\n" + "\n".join(describe(LabBuildConfig)),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser(
        "build",
        help="tokenizer + pretrained base model + datasets (cached); size=medium: a 3x larger base",
    )
    build_cmd.add_argument(
        "overrides",
        nargs="*",
        help="key=value build options, e.g. size=medium (into runs/lab-medium)",
    )
    export_cmd = sub.add_parser(
        "export", help="write the SFT, preference and prompt datasets as JSONL"
    )
    export_cmd.add_argument("--out", required=True)
    export_cmd.add_argument("--seed", type=int, default=0)
    export_cmd.add_argument("--n-train", type=int, default=2000)
    export_cmd.add_argument("--n-heldout", type=int, default=500)
    export_cmd.add_argument(
        "--world", choices=("text", "shapes"), default="text",
        help="text: the HHH world; shapes: images + questions in TRL's vision formats "
        "(docs/shapes.md)",
    )  # fmt: skip
    export_cmd.add_argument(
        "--image-size", type=int, default=None, help="--world shapes: image side, 64-224 px (96)"
    )
    demo_cmd = sub.add_parser(
        "demo", help="the main job: build, SFT, feedback, RM, DPO, evaluate, report"
    )
    demo_cmd.add_argument("--out", default="runs/demo")
    demo_cmd.add_argument(
        "--seed", type=int, default=0,
        help="training seed of SFT, RM, DPO, PPO and the evaluation's sampling seed (the lab "
        "build stays the same)",
    )  # fmt: skip
    demo_cmd.add_argument(
        "overrides", nargs="*",
        help=f"key=value build options; the demo's own size is size={DEMO_SIZE} (runs/lab-demo), "
        f"size={DEFAULT_SIZE} runs it on the lab benchmarks' build",
    )  # fmt: skip
    vlm_cmd = sub.add_parser(
        "vlm", help="the lab's LLaVA: a CLIP tower pretrained on the shapes world + an LM, "
        "projector fresh (cached; docs/shapes.md)",
    )  # fmt: skip
    vlm_cmd.add_argument(
        "--lm", required=True, help="language model folder, e.g. runs/lab/sft/final"
    )
    vlm_cmd.add_argument("--out", required=True, help="OUT/llava: the LLaVA; OUT/tower: the tower")
    vlm_cmd.add_argument("--tower", help="tower run folder (default OUT/tower), reused if finished")
    vlm_cmd.add_argument(
        "overrides", nargs="*",
        help="key=value tower options (alignlab.lab.shapes.tower.TowerConfig), e.g. steps=300",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "vlm":
        from alignlab.lab.shapes.llava import lab_vlm
        from alignlab.lab.shapes.tower import TowerConfig

        tower_cfg = load_config(TowerConfig, None, args.overrides)
        check_model_source(args.lm, "--lm", tokenizer=True)
        check_output_folder(args.out, "--out")
        print(f"lab LLaVA: {lab_vlm(args.lm, args.out, tower_cfg, args.tower)}")
        return
    if args.command in ("export", "demo"):
        check_output_folder(args.out, "--out")
    if args.command in ("build", "demo"):
        size = [f"size={DEMO_SIZE}"] if args.command == "demo" else []  # the user's size wins
        config = load_config(LabBuildConfig, None, [*size, *args.overrides])
        check_inputs(config)

    if args.command == "export" and args.world == "shapes":
        from alignlab.lab.shapes.render import DEFAULT_IMAGE_SIZE, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

        image_size = DEFAULT_IMAGE_SIZE if args.image_size is None else args.image_size
        if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
            parser.error(
                f"--image-size {image_size}: must be {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE} pixels"
            )
    elif args.command == "export" and args.image_size is not None:
        parser.error("--image-size applies to --world shapes only")

    if args.command == "build":
        build(config)
    elif args.command == "export" and args.world == "shapes":
        from alignlab.lab.shapes.export import export_shapes

        paths = export_shapes(
            args.out, seed=args.seed, n_train=args.n_train, n_heldout=args.n_heldout,
            image_size=image_size,
        )  # fmt: skip
        for name, path in paths.items():
            print(f"{name:16s} {path}")
    elif args.command == "export":
        from alignlab.lab.export import export_datasets
        from alignlab.lab.world import LabWorld

        paths = export_datasets(
            LabWorld(seed=args.seed),
            args.out,
            n_train=args.n_train,
            n_heldout=args.n_heldout,
            seed=args.seed,
        )
        for name, path in paths.items():
            print(f"{name:16s} {path}")
    elif args.command == "demo":
        from alignlab.lab.demo import run_demo

        run_demo(args.out, config, seed=args.seed)
