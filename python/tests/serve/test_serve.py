"""medclf serve: the API against `medclf test` on real HAM10000 images, every kind of bad upload,
the hardening (headers, limits, 127.0.0.1), the operating point of the run's report, and the page
in a real browser (Debian's chromium driven by Playwright) against the real server process."""

import base64
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from PIL import Image

from medclf import cli
from medclf.core import schemas
from medclf.core.fileio import read_json, write_json
from medclf.core.splits import write_splits_csv

CLASSES = ["bcc", "mel", "nv"]
PER_SPLIT = {"train": 8, "val": 4, "test": 4}  # lesions per class and split
GROUP = "malignant=bcc,mel"
CHROMIUM = Path("/usr/bin/chromium")


def ham_splits(ham_root, out):
    """A 3-class HAM10000 splits.csv by hand: one image per lesion, lesions never in two splits."""
    meta = pd.read_csv(ham_root / "HAM10000_metadata.csv")
    meta = meta[[(ham_root / "images" / f"{i}.jpg").is_file() for i in meta["image_id"]]]
    rows = []
    for index, label in enumerate(CLASSES):
        lesions = meta[meta["dx"] == label].drop_duplicates("lesion_id").sort_values("image_id")
        start = 0
        for split, n in PER_SPLIT.items():
            for _, r in lesions.iloc[start:start + n].iterrows():
                rows.append({"path": f"images/{r['image_id']}.jpg", "label": label, "label_index": index,
                             "split": split, "group": r["lesion_id"]})
            start += n
    out.mkdir(parents=True, exist_ok=True)
    write_splits_csv(out / "splits.csv", pd.DataFrame(rows))
    write_json(out / "partition.json", {"classes": CLASSES, "positive_class": None, "data_root": str(ham_root)})
    return out / "splits.csv"


@pytest.fixture(scope="module")
def run_dir(ham_root, tmp_path_factory):
    """Trained once: 32 px, 1 epoch; tested with the quality gate, reported with the grouping."""
    from medclf.train.training import run_training

    base = tmp_path_factory.mktemp("serve")
    splits = ham_splits(ham_root, base / "data")
    # fp32 (--no-amp): the server predicts as the run was trained, like `medclf test`; equality to
    # 1e-6 across batch sizes holds in fp32 (bf16 rounds differently per oneDNN kernel choice).
    run_training({"splits": str(splits), "img_size": 32, "epochs": 1, "batch_size": 8, "out": str(base), "amp": False,
                  "run_name": "run", "progress": False, "device": "cpu", "threads": 1})
    run = base / "run"
    assert cli.main(["quality", "--run", str(run), "--no-progress"]) == 0
    assert cli.main(["test", "--run", str(run), "--quality-gate", str(run / "quality.json"), "--no-progress"]) == 0
    assert cli.main(["report", "--run", str(run), "--group", GROUP, "--threshold-rule", "youden", "--tag", "grouped",
                     "--engine", "python", "--no-plots"]) == 0
    return run


@pytest.fixture(scope="module")
def client(run_dir):
    from fastapi.testclient import TestClient

    from medclf.serve.launch import build_app
    from medclf.serve.webapp import Limits

    app = build_app(run_dir, limits=Limits(max_upload_bytes=2 * 1024 * 1024, max_pixels=25_000_000, max_files=16))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def post(client, *files, field="files"):
    return client.post("/api/predict", files=[(field, f) for f in files])


def good_request(client, ham_root):
    name = sorted((ham_root / "images").iterdir())[0]
    response = post(client, (name.name, name.read_bytes(), "image/jpeg"))
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_probabilities_verdicts_and_operating_point_equal_the_run_files(client, run_dir):
    record = read_json(run_dir / "predictions_test.json")
    data_root = read_json(run_dir / "partition.json")["data_root"]
    files = [(Path(p).name, (Path(data_root) / p).read_bytes(), "image/jpeg") for p in record["paths"]]
    response = post(client, *files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["schema"] == schemas.SERVE_RESPONSE and body["classes"] == CLASSES and "not a diagnosis" in body["notice"]
    grouped = read_json(run_dir / "results_test_grouped.json")
    assert grouped["threshold_source"] == "validation:youden"
    passed = 0
    for i, entry in enumerate(body["images"]):
        # the server's gate verdict is `medclf test --quality-gate`'s verdict for the same file
        assert (entry["quality"]["verdict"] == "passed") == (record["quality"][i] == "passed")
        if entry["quality"]["verdict"] != "passed":
            assert entry["probabilities"] is None and entry["heatmap"] is None and entry["quality"]["reasons"]
            continue
        passed += 1
        p = np.array(entry["probabilities"])
        assert p.sum() == pytest.approx(1, abs=1e-9)
        np.testing.assert_allclose(p, record["probabilities"][i], atol=1e-6)
        assert entry["predicted_class"] == CLASSES[record["predictions"][i]]
        op = entry["operating_point"]
        assert op["name"] == "malignant" and op["classes"] == ["bcc", "mel"] and op["report"] == "results_test_grouped.json"
        assert op["probability"] == pytest.approx(p[0] + p[1], abs=1e-12)
        assert op["threshold"] == grouped["threshold"] and op["at_or_above_threshold"] == (op["probability"] >= op["threshold"])
        assert op["sensitivity"]["estimate"] == grouped["metrics"]["sensitivity"]["estimate"]
        assert op["specificity"]["estimate"] == grouped["metrics"]["specificity"]["estimate"]
        heat = entry["heatmap"]
        assert heat["method"] == "gradcam" and heat["target_class"] == entry["predicted_class"]
        png = base64.b64decode(heat["overlay_png"].removeprefix("data:image/png;base64,"))
        assert Image.open(io.BytesIO(png)).size == (32, 32)
    assert passed >= len(record["paths"]) // 2


@pytest.mark.slow
def test_a_blank_image_fails_the_gate_with_its_reason_and_gets_no_probabilities(client):
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (128, 128, 128)).save(buffer, "PNG")
    body = post(client, ("grey.png", buffer.getvalue(), "image/png")).json()
    entry = body["images"][0]
    assert entry["quality"]["verdict"] == "rejected" and (entry["width"], entry["height"]) == (300, 200)
    assert any(r.startswith("blank 1 not < 1") for r in entry["quality"]["reasons"])
    assert entry["probabilities"] is None and entry["operating_point"] is None and entry["heatmap"] is None


def png_bomb(width=20000, height=20000):
    """A valid 1-bit PNG of width x height black pixels, a few tens of KB compressed."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def truncated_jpeg(ham_root):
    data = sorted((ham_root / "images").iterdir())[1].read_bytes()
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "text named .jpg": (lambda root: {"files": ("scan.jpg", b"patient notes, not an image\n", "image/jpeg")},
                        415, "scan.jpg: not an image (the content is not JPEG"),
    "truncated JPEG": (lambda root: {"files": ("cut.jpg", truncated_jpeg(root), "image/jpeg")},
                       422, "cut.jpg: cannot read this JPEG file"),
    # Pillow's own check stops 400 Mpx at the header (above twice its MAX_IMAGE_PIXELS), before any decoding
    "20000x20000 PNG bomb": (lambda root: {"files": ("bomb.png", png_bomb(), "image/png")},
                             422, "bomb.png: refused as a possible decompression bomb (Image size (400000000 pixels)"),
    "6000x5000 PNG above --max-pixels": (lambda root: {"files": ("wide.png", png_bomb(6000, 5000), "image/png")},
                                         422, "wide.png: 6000 x 5000 pixels is above this server's limit of 25,000,000"),
    "oversized upload": (lambda root: {"files": ("big.jpg", b"\xff\xd8\xff" + bytes(3 * 1024 * 1024), "image/jpeg")},
                         413, "request body above this server's limit of 2,097,152 bytes"),
    "empty upload": (lambda root: {"files": ("empty.jpg", b"", "image/jpeg")}, 422, "empty.jpg: empty file"),
    "wrong field name": (lambda root: {"image": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")},
                         422, "no file in form field 'files'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_a_bad_upload_gets_a_4xx_json_error_and_the_server_keeps_serving(client, ham_root, case):
    make, status, message = BAD_UPLOADS[case]
    response = client.post("/api/predict", files=make(ham_root))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert message in response.json()["detail"]
    assert good_request(client, ham_root)["images"][0]["quality"]["verdict"] in ("passed", "rejected")


@pytest.mark.slow
def test_the_streamed_body_is_cut_at_the_cap_without_a_content_length(client, ham_root):
    sent = []

    def chunks():  # no Content-Length: the cap must be enforced while the body streams in
        for _ in range(64):
            sent.append(1)
            yield b"x" * 65536

    response = client.post("/api/predict", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=abc"})
    assert response.status_code == 413 and "request body above" in response.json()["detail"]
    assert good_request(client, ham_root)


@pytest.mark.slow
def test_pillows_decompression_bomb_warning_is_a_refusal(client, monkeypatch):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (90, 60, 30)).save(buffer, "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: Pillow warns (it raises above 2000)
    response = post(client, ("warn.png", buffer.getvalue(), "image/png"))
    assert response.status_code == 422 and "warn.png: refused as a possible decompression bomb" in response.json()["detail"]


@pytest.mark.slow
def test_too_many_files_and_wrong_methods_are_4xx(client):
    one = ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")
    response = post(client, *[one] * 17)
    assert response.status_code == 422 and "17 files in one request; this server takes at most 16" in response.json()["detail"]
    assert client.get("/api/predict").status_code == 405
    assert client.get("/nothing").status_code == 404


@pytest.mark.slow
def test_page_docs_and_schema_are_served_from_this_server_only(client, run_dir):
    page = client.get("/")
    assert page.status_code == 200 and "not a diagnosis" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"] and page.headers["x-content-type-options"] == "nosniff"
    for asset in ("/static/page/app.js", "/static/page/style.css"):
        text = client.get(asset).text
        assert "http://" not in text and "https://" not in text
    assert "http" not in page.text.replace("http-equiv", "")
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/swagger/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower() and client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/api/predict" in schema["paths"] and "413" in schema["paths"]["/api/predict"]["post"]["responses"]
    info = client.get("/api/model").json()
    assert info["model"]["backend"] == "torch" and info["heatmaps"] and info["operating_point"]["name"] == "malignant"
    assert info["metadata"] == []  # an image-only run: the page shows no metadata inputs


def write_results(path, split, source, members=None, positive="malignant", task="binary"):
    write_json(path, {"schema": schemas.RESULTS, "task": task, "split": split, "positive_class": positive,
                      "grouping": {"name": positive, "classes": members} if members else None,
                      "threshold": 1 / 2, "threshold_source": source, "n": 8,
                      "metrics": {"sensitivity": {"estimate": 3 / 4}, "specificity": {"estimate": 1 / 4}}})


def test_operating_point_prefers_the_test_report_with_a_validation_threshold(tmp_path):
    from medclf.serve.server import _operating_point, load_operating_point

    assert load_operating_point(tmp_path, CLASSES) is None
    write_results(tmp_path / "results_test.json", "test", "default", positive=None, task="multiclass")
    write_results(tmp_path / "results_val_grouped.json", "val", "validation:youden", ["bcc", "mel"])
    write_results(tmp_path / "results_test_fixed.json", "test", "fixed", ["bcc", "mel"])
    write_results(tmp_path / "results_test_other.json", "test", "validation:youden", ["bcc", "akiec"])
    write_results(tmp_path / "results_test_grouped.json", "test", "validation:youden", ["bcc", "mel"])
    point = load_operating_point(tmp_path, CLASSES)
    assert point["report"] == "results_test_grouped.json" and point["sensitivity"]["estimate"] == 3 / 4
    shown = _operating_point(point, [1 / 8, 3 / 8, 1 / 2], CLASSES)
    assert shown["probability"] == 1 / 2 and shown["at_or_above_threshold"]  # positive when p >= threshold
    assert not _operating_point(point, [1 / 8, 1 / 4, 5 / 8], CLASSES)["at_or_above_threshold"]
    assert load_operating_point(tmp_path, CLASSES, tmp_path / "results_test_fixed.json")["threshold_source"] == "fixed"


@pytest.mark.slow
def test_cli_binds_127_0_0_1_without_reload_and_refuses_a_missing_gate(run_dir, monkeypatch, capsys):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    assert cli.main(["serve", "--run", str(run_dir)]) == 0
    assert seen["host"] == "127.0.0.1" and seen["reload"] is False and seen["workers"] == 1
    assert cli.main(["serve", "--run", str(run_dir), "--quality-gate", str(run_dir / "nope.json")]) == 1
    assert "nope.json: no quality gate; create one with `medclf quality --run RUN`" in capsys.readouterr().err


# ------------------------------------------------------------------------ the real server, a real browser

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """`medclf serve` in its own process on a free 127.0.0.1 port; stopped after the module."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w")
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "medclf", "serve", "--run", str(run_dir), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/api/model", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"medclf serve did not start: {Path(log.name).read_text()}")
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def multipart(name, data):
    boundary = "medclfboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.slow
def test_concurrent_uploads_to_the_real_server_all_succeed_with_one_answer(server, ham_root):
    data = sorted((ham_root / "images").iterdir())[2].read_bytes()
    body, kind = multipart("a.jpg", data)

    def one(_):
        request = urllib.request.Request(server + "/api/predict", data=body, headers={"Content-Type": kind})
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())["images"][0]["probabilities"]

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(one, range(6)))
    assert all(status == 200 for status, _ in answers)
    assert all(p == answers[0][1] for _, p in answers)  # serialised forward passes: identical results


def launch_chromium(playwright):
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found; `bash scripts/setup.sh` installs Debian's chromium"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                            "--disable-component-update"])


@pytest.mark.slow
def test_amp_and_no_amp_set_the_serving_precision_and_neither_keeps_the_runs_own(run_dir):
    from medclf.engine.precision import choose_precision
    from medclf.infer.predict import inference_precision
    from medclf.serve.server import load_classifier

    as_trained = load_classifier(run_dir, device="cpu")
    assert as_trained.precision == inference_precision(as_trained.config, as_trained.device)
    assert load_classifier(run_dir, device="cpu", amp=False).precision.name == "fp32"
    assert load_classifier(run_dir, device="cpu", amp=True).precision.name == choose_precision("cpu", True).name


def test_the_page_in_chromium_shows_probabilities_and_heat_map_then_an_error(server, run_dir, ham_root, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    record = read_json(run_dir / "predictions_test.json")
    first = record["quality"].index("passed")
    image = Path(read_json(run_dir / "partition.json")["data_root"]) / record["paths"][first]
    (tmp_path / "notes.jpg").write_text("not an image\n")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        requested = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(server + "/")
        # expect() polls without evaluating a string: the page's policy (script-src 'self') forbids eval
        expect(page.locator("#model")).to_have_text(re.compile(r"^Model:"))
        assert page.locator("#metadata").is_hidden()  # an image-only run: no metadata inputs
        page.set_input_files("#files", str(image))
        page.click("#submit")
        page.wait_for_selector("table.probabilities", timeout=60_000)
        rows = page.locator("table.probabilities tr").all_inner_texts()
        assert [r.split("\t")[0] for r in rows[1:]] == CLASSES
        assert page.locator("img.heatmap").evaluate("img => img.complete && img.naturalWidth") == 32
        assert "P(malignant) = bcc + mel" in page.locator(".operating-point").inner_text()
        assert "not a diagnosis" in page.locator("#notice").inner_text()
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        page.set_input_files("#files", str(tmp_path / "notes.jpg"))
        page.click("#submit")
        page.wait_for_selector("#error:not([hidden])")
        assert "Error 415: notes.jpg: not an image" in page.locator("#error").inner_text()
        assert page.locator("table.probabilities").count() == 0
        page.goto(server + "/docs")  # Swagger UI from local files, under the content security policy
        page.wait_for_selector(".swagger-ui .opblock-summary-path[data-path='/api/predict']", timeout=60_000)
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000
    assert requested and all(u.startswith(server) or u.startswith("data:") for u in requested)


@pytest.mark.slow
def test_dicom_is_read_from_its_content_and_its_header_pixel_count_is_checked_first(client, tmp_path):
    import pydicom

    from image_files import write_dicom

    pixels = (np.add.outer(np.arange(64), np.arange(80)) * 50).astype(np.uint16)
    write_dicom(tmp_path / "slice", pixels)
    response = post(client, ("slice", (tmp_path / "slice").read_bytes(), "application/octet-stream"))
    assert response.status_code == 200, response.text
    entry = response.json()["images"][0]
    assert (entry["width"], entry["height"]) == (80, 64)
    ds = pydicom.dcmread(tmp_path / "slice")
    ds.Rows, ds.Columns = 60000, 60000  # a header claiming 3.6 Gpx over 10 KB of pixel data
    ds.save_as(tmp_path / "huge.dcm")
    response = post(client, ("huge.dcm", (tmp_path / "huge.dcm").read_bytes(), "application/dicom"))
    assert response.status_code == 422
    assert "huge.dcm: 60000 x 60000 pixels is above this server's limit" in response.json()["detail"]
