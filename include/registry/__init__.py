"""The model registry stage, a plain MLflow adapter: runs and lineage (tracking), model versions and
the champion/challenger aliases (mlflow_registry). It imports no other stage."""
