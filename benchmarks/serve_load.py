"""Serving under load: `alignlab serve` against `transformers serve` on the same model folder.

Same model (the SFT benchmark's Llama body, hidden 256, 4 layers, at the 32,000-token
vocabulary of the "realistic" shapes), same prompts (16 random words of its word-level
vocabulary), same sampling (temperature 1, top_p 1, --max-tokens new tokens; the model is
random, so few answers end early). Each server runs in its own process on 127.0.0.1; this
process is the load: for each concurrency C, C client threads send streamed completion
requests back to back until --requests are done (bounded concurrency: at most C in flight).

Reported per server and concurrency: output tokens per second (all answers' tokens over the
wall time), time to first token (p50, p99), request latency (p50, p99) and errors. A server
that cannot start here is reported with the reason, not silently skipped.

    python benchmarks/serve_load.py                                   # C = 1, 8, 32, 64
    python benchmarks/serve_load.py --concurrency 1 8 --requests 16 --max-tokens 32
    python benchmarks/serve_load.py --servers alignlab --shape tiny   # quick, ours only
    python benchmarks/serve_load.py --requests 16 --per-client 2 --server-threads 1
                                                       # max(16, 2 C) requests at each C

`transformers serve` runs with its defaults (no continuous batching: one generate per request,
requests served concurrently by threads) and, with `--servers transformers-cb`, with
`--continuous-batching` (its paged-attention batcher).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from sft_speed import BODY, make_assets  # noqa: E402 - benchmarks/ is not a package

SHAPES = {
    "tiny": {"vocab": 300, "seq": 17, "body": BODY},
    "realistic": {"vocab": 32000, "seq": 17, "body": BODY},
}
SERVERS = ("alignlab", "transformers", "transformers-cb")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(kind: str, model_dir: Path, port: int, max_batch: int) -> tuple[list[str], str]:
    """(command line, the `model` field requests must send)."""
    if kind == "alignlab":
        command = [sys.executable, "-m", "alignlab.cli", "serve", str(model_dir), "--port",
                   str(port), "--max-batch", str(max_batch), "--max-queue", "4096",
                   "--log-level", "warning"]  # fmt: skip
        return command, model_dir.name
    exe = Path(sys.executable).with_name("transformers")
    command = [str(exe), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
               "--device", "cpu", "--log-level", "warning"]  # fmt: skip
    if kind == "transformers-cb":
        command.append("--continuous-batching")
    return command, str(model_dir)


def start(
    kind: str, model_dir: Path, max_batch: int, log: Path, threads: int | None
) -> tuple[subprocess.Popen | None, int, str, str]:
    """(process, port, model name, why it could not start or '')."""
    port = free_port()
    command, name = server_command(kind, model_dir, port, max_batch)
    if not Path(command[0]).exists():
        return None, port, name, f"{command[0]} not found"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    handle = log.open("w")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None, port, name, f"exited with {process.returncode}: {tail(log)}"
        try:
            status, _ = request(port, "GET", "/v1/models", None)
            if status == 200:
                return process, port, name, ""
        except OSError:
            pass
        time.sleep(0.3)
    stop(process)
    return None, port, name, f"not up after 180 s: {tail(log)}"


def tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:])


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def request(port: int, method: str, path: str, body: dict | None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        payload = json.dumps(body) if body is not None else None
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def streamed_completion(port: int, body: dict) -> dict:
    """One streamed request: time to first token, latency, tokens, error."""
    start_time = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    first = None
    tokens_seen = 0
    usage = None
    try:
        connection.request("POST", "/v1/completions", body=json.dumps(body),
                           headers={"Content-Type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        if response.status != 200:
            return {"error": f"HTTP {response.status}: {response.read()[:200]!r}"}
        for raw in response:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return {"error": str(chunk["error"])[:200]}
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if choice.get("text"):
                    tokens_seen += 1
                    if first is None:
                        first = time.perf_counter()
    except (OSError, ValueError) as err:
        return {"error": repr(err)[:200]}
    finally:
        connection.close()
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else tokens_seen
    return {"ttft": (first or end) - start_time, "latency": end - start_time, "tokens": tokens}


def load(
    port: int, name: str, prompts: list[str], concurrency: int, requests: int, max_tokens: int
) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            body = {"model": name, "prompt": prompts[index % len(prompts)], "max_tokens": max_tokens,
                    "temperature": 1.0, "top_p": 1.0, "seed": index, "stream": True,
                    "stream_options": {"include_usage": True}}  # fmt: skip
            result = streamed_completion(port, body)
            with lock:
                results.append(result)

    start_time = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start_time
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    tokens = sum(r["tokens"] for r in ok)

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    ttft = [r["ttft"] for r in ok]
    latency = [r["latency"] for r in ok]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "output_tok_s": tokens / wall,
        "mean_tokens": tokens / max(len(ok), 1),
        "ttft_p50_s": statistics.median(ttft) if ttft else None,
        "ttft_p99_s": pct(ttft, 0.99),
        "latency_p50_s": statistics.median(latency) if latency else None,
        "latency_p99_s": pct(latency, 0.99),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "wall_s": wall,
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (other work on the machine skews every number)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on this platform
        return "?"


def markdown(rows: list[dict]) -> str:
    """The results as a Markdown table: one line per concurrency, servers side by side."""
    levels = sorted({r["concurrency"] for r in rows if "concurrency" in r})
    kinds = list(dict.fromkeys(r["server"] for r in rows))
    lines = ["| C | server | tok/s | TTFT p50 (s) | latency p50 / p99 (s) | errors |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for level in levels:
        for kind in kinds:
            found = [r for r in rows if r["server"] == kind and r.get("concurrency") == level]
            if not found:
                continue
            r = found[0]
            lines.append(
                f"| {level} | {kind} | {r['output_tok_s']:.0f} | {fmt(r['ttft_p50_s'])} | "
                f"{fmt(r['latency_p50_s'])} / {fmt(r['latency_p99_s'])} | "
                f"{r['errors']}/{r['requests']} |"
            )
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="realistic")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--requests", type=int, default=64, help="per concurrency (at least C)")
    parser.add_argument(
        "--per-client", type=int, default=1, help="at least this many requests per client"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=64, help="alignlab's --max-batch")
    parser.add_argument(
        "--server-threads", type=int, help="OMP_NUM_THREADS of the servers (default: torch's)"
    )
    parser.add_argument("--folder", help="keep the model folder here (default: a temp folder)")
    args = parser.parse_args()

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; shape {args.shape}, "
          f"{args.max_tokens} new tokens, temperature 1; server threads "
          f"{args.server_threads or 'default'}; load average {load_average()}")  # fmt: skip
    print("command: python " + " ".join(sys.argv))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp)
        model_dir, data = make_assets(SHAPES[args.shape], folder, 256)
        prompts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
        rows = []
        for kind in args.servers:
            process, port, name, why = start(
                kind, model_dir, args.max_batch, folder / f"{kind}.log", args.server_threads
            )
            if process is None:
                print(f"{kind}: cannot run here: {why}")
                rows.append({"server": kind, "skipped": why})
                continue
            try:
                # warm-up: the first forward at each cache length is slow on CPU (kernels and
                # allocations for new shapes), so run every length once, batched and alone
                load(port, name, prompts, 4, 8, args.max_tokens)
                for concurrency in args.concurrency:
                    count = max(args.requests, args.per_client * concurrency, concurrency)
                    result = load(port, name, prompts, concurrency, count, args.max_tokens)
                    result["load_average"] = load_average()
                    rows.append({"server": kind, **result})
                    print(
                        f"{kind:16s} C={concurrency:3d}  {result['output_tok_s']:8.1f} tok/s  "
                        f"TTFT p50 {fmt(result['ttft_p50_s'])} s  latency p50 "
                        f"{fmt(result['latency_p50_s'])} s p99 {fmt(result['latency_p99_s'])} s  "
                        f"tokens/answer {result['mean_tokens']:.1f}  errors {result['errors']}/"
                        f"{result['requests']}  load {result['load_average']}"
                        + (f" ({result['first_error']})" if result["errors"] else ""),
                        flush=True,
                    )
            finally:
                stop(process)
        print(markdown(rows))
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
