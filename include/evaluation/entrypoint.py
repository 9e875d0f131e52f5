"""The evaluator entrypoint: `python -m include.evaluation.entrypoint --job '<json>'`.

What the evaluator pod runs on the inference pool (images/evaluator/Dockerfile): stage the model
from S3, answer the eval set with vLLM (temperature 0), score with RAGAS (non-LLM metrics, local
embeddings, the LLM judge whose key is in LLMOPS_JUDGE_API_KEY), write responses.jsonl,
scores.jsonl, summary.json and result.json under the job's output URI, and the result to
`$LLMOPS_XCOM_PATH` (default /airflow/xcom/return.json) for a KubernetesPodOperator with
do_xcom_push. The job is one argv item, validated before anything runs; a bad job exits with 2
(no retry can fix it), any other failure with 1.

No Airflow in the image: storage goes through fsspec with the pod's identity (include/storage/files.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from include.container import USER_ERROR_EXIT_CODE, write_result

WORKDIR_ENV = "LLMOPS_EVAL_WORKDIR"  # scratch space for the staged model (an emptyDir on EKS)

log = logging.getLogger("include.evaluation.entrypoint")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m include.evaluation.entrypoint",
                                     description="Generate answers for an eval set and score them with RAGAS.")
    parser.add_argument("--job", required=True, help="the evaluation job as one JSON argument")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    for key, value in (("RAGAS_DO_NOT_TRACK", "true"), ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)

    from include.errors import InputError
    from include.evaluation.job import parse_job_argument
    try:
        job = parse_job_argument(args.job)
    except InputError as exc:
        print(f"evaluator: invalid job: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE

    from include.evaluation.run import run_job

    log.info("evaluating %s on %s (generator %s, metrics %s, limit %s) -> %s", job["model_uri"], job["eval_uri"],
             job["generator"], job["metrics_profile"], job["limit"], job["output_uri"])
    result = run_job(job, workdir=os.environ.get(WORKDIR_ENV) or None)
    path = write_result(result)
    log.info("n=%d means=%s; result at %s and %s", result["n"], json.dumps(result["means"], sort_keys=True),
             f"{job['output_uri']}/result.json", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
