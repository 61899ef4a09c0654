"""generate_vlm / vlm_sequence_logps on a tiny LLaVA: batching and left padding change nothing,
HF `generate` agrees, images matter, stop tokens end responses, teacher forcing matches the
sampler, bad image counts are refused."""

import pytest
import torch
from PIL import Image

from alignlab.models.generation import stop_token_ids
from alignlab.models.vlm_generation import (
    encode_vlm_prompt,
    generate_vlm,
    vlm_sequence_logps,
)
from alignlab.models.vlm_tiny import image_token_count, tiny_llava


def ask(question):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def square(rgb):
    return Image.new("RGB", (64, 64), rgb)


RED, BLUE, GREEN = (200, 30, 30), (30, 30, 200), (30, 200, 30)
PROMPTS = [
    ask("What shape?"),
    ask("Describe the image in detail please, every shape and where it is."),
    [{"role": "user", "content": "How many?"}],  # text only: LLaVA's LLM answers it alone
    ask("What colour is the square?"),
    ask("Where?"),
]
IMAGES = [[square(RED)], [square(BLUE)], [], [square(BLUE)], [square(GREEN)]]


@pytest.fixture(scope="module")
def tiny():
    """A tiny LLaVA with large random weights: at the default init every prompt greedily
    repeats one token, which would hide a batching bug."""
    torch.set_num_threads(1)
    model, processor = tiny_llava(image_size=64)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval(), processor


def test_batched_greedy_equals_one_by_one_and_hf_generate(tiny):
    model, processor = tiny
    batched = generate_vlm(model, processor, PROMPTS, IMAGES, max_new_tokens=8, temperature=0,
                           batch_size=4)  # fmt: skip
    stops = stop_token_ids(model, processor.tokenizer)
    for prompt, images, b in zip(PROMPTS, IMAGES, batched):
        alone = generate_vlm(model, processor, [prompt], [images], max_new_tokens=8, temperature=0)
        assert b.response_ids == alone[0].response_ids and b.text == alone[0].text
        encoded = encode_vlm_prompt(processor, prompt, images)
        assert b.prompt_ids == encoded.ids  # input order kept
        ids = torch.tensor([encoded.ids])
        plain = model.generate(
            ids, attention_mask=torch.ones_like(ids), **encoded.vision, do_sample=False,
            max_new_tokens=8, eos_token_id=stops, pad_token_id=processor.tokenizer.pad_token_id,
        )[0, ids.shape[1] :].tolist()  # fmt: skip
        assert plain[: len(b.response_ids)] == b.response_ids
    # the batch of 4 really padded prompts of different lengths (image tokens included)
    lengths = {len(g.prompt_ids) for g in batched[:4]}
    assert len(lengths) > 1 and max(lengths) > image_token_count(64, 8)
    assert len({tuple(g.response_ids) for g in batched}) > 2  # not one repeated answer


def test_the_image_changes_the_answer(tiny):
    model, processor = tiny
    red, green = (
        generate_vlm(model, processor, [PROMPTS[0]], [[square(colour)]], max_new_tokens=8,
                     temperature=0)[0]
        for colour in (RED, GREEN)
    )  # fmt: skip
    assert red.prompt_ids == green.prompt_ids and red.response_ids != green.response_ids


def test_per_prompt_seeds_make_samples_independent_of_batching(tiny):
    model, processor = tiny
    seeds = [5, 6, 7, 8, 9]
    batched = generate_vlm(model, processor, PROMPTS, IMAGES, max_new_tokens=6, batch_size=5,
                           seeds=seeds)  # fmt: skip
    order = [4, 2, 0, 3, 1]
    shuffled = generate_vlm(
        model, processor, [PROMPTS[i] for i in order], [IMAGES[i] for i in order],
        max_new_tokens=6, batch_size=2, seeds=[seeds[i] for i in order],
    )  # fmt: skip
    for position, i in enumerate(order):
        assert shuffled[position].response_ids == batched[i].response_ids
    reseeded = generate_vlm(model, processor, PROMPTS, IMAGES, max_new_tokens=6, seeds=seeds[::-1])
    assert [g.response_ids for g in reseeded] != [g.response_ids for g in batched]


def test_stop_tokens_end_the_response(tiny):
    model, processor = tiny
    free = generate_vlm(model, processor, [PROMPTS[2]], [[]], max_new_tokens=8, temperature=0)[0]
    assert not free.finished and len(free.response_ids) == 8  # max_new_tokens honoured
    stop = free.response_ids[2]
    assert stop not in free.response_ids[:2]
    config = model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = [*saved, stop]
    try:
        batch = generate_vlm(model, processor, PROMPTS, IMAGES, max_new_tokens=8, temperature=0)
    finally:
        config.eos_token_id = saved
    stopped = batch[2]
    assert stopped.finished and stopped.response_ids == free.response_ids[:3]  # stop token kept
    assert stopped.text == processor.tokenizer.decode(free.response_ids[:2])  # not shown
    for g in batch:  # every row ends at its first stop token
        ends = [i for i, t in enumerate(g.response_ids) if t in {*saved, stop}]
        assert ends == ([len(g.response_ids) - 1] if g.finished else [])


def test_the_image_token_is_never_sampled(tiny):
    """A response holding the image placeholder could not be fed back with its images: with
    the placeholder's output row made the winner, the plain model picks it and we do not."""
    model, processor = tiny
    image_id = processor.image_token_id
    greedy = generate_vlm(model, processor, PROMPTS, IMAGES, max_new_tokens=4, temperature=0)
    head = model.get_output_embeddings().weight
    saved = head[image_id].clone()
    first = greedy[0].response_ids[0]
    try:
        with torch.no_grad():
            head[image_id] = 3 * head[first]  # 3x the greedy token's logit, when it is > 0
        ids = torch.tensor([greedy[0].prompt_ids])
        vision = encode_vlm_prompt(processor, PROMPTS[0], IMAGES[0]).vision
        with torch.no_grad():
            logits = model(input_ids=ids, **vision).logits[0, -1]
        assert logits.argmax().item() == image_id  # what HF generate would emit
        banned = generate_vlm(model, processor, PROMPTS, IMAGES, max_new_tokens=4, temperature=0)
        sampled = generate_vlm(model, processor, PROMPTS, IMAGES, max_new_tokens=4, seeds=range(5))
    finally:
        with torch.no_grad():
            head[image_id] = saved
    assert banned[0].response_ids[0] == first
    assert all(image_id not in g.response_ids for g in banned + sampled)


def test_teacher_forced_logps_match_the_samplers(tiny):
    """log π(y | image, x) recomputed on the padded full sequences equals the sum of the
    sampler's per-token log-probs (KV cache, left padding): no off-by-one, the images used."""
    model, processor = tiny
    generations = generate_vlm(model, processor, PROMPTS, IMAGES, max_new_tokens=6, seeds=range(5),
                               sampler_logps=True)  # fmt: skip
    logps = vlm_sequence_logps(model, processor, PROMPTS, IMAGES, generations, batch_size=3)
    sampled = torch.tensor([sum(g.sampler_logps) for g in generations])
    # fp32 rounding of a different summation order over ~100 positions and 6 tokens
    tolerance = 64 * torch.finfo(torch.float32).eps * sampled.abs().max().item()
    torch.testing.assert_close(logps, sampled, atol=tolerance, rtol=0)
    other = [[square(GREEN)] if images else [] for images in IMAGES]
    moved = vlm_sequence_logps(model, processor, PROMPTS, other, generations)
    assert not torch.allclose(moved[:2], logps[:2])


def test_image_counts_must_match(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="prompt 1: 1 image parts .* but 0 images"):
        generate_vlm(model, processor, PROMPTS[:2], [[square(RED)], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="1 image lists for 2 prompts"):
        generate_vlm(model, processor, PROMPTS[:2], [[square(RED)]], max_new_tokens=2)
