"""Evaluation stage: the candidate answers every eval question RAG style, RAGAS scores each answer.

- `generate`   Generator interface: `LocalTinyGenerator` (local profile, the tiny byte-level model,
               batched greedy decoding) and `VllmGenerator` (eks, vLLM offline, temperature 0).
- `scoring`    per-sample RAGAS scores, the LLM judge built from an Airflow connection, the
               `scores.jsonl` / `summary.json` writer and `evaluate_model`, what the DAG calls.
- `artifacts`  eval-set reading, model staging and result writing on file:// or s3://.
- `k8s_pod`    the evaluator pod on the inference pool and KubernetesPodOperator arguments (eks).
- `entrypoint` `python -m include.evaluation.entrypoint --job '<json>'`: what that pod runs.
- `gate`       the registration gate over the per-sample scores (written separately).

Kept import-light: nothing here imports torch, ragas or Airflow at package import time.
"""
