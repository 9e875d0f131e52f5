"""Rank 0's stable address, and the pod launcher that waits for it before torchrun starts.

A training pod of the run's JobSet has the hostname `<jobset>-node-0-<index>` (the JobSet's pod
naming: `<jobset>-<replicatedJob>-<jobIndex>-<podIndex>`; call `<jobset>-node-0` the host prefix),
and with `subdomain: <jobset>` on the headless Service the JobSet controller creates it gets the DNS
name `<prefix>-<index>.<jobset>.<namespace>.svc`. So every pod knows rank 0's address
before rank 0 exists (MASTER_ADDR), but the record appears only once pod 0 is created: a worker
whose node came up first must retry the lookup instead of failing its first connect.

The pod's command is `python -m include.training.rendezvous <torchrun arguments>`:
1. node 0 waits until MASTER_ADDR (its own name) resolves: it proves the Service exists; every
   other node waits until the store on node 0 accepts a connection (see Readiness below);
2. tell torchrun's c10d rendezvous which pod hosts its store (`is_host`, from the completion
   index) instead of letting torch guess it by comparing DNS answers with local addresses;
3. run torchrun in-process and exit with the failing worker's own exit code. torchrun itself
   always exits 1 when a worker fails, which would hide the entrypoint's "bad plan" code from the
   child Job's podFailurePolicy (that code fails the JobSet at once instead of restarting it).
Arguments are an argv list end to end: no shell ever sees the plan.

Readiness: a DNS answer is not a store. Pod 0's record appears as soon as it has an IP, often
before its image pull finishes, and a fresh p5 pulling the NeMo image beside warm workers keeps
its store down for many minutes. So every rank but node 0 waits until rank 0's store accepts a
TCP connection (`wait_for_store`), within `rendezvous_timeout_s` of the plan (passed as
LLMOPS_RDZV_WAIT_TIMEOUT_S: 30 min on eks, sized for a node launch plus the image pull; seconds
locally). A rank that gives up exits with PEER_LOST_EXIT_CODE, so the group restarts as a whole
(include/training/restarts.py).

Rank order. Node 0 (completion index 0) hosts the c10d store: `is_host` pins that. Global ranks
are torch's, not ours: the c10d rendezvous sorts the participating nodes by descriptor
(`<fqdn>_<pid>_<n>`, the pod's FQDN `<prefix>-<index>.<service>...`) and numbers them in that
order (`group_rank`), then RANK = group_rank x nproc_per_node + local_rank. The sort is by string,
so group rank equals the completion index only up to 10 nodes (`<prefix>-10` sorts before `<prefix>-2`);
`group_rank_order` states it and a test checks it against torch's own code. Nothing depends on
RANK 0 living on pod 0: RANK 0 writes checkpoints and results to shared storage from any node.
Locally, the launcher sets RANK = NODE_RANK = the process index, with the store in rank 0.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Sequence

# The exit codes are re-exported: the Job renderer imports them from here.
from include.training.restarts import PEER_LOST_EXIT_CODE, RESTART_DEFAULTS, USER_ERROR_EXIT_CODE  # noqa: F401

DEFAULT_WAIT_TIMEOUT_S = RESTART_DEFAULTS["nemo"]["rendezvous_timeout_s"]  # a fresh p5 and an image pull
WAIT_TIMEOUT_ENV = "LLMOPS_RDZV_WAIT_TIMEOUT_S"


class StoreUnavailable(TimeoutError):
    """Rank 0's store did not accept a connection in time: a lost peer, not this rank's fault."""


def master_address(host_prefix: str, service: str, namespace: str) -> str:
    """DNS name of pod 0 when pod i has the hostname `<host_prefix>-i` and `subdomain: <service>`
    (the JobSet's `<jobset>-node-0`, or a plain Indexed Job's own name)."""
    return f"{host_prefix}-0.{service}.{namespace}.svc"


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
                f"{host} did not resolve within {timeout_s:.0f}s: pod 0 of the JobSet is not running "
                "(still pending on capacity?) or the JobSet's headless Service is missing"
            )
        sleep(min(delay, max(timeout_s - waited, 0.0)))
        delay = min(delay * 2, max_interval_s)


def _connects(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_store(
    host: str,
    port: int,
    *,
    timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
    interval_s: float = 0.2,
    max_interval_s: float = 5.0,
    resolve: Callable[[str, int | None], list[str]] = _resolve,
    connects: Callable[[str, int, float], bool] = _connects,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Block until `host:port` resolves and accepts a TCP connection; StoreUnavailable after timeout_s.

    The probe connects and closes: the TCPStore counts a worker only once it speaks the store
    protocol, so the probe is invisible to it. One deadline covers the DNS wait and the connect.
    """
    start = clock()
    delay = interval_s
    stage = "did not resolve"
    while True:
        waited = clock() - start
        try:
            addresses = resolve(host, port)
        except (socket.gaierror, UnicodeError):
            addresses = []
        if addresses:
            stage = "resolved but accepted no connection"
            if any(connects(addr, port, min(2.0, max(timeout_s - waited, 0.1))) for addr in addresses):
                return
        waited = clock() - start
        if waited >= timeout_s:
            raise StoreUnavailable(
                f"rank 0's store {host}:{port} {stage} within {timeout_s:.0f}s "
                f"(rendezvous_timeout_s): rank 0 is not running, still pulling its image, or failed"
            )
        sleep(min(delay, max(timeout_s - waited, 0.0)))
        delay = min(delay * 2, max_interval_s)


def group_rank_order(host_prefix: str, service: str, namespace: str, nodes: int) -> list[int]:
    """Completion indexes in torch's group-rank order: element g is the index of group rank g.

    torch's c10d rendezvous numbers nodes in sorted order of their descriptors, whose first
    field is the FQDN; for one pod per node that is a plain string sort of the pod FQDNs.
    """
    fqdn = [f"{host_prefix}-{i}.{service}.{namespace}.svc.cluster.local" for i in range(nodes)]
    return sorted(range(nodes), key=lambda i: fqdn[i])


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
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(list(args)))
    except RendezvousError as exc:  # the store (on node 0) went away or never came: a lost peer
        print(f"llmops rendezvous: {type(exc).__name__}: {exc}", file=sys.stderr)
        return PEER_LOST_EXIT_CODE
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
    port = int(env.get("MASTER_PORT") or 0) or None
    is_host = node_rank(env) == 0
    try:
        if is_host or port is None:  # node 0 starts the store itself: its name must exist
            wait_for_master(master, port, timeout_s=timeout)
        else:
            wait_for_store(master, port, timeout_s=timeout)
    except TimeoutError as exc:
        print(f"llmops rendezvous: {exc}", file=sys.stderr)
        return PEER_LOST_EXIT_CODE
    return run_torchrun(with_host_flag(args, is_host))


if __name__ == "__main__":
    sys.exit(main())
