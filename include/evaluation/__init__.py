"""Evaluation stage: the candidate answers every eval question RAG style, RAGAS scores each answer.

- `generate`   Generator interface: `LocalTinyGenerator` (local profile, the tiny byte-level model,
               batched greedy decoding) and `VllmGenerator` (eks, vLLM offline, temperature 0).
- `scoring`    per-sample RAGAS scores, the `scores.jsonl` / `summary.json` writer, `build_job`,
               `run_job` and `evaluate_model` (what the DAG calls).
- `judge`      the LLM judge (OpenAI-compatible endpoint or Bedrock) from an Airflow connection.
- `embeddings` the packaged all-MiniLM-L6-v2 as ragas embeddings, offline, batched.
- `job`        the evaluation job spec, validated on both sides of the pod boundary.
- `artifacts`  eval-set reading, model staging and result writing on file:// or s3://.
- `k8s_pod`    the evaluator pod on the inference pool and KubernetesPodOperator arguments (eks).
- `entrypoint` `python -m include.evaluation.entrypoint --job '<json>'`: what that pod runs.
- `gate`       the registration gate over the per-sample scores (written separately).

Kept import-light: nothing here imports torch, ragas or Airflow at package import time.
"""
