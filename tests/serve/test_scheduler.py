"""The continuous batcher against the offline sampler, on real architectures: rows that join
a running batch mid-decode (their KV cache merged with left padding on either side) and rows
that leave it answer exactly what they answer alone."""

import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, MistralConfig, Qwen2Config

from alignlab.data.templates import render_prompt
from alignlab.models.generation import generate, prompt_token_ids
from alignlab.serve.scheduler import FINISH_ERROR, Job, Scheduler, merge_caches, mergeable

BODY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}  # fmt: skip
ARCHITECTURES = {
    "qwen2": (Qwen2Config, {**BODY, "num_key_value_heads": 2}),
    "gpt2": (GPT2Config, {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256}),
    # a sliding window: its cache cannot be merged, so requests are batched in cohorts
    "mistral": (MistralConfig, {**BODY, "num_key_value_heads": 2, "sliding_window": 8}),
}
SHORT, LONG = "alpha", "What is the capital of gamma plus delta beta alpha gamma what is the answer"


@pytest.fixture(scope="module", params=["llama", *ARCHITECTURES])
def lm(request, tiny_lm, tiny_tokenizer):
    if request.param == "llama":
        return tiny_lm
    config_cls, kwargs = ARCHITECTURES[request.param]
    ids = {"bos_token_id": None, "eos_token_id": tiny_tokenizer.eos_token_id}
    config = config_cls(
        vocab_size=len(tiny_tokenizer), pad_token_id=tiny_tokenizer.pad_token_id, **ids, **kwargs
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval(), tiny_tokenizer


def ids_of(tokenizer, prompt):
    return prompt_token_ids(tokenizer, render_prompt(tokenizer, prompt))


def wait_for(condition, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rows_joining_and_leaving_a_running_batch_answer_as_alone(lm, temperature):
    """A (short prompt) decodes alone; B (long prompt: the running rows are left-padded) joins
    after A's 3rd token and leaves early (its columns are then cut); C (short: the newcomer is
    left-padded) joins later. Greedy is exact; sampled rows use their seeds' draws, so they
    match too unless float rounding of the padded batch flips a draw (not at these sizes)."""
    model, tokenizer = lm
    plan = [(SHORT, 30, 1), (LONG, 5, 2), ([{"role": "user", "content": "beta gamma"}], 20, 3)]
    expected = [
        generate(model, tokenizer, [p], max_new_tokens=m, temperature=temperature, seeds=[s])[0]
        for p, m, s in plan
    ]
    scheduler = Scheduler(model, tokenizer, max_batch=4).start()
    try:
        jobs = [Job(ids_of(tokenizer, p), m, temperature, 1.0, s) for p, m, s in plan]
        scheduler.submit([jobs[0]])
        wait_for(lambda: len(jobs[0].tokens) >= 3)
        scheduler.submit([jobs[1]])
        wait_for(lambda: len(jobs[1].tokens) >= 2 or jobs[1].done.is_set())
        scheduler.submit([jobs[2]])
        for job in jobs:
            assert job.done.wait(60)
    finally:
        scheduler.close()
    for job, generation in zip(jobs, expected):
        assert job.tokens == generation.response_ids
        assert job.text == generation.text
    if scheduler.mergeable:  # B and C joined A mid-decode and shared its forwards
        assert scheduler.merges == 2
        assert scheduler.steps < sum(len(g.response_ids) for g in expected) - 5
    else:
        assert scheduler.merges == 0


def test_rows_with_different_sampling_settings_share_a_batch(tiny_lm):
    model, tokenizer = tiny_lm
    settings = [(0.0, 1.0, 1), (1.0, 1.0, 2), (0.7, 0.8, 3), (1.0, 1.0, 4)]
    prompt_ids = ids_of(tokenizer, SHORT)
    scheduler = Scheduler(model, tokenizer, max_batch=8)
    jobs = [Job(prompt_ids, 16, t, p, s) for t, p, s in settings]
    scheduler.submit(jobs)  # queued before the thread starts: one prefill, one batch
    scheduler.start()
    for job in jobs:
        assert job.done.wait(60)
    scheduler.close()
    for job, (t, p, s) in zip(jobs, settings):
        alone = generate(
            model, tokenizer, [SHORT], max_new_tokens=16, temperature=t, top_p=p, seeds=[s]
        )[0]
        assert job.tokens == alone.response_ids


def test_merge_left_pads_the_shorter_cache():
    """The merged cache holds both sides' keys right-aligned, zeros in front of the shorter."""
    from transformers import DynamicCache

    def cache(batch, length, value):
        c = DynamicCache()
        c.update(
            torch.full((batch, 2, length, 4), value), torch.full((batch, 2, length, 4), -value), 0
        )
        return c

    running, newcomers = cache(2, 3, 1.0), cache(1, 5, 2.0)
    assert mergeable(running)
    merge_caches(running, newcomers)
    keys = running.layers[0].keys
    assert keys.shape == (3, 2, 5, 4)
    assert (keys[:2, :, :2] == 0).all() and (keys[:2, :, 2:] == 1).all() and (keys[2] == 2).all()
    assert (running.layers[0].values[2] == -2).all()


def test_a_failing_forward_fails_its_rows_and_the_thread_serves_on(tiny_model_dir):
    from alignlab.eval.harness import load_for_eval

    loaded = load_for_eval(tiny_model_dir, device="cpu")  # its own copy: forward is patched
    model, tokenizer = loaded.model, loaded.tokenizer
    calls = {"n": 0}
    forward = model.forward

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # a decode step of the first job
            raise RuntimeError("device lost")
        return forward(*args, **kwargs)

    model.forward = flaky
    scheduler = Scheduler(model, tokenizer).start()
    try:
        first = Job(ids_of(tokenizer, SHORT), 10, 0.0)
        scheduler.submit([first])
        assert first.done.wait(30)
        assert first.finish_reason == FINISH_ERROR and "device lost" in first.error
        second = Job(ids_of(tokenizer, SHORT), 10, 0.0)
        scheduler.submit([second])
        assert second.done.wait(30) and second.finish_reason == "length"
        # a job is done before the step that finished it drops its row
        wait_for(lambda: scheduler.active_count == 0)
        assert scheduler.alive
    finally:
        scheduler.close()


def test_a_cancelled_job_leaves_at_the_next_step(tiny_lm):
    model, tokenizer = tiny_lm
    scheduler = Scheduler(model, tokenizer).start()
    try:
        events = []
        job = Job(ids_of(tokenizer, SHORT), 1000, 0.0, on_event=lambda j, d, f, _: events.append(f))
        other = Job(ids_of(tokenizer, LONG), 40, 0.0)
        scheduler.submit([job, other])
        wait_for(lambda: len(job.tokens) >= 5)
        job.cancel.set()
        assert job.done.wait(30) and job.finish_reason == "cancelled"
        assert len(job.tokens) < 1000 and events[-1] is True
        assert other.done.wait(30) and other.finish_reason == "length"
    finally:
        scheduler.close()


def test_blocking_submit_waits_for_room(tiny_lm):
    model, tokenizer = tiny_lm
    scheduler = Scheduler(model, tokenizer, max_batch=1, max_queue=1)
    scheduler.pause()
    scheduler.start()
    try:
        scheduler.submit([Job(ids_of(tokenizer, SHORT), 3, 0.0)])
        late = Job(ids_of(tokenizer, SHORT), 3, 0.0)
        thread = threading.Thread(target=scheduler.submit, args=([late],), kwargs={"block": True})
        thread.start()
        time.sleep(0.1)
        assert thread.is_alive() and scheduler.waiting_count == 1
        scheduler.resume()
        thread.join(10)
        assert late.done.wait(30)
    finally:
        scheduler.close()
