"""Rank 0's stable address, and the pod launcher that waits for it before torchrun starts.

An Indexed Job pod is named `<job>-<index>`, and with `subdomain: <service>` on a headless Service
it gets the DNS name `<job>-<index>.<service>.<namespace>.svc`. So every pod knows rank 0's address
before rank 0 exists (MASTER_ADDR), but the record appears only once pod 0 is created: a worker
whose node came up first must retry the lookup instead of failing its first connect.

The pod's command is `python -m include.training.rendezvous <torchrun arguments>`:
1. wait until MASTER_ADDR resolves (every rank, rank 0 included: it proves the Service exists);
2. tell torchrun's c10d rendezvous which pod hosts its store (`is_host`, from the completion
   index) instead of letting torch guess it by comparing DNS answers with local addresses;
3. run torchrun in-process and exit with the failing worker's own exit code. torchrun itself
   always exits 1 when a worker fails, which would hide the entrypoint's "bad plan" code from the
   Job's podFailurePolicy (that code fails the Job at once instead of retrying the index).
Arguments are an argv list end to end: no shell ever sees the plan.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Sequence

from include.container import USER_ERROR_EXIT_CODE  # noqa: F401 - what the entrypoints exit with on bad input

DEFAULT_WAIT_TIMEOUT_S = 1800.0  # pod 0 may wait for a fresh p5 node and a large image pull
WAIT_TIMEOUT_ENV = "LLMOPS_RDZV_WAIT_TIMEOUT_S"


def master_address(job: str, service: str, namespace: str) -> str:
    """DNS name of pod 0 of an Indexed Job whose pods set `subdomain: <service>`."""
    return f"{job}-0.{service}.{namespace}.svc"


def node_rank(environ: dict[str, str] | None = None) -> int:
    """This pod's node rank: NODE_RANK, else the Job's completion index, else 0."""
    env = os.environ if environ is None else environ
    return int(env.get("NODE_RANK") or env.get("JOB_COMPLETION_INDEX") or 0)


def _resolve(host: str, port: int | None) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})


def wait_for_master(
    host: str,
    port: int | None = None,
    *,
    timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
    interval_s: float = 1.0,
    max_interval_s: float = 15.0,
    resolve: Callable[[str, int | None], list[str]] = _resolve,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Block until `host` resolves; return its addresses. Raise TimeoutError after timeout_s.

    Only DNS is awaited (port is passed to the lookup, nothing connects): torchrun's rendezvous
    has its own join timeout once the name is known. Retries back off up to max_interval_s.
    """
    start = clock()
    delay = interval_s
    while True:
        try:
            addresses = resolve(host, port)
            if addresses:
                return addresses
        except (socket.gaierror, UnicodeError):
            pass
        waited = clock() - start
        if waited >= timeout_s:
            raise TimeoutError(
                f"{host} did not resolve within {timeout_s:.0f}s: pod 0 of the Job is not running "
                "(still pending on capacity?) or its headless Service is missing"
            )
        sleep(min(delay, max(timeout_s - waited, 0.0)))
        delay = min(delay * 2, max_interval_s)


def with_host_flag(args: Sequence[str], is_host: bool) -> list[str]:
    """torchrun args with `is_host=<bool>` added to --rdzv-conf (or a new --rdzv-conf).

    Options are expected in `--name=value` form; scanning stops at the first positional argument
    (the training module), so nothing in the plan JSON after it is ever touched.
    """
    flag = f"is_host={'true' if is_host else 'false'}"
    out, done = [], False
    for i, arg in enumerate(args):
        if not arg.startswith("-") or arg == "--":  # the script and its own arguments
            out.extend(args[i:])
            break
        for prefix in ("--rdzv-conf=", "--rdzv_conf="):
            if not done and arg.startswith(prefix):
                value = arg[len(prefix) :]
                arg = f"{prefix}{value},{flag}" if value else f"{prefix}{flag}"
                done = True
        out.append(arg)
    if not done:
        out.insert(0, f"--rdzv-conf={flag}")
    return out


def run_torchrun(args: Sequence[str]) -> int:
    """torchrun in this process; the first failed worker's exit code, not torchrun's blanket 1."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(list(args)))
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        if failure.exitcode > 0:
            return failure.exitcode
        return 128 - failure.exitcode if failure.exitcode < 0 else 1  # < 0: killed by that signal
    return 0


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    args = list(sys.argv[1:] if argv is None else argv)
    master = env.get("MASTER_ADDR")
    if not master:
        print("llmops rendezvous: MASTER_ADDR is not set (the Job template sets it)", file=sys.stderr)
        return 1
    timeout = float(env.get(WAIT_TIMEOUT_ENV) or DEFAULT_WAIT_TIMEOUT_S)
    try:
        wait_for_master(master, int(env.get("MASTER_PORT") or 0) or None, timeout_s=timeout)
    except TimeoutError as exc:
        print(f"llmops rendezvous: {exc}", file=sys.stderr)
        return 1
    return run_torchrun(with_host_flag(args, node_rank(env) == 0))


if __name__ == "__main__":
    sys.exit(main())
