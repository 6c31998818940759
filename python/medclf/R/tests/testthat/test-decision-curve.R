# Decision curves (R/decision_curve.R) by hand: two positives (0.9, 0.4), three negatives (0.6, 0.2, 0.1).

test_that("net benefit, treat all and the useful thresholds by hand", {
  curve <- mc_decision_curve(c(TRUE, TRUE, FALSE, FALSE, FALSE), c(0.9, 0.4, 0.6, 0.2, 0.1))
  at <- function(values, pt) values[which(curve$thresholds == pt)]
  expect_equal(curve$prevalence, list(value = 2 / 5, source = "test split"))
  expect_equal(at(curve$model$estimate, 0.3), 11 / 35, tolerance = 1e-12)  # TP 2, FP 1 of 5; odds 3/7
  expect_equal(at(curve$treat_all, 0.3), 1 / 7, tolerance = 1e-12)
  expect_equal(at(curve$model$estimate, 0.1), 1 / 3, tolerance = 1e-12)   # everyone called: treat all
  expect_equal(curve$useful_ranges, list(c(0.11, 0.49), c(0.61, 0.9)))
  given <- mc_decision_curve(c(TRUE, TRUE, FALSE, FALSE, FALSE), c(0.9, 0.4, 0.6, 0.2, 0.1), prevalence = 0.1)
  expect_equal(given$model$estimate[31], -1 / 35, tolerance = 1e-12)         # 1/10 - 1/3 * 9/10 * 3/7
  expect_null(mc_decision_curve(c(TRUE, TRUE), c(0.3, 0.8)))
})

test_that("a bad prevalence is refused also when the curve is undefined (one class present)", {
  path <- write_text_file(predictions_json(c(1L, 1L), c(0.3, 0.8)))
  out <- jsonlite::fromJSON(medclf_report_json(mc_to_json(list(predictions_path = path, prevalence = 1.5))))
  expect_match(out$error, "prevalence: 1.5 is not a probability")
})
