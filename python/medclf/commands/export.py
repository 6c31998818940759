"""medclf export: a run's best.pt as a model file for other runtimes (logic in medclf.infer.export)."""

from medclf.commands.compute import add_compute_arguments, apply_threads

HELP = "export a run's best.pt as ONNX (dynamic batch; classes and preprocessing in the metadata)"
DESCRIPTION = (
    "Export results/NAME/best.pt with torch.onnx.export (the dynamo exporter): input `image` (N, 3, S, S) "
    "float32 with a free batch size N, output `logits`; the class names, positive class, probability rule, "
    "preprocessing (resize side, crop size, mean, std) and the run's provenance are in the model's metadata. "
    "The file passes onnx.checker and is compared with torch through onnxruntime on val images before it is "
    "written, next to a record <stem>.export.json. Run it with medclf.infer.onnx_model.OnnxClassifier or "
    "`medclf serve --onnx FILE`. See docs/export.md."
)


def add_arguments(parser):
    parser.add_argument("--run", required=True, help="run folder written by `medclf train` (results/NAME)")
    parser.add_argument("--format", default="onnx", help="model format; onnx is the one supported (default: onnx)")
    parser.add_argument("--out", help="the model file to write (default: RUN/model.onnx)")
    parser.add_argument("--check", type=int, default=16, metavar="N",
                        help="compare onnxruntime with torch on the first N val images (refused above a "
                             "probability difference of 1e-4); 0: on two random inputs instead")
    parser.add_argument("--data-root", help="where the run's images are now (default: the run's)")
    parser.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    add_compute_arguments(parser, device=False)


def run(args):
    from medclf.infer.export import run_export

    apply_threads(args)
    for path in run_export(args.run, args.format, args.out, args.check, args.data_root, args.opset, args.progress):
        print(path)
    return 0
