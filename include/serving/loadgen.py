"""Traffic for the analysis: replays eval questions through the gateway at a set rate.

`burst` sends a fixed number of requests (tests, benchmarks); the module run as a process sends
`--rate` requests per second until stopped (the rollout starts it for the analysis and stops it
after). Keep-alive connections, a small thread pool; a failed request is counted, never retried.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from include.validation import Rule

DEFAULT_PROMPTS = ("What does the scheduler do?", "How is a model promoted?", "Explain a canary rollout.")


class Client:
    """One keep-alive HTTP connection; reconnects after an error."""

    def __init__(self, base_url: str, timeout: float = 30.0):
        parts = urlsplit(base_url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        data = json.dumps(body).encode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", path, data, {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                raw = resp.read()
                try:
                    return resp.status, json.loads(raw) if raw else {}
                except ValueError:
                    return resp.status, {}
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    return 599, {}
        return 599, {}


def completion(client: Client, prompt: str, max_tokens: int) -> tuple[int, str]:
    status, body = client.post("/v1/completions", {"prompt": prompt, "max_tokens": max_tokens})
    return status, str(body.get("model", ""))


def burst(base_url: str, n: int, *, prompts: Sequence[str] = DEFAULT_PROMPTS, max_tokens: int = 1,
          concurrency: int = 4) -> Counter:
    """Send `n` completions; return Counter of (status, served model)."""
    counts: Counter = Counter()
    lock = threading.Lock()
    todo = iter(range(n))
    cycle = itertools.cycle(prompts)

    def worker() -> None:
        client = Client(base_url)
        while True:
            with lock:
                i = next(todo, None)
                prompt = next(cycle)
            if i is None:
                return
            result = completion(client, prompt, max_tokens)
            with lock:
                counts[result] += 1

    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    return counts


def run(base_url: str, rate: float, prompts: Sequence[str], max_tokens: int, stop: threading.Event,
        concurrency: int = 8) -> Counter:
    """Open-loop at `rate` per second (requests are started on a clock, not after the previous one)."""
    counts: Counter = Counter()
    lock = threading.Lock()
    local = threading.local()
    cycle = itertools.cycle(prompts)

    def one(prompt: str) -> None:
        if not hasattr(local, "client"):
            local.client = Client(base_url)
        status, _ = completion(local.client, prompt, max_tokens)
        with lock:
            counts[status] += 1

    start = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for k in itertools.count():
            due = start + k / rate
            delay = due - time.monotonic()
            if stop.wait(max(delay, 0)):
                break
            pool.submit(one, next(cycle))
    return counts


def main(argv: list[str] | None = None) -> int:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--prompts-file", help="JSON list of prompts (eval questions)")
    args = parser.parse_args(argv)
    try:
        Rule("--rate", "number", 0, 1000, open_low=True, error=ValueError).check(args.rate)
    except ValueError as exc:
        parser.error(str(exc))
    prompts: Sequence[str] = DEFAULT_PROMPTS
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as fh:
            prompts = [p for p in json.load(fh) if isinstance(p, str) and p] or DEFAULT_PROMPTS
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    counts = run(args.url, args.rate, prompts, args.max_tokens, stop)
    print(json.dumps({"sent": dict(counts)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------- as a managed local process

NAME = "loadgen"


def start(url: str, rate: float, prompts: Sequence[str], *, max_tokens: int = 4, root=None):
    """Start the load generator process against `url` (idempotent); returns its ProcessInfo."""
    from include.serving import processes

    root = root or processes.run_dir()
    prompts_file = root / "loadgen-prompts.json"
    prompts_file.write_text(json.dumps(list(prompts) or list(DEFAULT_PROMPTS)))
    return processes.ensure_running(
        NAME, lambda _port: processes.python_argv("include.serving.loadgen", f"--name={NAME}", "--url", url,
                                                  "--rate", str(rate), "--max-tokens", str(max_tokens),
                                                  "--prompts-file", str(prompts_file)),
        ready_path=None, root=root)


def stop_process(root=None) -> bool:
    from include.serving import processes

    return processes.stop(NAME, root)
