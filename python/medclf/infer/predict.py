"""`medclf test`: predictions of a run's best.pt on a split, as predictions_<split>.json.

Format (medclf.predictions/1, see docs/training.md): split, classes, positive_class, model
{architecture, checkpoint, epoch}, paths (as in splits.csv), labels, predictions, probabilities
(softmax, or [1 - sigmoid, sigmoid] for a single-logit head), logits, and seed 002's keys
"predictive probabilities" (= probabilities) and "label probabilities" (one-hot labels), and
"uncertainty" {method, samples, members, predictive_entropy, expected_entropy, mutual_information}
(medclf.evaluate.uncertainty): method "softmax" (one pass: entropy only) or "mc_dropout" (--mc-dropout K:
probabilities = the mean of K passes with dropout on, logits = its log); an ensemble will fill the
same block with method "ensemble" and its members; "inference" {device, precision, reason}: how
the logits were computed (medclf.engine.precision).

Test-time augmentation (--tta none|hflip|flips|dihedral|K): the probabilities are the mean of the
softmax probabilities over the views (`TTA_VIEWS`, in a nested order, so K views are the first K
of the dihedral group), logits its log, and `model.tta` records {"views", "reduction"} (absent
without TTA); written
to <run>/tta_<name>/ unless out_dir, so the plain predictions stay beside them.
"""

import re
from pathlib import Path

import torch

from medclf.core import layout
from medclf.core.errors import MedclfError
from medclf.core.fileio import sha256_file, write_json, write_text
from medclf.core.predictions import LOG_CLIP, build_record
from medclf.core.run_config import read_run_config
from medclf.core.splits import RUN_COPIES, SEEN_BY_RUN, load_run_splits, read_splits, refuse_images_seen_by_run
from medclf.data import datasets as data_mod
from medclf.data import transforms
from medclf.data.image_cache import content_hashes
from medclf.engine.precision import choose_precision, log_precision, select_device
from medclf.engine.steps import forward, predict, probabilities_from_logits
from medclf.evaluate import uncertainty
from medclf.models import architectures as models
from medclf.models import metadata
from medclf.train.training import load_checkpoint


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


def inference_precision(config, device, amp=None):
    """The Precision `test` and `explain` predict in: `amp` as given (--amp / --no-amp), else the
    run's own training choice (a run trained with --no-amp is tested in fp32), on this device."""
    if amp is None and config["arguments"].get("amp") is False:
        amp = False
    return choose_precision(device, amp)


@torch.inference_mode()
def mc_dropout_samples(model, loader, precision, passes, seed=0):
    """(passes, N, K) probabilities with dropout active and everything else (batch norm) in eval mode."""
    model.eval()
    for layer in dropout_layers(model):
        layer.train()
    torch.manual_seed(seed)
    batches = []
    for images, _ in loader:
        images = precision.to_device(images)
        with precision.autocast():
            batches.append(torch.stack([probabilities_from_logits(forward(model, images).float()).cpu()
                                        for _ in range(passes)]))
    model.eval()
    return torch.cat(batches, dim=1).double().numpy()


# The 8 symmetries of the square (the dihedral group), ordered so that the first 2 are hflip, the first 4
# the flips: each view maps an (N, C, H, W) batch to a transformed copy.
TTA_VIEWS = {
    "identity": lambda x: x,
    "hflip": lambda x: torch.flip(x, dims=(3,)),
    "vflip": lambda x: torch.flip(x, dims=(2,)),
    "rot180": lambda x: torch.rot90(x, 2, dims=(2, 3)),
    "rot90": lambda x: torch.rot90(x, 1, dims=(2, 3)),
    "rot270": lambda x: torch.rot90(x, 3, dims=(2, 3)),
    "transpose": lambda x: x.transpose(2, 3),
    "antitranspose": lambda x: torch.rot90(x, 2, dims=(2, 3)).transpose(2, 3),
}
TTA_PRESETS = {"none": 1, "hflip": 2, "flips": 4, "dihedral": 8}


def tta_views(spec):
    """The view names of --tta none|hflip|flips|dihedral|K (K = the first K of TTA_VIEWS, 1..8)."""
    spec = str(spec).strip().lower()
    count = TTA_PRESETS.get(spec)
    if count is None:
        try:
            count = int(spec)
        except ValueError:
            count = 0
    if not 1 <= count <= len(TTA_VIEWS):
        raise MedclfError(f"--tta {spec}: use none, hflip, flips, dihedral or a number of views 1..{len(TTA_VIEWS)}")
    return list(TTA_VIEWS)[:count]


def tta_name(views):
    """The folder suffix of a set of views: a preset's name where it is one, else the view count."""
    by_count = {n: name for name, n in TTA_PRESETS.items()}
    return by_count.get(len(views), str(len(views)))


def _tta_view(name, inputs):
    """The view of the images; a metadata run's (images, metadata) keeps its metadata."""
    if isinstance(inputs, (list, tuple)):
        return [TTA_VIEWS[name](inputs[0]), *inputs[1:]]
    return TTA_VIEWS[name](inputs)


@torch.inference_mode()
def tta_probabilities(model, loader, precision, views):
    """(N, K) float64 mean of the softmax probabilities over `views` (names of TTA_VIEWS)."""
    model.eval()
    batches = []
    for images, _ in loader:
        images = precision.to_device(images)
        total = 0
        for name in views:
            with precision.autocast():
                logits = forward(model, _tta_view(name, images))
            total = total + probabilities_from_logits(logits.float().cpu())
        batches.append(total / len(views))
    return torch.cat(batches).double() if batches else torch.zeros(0, 2, dtype=torch.float64)


def predict_probabilities(model, loader, precision, views=("identity",)):
    """(logits, probabilities) of a loader: one pass without TTA, else the mean over the views
    with logits = log(mean probability)."""
    if list(views) == ["identity"]:
        logits, _ = predict(model, loader, precision)
        return logits, probabilities_from_logits(logits)
    probabilities = tta_probabilities(model, loader, precision, views)
    return torch.log(torch.clamp(probabilities, min=1e-300)), probabilities


def predictions_record(split, config, checkpoint, checkpoint_name, paths, labels, logits, samples=None,
                       tta=("identity",), inference=None):
    """The predictions file; with MC samples, probabilities are their mean and logits its log.
    With TTA views the logits are log(mean probability) (predict_probabilities): their softmax
    is that mean."""
    probabilities = probabilities_from_logits(logits)
    model = {"architecture": config["architecture"], "checkpoint": checkpoint_name,
             "epoch": int(checkpoint.get("epoch", 0)) or None}
    if list(tta) != ["identity"]:
        model["tta"] = {"views": list(tta), "reduction": "mean of softmax probabilities"}
    if samples is None:
        unc = uncertainty.uncertainty_record("softmax", probabilities=probabilities.double().numpy())
    else:
        mean, measures = uncertainty.sample_uncertainty(samples)
        probabilities = torch.as_tensor(mean)
        logits = torch.log(torch.clamp(probabilities, min=LOG_CLIP))
        unc = uncertainty.uncertainty_record("mc_dropout", samples=int(samples.shape[0]), measures=measures)
    return build_record(split, config["classes"], config.get("positive_class"), model, paths, labels,
                        probabilities.double().numpy(), torch.as_tensor(logits, dtype=torch.float64).numpy(), unc,
                        inference=inference)


def split_table_for_test(run_dir, config, splits=None, data_root=None, names=("test",)):
    """The run's own split by default; another splits file only for images the run never trained
    or selected on (named by `names`, the splits to be scored)."""
    own = load_run_splits(run_dir, config, data_root)
    if splits is None:
        return own
    other = read_splits(splits, data_root=data_root or config.get("data_root"))
    memo_root = data_mod.cache_root(config["arguments"].get("cache_dir"), Path(run_dir).parent)
    # the run's images where --data-root moved them, else where the run read them
    own_tables = [own] + ([load_run_splits(run_dir, config)] if data_root else [])
    for name in names:
        refuse_images_seen_by_run(own, other, name)
        refuse_copies_seen_by_run(own_tables, other, name, memo_root)
    return other


def refuse_copies_seen_by_run(own_tables, other, name, memo_root):
    """Refuse images of `other`'s `name` split whose bytes equal an image the run trained or selected
    on (the rows of own_tables[0], found under any of the tables' roots): another dataset (another
    site, a re-export) may hold copies under other names."""
    def first_file(path):
        return next((Path(t.resolve(path)) for t in own_tables if Path(t.resolve(path)).is_file()), None)

    seen = [first_file(p) for split in SEEN_BY_RUN[name] for p in own_tables[0].rows(split)["path"]]
    seen = [path for path in seen if path is not None]
    scored = [p for p in other.rows(name)["path"] if Path(other.resolve(p)).is_file()]
    scored_files = [Path(other.resolve(p)) for p in scored]
    if not seen or not scored:
        return
    seen_hashes = set(content_hashes(seen, memo_root, remember=False))  # a refused command writes nothing
    hits = [p for p, h in zip(scored, content_hashes(scored_files, memo_root, remember=False)) if h in seen_hashes]
    if hits:
        shown = ", ".join(hits[:5]) + (f" and {len(hits) - 5} more" if len(hits) > 5 else "")
        raise MedclfError(f"{other.source}: {len(hits)} image(s) of its {name} split have the same bytes as images in the "
                          f"{' or '.join(SEEN_BY_RUN[name])} split the run was trained on (e.g. {shown}); "
                          f"leave them out of {other.source} (copies are not external data)")


EXTERNAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")


def checked_external_folder(run_dir, name, splits):
    """<run>/external_<name>/ for --external (checked: a name for a folder, and another splits file)."""
    if splits is None:
        raise MedclfError(f"--external {name}: name the other dataset's splits file with --splits")
    if not EXTERNAL_NAME.fullmatch(str(name)):
        raise MedclfError(f"--external '{name}': use letters, digits, '.' and '-' (e.g. site-b); it names a folder")
    return layout.external_folder(run_dir, name)


def run_test(run_dir, split="test", splits=None, data_root=None, device="auto", batch_size=None, workers=0,
             progress=True, out_dir=None, mc_dropout=0, tta="none", amp=None, external=None):
    """Write predictions_<split>.json (and predictions_val.json when split is test). Returns the paths.
    mc_dropout=K > 0: K passes with dropout on, written to <run>/mc_dropout_K/ unless out_dir.
    tta: --tta views (tta_views), written to <run>/tta_<name>/ unless out_dir.
    amp: True/False = --amp/--no-amp; None = as the run was trained (`inference_precision`).
    external=NAME: `splits`' `split` only, into <run>/external_NAME/ with a copy of the splits file,
    each record marked `external` (name, splits file and its SHA-256)."""
    run_dir = Path(run_dir)
    if external is not None:
        out_dir = out_dir or checked_external_folder(run_dir, external, splits)
    views = tta_views(tta)
    if mc_dropout and len(views) > 1:
        raise MedclfError(f"--mc-dropout with --tta {tta}: choose one of them (each averages its own passes)")
    if len(views) > 1:
        out_dir = out_dir or run_dir / f"tta_{tta_name(views)}"
    device = select_device(device)
    model, config, checkpoint = load_run(run_dir, device)
    precision = inference_precision(config, device, amp)
    precision.prepare_model(model)
    if mc_dropout:
        if mc_dropout < 2:
            raise MedclfError(f"--mc-dropout {mc_dropout}: needs at least 2 passes (e.g. 20)")
        if not dropout_layers(model):
            raise MedclfError(f"{run_dir}: --mc-dropout needs dropout layers, and {config['architecture']} has none "
                              "with p > 0; train an architecture with dropout (mobilenet_v3_small, efficientnet_b0, "
                              "vgg11_bn, squeezenet1_1, ...)")
        out_dir = out_dir or run_dir / f"mc_dropout_{mc_dropout}"
    args = config["arguments"]
    names = [split] + (["val"] if split == "test" and external is None else [])
    table = split_table_for_test(run_dir, config, splits, data_root, names)
    if [str(c) for c in table.classes] != list(config["classes"]):
        raise MedclfError(f"{table.source}: classes {table.classes} differ from the run's {config['classes']}; "
                          "test with the splits file the model was trained on")
    run_input = transforms.eval_input(config)
    transform, side = run_input.transform, run_input.side
    records = {}
    for name in names:
        files, labels, rel = data_mod.split_paths(table, name)
        if not files:
            raise MedclfError(f"{table.source}: the {name} split is empty; nothing to predict")
        cache = data_mod.build_cache(files, side, args.get("cache", "auto"),
                                     data_mod.cache_root(args.get("cache_dir"), run_dir.parent), name, progress)
        dataset = metadata.attach(config.get("metadata"), table, name,
                                  data_mod.CachedImageDataset(cache, labels, transform), run_dir)
        loader = data_mod.make_loader(dataset, batch_size or args["batch_size"], workers=workers)
        logits, _ = predict_probabilities(model, loader, precision, views)
        samples = (mc_dropout_samples(model, loader, precision, mc_dropout, int(config.get("seed") or 0))
                   if mc_dropout else None)
        records[layout.predictions_file(out_dir or run_dir, name)] = \
            predictions_record(name, config, checkpoint, "best.pt", rel, labels, logits, samples, views,
                               precision.record())
    log_precision("test", precision)  # after every refusal: an error stays one line
    if external is not None:
        marked = {"name": external, "splits": str(Path(table.source).resolve()), "sha256": sha256_file(table.source)}
        records = {path: dict(record, external=marked) for path, record in records.items()}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for name in RUN_COPIES:  # splits.csv and partition.json: the groups and metadata columns of its images
            source = Path(table.source).with_name(name)
            if source.is_file():
                write_text(Path(out_dir) / name, source.read_text(encoding="utf-8"))
    # Written only once every split has been predicted: a refusal on val leaves test's file as it was.
    for path, record in records.items():
        write_json(path, record)
    return list(records)
