"""medclf serve with a run trained with --metadata-features (issue 14): the API takes the run's
columns as form fields and answers exactly what `medclf test` writes for the same image and
splits.csv row; a column not sent is refused by name; an empty value is missing; /api/model lists
the columns so the page can build one input per column (checked in chromium)."""

import threading
import time

import numpy as np
import pandas as pd
import pytest

from medclf import cli
from medclf.core import schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json, write_json

from test_serve import free_port, launch_chromium

CLASSES = ["bcc", "mel", "nv"]
PER_SPLIT = {"train": 6, "val": 2, "test": 3}  # lesions per class and split: 33 images
COLUMNS = ["age", "sex", "localization"]
UNSEEN_SITE = "site_train_never_had"


def metadata_splits(ham_root, out):
    """A 3-class HAM10000 splits.csv (one image per lesion) with age, sex and localization as
    HAM10000_metadata.csv has them; three test rows are edited by hand: an empty age, a
    localization train never had, and sex `unknown` (HAM10000's missing token)."""
    meta = pd.read_csv(ham_root / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    meta = meta[[(ham_root / "images" / f"{i}.jpg").is_file() for i in meta["image_id"]]]
    frames = []
    for index, label in enumerate(CLASSES):
        lesions = meta[meta["dx"] == label].drop_duplicates("lesion_id").sort_values("image_id")
        lesions = lesions.head(sum(PER_SPLIT.values())).assign(label=label, label_index=index)
        lesions["split"] = [s for s, n in PER_SPLIT.items() for _ in range(n)]
        frames.append(lesions)
    frame = pd.concat(frames, ignore_index=True)
    frame["path"] = "images/" + frame["image_id"] + ".jpg"
    frame["group"] = frame["lesion_id"]
    test = frame.index[frame["split"] == "test"]
    frame.loc[test[0], "age"] = ""
    frame.loc[test[1], "localization"] = UNSEEN_SITE
    frame.loc[test[2], "sex"] = "unknown"
    frame = frame[["path", "label", "label_index", "split", "group", *COLUMNS]]
    out.mkdir(parents=True)
    frame.to_csv(out / "splits.csv", index=False)
    write_json(out / "partition.json", {"classes": CLASSES, "positive_class": None, "data_root": str(ham_root),
                                        "label_column": "dx"})
    return out / "splits.csv", frame


@pytest.fixture(scope="module")
def meta_run(ham_root, tmp_path_factory):
    """Trained once in fp32 (--no-amp), 32 px, 1 epoch, tested by the CLI; served with a quality gate
    without rules, so that every test image gets probabilities to compare (test_serve.py checks the
    gate itself)."""
    from medclf.train.training import run_training

    base = tmp_path_factory.mktemp("serve_metadata")
    splits, frame = metadata_splits(ham_root, base / "data")
    run_training({"splits": str(splits), "img_size": 32, "epochs": 1, "batch_size": 8, "out": str(base), "amp": False,
                  "run_name": "meta", "progress": False, "device": "cpu", "threads": 1,
                  "metadata_features": ",".join(COLUMNS)})
    run = base / "meta"
    assert cli.main(["test", "--run", str(run), "--no-progress"]) == 0
    write_json(base / "no_rules.json", {"schema": schemas.QUALITY, "rules": {}})
    return {"run": run, "frame": frame.set_index("path"), "root": ham_root, "gate": base / "no_rules.json"}


@pytest.fixture(scope="module")
def app(meta_run):
    from medclf.serve.launch import build_app

    return build_app(meta_run["run"], gate=meta_run["gate"])


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def image(meta_run, path):
    return (path.split("/")[-1], (meta_run["root"] / path).read_bytes(), "image/jpeg")


def post(client, files, fields):
    """multipart: each file in `files`, each column's values (a list) as repeated form fields."""
    data = {name: values for name, values in fields.items()}
    return client.post("/api/predict", files=[("files", f) for f in files], data=data)


@pytest.mark.slow
def test_model_info_and_schema_list_the_columns_with_their_kind_and_training_categories(client, meta_run):
    info = client.get("/api/model").json()
    train = meta_run["frame"].query("split == 'train'")

    def seen(column):  # the categories of the train rows, HAM10000's `unknown` and blanks being missing
        return sorted({v for v in train[column] if v.strip().lower() not in ("", "unknown")})

    assert info["metadata"] == [{"name": "age", "kind": "numeric", "categories": None},
                                {"name": "sex", "kind": "categorical", "categories": seen("sex")},
                                {"name": "localization", "kind": "categorical", "categories": seen("localization")}]
    assert UNSEEN_SITE not in info["metadata"][2]["categories"] and len(info["metadata"][2]["categories"]) >= 3
    schema = client.get("/openapi.json").json()
    ref = schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    fields = schema["components"]["schemas"][ref.split("/")[-1]]["properties"]
    assert list(fields) == ["files", *COLUMNS]


@pytest.mark.slow
def test_probabilities_equal_medclf_test_for_the_same_images_and_rows(client, meta_run):
    """Every test image in one request with its own splits.csv row (one value per file), as strings."""
    record = read_json(meta_run["run"] / "predictions_test.json")
    rows = meta_run["frame"].loc[record["paths"]]
    response = post(client, [image(meta_run, p) for p in record["paths"]],
                    {c: [str(v) for v in rows[c]] for c in COLUMNS})
    assert response.status_code == 200, response.text
    entries = response.json()["images"]
    assert len(entries) == len(record["paths"]) == 9
    for i in range(len(entries)):
        np.testing.assert_allclose(entries[i]["probabilities"], record["probabilities"][i], atol=1e-6)
        assert entries[i]["predicted_class"] == CLASSES[record["predictions"][i]]
        assert entries[i]["heatmap"]["target_class"] == entries[i]["predicted_class"]
    echo = {p: e["metadata"] for p, e in zip(record["paths"], entries)}
    by_hand = meta_run["frame"].query("split == 'test'")
    blank_age, unseen_site, unknown_sex = by_hand.index[:3]
    assert echo[blank_age]["age"] == {"value": "", "read_as": "missing"}
    assert echo[unseen_site]["localization"] == {"value": UNSEEN_SITE, "read_as": "missing"}
    assert echo[unknown_sex]["sex"] == {"value": "unknown", "read_as": "missing"}
    assert echo[unseen_site]["age"]["read_as"] == float(by_hand.loc[unseen_site, "age"])


@pytest.mark.slow
def test_one_value_per_field_holds_for_every_image_of_the_request(client, meta_run):
    record = read_json(meta_run["run"] / "predictions_test.json")
    paths = record["paths"][3:6]  # rows without hand edits
    row = meta_run["frame"].loc[paths[0]]
    one = post(client, [image(meta_run, paths[0])], {c: [row[c]] for c in COLUMNS}).json()["images"][0]
    many = post(client, [image(meta_run, p) for p in paths], {c: [row[c]] for c in COLUMNS}).json()["images"]
    assert [e["metadata"] for e in many] == [one["metadata"]] * 3
    np.testing.assert_allclose(many[0]["probabilities"], one["probabilities"], atol=1e-6)


@pytest.mark.slow
def test_an_empty_value_is_missing_as_a_blank_splits_cell_is(client, meta_run):
    path = read_json(meta_run["run"] / "predictions_test.json")["paths"][4]
    blank = post(client, [image(meta_run, path)], {c: [""] for c in COLUMNS})
    assert blank.status_code == 200, blank.text
    entry = blank.json()["images"][0]
    assert {c: v["read_as"] for c, v in entry["metadata"].items()} == {c: "missing" for c in COLUMNS}
    tokens = post(client, [image(meta_run, path)], {"age": ["NA"], "sex": ["unknown"], "localization": ["null"]})
    assert tokens.json()["images"][0]["probabilities"] == entry["probabilities"]  # missing tokens: the same
    row = meta_run["frame"].loc[path]
    known = post(client, [image(meta_run, path)], {c: [row[c]] for c in COLUMNS}).json()["images"][0]
    assert "missing" not in {v["read_as"] for v in known["metadata"].values()}
    assert np.abs(np.subtract(known["probabilities"], entry["probabilities"])).max() > 1e-4  # the row matters


@pytest.mark.slow
def test_a_column_not_sent_is_refused_by_name_and_other_value_counts_too(client, meta_run):
    files = [image(meta_run, p) for p in read_json(meta_run["run"] / "predictions_test.json")["paths"][:2]]
    response = post(client, files, {"age": ["50"]})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("form field(s) sex, localization missing; the run ")
    assert "--metadata-features age,sex,localization" in response.json()["detail"]
    assert "send each as a form field beside 'files' (an empty value is allowed" in response.json()["detail"]
    response = post(client, files, {"age": ["50", "60", "70"], "sex": ["male"], "localization": ["back"]})
    assert response.status_code == 422
    assert "form field age: 3 values for 2 files; send one value (for every image) or one per file" in \
        response.json()["detail"]


@pytest.mark.slow
def test_onnx_export_and_serving_an_onnx_file_with_a_metadata_run_are_refused(meta_run, monkeypatch):
    from medclf.infer import onnx_model
    from medclf.infer.export import run_export
    from medclf.serve import server as serve

    run = meta_run["run"]
    with pytest.raises(MedclfError, match=f"{run}: trained with --metadata-features age,sex,localization; an ONNX"):
        run_export(run)
    assert not (run / "model.onnx").exists()

    class ImageOnly:  # any ONNX export has one image input and the run's classes
        def __init__(self, path):
            self.class_names = CLASSES

    monkeypatch.setattr(onnx_model, "OnnxClassifier", ImageOnly)
    with pytest.raises(MedclfError, match="trained with --metadata-features, and an ONNX export takes images only"):
        serve.load_classifier(run, onnx="other.onnx")


@pytest.mark.slow
def test_the_page_shows_one_input_per_column_and_sends_them(app, client, meta_run):
    """The page against the same app, served by uvicorn in a thread: a number input for age, a select
    of the training categories plus `unknown` for sex and localization; the probabilities it shows
    are the API's for the values chosen."""
    import uvicorn
    from playwright.sync_api import sync_playwright

    record = read_json(meta_run["run"] / "predictions_test.json")
    path = record["paths"][4]
    info = client.get("/api/model").json()
    expected = post(client, [image(meta_run, path)], {"age": ["45"], "sex": ["male"], "localization": [""]})
    expected = expected.json()["images"][0]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#metadata:not([hidden]) select[name='localization']")
            assert page.locator("#metadata input[type='number'][name='age']").count() == 1
            options = page.locator("#metadata select[name='sex'] option")
            assert options.all_inner_texts() == ["unknown", *info["metadata"][1]["categories"]]
            assert options.first.get_attribute("value") == ""
            page.fill("#metadata input[name='age']", "45")
            page.select_option("#metadata select[name='sex']", "male")
            page.set_input_files("#files", str(meta_run["root"] / path))
            page.click("#submit")
            page.wait_for_selector("table.probabilities, #error:not([hidden])", timeout=60_000)
            shown = [float(t) for t in page.locator("table.probabilities td.p").all_inner_texts()]
            used = page.locator(".metadata-used").inner_text()
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    np.testing.assert_allclose(shown, expected["probabilities"], atol=6e-5)  # shown with 4 decimals
    assert used == "Metadata as the model read it: age 45, sex male, localization missing."
