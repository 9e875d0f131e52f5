"""Training stage: the rules and plan (params, plan, planning), the trainer entrypoint, its local (tiny)
and EKS (NeMo) backends, the local launcher, the rendezvous and the JobSet renderer (k8s_job)."""
