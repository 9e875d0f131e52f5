"""One human-readable line per task that did work, for the end of its task log.

Pure functions of the results the tasks return (or the manifests and decisions they wrote), so the
log says what happened even where the UI cuts the "Returned value was: {...}" line short:

    curated 266 of 308 records (20 quarantined, 19 exact + 3 near duplicates) -> dataset ce0aee20357a4059 ...
    training: 240 steps on 2 ranks, loss 5.576 -> 2.428 in 1 min 01 s, checkpoint file:///...
    gate: PASSED on 27 samples, no champion; rouge_score 0.045 (floor 0.01), ...
    registered llmops-assistant v3 (challenger)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from include.logs import duration, number, printable
from include.training.progress import summary_line as training_line  # noqa: F401 - one import surface


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def curated(manifest: Mapping[str, Any], seconds: float | None = None) -> str:
    """'curated 266 of 308 records (20 quarantined, 19 exact + 3 near duplicates) -> dataset <v>
    (train 213, validation 26, test 27) in 3 s'."""
    c, s = manifest.get("counts", {}), manifest.get("splits", {})
    dropped = [f"{c.get('quarantined', 0)} quarantined",
               f"{c.get('exact_duplicates', 0)} exact + {c.get('near_duplicates', 0)} near duplicates"]
    reasons = manifest.get("quarantine") or {}
    if reasons:
        dropped[0] += ": " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    line = (f"curated {c.get('written', 0)} of {_plural(c.get('read', 0), 'record')} ({'; '.join(dropped)}) "
            f"-> dataset {manifest.get('version')} ("
            + ", ".join(f"{k} {s[k]}" for k in ("train", "validation", "test") if k in s) + ")")
    pii = manifest.get("pii") or {}
    if pii:
        line += f", {sum(pii.values())} PII redactions"
    if seconds is not None:
        line += f" in {duration(seconds)}"
    return printable(line)


def published(live: Mapping[str, Any], ours: bool) -> str:
    if not ours:
        return printable(f"dataset {live['version']} was already published by run {live.get('run_id')}: "
                         "no new asset event")
    return printable(f"published dataset {live['version']} ({live.get('counts', {}).get('written', 0)} records) "
                     f"at {live.get('uri')}; asset event sent, retraining can start")


def dataset_chosen(dataset: Mapping[str, Any]) -> str:
    splits = dataset.get("splits") or {}
    return printable(f"training on dataset {dataset['version']} ("
                     + ", ".join(f"{k} {v}" for k, v in splits.items()) + f") at {dataset.get('uri')}")


def planned(out: Mapping[str, Any]) -> str:
    """'plan: run ft-3a79, 2 nodes x 1 GPUs (local, production pool), 240 steps of 16 x 256 tokens,
    tiny backend; estimate 0 GPU-h $0.00'."""
    p, e = out["plan"], out.get("estimate") or {}
    return printable(f"plan: run {p['run_name']}, {p['nodes']} nodes x {p['gpus_per_node']} GPUs "
                     f"({p.get('instance_type')}, {p.get('pool')} pool), {p['max_steps']} steps of "
                     f"{p.get('global_batch_size')} x {p.get('seq_length')} tokens, {p['backend']} backend; "
                     f"estimate {number(e.get('gpu_hours', 0.0))} GPU-h ${e.get('cost_usd', 0.0):,.2f}")


def trained(result: Mapping[str, Any] | None) -> str:
    """The training task's last line, from rank 0's result (None: nothing launched)."""
    if not result:
        return "training: no result (nothing was launched)"
    line = training_line(result.get("metrics") or {}, result.get("checkpoint_uri"))
    return printable(f"{line}; model {result['model_uri']}" if result.get("model_uri") else line)


def evaluated(result: Mapping[str, Any], role: str = "candidate", output_uri: str | None = None) -> str:
    """'evaluated candidate on 27 samples: rouge_score 0.045, bleu_score 0.012, ... -> <output>'."""
    means = result.get("means") or {}
    scores = ", ".join(f"{k} {number(v) if v is not None else 'n/a'}" for k, v in means.items())
    line = f"evaluated {role} on {_plural(result.get('n', 0), 'sample')}: {scores or 'no scores'}"
    return printable(line + (f" -> {output_uri}" if output_uri else ""))


def gate(decision: Mapping[str, Any], report_uri: str | None = None, champion: str | None = None) -> str:
    """'gate: PASSED on 27 samples vs champion v2; rouge_score 0.045 (floor 0.01, champion 0.04,
    delta +0.005); ...; report <uri>' or 'gate: FAILED (1 reason): ...'."""
    metrics = decision.get("metrics") or {}
    n = max((m.get("n_candidate") or 0 for m in metrics.values()), default=0)
    against = (f"vs champion v{champion}" if champion else "vs the champion") if decision.get("champion_present") \
        else "no champion to compare"
    verdict = "PASSED" if decision.get("passed") else f"FAILED ({_plural(len(decision.get('reasons', [])), 'reason')})"
    parts = []
    for name, m in metrics.items():
        mean = m.get("candidate_mean")
        detail = [f"floor {number(m['floor'])}"] if m.get("floor") is not None else []
        if m.get("champion_mean") is not None:
            detail.append(f"champion {number(m['champion_mean'])}")
        if m.get("delta") is not None:
            detail.append(f"delta {m['delta']:+.4f}")
        parts.append(f"{name} {number(mean) if mean is not None else 'n/a'}"
                     + (f" ({', '.join(detail)})" if detail else ""))
    line = f"gate: {verdict} on {_plural(n, 'sample')}, {against}; " + ", ".join(parts)
    if not decision.get("passed") and decision.get("reasons"):
        line += "; why: " + "; ".join(decision["reasons"])
    return printable(line + (f"; report {report_uri}" if report_uri else ""))


def registered(out: Mapping[str, Any]) -> str:
    """'registered llmops-assistant v3 (challenger; champion stays v2)': only the rollout moves champion."""
    role = "challenger" + (f"; champion stays v{out['champion']}" if out.get("champion") else "")
    return printable(f"registered {out['model_name']} v{out['version']} ({role}) from {out.get('source')}")


def rejected(out: Mapping[str, Any]) -> str:
    reasons = out.get("reasons") or []
    return printable(f"rejected: the candidate is not registered ({_plural(len(reasons), 'reason')}): "
                     + "; ".join(reasons))
