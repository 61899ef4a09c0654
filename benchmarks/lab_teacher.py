"""The lab's AI-feedback teacher against gold: agreement per prompt family, beside a plain base.

    OMP_NUM_THREADS=2 python benchmarks/lab_teacher.py            # builds runs/lab-teacher if needed

The teacher is the lab build `size=medium feedback_share=0.3` (alignlab/lab/teacher.py: judging
transcripts in its pretraining chats), judged through `load_local_judge` with the default
`JudgeTemplates`, as RLAIF uses it (`labeller.judge=runs/lab-teacher/base`). The baseline
judge is the plain lab base (`runs/lab`, size small, feedback_share 0), asked the same
questions. On `--n-per-family` heldout pairs per family (two candidates of different gold,
`teacher_agreement`): agreement with gold of compare() (both orders averaged), position bias,
consistency, agreement under each principle, and the Spearman / Pearson correlation of score()
(1-5) with gold. For reference, the agreement of the simulated human panel that labels the lab's
RLHF feedback (`alignlab.lab.feedback.PANEL`) on the same pairs.

`--build KEY=VALUE` (repeatable) passes lab build options to the teacher's build and
`--baseline-build KEY=VALUE` to the baseline's. Writes OUT/results.json and OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignlab.config import load_config  # noqa: E402
from alignlab.fileio import atomic_write_text  # noqa: E402
from alignlab.judges import load_local_judge  # noqa: E402
from alignlab.lab.annotators import agreement_with_gold, label_pairs  # noqa: E402
from alignlab.lab.build import LabBuildConfig, build  # noqa: E402
from alignlab.lab.feedback import PANEL  # noqa: E402
from alignlab.lab.gold import gold_score  # noqa: E402
from alignlab.lab.teacher import agreement_pairs, teacher_agreement  # noqa: E402


def panel_agreement(world: Any, n_per_family: int, seed: int) -> dict[str, Any]:
    """The lab's simulated human panel (majority of 3) on the same pairs."""
    pairs = agreement_pairs(world, n_per_family, seed)
    gold_a = [gold_score(p, a).total for p, a, _ in pairs]
    gold_b = [gold_score(p, b).total for p, _, b in pairs]
    labels = label_pairs(gold_a, gold_b, PANEL, seed=seed)
    margins = labels.gold_margins
    by_family: dict[str, Any] = {}
    for family in dict.fromkeys(p.family for p, _, _ in pairs):
        members = [i for i, (p, _, _) in enumerate(pairs) if p.family == family]
        by_family[family] = {
            "pairs": len(members),
            "agreement": agreement_with_gold(
                [labels.prefers_a[i] for i in members], [margins[i] for i in members]
            ),
        }
    return {"pairs": len(pairs), "agreement": labels.gold_agreement, "by_family": by_family}


def _cell(value: Any, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:{fmt}}" if isinstance(value, float) else str(value)


def table(results: dict[str, dict[str, Any]], command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        "| judge | family | pairs | agreement | position bias | consistency | Spearman (score) "
        "| Pearson (score) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        rows = [("all", result), *result["by_family"].items()]
        for family, row in rows:
            lines.append(
                f"| {name} | {family} | {row['pairs']} | {_cell(row['agreement'])} | "
                f"{_cell(row.get('position_bias'), '+.3f')} | {_cell(row.get('consistency'))} | "
                f"{_cell(row.get('spearman'))} | {_cell(row.get('pearson'))} |"
            )
    lines += ["", "| judge | principle | pairs | agreement | position bias | consistency |"]
    lines.append("|---|---|---|---|---|---|")
    for name, result in results.items():
        for row in result.get("by_principle", {}).values():
            lines.append(
                f"| {name} | {row['principle']} | {row['pairs']} | {_cell(row['agreement'])} | "
                f"{_cell(row['position_bias'], '+.3f')} | {_cell(row['consistency'])} |"
            )
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """nan (a constant judge's correlation) as null, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/lab-teacher", help="the teacher's lab build")
    parser.add_argument("--size", default="medium")
    parser.add_argument("--feedback-share", type=float, default=0.3)
    parser.add_argument(
        "--build", action="append", default=[], metavar="KEY=VALUE",
        help="a lab build option for the teacher (alignlab lab build --help)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", default="runs/lab", help="the baseline judge's lab build ('' for none)"
    )
    parser.add_argument(
        "--baseline-build", action="append", default=[], metavar="KEY=VALUE",
        help="a lab build option for the baseline (its feedback_share stays 0 unless given)",
    )  # fmt: skip
    parser.add_argument("--results", default="runs/lab_teacher", help="where the tables go")
    parser.add_argument("--n-per-family", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32, help="judge forward batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the heldout pairs")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    teacher_cfg = load_config(
        LabBuildConfig,
        None,
        [f"out={args.out}", f"size={args.size}", f"feedback_share={args.feedback_share}",
         *args.build],
    )  # fmt: skip
    labs = {"teacher": build(teacher_cfg)}
    if args.baseline:
        labs["plain base"] = build(
            load_config(LabBuildConfig, None, [f"out={args.baseline}", *args.baseline_build])
        )

    results: dict[str, dict[str, Any]] = {}
    settings: dict[str, Any] = {}
    for name, lab in labs.items():
        judge = load_local_judge(str(lab.base), batch_size=args.batch_size)
        start = time.perf_counter()
        results[name] = teacher_agreement(judge, lab.world, args.n_per_family, args.seed)
        settings[name] = {
            "base": str(lab.base),
            "build": lab.manifest["config"],
            "build_seconds": lab.manifest.get("build_seconds"),
            "judge_seconds": round(time.perf_counter() - start, 1),
            "forward_passes": judge.forward_passes,
        }
        print(
            f"{name}: agreement {results[name]['agreement']:.3f} on {results[name]['pairs']} "
            f"heldout pairs ({settings[name]['judge_seconds']:.0f} s)",
            flush=True,
        )
    world = labs["teacher"].world
    results["human panel (3 simulated annotators)"] = panel_agreement(
        world, args.n_per_family, args.seed
    )

    out = Path(args.results)
    markdown = table(results, command)
    atomic_write_text(out / "table.md", markdown)
    payload = {"command": command, "settings": vars(args), "judges": settings, "results": results}
    atomic_write_text(out / "results.json", json.dumps(_json_safe(payload), indent=2) + "\n")
    print(markdown)
    print(f"wrote {out / 'table.md'} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
