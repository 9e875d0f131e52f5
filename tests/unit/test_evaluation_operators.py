"""The evaluation task on eks renders the evaluator pod onto the inference pool; None jobs skip."""

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from include.cluster.pools import get_pool
from include.cluster.preflight import as_manifest, check_pod_placement
from include.evaluation.judge import JudgeConfig
from include.platforms import get_platform
from include.settings import Settings, get_settings
from tests.k8s_schemas import validate

EKS = {"LLMOPS_PROFILE": "eks", "LLMOPS_DATA_ROOT": "s3://llmops-data/prod"}


@pytest.fixture
def eks(monkeypatch):
    for k, v in EKS.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_evaluator_pod_is_valid_and_lands_on_the_inference_pool(eks):
    from llmops_operators.k8s_evaluation import KubernetesEvaluationOperator

    judge = JudgeConfig(provider="openai", model="judge-70b", base_url="http://judge.llm-serving.svc:8000/v1")
    job = get_platform(eks).jobs().evaluation_job("s3://llmops-data/prod/models/ft-1/model",
                                                  "s3://llmops-data/prod/curated/0123456789abcdef",
                                                  "s3://llmops-data/prod/evaluations/ft-1/candidate", judge=judge)
    op = KubernetesEvaluationOperator(task_id="evaluate_candidate", job=job)
    fields = ("name", "namespace", "image", "cmds", "arguments", "full_pod_spec", "job")
    before = {k: getattr(op, k) for k in fields}
    run_id = "scheduled__2026-11-29T02:00:00+00:00"
    # what the provider submits, minus its live-cluster label
    pod = op.build_pod_request_obj(dry_run=True, run_id=run_id)
    assert {k: getattr(op, k) for k in fields} == before, "nothing is set onto the operator"
    assert op.full_pod_spec is None and op.arguments == []
    # The same pod as the plain provider operator given the rendered pod's arguments, name suffix aside.
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from llmops_operators.k8s_evaluation import constant_kwargs, pod_kwargs

    evaluate_candidate = KubernetesPodOperator(task_id="evaluate_candidate",
                                               **{**constant_kwargs(), **pod_kwargs(op.rendered_pod(run_id))})
    expected = as_manifest(evaluate_candidate.build_pod_request_obj(dry_run=True))
    got = as_manifest(pod)
    for m in (expected, got):
        m["metadata"]["name"] = m["metadata"]["name"].rsplit("-", 1)[0]
    assert got == expected
    manifest = validate(as_manifest(pod))
    pool = get_pool(eks.inference_pool)
    check_pod_placement(pod, pool)
    assert manifest["spec"]["nodeSelector"]["karpenter.sh/nodepool"] == "gpu-inference-pool"
    container = manifest["spec"]["containers"][0]
    assert container["args"][0] == "--job" and len(container["args"]) == 2, "the job is one argv item"
    assert "bash" not in container.get("command", []) and "-c" not in container.get("command", [])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert manifest["spec"]["securityContext"]["runAsNonRoot"] is True


def test_a_job_of_none_is_skipped_on_both_profiles(eks):
    from llmops_operators.evaluation import LocalEvaluationOperator
    from llmops_operators.k8s_evaluation import KubernetesEvaluationOperator

    for op in (LocalEvaluationOperator(task_id="evaluate_champion", job=None),
               KubernetesEvaluationOperator(task_id="evaluate_champion", job=None)):
        with pytest.raises(AirflowSkipException):
            op.execute({"run_id": "r"})


def test_factory_picks_by_profile(eks, monkeypatch):
    from llmops_operators.evaluation import LocalEvaluationOperator, evaluation_operator

    assert type(evaluation_operator(task_id="e1", job=None)).__name__ == "KubernetesEvaluationOperator"
    monkeypatch.setenv("LLMOPS_PROFILE", "local")
    monkeypatch.delenv("LLMOPS_DATA_ROOT")
    get_settings.cache_clear()
    assert isinstance(evaluation_operator(task_id="e2", job=None), LocalEvaluationOperator)
    assert Settings.from_env({}).profile == "local"
