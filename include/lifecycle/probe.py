"""The quality probe: the canary's answers against stable's, on the curated eval set, at every step.

It joins two stages (serving's model servers, evaluation's metrics and paired comparison), so it
lives in the lifecycle layer.

A deterministic sample of the eval set (the first `sample_size` by a stable hash of the id) goes
straight to the canary's and the stable's servers (their own URLs, outside the route, so the probe
neither skews the split nor counts in the gateway's metrics), with the evaluator's prompt layout
and greedy decoding. Both answer sets are scored with the gate's local metrics (include.evaluation)
and compared pairwise per sample: a metric fails when the bootstrap interval of the mean paired
difference (canary - stable) lies wholly below -margin, the gate's no-regression rule.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from include.evaluation.evalset import EvalSample, load_eval_set
from include.evaluation.gate import paired_bootstrap_ci
from include.evaluation.generate import build_prompt
from include.serving.analysis import FAILED, INCONCLUSIVE, SUCCESSFUL
from include.serving.loadgen import Client

log = logging.getLogger(__name__)


def sample(samples: Sequence[EvalSample], size: int) -> list[EvalSample]:
    """The same `size` samples on every step and every retry."""
    ranked = sorted(samples, key=lambda s: hashlib.sha256(s.id.encode()).hexdigest())
    return ranked[:size]


def answers(base_url: str, served_name: str, samples: Sequence[EvalSample], max_tokens: int) -> list[str]:
    client = Client(base_url, timeout=60)
    out = []
    for s in samples:
        status, body = client.post("/v1/completions", {"model": served_name, "max_tokens": max_tokens,
                                                       "prompt": build_prompt(s.user_input, s.reference_contexts)})
        if status != 200:
            raise RuntimeError(f"{served_name} answered {status} to the probe")
        out.append(str(body["choices"][0]["text"]).strip())
    return out


def compare(canary: Sequence[Mapping[str, Any]], stable: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any]) -> dict:
    """Per metric: means, mean paired difference, its interval and the outcome; overall phase."""
    result: dict[str, Any] = {"metrics": {}}
    for name in cfg["metrics"]:
        pairs = [(c.get(name), s.get(name)) for c, s in zip(canary, stable, strict=True)]
        diffs = [c - s for c, s in pairs if c is not None and s is not None
                 and not math.isnan(c) and not math.isnan(s)]
        if not diffs:
            result["metrics"][name] = {"outcome": INCONCLUSIVE, "mean_diff": None, "message": "no paired scores"}
            continue
        low, high = paired_bootstrap_ci(diffs, confidence=cfg["confidence"], n_bootstrap=cfg["n_bootstrap"],
                                        seed=cfg["seed"], key=name)
        mean = sum(diffs) / len(diffs)
        failed = high < -cfg["margin"]
        result["metrics"][name] = {
            "outcome": FAILED if failed else SUCCESSFUL, "mean_diff": mean, "ci": [low, high], "n": len(diffs),
            "message": f"canary-stable {mean:+.3f}, {cfg['confidence']:.0%} CI [{low:+.3f}, {high:+.3f}], "
                       f"margin {cfg['margin']}",
        }
    outcomes = [m["outcome"] for m in result["metrics"].values()]
    result["phase"] = FAILED if FAILED in outcomes else INCONCLUSIVE if INCONCLUSIVE in outcomes else SUCCESSFUL
    return result


def run(cfg: Mapping[str, Any], eval_uri: str, canary: tuple[str, str], stable: tuple[str, str] | None,
        scorer: Callable[[list[dict]], list[dict]] | None = None) -> dict:
    """Probe `canary` (url, served name) against `stable`; without a stable there is nothing to compare."""
    if stable is None or cfg["sample_size"] == 0:
        return {"phase": SUCCESSFUL, "metrics": {}, "skipped": "no stable to compare with"}
    picked = sample(load_eval_set(eval_uri), cfg["sample_size"])
    if len(picked) < 2:
        return {"phase": INCONCLUSIVE, "metrics": {}, "skipped": f"eval set too small ({len(picked)})"}
    if scorer is None:
        from include.evaluation.scoring import score

        def scorer(rows: list[dict]) -> list[dict]:
            return score(rows, "local", metrics=list(cfg["metrics"]))

    scored = {}
    for role, (url, name) in (("canary", canary), ("stable", stable)):
        texts = answers(url, name, picked, cfg["max_tokens"])
        rows = [{"id": s.id, "user_input": s.user_input, "reference": s.reference,
                 "reference_contexts": list(s.reference_contexts), "response": t} for s, t in zip(picked, texts,
                                                                                               strict=True)]
        scored[role] = scorer(rows)
    out = compare(scored["canary"], scored["stable"], cfg)
    out["n"] = len(picked)
    log.info("quality probe on %d samples: %s", len(picked), out["phase"])
    return out
