"""The HTML report renders in headless Chromium: a non-blank screenshot, every image loaded, no
console error.

Two runs of Debian's `chromium` (`.ci/run` installs it when absent; the test skips, saying so,
where there is none):
- `--screenshot` of the report itself, checked to be a PNG with content (not one colour);
- `--dump-dom` of a probe page: the report's own HTML with a script put first in its <head>
  that records every error event (script errors and, in the capture phase, resources that
  fail to load) and every console.error, and on `load` writes into the DOM how many images
  there are, how many are `complete` with a `naturalWidth` > 0, and the errors. The report
  has no script of its own, so `--enable-logging=stderr --v=0` must also show no CONSOLE line.
The probe reads the DOM rather than only the log because Chromium's log format is not an
interface; the log check catches what happens before the probe's listeners exist.

The report is built from small synthetic metrics (no model, no demo): seconds.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from synthetic_reports import synthetic_results

from alignlab.eval.report import write_report
from alignlab.eval.verdict import verdict

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(
  String(e.message || (e.target && (e.target.src || e.target.href)) || e.type)), true);
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(" ")); __consoleError(...args); };
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    errors: window.__errors,
  });
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no Chromium on this machine: apt-get install -y chromium (Debian's package; .ci/run "
        "installs it when it can)"
    )


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def page_report(binary: str, page: Path, work: Path) -> dict:
    """{"images", "loaded", "errors", "console"} of `page` opened in headless Chromium."""
    probe = work / f"probe-{page.name}"
    probe.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    done = run_chromium(
        binary, work / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom", probe.as_uri()
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe did not run (exit {done.returncode}): {done.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    result["console"] = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return result


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results = synthetic_results()
    out = tmp_path_factory.mktemp("report")
    lines = verdict(
        {"DPO": results["dpo"]["paired"], "PPO": results["ppo"]["paired"]}, "SFT", unit="prompts"
    )
    table = {"headline.scores.total": "gold"}
    return write_report(results, out, "synthetic <demo>", table_keys=table, verdict=lines)


def test_report_renders_without_errors_and_loads_its_images(report, tmp_path):
    binary = chromium()
    page = page_report(binary, report["html"], tmp_path)
    # the differences, components, rates and KL plots, all decoded
    assert page["images"] == 4 and page["loaded"] == 4, page
    assert page["errors"] == [] and page["console"] == [], page


def test_screenshot_is_a_non_blank_png(report, tmp_path):
    from PIL import Image

    binary = chromium()
    shot = tmp_path / "shot.png"
    done = run_chromium(binary, tmp_path / "profile", f"--screenshot={shot}",
                        "--window-size=1280,1600", report["html"].as_uri())  # fmt: skip
    assert shot.is_file(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(shot) as image:
        assert image.size == (1280, 1600)
        pixels = image.convert("L")
        histogram = pixels.histogram()
    background = max(range(256), key=histogram.__getitem__)
    drawn = sum(histogram) - histogram[background]
    # text, tables and plots: far more than a blank or error page's few percent
    assert drawn > 0.05 * sum(histogram), f"{drawn} of {sum(histogram)} pixels drawn"


def test_the_probe_sees_broken_images_and_script_errors(tmp_path):
    """The checks above can fail: a page with a missing image and a throwing script."""
    binary = chromium()
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        '<img src="missing.png"><script>console.error("boom"); notAFunction();</script>'
        "</body></html>"
    )
    page = page_report(binary, broken, tmp_path)
    assert (page["images"], page["loaded"]) == (1, 0)
    assert any("boom" in e for e in page["errors"])
    assert any("notAFunction" in e for e in page["errors"])
    assert any("missing.png" in e for e in page["errors"])
    assert page["console"]  # the same errors in Chromium's log
