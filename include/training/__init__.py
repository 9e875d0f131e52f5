"""Training stage: the trainer entrypoint, its local (tiny) and EKS (NeMo) backends, the local launcher."""
