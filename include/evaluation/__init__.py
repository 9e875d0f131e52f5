"""Evaluation stage: the candidate answers every eval question RAG style, RAGAS scores each answer.

- `generate`   Generator interface: `LocalTinyGenerator` (local profile, the tiny byte-level model,
               batched greedy decoding) and `VllmGenerator` (eks, vLLM offline, temperature 0).
- `scoring`    per-sample RAGAS scores.
- `run`        one evaluation run (`run_job`): generate, score, write scores, summary and result.
- `judge`      the LLM judge (OpenAI-compatible endpoint or Bedrock) from an Airflow connection.
- `embeddings` the packaged all-MiniLM-L6-v2 as ragas embeddings, offline, batched.
- `job`        the evaluation job spec (`build_job`), validated on both sides of the pod boundary.
- `evalset`    the eval set's samples and the output file names (storage: include/storage/files.py).
- `k8s_pod`    the evaluator pod on the inference pool (eks; plugins/ maps it to the provider).
- `entrypoint` `python -m include.evaluation.entrypoint --job '<json>'`: what that pod runs.
- `gate`       the registration gate over the per-sample scores (written separately).

Kept import-light: nothing here imports torch, ragas or Airflow at package import time.
"""
