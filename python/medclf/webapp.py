"""The FastAPI application of `medclf serve` (the logic per image is in medclf.serve, upload checks in
medclf.uploads). `create_app(classifier, gate, gate_source, operating_point, limits)` builds it around an already
loaded classifier, so tests can hand it any `medclf.inference.Classifier`."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, Field

from medclf import schemas, serve
from medclf.errors import MedclfError
from medclf.inference import HeatmapClassifier
from medclf.uploads import BodySizeLimit, SecurityHeaders, UploadError, clean_name

log = logging.getLogger("medclf.serve")
FILES_FIELD = "files"


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = serve.DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    max_pixels: int = serve.DEFAULT_MAX_PIXELS
    max_files: int = serve.DEFAULT_MAX_FILES


class Metric(BaseModel):
    estimate: Optional[float] = None
    lower: Optional[float] = None
    upper: Optional[float] = None
    method: Optional[str] = None


class OperatingPoint(BaseModel):
    name: str = Field(description="the positive side: a grouping's name (malignant) or the positive class")
    classes: list[str] = Field(description="classes whose probabilities are added up")
    probability: float = Field(description="sum of those classes' probabilities")
    threshold: float
    at_or_above_threshold: bool
    threshold_source: str = Field(description="validation:<rule>, fixed or default (from the report)")
    split: str = Field(description="split the sensitivity and specificity were measured on")
    n: Optional[int] = None
    sensitivity: Optional[Metric] = None
    specificity: Optional[Metric] = None
    report: str = Field(description="the results file these figures come from")


class Quality(BaseModel):
    verdict: str = Field(description="passed or rejected")
    reasons: list[str] = Field(description="each failed rule: measure value, and the rule it broke")


class Heatmap(BaseModel):
    method: str
    target_class: str
    overlay_png: str = Field(description="data: URL of a PNG, the model's input crop with the map over it")


class ImageResult(BaseModel):
    name: str
    width: int
    height: int
    quality: Quality
    probabilities: Optional[list[float]] = Field(None, description="in `classes` order; null when rejected")
    predicted_class: Optional[str] = None
    operating_point: Optional[OperatingPoint] = None
    heatmap: Optional[Heatmap] = None


class PredictResponse(BaseModel):
    schema_: str = Field(schemas.SERVE_RESPONSE, alias="schema")
    notice: str
    classes: list[str]
    heatmap_note: Optional[str] = None
    images: list[ImageResult]


class ErrorResponse(BaseModel):
    detail: str


class ModelInfo(BaseModel):
    notice: str
    model: dict
    classes: list[str]
    quality_gate: dict
    operating_point: Optional[dict] = None
    heatmaps: bool
    heatmap_note: Optional[str] = None
    limits: dict


def _error(status, message):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"detail": message})


def validation_message(exc):
    """One line for a malformed request; a missing upload field names the field to use."""
    for error in exc.errors():
        loc = [str(x) for x in error.get("loc", ())]
        if error.get("type") == "missing" and loc[-1:] == [FILES_FIELD]:
            return (f"no file in form field '{FILES_FIELD}'; send multipart/form-data with each image in a field "
                    f"named '{FILES_FIELD}'")
    first = exc.errors()[0] if exc.errors() else {}
    return f"{'.'.join(str(x) for x in first.get('loc', ('request',)))}: {first.get('msg', 'invalid request')}"


def _add_error_handlers(app):
    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(UploadError)
    async def upload_error(request, exc):
        return _error(exc.status, str(exc))

    @app.exception_handler(MedclfError)
    async def medclf_error(request, exc):
        return _error(422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc):
        return _error(422, validation_message(exc))

    @app.exception_handler(Exception)
    async def unexpected(request, exc):
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, "internal error while handling this request; the server log has the details")


def _model_info(classifier, gate_source, gate, operating_point, limits):
    describe = getattr(classifier, "describe", lambda: {"classes": list(classifier.class_names)})
    explains = isinstance(classifier, HeatmapClassifier)
    return {"notice": serve.NOTICE, "model": describe(), "classes": list(classifier.class_names),
            "quality_gate": {"source": gate_source, "preset": gate.get("preset"), "rules": gate["rules"]},
            "operating_point": operating_point, "heatmaps": explains,
            "heatmap_note": None if explains else serve.NO_HEATMAP_NOTE,
            "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                       "max_files": limits.max_files}}


def _add_docs(app):
    """Swagger UI at /docs from the files fastapi-offline ships (FastAPI's own page loads them from a CDN)."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/static/swagger", StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"),
              name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="medclf serve API",
                                   swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger/swagger-ui.css",
                                   swagger_favicon_url="/static/swagger/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})


def create_app(classifier, gate, gate_source, operating_point=None, limits=Limits()):
    from fastapi import FastAPI, File, UploadFile
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    app = FastAPI(title="medclf serve", version=schemas.SERVE_RESPONSE, docs_url=None, redoc_url=None,
                  description=serve.NOTICE)
    info = _model_info(classifier, gate_source, gate, operating_point, limits)
    errors = {s: {"model": ErrorResponse} for s in (413, 415, 422)}
    _add_error_handlers(app)
    _add_docs(app)
    app.mount("/static/page", StaticFiles(directory=serve.WEB_DIR), name="page")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(serve.WEB_DIR / "index.html", media_type="text/html")

    @app.get("/api/model", response_model=ModelInfo)
    def model_info():
        """The model, its classes, the quality gate, the operating point and the server's limits."""
        return info

    @app.post("/api/predict", response_model=PredictResponse, responses=errors, response_model_by_alias=True)
    def predict(files: list[UploadFile] = File(..., description="one or several images (JPEG, PNG, BMP, TIFF, "
                                                                "GIF, WebP or DICOM); the format is read from the content")):
        """Quality gate, class probabilities, operating point and heat map for each uploaded image."""
        if len(files) > limits.max_files:
            raise UploadError(422, f"{len(files)} files in one request; this server takes at most {limits.max_files} "
                                   "(medclf serve --max-files)")
        images = [serve.analyse_upload(classifier, gate, operating_point, clean_name(f.filename), f.file.read(),
                                       limits.max_pixels) for f in files]
        return {"schema": schemas.SERVE_RESPONSE, "notice": serve.NOTICE, "classes": list(classifier.class_names),
                "heatmap_note": info["heatmap_note"], "images": images}

    app.add_middleware(BodySizeLimit, max_bytes=limits.max_upload_bytes)
    app.add_middleware(SecurityHeaders)
    return app
