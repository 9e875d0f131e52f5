"""Errors that name bad input. Airflow fails these at once: a retry cannot fix a wrong value."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException


class InputError(AirflowFailException, ValueError):
    """A parameter, source or setting the run cannot use; nothing was written."""


class NothingToDo(AirflowSkipException):
    """The run has nothing to work on (no new data, nothing new to train): it skips, it does not fail."""
