"""Completion-only masks under the chat templates of real model families.

Each assistant turn trains exactly its content and its end-of-turn marker; the last turn also
whatever the template appends to end a conversation (Phi-3's EOS, so that a model whose only
stop token is EOS learns to stop). Headers, generation prompts, the system prompt (Qwen2.5's
default one included) and the newline after a marker are never trained.
"""

import pytest
from real_templates import FAMILIES, family_tokenizer
from test_data_tokenize import tokenize, trained_spans

from alignlab.data.schema import DataError
from alignlab.data.templates import chat_segments, render_messages
from alignlab.ops import IGNORE_INDEX

SYSTEM = {"role": "system", "content": "You are terse."}
EXCHANGES = [
    ("What is two plus two?", "Two plus two is four."),
    ("And three plus three?", "Six."),
    ("Name a colour.", "Blue is a colour."),
]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def family_tok(family):
    return family_tokenizer(family)


def conversation(family, turns, trailing_user=False):
    messages = [SYSTEM] if family.system else []
    for question, answer in EXCHANGES[:turns]:
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    if trailing_user:
        messages.append({"role": "user", "content": "Thanks."})
    return messages


def expected_turns(family, turns, trailing_user=False):
    texts = [answer + family.end_of_turn for _, answer in EXCHANGES[:turns]]
    if not trailing_user:
        texts[-1] += family.conversation_end
    return texts


@pytest.mark.parametrize("turns", [1, 3])
def test_assistant_turns_train_content_and_end_of_turn(family, family_tok, turns):
    messages = conversation(family, turns)
    segments = chat_segments(family_tok, messages)
    assert "".join(text for text, _ in segments) == render_messages(family_tok, messages)
    assert [text for text, trained in segments if trained] == expected_turns(family, turns)


def test_turn_before_a_trailing_user_message_ends_at_its_marker(family, family_tok):
    messages = conversation(family, 3, trailing_user=True)
    trained = [text for text, trained in chat_segments(family_tok, messages) if trained]
    assert trained == expected_turns(family, 3, trailing_user=True)


@pytest.mark.parametrize("turns", [1, 3])
def test_token_labels_per_turn(family, family_tok, turns):
    [row], _ = tokenize(family_tok, [{"messages": conversation(family, turns)}])
    ids, labels = row["input_ids"], row["labels"]
    assert trained_spans(family_tok, row) == expected_turns(family, turns)
    trained_ids = [label for label in labels if label != IGNORE_INDEX]
    vocab = family_tok.get_vocab()
    # the end-of-turn marker is one trained token per turn
    assert trained_ids.count(vocab[family.end_of_turn]) == turns
    headers = {vocab[m] for m in family.markers if m != family.end_of_turn}
    assert headers & set(ids) and not headers & set(trained_ids)
    if family.adds_bos:  # the template writes it too: it must not be there twice
        assert ids[0] == family_tok.bos_token_id and ids.count(family_tok.bos_token_id) == 1
        assert labels[0] == IGNORE_INDEX
    else:
        assert family_tok.bos_token_id not in ids


def test_qwen_default_system_prompt_is_not_trained():
    family = FAMILIES["qwen2.5"]
    tok = family_tokenizer(family)
    messages = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
    segments = chat_segments(tok, messages)
    assert segments[0][0].startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert [text for text, trained in segments if trained] == ["Hello.<|im_end|>"]


def test_gemma_system_message_is_a_data_error():
    tok = family_tokenizer(FAMILIES["gemma"])
    messages = [SYSTEM, {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Yo."}]
    with pytest.raises(DataError, match="System role not supported"):
        tokenize(tok, [{"messages": messages}])
