"""The chat templates of real model families, put into small tokenizers trained here.

The templates are those the hub tokenizers ship (tokenizer_config.json `chat_template`), as
faithfully as they could be reproduced: Qwen2.5-Instruct (ChatML with its default system
prompt and tool branches), Llama-3-Instruct (header ids, `<|eot_id|>`), Gemma-2-it
(`<start_of_turn>` / `<end_of_turn>`, the assistant is "model", no system role) and
Phi-3-mini-instruct (`<|end|>` after every turn, `eos_token` at the end of a conversation
rendered without a generation prompt). The markers are added to the vocabulary as special
tokens, as the real tokenizers have them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from alignlab.models.tiny import train_tokenizer

QWEN25 = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user '
    "query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:"
    '\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name '
    'and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": '
    '<function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
    "helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) '
    'or (message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
    "'\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    "            {{- tool_call.name }}\n"
    '            {{- \'", "arguments": \' }}\n'
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

PHI3 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    end_of_turn: str
    """The marker that ends every assistant turn."""
    conversation_end: str
    """What the template appends after the last turn when rendered without a generation
    prompt (trained with the last assistant turn, see `chat_segments`)."""
    markers: tuple[str, ...]
    bos: str | None = None
    eos: str = "<|endoftext|>"
    system: bool = True
    """Whether the template accepts a system message."""
    adds_bos: bool = False
    """Whether the tokenizer puts BOS in front when encoding (Llama-3, Gemma), though the
    template writes it too."""


FAMILIES = {
    "qwen2.5": Family(
        "qwen2.5",
        QWEN25,
        end_of_turn="<|im_end|>",
        conversation_end="",
        markers=("<|im_start|>", "<|im_end|>"),
        eos="<|im_end|>",
    ),
    "llama3": Family(
        "llama3",
        LLAMA3,
        end_of_turn="<|eot_id|>",
        conversation_end="",
        markers=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        adds_bos=True,
    ),
    "gemma": Family(
        "gemma",
        GEMMA,
        end_of_turn="<end_of_turn>",
        conversation_end="",
        markers=("<start_of_turn>", "<end_of_turn>"),
        bos="<bos>",
        eos="<eos>",
        system=False,
        adds_bos=True,
    ),
    "phi3": Family(
        "phi3",
        PHI3,
        end_of_turn="<|end|>",
        conversation_end="\n<|endoftext|>",
        markers=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        bos="<s>",
        eos="<|endoftext|>",
    ),
}

TEXTS = [
    "What is two plus two? Two plus two is four. And three plus three? Six.",
    "Name a colour. Blue. Another one? Green is another colour.",
    "You are a helpful assistant. You are terse. Hello there, how are you today?",
    "user assistant system model",
] * 4


def family_tokenizer(family: Family) -> PreTrainedTokenizerFast:
    """A small BPE tokenizer carrying `family`'s template, markers, BOS and EOS as the hub
    tokenizer has them (markers as special added tokens, not split by BPE)."""
    tokenizer = train_tokenizer(TEXTS, vocab_size=400)
    extra = [t for t in (*family.markers, family.bos, family.eos) if t]
    tokenizer.add_tokens([t for t in extra if t not in tokenizer.get_vocab()], special_tokens=True)
    if family.bos:
        tokenizer.bos_token = family.bos
    tokenizer.eos_token = family.eos
    if family.adds_bos:
        bos = (family.bos, tokenizer.bos_token_id)
        tokenizer.backend_tokenizer.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(single=f"{bos[0]} $A", special_tokens=[bos]),
            ]
        )
    tokenizer.chat_template = family.template
    return tokenizer
