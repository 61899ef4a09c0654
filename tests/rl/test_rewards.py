"""Reward sources behind one spec string: callables (per sample, batched, with row extras),
reward-model folders and ensembles, HTTP endpoints; the lab's gold reward."""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from alignlab.callables import resolve_callable
from alignlab.config import ConfigError, ModelConfig
from alignlab.lab.gold import gold_score
from alignlab.lab.rewards import gold_reward
from alignlab.lab.world import LabWorld
from alignlab.models.loading import load_tokenizer
from alignlab.models.reward import load_reward_model
from alignlab.models.reward_ensemble import RewardScorer
from alignlab.rl.rewards import RewardError, build_reward_fn, callable_reward, check_reward_spec
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


TRL_REWARDS = """
def trl_length(completions, **kwargs):
    return [float(len(c if isinstance(c, str) else c[0]["content"])) for c in completions]


def trl_columns(prompts, completions, target):
    return [float(t in str(c)) for c, t in zip(completions, target)]


def trl_needs_solution(completions, solution):
    return [0.0 for _ in completions]


def per_sample_needs_target(prompt, response, target):
    return 1.0
"""


def test_trl_batched_convention_by_keyword(tmp_path):
    source = tmp_path / "trl_rewards.py"
    source.write_text(TRL_REWARDS)
    extras = [{"target": "gamma"}, {"target": "nope"}]
    # the message-list prompt's completion arrives as one assistant message, as TRL passes it
    assert build_reward_fn(f"{source}:trl_length")(PROMPTS, RESPONSES, extras) == [11.0, 17.0]
    assert build_reward_fn(f"{source}:trl_columns")(PROMPTS, RESPONSES, extras) == [1.0, 0.0]
    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions, **kwargs)
        return [0.0, 0.0]

    callable_reward(spy)(PROMPTS, RESPONSES, extras)
    assert seen == {
        "prompts": PROMPTS,
        "completions": ["gamma delta", [{"role": "assistant", "content": "sorry cannot help"}]],
        "target": ["gamma", "nope"],
    }
    # a column the rows lack is named, not a TypeError from inside the call
    for name in ("trl_needs_solution", "per_sample_needs_target"):
        with pytest.raises(RewardError, match=f"reward {source}:{name}: cannot call it: .*'"):
            build_reward_fn(f"{source}:{name}")(PROMPTS, RESPONSES)


def test_what_a_reward_function_returned_is_named():
    def per_sample(value):
        return callable_reward(lambda p, r: value, "rewards.py:score")

    with pytest.raises(
        RewardError, match=r"reward rewards.py:score returned 'high' for response 0"
    ):
        per_sample("high")(PROMPTS, RESPONSES)
    with pytest.raises(RewardError, match=r"returned None for response 0; expected a number"):
        per_sample(None)(PROMPTS, RESPONSES)
    with pytest.raises(
        RewardError,
        match=r"returned \[1.0, 2.0\] \(list\) for response 0; a "
        "per-sample reward function returns one number",
    ):
        per_sample([1.0, 2.0])(PROMPTS, RESPONSES)
    with pytest.raises(RewardError, match=r"returned inf for response 0 \(not finite\)"):
        per_sample(float("inf"))(PROMPTS, RESPONSES)
    assert per_sample(True)(PROMPTS, RESPONSES) == [1.0, 1.0]  # rule-based rewards
    assert per_sample(torch.tensor(0.5))(PROMPTS, RESPONSES) == [0.5, 0.5]

    def batched(value):
        return callable_reward(lambda prompts, completions: value, "rewards.py:batch")

    with pytest.raises(RewardError, match=r"returned 1.0 \(float\); expected a list of 2"):
        batched(1.0)(PROMPTS, RESPONSES)
    with pytest.raises(RewardError, match=r"returned 3 rewards for 2 responses"):
        batched([1, 2, 3])(PROMPTS, RESPONSES)
    with pytest.raises(RewardError, match=r"returned 'x' for response 1"):
        batched([1.0, "x"])(PROMPTS, RESPONSES)
    assert batched(torch.tensor([1.0, 2.0]))(PROMPTS, RESPONSES) == [1.0, 2.0]


def test_reward_spec_checked_before_any_model_loads(tmp_path, tiny_model_dir):
    source = tmp_path / "rewards.py"
    source.write_text(
        "CALLS = []\nCALLS.append(1)\n"
        "def score(prompt, response):\n    return 1.0\n"
        "def one(response):\n    return 1.0\n"
        "NOT_A_FUNCTION = 3\n"
    )
    check_reward_spec(f"{source}:score", "rl.reward")
    with pytest.raises(ConfigError, match=r"rl.reward=.*:one: one\(response\) cannot take"):
        check_reward_spec(f"{source}:one", "rl.reward")
    with pytest.raises(ConfigError, match=r"no attribute 'nope' \(it defines: one, score\)"):
        check_reward_spec(f"{source}:nope", "rl.reward")
    with pytest.raises(ConfigError, match=r":NOT_A_FUNCTION: NOT_A_FUNCTION is a int"):
        check_reward_spec(f"{source}:NOT_A_FUNCTION", "rl.reward")
    with pytest.raises(ConfigError, match=r"sampling.reward=.*: not a reward model"):
        check_reward_spec(str(tiny_model_dir), "sampling.reward")
    broken = tmp_path / "broken.py"
    broken.write_text("def score(prompt, response)\n    return 1.0\n")
    with pytest.raises(ConfigError, match=r"broken.py line 1: SyntaxError"):
        check_reward_spec(f"{broken}:score", "rl.reward")
    with pytest.raises(ConfigError, match=r"cannot import no_such_module_x: No module named"):
        check_reward_spec("no_such_module_x:score", "rl.reward")
    # the checks and the build above ran the file once, as `import` would
    fn = resolve_callable(f"{source}:score")
    assert build_reward_fn(f"{source}:score")(PROMPTS, RESPONSES) == [1.0, 1.0]
    assert sys.modules[fn.__module__].CALLS == [1]


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
