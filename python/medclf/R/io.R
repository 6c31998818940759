# medclf predictions input and results output.
#
# Reads two formats and validates them strictly; every problem stops with one medclf_error
# whose message names the file and the field:
# - medclf's predictions file, "schema": "medclf.predictions/1" (see shared DESIGN.md);
# - the original four-key file of test_torchvision.py: labels, predictions,
#   "predictive probabilities" and "label probabilities"; classes are named "0", "1", ... and for
#   two classes index 1 is the positive class. Seed 002's own script wrote raw logits under
#   "predictive probabilities", medclf's python/test_torchvision.py writes softmax probabilities:
#   the content decides (mc_rows_are_probabilities), so neither gets softmax twice.

MC_PREDICTIONS_SCHEMA <- "medclf.predictions/1"
MC_LEGACY_KEYS <- c("labels", "predictions", "predictive probabilities", "label probabilities")
MC_ROW_SUM_TOLERANCE <- 1e-6
MC_FOUR_KEY_LOGITS <- "original four-key (logits -> softmax)"
MC_FOUR_KEY_PROBABILITIES <- "original four-key (probabilities, used as given)"

mc_fail <- function(source, message) stop(mc_error(sprintf("%s: %s", source, message)))

mc_read_json_text <- function(path) {
  if (!file.exists(path)) mc_fail(path, "file not found")
  if (dir.exists(path)) mc_fail(path, "is a folder, not a predictions file; give the file's path")
  size <- file.info(path)$size
  if (is.na(size) || size == 0) mc_fail(path, "file is empty; re-create it with `medclf test`")
  text <- readChar(path, size, useBytes = TRUE)
  # JSON is UTF-8; Python's reader refuses other encodings, so R does too (same numbers, same refusals).
  if (!validUTF8(text)) mc_fail(path, "not UTF-8 text; save it as UTF-8")
  text
}

# Parse JSON text. Python's json module writes NaN/Infinity, which JSON (and jsonlite) reject;
# they are read as missing values so that validation can name the field that holds them.
mc_parse_json <- function(text, source) {
  parsed <- tryCatch(jsonlite::fromJSON(text, simplifyVector = TRUE), error = function(e) e)
  if (!inherits(parsed, "error")) return(parsed)
  cleaned <- gsub("(?<![A-Za-z_\"])-?(NaN|Infinity)(?![A-Za-z_\"])", "null", text, perl = TRUE)
  if (!identical(cleaned, text)) {
    retry <- tryCatch(jsonlite::fromJSON(cleaned, simplifyVector = TRUE), error = function(e) NULL)
    if (!is.null(retry)) return(retry)
  }
  reason <- strsplit(conditionMessage(parsed), "\n", fixed = TRUE)[[1]][1]
  mc_fail(source, sprintf("not valid JSON (%s; truncated?); re-create it with `medclf test`", trimws(reason)))
}

mc_read_predictions_file <- function(path) {
  text <- mc_read_json_text(path)
  mc_parse_json(text, path)
}

mc_softmax_rows <- function(logits) {
  shifted <- logits - apply(logits, 1, max)
  e <- exp(shifted)
  e / mc_row_sums(e)
}

mc_numeric_matrix <- function(x, field, source) {
  if (is.data.frame(x)) x <- as.matrix(x)
  if (is.list(x)) mc_fail(source, sprintf("%s: rows have different lengths or non-numeric entries; expected one row of numbers per image", field))
  if (!is.matrix(x)) mc_fail(source, sprintf("%s: expected a list of rows (one row of class values per image)", field))
  if (is.logical(x) && all(is.na(x))) storage.mode(x) <- "double"
  if (!is.numeric(x)) mc_fail(source, sprintf("%s: entries must be numbers", field))
  bad <- which(is.na(x), arr.ind = TRUE)
  bad <- bad[order(bad[, 1], bad[, 2]), , drop = FALSE]
  if (nrow(bad)) mc_fail(source, sprintf("%s: row %d, column %d is NaN or missing; every image needs finite values",
                                         field, bad[1, 1], bad[1, 2]))
  storage.mode(x) <- "double"
  x
}

# Sequential column sums (not rowSums' extended precision) so Python matches bit for bit.
mc_row_sums <- function(p) {
  total <- p[, 1]
  if (ncol(p) > 1) for (j in 2:ncol(p)) total <- total + p[, j]
  total
}

# TRUE when every value is in [0, 1] and every row sums to 1 within MC_ROW_SUM_TOLERANCE.
mc_rows_are_probabilities <- function(x) {
  all(x >= 0 & x <= 1) && all(abs(mc_row_sums(x) - 1) <= MC_ROW_SUM_TOLERANCE)
}

mc_check_probabilities <- function(p, field, source) {
  out <- which(p < 0 | p > 1, arr.ind = TRUE)
  out <- out[order(out[, 1], out[, 2]), , drop = FALSE]  # first in reading order, as in Python
  if (nrow(out)) mc_fail(source, sprintf("%s: value %s at row %d, column %d is outside [0, 1]",
                                         field, format(p[out[1, 1], out[1, 2]], digits = 15), out[1, 1], out[1, 2]))
  total <- mc_row_sums(p)
  off <- which(abs(total - 1) > MC_ROW_SUM_TOLERANCE)
  if (length(off)) mc_fail(source, sprintf("%s: row %d sums to %s, not 1 (tolerance %g); write softmax probabilities",
                                           field, off[1], format(total[off[1]], digits = 15), MC_ROW_SUM_TOLERANCE))
}

mc_has <- function(obj, key) !is.null(obj[[key]]) && !(length(obj[[key]]) == 1 && is.na(obj[[key]]))

# Validate a parsed predictions object. Returns list(format, split, classes, labels (0-based
# integers), probabilities (n x K), paths, positive_class (declared in the file or NULL), model).
mc_validate_predictions <- function(obj, source) {
  if (!is.list(obj) || is.null(names(obj)))
    mc_fail(source, "expected a JSON object with labels and probabilities")
  legacy <- is.null(obj$schema)
  if (!legacy && !identical(obj$schema, MC_PREDICTIONS_SCHEMA))
    mc_fail(source, sprintf("schema: '%s' is not supported (expected %s)", paste(obj$schema, collapse = " "), MC_PREDICTIONS_SCHEMA))
  required <- if (legacy) MC_LEGACY_KEYS else c("classes", "labels", "probabilities")
  missing <- required[!vapply(required, function(k) k %in% names(obj), TRUE)]
  if (length(missing))
    mc_fail(source, sprintf("missing key%s %s; expected %s", if (length(missing) > 1) "s" else "",
                            paste0("'", missing, "'", collapse = ", "),
                            if (legacy) "the four keys of test_torchvision.py or a medclf.predictions/1 file"
                            else "a file written by `medclf test`"))
  field <- if (legacy) "predictive probabilities" else "probabilities"

  labels <- obj$labels
  if (is.list(labels) || !is.null(dim(labels)) || !(is.numeric(labels) || all(is.na(labels))))
    mc_fail(source, "labels: expected a list of integer class indices")
  if (length(labels) == 0) mc_fail(source, "labels: empty; there is nothing to report")
  if (anyNA(labels)) mc_fail(source, sprintf("labels: entry %d is NaN or missing", which(is.na(labels))[1]))
  if (any(labels != round(labels))) mc_fail(source, sprintf("labels: entry %d is not an integer class index", which(labels != round(labels))[1]))
  n <- length(labels)

  scores <- mc_numeric_matrix(obj[[field]], field, source)
  lengths <- c(labels = n)
  lengths[field] <- nrow(scores)
  for (key in c("predictions", "paths", "label probabilities")) {
    if (!mc_has(obj, key)) next
    value <- obj[[key]]
    lengths[key] <- if (is.null(dim(value))) length(value) else nrow(value)
  }
  if (any(lengths != n)) {
    bad <- names(lengths)[lengths != n][1]
    mc_fail(source, sprintf("%s: has %d entries but labels has %d; every field needs one entry per image",
                            bad, lengths[[bad]], n))
  }
  if (mc_has(obj, "predictions") && (!is.numeric(obj$predictions) || anyNA(obj$predictions)))
    mc_fail(source, "predictions: expected a list of integer class indices without missing values")

  k <- ncol(scores)
  if (k < 2) mc_fail(source, sprintf("%s: need at least two columns (one per class), found %d", field, k))
  legacy_logits <- legacy && !mc_rows_are_probabilities(scores)
  if (legacy) {
    probabilities <- if (legacy_logits) mc_softmax_rows(scores) else scores
    classes <- as.character(seq_len(k) - 1L)
  } else {
    mc_check_probabilities(scores, field, source)
    probabilities <- scores
    classes <- obj$classes
    if (!is.character(classes) || anyNA(classes) || anyDuplicated(classes))
      mc_fail(source, "classes: expected a list of distinct class names")
    if (length(classes) != k)
      mc_fail(source, sprintf("classes: has %d names but %s has %d columns", length(classes), field, k))
  }
  if (any(labels < 0 | labels >= k)) {
    i <- which(labels < 0 | labels >= k)[1]
    mc_fail(source, sprintf("labels: value %s at entry %d is not a class index 0..%d", labels[i], i, k - 1))
  }
  declared <- if (legacy) { if (k == 2) "1" else NULL } else if (mc_has(obj, "positive_class")) obj$positive_class else NULL
  if (!is.null(declared) && !(declared %in% classes))
    mc_fail(source, sprintf("positive_class: '%s' is not one of the classes (%s)", declared, paste(classes, collapse = ", ")))
  list(format = if (legacy_logits) MC_FOUR_KEY_LOGITS else if (legacy) MC_FOUR_KEY_PROBABILITIES else MC_PREDICTIONS_SCHEMA,
       split = if (mc_has(obj, "split")) obj$split else NULL,
       classes = classes, labels = as.integer(labels), probabilities = probabilities,
       paths = if (mc_has(obj, "paths")) obj$paths else NULL,
       positive_class = declared,
       model = if (is.list(obj$model)) obj$model else NULL, source = source)
}

# TRUE when two validated predictions hold the same images, labels and probabilities (e.g. a
# threshold chosen on the very predictions it is then scored on).
mc_same_predictions <- function(a, b) {
  identical(a$labels, b$labels) && identical(dim(a$probabilities), dim(b$probabilities)) &&
    all(a$probabilities == b$probabilities) && identical(a$paths, b$paths)
}

# "malignant=mel,bcc,akiec" -> list(name = "malignant", classes = c("mel", "bcc", "akiec")); the
# one --group parser of calc_model_performance.R and compare_models.R (Python: report.parse_group).
mc_parse_group <- function(text) {
  if (is.null(text)) return(NULL)
  parts <- strsplit(text, "=", fixed = TRUE)[[1]]
  members <- if (length(parts) == 2) trimws(strsplit(parts[2], ",", fixed = TRUE)[[1]]) else character()
  if (length(parts) != 2 || !nzchar(trimws(parts[1])) || !length(members) || any(!nzchar(members)))
    stop(mc_error(sprintf("--group '%s': expected NAME=CLASS,CLASS (e.g. malignant=mel,bcc,akiec)", text)))
  list(name = trimws(parts[1]), classes = I(members))
}

# Results and comparisons: jsonlite with the write_json settings (auto_unbox, digits = NA for
# full precision, NA and NULL as null), as a string so rpy2 and Rscript share it; files are then
# written atomically.
# The group of each prediction of `predictions_path` from FILE: a JSON array of group names in the
# predictions' order, or a splits.csv (path and group columns, matched to the predictions' paths).
mc_read_clusters <- function(file, predictions_path) {
  if (!file.exists(file)) mc_fail(file, "not found; give a splits.csv with a group column, or a JSON array")
  if (grepl("\\.json$", tolower(file))) return(as.character(mc_parse_json(mc_read_json_text(file), file)))
  table <- tryCatch(utils::read.csv(file, colClasses = "character", check.names = FALSE),
                    error = function(e) mc_fail(file, paste("not a readable CSV:", conditionMessage(e))))
  if (!all(c("path", "group") %in% names(table)))
    mc_fail(file, "needs the columns path and group (a splits.csv of medclf partition)")
  paths <- as.character(unlist(mc_read_predictions_file(predictions_path)$paths))
  if (!length(paths)) mc_fail(predictions_path, "has no paths, so its images cannot be matched to groups")
  found <- match(paths, table$path)
  if (anyNA(found))
    mc_fail(file, sprintf("has no row for %s (of %s); give the splits.csv the predictions were made from",
                          paths[which(is.na(found))[1]], predictions_path))
  table$group[found]
}

mc_to_json <- function(x) {
  as.character(jsonlite::toJSON(x, auto_unbox = TRUE, digits = NA, na = "null", null = "null", pretty = TRUE))
}

mc_write_text_atomic <- function(text, path) {
  tmp <- tempfile(pattern = paste0(".", basename(path), "."), tmpdir = dirname(path))
  writeLines(text, tmp, useBytes = TRUE)
  if (!file.rename(tmp, path)) { unlink(tmp); mc_fail(path, "cannot write results file") }
}
