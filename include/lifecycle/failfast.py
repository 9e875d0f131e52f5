"""Bad input fails an Airflow task at once: an InputError becomes Airflow's no-retry failure."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from include.errors import InputError

F = TypeVar("F", bound=Callable)


class InputFailure(AirflowFailException, InputError):
    """An InputError inside a task: still an InputError, and Airflow does not retry it."""


def fail_fast(fn: F) -> F:
    """Re-raise InputError from `fn` as InputFailure (same message, original chained)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputFailure:
            raise
        except InputError as exc:
            raise InputFailure(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


class NothingToDo(AirflowSkipException):
    """The run has nothing to work on (no new data, nothing new to train): it skips, it does not fail."""
