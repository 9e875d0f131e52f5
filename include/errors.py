"""The one error for bad input: a parameter, plan, job, source or setting the run cannot use.

Plain Python (a ValueError), because the trainer and evaluator images raise it too and have no
Airflow. In Airflow tasks the lifecycle layer re-raises it as a fail-fast task error
(`include.lifecycle.failfast`): a retry cannot fix a wrong value.
"""

from __future__ import annotations


class InputError(ValueError):
    """A value the run cannot use; the message names the field and what it accepts. Nothing was written."""


# What a platform's API answered, in the project's own words (the eks bundle maps the Kubernetes
# API's 404, 409 and 403 to these; the local bundle raises them for the same situations).
class NotFound(LookupError):
    """The object does not exist."""


class Conflict(RuntimeError):
    """The object exists already, or changed since it was read (a stale resourceVersion)."""


class Forbidden(PermissionError):
    """The identity the code runs as may not do this; the message names the verb and the object."""
