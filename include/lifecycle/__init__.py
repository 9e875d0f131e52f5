"""The lifecycle layer: one function per DAG task, composing the stage packages.

Stage packages (data, training, evaluation, registry; next serving and scheduling) never import
each other sideways; whatever joins two stages (the evaluation jobs for a trained model, the gate
that feeds the registry) lives here. DAG files import only this layer, lazily, inside their tasks.

- `training`  validate params, resolve the dataset, plan, preflight, rendezvous, read the result.
- `release`   evaluation jobs, the gate, registration or rejection.
"""
