"""The Airflow UI as a person uses it, in a real browser (Debian's chromium through chromium-driver)
against a real api-server and scheduler: the trigger form's sections and fields, invalid values
refused with a message naming the field and no run created, a valid dry run that succeeds in the
grid, then a short real run: its training log shows progress lines and the summary, and the gate's
"MLflow run" extra link (the task's Details tab) opens that run in a real MLflow UI.

Screenshots land in `test-artifacts/ui/` (git-ignored); the README's are copied from there.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
SECTIONS = ["Model and data", "Training", "Compute", "Gate and registry"]
FIELDS = {"Model and data": ["base_model", "dataset_version", "method", "lora_rank"],
          "Training": ["max_steps", "learning_rate", "checkpoint_interval"],
          "Compute": ["nodes", "gpus_per_node", "tensor_parallel", "pipeline_parallel", "pool", "dry_run"]}


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


class Page:
    """The few gestures the test needs, patient with React re-rendering the elements it holds."""

    def __init__(self, driver, timeout: float = 90):
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.wait = driver, WebDriverWait(driver, timeout)

    def until(self, fn):
        from selenium.common.exceptions import (
            ElementClickInterceptedException,
            ElementNotInteractableException,
            StaleElementReferenceException,
        )

        def attempt(_):
            try:
                return fn() or False
            except (StaleElementReferenceException, ElementNotInteractableException,
                    ElementClickInterceptedException, StopIteration, IndexError):
                return False

        return self.wait.until(attempt)

    def buttons(self, text: str):
        from selenium.webdriver.common.by import By

        # One XPath query, not a round trip per button of the page.
        return [b for b in self.d.find_elements(By.XPATH, f"//button[normalize-space(.)='{text}']") if b.is_displayed()]

    def click(self, text: str, last: bool = False):
        def go():
            button = self.buttons(text)[-1 if last else 0]
            self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
            button.click()
            return True

        self.until(go)

    def type(self, field: str, text: str):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        def go():
            el = self.d.find_element(By.NAME, f"element_{field}")
            self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
            el.send_keys(Keys.CONTROL, "a")
            el.send_keys(Keys.DELETE)
            el.send_keys(text)
            return True

        self.until(go)

    def check(self, field: str) -> None:
        """A checkbox drawn as a switch: its input is visually hidden, so click it through the DOM."""
        from selenium.webdriver.common.by import By

        def go():
            el = self.d.find_element(By.NAME, f"element_{field}")
            if not el.is_selected():
                self.d.execute_script("arguments[0].click()", el)
            return el.is_selected()

        self.until(go)

    def has_field(self, field: str) -> bool:
        from selenium.webdriver.common.by import By

        return bool(self.d.find_elements(By.NAME, f"element_{field}"))

    def dialog_text(self) -> str:
        from selenium.webdriver.common.by import By

        return max((e.text for e in self.d.find_elements(By.CSS_SELECTOR, "[role=dialog]")), key=len, default="")

    def shot(self, name: str) -> None:
        self.d.save_screenshot(str(SHOTS / f"{name}.png"))


@pytest.fixture
def mlflow_ui(tmp_path):
    """`mlflow ui` on a free loopback port over the test's tracking store: where the extra links point."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = open(tmp_path / "mlflow-ui.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", tracking], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "tracking": tracking, "ready": lambda: _answers(url + "/health")}
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def publish_sample_dataset(data_root: str) -> str:
    from include.data.catalog import publish, stage
    from include.data.pipeline import PrepConfig
    from include.sample_data import stage_sample

    raw = stage_sample(data_root)
    manifest = stage(data_root, [f"{raw}/dt=2026-11-01"], PrepConfig(), "ui-test")
    return publish(data_root, manifest, "ui-test")[0]["version"]


def open_trigger_form(page: Page, url: str) -> None:
    page.d.get(f"{url}/dags/finetune_lifecycle")
    page.click("Trigger")
    page.until(lambda: page.buttons("Compute"))


def test_trigger_form_refuses_bad_values_then_runs_with_progress_and_links(airflow_stack, browser, mlflow_ui,
                                                                          tmp_path):
    data_root = (tmp_path / "data").as_uri()
    version = publish_sample_dataset(data_root)
    stack = airflow_stack(
        env={"LLMOPS_PROFILE": "local", "LLMOPS_DATA_ROOT": data_root,
             "LLMOPS_CHECKPOINT_ROOT": str(tmp_path / "checkpoints"),
             "LLMOPS_MLFLOW_TRACKING_URI": mlflow_ui["tracking"], "LLMOPS_MLFLOW_UI_URL": mlflow_ui["url"],
             "LLMOPS_PROGRESS_INTERVAL_S": "1"},
        config={"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                # Only the runs this test triggers: no nightly run when the form unpauses the DAG.
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"},
        api_apps="core,execution")
    stack.wait_for_dag("finetune_lifecycle")
    page = Page(browser)

    open_trigger_form(page, stack.api_url)
    text = page.dialog_text()
    for name in SECTIONS:
        assert name in text, f"section {name!r} missing from the form"
    for name, fields in FIELDS.items():
        page.click(name)
        for field in fields:
            assert page.until(lambda f=field: page.has_field(f)), f"{field} missing from section {name}"
    page.shot("trigger-form")

    # An invalid value: the API refuses it with HTTP 400 naming the field; no run is created. (Numbers
    # out of range cannot be entered: the form clamps them to the schema's minimum and maximum.)
    for section, field, bad, words in [("Model and data", "dataset_version", "latest!", "Dataset version")]:
        page.d.refresh()
        open_trigger_form(page, stack.api_url)
        page.click(section)
        page.type(field, bad)
        page.click("Trigger", last=True)
        message = page.until(lambda: "400" in page.dialog_text() and page.dialog_text())
        assert f"param {field}" in message and words in message, message
        page.shot(f"refused-{field}")
    assert stack.dag_runs("finetune_lifecycle") == []

    page.d.refresh()
    open_trigger_form(page, stack.api_url)
    page.click("Model and data")
    page.type("dataset_version", version)
    page.click("Compute")
    page.check("dry_run")
    page.click("Trigger", last=True)
    [run] = stack.wait_for_runs("finetune_lifecycle", 1, timeout=300)
    assert run["state"] == "success", stack.task_states("finetune_lifecycle")
    states = {t["task_id"]: t["state"] for t in stack.task_states("finetune_lifecycle")}
    assert states["preflight"] == "success" and states["launch_training"] == "skipped", states

    # A short real run from the form: the training log shows progress, the gate links to MLflow.
    page.d.refresh()
    open_trigger_form(page, stack.api_url)
    page.click("Model and data")
    page.type("dataset_version", version)
    page.click("Training")
    page.type("max_steps", "30")
    page.type("checkpoint_interval", "10")
    page.click("Trigger", last=True)
    runs = stack.wait_for_runs("finetune_lifecycle", 2, timeout=420)
    real = next(r for r in runs if r["run_id"] != run["run_id"])
    assert real["state"] == "success", stack.task_states("finetune_lifecycle")
    tasks = f"{stack.api_url}/dags/finetune_lifecycle/runs/{real['run_id']}/tasks"

    def body() -> str:
        return page.d.find_element("tag name", "body").text

    page.d.get(f"{stack.api_url}/dags/finetune_lifecycle/runs/{real['run_id']}")
    page.until(lambda: "success" in body().lower())
    time.sleep(2)  # the grid's boxes finish drawing
    page.shot("run-grid")

    page.d.get(f"{tasks}/launch_training")
    page.until(lambda: "checkpoint written at step 30" in body())
    text = body()
    assert "training: step" in text and "loss" in text and "ETA" in text, text[-3000:]
    assert "training: 30 steps on 2 ranks" in text, text[-3000:]  # the summary line
    page.shot("task-log")

    from selenium.webdriver.common.by import By

    page.d.get(f"{tasks}/gate/details")  # extra links live in the task instance's Details tab
    link = page.until(lambda: page.d.find_element(By.XPATH, "//a[normalize-space(.)='MLflow run'][@href]"))
    page.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    href = link.get_attribute("href")
    assert href.startswith(mlflow_ui["url"] + "/#/experiments/"), href
    page.shot("gate-links")
    from mlflow import MlflowClient

    name = MlflowClient(mlflow_ui["tracking"]).get_run(href.rsplit("/", 1)[1]).info.run_name
    page.until(mlflow_ui["ready"])
    page.d.get(href)
    page.until(lambda: name in body())
    page.shot("mlflow-run")
