"""The trainer and evaluator images have no Airflow: nothing they import may import it.

A fresh interpreter blocks every `airflow` import, imports each module an image runs (its
entrypoint and everything that pulls in), and exercises the pod-side validators and the storage
core there. A module that imports Airflow, at the top or on those paths, fails this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TRAINER = ["include.training.rendezvous", "include.training.entrypoint", "include.training.tiny",
           "include.training.nemo_backend", "include.training.plan", "include.training.params"]
EVALUATOR = ["include.evaluation.entrypoint", "include.evaluation.run", "include.evaluation.scoring",
             "include.evaluation.generate", "include.evaluation.embeddings", "include.evaluation.judge",
             "include.evaluation.job", "include.evaluation.evalset"]

PROBE = """
import importlib, importlib.abc, json, sys, tempfile
from pathlib import Path

class NoAirflow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "airflow" or name.startswith("airflow."):
            raise ImportError(f"{name}: the images have no Airflow")
        return None

sys.meta_path.insert(0, NoAirflow())
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)

from include.errors import InputError
from include.evaluation.job import parse_job_argument
from include.storage import files
from include.training.plan import validate_plan

for call in (lambda: validate_plan({"backend": "nemo"}), lambda: parse_job_argument("{}")):
    try:
        call()
    except InputError:
        pass
    else:
        raise SystemExit("a bad plan or job was accepted")
out = Path(tempfile.mkdtemp()) / "x.json"
files.write_json(out.as_uri(), {"ok": True})
assert files.read_json(out.as_uri()) == {"ok": True}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "airflow")))
"""


def run_probe(modules: list[str]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(modules)], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_trainer_image_modules_never_import_airflow():
    assert run_probe(TRAINER) == []


def test_evaluator_image_modules_never_import_airflow():
    assert run_probe(EVALUATOR) == []


def test_the_probe_catches_a_module_that_imports_airflow():
    """The blocker is real: a module that needs Airflow fails the probe."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(["include.lifecycle.failfast"])],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode != 0 and "the images have no Airflow" in out.stderr
