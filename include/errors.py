"""The one error for bad input: a parameter, plan, job, source or setting the run cannot use.

Plain Python (a ValueError), because the trainer and evaluator images raise it too and have no
Airflow. In Airflow tasks the lifecycle layer re-raises it as a fail-fast task error
(`include.lifecycle.failfast`): a retry cannot fix a wrong value.
"""

from __future__ import annotations


class InputError(ValueError):
    """A value the run cannot use; the message names the field and what it accepts. Nothing was written."""
