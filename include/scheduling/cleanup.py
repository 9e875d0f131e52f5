"""Cleanup actions with a dry run: every deletion is an Action that names its object and why.

Planning and doing are separate: the platform's capacity seam (include/platforms/<name>/capacity.py)
and the data cleanup here first list Actions, then `apply` runs them unless dry_run. The summary adds up what
was (or would be) freed: nodes, GPUs, $/h of capacity stopped, bytes.

Rollout leftovers (`rollout_leftovers`): model servers of versions that take no traffic (weight 0
in the model's HTTPRoute, or not in it) for longer than `rollout_leftover_hours`, which an aborted
or crashed rollout left running. Never the version serving traffic, nor the canary and stable of a
rollout in progress; the time at weight 0 counts from the route's last state change.

Data cleanup covers the shared checkpoint root and the data root (file:// or s3://, through
include/storage):
- staging leftovers: hidden temp dirs that an interrupted publish or checkpoint left behind
  (`.tmp-*`, `.<name>.<random>` from mkdtemp, `.trash-*`) and the staging dirs of dataset runs
  that never published (`<data root>/curated/_staging/<run>`), untouched for `staging_hours`.
  On S3 a "dir" is a key prefix: its age is its newest object's, its size the sum of its objects;
- checkpoints (`<checkpoint_root>/<run name>/`) untouched for `checkpoint_days` whose run made no
  registered model version. The champion's and challenger's runs, any registered version's run,
  and runs in progress are never touched, whatever their age.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STAGING_PREFIXES = (".tmp-", ".trash-", ".latest.tmp-")
STAGING_PARENT = "_staging"  # include/data/catalog.py: one dir per dataset run under curated/_staging/


@dataclass
class Action:
    kind: str  # NodePool, NodeClaim, Job, Service, Pod, Process, Directory
    name: str
    verb: str  # delete | patch | stop
    reason: str
    namespace: str = ""
    nodes: int = 0
    gpus: int = 0
    usd_per_hour: float = 0.0
    bytes: int = 0
    done: bool = False
    error: str = ""
    run: Callable[[], Any] | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.verb} {self.kind} {where}{self.name}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "run"}


def apply(actions: list[Action], dry_run: bool, log: Callable[[str], None] = print) -> list[Action]:
    """Run each action (unless dry_run), logging one line per object; a failure is recorded, not raised,
    so one stuck object does not leave the rest of the mess in place."""
    for a in actions:
        if dry_run:
            log(f"[dry run] would {a.describe()}")
            continue
        try:
            if a.run is not None:
                a.run()
            a.done = True
            log(a.describe())
        except Exception as exc:  # noqa: BLE001 - reported per object in the summary
            a.error = f"{type(exc).__name__}: {exc}"
            log(f"FAILED to {a.describe()}: {a.error}")
    return actions


def summary(actions: list[Action], dry_run: bool) -> dict[str, Any]:
    counted = actions if dry_run else [a for a in actions if a.done]
    freed = {"nodes": sum(a.nodes for a in counted), "gpus": sum(a.gpus for a in counted),
             "usd_per_hour": round(sum(a.usd_per_hour for a in counted), 2),
             "bytes": sum(a.bytes for a in counted)}
    line = (f"cleanup {'(dry run) would free' if dry_run else 'freed'}: {freed['nodes']} nodes, {freed['gpus']} GPUs, "
            f"${freed['usd_per_hour']:,.2f}/h, {freed['bytes'] / 2**20:,.1f} MiB in {len(counted)} actions"
            + (f"; {sum(1 for a in actions if a.error)} failed" if not dry_run else ""))
    return {"dry_run": dry_run, "freed": freed, "summary": line, "actions": [a.to_dict() for a in actions]}


def rollout_leftovers(deployed: Mapping[str, Mapping[str, Any]], weights: Mapping[str, int], protected: set[str],
                      weight0_since: float | None, *, now: float, ttl_hours: float, kind: str, namespace: str,
                      scale_down: Callable[[str], Any]) -> list[Action]:
    """Model servers (service -> {"since", "gpus"}) that take no traffic, past the TTL.

    `weights`: the route's service -> weight ({} without a route); `protected`: the services of a
    rollout in progress; `weight0_since`: the route's last state change (the earliest a weight
    could have gone to 0), or None.
    """
    actions = []
    for service, info in sorted(deployed.items()):
        if service in protected or weights.get(service, 0) > 0 or info.get("since") is None:
            continue
        in_route = service in weights
        since = max(float(info["since"]), weight0_since) if in_route and weight0_since else float(info["since"])
        age_h = (now - since) / 3600
        if age_h <= ttl_hours:
            continue
        where = "at weight 0 in the route" if in_route else "not in the route"
        how = "stop the process" if kind == "Process" else "scale to 0 replicas"
        actions.append(Action(kind, service, "stop" if kind == "Process" else "patch",
                              f"model server {where} for {age_h:.1f} h (> {ttl_hours:g} h), left by an aborted or "
                              f"crashed rollout: {how}", namespace=namespace, gpus=int(info.get("gpus") or 0),
                              run=lambda s=service: scale_down(s)))
    return actions


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def tree_mtime(path: Path) -> float:
    """Newest modification time in the tree: a checkpoint dir is as old as its last write."""
    times = [p.stat().st_mtime for p in path.rglob("*")] + [path.stat().st_mtime]
    return max(times)


def _remove(path: Path) -> Callable[[], None]:
    return lambda: shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _is_staging(name: str) -> bool:
    if name.startswith(STAGING_PREFIXES):
        return True
    # tempfile.mkdtemp(prefix=".<name>.") in the trainer's publish: ".<name>.<8 random chars>"
    parts = name.split(".")
    return len(parts) >= 3 and parts[0] == "" and len(parts[-1]) == 8 and parts[-1].isalnum()


def staging_unit(parts: tuple[str, ...] | list[str]) -> int | None:
    """Index of the first path component that is a staging leftover (a hidden temp name, or a run's
    dir under `_staging`), or None: everything below it belongs to it."""
    for i, name in enumerate(parts):
        if _is_staging(name) or (i > 0 and parts[i - 1] == STAGING_PARENT):
            return i
    return None


def _staging_action(where: str, age_h: float, staging_hours: float, size: int, run: Callable[[], Any]) -> Action:
    return Action("Directory", where, "delete", f"staging left by an interrupted write or a failed run, "
                  f"untouched for {age_h:.1f} h (> {staging_hours:g} h)", bytes=size, run=run)


def stale_staging(roots: Iterable[Path], *, now: float, staging_hours: float, running: set[str]) -> list[Action]:
    """Staging dirs older than staging_hours anywhere under the (local) roots, outside running runs."""
    actions = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            parts = path.relative_to(root).parts
            if staging_unit(parts) != len(parts) - 1 or any(part in running for part in parts):
                continue  # not staging, inside a staging dir already listed, or a running run's
            age_h = (now - tree_mtime(path)) / 3600
            if age_h > staging_hours:
                size = tree_bytes(path) if path.is_dir() else path.stat().st_size
                actions.append(_staging_action(str(path), age_h, staging_hours, size, _remove(path)))
    return actions


def stale_staging_objects(root_uri: str, *, now: float, staging_hours: float, running: set[str]) -> list[Action]:
    """The same rule over an object store (s3://): staging prefixes whose newest object is older than
    staging_hours. A prefix with an object of unknown age is kept."""
    from include.storage import files

    units: dict[str, list[float | int | None]] = {}  # prefix -> [bytes, newest mtime]
    for rel, size, mtime in files.walk(root_uri):
        parts = rel.split("/")
        i = staging_unit(parts)
        if i is None or any(part in running for part in parts[:i + 1]):
            continue
        unit = units.setdefault("/".join(parts[:i + 1]), [0, 0.0])
        unit[0] += size
        unit[1] = None if mtime is None or unit[1] is None else max(unit[1], mtime)
    actions = []
    for prefix, (size, newest) in sorted(units.items()):
        if newest is None:
            continue
        age_h = (now - newest) / 3600
        if age_h > staging_hours:
            uri = files.join(root_uri, prefix)
            actions.append(_staging_action(uri, age_h, staging_hours, int(size),
                                           lambda u=uri: files.remove_tree(u)))
    return actions


def stale_checkpoints(checkpoint_root: Path, *, now: float, days: float, registered: dict[str, str],
                      running: set[str]) -> list[Action]:
    """Run checkpoint dirs older than `days` that no registered version and no running run owns.

    `registered`: run name -> why it is kept (e.g. "champion v3"); `running`: run names in progress.
    """
    actions = []
    if not checkpoint_root.is_dir():
        return actions
    for run_dir in sorted(p for p in checkpoint_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = run_dir.name
        if name in registered or name in running:
            continue
        age_d = (now - tree_mtime(run_dir)) / 86400
        if age_d > days:
            actions.append(Action("Directory", str(run_dir), "delete",
                                  f"checkpoints of run {name}, untouched for {age_d:.1f} days (> {days:g}), "
                                  "no registered model version", bytes=tree_bytes(run_dir), run=_remove(run_dir)))
    return actions


def data_actions(settings, *, registered: dict[str, str], running: set[str], days: float, staging_hours: float,
                 now: float | None = None) -> list[Action]:
    """Stale checkpoints and staging dirs of this deployment (checkpoint root path; file:// or s3:// data root).

    `registered`: run name -> why its checkpoints are kept (include/lifecycle/offhours.py reads it
    from the registry).
    """
    now = time.time() if now is None else now
    ckpt = Path(settings.checkpoint_root)
    roots = [ckpt]
    objects: list[Action] = []
    if settings.data_root.startswith("file://"):
        roots.append(Path(settings.data_root.removeprefix("file://")))
    else:
        objects = stale_staging_objects(settings.data_root, now=now, staging_hours=staging_hours, running=running)
    return (stale_checkpoints(ckpt, now=now, days=days, registered=registered, running=running)
            + stale_staging(roots, now=now, staging_hours=staging_hours, running=running) + objects)
