"""Reward sources behind one spec string: callables (per sample, batched, with row extras),
reward-model folders and ensembles, HTTP endpoints; the lab's gold reward."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from alignlab.config import ModelConfig
from alignlab.eval.reward_ensemble import RewardScorer
from alignlab.lab.gold import gold_score
from alignlab.lab.rewards import gold_reward
from alignlab.lab.world import LabWorld
from alignlab.models.loading import load_tokenizer
from alignlab.models.reward import load_reward_model
from alignlab.rl.rewards import RewardError, build_reward_fn, callable_reward
from alignlab.training.checkpoint import save_reward_folder
from alignlab.training.distributed import Runtime

CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
PROMPTS = ["alpha beta", [{"role": "user", "content": "what is the capital"}]]
RESPONSES = ["gamma delta", "sorry cannot help"]


def test_callable_per_sample_batched_and_extras(tmp_path):
    source = tmp_path / "rewards.py"
    source.write_text(
        "def length(prompt, response):\n    return float(len(response))\n"
        "def bonus(prompt, response, target='x', **kwargs):\n"
        "    return float(target in response) + len(kwargs)\n"
        "def batch(prompts, responses, target=None):\n"
        "    return [float(t in r) for r, t in zip(responses, target)]\n"
        "batch.batched = True\n"
    )
    assert build_reward_fn(f"{source}:length")(PROMPTS, RESPONSES) == [11.0, 17.0]
    extras = [{"target": "gamma", "family": "f"}, {"target": "nope", "family": "f"}]
    # extras the function does not declare are dropped; **kwargs receives them all
    assert build_reward_fn(f"{source}:length")(PROMPTS, RESPONSES, extras) == [11.0, 17.0]
    assert build_reward_fn(f"{source}:bonus")(PROMPTS, RESPONSES, extras) == [2.0, 1.0]
    assert build_reward_fn(f"{source}:batch")(PROMPTS, RESPONSES, extras) == [1.0, 0.0]
    # a module:function spec
    fn = build_reward_fn("alignlab.lab.rewards:gold_reward")
    assert callable(fn)
    with pytest.raises(ValueError, match="no attribute"):
        build_reward_fn(f"{source}:missing")
    with pytest.raises(ValueError, match="not a folder"):
        build_reward_fn(str(tmp_path / "no-such-rm"))


def test_bad_reward_values_are_errors():
    with pytest.raises(RewardError, match="not finite"):
        callable_reward(lambda p, r: float("nan"))(PROMPTS, RESPONSES)
    batched = lambda ps, rs: [1.0]  # noqa: E731
    batched.batched = True
    with pytest.raises(RewardError, match="1 rewards for 2 responses"):
        callable_reward(batched)(PROMPTS, RESPONSES)


@pytest.fixture(scope="module")
def rm_folders(tiny_model_dir, tmp_path_factory):
    cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(cfg)
    root = tmp_path_factory.mktemp("rms")
    folders = []
    for seed in (1, 2):
        model = load_reward_model(cfg, tokenizer, seed=seed).eval()
        folders.append(save_reward_folder(root / f"rm-{seed}", model, tokenizer, CPU))
    return folders


def test_reward_model_folder_and_ensemble(rm_folders):
    one = build_reward_fn(str(rm_folders[0]), device="cpu")
    want = RewardScorer(rm_folders[0], device="cpu").score_batch(PROMPTS, RESPONSES)
    assert one(PROMPTS, RESPONSES, [{}, {}]) == pytest.approx(want, abs=1e-6)
    spec = ",".join(map(str, rm_folders))
    worst = build_reward_fn(spec, aggregate="min", device="cpu")(PROMPTS, RESPONSES)
    members = [RewardScorer(f, device="cpu").score_batch(PROMPTS, RESPONSES) for f in rm_folders]
    assert worst == pytest.approx([min(a, b) for a, b in zip(*members)], abs=1e-6)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/slow":
            time.sleep(1.0)
        if self.path == "/broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        rewards = [float(len(r)) for r in body["responses"]]
        if self.path == "/extras":
            rewards = [float(e["target"] in r) for r, e in zip(body["responses"], body["extras"])]
        if self.path == "/short":
            rewards = rewards[:1]
        payload = json.dumps({"rewards": rewards}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_http_endpoint(server):
    assert build_reward_fn(f"{server}/score")(PROMPTS, RESPONSES) == [11.0, 17.0]
    extras = [{"target": "gamma"}, {"target": "gamma"}]
    assert build_reward_fn(f"{server}/extras")(PROMPTS, RESPONSES, extras) == [1.0, 0.0]
    with pytest.raises(RewardError, match="HTTP 500"):
        build_reward_fn(f"{server}/broken")(PROMPTS, RESPONSES)
    with pytest.raises(RewardError, match="1 rewards for 2"):
        build_reward_fn(f"{server}/short")(PROMPTS, RESPONSES)
    with pytest.raises(RewardError, match="timeout 0.2"):
        build_reward_fn(f"{server}/slow", timeout=0.2)(PROMPTS, RESPONSES)
    with pytest.raises(RewardError, match="no answer"):
        build_reward_fn("http://127.0.0.1:9/none", timeout=1)(PROMPTS, RESPONSES)


def test_lab_gold_reward_from_row_extras_or_lookup():
    world = LabWorld(seed=0)
    lab_prompt = world.prompts("train", 3, stream="rl-0")[1]
    record = lab_prompt.to_record()
    ideal = world.ideal_response(lab_prompt)
    extras = {k: v for k, v in record.items() if k != "prompt"}
    assert gold_reward(record["prompt"], ideal, **extras) == pytest.approx(1.0)
    assert gold_reward(record["prompt"], "sorry", **extras) == gold_score(lab_prompt, "sorry").total
    # without the extras: found by its user text, also in a ChatML-rendered prompt
    rendered = f"<|im_start|>user\n{lab_prompt.text}<|im_end|>\n<|im_start|>assistant\n"
    assert gold_reward(rendered, ideal) == pytest.approx(1.0)
    with pytest.raises(KeyError, match="not a prompt of lab world"):
        gold_reward("an unknown prompt", ideal)
    # through build_reward_fn, rows' extras as keyword arguments
    fn = build_reward_fn("alignlab.lab.rewards:gold_reward")
    assert fn([record["prompt"]], [ideal], [extras]) == [pytest.approx(1.0)]
