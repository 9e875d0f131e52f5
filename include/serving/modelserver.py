"""A local model server: one process per model version, an OpenAI-style API and vLLM's metrics.

Serves the tiny model from its registered weights (`include.tinylm.load_model`, greedy
decoding as the evaluator does) through `/v1/completions`, `/v1/chat/completions`, `/v1/models`
and `/health`, and exports on `/metrics` the names and labels vLLM exports, so the analysis runs
the same PromQL here and on eks:
- `vllm:e2e_request_latency_seconds`, `vllm:time_to_first_token_seconds` (histograms),
- `vllm:num_requests_waiting`, `vllm:num_requests_running` (gauges),
- `vllm:request_success_total{finished_reason}` (counts finish reasons, not HTTP success),
each with `model_name` = the served model name (it carries the version), and
`http_requests_total{handler,method,status}` with status grouped as `2xx`/`4xx`/`5xx`, as vLLM's
instrumentator does. The histogram buckets are finer than vLLM's (a tiny CPU model answers in
milliseconds, vLLM's first bucket is 1 ms / 300 ms); names and labels are what matter to the queries.

One engine lock: requests queue on it like vLLM's scheduler queue (`num_requests_waiting`).
Fault injection for tests: `POST /admin/faults {"error_rate": 0.1, "delay_s": 0.05}` returns 500
on that share of generation requests and slows the rest by that many seconds;
`GET /admin/faults` reads it back. Binds 127.0.0.1 only.

Run: python -m include.serving.modelserver --name=<process name> --model-dir DIR
     --served-model-name NAME --port N
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from include.validation import Rule

LATENCY_BUCKETS = tuple(round(0.001 * 1.25 ** k, 6) for k in range(45))  # 1 ms .. ~23 s, 25 % apart
MAX_TOKENS_LIMIT = 256
MAX_TOKENS = Rule("max_tokens", "integer", 1, MAX_TOKENS_LIMIT, error=ValueError)


class Engine:
    """The model plus its metrics and fault knobs; thread-safe."""

    def __init__(self, model_dir: str, served_name: str, *, seed: int = 0):
        from include.tinylm import load_model

        self.model = load_model(model_dir)
        self.served_name = served_name
        self.created = int(time.time())
        self.lock = threading.Lock()
        self.faults: dict[str, float] = {"error_rate": 0.0, "delay_s": 0.0}
        self.rng = random.Random(seed)
        reg = self.registry = CollectorRegistry()
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency",
                             ["model_name"], buckets=LATENCY_BUCKETS, registry=reg)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token",
                              ["model_name"], buckets=LATENCY_BUCKETS, registry=reg)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting", ["model_name"], registry=reg)
        self.running = Gauge("vllm:num_requests_running", "Requests running", ["model_name"], registry=reg)
        self.success = Counter("vllm:request_success", "Finished requests by finish reason",
                               ["model_name", "finished_reason"], registry=reg)
        self.http = Counter("http_requests", "HTTP requests", ["handler", "method", "status"], registry=reg)
        for m in (self.e2e, self.ttft, self.waiting, self.running):
            m.labels(served_name)
        self._warm_up()

    def _warm_up(self) -> None:
        """Run a few generations before the server reports ready, as vLLM profiles and captures its graphs
        first: a cold first forward pass is several times slower and would land in the canary's p95."""
        from include.tinylm import greedy_batch

        for _ in range(3):
            greedy_batch(self.model, ["warm-up"], 16, 1)

    def set_faults(self, raw: dict[str, Any]) -> dict[str, float]:
        out = dict(self.faults)
        for key, low, high in (("error_rate", 0.0, 1.0), ("delay_s", 0.0, 60.0)):
            if key in raw:
                out[key] = Rule(key, "number", low, high, error=ValueError).check(float(raw[key]))
        unknown = set(raw) - set(out)
        if unknown:
            raise ValueError(f"unknown fault keys {sorted(unknown)}; expected error_rate, delay_s")
        self.faults = out
        return out

    def complete(self, prompt: str, max_tokens: int) -> tuple[str, str]:
        """(text, finish_reason); raises InjectedError on an injected fault."""
        from include.tinylm import greedy_batch

        started = time.monotonic()
        name = self.served_name
        faults = self.faults
        if faults["error_rate"] and self.rng.random() < faults["error_rate"]:
            raise InjectedError("injected fault")
        self.waiting.labels(name).inc()
        with self.lock:
            self.waiting.labels(name).dec()
            self.running.labels(name).inc()
            try:
                gen_start = time.monotonic()
                text = greedy_batch(self.model, [prompt], max_tokens, 1)[0]
                gen = time.monotonic() - gen_start
            finally:
                self.running.labels(name).dec()
        delay = faults["delay_s"]
        if delay:
            time.sleep(delay)
        done = time.monotonic()
        n_out = len(text.encode())
        first = gen / max(n_out, 1) + delay  # the first token's share of the decode, plus the injected delay
        self.ttft.labels(name).observe(gen_start - started + first)
        self.e2e.labels(name).observe(done - started)
        reason = "length" if n_out >= max_tokens else "stop"
        self.success.labels(name, reason).inc()
        return text.strip(), reason


class InjectedError(RuntimeError):
    pass


def _make_handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet: metrics say it all
            pass

        def setup(self) -> None:
            # Headers and body leave in two writes: without TCP_NODELAY, Nagle waits for a delayed ACK
            # (~40 ms) on every keep-alive response.
            super().setup()
            import socket

            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if self.path.startswith("/v1/"):
                engine.http.labels(self.path.split("?")[0], self.command, f"{code // 100}xx").inc()

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            return body

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?")[0]
            if path == "/health":
                self._send(200, b"", "text/plain")
            elif path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": engine.served_name, "object": "model",
                                                              "created": engine.created, "owned_by": "llmops"}]})
            elif path == "/metrics":
                self._send(200, generate_latest(engine.registry), CONTENT_TYPE_LATEST)
            elif path == "/admin/faults":
                self._send(200, engine.faults)
            else:
                self._send(404, {"error": {"message": f"no route {path}"}})

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            try:
                body = self._body()
                if path == "/admin/faults":
                    self._send(200, engine.set_faults(body))
                    return
                if path not in ("/v1/completions", "/v1/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {path}"}})
                    return
                model = body.get("model", engine.served_name)
                if model != engine.served_name:
                    self._send(404, {"error": {"message": f"model {model!r} not served here"}})
                    return
                max_tokens = MAX_TOKENS.check(int(body.get("max_tokens", 16)))
                if path == "/v1/completions":
                    prompt = body.get("prompt")
                    if isinstance(prompt, list) and len(prompt) == 1:
                        prompt = prompt[0]
                else:
                    users = [m.get("content") for m in body.get("messages") or [] if m.get("role") == "user"]
                    prompt = users[-1] if users else None
                if not isinstance(prompt, str):
                    raise ValueError("a prompt (or a user message) must be one string")
            except (ValueError, TypeError) as exc:
                self._send(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
                return
            try:
                text, reason = engine.complete(prompt, max_tokens)
            except InjectedError as exc:
                self._send(500, {"error": {"message": str(exc), "type": "server_error"}})
                return
            rid = f"cmpl-{time.time_ns():x}"
            if path == "/v1/completions":
                choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
                obj = "text_completion"
            else:
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                obj = "chat.completion"
            self._send(200, {"id": rid, "object": obj, "created": int(time.time()), "model": engine.served_name,
                             "choices": [choice]})

    return Handler


def serve(model_dir: str, served_name: str, port: int) -> None:
    import torch

    torch.set_num_threads(1)
    engine = Engine(model_dir, served_name)
    server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(engine))
    server.daemon_threads = True
    import signal

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    server.serve_forever(poll_interval=0.2)
    server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="process name, for the pid file's liveness check")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.model_dir, args.served_model_name, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
