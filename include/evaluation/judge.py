"""The LLM judge for the eks metrics (Faithfulness, ResponseRelevancy), built from one connection.

An Airflow connection (default conn id `llm_judge`) says where the judge is:
- OpenAI-compatible endpoint (vLLM, a gateway, OpenAI): conn type `openai` or `http`;
  host = base URL (`https://judge.example/v1`, or host/port/schema parts), password = API key,
  extra `{"model": "<served model name>"}`.
- Amazon Bedrock: extra `{"provider": "bedrock", "model_id": "...", "region_name": "us-east-1"}`
  (optional `"aws_conn_id"`); credentials from that AWS connection on a worker, or from the
  pod's identity (IRSA / Pod Identity) in the evaluator pod. No API key.
Optional extras for both: `max_workers` (concurrent judge calls), `timeout_s`, `max_tokens`.

The key never leaves this object: `JudgeConfig.public()` (what goes into the job spec, the pod
args and logs) omits it, `repr` hides it, and the evaluator pod gets it from a Kubernetes Secret
as the environment variable LLMOPS_JUDGE_API_KEY. (Airflow's own Connection repr prints the
password: never log the connection object.)

Determinism: temperature 0, ragas' temperature/n overrides bypassed (ragas would otherwise use
0.3 whenever it asks for several completions), and ResponseRelevancy's strictness set to 1 by the
caller: at temperature 0 further samples are copies of the first and only cost requests.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from include.validation import Rule

DEFAULT_CONN_ID = "llm_judge"
API_KEY_ENV = "LLMOPS_JUDGE_API_KEY"


class JudgeConfigError(ValueError):
    """The judge connection cannot be turned into a judge; the message never contains the key."""


@dataclass(frozen=True)
class JudgeConfig:
    provider: str  # "openai" | "bedrock"
    model: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    region_name: str | None = None
    aws_conn_id: str | None = None
    max_workers: int = 16
    timeout_s: int = 120
    max_tokens: int = 2048

    def public(self) -> dict[str, Any]:
        """Everything but the key: safe for job specs, pod args, XComs and logs."""
        return {k: v for k, v in asdict(self).items() if k != "api_key" and v is not None}

    @classmethod
    def from_job(cls, section: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> JudgeConfig:
        """The judge the evaluator pod uses: the job's public part plus the key from the environment."""
        env = os.environ if environ is None else environ
        return cls(**dict(section), api_key=env.get(API_KEY_ENV) or None)


def _base_url(conn: Any, extra: Mapping[str, Any]) -> str:
    """The judge's base URL; it travels in job specs and logs, so it may not carry credentials."""
    url = _build_base_url(conn, extra)
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise JudgeConfigError(f"connection {conn.conn_id!r}: the base URL must not contain credentials; "
                               "put the API key in the connection's password")
    return url


def _build_base_url(conn: Any, extra: Mapping[str, Any]) -> str:
    if extra.get("base_url"):
        return str(extra["base_url"]).rstrip("/")
    host = (conn.host or "").strip()
    if not host:
        raise JudgeConfigError(f"connection {conn.conn_id!r}: host must hold the judge's base URL")
    if "://" in host:
        parts = urlsplit(host)
        netloc = parts.netloc
        if conn.port and ":" not in netloc:
            netloc = f"{netloc}:{conn.port}"
        path = parts.path.rstrip("/") or (f"/{conn.schema.strip('/')}" if conn.schema else "")
        return f"{parts.scheme}://{netloc}{path}"
    scheme = "http" if conn.conn_type == "http" else "https"
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema.strip('/')}" if conn.schema else ""
    return f"{scheme}://{host}{port}{path}"


def _ints(extra: Mapping[str, Any], conn_id: str) -> dict[str, int]:
    """The connection's integer extras, each at least 1 (the evaluation job's rules hold their upper bounds)."""
    rule = {key: Rule(key, "integer", 1, error=JudgeConfigError) for key in ("max_workers", "timeout_s", "max_tokens")}
    return {key: r.check(extra[key], f"connection {conn_id!r}: extra {key}") for key, r in rule.items() if key in extra}


def judge_from_connection(conn_id: str = DEFAULT_CONN_ID) -> JudgeConfig:
    """Read the judge from an Airflow connection (in a task, or anywhere AIRFLOW_CONN_* is set)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    return judge_from_connection_fields(conn)


def judge_from_connection_fields(conn: Any) -> JudgeConfig:
    extra = conn.extra_dejson or {}
    provider = str(extra.get("provider") or "openai").lower()
    ints = _ints(extra, conn.conn_id)
    if provider == "bedrock":
        model = extra.get("model_id") or extra.get("model")
        region = extra.get("region_name") or extra.get("region")
        if not model or not region:
            raise JudgeConfigError(f"connection {conn.conn_id!r}: Bedrock needs extra model_id and region_name")
        return JudgeConfig(provider="bedrock", model=str(model), region_name=str(region),
                           aws_conn_id=extra.get("aws_conn_id"), **ints)
    if provider != "openai":
        raise JudgeConfigError(f"connection {conn.conn_id!r}: extra provider must be 'openai' or 'bedrock'")
    model = extra.get("model")
    if not model:
        raise JudgeConfigError(f"connection {conn.conn_id!r}: extra must name the judge's model, e.g. "
                               '{"model": "meta-llama/Llama-3.1-70B-Instruct"}')
    return JudgeConfig(provider="openai", model=str(model), base_url=_base_url(conn, extra),
                       api_key=conn.password or None, **ints)


def _bedrock_client(cfg: JudgeConfig) -> Any:
    if cfg.aws_conn_id:
        try:
            from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
        except ImportError:  # the evaluator pod: no Airflow, the pod identity gives credentials
            pass
        else:
            hook = AwsBaseHook(aws_conn_id=cfg.aws_conn_id, client_type="bedrock-runtime",
                               region_name=cfg.region_name)
            return hook.get_conn()
    import boto3
    from botocore.config import Config

    return boto3.client("bedrock-runtime", region_name=cfg.region_name,
                        config=Config(read_timeout=cfg.timeout_s, retries={"max_attempts": 2}))


def build_langchain_chat(cfg: JudgeConfig) -> Any:
    """The LangChain chat model for the judge (temperature 0; retries are ragas' RunConfig's)."""
    if cfg.provider == "openai":
        import httpx
        from langchain_openai import ChatOpenAI
        from pydantic import SecretStr

        # A client of its own: the default one is cached per process and its pooled connections
        # belong to the event loop of the first ragas.evaluate; a second evaluate (a new loop)
        # would fail on them. Pool size follows the concurrency.
        pool = httpx.Limits(max_connections=cfg.max_workers * 2, max_keepalive_connections=cfg.max_workers * 2)
        return ChatOpenAI(
            http_async_client=httpx.AsyncClient(limits=pool, timeout=cfg.timeout_s),
            model=cfg.model,
            base_url=cfg.base_url,
            # Local OpenAI-compatible servers often need no key; the client insists on one.
            api_key=SecretStr(cfg.api_key or "not-needed"),
            temperature=0.0,
            max_tokens=cfg.max_tokens,
            timeout=cfg.timeout_s,
            max_retries=0,
        )
    if cfg.provider == "bedrock":
        client = _bedrock_client(cfg)
        try:  # the evaluator image pins langchain-aws: the Converse API works for every Bedrock model
            from langchain_aws import ChatBedrockConverse
        except ImportError:
            import warnings

            from langchain_community.chat_models.bedrock import BedrockChat

            with warnings.catch_warnings():  # deprecated for langchain-aws, which the image has
                warnings.simplefilter("ignore")
                return BedrockChat(model_id=cfg.model, client=client, region_name=cfg.region_name,
                                   model_kwargs={"temperature": 0.0, "max_tokens": cfg.max_tokens})
        return ChatBedrockConverse(model=cfg.model, client=client, region_name=cfg.region_name,
                                   temperature=0.0, max_tokens=cfg.max_tokens)
    raise JudgeConfigError(f"unknown judge provider {cfg.provider!r}")


@lru_cache(maxsize=1)
def _gated_wrapper_class() -> type:
    from ragas.llms.base import LangchainLLMWrapper

    class GatedLangchainLLMWrapper(LangchainLLMWrapper):
        """LangchainLLMWrapper with at most `max_in_flight` judge requests at once (per event loop).

        ragas' RunConfig.max_workers bounds whole metric calls, and a metric call holds its slot
        through prompt rendering, output parsing and, for ResponseRelevancy, an embedding pass:
        the judge then sees fewer requests than slots. Gating the requests themselves makes
        `max_in_flight` the judge's real concurrency while metric calls prepare and parse around
        it. Retries (ragas' add_async_retry around this method) wait outside the gate.
        """

        def __init__(self, *args: Any, max_in_flight: int, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.max_in_flight = max_in_flight
            self._gate: asyncio.Semaphore | None = None
            self._gate_loop: asyncio.AbstractEventLoop | None = None

        def _semaphore(self) -> asyncio.Semaphore:
            loop = asyncio.get_running_loop()
            if self._gate is None or self._gate_loop is not loop:
                self._gate, self._gate_loop = asyncio.Semaphore(self.max_in_flight), loop
            return self._gate

        async def agenerate_text(self, *args: Any, **kwargs: Any) -> Any:
            async with self._semaphore():
                return await super().agenerate_text(*args, **kwargs)

    return GatedLangchainLLMWrapper


def build_judge_llm(cfg: JudgeConfig, run_config: Any = None) -> Any:
    """The ragas LLM wrapper the judged metrics use: at most cfg.max_workers requests in flight."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _gated_wrapper_class()(build_langchain_chat(cfg), run_config=run_config, bypass_temperature=True,
                                      bypass_n=True, max_in_flight=cfg.max_workers)
