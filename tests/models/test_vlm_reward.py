"""The vision-language reward model on a tiny LLaVA: its score against the HF forward by hand,
padding side, save / load round trip (a folder the VLM Auto classes load), dtype, bad
folders, which parts train, and `VlmRewardFn` scoring rollouts as the training pairs render."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from vlm_runs import tiny_vlm_world

from alignlab.config import ModelConfig, UserInputError
from alignlab.data.pairs import split_pairs
from alignlab.data.schema import DataError
from alignlab.data.vlm_pairs import collate_vlm_pairs, encode_vlm_pairs, read_vlm_pairs
from alignlab.models.forward_inputs import model_inputs
from alignlab.models.vlm_reward import (
    HEAD_FILE,
    INFO_FILE,
    VlmRewardFn,
    load_vlm_reward,
    load_vlm_reward_model,
    set_reward_trainable,
)
from alignlab.training.checkpoint import save_hf_folder
from alignlab.training.distributed import Runtime

CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(tiny LLaVA folder, shapes preference.jsonl)."""
    root = tmp_path_factory.mktemp("vlm_reward")
    model, shapes = tiny_vlm_world(root, n_train=6)
    return model, shapes / "preference.jsonl"


@pytest.fixture(scope="module")
def saved(world, tmp_path_factory):
    """A VLM reward-model folder (the tiny LLaVA with a fresh head, seed 3)."""
    folder, _ = world
    model, processor = load_vlm_reward_model(ModelConfig(path=str(folder)), seed=3)
    return save_hf_folder(tmp_path_factory.mktemp("saved") / "rm", model, processor, CPU)


def pair_batch(processor, data, n=3, side="right"):
    processor.tokenizer.padding_side = side
    rows = encode_vlm_pairs(read_vlm_pairs(data)[:n], processor, max_length=512)
    return collate_vlm_pairs(rows, processor, max_length=512)


def test_score_is_the_last_real_hidden_state_dotted_with_the_head(world):
    folder, data = world
    model, processor = load_vlm_reward_model(ModelConfig(path=str(folder)), seed=1)
    model.eval()
    batch = pair_batch(processor, data)
    lengths = batch["attention_mask"].sum(-1)
    assert len(set(lengths.tolist())) > 1  # padding to skip
    with torch.no_grad():
        scores = model(batch)
        hf = AutoModelForImageTextToText.from_pretrained(folder).eval()
        hidden = hf(**model_inputs(hf, batch), output_hidden_states=True).hidden_states[-1]
    head = model.score.weight[0].detach()
    want = []
    for i in range(len(lengths)):
        last = max(t for t in range(hidden.shape[1]) if batch["attention_mask"][i, t] == 1)
        want.append(float(hidden[i, last] @ head))
    assert scores.dtype == torch.float32 and scores.shape == (len(lengths),)
    torch.testing.assert_close(scores, torch.tensor(want), atol=1e-5, rtol=1e-5)
    # the head starts as the text reward head does: N(0, 1/(H + 1)), seeded
    again, _ = load_vlm_reward_model(ModelConfig(path=str(folder)), seed=1)
    other, _ = load_vlm_reward_model(ModelConfig(path=str(folder)), seed=2)
    assert torch.equal(again.score.weight, model.score.weight)
    assert not torch.equal(other.score.weight, model.score.weight)


def test_left_padding_gives_the_same_scores(world):
    folder, data = world
    model, processor = load_vlm_reward_model(ModelConfig(path=str(folder)))
    model.eval()
    right = pair_batch(processor, data, side="right")
    left = pair_batch(processor, data, side="left")
    assert (left["attention_mask"][:, 0] == 0).any() and (right["attention_mask"][:, -1] == 0).any()
    with torch.no_grad():
        torch.testing.assert_close(model(left), model(right), atol=1e-5, rtol=1e-5)


def test_saved_folder_loads_back_and_as_a_plain_vlm(world, saved):
    folder, data = world
    start, processor = load_vlm_reward_model(ModelConfig(path=str(folder)), seed=3)
    loaded, loaded_processor = load_vlm_reward(saved)
    batch = pair_batch(processor, data)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), start.eval()(batch), atol=0, rtol=0)
    assert torch.equal(loaded.score.weight, start.score.weight)
    # the folder is the VLM's own: the Auto classes load it, the tie kept, the head beside it
    vlm = AutoModelForImageTextToText.from_pretrained(saved)
    assert vlm.get_output_embeddings().weight is vlm.get_input_embeddings().weight
    assert loaded.vlm.get_output_embeddings().weight is loaded.vlm.get_input_embeddings().weight
    AutoProcessor.from_pretrained(saved)
    info = json.loads((saved / INFO_FILE).read_text())
    assert info["format"] == "alignlab-vlm-reward" and info["hidden_size"] == 32
    assert load_file(str(saved / HEAD_FILE))["weight"].shape == (1, 32)
    # dtype: the head in the weights' dtype, the scores in float32
    half, _ = load_vlm_reward(saved, dtype="bf16")
    assert half.score.weight.dtype == torch.bfloat16 and half.vlm.dtype == torch.bfloat16
    with torch.no_grad():
        scores = half(batch)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, loaded(batch), atol=0.1, rtol=0.1)


def test_a_fresh_run_keeps_the_head_of_a_reward_model_folder(saved):
    model, _ = load_vlm_reward_model(ModelConfig(path=str(saved)), seed=99)
    assert torch.equal(model.score.weight, load_file(str(saved / HEAD_FILE))["weight"])


def test_bad_folders_are_one_line(world, saved, tmp_path):
    folder, _ = world
    with pytest.raises(UserInputError, match=f"no {INFO_FILE}.*alignlab vlm_rm"):
        load_vlm_reward(folder)
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in saved.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    save_file({"weight": torch.zeros(1, 7)}, broken / HEAD_FILE)
    with pytest.raises(UserInputError, match=r"reward_head.safetensors: head of shape \(1, 7\)"):
        load_vlm_reward(broken)
    (broken / INFO_FILE).write_text("{not json")
    with pytest.raises(UserInputError, match="cannot read the reward head"):
        load_vlm_reward(broken)


def test_trainable_parts_and_the_head(world):
    folder, _ = world
    model, _ = load_vlm_reward_model(ModelConfig(path=str(folder)))
    counts = set_reward_trainable(model, tower=False, projector=True, llm=True)
    assert counts["head"] == 32 and counts["tower"] == 0 and counts["llm"] > 0
    assert model.score.weight.requires_grad
    assert not any(p.requires_grad for p in model.vlm.model.vision_tower.parameters())
    # a tied LM head is the embedding: it trains with the LLM
    assert model.vlm.get_output_embeddings().weight.requires_grad


def test_reward_fn_scores_rollouts_as_the_training_pairs_render(world, saved):
    _, data = world
    reward_fn = VlmRewardFn(saved, batch_size=2, device="cpu")
    records = [json.loads(line) for line in data.read_text().splitlines()[:3]]
    prompts = [r["prompt"] for r in records]
    responses = [r["chosen"][0]["content"][0]["text"] for r in records]  # strings, as sampled
    extras = [{"images": [str(data.parent / r["images"][0])], "type": r["type"]} for r in records]
    scores = reward_fn(prompts, responses, extras)
    model, processor = load_vlm_reward(saved)
    with torch.no_grad():
        chosen, _ = split_pairs(model(pair_batch(processor, data)))
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    torch.testing.assert_close(torch.tensor(scores), chosen, atol=1e-5, rtol=1e-5)
    with pytest.raises(DataError, match=r"reward sample of .*:2: field 'images'"):
        reward_fn(prompts[:2], responses[:2], [extras[0], {"images": []}])
    assert reward_fn([], [], []) == []
