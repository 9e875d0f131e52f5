"""The evaluation job spec, the judge connection, and the evaluator entrypoint's refusals."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from include.container import USER_ERROR_EXIT_CODE
from include.evaluation.entrypoint import main
from include.evaluation.job import JobError, job_argument, parse_job_argument, validate_job
from include.evaluation.judge import (
    API_KEY_ENV,
    JudgeConfig,
    JudgeConfigError,
    build_judge_llm,
    judge_from_connection,
    judge_from_connection_fields,
)

LOCAL = {"model_uri": "file:///data/runs/r1/model", "eval_uri": "file:///data/curated/0123456789abcdef",
         "output_uri": "file:///data/evaluations/r1/candidate", "generator": "tiny", "metrics_profile": "local"}
JUDGE = {"provider": "openai", "model": "judge-70b", "base_url": "http://judge.llm-serving.svc:8000/v1"}
EKS = {**LOCAL, "model_uri": "s3://b/runs/r1/model", "eval_uri": "s3://b/curated/v1",
       "output_uri": "s3://b/evaluations/r1", "generator": "vllm", "metrics_profile": "eks", "judge": JUDGE}
SECRET = "sk-test-DO-NOT-LEAK-1234"


def test_local_job_gets_defaults():
    job = validate_job(LOCAL)
    assert job["limit"] is None and job["max_new_tokens"] == 64 and job["judge"] is None and job["vllm"] is None


def test_eks_job_gets_vllm_and_judge_defaults():
    job = validate_job(EKS)
    assert job["max_new_tokens"] == 256
    assert job["vllm"] == {"max_model_len": 4096, "gpu_memory_utilization": 0.85, "tensor_parallel_size": 1,
                           "dtype": "auto", "seed": 0}
    assert job["judge"] == {**JUDGE, "max_workers": 16, "timeout_s": 120, "max_tokens": 2048}


@pytest.mark.parametrize("change, message", [
    ({"extra": 1}, "unknown job key 'extra'"),
    ({"model_uri": "file://relative/model"}, "absolute path"),
    ({"model_uri": "s3://b/runs/../../etc"}, "'..'"),
    ({"eval_uri": "https://example.com/eval.jsonl"}, "scheme file or s3"),
    ({"output_uri": "s3://b/out\nx"}, "control characters"),
    ({"generator": "hf"}, "generator"),
    ({"limit": 0}, "limit"),
    ({"limit": True}, "limit"),
    ({"max_new_tokens": 100_000}, "max_new_tokens"),
    ({"api_key": "x"}, "secrets never travel"),
    ({"judge": JUDGE}, "uses no LLM judge"),
    ({"vllm": {"dtype": "auto"}}, "only meaningful with generator 'vllm'"),
])
def test_bad_local_jobs_are_refused(change, message):
    with pytest.raises(JobError, match=message):
        validate_job({**LOCAL, **change})


def test_generation_must_leave_room_for_the_prompt():
    with pytest.raises(JobError, match="max_new_tokens"):
        validate_job({**EKS, "max_new_tokens": 4096})
    job = validate_job({**EKS, "max_new_tokens": 1024, "vllm": {"max_model_len": 8192}})
    assert job["vllm"]["max_model_len"] == 8192


@pytest.mark.parametrize("judge, message", [
    (None, "'judge' is required"),
    ({**JUDGE, "api_key": SECRET}, "secrets never travel"),
    ({**JUDGE, "base_url": "judge:8000"}, "base_url"),
    ({**JUDGE, "provider": "azure"}, "provider"),
    ({"provider": "bedrock", "model": "m"}, "region_name"),
    ({**JUDGE, "max_workers": 0}, "max_workers"),
])
def test_bad_judges_are_refused(judge, message):
    with pytest.raises(JobError, match=message):
        validate_job({**EKS, "judge": judge})


def test_job_argument_is_canonical_json_that_parses_back():
    text = job_argument(EKS)
    assert "\n" not in text and text == job_argument(json.loads(text))
    assert parse_job_argument(text) == validate_job(EKS)
    with pytest.raises(JobError, match="not valid JSON"):
        parse_job_argument("{not json")


def test_judge_from_an_openai_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LLM_JUDGE", json.dumps({
        "conn_type": "openai", "host": "https://judge.example.com/v1", "password": SECRET,
        "extra": {"model": "judge-70b", "max_workers": 32}}))
    judge = judge_from_connection("llm_judge")
    assert judge == JudgeConfig(provider="openai", model="judge-70b", base_url="https://judge.example.com/v1",
                                api_key=SECRET, max_workers=32)
    assert SECRET not in repr(judge) and SECRET not in json.dumps(judge.public())
    job = validate_job({**EKS, "judge": judge.public()})
    assert SECRET not in job_argument(job)


def test_judge_from_an_http_connection_uri(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LLM_JUDGE", f"http://:{SECRET}@judge.llm-serving.svc:8000/v1?model=judge-8b")
    judge = judge_from_connection("llm_judge")
    assert judge.base_url == "http://judge.llm-serving.svc:8000/v1" and judge.model == "judge-8b"
    assert judge.api_key == SECRET


def test_judge_from_a_bedrock_connection():
    conn = SimpleNamespace(conn_id="llm_judge", conn_type="aws", host=None, port=None, schema=None, password=None,
                           extra_dejson={"provider": "bedrock", "model_id": "anthropic.claude-3-5-sonnet",
                                         "region_name": "us-west-2"})
    judge = judge_from_connection_fields(conn)
    assert judge.public() == {"provider": "bedrock", "model": "anthropic.claude-3-5-sonnet",
                              "region_name": "us-west-2", "max_workers": 16, "timeout_s": 120, "max_tokens": 2048}
    llm = build_judge_llm(judge)  # a boto3 client is made (credentials resolve lazily); no request is sent
    assert llm.langchain_llm.model_id == "anthropic.claude-3-5-sonnet" and llm.max_in_flight == 16


def test_a_connection_without_model_is_refused():
    conn = SimpleNamespace(conn_id="llm_judge", conn_type="openai", host="https://j/v1", port=None, schema=None,
                           password=SECRET, extra_dejson={})
    with pytest.raises(JudgeConfigError, match="model") as info:
        judge_from_connection_fields(conn)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("where", ["host", "extra"])
def test_credentials_in_the_judge_url_are_refused(where):
    url = f"https://user:{SECRET}@judge.example/v1"
    conn = SimpleNamespace(conn_id="llm_judge", conn_type="http", host=url if where == "host" else "https://j/v1",
                           port=None, schema=None, password=None,
                           extra_dejson={"model": "m", **({"base_url": url} if where == "extra" else {})})
    with pytest.raises(JudgeConfigError, match="must not contain credentials") as info:
        judge_from_connection_fields(conn)
    assert SECRET not in str(info.value)


def test_openai_judge_is_temperature_zero_and_gated():
    llm = build_judge_llm(JudgeConfig(provider="openai", model="m", base_url="http://127.0.0.1:9/v1",
                                      api_key=SECRET, max_workers=5))
    chat = llm.langchain_llm
    assert chat.temperature == 0.0 and chat.max_retries == 0 and llm.max_in_flight == 5
    assert llm.bypass_temperature and llm.bypass_n  # ragas may not raise the temperature or ask for n > 1


def test_pod_judge_reads_the_key_from_the_environment():
    job = validate_job(EKS)
    judge = JudgeConfig.from_job(job["judge"], {API_KEY_ENV: SECRET})
    assert judge.api_key == SECRET and judge.base_url == JUDGE["base_url"]
    assert JudgeConfig.from_job(job["judge"], {}).api_key is None


def test_entrypoint_refuses_bad_jobs_with_the_user_error_code(capsys, tmp_path):
    assert main(["--job", "{oops"]) == USER_ERROR_EXIT_CODE
    assert main(["--job", json.dumps({**LOCAL, "surprise": 1})]) == USER_ERROR_EXIT_CODE
    assert "invalid job" in capsys.readouterr().err
