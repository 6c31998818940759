"""medclf embed: the compute block's --amp (off by default: fp32 embeddings) and the precision recorded."""

import numpy as np
from splits_files import subset_splits

from medclf import cli
from medclf.engine.precision import choose_precision
from medclf.infer import embed


def test_embeddings_are_fp32_unless_amp_is_asked_for_and_the_precision_is_recorded(brain_partition, tmp_path):
    splits = subset_splits(brain_partition, tmp_path / "part", {"train": 4, "val": 2, "test": 2})
    common = ["embed", "--arch", "resnet18", "--weights", "none", "--splits", str(splits), "--img-size", "32",
              "--device", "cpu", "--threads", "1", "--no-progress"]
    assert cli.main([*common, "--out", str(tmp_path / "fp32.npz")]) == 0
    assert cli.main([*common, "--amp", "--out", str(tmp_path / "amp.npz")]) == 0
    plain, mixed = embed.read_embeddings(tmp_path / "fp32.npz"), embed.read_embeddings(tmp_path / "amp.npz")
    assert plain["meta"]["inference"]["precision"] == "fp32"
    assert mixed["meta"]["inference"]["precision"] == choose_precision("cpu", True).name  # bf16 where native, else fp32
    assert plain["embeddings"].dtype == mixed["embeddings"].dtype == np.float32
    assert list(plain["paths"]) == list(mixed["paths"]) and len(plain["paths"]) == 16
