"""The FastAPI application of `medclf serve` (the logic per image is in medclf.serve.server, upload checks in
medclf.serve.uploads). `create_app(classifier, gate, gate_source, operating_point, limits)` builds it around an already
loaded classifier, so tests can hand it any `medclf.serve.inference.Classifier`. A metadata run's
columns become optional form fields of POST /api/predict (`predict_signature`), so /docs and
/openapi.json list them; an absent one is refused by medclf.serve.server.metadata_rows, by name."""

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from pydantic import BaseModel, Field

from medclf.core import schemas
from medclf.core.errors import MedclfError
from medclf.serve import server as serve
from medclf.serve.inference import HeatmapClassifier
from medclf.serve.uploads import BodySizeLimit, SecurityHeaders, UploadError, clean_name

log = logging.getLogger("medclf.serve.server")
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


class MetadataValue(BaseModel):
    value: Optional[str] = Field(description="the value as sent")
    read_as: Union[float, str] = Field(description="what the run's encoder made of it: the number, the category, or "
                                                   "'missing' (empty, a missing token, a category train never had)")


class MetadataColumn(BaseModel):
    name: str = Field(description="the form field's name (the splits.csv column)")
    kind: str = Field(description="numeric or categorical")
    categories: Optional[list[str]] = Field(None, description="categorical: the categories seen in training")


class ImageResult(BaseModel):
    name: str
    width: int
    height: int
    quality: Quality
    metadata: Optional[dict[str, MetadataValue]] = Field(None, description="a metadata run: each column's value")
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
    metadata: list[MetadataColumn] = Field(description="form fields POST /api/predict needs beside `files` (a run "
                                                       "trained with --metadata-features); empty for an image-only run")
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
            "metadata": serve.metadata_inputs(getattr(classifier, "metadata", None)),
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


def predict_signature(columns):
    """The parameters of POST /api/predict: `files`, then one optional form field per metadata column,
    aliased to the column's name (any text; the Python names are metadata_<i>). A list, so that an
    empty value stays distinguishable from a field not sent, and one value per file is possible."""
    from fastapi import File, Form, UploadFile

    files = inspect.Parameter("files", inspect.Parameter.KEYWORD_ONLY, annotation=list[UploadFile],
                              default=File(..., description="one or several images (JPEG, PNG, BMP, TIFF, GIF, WebP "
                                                            "or DICOM); the format is read from the content"))
    fields = [inspect.Parameter(f"metadata_{i}", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[list[str]],
                                default=Form(None, alias=column["name"], description=_field_help(column)))
              for i, column in enumerate(columns)]
    return inspect.Signature([files, *fields])


def _field_help(column):
    kind = ("numeric" if column["kind"] == "numeric"
            else f"categorical: {', '.join(column['categories']) or 'no category in training'}")
    return (f"metadata column {column['name']} ({kind}); required: one value for every image or one per file; "
            "empty = missing, an unknown category is read as missing")


def create_app(classifier, gate, gate_source, operating_point=None, limits=Limits()):
    from fastapi import FastAPI
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    app = FastAPI(title="medclf serve", version=schemas.SERVE_RESPONSE, docs_url=None, redoc_url=None,
                  description=serve.NOTICE)
    info = _model_info(classifier, gate_source, gate, operating_point, limits)
    errors = {s: {"model": ErrorResponse} for s in (413, 415, 422)}
    _add_error_handlers(app)
    _add_docs(app)
    app.mount("/static/page", StaticFiles(directory=serve.WEB_DIR), name="page")
    encoder = getattr(classifier, "metadata", None)
    keys = {f"metadata_{i}": column["name"] for i, column in enumerate(info["metadata"])}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(serve.WEB_DIR / "index.html", media_type="text/html")

    @app.get("/api/model", response_model=ModelInfo)
    def model_info():
        """The model, its classes, the quality gate, the operating point and the server's limits."""
        return info

    def predict(files, **fields):
        """Quality gate, class probabilities, operating point and heat map for each uploaded image; a run
        trained with --metadata-features also needs its columns as form fields (see /api/model)."""
        if len(files) > limits.max_files:
            raise UploadError(422, f"{len(files)} files in one request; this server takes at most {limits.max_files} "
                                   "(medclf serve --max-files)")
        rows = serve.metadata_rows(encoder, {column: fields[key] for key, column in keys.items()}, len(files),
                                   info["model"].get("run"))
        images = [serve.analyse_upload(classifier, gate, operating_point, clean_name(f.filename), f.file.read(),
                                       limits.max_pixels, None if rows is None else rows[i])
                  for i, f in enumerate(files)]
        return {"schema": schemas.SERVE_RESPONSE, "notice": serve.NOTICE, "classes": list(classifier.class_names),
                "heatmap_note": info["heatmap_note"], "images": images}

    predict.__signature__ = predict_signature(info["metadata"])  # read by FastAPI when the route is added
    app.post("/api/predict", response_model=PredictResponse, responses=errors, response_model_by_alias=True)(predict)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_upload_bytes)
    app.add_middleware(SecurityHeaders)
    return app
