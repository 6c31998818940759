"""medclf serve: a research web page and JSON API for a trained run (logic in medclf.serve.server, medclf.serve.webapp)."""

from medclf.commands.compute import add_compute_arguments, apply_threads

HELP = "serve a run's model: web page + JSON API (POST /api/predict) on 127.0.0.1, with quality gate and heat maps"
DESCRIPTION = (
    "Load results/NAME/best.pt once (weights_only, eval) and serve a plain page (no external resources) and a "
    "JSON API: each uploaded image gets the quality gate's verdict (RUN/quality.json from `medclf quality`), then, "
    "if it passed, every class probability, the operating point of the run's binary report (a clinical grouping "
    "such as malignant=mel,bcc,akiec at its validation-chosen threshold, with sensitivity and specificity) and a "
    "Grad-CAM overlay. A research tool, not a diagnosis. Binds 127.0.0.1 unless --host says otherwise; "
    "never a debug or reload server. See docs/serve.md."
)


def add_arguments(parser):
    from medclf.serve import server as serve

    parser.add_argument("--run", help="run folder written by `medclf train` (results/NAME); with --onnx, optional: "
                                      "it then provides the quality gate and the report")
    parser.add_argument("--onnx", metavar="FILE", help="serve this ONNX export (medclf export) instead of best.pt; "
                                                      "no heat maps")
    parser.add_argument("--quality-gate", dest="gate", metavar="QUALITY_JSON",
                        help="quality.json from `medclf quality`, or seed003 for the HAM10000 app's fixed checks "
                             "(default: RUN/quality.json)")
    parser.add_argument("--report", dest="results", metavar="RESULTS_JSON",
                        help="results_<split>[_<tag>].json whose threshold, sensitivity and specificity to show "
                             "(default: the run's binary report, preferring test and a validation-chosen threshold)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 opens the server to the network (no authentication)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", dest="max_upload_mb", type=float, default=serve.DEFAULT_MAX_UPLOAD_MB,
                        help="largest request body in MiB, enforced while it streams in (413 above)")
    parser.add_argument("--max-pixels", dest="max_pixels", type=int, default=serve.DEFAULT_MAX_PIXELS,
                        help="largest image in pixels (width x height), read from the header before decoding")
    parser.add_argument("--max-files", dest="max_files", type=int, default=serve.DEFAULT_MAX_FILES,
                        help="most images in one request")
    parser.add_argument("--max-connections", dest="max_connections", type=int, default=64,
                        help="open connections above this are answered 503 instead of queued")
    add_compute_arguments(parser, amp_default="as the run was trained (as `medclf test`); not with --onnx")


def run(args):
    from medclf.core.errors import MedclfError
    from medclf.serve.launch import build_app, run_server
    from medclf.serve.webapp import Limits

    if min(args.max_upload_mb, args.max_pixels, args.max_files, args.max_connections) <= 0:
        raise MedclfError("--max-upload-mb, --max-pixels, --max-files and --max-connections must be positive")
    apply_threads(args)
    limits = Limits(int(args.max_upload_mb * 1024 * 1024), args.max_pixels, args.max_files)
    app = build_app(args.run, args.onnx, args.gate, args.results, args.device, limits, args.amp)
    run_server(app, args.host, args.port, args.max_connections)
    return 0
