"""The gate's HTML report: one self-contained page with the verdict, reasons, table and inline plots."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import numpy as np

from include.evaluation import gate
from include.evaluation.report import render_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POLICY = gate.validate_policy({"seed": 3, "min_pairs": 5, "metrics": {
    "semantic_similarity": {"floor": 0.3}, "rouge_score": {"floor": 0.05}, "faithfulness": {"required": False}}})


def scores(shift=0.0, n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [{"id": f"s{i}", "semantic_similarity": float(a) + shift, "rouge_score": float(b)}
            for i, (a, b) in enumerate(zip(rng.uniform(0.4, 0.9, n), rng.uniform(0.1, 0.5, n), strict=True))]


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.ids, self.external = [], set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a)
        for key in ("src", "href"):
            if key in a and not a[key].startswith("data:"):
                self.external.append(a[key])


def parse(page):
    p = Collect()
    p.feed(page)
    return p


def test_a_rejection_report_has_the_plots_table_and_reasons():
    champ, cand = scores(), scores(shift=-0.2)
    decision = gate.decide(cand, champ, POLICY)
    assert not decision["passed"]
    page = render_html(decision, cand, champ, context={"model": "llm-assistant v3", "dataset": "ds<1>"})
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    p = parse(page)
    assert [i["id"] for i in p.imgs] == ["distributions", "forest"]
    for img in p.imgs:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix):]).startswith(PNG_MAGIC)
    assert p.external == []  # self-contained: nothing fetched from elsewhere
    assert {"decision-table", "reasons", "policy", "context"} <= p.ids
    assert "REJECTED" in page and "ds&lt;1&gt;" in page  # context is escaped
    table = re.search(r"<table id='decision-table'>(.*?)</table>", page, re.S).group(1)
    for name in ("semantic_similarity", "rouge_score", "faithfulness"):
        assert f"<td class='name'>{name}</td>" in table
    row = re.search(r"<td class='name'>semantic_similarity</td>(.*?)</tr>", table).group(1)
    assert "-0.2000" in row and "fail" in row
    assert "skipped" in re.search(r"<td class='name'>faithfulness</td>(.*?)</tr>", table).group(1)
    reasons = re.search(r"<ul id='reasons'>(.*?)</ul>", page, re.S).group(1)
    assert "semantic_similarity: regressed against the champion" in reasons


def test_a_first_model_report_says_floors_only_and_still_renders():
    cand = scores()
    decision = gate.decide(cand, None, POLICY)
    page = render_html(decision, cand, None)
    assert decision["passed"] and "PASSED" in page and "no champion: floors only" in page
    p = parse(page)
    assert len(p.imgs) == 2 and all(i["src"].startswith("data:image/png;base64,") for i in p.imgs)
    assert "<p id='reasons'>none</p>" in page
