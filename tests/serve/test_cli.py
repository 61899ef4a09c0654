"""`alignlab serve`: one-line errors for what a user gets wrong, keys from the environment or a
file, and the whole path from the command line to a live server answering the openai client."""

import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import openai
import pytest

from alignlab.cli import main
from alignlab.config import ConfigError
from alignlab.serve.cli import model_sources
from alignlab.serve.protocol import ApiError
from alignlab.serve.security import check_api_key, is_loopback, load_api_keys


def test_a_wrong_model_path_is_one_line_and_exit_code_2(capsys, tmp_path):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err and "Traceback" not in err
    assert main(["serve"]) == 2
    assert main(["serve", str(tmp_path), "--max-batch", "0"]) == 2
    assert main(["serve", "--model", "no-equals-sign"]) == 2
    assert "NAME=DIR" in capsys.readouterr().err


def test_without_fastapi_it_says_what_to_install(capsys, monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi raises ImportError
    assert main(["serve", str(tiny_model_dir)]) == 2
    assert 'pip install "alignlab[serve]"' in capsys.readouterr().err


def test_importing_the_cli_does_not_import_fastapi():
    code = "import sys, alignlab.cli; print('fastapi' in sys.modules, 'alignlab.serve.app' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_models_are_named_by_folder_or_by_flag():
    args = SimpleNamespace(model_dir="runs/sft/final/", model=["dpo=runs/dpo/final"])
    assert {k: v[0] for k, v in model_sources(args).items()} == {
        "final": "runs/sft/final/",
        "dpo": "runs/dpo/final",
    }
    with pytest.raises(ConfigError, match="twice"):
        model_sources(SimpleNamespace(model_dir=None, model=["a=x", "a=y"]))


def test_api_keys_from_the_environment_and_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVE_KEYS", "k1, k2")
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nk3\n\n")
    keys = load_api_keys("SERVE_KEYS", keys_file)
    assert keys == (b"k1", b"k2", b"k3")
    check_api_key({"authorization": "Bearer k3"}, keys)
    with pytest.raises(ApiError):
        check_api_key({"authorization": "Bearer k4"}, keys)
    with pytest.raises(ApiError):
        check_api_key({"authorization": "Basic k1"}, keys)
    keys_file.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no key"):
        load_api_keys(None, keys_file)
    monkeypatch.delenv("SERVE_KEYS")
    with pytest.raises(ConfigError, match="not set"):
        load_api_keys("SERVE_KEYS", None)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # a fresh process imports torch and transformers: ~10 s on 2 cores
def test_the_command_serves_the_openai_client_and_stops_on_ctrl_c(tiny_model_dir, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("cli-key\n")
    port = free_port()
    command = [sys.executable, "-m", "alignlab.cli", "serve", "--model", f"tiny={tiny_model_dir}",
               "--port", str(port), "--api-key-file", str(keys_file), "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="cli-key", max_retries=0, timeout=30
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                assert [m.id for m in client.models.list().data] == ["tiny"]
                break
            except openai.APIConnectionError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3, seed=0
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, err
    assert "cli-key" not in err  # keys are never logged


def test_only_loopback_addresses_count_as_private():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
