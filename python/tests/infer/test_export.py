"""medclf export --format onnx and medclf.infer.onnx_model: onnxruntime against `medclf test`.

Three models on the real brain MRI images at 64 px: resnet18 trained, exported and tested through
the CLI; densenet121 trained with a single-logit head, exported and tested through the functions
the CLI calls; vgg11_bn built by medclf.models.architectures with seeded random weights (batch-norm statistics
from the train images; its 132 M parameters would make a trained run cost 2 GB of checkpoints
per epoch), exported through the same export function and compared with torch on the input
`medclf test` builds (test_numpy_preprocessing_equals_medclf_test_transform shows it is that input).
"""

import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from medclf import cli
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json
from medclf.core.splits import read_splits
from medclf.data import datasets as data
from medclf.data import preprocess, transforms
from medclf.data.imageio import read_image
from medclf.engine.steps import probabilities_from_logits
from medclf.evaluate.metrics import roc_auc
from medclf.infer import export, onnx_model
from medclf.infer.export import record_path, run_export
from medclf.infer.predict import run_test

from splits_files import subset_splits

IMG_SIZE = 64


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def splits(brain_mri_root, base):
    """Eight train and four val images per class (training is not the point), the whole test split."""
    full = base / "full"
    assert cli.main(["partition", "--data-root", str(brain_mri_root), "--out", str(full), "--quiet", "--seed", "0",
                     "--no-dedup"]) == 0
    return subset_splits(full / "splits.csv", base / "tiny", {"train": 8, "val": 4, "test": 1000})


@pytest.fixture(scope="module")
def resnet18_run(splits, base):
    """Trained, exported and tested with the commands a user types."""
    run = base / "resnet18"
    # --no-amp: the ONNX model computes in fp32, so it is compared with `medclf test` in fp32
    assert cli.main(["train", "--no-amp", "--splits", str(splits), "--arch", "resnet18", "--img-size", str(IMG_SIZE),
                     "--epochs", "1", "--batch-size", "8", "--threads", "1", "--no-progress", "--out", str(base),
                     "--run-name", "resnet18"]) == 0
    assert cli.main(["export", "--run", str(run), "--format", "onnx", "--no-progress"]) == 0
    assert cli.main(["test", "--run", str(run), "--no-progress"]) == 0
    return run


def densenet121_run(splits, base):
    from medclf.train.training import run_training

    run_training({"splits": str(splits), "arch": "densenet121", "head": "single-logit", "img_size": IMG_SIZE,
                  "amp": False,
                  "epochs": 1, "batch_size": 8, "out": str(base), "run_name": "densenet121", "progress": False,
                  "device": "cpu", "threads": 1})
    return base / "densenet121"


def vgg11_bn_export(splits, base, like):
    """(model.onnx, torch's test probabilities) of a seeded random vgg11_bn with `like`'s config."""
    from medclf.infer.export import check_batch, export_model, preprocessing_of
    from medclf.models.architectures import build_model

    config = dict(read_json(like / "config.json"), architecture="vgg11_bn")
    torch.manual_seed(0)
    model, _ = build_model("vgg11_bn", config["n_outputs"])
    prep = preprocessing_of(config)
    _fit_batchnorm(model, _split_input(splits, "train", prep))
    inputs, source = check_batch(like, config, prep, 16)
    out, _ = export_model(model, config, {"architecture": "vgg11_bn", "weights": "random, seed 0"},
                          base / "vgg11_bn.onnx", inputs, source, progress=False)
    with torch.inference_mode():
        logits = model(torch.from_numpy(_split_input(splits, "test", prep)))
    return out, probabilities_from_logits(logits).numpy()


def _split_input(splits, split, prep):
    files, _, _ = data.split_paths(read_splits(splits), split)
    return preprocess.model_input([read_image(f) for f in files], prep["resize_side"], prep["img_size"],
                                  prep["mean"], prep["std"])


def _fit_batchnorm(model, inputs):
    """Running statistics of every batch-norm layer from `inputs` (cumulative mean)."""
    for layer in model.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(inputs))
    model.eval()


@pytest.fixture(scope="module")
def exports(resnet18_run, splits, base):
    """{architecture: (model.onnx, the test split's probabilities by torch)}: `medclf test`'s
    predictions_test.json for the two runs, a torch forward pass for vgg11_bn."""
    densenet = densenet121_run(splits, base)
    run_export(densenet, progress=False)
    run_test(densenet, progress=False)
    found = {arch: (run / "model.onnx", np.asarray(read_json(run / "predictions_test.json")["probabilities"]))
             for arch, run in (("resnet18", resnet18_run), ("densenet121", densenet))}
    return dict(found, vgg11_bn=vgg11_bn_export(splits, base, resnet18_run))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn", "densenet121"])
def test_onnxruntime_matches_medclf_test(exports, splits, arch):
    path, expected = exports[arch]
    table = read_splits(splits)
    files, labels, _ = data.split_paths(table, "test")
    images = [read_image(f) for f in files]
    classifier = onnx_model.OnnxClassifier(path)
    assert classifier.class_names == ["no", "yes"] and classifier.img_size == IMG_SIZE
    positive = np.asarray(labels) == 1
    assert len(images) == len(expected) > 40 and 0 < positive.sum() < len(images)  # the whole test split
    for batch_size in (1, 8):
        got = np.concatenate([classifier.predict_proba(images[i:i + batch_size])
                              for i in range(0, len(images), batch_size)])
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)
        assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
        assert roc_auc(positive, got[:, 1]) == roc_auc(positive, expected[:, 1])
    assert len(np.unique(expected[:, 1].round(6))) > 10  # outputs vary: the comparison is not of constants


@pytest.mark.slow
def test_single_logit_head_becomes_two_sigmoid_columns(exports):
    run = exports["densenet121"][0].parent
    classifier = onnx_model.OnnxClassifier(run / "model.onnx")
    assert read_json(run / "config.json")["n_outputs"] == 1 and classifier.rule == "sigmoid"
    logits = np.asarray(read_json(run / "predictions_test.json")["logits"])
    assert logits.shape[1] == 1
    np.testing.assert_allclose(onnx_model.probabilities_from_logits(logits, "sigmoid")[:, 1],
                               1 / (1 + np.exp(-logits[:, 0])), rtol=1e-12)


@pytest.mark.slow
def test_model_file_metadata_and_record(resnet18_run):
    import onnx

    run = resnet18_run
    model = onnx.load(str(run / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    meta = onnx_model.read_metadata(props, "model.onnx")
    config = read_json(run / "config.json")
    assert meta["classes"] == ["no", "yes"] and meta["positive_class"] == "yes" and meta["probabilities"] == "softmax"
    prep = meta["preprocessing"]
    assert (prep["img_size"], prep["resize_side"]) == (IMG_SIZE, IMG_SIZE)
    assert (prep["mean"], prep["std"]) == (config["normalisation"]["mean"], config["normalisation"]["std"])
    from medclf.core.fileio import sha256_file

    assert meta["provenance"]["checkpoint_sha256"] == sha256_file(run / "best.pt")
    assert meta["provenance"]["architecture"] == "resnet18" and meta["provenance"]["epoch"] == 1
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # a named, free batch size
    record = read_json(record_path(run / "model.onnx"))
    assert record["schema"] == "medclf.onnx-export/1" and record["model_sha256"] == sha256_file(run / "model.onnx")
    assert record["check"]["source"] == "val split" and record["check"]["images"] == 8
    assert record["check"]["max_probability_difference"] <= 1e-4 and record["check"]["argmax_agrees"]


@pytest.mark.slow
def test_request_path_imports_no_torch(resnet18_run):
    run = resnet18_run
    image = read_splits(run / "splits.csv").resolve(read_json(run / "predictions_test.json")["paths"][0])
    code = ("import sys, json\nfrom medclf.data.imageio import read_image\nfrom medclf.infer.onnx_model import OnnxClassifier\n"
            f"p = OnnxClassifier({str(run / 'model.onnx')!r}).predict_proba([read_image({str(image)!r})])\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'p': p.tolist()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "python"), "PATH": "/usr/bin:/bin"})
    result = json.loads(out.stdout)
    assert result["torch"] is False
    expected = read_json(run / "predictions_test.json")["probabilities"][0]
    assert np.abs(np.asarray(result["p"][0]) - expected).max() <= 1e-4


@pytest.mark.parametrize("preset, img_size", [("none", 64), ("standard", 48)])
def test_numpy_preprocessing_equals_medclf_test_transform(brain_mri_root, preset, img_size):
    """The cached square, then eval_transform: same float32 tensor. standard at 48 px caches 55 px
    squares and crops at round(3.5) = 4, where a floor division would take 3."""
    files = sorted((brain_mri_root / "yes").iterdir())[:3] + sorted((brain_mri_root / "no").iterdir())[:3]
    side = transforms.cache_side(preset, img_size)
    mean, std = [0.2, 0.3, 0.4], [0.25, 0.2, 0.3]
    transform = transforms.eval_transform(preset, img_size, mean, std)
    cache = data.build_cache(files, side, "memory", progress=False)
    expected = torch.stack([transform(torch.from_numpy(np.array(c))) for c in cache]).numpy()
    got = preprocess.model_input([read_image(f) for f in files], side, img_size, mean, std)
    assert got.dtype == np.float32 and np.array_equal(got, expected)


def test_probabilities_follow_medclf_engine_on_hand_values():
    ln3 = math.log(3)
    softmax = onnx_model.probabilities_from_logits(np.float32([[0, ln3], [5, 5]]), "softmax")
    np.testing.assert_allclose(softmax, [[1 / 4, 3 / 4], [1 / 2, 1 / 2]], rtol=1e-7)
    single = np.float32([[0], [ln3], [-ln3], [1000], [-1000]])
    sigmoid = onnx_model.probabilities_from_logits(single, "sigmoid")
    np.testing.assert_allclose(sigmoid, [[1 / 2, 1 / 2], [1 / 4, 3 / 4], [3 / 4, 1 / 4], [0, 1], [1, 0]], rtol=1e-7)
    for logits, rule in ((np.float32([[0.3, -1.2, 2.5]]), "softmax"), (single, "sigmoid")):
        np.testing.assert_allclose(onnx_model.probabilities_from_logits(logits, rule),
                                   probabilities_from_logits(torch.from_numpy(logits)).numpy(), rtol=0, atol=1e-15)


def _error(capsys, argv):
    assert cli.main(argv) == 1
    return capsys.readouterr().err


@pytest.mark.slow
def test_missing_run_best_pt_and_unknown_format_are_one_line_errors(resnet18_run, tmp_path, capsys):
    assert "no config.json here" in _error(capsys, ["export", "--run", str(tmp_path / "nowhere")])
    shutil.copy(resnet18_run / "config.json", tmp_path / "config.json")
    err = _error(capsys, ["export", "--run", str(tmp_path)])
    assert f"{tmp_path / 'best.pt'}: checkpoint not found" in err and "Traceback" not in err
    err = _error(capsys, ["export", "--run", str(resnet18_run), "--format", "tflite"])
    assert err.strip() == "medclf export: error: --format tflite: unknown export format; use --format onnx"
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow
def test_exporter_failure_is_refused_and_keeps_the_existing_file(resnet18_run, tmp_path, capsys, monkeypatch):
    def failing_export(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::frobnicate\nlong trace")

    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")
    monkeypatch.setattr(torch.onnx, "export", failing_export)
    err = _error(capsys, ["export", "--run", str(resnet18_run), "--out", str(out), "--no-progress"])
    assert "ResNet: torch.onnx.export (dynamo) failed (RuntimeError: Unsupported operator aten::frobnicate)" in err
    assert out.read_bytes() == b"previous export" and not record_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left


@pytest.mark.slow
def test_an_export_that_disagrees_with_torch_is_refused(resnet18_run, tmp_path, monkeypatch):
    """The exporter stands in with resnet18's own ONNX graph, its fc bias shifted by 0.5: checker
    and onnxruntime accept it, the comparison with torch on the val images must not."""
    import onnx_ir

    def wrong_program(model, img_size, opset=None):
        graph = onnx_ir.load(str(resnet18_run / "model.onnx"))
        bias = graph.graph.initializers["fc.bias"]
        bias.const_value = onnx_ir.tensor(bias.const_value.numpy() + np.float32([0.5, 0]))
        return torch.onnx.ONNXProgram(graph, None)

    monkeypatch.setattr(export, "export_program", wrong_program)
    with pytest.raises(MedclfError, match=r"onnxruntime and torch disagree on the val split check inputs "
                                          r"\(largest probability difference \S+, tolerance 0.0001, argmax"):
        run_export(resnet18_run, out=tmp_path / "m.onnx", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, message", [
    (b"not a model", "onnxruntime cannot load this model"),
    (None, "not a medclf ONNX export (metadata lacks medclf.schema"),
])
def test_foreign_onnx_files_are_refused(tmp_path, content, message):
    import onnx
    from onnx import TensorProto, helper

    path = tmp_path / "other.onnx"
    if content is None:  # a valid model without medclf's metadata
        graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g",
                                  [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 2])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(MedclfError, match=re.escape(message)):
        onnx_model.OnnxClassifier(path)


@pytest.mark.slow
def test_missing_onnx_libraries_name_the_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(MedclfError, match=re.escape("needs onnxscript: pip install 'medclf[onnx]'")):
        run_export(tmp_path, progress=False)


@pytest.mark.slow
def test_check_images_that_moved_are_named_and_random_inputs_are_offered(resnet18_run, tmp_path, capsys):
    err = _error(capsys, ["export", "--run", str(resnet18_run), "--data-root", str(tmp_path), "--out",
                          str(tmp_path / "m.onnx"), "--no-progress"])
    assert "cannot read image (file not found); the export is checked on the run's val images" in err
    assert "--check 0" in err and not (tmp_path / "m.onnx").exists()
    from medclf.infer.export import check_batch

    inputs, source = check_batch(resnet18_run, None, {"img_size": 8}, 0)
    assert source == "random" and inputs.shape == (2, 3, 8, 8) and inputs.dtype == np.float32


@pytest.mark.slow
def test_serve_onnx_answers_as_medclf_test(resnet18_run):
    """`medclf serve --onnx`: the exported model behind the real app gives `medclf test`'s
    probabilities, and says that it has no heat map (Grad-CAM needs the torch model)."""
    from fastapi.testclient import TestClient

    from medclf.serve.launch import build_app
    from medclf.serve.server import load_classifier
    from medclf.serve.webapp import Limits

    run = resnet18_run
    assert isinstance(load_classifier(None, run / "model.onnx"), onnx_model.OnnxClassifier)
    record = read_json(run / "predictions_test.json")
    table = read_splits(run / "splits.csv")
    app = build_app(run, run / "model.onnx", gate="seed003", limits=Limits(max_upload_bytes=2 * 1024 * 1024,
                                                                           max_pixels=25_000_000, max_files=16))
    picked = list(range(4))
    files = [("files", (f"{i}.img", table.resolve(record["paths"][i]).read_bytes(), "application/octet-stream"))
             for i in picked]
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/api/predict", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["heatmap_note"] and body["classes"] == ["no", "yes"]
    scored = [(i, entry) for i, entry in zip(picked, body["images"]) if entry["probabilities"] is not None]
    assert scored  # the seed003 gate passes real MRI slices
    for i, entry in scored:
        assert np.abs(np.array(entry["probabilities"]) - record["probabilities"][i]).max() <= 1e-4
        assert entry["heatmap"] is None
