"""A person's choice with a deadline that says what happened when nobody answered.

Airflow's HITLBranchOperator with `defaults` resolves a timeout by recording the defaults as the
response: the task's Required Action tab then reads "Response received at <time>", with no user
and no word of a timeout, as if someone had chosen. `TimedChoiceOperator` keeps its default out of
the request, so a timeout leaves the request unanswered (the UI's state: "No Response Received"),
and the request's body says up front what happens without an answer, and by when. On the timeout
the task takes `timeout_default` itself and its log says so: "approval timed out: no answer within
2 min 00 s; took the default: abort".
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLBranchOperator

from include.logs import duration

log = logging.getLogger(__name__)


class TimedChoiceOperator(HITLBranchOperator):
    """HITLBranchOperator whose unanswered request takes `timeout_default` after `response_timeout`."""

    def __init__(self, *, timeout_default: str, response_timeout: timedelta, **kwargs: Any) -> None:
        if kwargs.get("defaults"):
            raise ValueError("give the timeout's choice as timeout_default, not defaults (see the module docstring)")
        super().__init__(response_timeout=response_timeout, **kwargs)
        if timeout_default not in self.options:
            raise ValueError(f"timeout_default {timeout_default!r} is not one of the options {self.options}")
        self.timeout_default = timeout_default

    def execute(self, context):
        deadline = datetime.now(UTC) + self.response_timeout
        self.body = (f"{self.body or ''}\n\n**No answer by {deadline:%Y-%m-%d %H:%M:%S} UTC** "
                     f"({duration(self.response_timeout.total_seconds())} from the request) **takes the default: "
                     f"{self.timeout_default}**.").strip()
        log.info("waiting for a person's choice (%s) until %s UTC; without one: %s",
                      " or ".join(self.options), f"{deadline:%H:%M:%S}", self.timeout_default)
        return super().execute(context)

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        if event.get("error_type") == "timeout":
            waited = duration(self.response_timeout.total_seconds())
            log.warning("approval timed out: no answer within %s; took the default: %s", waited,
                             self.timeout_default)
            event = {"chosen_options": [self.timeout_default], "params_input": {},
                     "responded_at": datetime.now(UTC), "responded_by_user": None}
        else:
            user = event.get("responded_by_user")
            who = user.get("name") if isinstance(user, dict) else getattr(user, "name", None)
            log.info("answered by %s: %s", who or "someone", ", ".join(event.get("chosen_options") or []))
        return super().execute_complete(context, event)
