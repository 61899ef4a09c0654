"""Constitutions: the shipped HHH one (the paper's Appendix C requests), principles drawn at
random but reproducibly per sample, and bad YAML refused with file, line, index and field."""

from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

import pytest

from alignlab.aif.constitution import (
    FIELDS,
    SHIPPED,
    load_constitution,
    parse_constitution,
)
from alignlab.config import ConfigError
from alignlab.icl.critique import CRITIQUE, PRINCIPLE, REVISION

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_is_the_shipped_hhh_constitution_in_the_papers_words():
    constitution = load_constitution()
    assert Path(constitution.source).name == "hhh.yaml"
    assert len(constitution) == 18  # the paper's 16, one honesty and one helpfulness principle
    first = constitution.principles[0]
    assert first.critique.startswith(
        "Identify specific ways in which the assistant's last response is harmful, unethical"
    )
    assert first.revision.startswith(
        "Please rewrite the assistant response to remove any and all harmful"
    )
    names = [p.name for p in constitution.principles]
    assert len(set(names)) == len(names)
    for p in constitution.principles:
        assert all(getattr(p, field).strip() for field in FIELDS), p.name
        assert "\n" not in p.critique + p.revision + p.choice  # folded to one line each
    assert "less harmful" in constitution.principles[1].choice


def test_the_lab_constitution_asks_in_the_words_of_the_in_context_critique():
    lab = load_constitution("lab")
    assert {p.name for p in lab.principles} == {"harmless", "honest", "helpful"}
    for p in lab.principles:
        assert p.critique == CRITIQUE.format(principle=PRINCIPLE)
        assert p.revision == REVISION.format(principle=PRINCIPLE)


def test_the_constitutions_ship_as_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["alignlab"]
    for path in SHIPPED.glob("*.yaml"):
        relative = path.relative_to(ROOT / "alignlab").as_posix()
        assert any(fnmatch(relative, g) for g in globs), relative


def test_draws_are_seeded_per_sample_and_cover_the_principles():
    constitution = load_constitution()
    draws = [constitution.draw(1, i, 0).name for i in range(400)]
    assert draws == [constitution.draw(1, i, 0).name for i in range(400)]  # reproducible
    # a draw depends on its own labels only, not on what was drawn before it
    assert [constitution.draw(1, i, 0).name for i in reversed(range(400))] == draws[::-1]
    counts = Counter(draws)
    assert len(counts) == len(constitution)  # every principle is drawn
    assert max(counts.values()) < 3 * 400 / len(constitution)  # roughly uniform
    assert draws != [constitution.draw(2, i, 0).name for i in range(400)]  # the seed matters
    assert draws != [constitution.draw(1, i, 1).name for i in range(400)]  # so does the round


GOOD = """\
- name: harmless
  critique: Say how it is harmful.
  revision: Rewrite it to be harmless.
  choice: Which is less harmful?
"""


def write(tmp_path, text):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return path


def test_a_file_of_ones_own_loads(tmp_path):
    constitution = load_constitution(write(tmp_path, GOOD))
    assert constitution.principles[0].choice == "Which is less harmful?"
    assert constitution.source == str(tmp_path / "mine.yaml")
    assert constitution.fingerprint() != load_constitution().fingerprint()


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD + "- name: honest\n  critique: c\n  choice: q\n",
         "mine.yaml:5: principles[1]: missing field 'revision'"),
        (GOOD + "- name: honest\n  critique: c\n  revison: r\n  choice: q\n",
         "mine.yaml:7: principles[1]: unknown field 'revison'; did you mean revision?"),
        (GOOD.replace("choice: Which is less harmful?", "choice: 3"),
         "mine.yaml:1: principles[0]: field 'choice' must be a non-empty string, got 3"),
        (GOOD.replace("choice: Which is less harmful?", "choice: ''"),
         "principles[0]: field 'choice' must be a non-empty string"),
        (GOOD + GOOD, "mine.yaml:5: principles[1]: name 'harmless' is also principles[0]'s"),
        ("name: harmless\ncritique: c\n", "a constitution is a YAML list of principles"),
        ("[]\n", "the constitution has no principle"),
        ("- just a string\n", "mine.yaml:1: principles[0]: a principle is a mapping"),
        ("- name: [unclosed\n", "mine.yaml: not valid YAML"),
    ],
)  # fmt: skip
def test_bad_yaml_names_file_line_index_and_field(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_constitution(write(tmp_path, text))
    assert message in str(err.value)


def test_a_missing_file_names_the_shipped_constitutions(tmp_path):
    with pytest.raises(ConfigError, match=r"no such file.*\(hhh, lab\)"):
        load_constitution(tmp_path / "nowhere.yaml")
    with pytest.raises(ConfigError, match="no shipped constitution"):
        load_constitution("hhhh")


def test_parse_without_a_file_names_its_source():
    with pytest.raises(ConfigError, match="<constitution>"):
        parse_constitution("- name: x\n")
