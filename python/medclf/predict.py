"""`medclf test`: predictions of a run's best.pt on a split, as predictions_<split>.json.

Format (medclf.predictions/1, see docs/training.md): split, classes, positive_class, model
{architecture, checkpoint, epoch}, paths (as in splits.csv), labels, predictions, probabilities
(softmax, or [1 - sigmoid, sigmoid] for a single-logit head), logits, and seed 002's keys
"predictive probabilities" (= probabilities) and "label probabilities" (one-hot labels), and
"uncertainty" {method, samples, members, predictive_entropy, expected_entropy, mutual_information}
(medclf.uncertainty): method "softmax" (one pass: entropy only) or "mc_dropout" (--mc-dropout K:
probabilities = the mean of K passes with dropout on, logits = its log); an ensemble will fill the
same block with method "ensemble" and its members.
"""

from pathlib import Path

import torch

from medclf import data as data_mod
from medclf import metadata, models, transforms, uncertainty
from medclf.engine import predict, probabilities_from_logits
from medclf.errors import MedclfError
from medclf.fileio import write_json
from medclf.run_config import read_run_config
from medclf.splits import load_run_splits, read_splits, refuse_images_seen_by_run
from medclf.training import load_checkpoint, select_device

from medclf.schemas import PREDICTIONS as PREDICTIONS_SCHEMA


def load_run(run_dir, device="cpu"):
    """(model, config, checkpoint) of a run folder's best.pt, loaded safely."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise MedclfError(f"{run_dir}: no config.json here; pass the folder `medclf train` wrote (results/NAME)")
    config = read_run_config(config_path)
    checkpoint = load_checkpoint(run_dir / "best.pt")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise MedclfError(f"{run_dir / 'best.pt'}: not a medclf checkpoint (no state_dict); re-run `medclf train`")
    model, _ = models.build_model(config["architecture"], config["n_outputs"], "none")
    model = metadata.fuse(model, config.get("metadata"), config["n_outputs"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise MedclfError(f"{run_dir / 'best.pt'}: weights do not fit {config['architecture']} ({exc})") from exc
    model.to(device).eval()
    return model, config, checkpoint


def dropout_layers(model):
    """Dropout modules with p > 0 (the ones MC dropout can switch on)."""
    kinds = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout)
    return [m for m in model.modules() if isinstance(m, kinds) and m.p > 0]


@torch.inference_mode()
def mc_dropout_samples(model, loader, device, passes, seed=0, amp=False):
    """(passes, N, K) probabilities with dropout active and everything else (batch norm) in eval mode."""
    from medclf.engine import _autocast, forward, to_device

    model.eval()
    for layer in dropout_layers(model):
        layer.train()
    torch.manual_seed(seed)
    batches = []
    for images, _ in loader:
        images = to_device(images, device)
        with _autocast(device, amp):
            batches.append(torch.stack([probabilities_from_logits(forward(model, images).float()).cpu()
                                        for _ in range(passes)]))
    model.eval()
    return torch.cat(batches, dim=1).double().numpy()


def predictions_record(split, config, checkpoint, checkpoint_name, paths, labels, logits, samples=None):
    """The predictions file; with MC samples, probabilities are their mean and logits its log."""
    probabilities = probabilities_from_logits(logits)
    if samples is None:
        unc = uncertainty.uncertainty_record("softmax", probabilities=probabilities.double().numpy())
    else:
        mean, measures = uncertainty.sample_uncertainty(samples)
        probabilities = torch.as_tensor(mean)
        logits = torch.log(torch.clamp(probabilities, min=1e-12))
        unc = uncertainty.uncertainty_record("mc_dropout", samples=int(samples.shape[0]), measures=measures)
    n_classes = len(config["classes"])
    labels = [int(x) for x in labels]
    probs = probabilities.tolist()
    return {
        "schema": PREDICTIONS_SCHEMA,
        "split": split,
        "classes": list(config["classes"]),
        "positive_class": config.get("positive_class"),
        "model": {"architecture": config["architecture"], "checkpoint": checkpoint_name,
                  "epoch": int(checkpoint.get("epoch", 0)) or None},
        "paths": list(paths),
        "labels": labels,
        "predictions": [int(x) for x in probabilities.argmax(dim=1).tolist()],
        "probabilities": probs,
        "logits": torch.as_tensor(logits, dtype=torch.float64).tolist(),
        "predictive probabilities": probs,
        "label probabilities": [[1.0 if k == y else 0.0 for k in range(n_classes)] for y in labels],
        "uncertainty": unc,
    }


def split_table_for_test(run_dir, config, splits=None, data_root=None, names=("test",)):
    """The run's own split by default; another splits file only for images the run never trained
    or selected on (named by `names`, the splits to be scored)."""
    own = load_run_splits(run_dir, config, data_root)
    if splits is None:
        return own
    other = read_splits(splits, data_root=data_root or config.get("data_root"))
    for name in names:
        refuse_images_seen_by_run(own, other, name)
    return other


def run_test(run_dir, split="test", splits=None, data_root=None, device="auto", batch_size=None, workers=0,
             progress=True, out_dir=None, mc_dropout=0):
    """Write predictions_<split>.json (and predictions_val.json when split is test). Returns the paths.
    mc_dropout=K > 0: K passes with dropout on, written to <run>/mc_dropout_K/ unless out_dir."""
    run_dir = Path(run_dir)
    device = select_device(device)
    model, config, checkpoint = load_run(run_dir, device)
    if mc_dropout:
        if mc_dropout < 2:
            raise MedclfError(f"--mc-dropout {mc_dropout}: needs at least 2 passes (e.g. 20)")
        if not dropout_layers(model):
            raise MedclfError(f"{run_dir}: --mc-dropout needs dropout layers, and {config['architecture']} has none "
                              "with p > 0; train an architecture with dropout (mobilenet_v3_small, efficientnet_b0, "
                              "vgg11_bn, squeezenet1_1, ...)")
        out_dir = out_dir or run_dir / f"mc_dropout_{mc_dropout}"
    args = config["arguments"]
    names = [split] + (["val"] if split == "test" else [])
    table = split_table_for_test(run_dir, config, splits, data_root, names)
    if [str(c) for c in table.classes] != list(config["classes"]):
        raise MedclfError(f"{table.source}: classes {table.classes} differ from the run's {config['classes']}; "
                          "test with the splits file the model was trained on")
    norm = config["normalisation"]
    transform = transforms.eval_transform(args["augment"], args["img_size"], norm["mean"], norm["std"])
    side = config.get("cache_side", transforms.cache_side(args["augment"], args["img_size"]))
    records = {}
    for name in names:
        files, labels, rel = data_mod.split_paths(table, name)
        if not files:
            raise MedclfError(f"{table.source}: the {name} split is empty; nothing to predict")
        cache = data_mod.build_cache(files, side, args.get("cache", "auto"), run_dir / "cache", name, progress)
        dataset = metadata.attach(config.get("metadata"), table, name,
                                  data_mod.CachedImageDataset(cache, labels, transform), run_dir)
        loader = data_mod.make_loader(dataset, batch_size or args["batch_size"], workers=workers)
        logits, _ = predict(model, loader, device, amp=bool(config.get("amp")))
        samples = (mc_dropout_samples(model, loader, device, mc_dropout, int(config.get("seed") or 0), bool(config.get("amp")))
                   if mc_dropout else None)
        records[Path(out_dir or run_dir) / f"predictions_{name}.json"] = \
            predictions_record(name, config, checkpoint, "best.pt", rel, labels, logits, samples)
    # Written only once every split has been predicted: a refusal on val leaves test's file as it was.
    for path, record in records.items():
        write_json(path, record)
    return list(records)
