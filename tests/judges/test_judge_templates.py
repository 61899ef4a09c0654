"""The judge's templates: placeholders checked by name, YAML loading, what the judge is shown."""

import pytest

from alignlab.config import ConfigError
from alignlab.judges import Judge, JudgeTemplates, load_templates
from alignlab.judges.templates import SCALE_WORDS, prompt_text


def test_default_templates_pass_their_own_check():
    JudgeTemplates().check()
    for scale in ("1-5", "1-10", "yes_no"):
        JudgeTemplates(scale=scale).check()


@pytest.mark.parametrize(
    ("field", "template", "named"),
    [
        ("pairwise", "{prompt} {response_a} {response_b} {answer}", "{answer}"),
        ("pairwise", "{prompt} {response_a}", "{response_b}"),
        ("pairwise_principle", "{prompt} {response_a} {response_b}", "{principle}"),
        ("pointwise", "{prompt} {response} {rating}", "{rating}"),
        ("pointwise", "{prompt} {scale}", "{response}"),
        ("pointwise_principle", "{prompt} {response} {response_a} {principle}", "{response_a}"),
    ],
)
def test_a_missing_or_unknown_placeholder_is_a_config_error_naming_it(field, template, named):
    with pytest.raises(ConfigError, match=rf"{field}: .*{named.replace('{', '[{]')}"):
        JudgeTemplates(**{field: template}).check()


def test_a_lone_brace_is_a_config_error_and_doubled_braces_are_literal():
    with pytest.raises(ConfigError, match="pairwise: not a valid template"):
        JudgeTemplates(pairwise="{prompt} {response_a} {response_b} }").check()
    templates = JudgeTemplates(pairwise='{{"json": 1}} {prompt} {response_a} {response_b}')
    templates.check()
    text = templates.pairwise_messages("q", "a", "b")[-1]["content"]
    assert text == '{"json": 1} q a b'


def test_the_judge_checks_its_templates():
    with pytest.raises(ConfigError, match=r"unknown placeholder \{x\}"):
        Judge(JudgeTemplates(pairwise="{prompt}{response_a}{response_b}{x}"))


def test_templates_load_from_yaml_like_other_configs(tmp_path):
    path = tmp_path / "judge.yaml"
    path.write_text(
        "pairwise: |\n  Q: {prompt}\n  A: {response_a}\n  B: {response_b}\n  Better?\n"
        "scale: yes_no\nsystem: Be fair.\n"
    )
    templates = load_templates(path, ["answer_prefix='Verdict: '"])
    assert templates.scale == "yes_no" and templates.answer_prefix == "Verdict: "
    messages = templates.pairwise_messages("2+2?", "4", "5")
    assert messages == [
        {"role": "system", "content": "Be fair."},
        {"role": "user", "content": "Q: 2+2?\nA: 4\nB: 5\nBetter?\n"},
    ]
    path.write_text("pairwise: '{prompt} {response_a}'\n")
    with pytest.raises(ConfigError, match=r"pairwise: the template lacks \{response_b\}"):
        load_templates(path)
    path.write_text("pairwse: x\n")
    with pytest.raises(ConfigError, match="did you mean pairwise"):
        load_templates(path)
    path.write_text("scale: 1-7\n")
    with pytest.raises(ConfigError, match="scale"):
        load_templates(path)


def test_principle_picks_the_principle_template_and_scale_fills_scale():
    templates = JudgeTemplates(
        pairwise="plain {prompt} {response_a} {response_b}",
        pairwise_principle="{principle}: {prompt} {response_a} {response_b}",
        pointwise="{prompt} {response} ({scale})",
        pointwise_principle="{principle} {prompt} {response}",
    )
    assert templates.pairwise_messages("q", "a", "b")[-1]["content"] == "plain q a b"
    assert templates.pairwise_messages("q", "a", "b", "be kind")[-1]["content"] == "be kind: q a b"
    assert templates.pointwise_messages("q", "r")[-1]["content"] == f"q r ({SCALE_WORDS['1-5']})"
    assert templates.pointwise_messages("q", "r", "honesty")[-1]["content"] == "honesty q r"


def test_a_conversation_prompt_is_shown_as_its_text():
    assert prompt_text("plain") == "plain"
    assert prompt_text([{"role": "user", "content": "hi"}]) == "hi"
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"},
    ]
    assert prompt_text(conversation) == (
        "System: Be brief.\n\nUser: hi\n\nAssistant: hello\n\nUser: 2+2?"
    )
