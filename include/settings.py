"""One typed settings object, read from the environment.

Both profiles build the same DAGs; only these values differ. Everything is read once per
process (`get_settings()`), validated eagerly, and a bad value fails with the variable's name
and what it accepts, before any task does work.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLATFORMS_DIR = Path(__file__).resolve().parent / "platforms"
_CRON = re.compile(r"[0-9*/,-]+(\s+[0-9A-Za-z*/,-]+){4}")


class SettingsError(ValueError):
    """A setting in the environment has a value the project cannot use."""


def _uri(name: str, value: str, schemes: tuple[str, ...]) -> str:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in schemes or not rest.strip("/"):
        raise SettingsError(f"{name}={value!r}: expected a URI with scheme {' or '.join(schemes)}://")
    return value.rstrip("/")


def _int(name: str, value: str) -> int:
    from include.errors import InputError
    from include.validation import Rule

    try:
        return Rule(name, "integer", 1).check(int(value) if value.lstrip("-").isdigit() else value)
    except InputError as exc:
        raise SettingsError(str(exc)) from None


def _k8s_name(name: str, value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
        raise SettingsError(f"{name}={value!r}: not a valid Kubernetes name (RFC 1123 label)")
    return value


def platform_dirs() -> list[Path]:
    """Where platform bundles are found: include/platforms/, then LLMOPS_PLATFORM_PATH's folders (a
    backend kept outside this repository, or the tests' in-memory one)."""
    extra = os.environ.get("LLMOPS_PLATFORM_PATH", "")
    return [PLATFORMS_DIR, *(Path(p) for p in extra.split(os.pathsep) if p)]


def platforms() -> tuple[str, ...]:
    """The platform bundles there are: every folder with a platform.yaml (a second backend is one
    more folder)."""
    return tuple(sorted({p.parent.name for d in platform_dirs() for p in d.glob("*/platform.yaml")}))


def platform_dir(name: str) -> Path:
    """The bundle `name`; an unknown name is an error, never a fallback."""
    for root in platform_dirs():
        if re.fullmatch(r"[a-z][a-z0-9_]*", name) and (root / name / "platform.yaml").is_file():
            return root / name
    raise SettingsError(f"LLMOPS_PROFILE={name!r}: no such platform; expected one of {', '.join(platforms())}")


def platform_file(name: str) -> dict:
    """A bundle's platform.yaml: its settings defaults and its sections of the stages' policies."""
    import yaml

    return yaml.safe_load((platform_dir(name) / "platform.yaml").read_text()) or {}


@dataclass(frozen=True)
class Settings:
    profile: str = "local"  # the platform bundle: include/platforms/<profile>/
    data_root: str = f"file://{PROJECT_ROOT / '.data'}"
    aws_conn_id: str = "aws_default"
    mlflow_tracking_uri: str = f"sqlite:///{PROJECT_ROOT / '.mlflow' / 'mlflow.db'}"
    mlflow_experiment: str = "llm-finetune"
    registered_model_name: str = "llmops-assistant"
    kubernetes_conn_id: str = "kubernetes_default"
    training_namespace: str = "llm-training"
    serving_namespace: str = "llm-serving"
    training_pool: str = "gpu-training-pool"
    experiment_pool: str = "gpu-experiment-pool"
    inference_pool: str = "gpu-inference-pool"
    checkpoint_root: str = ""  # a shared filesystem; default: <repo>/.data/checkpoints or /checkpoints (FSx)
    trainer_image: str = "ghcr.io/llmops-finetune/nemo-trainer:0.1.0"
    evaluator_image: str = "ghcr.io/llmops-finetune/evaluator:0.1.0"
    serving_image: str = "ghcr.io/llmops-finetune/vllm:0.1.0"  # images/vllm: upstream vLLM as a non-root user
    aws_cli_image: str = "public.ecr.aws/aws-cli/aws-cli:2.31.0"  # fetches a LoRA adapter before vLLM starts
    windows_file: str = ""  # off-hours windows and admission budgets; default include/scheduling/windows.yaml
    # How often the offhours DAG admits and stops runs (UTC cron): every 5 minutes on both profiles, the
    # margin it stops an experiment run before a window closes (include/lifecycle/offhours.py CLOSE_MARGIN).
    # Tests that open a window a minute ahead set "* * * * *".
    offhours_cron: str = "*/5 * * * *"
    # SQS queue URL receiving the data bucket's ObjectCreated notifications; empty: no event-driven curation.
    raw_events_queue: str = ""
    raw_events_poll_seconds: int = 30
    # Where the task's extra links point (include/links.py): the MLflow UI (empty: the connection
    # `mlflow_default`, an http(s) tracking URI, or local `mlflow ui`), the S3 console ({bucket}, {key})
    # and the cluster console ({resource}, {namespace}, {name}, {selector}; empty: no cluster links).
    mlflow_ui_url: str = ""
    s3_console_url: str = "https://console.aws.amazon.com/s3/object/{bucket}?prefix={key}"
    k8s_console_url: str = ""
    # How long a nightly prepare_dataset run waits (deferred) for its day's raw partition.
    partition_wait_seconds: int = 6 * 3600
    # How often that wait checks for the partition (in the triggerer).
    partition_poke_seconds: int = 60
    # How long an inconclusive canary waits for a person's promote/abort before it aborts;
    # default: 2 minutes locally, an hour on eks.
    approval_timeout_seconds: int = 0

    def __post_init__(self) -> None:
        defaults = platform_file(self.profile).get("settings") or {}  # an unknown platform fails here
        object.__setattr__(self, "data_root", _uri("LLMOPS_DATA_ROOT", self.data_root,
                                                   tuple(defaults["data_root_schemes"])))
        if not self.checkpoint_root:
            default = defaults["checkpoint_root"].replace("{project}", str(PROJECT_ROOT))
            object.__setattr__(self, "checkpoint_root", default)
        if not self.approval_timeout_seconds:
            object.__setattr__(self, "approval_timeout_seconds", int(defaults["approval_timeout_seconds"]))
        if self.approval_timeout_seconds < 10:
            raise SettingsError(f"LLMOPS_APPROVAL_TIMEOUT_SECONDS={self.approval_timeout_seconds}: expected at "
                                "least 10 seconds")
        if not _CRON.fullmatch(self.offhours_cron.strip()):
            raise SettingsError(f"LLMOPS_OFFHOURS_CRON={self.offhours_cron!r}: expected five cron fields "
                                "(minute hour day month weekday), e.g. '*/5 * * * *'")
        if not self.checkpoint_root.startswith("/"):
            raise SettingsError(f"LLMOPS_CHECKPOINT_ROOT={self.checkpoint_root!r}: expected an absolute path")
        if self.mlflow_ui_url:
            _uri("LLMOPS_MLFLOW_UI_URL", self.mlflow_ui_url, ("https", "http"))
        for name in ("s3_console_url", "k8s_console_url"):
            url = getattr(self, name)
            if url and not url.startswith(("https://", "http://")):
                raise SettingsError(f"LLMOPS_{name.upper()}={url!r}: expected an http(s):// URL template")
        if self.raw_events_queue:
            _uri("LLMOPS_RAW_EVENTS_QUEUE", self.raw_events_queue, ("https", "http"))
        for f in ("training_namespace", "serving_namespace", "training_pool", "experiment_pool",
                  "inference_pool"):
            _k8s_name(f"LLMOPS_{f.upper()}", getattr(self, f))
        from include.images import check_reference

        # name@sha256:<digest> (deploy this) or name:tag
        for f in ("trainer_image", "evaluator_image", "serving_image", "aws_cli_image"):
            try:
                check_reference(f"LLMOPS_{f.upper()}", getattr(self, f))
            except ValueError as exc:
                raise SettingsError(str(exc)) from None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read `LLMOPS_<FIELD>` for every field; unset or empty keeps the default."""
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = env.get(f"LLMOPS_{f.name.upper()}", "").strip()
            if raw:
                values[f.name] = _int(f"LLMOPS_{f.name.upper()}", raw) if f.type in (int, "int") else raw
        return cls(**values)

    def storage_conn_id(self) -> str | None:
        """Connection for ObjectStoragePath: S3 needs the AWS connection, file:// needs none."""
        return self.aws_conn_id if self.data_root.startswith("s3://") else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
