"""Who may call the server and how much one request may ask: API keys and the body limit.

Keys come from an environment variable (`--api-key-env NAME`: one key, or several separated by
commas) or a file (`--api-key-file`: one key per line, `#` comments), never from the command
line, where `ps` and shell histories would show them. A request carries one as
`Authorization: Bearer KEY`; it is compared with every key by `hmac.compare_digest`, all of
them each time, so the time a wrong key takes tells nothing about the right ones. Keys are
never logged (uvicorn's access log has the request line only).

The body is read with a byte limit: a `Content-Length` over it is refused before a byte is
read, and a chunked or lying body is cut off as soon as it passes the limit, so a client
cannot make the server buffer more than `max_body_bytes`.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path
from typing import Any

from alignlab.config import ConfigError
from alignlab.serve.protocol import ApiError


def load_api_keys(env: str | None = None, file: str | Path | None = None) -> tuple[bytes, ...]:
    """The accepted keys; () when neither source is given (no authentication). A source that
    is named but empty is an error: a server meant to be protected must not start open."""
    keys: list[str] = []
    if env:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"--api-key-env {env}: the environment variable is not set or empty")
        keys.extend(k.strip() for k in value.split(","))
    if file:
        path = Path(file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise ConfigError(f"--api-key-file {file}: cannot read it ({err.strerror})") from err
        keys.extend(line.strip() for line in lines if not line.strip().startswith("#"))
        if not any(keys):
            raise ConfigError(f"--api-key-file {file}: no key in it (one key per line)")
    keys = [k for k in keys if k]
    if (env or file) and not keys:
        raise ConfigError("no API key found in the given sources")
    return tuple(dict.fromkeys(k.encode() for k in keys))


def check_api_key(headers: Any, keys: tuple[bytes, ...]) -> None:
    """ApiError 401 unless `headers` carry `Authorization: Bearer <one of keys>`."""
    if not keys:
        return
    header = headers.get("authorization") or ""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(
            401,
            "missing API key: send the header Authorization: Bearer YOUR_KEY",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = given.strip().encode()
    matched = False
    for key in keys:  # every key, no early exit
        matched |= hmac.compare_digest(token, key)
    if not matched:
        raise ApiError(
            401, "incorrect API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )


async def read_body(request: Any, max_bytes: int) -> bytes:
    """The request body, at most `max_bytes` (ApiError 413 beyond, 400 for a bad length)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise ApiError(400, "Content-Length is not a number", code="invalid_request")
        if int(length) > max_bytes:
            raise too_large(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413, f"request body over the server's limit of {max_bytes} bytes", code="request_too_large"
    )


def is_loopback(host: str) -> bool:
    """Whether binding `host` exposes the server to this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
