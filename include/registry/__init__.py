"""The model registry stage: MLflow runs, lineage, model versions and the champion/challenger aliases."""
