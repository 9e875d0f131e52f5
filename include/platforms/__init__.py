"""The platform the lifecycle runs on: one bundle per backend, chosen once from the settings.

Each bundle (`include/platforms/<name>/`) implements every seam the lifecycle needs and holds its
own defaults (`platform.yaml`: settings defaults, its sections of the gate and analysis policies):

| seam          | what it does                                              | interface               |
|---------------|-----------------------------------------------------------|-------------------------|
| `jobs()`      | run a trainer or an evaluator: place, preflight, rendezvous | `seams.ContainerJobs` |
| `capacity()`  | GPU budget, scale to zero, leftovers, stop a run (off-hours) | `seams.Capacity`      |
| `servers()`   | a model server per version: deploy, address, scale down  | `serving.servers.Servers` |
| `router()`    | read and write the model's HTTPRoute                      | `serving.router.Router` |
| `metrics()`   | a Prometheus HTTP API client                              | `serving.metrics.PrometheusClient` |

`get_platform()` is the one place that turns `settings.profile` into a bundle; the settings refuse
a name with no bundle, so there is no fallback. A second backend is one more folder: here, or in
a folder on LLMOPS_PLATFORM_PATH (kept outside this repository; the tests' in-memory platform).
Constructing a platform does no I/O (the DAG files call it at parse time); each seam is built on
first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from include.settings import Settings, get_settings, platform_dir

if TYPE_CHECKING:
    from include.platforms.seams import Capacity, ContainerJobs
    from include.serving.metrics import PrometheusClient
    from include.serving.router import Router
    from include.serving.servers import Servers


class Platform:
    """A backend: its name, its seams and the defaults that go with them."""

    name: ClassVar[str]
    # The rollout form's defaults (dags/rollout_model.py): how long a model takes to load, how long
    # the loser keeps serving, whether to generate load, how long a failed rollout task waits.
    rollout_defaults: ClassVar[dict[str, float | int]]

    def __init__(self, settings: Settings):
        self.settings = settings

    def jobs(self) -> ContainerJobs:
        raise NotImplementedError

    def capacity(self, schedule: Any = None) -> Capacity:
        raise NotImplementedError

    def servers(self) -> Servers:
        raise NotImplementedError

    def router(self) -> Router:
        raise NotImplementedError

    def metrics(self) -> PrometheusClient:
        raise NotImplementedError


def get_platform(settings: Settings | None = None) -> Platform:
    """The bundle `settings.profile` names (default: the environment's settings)."""
    settings = settings or get_settings()
    folder = platform_dir(settings.profile)
    if folder.parent == Path(__file__).parent:
        module = importlib.import_module(f"{__name__}.{settings.profile}")
    else:  # a bundle on LLMOPS_PLATFORM_PATH: loaded from its folder under its own module name
        module = _load(f"llmops_platform_{settings.profile}", folder)
    return module.PLATFORM(settings)


def _load(name: str, folder: Path) -> Any:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]
