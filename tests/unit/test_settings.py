import pytest

from include.settings import Settings, SettingsError


def test_defaults_are_the_local_profile():
    s = Settings.from_env({})
    assert s.profile == "local"
    assert s.data_root.startswith("file://")
    assert s.storage_conn_id() is None


def test_environment_overrides_and_trailing_slashes():
    s = Settings.from_env({"LLMOPS_PROFILE": "eks", "LLMOPS_DATA_ROOT": "s3://bucket/llmops/",
                           "LLMOPS_TRAINING_NAMESPACE": "team-a", "LLMOPS_AWS_CONN_ID": "aws_llm"})
    assert (s.profile, s.data_root, s.training_namespace) == ("eks", "s3://bucket/llmops", "team-a")
    assert s.storage_conn_id() == "aws_llm"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"LLMOPS_PROFILE": "prod"}, "LLMOPS_PROFILE='prod': no such platform; expected one of eks, local"),
        ({"LLMOPS_DATA_ROOT": "/tmp/data"}, "LLMOPS_DATA_ROOT='/tmp/data': expected a URI"),
        ({"LLMOPS_PROFILE": "eks", "LLMOPS_DATA_ROOT": "file:///data"}, "with scheme s3://"),
        ({"LLMOPS_DATA_ROOT": "s3://"}, "expected a URI"),
        ({"LLMOPS_TRAINING_NAMESPACE": "Team_A"}, "LLMOPS_TRAINING_NAMESPACE='Team_A': not a valid Kubernetes name"),
        ({"LLMOPS_RAW_EVENTS_QUEUE": "my-queue"}, "LLMOPS_RAW_EVENTS_QUEUE='my-queue': expected a URI"),
        ({"LLMOPS_RAW_EVENTS_POLL_SECONDS": "soon"}, "LLMOPS_RAW_EVENTS_POLL_SECONDS='soon': expected an integer"),
        ({"LLMOPS_RAW_EVENTS_POLL_SECONDS": "0"}, "expected an integer with value >= 1"),
        ({"LLMOPS_OFFHOURS_CRON": "every minute"}, "LLMOPS_OFFHOURS_CRON='every minute': expected five cron fields"),
        ({"LLMOPS_OFFHOURS_CRON": "* * * *"}, "expected five cron fields"),
    ],
)
def test_bad_values_fail_with_the_variable_name(env, message):
    with pytest.raises(SettingsError) as e:
        Settings.from_env(env)
    assert message in str(e.value)


def test_offhours_ticks_every_five_minutes_on_both_profiles_unless_set():
    """Once unpaused, a laptop's offhours DAG must not run every minute; five minutes is the margin it
    stops experiment runs before a window closes. Tests that open a window a minute ahead set it."""
    assert Settings.from_env({}).offhours_cron == "*/5 * * * *"
    assert Settings.from_env({"LLMOPS_PROFILE": "eks", "LLMOPS_DATA_ROOT": "s3://b/x"}).offhours_cron == "*/5 * * * *"
    assert Settings.from_env({"LLMOPS_OFFHOURS_CRON": "* * * * *"}).offhours_cron == "* * * * *"
