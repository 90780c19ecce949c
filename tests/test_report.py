"""The HTML report: written by `datamodels run`, self-contained, and rendered by headless Chromium."""
import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from datamodels import config
from datamodels.cli import main
from small_digits import small_digits  # tests/helpers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Counts the page's images that decoded (naturalWidth > 0) once everything has loaded.
IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var out = document.createElement("div");
  out.id = "image-check";
  out.textContent = loaded + "/" + images.length;
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, _ray_shutdown_at_exit):
    """`datamodels run` on 300 training digits with 700 models: enough for a learning curve."""
    import ray

    from datamodels.cluster import start_local
    from datamodels.pipeline import run

    if not ray.is_initialized():
        start_local()  # on 127.0.0.1 alone, as a sweep's own
    root = tmp_path_factory.mktemp("report")
    cfg = config.coerce({
        "out": str(root / "run"),
        "data": {"source": "npz", "path": str(small_digits(root / "small.npz"))},
        "sweep": {"num_models": 700, "num_eval_models": 50, "models_per_task": 50, "max_retries": 0},
        "worker": {"name": "workers.mlp", "hidden": 32, "epochs": 15, "weight_decay": 0.0},
        "fit": {"num_lambdas": 15, "lambda_min_ratio": 0.01},
    })
    metrics = run(cfg, progress=False)
    return root / "run", metrics


def images_of(page: str):
    return re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', page)


def test_run_writes_a_self_contained_report(tiny_run):
    out, metrics = tiny_run
    path = out / "report.html"
    assert metrics["report"] == str(path) and metrics["report_s"] > 0
    assert json.loads((out / "metrics.json").read_text())["report"] == str(path)
    page = path.read_text()
    # no external resources: every image is inline, nothing is fetched
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "http://" not in page and "https://" not in page
    images = images_of(page)
    assert len(images) == page.count("<img") >= 9
    from PIL import Image

    for alt, data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.format == "PNG" and min(im.size) > 50, alt
    for section in ("Predicted against actual margins", "Live LDS and forecast", "Learning curve",
                    "Most influential training examples",
                    "Counterfactuals", "Brittle predictions", "Possible train-test leakage", "Datamodel embeddings"):
        assert section in page
    assert "learning curve" in [alt for alt, _ in images]  # 700 models >= 2 x 300 training examples
    # The sweep's checkpoints (every 100 fitting models by default for 700) and their forecast.
    assert "live LDS and forecast" in [alt for alt, _ in images]
    assert "LDS measured every 100 fitting models" in page
    assert "Not yet checked by retraining" in page


def test_report_verify_adds_retrained_checks(tiny_run, ray_local):
    out, _ = tiny_run
    assert main(["report", str(out), "--verify", "2", "--out", str(out / "verified.html")]) == 0
    page = (out / "verified.html").read_text()
    assert "Counterfactuals, checked by retraining" in page and "Pearson r" in page
    assert re.search(r"<b>\d+ of \d+ \(\d+%\)</b> targets with support size", page)
    for name in ("counterfactual", "brittleness", "learning_curve"):
        assert (out / "analyses" / f"{name}.json").exists()
    # a later report without --verify shows the kept results
    assert main(["report", str(out)]) == 0
    assert "Counterfactuals, checked by retraining" in (out / "report.html").read_text()


def test_report_shows_other_methods_side_by_side(tiny_run, tmp_path):
    """--scores NAME=FILE: the datamodels' own weights as a score file score the datamodels' LDS, and
    random scores about zero, in one table with the datamodels."""
    from datamodels.evaluate import lds

    out, _ = tiny_run
    weight = np.load(out / "datamodels.npz")["weight"]
    np.save(tmp_path / "own.npy", weight)
    np.save(tmp_path / "random.npy", np.random.default_rng(0).normal(size=weight.shape))
    page_path = tmp_path / "methods.html"
    assert main(["report", str(out), "--out", str(page_path), "--no-learning-curve",
                 "--scores", f"own weights={tmp_path / 'own.npy'}", "--scores", f"random={tmp_path / 'random.npy'}"]) == 0
    page = page_path.read_text()
    assert "Attribution methods side by side" in page
    cells = dict(re.findall(r'<tr><td class="l">([^<]+)</td><td class="">([^<]+)</td>', page))
    expected = lds(out / "store", out / "datamodels.npz")["lds"]
    assert float(cells["datamodels (this run)"]) == pytest.approx(expected, abs=1e-3)
    assert cells["own weights"] == cells["datamodels (this run)"]
    # Random scores: 50 held-out models give a per-target Spearman sd of about 0.14; the mean over
    # the targets is far tighter than 0.15.
    assert abs(float(cells["random"])) < 0.15
    assert any(alt == "LDS per target of each attribution method" for alt, _ in images_of(page))
    # a bad score file is a one-line error, and no page is written
    np.save(tmp_path / "short.npy", weight[:10])
    assert main(["report", str(out), "--out", str(tmp_path / "bad.html"), "--no-learning-curve",
                 "--scores", f"short={tmp_path / 'short.npy'}"]) == 2
    assert not (tmp_path / "bad.html").exists()


def chromium(args, tmp_path, timeout=90):
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    profile.mkdir()
    # Root in a container: no sandbox; and no network, updates or sync from a throwaway profile.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_chromium(tiny_run, tmp_path):
    out, _ = tiny_run
    page = (out / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", IMAGE_CHECK + "</body>"))
    dom = chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path)
    found = re.search(r'<div id="image-check">(\d+)/(\d+)</div>', dom.stdout)
    assert found, dom.stderr[-2000:]
    loaded, total = map(int, found.groups())
    assert total == len(images_of(page)) and loaded == total

    shot = tmp_path / "shot.png"
    proc = chromium([f"--screenshot={shot}", "--window-size=1200,4000", "--hide-scrollbars",
                     (out / "report.html").as_uri()], tmp_path)
    assert shot.exists(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    assert pixels.shape == (4000, 1200)
    # Not blank: many distinct shades, and dark ink (text, plots, digits) over a good part of it.
    assert len(np.unique(pixels)) > 50 and pixels.std() > 10
    assert (pixels < 128).mean() > 0.01
