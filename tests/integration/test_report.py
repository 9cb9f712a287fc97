"""The run's HTML report as a user opens it (issue 16, item 4): run the workflow on a tiny
demo cohort (3 images at 4 mm, 1 affine + 1 SyN iteration, plus one constant image that
``on_bad_subject: skip`` excludes), write ``report.html`` with ``snakemake --report`` and
render it in headless Chromium.

Snakemake's report is one self-contained HTML file: every result is a data URI in the
JavaScript object ``results``, and the React app shows a result only when it is clicked.
A screenshot of the page shows the start page, not the figures, so the check drives the
report's own code instead: a copy of ``report.html`` gets one extra ``<script>`` that,
once the app has rendered, selects every image and HTML result through the report's
``ToggleViewManager`` (what a click on a result does), waits for the ``<img>`` (or
``<iframe>``) the app puts on the page, and records whether the image finished loading
(``complete``) and its natural size. Chromium runs with ``--dump-dom`` and a virtual-time
budget (the page's timers run as fast as they can), and the test reads that record from
the dumped DOM. A broken image (a corrupt data URI) completes with natural width 0, which
the second test checks. (``img.decode()`` never settles under a virtual-time budget, so
the script polls ``complete`` instead.)
"""

import base64
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from atlas.demo import make_demo_bids

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ["sub-demo01", "sub-demo02", "sub-demo03"]
#: Report results expected by file name: QC figures of the template stage, one
#: registration view per image, the methods text and the table of excluded images.
EXPECTED = {
    "tpl-test_desc-iterations_mosaic.png",
    "tpl-test_desc-convergence_plot.png",
    "tpl-test_desc-subjects_mosaic.png",
    *(f"{i}_space-test_desc-registration_T1w.png" for i in IMAGES),
    "methods.html",
    "desc-excluded_table.tsv",
}

#: Appended to a copy of report.html: select every image/HTML result as a click does and
#: record, per result path, whether the app showed it and how the image loaded.
CHECK_SCRIPT = """
<script>
(function () {
  function waitFor(pred, ms) {
    return new Promise(function (resolve) {
      const t0 = Date.now();
      (function poll() {
        const v = pred();
        if (v || Date.now() - t0 > ms) { resolve(v); } else { setTimeout(poll, 20); }
      })();
    });
  }
  function shown(tag, uri) {
    return Array.from(document.querySelectorAll("#app " + tag))
      .find(function (el) { return el.getAttribute("src") === uri; });
  }
  function report(out) {
    const pre = document.createElement("pre");
    pre.id = "atlas-report-check";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  async function run() {
    const out = {app: false, categories: {}, results: {}};
    out.app = !!(await waitFor(function () {
      return typeof app !== "undefined" && document.querySelector("#app").childElementCount;
    }, 5000));
    for (const [cat, subcats] of Object.entries(categories)) {
      out.categories[cat] = Object.keys(subcats);
    }
    const view = new ToggleViewManager(app);
    for (const [path, entry] of Object.entries(results)) {
      const r = {name: entry.name, mime: entry.mime_type, caption: entry.caption};
      if (entry.mime_type.startsWith("image/")) {
        view.handleSelectedResult(path);
        const img = await waitFor(function () { return shown("img", entry.data_uri); }, 5000);
        r.shown = !!img;
        if (img) {
          r.complete = !!(await waitFor(function () { return img.complete; }, 5000));
          r.width = img.naturalWidth;
          r.height = img.naturalHeight;
        }
      } else if (entry.mime_type === "text/html") {
        view.handleSelectedResult(path);
        r.shown = !!(await waitFor(function () { return shown("iframe", entry.data_uri); }, 5000));
      }
      out.results[path] = r;
    }
    report(out);
  }
  window.addEventListener("load", function () {
    run().catch(function (e) { report({error: String(e)}); });
  });
})();
</script>
"""


def _chromium() -> str:
    """The Chromium executable; missing: a failure under CI (env ``CI``), a skip elsewhere."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    msg = "chromium not found (Debian: apt-get install -y chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _check_in_chromium(report_html: Path, workdir: Path) -> dict:
    """Render a copy of ``report_html`` with :data:`CHECK_SCRIPT` in headless Chromium and
    return the record the script left in the DOM."""
    page = workdir / "report_check.html"
    text = report_html.read_text(encoding="utf-8")
    head, body_end, tail = text.rpartition("</body>")
    assert body_end, "report.html has no </body>"
    page.write_text(head + CHECK_SCRIPT + body_end + tail, encoding="utf-8")
    cmd = [
        _chromium(),
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        f"--user-data-dir={workdir / 'chromium-profile'}",
        "--virtual-time-budget=30000",
        "--dump-dom",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r'<pre id="atlas-report-check">(.*?)</pre>', proc.stdout, flags=re.S)
    assert found, f"the check script left no record:\n{proc.stderr[-3000:]}"
    record = json.loads(html.unescape(found.group(1)))
    assert "error" not in record, record
    return record


def _results(report_html: Path) -> dict:
    """The report's ``results`` object (path -> entry with its data URI)."""
    text = report_html.read_text(encoding="utf-8")
    found = re.search(r"var results = (\{.*?\});\s*</script>", text, flags=re.S)
    assert found, "no results object in report.html"
    return json.loads(found.group(1))


def _decode(uri: str) -> bytes:
    return base64.b64decode(uri.split("base64,", 1)[1])


@pytest.fixture(scope="module")
def run(tmp_path_factory, run_workflow):
    """A finished run with its report: folders ``out``, ``work``, the config and the
    report path."""
    tmp = tmp_path_factory.mktemp("report")
    bids = make_demo_bids(tmp / "bids", n_subjects=3, seed=0, spacing_mm=4.0)
    bad = bids / "sub-04" / "anat" / "sub-04_T1w.nii.gz"  # constant: excluded
    bad.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), bad)
    config = {
        "bids_dir": str(bids),
        "output_dir": str(tmp / "out"),
        "work_dir": str(tmp / "work"),
        "on_bad_subject": "skip",
        "resolution": 4.0,
        "template": {"name": "test", "affine_iterations": 1, "syn_iterations": 1},
    }
    run_workflow(tmp, config)
    report = tmp / "out" / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--report", str(report), "--nolock"]
        + ["--configfile", str(tmp / "config.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return {"tmp": tmp, "out": tmp / "out", "report": report}


def test_every_report_figure_loads_in_chromium(run):
    record = _check_in_chromium(run["report"], run["tmp"])
    assert record["app"], "the report's app did not render"
    by_name = {r["name"]: r for r in record["results"].values()}
    assert EXPECTED <= set(by_name), sorted(set(EXPECTED) - set(by_name))
    assert set(record["categories"]["Registration"]) == set(IMAGES)
    assert {"Template", "Registration", "Methods", "Inputs"} <= set(record["categories"])
    images = [r for r in record["results"].values() if r["mime"].startswith("image/")]
    assert len(images) >= 6
    for r in images:  # every figure shown by the app, loaded, of real size
        assert r["shown"] and r["complete"], r["name"]
        assert r["width"] > 100 and r["height"] > 100, r
    for r in record["results"].values():  # every result has its caption
        assert len(re.sub("<[^>]+>", "", r["caption"]).strip()) > 50, r["name"]
    assert by_name["methods.html"]["shown"]
    reg = by_name["sub-demo01_space-test_desc-registration_T1w.png"]
    assert "sub-demo01" in reg["caption"]
    excluded = by_name["desc-excluded_table.tsv"]["caption"]
    assert "sub-04" in excluded and "constant" in excluded

    # what the report embeds is what the run wrote
    results = {Path(p).name: e for p, e in _results(run["report"]).items()}
    methods = _decode(results["methods.html"]["data_uri"]).decode()
    assert "<h1>Methods</h1>" in methods and "SyGN" in methods
    table = pd.read_csv(run["out"] / "group" / "desc-excluded_table.tsv", sep="\t")
    assert list(table.columns) == ["img", "reason"]
    assert list(table.img) == ["sub-04"] and "constant" in table.reason[0]
    for i in IMAGES:
        name = f"{i}_space-test_desc-registration_T1w.png"
        assert _decode(results[name]["data_uri"]) == (run["out"] / "figures" / name).read_bytes()


def test_the_check_sees_a_broken_image(run):
    """The Chromium check fails a figure whose data is not an image (so it can fail)."""
    broken = run["tmp"] / "broken" / "report.html"
    broken.parent.mkdir()
    text = run["report"].read_text(encoding="utf-8")
    results = {Path(p).name: e for p, e in _results(run["report"]).items()}
    uri = results["tpl-test_desc-subjects_mosaic.png"]["data_uri"]
    bad = uri.split("base64,")[0] + "base64," + base64.b64encode(b"not a png").decode()
    broken.write_text(text.replace(uri, bad), encoding="utf-8")
    record = _check_in_chromium(broken, broken.parent)
    by_name = {r["name"]: r for r in record["results"].values()}
    assert by_name["tpl-test_desc-subjects_mosaic.png"]["width"] == 0
    assert by_name["tpl-test_desc-subjects_mosaic.png"]["complete"]  # loaded, broken
    assert by_name["tpl-test_desc-convergence_plot.png"]["width"] > 100
