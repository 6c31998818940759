"""Metadata fusion: patient and lesion columns of splits.csv next to the image
(`medclf train --metadata-features age,sex,localization`).

The encoder (medclf.metadata-encoder/1, plain JSON kept in the run's config.json under
"metadata") is fitted on the train split only:
  * numeric column (every present train value is a finite number): (x - mean) / std with the
    train mean and std (std 0 -> 1), plus a missing indicator; a missing value encodes as 0, 1;
  * categorical column: one-hot over the train values (sorted), plus an explicit `missing` level,
    which also takes values never seen in train (the encoder knows nothing about them).
A value is missing when it is empty or one of MISSING_TOKENS (case-insensitive), e.g. HAM10000's
`unknown` sex and localization.

The model (`FusionModel`) is any torchvision backbone with its head removed (its pooled
features), concatenated with a small MLP over the encoded metadata, then a linear head. Batches
are ((images, metadata), labels); `engine` moves and feeds both. Columns that give the label away
are refused by name (LEAKING_FEATURES) unless --allow-feature names them.
"""

import math

import numpy as np
import torch
from torch import nn

from medclf.core import schemas
from medclf.core.errors import MedclfError
from medclf.models import architectures as models

ENCODER_SCHEMA = schemas.METADATA_ENCODER
MISSING_TOKENS = ("", "na", "nan", "n/a", "none", "null", "unknown")
MISSING_LEVEL = "missing"
BRANCH_WIDTH = 32
# Columns that are known to carry the label; the reason goes into the refusal.
LEAKING_FEATURES = {
    "dx_type": "HAM10000's diagnosis method: follow_up exists only for nevi, so it gives the label away",
    "dx": "HAM10000's diagnosis, the label itself",
    "diagnosis": "the diagnosis, the label itself",
    "benign_malignant": "ISIC's benign/malignant verdict, the label itself",
    "target": "ISIC's label column",
}
_BOOKKEEPING = {"path", "split", "group", "fold"}
_LABELS = {"label", "label_index", "label_original"}


def parse_columns(value):
    """A comma-separated option (or a list) as a list of distinct names; None or '' -> []."""
    if value in (None, ""):
        return []
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if str(n).strip()]
    return list(dict.fromkeys(names))


def check_features(columns, table, allowed=()):
    """Refuse columns that are not in the splits file, are its bookkeeping, or leak the label."""
    source, present = table.source, [str(c) for c in table.frame.columns]
    label_column = (table.info or {}).get("label_column")
    for name in columns:
        if name in _BOOKKEEPING:
            raise MedclfError(f"--metadata-features {name}: a splits.csv bookkeeping column, not a patient or "
                              "lesion feature; leave it out")
        if name in _LABELS or name == label_column:
            raise MedclfError(f"--metadata-features {name}: it is the label ({source}); leave it out")
        if name in LEAKING_FEATURES and name not in allowed:
            raise MedclfError(f"--metadata-features {name}: refused, the column leaks the label ({LEAKING_FEATURES[name]}); "
                              f"leave it out, or pass --allow-feature {name} if it does not leak in your data")
        if name not in present:
            usable = [c for c in present if c not in _BOOKKEEPING | _LABELS]
            raise MedclfError(f"{source}: no column {name!r} for --metadata-features; columns here: "
                              f"{', '.join(usable) or 'none beyond the required ones'} (partition --metadata keeps "
                              "every column of the metadata CSV)")


def _is_missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        str(value).strip().lower() in MISSING_TOKENS


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fit_column(name, values):
    present = [str(v).strip() for v in values if not _is_missing(v)]
    numbers = [_number(v) for v in present]
    if present and all(n is not None for n in numbers):
        mean = float(np.mean(numbers))
        std = float(np.std(numbers))
        return {"name": name, "kind": "numeric", "mean": mean, "std": std if std > 0 else 1.0,
                "features": [name, f"{name}=missing"]}
    levels = sorted(set(present))
    return {"name": name, "kind": "categorical", "levels": levels,
            "features": [f"{name}={level}" for level in levels] + [f"{name}={MISSING_LEVEL}"]}


def fit_encoder(train_frame, columns):
    """The encoder of `columns`, from the rows given (the train split's, and only those)."""
    specs = [_fit_column(name, train_frame[name].tolist()) for name in columns]
    return {"schema": ENCODER_SCHEMA, "fitted_on": "train", "n_rows": int(len(train_frame)),
            "missing_tokens": list(MISSING_TOKENS), "columns": specs,
            "width": sum(len(s["features"]) for s in specs)}


def _encode_column(spec, values):
    out = np.zeros((len(values), len(spec["features"])), dtype=np.float32)
    for i, value in enumerate(values):
        if spec["kind"] == "numeric":
            number = None if _is_missing(value) else _number(value)
            if number is None:  # missing, or a value that is no number: the indicator says so
                out[i, 1] = 1.0
            else:
                out[i, 0] = (number - spec["mean"]) / spec["std"]
        else:
            value = None if _is_missing(value) else str(value).strip()
            levels = spec["levels"]
            out[i, levels.index(value) if value in levels else len(levels)] = 1.0
    return out


def encode(encoder, frame, source="splits.csv", run=None):
    """(N, width) float32 features of `frame`'s rows; a frame without the encoder's columns is refused."""
    names = [spec["name"] for spec in encoder["columns"]]
    absent = [n for n in names if n not in frame.columns]
    if absent:
        trained = f"the run {run} was" if run else "the model was"
        raise MedclfError(f"{source}: column(s) {', '.join(absent)} missing; {trained} trained with "
                          f"--metadata-features {','.join(names)}, so every prediction needs them: use a splits "
                          "file with these columns (empty values are allowed and encoded as missing)")
    if not names:
        return np.zeros((len(frame), 0), dtype=np.float32)
    return np.concatenate([_encode_column(spec, frame[spec["name"]].tolist()) for spec in encoder["columns"]], axis=1)


def fit_run_encoder(cfg, table):
    """The run's encoder: columns checked, fitted on the train split's rows. None without metadata."""
    columns = parse_columns(cfg.get("metadata_features"))
    if not columns:
        return None
    check_features(columns, table, parse_columns(cfg.get("allow_feature")))
    return fit_encoder(table.rows("train"), columns)


# ---------------------------------------------------------------- data

class MetadataDataset(torch.utils.data.Dataset):
    """((image, metadata row), label) from an image dataset and the encoded rows, in the same order."""

    def __init__(self, images, features):
        if len(images) != len(features):  # pragma: no cover - both come from the same split's rows
            raise ValueError(f"{len(images)} images but {len(features)} metadata rows")
        self.images, self.features = images, torch.as_tensor(features, dtype=torch.float32)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image, label = self.images[index]
        return (image, self.features[index]), label


def attach(encoder, table, split, dataset, run=None):
    """`dataset` with the split's encoded metadata alongside each image (unchanged without an encoder)."""
    if encoder is None:
        return dataset
    return MetadataDataset(dataset, encode(encoder, table.rows(split), table.source, run))


# ---------------------------------------------------------------- model

class FusionModel(nn.Module):
    """head(concat(backbone features, MLP(metadata))). forward(images, metadata) -> logits."""

    def __init__(self, backbone, n_metadata, n_outputs, branch_width=BRANCH_WIDTH):
        super().__init__()
        width = models.remove_head(backbone, "fusing metadata needs one; use another --arch")
        self.backbone = backbone
        self.metadata_branch = nn.Sequential(nn.Linear(n_metadata, branch_width), nn.ReLU(),
                                             nn.Linear(branch_width, branch_width), nn.ReLU())
        self.head = nn.Linear(width + branch_width, n_outputs)

    def forward(self, images, metadata):
        return fused_logits(self, images, metadata)


def fused_logits(model, images, metadata):
    """head(concat(flattened backbone(images), metadata_branch(metadata))) of a model with those parts."""
    features = torch.flatten(model.backbone(images), 1)
    return model.head(torch.cat([features, model.metadata_branch(metadata.to(features.device))], dim=1))


def fuse(model, encoder, n_outputs):
    """`model` (a torchvision classifier) fused with the metadata of `encoder`; unchanged without one."""
    return model if encoder is None else FusionModel(model, encoder["width"], n_outputs)


class BoundMetadata(nn.Module):
    """An image-only view of a FusionModel with one image's metadata row fixed, for explain (heat
    maps and perturbation checks call model(images); every image of a batch gets the row). It
    shares the fusion model's backbone, metadata_branch and head, so layer names
    (backbone.layer4) and the randomisation cascade (head, metadata_branch, backbone) see them."""

    def __init__(self, fusion, row):
        super().__init__()
        self.backbone, self.metadata_branch, self.head = fusion.backbone, fusion.metadata_branch, fusion.head
        self.register_buffer("row", torch.as_tensor(row, dtype=torch.float32).reshape(1, -1))

    def forward(self, images):
        return fused_logits(self, images, self.row.expand(images.shape[0], -1))


def image_only_models(model, config, table, rel_paths):
    """One model(images) per image: `model` itself for an image-only run, else a BoundMetadata with
    that image's encoded row from `table` (refused, naming them, when the columns are missing)."""
    encoder = config.get("metadata")
    if encoder is None:
        return [model] * len(rel_paths)
    frame = table.frame.set_index("path").loc[list(rel_paths)].reset_index()
    rows = encode(encoder, frame, table.source)
    return [BoundMetadata(model, row) for row in rows]


def read_as(encoder, row):
    """How the encoder reads one row (dict column -> value): per column the number, the category, or
    MISSING_LEVEL (a missing value, a category train never had, or a numeric column's non-number),
    decoded from `encode`'s own output so that it shows exactly what the model received."""
    import pandas as pd

    vector = encode(encoder, pd.DataFrame([row]))[0]
    out, start = {}, 0
    for spec in encoder["columns"]:
        part = vector[start:start + len(spec["features"])]
        start += len(spec["features"])
        if spec["kind"] == "numeric":
            out[spec["name"]] = MISSING_LEVEL if part[1] else float(f"{part[0] * spec['std'] + spec['mean']:.6g}")
        else:
            out[spec["name"]] = (spec["levels"] + [MISSING_LEVEL])[int(part.argmax())]
    return out
