# The group bootstrap (R/clustered.R): a resample is a row of counts, and each statistic weighted
# by it must equal the statistic computed on the list of images the row stands for.

test_that("a resample draws whole groups within class strata", {
  codes <- c(0L, 0L, 1L, 2L, 2L, 3L, 3L)     # G1 G1 G2 G3 G3 G4 G4
  strata <- c(1L, 1L, 0L, 1L, 0L, 0L, 0L)    # G1 positive; G3 ties: the smaller class 0
  counts <- mc_cluster_resample_counts(codes, strata, boot_n = 50)
  expect_equal(dim(counts), c(50, 7))
  expect_true(all(counts[, 1] == 1 & counts[, 2] == 1))                  # stratum 1 holds G1 only
  expect_true(all(counts[, 4] == counts[, 5] & counts[, 6] == counts[, 7]))  # a group comes whole
  expect_true(all(counts[, 3] + counts[, 4] + counts[, 6] == 3))         # three draws among G2, G3, G4
})

test_that("weighted statistics equal each resample's own statistic", {
  set.seed(5)
  n <- 24
  y <- as.numeric(runif(n) < 0.4)
  s <- pmin(pmax(round(0.3 + 0.4 * y + rnorm(n, 0, 0.2), 1), 0.1), 0.9)  # rounded: many ties
  decided <- as.integer(s >= 0.5)
  counts <- matrix(sample(0:2, 40 * n, replace = TRUE), 40)
  counts[1, ] <- as.numeric(y == 0)                                        # no positive
  counts[2, ] <- 0
  counts[2, c(which.max(ifelse(y == 1, s, -1)), which.min(ifelse(y == 0, s, 2)))] <- 2  # separated
  ap <- mc_weighted_ap(y, s, counts)
  auc <- mc_weighted_auc(y, s, counts)
  ece <- mc_weighted_ece(y, s, counts)
  kappa <- mc_weighted_kappa(as.integer(y), decided, 2L, counts)
  fits <- mc_weighted_calibration(y, s, counts)
  for (b in seq_len(nrow(counts))) {
    i <- rep(seq_len(n), counts[b, ])
    cal <- mc_calibration_slope_intercept(y[i], s[i])
    expected <- c(mc_average_precision(y[i] == 1, s[i])$estimate,
                  if (length(unique(y[i])) == 2) mc_rank_auc(y[i] == 1, s[i]) else NA,
                  mc_ece_estimate(y[i], s[i]), cal[[1]]$estimate, cal[[2]]$estimate,
                  mc_kappa(unclass(mc_confusion_table(as.integer(y[i]), decided[i], 2L)))$estimate)
    got <- c(ap[b], auc[b], ece[b], fits$slope[b], fits$intercept[b], kappa[b])
    expect_equal(got, expected, tolerance = 1e-9, label = sprintf("row %d", b))
  }
  expect_true(is.na(ap[1]) && is.na(auc[1]) && is.na(fits$slope[1]) && is.na(fits$slope[2]))
  expect_false(is.na(fits$intercept[2]))
})
