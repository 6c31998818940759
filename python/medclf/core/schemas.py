"""Every `medclf.<kind>/<version>` schema string, defined once. A file medclf writes names its
schema in a "schema" field; readers compare against these constants (R/io.R, R/report.R and
R/compare_models.R hold the R copies of the ones R reads or writes)."""

PREDICTIONS = "medclf.predictions/1"   # predictions_<split>.json (medclf test)
RESULTS = "medclf.results/1"           # results_<split>[_<tag>].json (medclf report)
COMPARISON = "medclf.comparison/1"     # compare.json (medclf compare)
ERROR = "medclf.error/1"               # a user-fixable error returned by the R entry points
PARTITION = "medclf.partition/1"       # partition.json (medclf partition, organize)
SPLITS = "medclf.splits/1"             # splits.csv (documented format name; CSV has no schema field)
RUN_CONFIG = "medclf.run-config/1"     # config.json of a run (medclf train)
CHECKPOINT = "medclf.checkpoint/1"     # best.pt / last.pt (medclf train)
CACHE = "medclf.cache/2"               # image cache metadata, cache.json (medclf.data.image_cache)
ORGANIZE_MANIFEST = "medclf.organize-manifest/1"  # .medclf-organize.json (medclf organize)
STUDY = "medclf.study/1"               # study_resolved.json (medclf study)
CALIBRATION = "medclf.calibration/1"   # calibration.json (medclf calibrate)
CONFORMAL = "medclf.conformal/1"       # conformal.json (medclf conformal)
SERVE_RESPONSE = "medclf.serve-response/1"  # POST /api/predict answer (medclf serve)
ENSEMBLE = "medclf.ensemble/1"     # ensemble.json (medclf ensemble)
SWEEP = "medclf.sweep/1"           # sweep.json (medclf sweep)
ONNX_EXPORT = "medclf.onnx-export/1"  # model.onnx metadata + <model>.export.json (medclf export)
CV = "medclf.cv/1"                     # cv.json (medclf cv)
CV_RESULTS = "medclf.cv-results/1"     # results_oof.json (medclf cv)
METADATA_ENCODER = "medclf.metadata-encoder/1"  # config.json "metadata" (medclf train --metadata-features)
CROP = "medclf.crop/1"                 # crop.json (medclf crop)
EMBEDDINGS = "medclf.embeddings/1"     # embeddings .npz (medclf embed)
PROBE = "medclf.probe/1"               # probe.json (medclf probe)
LR_FIND = "medclf.lr-find/1"            # lr_find.json (medclf lr-find)
