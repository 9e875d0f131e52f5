"""The api-server's file view behind the gate report and dataset manifest links (plugins/llmops_operators/
files_app.py): it serves the files a link names from the data root, and nothing else."""

from __future__ import annotations

import pytest

REPORT = "evaluations/ft-1/gate/report.html"
MANIFEST = "curated/0123456789abcdef/manifest.json"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    for rel, text in {REPORT: "<!doctype html><h1>gate: PASSED</h1>", MANIFEST: '{"version": "0123456789abcdef"}',
                      "curated/0123456789abcdef/quarantine.jsonl": '{"email": "a@b.c"}',
                      "raw/dt=2026-11-01/a.jsonl": "{}"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "secret.json").write_text('{"password": "x"}')
    (root / "evaluations" / "ft-2" / "gate").mkdir(parents=True)
    (root / "evaluations" / "ft-2" / "gate" / "report.html").symlink_to(tmp_path / "secret.json")
    (root / "curated" / "escape").symlink_to(tmp_path, target_is_directory=True)
    return root


@pytest.fixture
def client(tree):
    from fastapi.testclient import TestClient
    from llmops_operators.files_app import build_app

    readable = {"finetune_lifecycle"}  # this user may read finetune_lifecycle only
    app = build_app(data_root=lambda: tree.as_uri(), authorize=lambda: lambda dags: bool(readable & set(dags)))
    return TestClient(app)


def test_serves_the_linked_report_and_manifest_read_only(client):
    page = client.get(f"/files/{REPORT}")
    assert page.status_code == 200 and "gate: PASSED" in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "sandbox" in page.headers["content-security-policy"] and page.headers["x-content-type-options"] == "nosniff"
    assert client.get(f"/files/{MANIFEST}").json() == {"version": "0123456789abcdef"}
    for method in (client.post, client.put, client.delete):
        assert method(f"/files/{REPORT}").status_code == 405


@pytest.mark.parametrize("path", [
    "../secret.json", "curated/../../secret.json", "curated/%2e%2e/%2e%2e/secret.json", "%2e%2e/secret.json",
    "..%2fsecret.json", "/etc/passwd", "//etc/passwd", "curated//0123456789abcdef/manifest.json",
    "curated/0123456789abcdef/quarantine.jsonl", "raw/dt=2026-11-01/a.jsonl",  # under the root, but no link's
    "evaluations/ft-2/gate/report.html",  # a symlink out of the root
    "curated/escape/manifest.json", "curated", "evaluations/ft-9/gate/report.html", "",
])
def test_refuses_traversal_and_anything_no_link_names(client, path):
    response = client.get(f"/files/{path}")
    assert response.status_code == 404, (path, response.status_code, response.text[:200])
    assert "password" not in response.text and "a@b.c" not in response.text


@pytest.mark.parametrize("relative", [
    "curated/0123456789abcdef/../0123456789abcdef/manifest.json", "./" + MANIFEST, MANIFEST + "/",
    "curated//0123456789abcdef/manifest.json", "/" + MANIFEST, "curated\\0123456789abcdef\\manifest.json",
    MANIFEST + "\x00", "evaluations/ft-2/gate/report.html", "curated/escape/manifest.json",
])
def test_the_path_check_itself_refuses_what_a_client_would_normalise_away(tree, relative):
    """Browsers and httpx resolve '..' and '.' before sending; a raw request need not: the check holds alone."""
    from include.links import served_file

    assert served_file(tree, MANIFEST) is not None
    assert served_file(tree, relative) is None


def test_needs_read_access_to_a_dag_that_links_the_file(tree):
    from fastapi.testclient import TestClient
    from llmops_operators.files_app import build_app

    only_prepare = TestClient(build_app(data_root=lambda: tree.as_uri(),
                                        authorize=lambda: lambda dags: "prepare_dataset" in dags))
    assert only_prepare.get(f"/files/{MANIFEST}").status_code == 200
    refused = only_prepare.get(f"/files/{REPORT}")
    assert refused.status_code == 403 and "finetune_lifecycle" in refused.text


def test_an_s3_data_root_serves_nothing(tree):
    from fastapi.testclient import TestClient
    from llmops_operators.files_app import build_app

    app = build_app(data_root=lambda: "s3://bucket/llmops", authorize=lambda: lambda dags: True)
    assert TestClient(app).get(f"/files/{REPORT}").status_code == 404


def test_unauthenticated_requests_are_refused_by_airflow_auth(tree, monkeypatch):
    """Without the test's stand-in, the dependency is Airflow's: no session cookie, no token -> 401."""
    from fastapi.testclient import TestClient
    from llmops_operators.files_app import build_app

    app = build_app(data_root=lambda: tree.as_uri())
    assert TestClient(app).get(f"/files/{REPORT}").status_code == 401
