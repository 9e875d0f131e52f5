"""The DAG ids code refers to across DAGs (a trigger, a run's deterministic names, links)."""

PREPARE_DATASET = "prepare_dataset"
FINETUNE_LIFECYCLE = "finetune_lifecycle"
ROLLOUT_MODEL = "rollout_model"
OFFHOURS = "offhours"
