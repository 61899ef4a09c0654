"""Qwen2-VL, Gemma 3 and Idefics3 (tiny, from their configs, real processors and templates)
through the vision-language code: the three parts found, generation that matches HF's own
`generate` and scores as a plain forward does (3-D rotary positions, token types, image
markers), and batches whose rows hold different numbers of images."""

import json

import pytest
import torch
from PIL import Image
from vlm_families import FAMILIES, build

from alignlab.data.vlm import collate_vlm, image_token_ids, read_vlm_rows
from alignlab.models.lm import TokenLogProbs
from alignlab.models.vlm import find_part, lora_targets, set_trainable
from alignlab.models.vlm_generation import generate_vlm, vlm_sequence_logps
from alignlab.ops import IGNORE_INDEX

PROJECTOR = {
    "qwen2_vl": "visual.merger",
    "gemma3": "multi_modal_projector",
    "idefics3": "connector",
}


def _prompt(text):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


PROMPTS = [_prompt("What shape is in the picture?"), _prompt("Colour?")]
IMAGES = [[Image.new("RGB", (40, 30), (200, 30, 30))], [Image.new("RGB", (32, 32), (20, 30, 200))]]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    torch.set_num_threads(1)
    model, processor = build(request.param)
    return request.param, model, processor


def _tolerance(values):
    """fp32 sums of a few log-probs computed by differently ordered kernels: a few thousand
    ulps of their magnitude."""
    return 4096 * torch.finfo(torch.float32).eps * (1 + values.abs().max().item())


def test_the_three_parts_split_every_parameter(family):
    name, model, _ = family
    counts = set_trainable(model, tower=False, projector=True, llm=False)
    projector = sum(p.numel() for p in find_part(model, "projector").parameters())
    assert counts["projector"] == projector > 0
    assert counts["tower"] == counts["llm"] == 0
    everything = set_trainable(model, tower=True, projector=True, llm=True)
    distinct = {id(p): p.numel() for p in model.parameters()}
    assert sum(everything.values()) == sum(distinct.values())
    assert everything["tower"] > 0 and everything["llm"] > 0
    # the projector nested in Qwen2-VL's tower counts in the projector, not twice
    trained = [n for n, p in model.named_parameters() if "merger" in n or "connector" in n]
    assert all(PROJECTOR[name].split(".")[-1] in n for n in trained)
    targets = lora_targets(model, ["q_proj", "v_proj"])
    assert targets and all(".layers." in t and "vision" not in t for t in targets)
    assert not any(PROJECTOR[name] in t or "visual" in t for t in targets)


def _hf_greedy(model, processor, messages, images, new_tokens):
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=images, add_special_tokens=False, return_tensors="pt")
    banned = [[i] for i in sorted(image_token_ids(processor))]
    out = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, bad_words_ids=banned)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_batched_greedy_generation_is_hfs_one_prompt_at_a_time(family):
    """Left-padded batch with the KV cache and our positions against HF `generate` per prompt
    (its own position bookkeeping): M-RoPE positions, Gemma's token types and the image
    markers all have to be right for the tokens to agree."""
    _, model, processor = family
    ours = generate_vlm(model, processor, PROMPTS, IMAGES, max_new_tokens=6, temperature=0)
    for generation, messages, images in zip(ours, PROMPTS, IMAGES):
        theirs = _hf_greedy(model, processor, messages, images, len(generation.response_ids))
        assert generation.response_ids == theirs[: len(generation.response_ids)]


def test_sampler_logprobs_are_a_plain_forwards(family):
    """Log-probs the decode loop saw (cache, explicit positions) against `vlm_sequence_logps`
    (one forward, the model's own positions) and against HF's plain forward on the whole
    text: three routes to log π(y | image, x)."""
    _, model, processor = family
    generations = generate_vlm(
        model, processor, PROMPTS, IMAGES, max_new_tokens=5, temperature=1.0, seed=3,
        sampler_logps=True,
    )  # fmt: skip
    sampled = torch.tensor([sum(g.sampler_logps) for g in generations])
    scored = vlm_sequence_logps(model, processor, PROMPTS, IMAGES, generations)
    torch.testing.assert_close(scored, sampled, atol=_tolerance(sampled), rtol=0)
    for generation, images, value in zip(generations, IMAGES, scored):
        ids = torch.tensor([generation.prompt_ids + generation.response_ids])
        inputs = processor(
            text=[generation.prompt_text], images=images, add_special_tokens=False,
            return_tensors="pt",
        )  # fmt: skip
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        for key in ("token_type_ids", "mm_token_type_ids"):  # per token: extend over the response
            if key in extra:
                extra[key] = torch.cat(
                    [extra[key], extra[key].new_zeros(1, len(generation.response_ids))], 1
                )
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits
        logps = logits[0, :-1].float().log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
        plain = logps[-len(generation.response_ids) :].sum()
        torch.testing.assert_close(value, plain, atol=_tolerance(plain[None]), rtol=0)


def _rows(tmp_path, counts):
    """A TRL-format VLM file whose rows hold `counts[i]` images each; its rows read back."""
    lines = []
    for i, count in enumerate(counts):
        names = []
        for k in range(count):
            name = f"img_{i}_{k}.png"
            Image.new("RGB", (32, 32), (40 * k + 30, 200 - 50 * i, 90)).save(tmp_path / name)
            names.append(name)
        content = [{"type": "image"}] * count + [{"type": "text", "text": "How many?"}]
        answer = [{"type": "text", "text": f"There are {count} shapes."}]
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"images": names, "messages": messages}))
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return read_vlm_rows(path)


def test_rows_with_different_image_counts_score_as_alone(family, tmp_path):
    """One batch of rows with 2, 1 and 0 images: each row's log-probs equal those of the row
    in a batch of its own (Idefics3's per-row image slots padded with blank images that the
    model drops; the others' images concatenated in order)."""
    _, model, processor = family
    rows = _rows(tmp_path, [2, 1, 0])
    scorer = TokenLogProbs(model)

    def summed(batch_rows):
        batch = collate_vlm(batch_rows, processor, max_length=512)
        with torch.no_grad():
            logps = scorer(batch)
        assert (batch["labels"] != IGNORE_INDEX).any(1).all()
        return (logps * TokenLogProbs.mask(batch)).sum(1)

    together = summed(rows)
    alone = torch.cat([summed([row]) for row in rows])
    torch.testing.assert_close(together, alone, atol=_tolerance(alone), rtol=0)
