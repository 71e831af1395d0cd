"""index.html in a real browser: every figure loads, every table is there.

Headless Chromium opens the toy report's page (`test_report_pages`' finished
toy grid, nothing trained) with a short script appended that records, once
the page has loaded, each image's decoded width and each table's heading
and size; `--dump-dom` hands them back. Skipped, saying why, where no
Chromium binary exists (`apt-get install chromium`; CI images may lack it).
"""

import html
import json
import os
import re
import shutil
import struct
import subprocess

import pytest

from test_report_pages import (AGREEMENT, LEAKAGE, METRICS, STABILITY, _csv,
                               toy_report)

_BINARIES = ("chromium", "chromium-browser", "google-chrome", "chrome")

# Appended to a copy of the page: what the browser made of it, as JSON in a
# <pre id="probe"> that --dump-dom prints.
_PROBE = """
<script>
window.addEventListener("load", () => {
  const headingOf = (el) => {
    for (let e = el.previousElementSibling; e; e = e.previousElementSibling) {
      if (/^H[1-4]$/.test(e.tagName)) return e.textContent;
    }
    return null;
  };
  const out = {
    images: [...document.images].map((i) => ({
        alt: i.alt, complete: i.complete, width: i.naturalWidth,
        height: i.naturalHeight})),
    tables: [...document.querySelectorAll("table")].map((t) => ({
        heading: headingOf(t), rows: t.rows.length,
        columns: t.rows[0].cells.length})),
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def _chromium() -> str:
  for name in _BINARIES:
    if path := shutil.which(name):
      return path
  pytest.skip(f"no Chromium binary ({', '.join(_BINARIES)}) on PATH: the "
              "real-browser check of index.html needs one (apt-get install "
              "chromium); CI images may lack it")


def _png_size(path) -> tuple[int, int]:
  """A PNG's width and height, from its IHDR chunk."""
  return struct.unpack(">II", open(path, "rb").read()[16:24])


@pytest.fixture(name="binary", scope="module")
def _binary() -> str:
  return _chromium()


@pytest.fixture(name="report", scope="module")
def _report(binary, tmp_path_factory):
  """The toy report (built only where a browser can open it)."""
  del binary
  return toy_report(tmp_path_factory.mktemp("browser"))


def _browse(binary, page, profile) -> dict:
  """What headless Chromium found in `page`, once loaded."""
  proc = subprocess.run(
      [binary, "--headless", "--no-sandbox", "--disable-gpu",
       "--no-first-run", f"--user-data-dir={profile}",
       "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
      capture_output=True, text=True, timeout=180, check=False)
  found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
  assert found, (proc.returncode, proc.stderr[-2000:])
  return json.loads(html.unescape(found.group(1)))


def test_every_figure_loads_and_every_table_is_present(binary, report,
                                                       tmp_path):
  page = tmp_path / "index.html"
  page.write_text((report / "index.html").read_text().replace(
      "</body>", _PROBE + "</body>"))
  seen = _browse(binary, page, tmp_path / "profile")
  pngs = sorted(n for n in os.listdir(report) if n.endswith(".png"))
  assert sorted(i["alt"] for i in seen["images"]) == pngs
  for image in seen["images"]:
    # Decoded by the browser at the file's own size.
    assert image["complete"] and image["width"] > 0, image
    assert (image["width"], image["height"]) == _png_size(
        report / image["alt"])
  tables = {t["heading"]: t for t in seen["tables"]}
  assert set(tables) == {"ROAR", STABILITY, LEAKAGE, METRICS, AGREEMENT}
  # A header row and one row per CSV row (metrics: one per estimator).
  for heading, name in ((LEAKAGE, "leakage.csv"),
                        (AGREEMENT, "agreement.csv"),
                        (STABILITY, "rank_stability.csv"),
                        ("ROAR", "results.csv")):
    assert tables[heading]["rows"] == 1 + len(_csv(report / name)), heading
  estimators = {r["estimator"] for r in _csv(report / "metrics.csv")}
  assert tables[METRICS]["rows"] == 1 + len(estimators)
  assert tables[METRICS]["columns"] == 2 + 4
