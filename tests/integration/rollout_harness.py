"""Drive the rollout's real operators and triggers outside a scheduler, on the real local stack.

`run_steps` calls `CanaryStepsOperator.execute`, catches its deferral, runs the deferred trigger's
`run()` to its first event (as the triggerer does) and resumes the operator's method with it, until
the operator returns its verdict: the code path an Airflow worker and triggerer take, minus the
scheduler's bookkeeping (the e2e tests cover that part).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import torch

from include import tinylm
from include.serving import route as rt
from include.training import tiny

MODEL = "llmops-assistant"
DATASET = "0123456789abcdef"
EVAL = [
    {"id": f"q{i}", "user_input": q, "reference": a, "reference_contexts": []}
    for i, (q, a) in enumerate([
        ("Which port does vLLM serve on?", "Port 8000 by default."),
        ("What is a canary release?", "A new version gets a small share of traffic first."),
        ("What does Karpenter do?", "It provisions nodes for pending pods."),
        ("What is LoRA?", "Low-rank adapters on a frozen base model."),
        ("What is EFA?", "A network interface for HPC on EC2."),
        ("What is an HTTPRoute?", "A Gateway API object that routes HTTP traffic."),
        ("What does MLflow register?", "Model versions with aliases."),
        ("What is Prometheus?", "A time series database that scrapes metrics."),
    ])
]
# Small enough to fit the eval answers in seconds on a CPU; prompts + answers fit the window untruncated.
SMALL = tinylm.TinyConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=128)


class FakeTI:
    def __init__(self, xcoms: dict[str, Any]):
        self.xcoms = xcoms

    def xcom_pull(self, task_ids: str) -> Any:
        return self.xcoms.get(task_ids)


def write_eval_set(data_root: Path) -> None:
    d = data_root / "curated" / DATASET
    d.mkdir(parents=True, exist_ok=True)
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVAL))


def export_model(path: Path, *, seed: int, train_steps: int = 0, mute: bool = False) -> str:
    """A small tiny model. `train_steps`: fitted on the eval answers, so it answers them well;
    `mute`: a broken checkpoint whose every answer is empty (EOS first); neither: random weights."""
    from include.evaluation.generate import build_prompt

    torch.manual_seed(seed)
    model = tinylm.TinyByteLM(SMALL)
    if mute:
        with torch.no_grad():
            eos = model.embed.weight[tinylm.EOS_ID]
            model.norm.weight.zero_()
            model.norm.bias.copy_(10 * eos / eos.norm())
    if train_steps:
        examples = [tiny.encode_example(build_prompt(r["user_input"], r["reference_contexts"]), r["reference"],
                                        SMALL.max_position_embeddings) for r in EVAL]
        ids, labels = tiny.collate(examples)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(train_steps):
            loss = tiny.token_loss_sum(model, ids, labels) / (labels != tiny.IGNORE_INDEX).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
    return "file://" + str(tinylm.export_model(model, path))


def register(client, version_sources: list[str], artifacts: Path) -> None:
    """Versions 1..n of MODEL with the eval set's dataset version; v1 champion, the last challenger.
    Run artifacts (the step tables) go under `artifacts`, never the working directory."""
    client.create_registered_model(MODEL)
    experiment = client.create_experiment("rollout-it", artifact_location=artifacts.as_uri())
    for source in version_sources:
        run = client.create_run(experiment)  # the version's training run: the step tables land here
        client.create_model_version(MODEL, source, run_id=run.info.run_id, tags={"llmops.dataset_version": DATASET})
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", str(len(version_sources)))


def first_event(trigger) -> dict:
    async def _first():
        async for event in trigger.run():
            return event.payload
    return asyncio.run(_first())


def run_steps(xcoms: dict[str, Any], on_defer=None) -> tuple[dict, list[float]]:
    """The analyse task, deferral by deferral; returns its verdict and when each trigger fired."""
    from airflow.sdk.exceptions import TaskDeferred
    from llmops_operators.canary import CanaryStepsOperator

    op = CanaryStepsOperator(task_id="analyse", plan=xcoms["resolve"], request=xcoms["validate_params"])
    context = {"ti": FakeTI(xcoms)}
    fired: list[float] = []
    call = lambda: op.execute(context)  # noqa: E731
    while True:
        try:
            return call(), fired
        except TaskDeferred as deferred:
            if on_defer:
                on_defer(deferred)
            event = first_event(deferred.trigger)
            fired.append(time.time())
            method = getattr(op, deferred.method_name)
            kwargs = deferred.kwargs or {}
            call = lambda m=method, e=event, k=kwargs: m(context, e, **k)  # noqa: E731


def canary_weight(router, service: str) -> int | None:
    return rt.weights(router.get(rt.route_name(MODEL))).get(service)


# -- the rollout tests' common moves (fixtures `rollout_world` and `fresh_rollout` in conftest.py) ----------

INTERVAL = 5  # the form's minimum analysis interval, to keep the suite short
V1, V2, V3 = (rt.served_name(MODEL, v) for v in (1, 2, 3))
# Latency ratios off: the verdict must not hinge on noise in a few requests' p95 on 2 shared cores.
NO_LATENCY = {"metrics": {"latency-p95-ratio": None, "ttft-p95-ratio": None}}


def start(version: str, run_id: str, **params) -> tuple[dict, dict]:
    """Deploy `version` as the canary of a rollout with `params`; return its request and plan once it serves."""
    from llmops_operators.canary import ServerReadyTrigger

    from include.lifecycle import rollout
    from include.platforms import get_platform

    req = rollout.validate_params({"model_version": version, "interval_s": INTERVAL, "probe_size": 4,
                                   "traffic_rate": 20, **params})
    plan = rollout.resolve(req, run_id)
    rollout.deploy(plan)
    url = get_platform().servers().url(plan["canary"]["service"])
    assert first_event(ServerReadyTrigger(url, plan["canary"]["service"], time.time() + 60, 0.2))["ready"]
    return req, plan


def first_rollout(version: str = "1") -> tuple[dict, list[float]]:
    """`version` straight to 100 % (no champion server yet) with the rollout's own functions and operator."""
    from include.lifecycle import rollout

    req = rollout.validate_params({"model_version": version, "steps": [100], "interval_s": INTERVAL})
    plan = rollout.resolve(req, "first")
    assert plan["direct"] and plan["stable"] is None
    rollout.deploy(plan)
    return run_steps({"validate_params": req, "resolve": plan})
