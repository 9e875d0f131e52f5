# ruff: noqa: E501 - the logs below are real ones, long lines included
"""`make run`'s failure summary (scripts/run_local.py): the failing task's one-line cause, read from
its log by include.logs.failure_cause; the traceback stays in the log."""

from __future__ import annotations

from include.logs import MAX_CAUSE_CHARS, failure_cause

# A task log as the dag_test_logs listener writes it (Airflow's JSON lines, trimmed frames): the cause
# is the raised exception, not the error line the extra link logs after it.
TASK_LOG = r"""{"timestamp":"2026-12-07T22:12:12.801818Z","level":"info","event":"::endgroup::","logger":"task","loc":"task_runner.py:2232"}
{"timestamp":"2026-12-07T22:12:13.224916Z","level":"error","event":"Task failed with exception","logger":"task","loc":"task_runner.py:1639","exception":[{"exc_type":"InputFailure","exc_value":"dataset version '0123456789abcdef' is not published under file:///home/dev/llmops-finetune/.data/curated","exc_notes":[],"syntax_error":null,"is_cause":false,"frames":[{"filename":"/opt/venv/lib/python3.11/site-packages/airflow/sdk/execution_time/callback_runner.py","lineno":97,"name":"run"},{"filename":"/home/dev/llmops-finetune/dags/finetune_lifecycle.py","lineno":124,"name":"resolve_dataset"},{"filename":"/home/dev/llmops-finetune/include/lifecycle/failfast.py","lineno":30,"name":"wrapper"}],"is_group":false,"exceptions":[]},{"exc_type":"InputError","exc_value":"dataset version '0123456789abcdef' is not published under file:///home/dev/llmops-finetune/.data/curated","exc_notes":[],"syntax_error":null,"is_cause":true,"frames":[{"filename":"/home/dev/llmops-finetune/include/lifecycle/failfast.py","lineno":26,"name":"wrapper"},{"filename":"/home/dev/llmops-finetune/include/lifecycle/training.py","lineno":61,"name":"resolve_dataset"},{"filename":"/home/dev/llmops-finetune/include/data/catalog.py","lineno":160,"name":"resolve_version"}],"is_group":false,"exceptions":[]}]}
{"timestamp":"2026-12-07T22:12:13.229823Z","level":"info","event":"::group::Post Execute","logger":"task","loc":"task_runner.py:1640"}
{"timestamp":"2026-12-07T22:12:13.246554Z","level":"error","event":"XCom not found","dag_id":"finetune_lifecycle","run_id":"manual__2026-12-07T22:12:07.621022+00:00","task_id":"resolve_dataset","key":"return_value","map_index":-1,"status_code":404,"logger":"airflow.sdk.api.client","loc":"client.py:601"}
"""

# `airflow dags test` console output when the gate refuses a loosened policy (a chained traceback).
CONSOLE = """2026-12-07T22:06:22.667778Z [info     ] ::endgroup::                   [task] loc=task_runner.py:2232
2026-12-07T22:06:22.685036Z [error    ] Task failed with exception     [task] loc=task_runner.py:1639
Traceback (most recent call last):
  File "/home/dev/llmops-finetune/include/lifecycle/failfast.py", line 26, in wrapper
    return fn(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^^
  File "/home/dev/llmops-finetune/include/evaluation/gate.py", line 69, in load_policy
    raise InputError("gate_policy may only tighten the reviewed policy (include/evaluation/policy.yaml; "
include.errors.InputError: gate_policy may only tighten the reviewed policy (include/evaluation/policy.yaml; loosening it is a reviewed change there):
  - gate_policy.metrics.rouge_score.floor=0.0: may not be below the policy's 0.01

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/opt/venv/lib/python3.11/site-packages/airflow/sdk/execution_time/task_runner.py", line 1579, in _run_task_and_map_outcome
    result = _execute_task(context=context, ti=ti, log=log)
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/home/dev/llmops-finetune/include/lifecycle/failfast.py", line 30, in wrapper
    raise InputFailure(str(exc)) from exc
include.lifecycle.failfast.InputFailure: gate_policy may only tighten the reviewed policy (include/evaluation/policy.yaml; loosening it is a reviewed change there):
  - gate_policy.metrics.rouge_score.floor=0.0: may not be below the policy's 0.01
2026-12-07T22:06:22.687701Z [info     ] ::group::Post Execute          [task] loc=task_runner.py:1640
2026-12-07T22:06:25.922939Z [info     ] Marking run <DagRun finetune_lifecycle @ 2026-12-07 22:06:12+00:00> failed [airflow.models.dagrun.DagRun]
DagRun failed
"""

# No task ran: the run's params were refused when `airflow dags test` created it.
REFUSED_PARAMS = """  File "/opt/venv/lib/python3.11/site-packages/airflow/serialization/definitions/param.py", line 151, in _validate_one
    raise ParamValidationError(f"Invalid input for param {k}: {e}") from None
airflow.sdk.exceptions.ParamValidationError: Invalid input for param nodes: 65 is greater than the maximum of 64

Failed validating 'maximum' in schema['allOf'][0]:
    {'minimum': 1, 'maximum': 64, 'rule': 'A whole number from 1 to 64.'}
"""


def test_the_task_logs_exception_not_the_error_logged_after_it():
    assert failure_cause(TASK_LOG) == (
        "InputFailure: dataset version '0123456789abcdef' is not published under "
        "file:///home/dev/llmops-finetune/.data/curated")


def test_console_output_gives_the_last_tracebacks_exception_with_the_first_item_it_lists():
    cause = failure_cause(CONSOLE)
    assert cause == ("InputFailure: gate_policy may only tighten the reviewed policy (include/evaluation/policy.yaml; "
                     "loosening it is a reviewed change there): - gate_policy.metrics.rouge_score.floor=0.0: "
                     "may not be below the policy's 0.01")
    assert "\n" not in cause and "File " not in cause


def test_a_command_error_without_a_task_and_a_partial_traceback():
    assert failure_cause("Traceback (most recent call last):\n" + REFUSED_PARAMS) == (
        "ParamValidationError: Invalid input for param nodes: 65 is greater than the maximum of 64")


def test_no_exception_falls_back_to_the_last_error_record_and_else_says_nothing():
    log = ('{"timestamp":"t","level":"info","event":"starting"}\n'
           '{"timestamp":"t","level":"error","event":"Task exited with return code -9 (killed)"}\n'
           '{"timestamp":"t","level":"info","event":"::endgroup::"}\n')
    assert failure_cause(log) == "Task exited with return code -9 (killed)"
    assert failure_cause('{"level":"info","event":"ok"}\n') is None
    assert failure_cause("") is None


def test_a_long_message_stays_one_short_line():
    cause = failure_cause("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nValueError: "
                          + "x" * 5000 + "\nmore\n")
    assert len(cause) == MAX_CAUSE_CHARS and cause.startswith("ValueError: xxx") and "\n" not in cause
