"""RAGAS scoring with PER-SAMPLE scores (the run that writes them is run.py).

Metrics by profile (names are ragas' metric names, the keys of scores.jsonl and the gate policy):

    local  non_llm_string_similarity   Levenshtein similarity of response and reference (rapidfuzz)
           bleu_score                  sacrebleu BLEU of response against reference, in [0, 1]
           rouge_score                 ROUGE-L F-measure of response against reference
           semantic_similarity         cosine of all-MiniLM-L6-v2 embeddings of response and reference
                                       (a cosine: [-1, 1], unrelated text lands near 0; not clamped)
           non_llm_context_precision_with_reference
           non_llm_context_recall
    eks    all of the above, plus LLM-judged
           faithfulness                share of the response's claims the contexts support
           answer_relevancy            ResponseRelevancy: how well questions the judge derives
                                       from the response match the asked question

Columns: the string and semantic metrics read `response` (the generated answer) and `reference`;
the two context metrics read `retrieved_contexts` and `reference_contexts`; faithfulness reads
`user_input`, `response` and `retrieved_contexts`; answer relevancy `user_input` and `response`.

Why the reference contexts are also the retrieved contexts: the evaluation is RAG style with an
oracle retriever. The model is prompted with the eval record's gold contexts (the same layout it
was trained on), so what it was given IS the reference context list. That isolates generation
quality, which is what a fine-tune changes, from retrieval quality, which it does not; and
faithfulness is judged against exactly what the model saw. Consequently the two non-LLM context
metrics are 1.0 by construction for every sample that has contexts: they are kept as a wiring
check (a broken prompt/context path shows up as < 1) and become meaningful unchanged once a real
retriever fills `retrieved_contexts`. Samples without contexts get None for them (not
applicable), not ragas' 0 or NaN.

Per-sample output: `score()` returns one dict per sample, in input order: {"id", metric: float or
None}; NaN/inf (a failed or undefined metric, e.g. faithfulness of an empty answer) becomes None,
and values are rounded to 6 decimals so reruns give byte-identical files. Deterministic: greedy
generation, non-LLM metrics, CPU embeddings, and a temperature-0 judge.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.evaluation.judge import JudgeConfig

log = logging.getLogger(__name__)

STRING_METRICS = ("non_llm_string_similarity", "bleu_score", "rouge_score")
CONTEXT_METRICS = ("non_llm_context_precision_with_reference", "non_llm_context_recall")
LOCAL_METRICS = (*STRING_METRICS, "semantic_similarity", *CONTEXT_METRICS)
JUDGE_METRICS = ("faithfulness", "answer_relevancy")
METRICS_BY_PROFILE = {"local": LOCAL_METRICS, "eks": (*LOCAL_METRICS, *JUDGE_METRICS)}
NEEDS_CONTEXTS = frozenset({*CONTEXT_METRICS, "faithfulness"})
DECIMALS = 6


def metric_names(metrics_profile: str) -> tuple[str, ...]:
    try:
        return METRICS_BY_PROFILE[metrics_profile]
    except KeyError:
        raise ValueError(f"unknown metrics profile {metrics_profile!r}; expected local or eks") from None


def _ragas_env() -> None:
    from include.logs import quiet_libraries

    quiet_libraries()  # rouge_score's "Using default tokenizer." once, not once per sample
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _response_relevancy_class() -> type:
    """ragas' ResponseRelevancy with its embedding step batched off the event loop.

    Same prompt, same score; only `_ascore` differs: the judge call is awaited as in ragas, then
    the generated questions are embedded through `LocalEmbeddings.aprime` (one batched forward
    pass in a worker thread for all concurrent samples) before ragas' own `_calculate_score`,
    which then only reads cached vectors. Called synchronously on the loop, as ragas does, each
    sample's forward pass would stall every in-flight judge request.
    """
    from ragas.metrics._answer_relevance import ResponseRelevanceInput, ResponseRelevancy

    class BatchedResponseRelevancy(ResponseRelevancy):
        async def _ascore(self, row: dict, callbacks: Any) -> float:
            assert self.llm is not None, "LLM is not set"
            responses = await self.question_generation.generate_multiple(
                data=ResponseRelevanceInput(response=row["response"]), llm=self.llm, callbacks=callbacks,
                n=self.strictness)
            if hasattr(self.embeddings, "aprime"):
                await self.embeddings.aprime([row["user_input"], *(r.question for r in responses)])
            return self._calculate_score(responses, row)

    return BatchedResponseRelevancy


def build_metrics(names: Sequence[str], *, embeddings: Any = None, llm: Any = None) -> list[Any]:
    """ragas metric objects for `names`, in that order (the classes `ragas.evaluate` runs)."""
    _ragas_env()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas.metrics._answer_similarity import SemanticSimilarity
        from ragas.metrics._bleu_score import BleuScore
        from ragas.metrics._context_precision import NonLLMContextPrecisionWithReference
        from ragas.metrics._context_recall import NonLLMContextRecall
        from ragas.metrics._faithfulness import Faithfulness
        from ragas.metrics._rouge_score import RougeScore
        from ragas.metrics._string import NonLLMStringSimilarity

    factories = {
        "non_llm_string_similarity": NonLLMStringSimilarity,
        "bleu_score": BleuScore,
        "rouge_score": lambda: RougeScore(rouge_type="rougeL", mode="fmeasure"),
        "semantic_similarity": lambda: SemanticSimilarity(embeddings=embeddings),
        "non_llm_context_precision_with_reference": NonLLMContextPrecisionWithReference,
        "non_llm_context_recall": NonLLMContextRecall,
        "faithfulness": lambda: Faithfulness(llm=llm),
        # strictness 1: at temperature 0 more generated questions are copies (see judge.py)
        "answer_relevancy": lambda: _response_relevancy_class()(llm=llm, embeddings=embeddings, strictness=1),
    }
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {sorted(factories)}")
    if embeddings is None and {"semantic_similarity", "answer_relevancy"} & set(names):
        raise ValueError("semantic_similarity and answer_relevancy need embeddings")
    if llm is None and set(JUDGE_METRICS) & set(names):
        raise ValueError("faithfulness and answer_relevancy need the LLM judge")
    metrics = [factories[n]() for n in names]
    for name, metric in zip(names, metrics, strict=True):
        assert metric.name == name, (metric.name, name)
    return metrics


def _ragas_key(metric: Any) -> str:
    """The key ragas.evaluate stores a metric's score under (RougeScore: 'rouge_score(mode=fmeasure)')."""
    from ragas.metrics.base import ModeMetric

    return f"{metric.name}(mode={metric.mode})" if isinstance(metric, ModeMetric) else metric.name


def clean(value: Any) -> float | None:
    """A finite float rounded to DECIMALS, or None for NaN, inf, None and non-numbers."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return round(number, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def _field(sample: Any, key: str) -> Any:
    return sample[key] if isinstance(sample, Mapping) else getattr(sample, key)


def score(samples: Sequence[Any], metrics_profile: str = "local", *, judge: JudgeConfig | None = None,
          embeddings: Any = None, llm: Any = None, run_config: Any = None,
          metrics: Sequence[str] | None = None, engine: str = "direct") -> list[dict[str, Any]]:
    """Per-sample RAGAS scores: one dict per sample, {"id", <metric>: float | None}, in input order.

    samples: mappings or objects with id, user_input, reference, reference_contexts and response
    (the generated answer). The eks profile needs `judge` (or a ready ragas `llm`).
    engine: "direct" (default: each metric's single_turn_ascore under one semaphore) or
    "evaluate" (ragas.evaluate); both give the same per-sample scores (tests check it).
    Call from synchronous code (a plain task): it runs its own event loop.
    """
    _ragas_env()
    names = tuple(metrics) if metrics is not None else metric_names(metrics_profile)
    if not samples:
        return []
    from ragas.run_config import RunConfig

    if run_config is None:
        # With a judge, twice its concurrency in metric calls: the judge requests themselves are
        # gated at judge.max_workers (judge.py), the extra calls render prompts, parse answers
        # and embed while the judge works. Timeout per metric call: it may make 2 judge requests.
        workers = judge.max_workers * 2 if judge is not None else 16
        timeout = (judge.timeout_s * 3) if judge is not None else 180
        run_config = RunConfig(timeout=timeout, max_retries=3, max_wait=10, max_workers=workers, seed=42)
    if embeddings is None and {"semantic_similarity", "answer_relevancy"} & set(names):
        from include.evaluation.embeddings import LocalEmbeddings

        embeddings = LocalEmbeddings()
    if llm is None and set(JUDGE_METRICS) & set(names):
        if judge is None:
            raise ValueError(f"metrics {sorted(set(JUDGE_METRICS) & set(names))} need an LLM judge: pass judge= "
                             "(judge_from_connection) or use metrics profile 'local'")
        from include.evaluation.judge import build_judge_llm

        llm = build_judge_llm(judge, run_config)

    rows = []
    for s in samples:
        contexts = list(_field(s, "reference_contexts") or [])
        rows.append({
            "user_input": _field(s, "user_input"),
            "response": _field(s, "response") or "",
            "reference": _field(s, "reference"),
            # oracle retrieval: what the model was prompted with (module docstring)
            "retrieved_contexts": contexts,
            "reference_contexts": contexts,
        })
    if embeddings is not None and hasattr(embeddings, "prime"):
        texts = [r["reference"] or " " for r in rows] + [r["response"] or " " for r in rows]
        if "answer_relevancy" in names:
            texts += [r["user_input"] for r in rows]
        embeddings.prime(texts)

    metric_objs = build_metrics(names, embeddings=embeddings, llm=llm)
    started = time.monotonic()
    if engine == "evaluate":
        raw_rows = _run_evaluate(metric_objs, rows, run_config)
    elif engine == "direct":
        raw_rows = _run_direct(metric_objs, rows, run_config)
    else:
        raise ValueError(f"engine={engine!r}: expected 'direct' or 'evaluate'")
    log.info("scored %d samples x %d metrics in %.1fs", len(rows), len(names), time.monotonic() - started)

    out = []
    for s, row, raw in zip(samples, rows, raw_rows, strict=True):
        rec: dict[str, Any] = {"id": _field(s, "id")}
        for name, value in zip(names, raw, strict=True):
            value = clean(value)
            if name in NEEDS_CONTEXTS and not row["reference_contexts"]:
                value = None  # not applicable without contexts
            rec[name] = value
        out.append(rec)
    return out


def _run_evaluate(metric_objs: list[Any], rows: list[dict], run_config: Any) -> list[list[Any]]:
    """ragas.evaluate: per-sample scores from EvaluationResult.scores, in metric order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas import EvaluationDataset, evaluate

        result = evaluate(
            EvaluationDataset.from_list(rows),
            metrics=metric_objs,
            run_config=run_config,
            raise_exceptions=False,  # a failed metric call is NaN for that sample -> None
            show_progress=False,
            allow_nest_asyncio=False,  # plain task, no running loop: asyncio.run, no patching
        )
    keys = [_ragas_key(m) for m in metric_objs]
    return [[raw.get(k) for k in keys] for raw in result.scores]


def _run_direct(metric_objs: list[Any], rows: list[dict], run_config: Any) -> list[list[Any]]:
    """Each metric's `single_turn_ascore` under one semaphore of run_config.max_workers.

    What ragas.evaluate does, minus its per-row LangChain callback groups and tracer: that
    tracer is a synchronous handler, so LangChain runs every one of its events (chain and model
    start/end, several per judge request) in a thread-pool hop. Without it the judge path keeps
    `max_workers` requests in flight on far less CPU (benchmarks/eval.py compares both).
    Same metric objects, same inputs, same order; a failing call is NaN, as in ragas.
    """
    import asyncio

    from ragas.dataset_schema import SingleTurnSample

    from include.logs import Progress

    for metric in metric_objs:
        metric.init(run_config)
    samples = [SingleTurnSample(**row) for row in rows]
    failures: dict[str, int] = {}
    # "scoring: 12 of 27 samples (44%), 3.1 samples/s, ETA 5 s" every progress interval, and at the end
    progress = Progress("scoring", "samples", total=len(samples), emit=log.info)
    pending = [len(metric_objs)] * len(samples)
    scored = [0]

    def sample_done(index: int) -> None:
        pending[index] -= 1
        if not pending[index]:
            scored[0] += 1
            progress.update(scored[0], {"failed metric calls": sum(failures.values()) or None})

    async def run_all() -> list[Any]:
        gate = asyncio.Semaphore(run_config.max_workers)

        async def one(metric: Any, sample: Any, index: int) -> Any:
            async with gate:
                try:
                    return await metric.single_turn_ascore(sample, callbacks=None, timeout=run_config.timeout)
                except Exception as exc:  # noqa: BLE001 - recorded as a missing score, like ragas
                    failures[metric.name] = failures.get(metric.name, 0) + 1
                    if failures[metric.name] <= 3:
                        log.warning("%s failed on sample %d: %s: %s", metric.name, index, type(exc).__name__,
                                    str(exc)[:300])
                    return math.nan
                finally:
                    sample_done(index)

        return await asyncio.gather(*(one(m, s, i) for i, s in enumerate(samples) for m in metric_objs))

    flat = asyncio.run(run_all())  # from a plain (sync) task: a fresh loop, no nest_asyncio
    if failures:
        log.warning("metric calls that failed (scored None): %s", failures)
    k = len(metric_objs)
    return [flat[i * k:(i + 1) * k] for i in range(len(samples))]
