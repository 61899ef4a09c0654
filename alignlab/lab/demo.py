"""`alignlab lab demo` (`make demo`): build the lab, align the base with SFT, measure it.

[1/4] lab build: tokenizer, pretrained base model, datasets (cached after the first run)
[2/4] SFT of the base on the lab's imperfect demonstrations (recipe `sft`, preset sft_lab)
[3/4] heldout evaluation of base and SFT against the base: gold with 95% CIs, KL, win rate
[4/4] report: <out>/report.md, report.html, results.json, plots/
"""

from __future__ import annotations

import time
from pathlib import Path

from alignlab.cli import resolve_preset
from alignlab.config import load_config
from alignlab.eval.report import markdown_table, write_report
from alignlab.lab.build import LabBuildConfig, build
from alignlab.lab.evaluate import HEADLINE, evaluate_lab
from alignlab.recipes import sft


def run_demo(out: str | Path, build_cfg: LabBuildConfig, n_prompts: int = 500) -> dict[str, Path]:
    out = Path(out)
    start = time.perf_counter()

    def stage(number: int, text: str) -> None:
        print(f"\n[{number}/4] {text}  ({time.perf_counter() - start:.0f} s)", flush=True)

    stage(1, f"lab build -> {build_cfg.out}")
    lab = build(build_cfg)

    stage(2, "SFT on the lab's demonstrations")
    sft_dir = out / "sft"
    final = sft_dir / "final"
    if (
        (final / "config.json").exists()
        and (sft_dir / "base.txt").exists()
        and ((sft_dir / "base.txt").read_text() == lab.manifest["key"])
    ):
        print(f"cached in {final}")
    else:
        config = load_config(
            sft.SFTConfig,
            resolve_preset("sft_lab"),
            [
                f"model.path={lab.base}",
                f"data.path={lab.data['sft']}",
                f"train.output_dir={sft_dir}",
            ],
        )
        final = sft.run(config)
        (sft_dir / "base.txt").write_text(lab.manifest["key"])

    stage(3, f"evaluate base and SFT on {n_prompts} heldout prompts (KL and win rate vs base)")
    results = evaluate_lab(
        lab.world, {"base": lab.base, "sft": final}, ref=lab.base, n_prompts=n_prompts
    )

    stage(4, f"report -> {out}")
    paths = write_report(
        results, out, title="alignlab demo: base vs SFT vs oracle", table_keys=HEADLINE
    )
    print(markdown_table(results, table_keys=HEADLINE))
    sft_gold = results["sft"].metrics["gold"]["total"]["mean"]
    oracle_gold = results["oracle"].metrics["gold"]["total"]["mean"]
    print(
        f"\nSFT reaches {sft_gold / oracle_gold:.0%} of the oracle's gold; "
        f"demo done in {time.perf_counter() - start:.0f} s"
    )
    for name, path in paths.items():
        print(f"  {name:10s} {path}")
    print(f"  checkpoint {final}")
    return paths
