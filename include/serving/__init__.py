"""Serving and the canary rollout: the model server, the HTTPRoute's edits, analysis, the rollout's
state machine, and the interfaces of the serving seams (router, servers, metrics), which each
platform implements (include/platforms/<name>/)."""
