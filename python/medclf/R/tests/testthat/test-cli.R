# calc_model_performance.R end to end: the original positional form, flags, and strict input checks.

test_that("--legacy writes the original two-array form with correct values and a real AUC", {
  out <- tempfile(fileext = ".json")
  r <- run_rscript("calc_model_performance.R", c(fixture("readme_original.json"), out, "--legacy"))
  expect_equal(r$status, 0)
  x <- jsonlite::fromJSON(out, simplifyVector = FALSE)
  expect_equal(unlist(x[[1]]), c("Accuracy", "Sensitivity", "Specificity", "ROC-AUC", "Cohen's Kappa"))
  expect_equal(unlist(x[[2]]), c(24 / 26, 15 / 16, 9 / 10, 159 / 160, 268 / 320), tolerance = 1e-14)
})

test_that("the medclf file with 'yes' positive reports sensitivity 15/16, specificity 9/10 and intervals", {
  out <- tempfile(fileext = ".json")
  r <- run_rscript("calc_model_performance.R", c(fixture("readme_medclf.json"), out, "--positive", "yes"))
  expect_equal(r$status, 0)
  x <- jsonlite::fromJSON(out, simplifyVector = FALSE)
  expect_equal(x$schema, "medclf.results/1")
  expect_equal(x$positive_class, "yes")
  expect_equal(x$metrics$sensitivity$estimate, 15 / 16, tolerance = 1e-14)
  expect_equal(x$metrics$specificity$estimate, 9 / 10, tolerance = 1e-14)
  expect_equal(x$metrics$roc_auc$method, "DeLong (pROC, direction '<')")
  expect_lt(x$metrics$roc_auc$lower, 159 / 160)
  expect_equal(x$engine$name, "R")
  # naming 'no' positive swaps the two, as it must
  r2 <- run_rscript("calc_model_performance.R", c(fixture("readme_medclf.json"), "--positive", "no"))
  y <- jsonlite::fromJSON(paste(r2$stdout, collapse = "\n"), simplifyVector = FALSE)
  expect_equal(c(y$metrics$sensitivity$estimate, y$metrics$specificity$estimate), c(9 / 10, 15 / 16), tolerance = 1e-14)
})

test_that("a threshold rule is chosen on validation predictions and applied to test; --boot adds intervals", {
  val <- write_text_file(predictions_json(c(0, 0, 0, 0, 1, 1, 1, 1), c(0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9)))
  test <- write_text_file(predictions_json(c(0, 0, 1, 1), c(0.65, 0.2, 0.69, 0.75)))
  r <- run_rscript("calc_model_performance.R", c(test, "--threshold-from", val, "--threshold-rule", "youden", "--boot", "50"))
  expect_equal(r$status, 0)
  x <- jsonlite::fromJSON(paste(r$stdout, collapse = "\n"), simplifyVector = FALSE)
  expect_equal(x$threshold, 0.7)
  expect_equal(x$threshold_source, "validation:youden")
  expect_equal(x$confusion_matrix, list(tp = 1L, fn = 1L, tn = 2L, fp = 0L))
  expect_equal(x$bootstrap$n, 50L)
  expect_true(all(c("sensitivity", "roc_auc", "cohen_kappa") %in% names(x$bootstrap$intervals)))
})

test_that("--group turns a multi-class file into the clinical binary report", {
  probs <- list(c(.6, .3, .1), c(.2, .2, .6), c(.1, .1, .8), c(.5, .4, .1))
  f <- write_text_file(as.character(jsonlite::toJSON(list(schema = "medclf.predictions/1", classes = c("mel", "bcc", "nv"),
    positive_class = NULL, labels = c(0, 1, 2, 2), probabilities = probs), auto_unbox = TRUE, null = "null")))
  r <- run_rscript("calc_model_performance.R", c(f, "--group", "malignant=mel,bcc"))
  expect_equal(r$status, 0)
  x <- jsonlite::fromJSON(paste(r$stdout, collapse = "\n"), simplifyVector = FALSE)
  expect_equal(x$positive_class, "malignant")
  expect_equal(unlist(x$grouping$classes), c("mel", "bcc"))
  # P(malignant) = .9, .4, .2, .9 -> called positive at 0.5: 1, 0, 0, 1 against truth 1, 1, 0, 0
  expect_equal(x$confusion_matrix, list(tp = 1L, fn = 1L, tn = 1L, fp = 1L))
})

expect_one_message <- function(args, pattern) {
  r <- run_rscript("calc_model_performance.R", args)
  expect_equal(r$status, 1)
  expect_length(r$stderr, 1)
  expect_match(r$stderr, pattern)
  expect_match(r$stderr, "^calc_model_performance.R: error: ")
}

test_that("malformed input: exit status 1 and one message naming the field", {
  good <- predictions_json(c(0, 1, 1), c(0.2, 0.7, 0.9))
  truncated <- write_text_file(substr(good, 1, nchar(good) - 20))
  expect_one_message(truncated, "not valid JSON")
  wrong_length <- write_text_file(predictions_json(c(0, 1, 1, 0), c(0.2, 0.7, 0.9)))
  expect_one_message(wrong_length, "probabilities: has 3 entries but labels has 4")
  with_nan <- write_text_file(sub("0.7", "NaN", good, fixed = TRUE))
  expect_one_message(with_nan, "probabilities: row 2, column 2 is NaN or missing")
  too_big <- write_text_file(predictions_json(c(0, 1, 1), c(0.2, 0.7, 0.9)))
  writeLines(sub("[0.8,0.2]", "[0,1.3]", readLines(too_big), fixed = TRUE), too_big)
  expect_one_message(too_big, "probabilities: value 1.3 at row 1, column 2 is outside \\[0, 1\\]")
  not_summing <- write_text_file(sub("[0.8,0.2]", "[0.5,0.2]", good, fixed = TRUE))
  expect_one_message(not_summing, "probabilities: row 1 sums to 0.7, not 1")
  expect_one_message(c(fixture("readme_medclf.json"), "--positive", "maybe"), "positive class: 'maybe' is not one of the classes \\(no, yes\\)")
  missing_key <- write_text_file('{"labels": [0, 1], "predictions": [0, 1]}')
  expect_one_message(missing_key, "missing keys 'predictive probabilities', 'label probabilities'")
  expect_one_message(tempfile(fileext = ".json"), "file not found")
})

test_that("a bad option value stops with one message instead of falling back to a default", {
  expect_one_message(c(fixture("readme_medclf.json"), "--threshold", "abc"), "double expected")
  expect_one_message(c(fixture("readme_medclf.json"), "--threshold", "1.5"), "threshold: 1.5 is not a probability")
  expect_one_message(c(fixture("readme_medclf.json"), "--threshold-rule", "youden"), "needs --threshold-from")
})

four_key_json <- function(labels, rows) {
  as.character(jsonlite::toJSON(list(labels = labels, predictions = max.col(do.call(rbind, rows)) - 1L,
                                     `predictive probabilities` = rows,
                                     `label probabilities` = lapply(labels, function(y) as.numeric(0:1 == y))),
                                auto_unbox = TRUE, digits = NA))
}

test_that("four-key files: probability rows are used as given, logit rows get softmax (decided by content)", {
  # What python/test_torchvision.py writes: probabilities. P(1) = 0.3, 0.6, 0.45, 0.8.
  probs <- list(c(0.7, 0.3), c(0.4, 0.6), c(0.55, 0.45), c(0.2, 0.8))
  r <- run_rscript("calc_model_performance.R", c(write_text_file(four_key_json(c(0, 1, 0, 1), probs)), "--threshold", "0.5"))
  expect_equal(r$status, 0)
  x <- jsonlite::fromJSON(paste(r$stdout, collapse = "\n"), simplifyVector = FALSE)
  expect_equal(x$input_format, "original four-key (probabilities, used as given)")
  thresholds <- vapply(x$operating_points, function(op) if (is.null(op$threshold)) NA_real_ else op$threshold, 0)
  expect_true(all(thresholds[!is.na(thresholds)] %in% c(0.3, 0.6, 0.45, 0.8)))
  # Seed 002's original script: logits 0 and log(4) -> P(1) = 4/5 after softmax.
  logits <- list(c(0, log(4)), c(log(4), 0), c(0, 0.5), c(1, 0))
  r <- run_rscript("calc_model_performance.R", c(write_text_file(four_key_json(c(1, 0, 1, 0), logits))))
  x <- jsonlite::fromJSON(paste(r$stdout, collapse = "\n"), simplifyVector = FALSE)
  expect_equal(x$input_format, "original four-key (logits -> softmax)")
  expect_equal(x$operating_points[[5]]$threshold, 1 / (1 + exp(-0.5)), tolerance = 1e-15)
  d <- mc_validate_predictions(jsonlite::fromJSON(four_key_json(c(1, 0, 1, 0), logits)), "x")
  expect_equal(d$probabilities[1, ], c(1 / 5, 4 / 5), tolerance = 1e-15)
})

test_that("a threshold rule chosen on the very predictions it scores is marked optimistic", {
  val <- write_text_file(predictions_json(c(0, 0, 0, 0, 1, 1, 1, 1), c(0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9)))
  r <- run_rscript("calc_model_performance.R", c(val, "--threshold-from", val, "--threshold-rule", "youden"))
  x <- jsonlite::fromJSON(paste(r$stdout, collapse = "\n"), simplifyVector = FALSE)
  expect_equal(x$threshold_optimistic, MC_OPTIMISTIC)
  expect_match(x$threshold_optimistic, "optimistic")
  test <- write_text_file(predictions_json(c(0, 0, 1, 1), c(0.65, 0.2, 0.69, 0.75)))
  r <- run_rscript("calc_model_performance.R", c(test, "--threshold-from", val, "--threshold-rule", "youden"))
  x <- jsonlite::fromJSON(paste(r$stdout, collapse = "\n"), simplifyVector = FALSE)
  expect_null(x$threshold_optimistic)
})

test_that("constant scores: zero-width AUC and kappa intervals carry their reason", {
  f <- write_text_file(predictions_json(c(0, 0, 0, 1, 1), rep(0.3, 5)))
  r <- run_rscript("calc_model_performance.R", f)
  x <- jsonlite::fromJSON(paste(r$stdout, collapse = "\n"), simplifyVector = FALSE)
  expect_equal(c(x$metrics$roc_auc$lower, x$metrics$roc_auc$upper), c(1 / 2, 1 / 2))
  expect_equal(x$metrics$roc_auc$note, "constant scores: DeLong variance is 0, interval has zero width")
  expect_equal(c(x$metrics$cohen_kappa$lower, x$metrics$cohen_kappa$upper), c(0, 0))
  expect_equal(x$metrics$cohen_kappa$note, "a single class in the decisions: kappa variance is 0, interval has zero width")
})

test_that("a binary file without a named positive class is refused unless it is no/yes", {
  text <- paste0('{"schema": "medclf.predictions/1", "split": "test", "classes": ["melanoma", "other"], ',
                 '"positive_class": null, "labels": [0, 1, 1], "predictions": [0, 1, 0], ',
                 '"probabilities": [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]}')
  data <- mc_validate_predictions(mc_parse_json(text, "unnamed.json"), "unnamed.json")
  expect_error(mc_framing(data, NULL, NULL), "without a named positive class; name it with --positive")
  expect_identical(mc_framing(data, "melanoma", NULL)$positive, "melanoma")
  yes_no <- sub('"melanoma", "other"', '"yes", "no"', text)
  expect_identical(mc_framing(mc_validate_predictions(mc_parse_json(yes_no, "y.json"), "y.json"), NULL, NULL)$positive,
                   "yes")
})
