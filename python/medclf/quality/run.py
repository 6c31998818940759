"""`medclf quality`: the gate's measurements of a run's splits or a folder, and the degradation study,
written into one output folder (quality.csv, quality.json, degradation.*)."""

from pathlib import Path

import pandas as pd

from medclf.core import schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json, write_json
from medclf.quality import degradation
from medclf.quality.gate import quality_of_folder, quality_of_splits, rejection_summary, write_csv


def run_degradation_study(run_dir, gate, out_dir, device="auto", progress=True, amp=False):
    """degradation.csv, degradation.json and degradation.png for the run's test split; predicted in
    fp32, or with amp=True (--amp) in the device's mixed precision."""
    from medclf.core.provenance import git_commit, library_versions
    from medclf.core.splits import read_splits
    from medclf.engine.precision import choose_precision, select_device
    from medclf.infer.predict import load_run

    device = select_device(device)
    model, config, _ = load_run(run_dir, device)
    precision = choose_precision(device, bool(amp))
    precision.prepare_model(model)
    if config.get("metadata"):  # the degraded copies are images alone
        raise MedclfError(f"{run_dir}: trained with --metadata-features; the degradation study scores image-only "
                          "runs, so run it on a run trained without metadata")
    table = read_splits(config.get("splits_file") or config["arguments"]["splits"], data_root=config.get("data_root"))
    test = table.rows("test")
    if test.empty:
        raise MedclfError(f"{table.source}: the test split is empty; the degradation study runs on test images")
    classes = [str(c) for c in config["classes"]]
    positive = classes.index(str(config.get("positive_class"))) if str(config.get("positive_class")) in classes else 1
    rows, false_reject = degradation.run_degradation(
        model, config, [table.resolve(p) for p in test["path"]], test["label_index"].astype(int).tolist(),
        gate, positive, precision, progress)
    out_dir = Path(out_dir)
    write_csv(out_dir / "degradation.csv", pd.DataFrame(rows))
    summary = {"schema": schemas.DEGRADATION, "run": str(run_dir), "split": "test", "gate": gate,
               "degradations": degradation.DEGRADATIONS, "false_reject_clean": false_reject, "rows": rows,
               "inference": precision.record(),
               "library_versions": library_versions(), "git_commit": git_commit()}
    write_json(out_dir / "degradation.json", summary)
    degradation.write_degradation_plot(out_dir / "degradation.png", rows, false_reject,
                                       f"{config['architecture']} {Path(run_dir).name}: test split, gate {gate['preset']}")
    return {"json": out_dir / "degradation.json", "plot": out_dir / "degradation.png", "false_reject": false_reject}


def _table_and_out(run_dir, splits, out_dir, data_root):
    from medclf.core.splits import read_splits

    if run_dir is not None:
        config = read_json(Path(run_dir) / "config.json")
        splits = config.get("splits_file") or config["arguments"]["splits"]
        data_root = data_root or config.get("data_root")
    table = read_splits(splits, data_root=data_root)
    return table, Path(out_dir or run_dir or Path(splits).parent)


def run_quality(run_dir=None, splits=None, folder=None, out_dir=None, preset="calibrated", percentile=1.0,
                gate_path=None, gate_out=None, data_root=None, degrade=False, device="auto", progress=True,
                amp=False):
    """The `medclf quality` stage; yields the lines it prints (summaries, then paths written)."""
    if degrade and run_dir is None:
        raise MedclfError("--degrade needs --run RUN: the study predicts the run's test split")
    if folder is not None:
        if out_dir is None:
            raise MedclfError(f"{folder}: --folder needs --out DIR for quality.csv (the image folder is never written)")
        written = quality_of_folder(folder, out_dir, gate_path, preset, progress)
        lines = []
    else:
        table, out_dir = _table_and_out(run_dir, splits, out_dir, data_root)
        written = quality_of_splits(table, out_dir, gate_out, preset, percentile, progress)
        lines = [str(written["gate"])]
    for s in rejection_summary(written["rows"]):
        chosen = f"gate rejects {s['rejected']}/{s['n']}, " if "rejected" in s else ""
        yield f"{s['split']}: {chosen}seed003 preset rejects {s['seed003_rejected']}/{s['n']}"
    yield from lines
    yield str(written["csv"])
    if degrade:
        study = run_degradation_study(run_dir, written["gate_content"], out_dir, device, progress, amp)
        fr = study["false_reject"]
        yield (f"false-reject rate on clean test images: {fr['rejected']}/{fr['n']} = {fr['estimate']:.3f} "
               f"(95% CI {fr['lower']:.3f}-{fr['upper']:.3f})")
        yield str(study["json"])
        yield str(study["plot"])
