"""The original README's train and test commands (paths replaced) on the seed 002 layout."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medclf import cli
from medclf.workflows import seed002_scripts
from medclf.workflows.seed002_scripts import strip_model_suffix, train_parser

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread: faster on a busy 2-core machine
README_TRAIN = ("python C:\\mlprojects\\basic_image_classification\\train_torchvision.py -project_directory "
                "C:\\mlprojects\\kaggle_brain_classification\\ -num_epochs 256 -num_classes 2 -learning_rate 0.001 "
                "-patience 5 -batch_size 25 -model_save_name resnet_1.pth.tar -img_shape 3 224 224 "
                "-architecture resnet18 --use_GPU")
README_TEST = ("python C:\\mlprojects\\basic_image_classification\\test_torchvision.py -dir "
               "C:\\mlprojects\\kaggle_brain_classification\\ -classes 2 -batch_size 100 -save resnet_1.pth.tar "
               "-architecture resnet18 -result_json_name resnet_1_preds.json -img_size 3 224 224 --use_GPU")


def readme_args(command, project, **changes):
    """The README command's arguments with the Windows paths replaced (and any `changes`)."""
    args = shlex.split(command.replace("\\", "/"))[2:]
    args = [str(project) if a.startswith("C:/mlprojects/kaggle") else a for a in args]
    for flag, value in changes.items():
        i = args.index(flag)
        args[i + 1: i + 1 + len(value)] = value
    return args


def test_readme_commands_parse_unchanged(tmp_path):
    train = train_parser().parse_args(readme_args(README_TRAIN, tmp_path))
    assert (train.num_epochs, train.batch_size, train.use_GPU, train.architecture) == (256, 25, True, "resnet18")
    assert train.img_shape == ["3", "224", "224"]
    single_dash = train_parser().parse_args(readme_args(README_TRAIN, tmp_path)[:-1] + ["-use_GPU"])
    assert single_dash.use_GPU
    test = seed002_scripts.test_parser().parse_args(readme_args(README_TEST, tmp_path))
    assert (test.model_load_name, test.result_json_name, test.use_GPU) == ("resnet_1.pth.tar", "resnet_1_preds.json", True)


@pytest.mark.parametrize("name,stem", [("resnet_1.pth.tar", "resnet_1"), ("m.pth", "m"), ("m.pt", "m"),
                                       ("model", "model"), ("a.b.ckpt", "a.b")])
def test_model_suffixes_are_stripped_properly(name, stem):
    assert strip_model_suffix(name) == stem


@pytest.mark.slow
def test_readme_train_and_test_run_on_the_seed002_layout(brain_partition, tmp_path):
    splits = brain_partition
    project = tmp_path / "kaggle_brain_classification"
    assert cli.main(["organize", "--splits", str(splits), "--out", str(project), "--layout", "seed002",
                     "--mode", "copy", "--quiet"]) == 0
    # Only the paths, the epochs and the image size (64 px, to keep the test short) differ from the README.
    train_args = readme_args(README_TRAIN, project, **{"-num_epochs": ["2"], "-img_shape": ["3", "64", "64"]})
    done = subprocess.run([sys.executable, str(REPO / "python" / "train_torchvision.py"), *train_args],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    if not torch.cuda.is_available():
        assert "CUDA requested but not available" in done.stderr
    checkpoint = torch.load(project / "models" / "resnet_1.pth.tar", weights_only=True)
    assert set(checkpoint) == {"state_dict", "optimizer"}
    losses = json.loads((project / "results" / "resnet_1_loss_values.json").read_text())
    assert set(losses) == {"loss values", "accuracy values", "val loss values", "val accuracy values"}
    assert [pair[0] for pair in losses["loss values"]] == [1, 2]
    hyper = json.loads((project / "results" / "resnet_1_hyperparameters.json").read_text())
    assert hyper["batch size"] == 25 and hyper["optimizer"]["lr"] == 0.001 and hyper["patience"] == 5
    assert (project / "results" / "medclf_resnet_1" / "best.pt").is_file()

    test_args = readme_args(README_TEST, project, **{"-img_size": ["3", "64", "64"]})
    tested = subprocess.run([sys.executable, str(REPO / "python" / "test_torchvision.py"), *test_args],
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert tested.returncode == 0, tested.stderr
    preds = json.loads((project / "resnet_1_preds.json").read_text())
    assert list(preds) == ["labels", "predictions", "predictive probabilities", "label probabilities"]
    n_test = len((project / "csv" / "test.csv").read_text().splitlines())
    assert len(preds["labels"]) == n_test and all(len(p) == 2 for p in preds["predictive probabilities"])
    assert all(abs(sum(p) - 1) < 1e-9 for p in preds["predictive probabilities"])
    assert (project / "results" / "medclf_resnet_1" / "predictions_test.json").is_file()
