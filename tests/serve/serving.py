"""A live server for the serve tests: uvicorn in a background thread on 127.0.0.1 on a free
port (the socket is bound here and handed to uvicorn, so nothing can take the port in
between), and plain HTTP requests for what the openai client would never send."""

import contextlib
import http.client
import json
import socket
import threading
import time
from urllib.parse import urlsplit

import openai
import uvicorn

from alignlab.serve.app import ServerSettings, create_app
from alignlab.serve.engine import served_from

API_KEY = "test-key-0123"


@contextlib.contextmanager
def live_server(models, settings):
    """Serve `models` (name -> ServedModel); yields the base URL (http://127.0.0.1:PORT)."""
    app = create_app(models, settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        for served in models.values():
            served.scheduler.close()


@contextlib.contextmanager
def tiny_server(tiny_lm, name="tiny", max_batch=8, max_queue=32, **settings):
    model, tokenizer = tiny_lm
    served = served_from(name, "tiny", model, tokenizer, max_batch=max_batch, max_queue=max_queue)
    settings.setdefault("api_keys", (API_KEY.encode(),))
    with live_server({name: served}, ServerSettings(**settings)) as url:
        yield url, served


def raw_request(url, method, path, body=None, headers=None, key=API_KEY):
    """(status, headers, body bytes) of one plain HTTP request; `body` a dict (sent as JSON),
    bytes, or None. The raw side of what the openai client does, to send what it never would."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    sent = {
        "Content-Type": "application/json",
        **({"Authorization": f"Bearer {key}"} if key else {}),
    }
    sent.update(headers or {})
    payload = json.dumps(body).encode() if isinstance(body, dict) else body
    try:
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def client_for(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
