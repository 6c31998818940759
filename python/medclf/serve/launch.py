"""Starting `medclf serve`: load the run once (model, gate, operating point), build the web app
(medclf.serve.webapp) around it and run it under uvicorn."""

from medclf.core.errors import MedclfError
from medclf.serve.server import _log, load_classifier, load_gate, load_operating_point


def build_app(run_dir=None, onnx=None, gate=None, results=None, device="auto", limits=None, amp=None):
    """Everything `medclf serve` loads once, before the first request: model, gate, operating point."""
    try:
        from medclf.serve.webapp import Limits, create_app
    except ImportError as exc:
        raise MedclfError(f"medclf serve needs {exc.name}: pip install 'medclf[serve]' (versions pinned in "
                          "requirements.txt)") from exc

    classifier = load_classifier(run_dir, onnx, device, amp)
    gate_content, gate_source = load_gate(run_dir, gate)
    point = load_operating_point(run_dir, list(classifier.class_names), results)
    if point is None:
        _log("no binary report in the run folder: the page shows class probabilities without an operating point")
    else:
        _log(f"operating point {point['name']} >= {point['threshold']:.4g} ({point['threshold_source']}) from "
             f"{point['report']}")
    return create_app(classifier, gate_content, gate_source, point, limits or Limits())


def run_server(app, host="127.0.0.1", port=8000, max_connections=64):
    """uvicorn, one process, never a debug or reload server; more than `max_connections` open
    connections are answered 503 instead of queued without bound."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        _log(f"warning: listening on {host}: anyone who can reach this address can upload images; "
             "there is no authentication")
    uvicorn.run(app, host=host, port=port, reload=False, workers=1, log_level="info",
                limit_concurrency=max_connections, server_header=False, date_header=False)
