"""The Airflow UI as a person uses it, in a real browser (Debian's chromium through chromium-driver)
against a real api-server and scheduler:
- a run `airflow dags test` made (as `make run` makes them): its task logs open in the UI, with the
  summary line, and its "Dataset manifest" link opens the manifest;
- the trigger form's sections and fields; invalid values refused with a message naming the field and
  no run created: a dataset version, a typo in the gate policy ({"flor": ...}), and 0 nodes (typed,
  left as typed by the form, refused on Trigger, not silently raised to 1);
- a valid dry run that succeeds in the grid, then a short real run: its training log shows progress
  lines and the summary, the gate's "MLflow run" link opens that run in a real MLflow UI and its
  "Gate report" link opens the report, served by the api-server.

Screenshots land in `test-artifacts/ui/` (git-ignored); the README's are copied from there.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from include import prereqs

pytestmark = pytest.mark.slow

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
SECTIONS = ["Model and data", "Training", "Compute", "Gate and registry"]
FIELDS = {"Model and data": ["base_model", "dataset_version", "method", "lora_rank"],
          "Training": ["max_steps", "learning_rate", "checkpoint_interval"],
          "Compute": ["nodes", "gpus_per_node", "tensor_parallel", "pipeline_parallel", "pool", "dry_run"]}


@pytest.fixture
def browser():
    chromium, chromedriver = prereqs.find("chromium"), prereqs.find("chromedriver")  # missing: one line
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = chromium
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
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

    def insert_json(self, field: str, text: str) -> None:
        """Replace an object field's JSON (a Monaco editor) with `text` in one edit, as a paste would:
        typed key by key, the form re-formats the JSON under the cursor at each valid prefix."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        def go():
            box = self.d.find_element(By.ID, f"element_{field}")
            self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
            box.find_element(By.CSS_SELECTOR, ".view-lines").click()
            # Clear first: typed over a selection, a "{" would surround the selection instead.
            ActionChains(self.d).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).send_keys(
                Keys.DELETE).perform()
            self.d.execute_cdp_cmd("Input.insertText", {"text": text})
            for _ in range(10):  # the form parses the edit and re-renders it formatted
                time.sleep(0.3)
                try:
                    shown = json.loads(box.find_element(By.CSS_SELECTOR, ".view-lines").text.replace("\u00a0", " "))
                except ValueError:
                    continue
                if shown == json.loads(text):
                    return True
            return False  # the editor was not focused yet: the text went elsewhere; again

        self.until(go)

    def value(self, field: str) -> str:
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.NAME, f"element_{field}").get_attribute("value")

    def refusal(self) -> str:
        """The form's error for a refused trigger (HTTP 400), scrolled into view."""
        from selenium.webdriver.common.by import By

        message = self.until(lambda: "400" in self.dialog_text() and self.dialog_text())
        for el in self.d.find_elements(By.XPATH, "//*[@role='dialog']//*[contains(text(), 'Invalid input for param')]"):
            if el.is_displayed():
                self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
                break
        return message

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


def curate_with_dags_test(stack, data_root: str) -> tuple[str, str]:
    """One sample partition through `airflow dags test prepare_dataset`, as `make run` does it;
    returns the run id and the published dataset version."""
    from include.data.catalog import latest_version
    from include.sample_data import stage_sample

    raw = stage_sample(data_root)
    stack.airflow("dags", "test", "prepare_dataset", "--conf", json.dumps({"source_uris": [f"{raw}/dt=2026-11-01"]}),
                  timeout=300)
    [run] = stack.dag_runs("prepare_dataset")
    assert run["state"] == "success", stack.task_states("prepare_dataset")
    return run["run_id"], latest_version(data_root)["version"]


def open_trigger_form(page: Page, url: str) -> None:
    page.d.get(f"{url}/dags/finetune_lifecycle")
    page.click("Trigger")
    page.until(lambda: page.buttons("Compute"))


def test_trigger_form_refuses_bad_values_then_runs_with_progress_and_links(airflow_stack, browser, mlflow_ui,
                                                                          tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    data_root = (tmp_path / "data").as_uri()
    stack = airflow_stack(
        env={"LLMOPS_PROFILE": "local", "LLMOPS_DATA_ROOT": data_root,
             "LLMOPS_CHECKPOINT_ROOT": str(tmp_path / "checkpoints"),
             "LLMOPS_MLFLOW_TRACKING_URI": mlflow_ui["tracking"], "LLMOPS_MLFLOW_UI_URL": mlflow_ui["url"],
             "LLMOPS_PROGRESS_INTERVAL_S": "1"},
        config={"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                # Only the runs this test triggers: no nightly run when the form unpauses the DAG.
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"},
        api_apps="core,execution")
    page = Page(browser)

    def body() -> str:
        return page.d.find_element(By.TAG_NAME, "body").text

    # A run `airflow dags test` made: its task logs are where the UI reads them.
    prep_run, version = curate_with_dags_test(stack, data_root)
    stack.wait_for_dag("finetune_lifecycle")
    prep = f"{stack.api_url}/dags/prepare_dataset/runs/{prep_run}/tasks"
    page.d.get(f"{prep}/curate")
    page.until(lambda: f"-> dataset {version}" in body())  # curate's summary line
    assert "Log file not found" not in body() and "curate: " in body(), body()[-3000:]  # a progress line
    page.shot("dags-test-log")
    page.d.get(f"{prep}/publish/details")
    link = page.until(lambda: page.d.find_element(By.XPATH, "//a[normalize-space(.)='Dataset manifest'][@href]"))
    assert link.get_attribute("href") == f"{stack.api_url}/llmops/files/curated/{version}/manifest.json"
    link.click()
    page.until(lambda: f'"version": "{version}"' in body())
    page.shot("dataset-manifest")

    open_trigger_form(page, stack.api_url)
    text = page.dialog_text()
    for name in SECTIONS:
        assert name in text, f"section {name!r} missing from the form"
    for name, fields in FIELDS.items():
        page.click(name)
        for field in fields:
            assert page.until(lambda f=field: page.has_field(f)), f"{field} missing from section {name}"
    page.shot("trigger-form")

    # Invalid values: the API refuses each with HTTP 400 naming the field; the form shows it; no run is created.
    page.d.refresh()
    open_trigger_form(page, stack.api_url)
    page.click("Model and data")
    page.type("dataset_version", "latest!")
    page.click("Trigger", last=True)
    message = page.refusal()
    assert "param dataset_version" in message and "Dataset version" in message, message
    page.shot("refused-dataset_version")

    page.d.refresh()  # a typo in the gate policy: refused by its schema, not at validate_params after the run began
    open_trigger_form(page, stack.api_url)
    page.click("Gate and registry")
    page.insert_json("gate_policy", '{"metrics": {"rouge_score": {"flor": 0.1}}}')
    page.click("Trigger", last=True)
    message = page.refusal()
    assert "param gate_policy" in message and "'flor' was unexpected" in message, message
    page.shot("refused-gate_policy")

    page.d.refresh()  # 0 nodes: left as typed (the form used to raise it to 1 on blur and run), then refused
    open_trigger_form(page, stack.api_url)
    page.click("Compute")
    page.type("nodes", "0")
    page.d.find_element(By.NAME, "element_nodes").send_keys(Keys.TAB)
    time.sleep(1)  # the number input's blur handling, which clamped to the schema's minimum
    assert page.value("nodes") == "0"
    page.click("Trigger", last=True)
    message = page.refusal()
    assert "param nodes: 0 is less than the minimum of 1" in message and "A whole number from 1 to 64" in message, \
        message
    page.shot("refused-nodes")
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

    # A short real run from the form: the training log shows progress, the gate links to MLflow and its report.
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

    page.d.get(f"{tasks}/gate/details")  # extra links live in the task instance's Details tab
    link = page.until(lambda: page.d.find_element(By.XPATH, "//a[normalize-space(.)='MLflow run'][@href]"))
    page.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    href = link.get_attribute("href")
    assert href.startswith(mlflow_ui["url"] + "/#/experiments/"), href
    report = page.d.find_element(By.XPATH, "//a[normalize-space(.)='Gate report'][@href]")
    assert report.get_attribute("href").startswith(f"{stack.api_url}/llmops/files/evaluations/"), \
        report.get_attribute("href")
    page.shot("gate-links")
    report.click()
    page.until(lambda: "PASSED" in body() or "REJECTED" in body())
    assert "rouge_score" in body(), body()[:2000]
    page.shot("gate-report")

    from mlflow import MlflowClient

    name = MlflowClient(mlflow_ui["tracking"]).get_run(href.rsplit("/", 1)[1]).info.run_name
    page.until(mlflow_ui["ready"])
    page.d.get(href)
    page.until(lambda: name in body())
    page.shot("mlflow-run")
