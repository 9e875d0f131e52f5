"""The evaluation job: one JSON object that says what to evaluate, where, and how.

The same spec drives both profiles. Locally the task builds it and runs it in-process (`run.run_job`); on
EKS it is the single argv item of the evaluator pod (`--job '<json>'`), so nothing in it is ever
parsed by a shell. It is validated on both sides: when the DAG builds it (a bad spec fails before a
GPU node is provisioned) and again in the pod (the image may be newer than Airflow).

Secrets never travel in the job: the judge's API key comes from the pod's environment (a Kubernetes
Secret) or, in-process, from the Airflow connection. A job that carries one is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from include.errors import InputError
from include.validation import CONTROL_RE, Rule, uri_problem

GENERATORS = ("tiny", "vllm")
METRICS_PROFILES = ("local", "eks")
JUDGE_PROVIDERS = ("openai", "bedrock")
DEFAULT_MAX_NEW_TOKENS = {"tiny": 64, "vllm": 256}  # tiny: its exported generation_config's max_new_tokens
DEFAULT_MAX_MODEL_LEN = 4096
MAX_NEW_TOKENS_LIMIT = 4096

KEYS = ("model_uri", "eval_uri", "output_uri", "generator", "metrics_profile", "limit", "max_new_tokens",
        "vllm", "judge")
REQUIRED = ("model_uri", "eval_uri", "output_uri", "generator", "metrics_profile")
VLLM_KEYS = ("max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "dtype", "seed")
JUDGE_KEYS = ("provider", "model", "base_url", "region_name", "aws_conn_id", "max_workers", "timeout_s",
              "max_tokens")
SECRET_KEYS = ("api_key", "password", "secret", "token", "aws_secret_access_key", "aws_session_token")

_DTYPES = ("auto", "bfloat16", "float16", "float32")


class JobError(InputError):
    """The evaluation job has a missing, unknown or invalid key; the message names it."""


def _bad(key: str, problem: str, value: Any) -> JobError:
    return JobError(f"job key {key!r}: {problem} (got {value!r})")


def check_uri(key: str, value: Any) -> str:
    problem = uri_problem(value)
    if problem:
        raise _bad(key, problem, value)
    return value.rstrip("/")


def _int(field: str, low: int, high: int) -> Rule:
    return Rule(field, "integer", low, high, error=JobError)


# Each numeric key's range; a refusal names the key as "job key '<key>'".
RULES: dict[str, Rule] = {
    "limit": _int("limit", 1, 10_000_000),
    "max_new_tokens": _int("max_new_tokens", 1, MAX_NEW_TOKENS_LIMIT),
    "vllm.max_model_len": _int("vllm.max_model_len", 256, 1_048_576),
    "vllm.gpu_memory_utilization": Rule("vllm.gpu_memory_utilization", "number", 0.1, 0.98, error=JobError),
    "vllm.tensor_parallel_size": _int("vllm.tensor_parallel_size", 1, 8),
    "vllm.seed": _int("vllm.seed", 0, 2**31 - 1),
    "judge.max_workers": _int("judge.max_workers", 1, 512),
    "judge.timeout_s": _int("judge.timeout_s", 1, 3600),
    "judge.max_tokens": _int("judge.max_tokens", 16, 32768),
}


def _checked(key: str, value: Any) -> Any:
    return RULES[key].check(value, label=f"job key {key!r}")


def _text(key: str, value: Any, *, max_len: int = 512) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_len or CONTROL_RE.search(value):
        raise _bad(key, f"expected a non-empty single-line string of at most {max_len} characters", value)
    return value


def _section(key: str, raw: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise _bad(key, "expected an object", raw)
    for k in raw:
        if str(k).lower() in SECRET_KEYS:
            raise JobError(f"job key {key}.{k}: secrets never travel in the job; the evaluator reads the "
                           "API key from its environment (LLMOPS_JUDGE_API_KEY) or the Airflow connection")
        if k not in allowed:
            raise JobError(f"unknown job key {key}.{k}; expected some of: {', '.join(allowed)}")
    return dict(raw)


def _judge(raw: Any) -> dict[str, Any]:
    judge = _section("judge", raw, JUDGE_KEYS)
    provider = judge.get("provider", "openai")
    if provider not in JUDGE_PROVIDERS:
        raise _bad("judge.provider", f"expected one of {', '.join(JUDGE_PROVIDERS)}", provider)
    out: dict[str, Any] = {"provider": provider, "model": _text("judge.model", judge.get("model"))}
    if provider == "openai":
        base_url = judge.get("base_url")
        if not isinstance(base_url, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", base_url):
            raise _bad("judge.base_url", "expected an http(s):// URL of an OpenAI-compatible API", base_url)
        out["base_url"] = base_url.rstrip("/")
    else:
        out["region_name"] = _text("judge.region_name", judge.get("region_name"), max_len=32)
        if judge.get("aws_conn_id") is not None:
            out["aws_conn_id"] = _text("judge.aws_conn_id", judge["aws_conn_id"], max_len=250)
    out["max_workers"] = _checked("judge.max_workers", judge.get("max_workers", 16))
    out["timeout_s"] = _checked("judge.timeout_s", judge.get("timeout_s", 120))
    out["max_tokens"] = _checked("judge.max_tokens", judge.get("max_tokens", 2048))
    return out


def _vllm(raw: Any) -> dict[str, Any]:
    opts = _section("vllm", raw, VLLM_KEYS)
    # Bounded by default: vLLM would otherwise take the model's full context (128k for Llama 3.1)
    # and refuse to start when the KV cache of a 24 GB inference GPU cannot hold it.
    out: dict[str, Any] = {
        "max_model_len": _checked("vllm.max_model_len", opts.get("max_model_len", DEFAULT_MAX_MODEL_LEN)),
        "gpu_memory_utilization": _checked("vllm.gpu_memory_utilization", opts.get("gpu_memory_utilization", 0.85)),
        "tensor_parallel_size": _checked("vllm.tensor_parallel_size", opts.get("tensor_parallel_size", 1)),
    }
    dtype = opts.get("dtype", "auto")
    if dtype not in _DTYPES:
        raise _bad("vllm.dtype", f"expected one of {', '.join(_DTYPES)}", dtype)
    out["dtype"] = dtype
    out["seed"] = _checked("vllm.seed", opts.get("seed", 0))
    return out


def validate_job(raw: Any) -> dict[str, Any]:
    """The job with defaults filled in, or JobError naming the first bad key. Unknown keys are refused."""
    if not isinstance(raw, Mapping):
        raise JobError(f"the job must be a JSON object (got {type(raw).__name__})")
    for key in raw:
        if str(key).lower() in SECRET_KEYS:
            raise JobError(f"job key {key!r}: secrets never travel in the job")
        if key not in KEYS:
            raise JobError(f"unknown job key {key!r}; expected some of: {', '.join(KEYS)}")
    for key in REQUIRED:
        if key not in raw:
            raise JobError(f"job key {key!r} is required")
    job: dict[str, Any] = {k: check_uri(k, raw[k]) for k in ("model_uri", "eval_uri", "output_uri")}
    if raw["generator"] not in GENERATORS:
        raise _bad("generator", f"expected one of {', '.join(GENERATORS)}", raw["generator"])
    if raw["metrics_profile"] not in METRICS_PROFILES:
        raise _bad("metrics_profile", f"expected one of {', '.join(METRICS_PROFILES)}", raw["metrics_profile"])
    job["generator"], job["metrics_profile"] = raw["generator"], raw["metrics_profile"]
    limit = raw.get("limit")
    job["limit"] = None if limit is None else _checked("limit", limit)
    job["max_new_tokens"] = _checked("max_new_tokens", raw.get("max_new_tokens",
                                                               DEFAULT_MAX_NEW_TOKENS[job["generator"]]))
    job["vllm"] = _vllm(raw.get("vllm") or {}) if job["generator"] == "vllm" else None
    if raw.get("vllm") and job["generator"] != "vllm":
        raise JobError("job key 'vllm': only meaningful with generator 'vllm'")
    if job["vllm"] and job["max_new_tokens"] >= job["vllm"]["max_model_len"]:
        raise _bad("max_new_tokens", f"must leave room for the prompt within vllm.max_model_len "
                   f"({job['vllm']['max_model_len']})", job["max_new_tokens"])
    judge = raw.get("judge")
    if job["metrics_profile"] == "eks":
        if judge is None:
            raise JobError("job key 'judge' is required with metrics_profile 'eks' (the LLM judge's provider, "
                           "model and endpoint)")
        job["judge"] = _judge(judge)
    else:
        if judge is not None:
            raise JobError("job key 'judge': metrics_profile 'local' uses no LLM judge")
        job["judge"] = None
    return job


def job_argument(job: Mapping[str, Any]) -> str:
    """The job as the one argv item the evaluator pod receives (validated, canonical, no NaN)."""
    return json.dumps(validate_job(job), sort_keys=True, separators=(",", ":"), allow_nan=False)


def parse_job_argument(text: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise JobError(f"--job is not valid JSON: {exc}") from None
    return validate_job(raw)


def build_job(model_uri: str, eval_uri: str, output_uri: str, *, generator: str, metrics_profile: str,
              limit: int | None = None, max_new_tokens: int | None = None,
              judge: Mapping[str, Any] | None = None, vllm: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The validated job. Which generator and metrics a profile uses is the container-job seam's
    choice (the platform's jobs): tiny + non-LLM metrics locally, vLLM + the LLM judge on eks."""
    job: dict[str, Any] = {
        "model_uri": model_uri, "eval_uri": eval_uri, "output_uri": output_uri,
        "generator": generator, "metrics_profile": metrics_profile, "limit": limit,
        "max_new_tokens": max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(generator),
    }
    if generator == "vllm":
        job["vllm"] = dict(vllm or {})
    if judge is not None:
        job["judge"] = dict(judge)
    return validate_job(job)
