"""One evaluation run: generate answers, score them, write responses, scores, summary and result.

What the evaluator pod runs (entrypoint.py) and what the local evaluation task runs in-process.
Output layout: include/evaluation/evalset.py.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from include.evaluation import evalset
from include.evaluation.job import validate_job
from include.evaluation.scoring import clean, metric_names, score
from include.storage import files

if TYPE_CHECKING:
    from include.evaluation.judge import JudgeConfig

log = logging.getLogger(__name__)


def summarize(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Means over the samples that have a score, how many do, and how many do not."""
    means: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for name in names:
        values = [r[name] for r in rows if r.get(name) is not None]
        counts[name] = len(values)
        means[name] = clean(math.fsum(values) / len(values)) if values else None
    return {"n": len(rows), "metrics": list(names), "means": means, "counts": counts,
            "missing": {n: len(rows) - counts[n] for n in names}}


def write_scores(output_uri: str, rows: Sequence[Mapping[str, Any]], names: Sequence[str], *,
                 responses: Sequence[Mapping[str, Any]] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Store responses.jsonl (if given), scores.jsonl, then summary.json (last: its presence says done)."""
    output_uri = output_uri.rstrip("/")
    if responses is not None:
        files.write_jsonl(files.join(output_uri, evalset.RESPONSES_FILE), responses)
    scores_uri = files.join(output_uri, evalset.SCORES_FILE)
    summary_uri = files.join(output_uri, evalset.SUMMARY_FILE)
    files.write_jsonl(scores_uri, rows)
    summary = {**(extra or {}), **summarize(rows, names)}
    files.write_json(summary_uri, summary)
    return {"scores_uri": scores_uri, "summary_uri": summary_uri, "summary": summary}


# ----------------------------------------------------------------

def resolve_judge(job: Mapping[str, Any], judge: JudgeConfig | None = None) -> JudgeConfig | None:
    if job["metrics_profile"] != "eks":
        return None
    if judge is not None:
        return judge
    from include.evaluation.judge import JudgeConfig

    return JudgeConfig.from_job(job["judge"])


def run_job(raw_job: Mapping[str, Any], *, judge: JudgeConfig | None = None, generator: Any = None,
            workdir: str | None = None) -> dict[str, Any]:
    """Generate and score per the job; write the outputs; return the result (also result.json).

    The pod runs this (entrypoint.py) with the judge's key from its environment; a worker runs it
    in-process (the local evaluation operator). `generator` replaces the job's (tests, benchmarks).
    """
    import tempfile
    from pathlib import Path

    from include.evaluation.generate import generate_answers, make_generator

    job = validate_job(raw_job)
    judge_cfg = resolve_judge(job, judge)
    names = metric_names(job["metrics_profile"])
    samples = evalset.load_eval_set(job["eval_uri"], job["limit"])
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="llmops-eval-", dir=workdir) as tmp:
        gen = generator
        if gen is None:
            model_dir = files.stage_dir(job["model_uri"], Path(tmp) / "model")
            gen = make_generator(job["generator"], model_dir, max_new_tokens=job["max_new_tokens"],
                                 vllm_options=job["vllm"])
        started = time.monotonic()
        try:
            answers = generate_answers(gen, samples)
        finally:
            if generator is None:
                gen.close()  # vLLM: give the GPU back before scoring
        timings["generation_seconds"] = round(time.monotonic() - started, 3)
        generated = [{"id": s.id, "user_input": s.user_input, "reference": s.reference,
                      "reference_contexts": s.reference_contexts, "response": a}
                     for s, a in zip(samples, answers, strict=True)]
        started = time.monotonic()
        rows = score(generated, job["metrics_profile"], judge=judge_cfg)
        timings["scoring_seconds"] = round(time.monotonic() - started, 3)

    extra = {
        "model_uri": job["model_uri"],
        "eval_uri": job["eval_uri"],
        "eval_digest": evalset.eval_digest(samples),
        "limit": job["limit"],
        "metrics_profile": job["metrics_profile"],
        "generation": gen.describe(),
        "judge": judge_cfg.public() if judge_cfg is not None else None,
        **timings,
    }
    written = write_scores(job["output_uri"], rows, names,
                           responses=[{"id": s.id, "response": a} for s, a in zip(samples, answers, strict=True)],
                           extra=extra)
    summary = written["summary"]
    result = {
        "scores_uri": written["scores_uri"],
        "summary_uri": written["summary_uri"],
        "responses_uri": files.join(job["output_uri"], evalset.RESPONSES_FILE),
        "means": summary["means"],
        "n": summary["n"],
        "metrics": summary["metrics"],
        "eval_digest": summary["eval_digest"],
    }
    files.write_json(files.join(job["output_uri"], evalset.RESULT_FILE), result)
    return result


def read_result(output_uri: str) -> dict[str, Any]:
    """The result an evaluator pod (or an earlier in-process run_job) left at output_uri."""
    return files.read_json(files.join(output_uri, evalset.RESULT_FILE))
