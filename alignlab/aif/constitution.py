"""A constitution: the principles Constitutional AI critiques, revises and judges by.

Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback", arXiv:2212.08073
(Appendix C). A constitution is a YAML list of principles, each with four fields:

    - name: harmful_unethical            # a short id
      critique: Identify specific ways in which the assistant's last response is harmful, ...
      revision: Please rewrite the assistant response to remove any and all harmful, ...
      choice: Which of these assistant responses is less harmful? Choose the response ...

`critique` and `revision` are the supervised stage's requests (user turns after the response,
`alignlab.aif.revise`); `choice` is the pairwise question the feedback model answers in the RL
stage (the judge's principle, `alignlab.judges.JudgeTemplates.pairwise_principle`). The paper
keeps two separate lists (16 critique / revision pairs, 16 comparison principles); here each
principle carries one of each, so one draw gives a coherent triple.

One principle is drawn uniformly at random per sample and round (critique and revision) or per
prompt (comparison), as the paper does, from a generator seeded by `draw(seed, *labels)`: a
draw depends only on the seed and its labels (sample index, round), not on batching or order.

    constitution = load_constitution()               # the shipped HHH constitution (hhh.yaml)
    constitution = load_constitution("mine.yaml")    # or a shipped name: "lab"
    principle = constitution.draw(seed, sample_index, round_index)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import random
from pathlib import Path
from typing import Any

import yaml

from alignlab.config import ConfigError, read_yaml, yaml_problem

SHIPPED = Path(__file__).parent / "constitutions"
"""Folder of the shipped constitutions (`<name>.yaml`)."""
DEFAULT = "hhh"
FIELDS = ("name", "critique", "revision", "choice")


@dataclasses.dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    """The critique request, a user turn after the response."""
    revision: str
    """The revision request, a user turn after the critique."""
    choice: str
    """The pairwise question of the feedback model ("Which of these responses is less ...")."""


@dataclasses.dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    source: str
    """The file it was read from."""

    def draw(self, seed: int, *labels: Any) -> Principle:
        """A principle drawn uniformly, from a generator seeded by (seed, *labels) only."""
        rng = random.Random(json.dumps(["alignlab-cai", seed, *labels]))
        return self.principles[rng.randrange(len(self.principles))]

    def fingerprint(self) -> str:
        """The principles as text: what a stage that uses them is keyed on."""
        return json.dumps([dataclasses.astuple(p) for p in self.principles])

    def __len__(self) -> int:
        return len(self.principles)


def shipped_constitutions() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def constitution_path(name: str | Path | None = None) -> Path:
    """A YAML file, or the name of a shipped constitution (default: hhh)."""
    if not name:
        return SHIPPED / f"{DEFAULT}.yaml"
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = SHIPPED / f"{str(name).removesuffix('.yaml')}.yaml"
    if "/" not in str(name) and shipped.is_file():
        return shipped
    raise ConfigError(
        f"constitution {str(name)!r}: no such file, and no shipped constitution of that name "
        f"({', '.join(shipped_constitutions())})"
    )


def load_constitution(path: str | Path | None = None) -> Constitution:
    """The constitution in `path` (a YAML file or a shipped name); the shipped HHH one when
    None. A bad file is a ConfigError naming the file, line, principle index and field."""
    source = constitution_path(path)
    try:
        text = source.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"constitution {source}: cannot read it ({err})") from err
    return parse_constitution(text, str(source))


def parse_constitution(text: str, source: str = "<constitution>") -> Constitution:
    """Principles from YAML text (module docstring); ConfigError on anything else."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # for line numbers
        data = read_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {yaml_problem(err)}") from err
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        raise ConfigError(
            f"{source}: a constitution is a YAML list of principles, each with {', '.join(FIELDS)}"
        )
    if not data:
        raise ConfigError(f"{source}: the constitution has no principle")
    principles, seen = [], {}
    for index, (item, item_node) in enumerate(zip(data, node.value)):
        where = f"{source}:{item_node.start_mark.line + 1}: principles[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: a principle is a mapping of {', '.join(FIELDS)}")
        key_lines = {
            key.value: key.start_mark.line + 1
            for key, _ in getattr(item_node, "value", [])
            if isinstance(key, yaml.ScalarNode)
        }
        for key in item:
            if key not in FIELDS:
                close = difflib.get_close_matches(str(key), FIELDS, n=1)
                hint = f"; did you mean {close[0]}?" if close else f"; the fields are {FIELDS}"
                line = key_lines.get(str(key), item_node.start_mark.line + 1)
                raise ConfigError(
                    f"{source}:{line}: principles[{index}]: unknown field {key!r}{hint}"
                )
        for key in FIELDS:
            if key not in item:
                raise ConfigError(
                    f"{where}: missing field {key!r} (a principle has {', '.join(FIELDS)})"
                )
            value = item[key]
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(
                    f"{where}: field {key!r} must be a non-empty string, got {value!r}"
                )
        name = item["name"].strip()
        if name in seen:
            raise ConfigError(f"{where}: name {name!r} is also principles[{seen[name]}]'s")
        seen[name] = index
        principles.append(Principle(*(item[key].strip() for key in FIELDS)))
    return Constitution(tuple(principles), source)
