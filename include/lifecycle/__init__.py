"""The lifecycle layer: one function per DAG task, composing the stage packages.

Stage packages (data, training, evaluation, registry, serving, scheduling) never import each other
sideways; whatever joins two stages (the evaluation jobs for a trained model, the gate that feeds
the registry, the rollout's aliases and quality probe, the off-hours tick) lives here. DAG files
import only this layer, lazily, inside their tasks.

- `dataset`   the dataset preparation tasks.
- `training`  validate params, resolve the dataset, plan, preflight, rendezvous, read the result;
              the off-hours side of a training run (queue for a window, hold a stopped run, cost).
- `release`   evaluation jobs, the gate, registration or rejection.
- `rollout`   resolve stable/canary, the serving state machine, close a step (`probe`), sync aliases.
- `offhours`  the off-hours tick: admission, stops, cleanup (data, capacity, rollout leftovers), report.
"""
