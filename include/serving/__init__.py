"""Serving and the canary rollout: model servers, the traffic router, metrics, analysis, the rollout.

Two seams, each chosen once from `settings.profile`:
- router (`router.get_router`): the Gateway API HTTPRoute is the single source of truth for the split;
  local keeps it in a file and translates it into Envoy, eks edits it through the Kubernetes API;
- metrics (`metrics.get_metrics`): a Prometheus HTTP API client; local Prometheus, or in-cluster /
  Amazon Managed Prometheus (SigV4) on eks.
Nothing else in this package branches on the profile.
"""
