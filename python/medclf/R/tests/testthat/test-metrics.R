# Hand-computed fixtures; expected values are written as fractions.

readme <- function() mc_validate_predictions(mc_read_predictions_file(fixture("readme_medclf.json")), "readme")

test_that("the README test set (10 negatives, 16 positives, one error each way) gives 15/16 and 9/10", {
  d <- readme()
  is_pos <- d$labels == 1L
  b <- mc_binary_metrics(is_pos, d$probabilities[, 2], 0.5)
  expect_equal(b$confusion_matrix, list(tp = 15L, fn = 1L, tn = 9L, fp = 1L))
  m <- b$metrics
  expect_equal(m$sensitivity$estimate, 15 / 16)
  expect_equal(m$specificity$estimate, 9 / 10)
  expect_equal(m$ppv$estimate, 15 / 16)
  expect_equal(m$npv$estimate, 9 / 10)
  expect_equal(m$accuracy$estimate, 24 / 26)
  expect_equal(m$f1$estimate, 30 / 32)
  expect_equal(m$balanced_accuracy$estimate, (15 / 16 + 9 / 10) / 2)
  # The false negative scores above 9 of the 10 negatives; the other 15 positives above all 10.
  expect_equal(m$roc_auc$estimate, 159 / 160)
  # AP: 15 positives at precision 1 (recall 15/16), then the last positive at precision 16/17.
  expect_equal(m$average_precision$estimate, 15 / 16 + (1 / 16) * (16 / 17))
  # kappa: p_o = 24/26, p_e = (16^2 + 10^2) / 26^2 = 356/676 -> 268/320
  expect_equal(m$cohen_kappa$estimate, 268 / 320)
})

test_that("Clopper-Pearson bounds solve the exact binomial tail equations", {
  v <- mc_proportion(15, 16, "")
  expect_equal(stats::pbinom(14, 16, v$lower, lower.tail = FALSE), 0.025, tolerance = 1e-8)
  expect_equal(stats::pbinom(15, 16, v$upper), 0.025, tolerance = 1e-8)
  edge <- mc_proportion(0, 7, "")
  expect_equal(c(edge$estimate, edge$lower), c(0, 0))
  expect_equal(edge$upper, 1 - 0.025^(1 / 7))  # (1 - p)^7 = 0.025
  full <- mc_proportion(7, 7, "")
  expect_equal(c(full$upper, full$lower), c(1, 0.025^(1 / 7)))
})

test_that("every 0/0 gives NA with a note, never an error", {
  m <- mc_count_metrics(list(tp = 0L, fn = 0L, tn = 5L, fp = 0L))
  expect_true(is.na(m$sensitivity$estimate))
  expect_match(m$sensitivity$note, "0/0")
  expect_true(is.na(m$ppv$estimate))
  expect_match(m$ppv$note, "called positive")
  expect_true(is.na(m$f1$estimate))
  expect_true(is.na(m$balanced_accuracy$estimate))
  expect_equal(m$specificity$estimate, 5 / 5)
  expect_equal(m$npv$estimate, 5 / 5)
  k <- mc_kappa(matrix(c(5, 0, 0, 0), 2))
  expect_true(is.na(k$estimate))
  expect_match(k$note, "chance agreement is 1")
})

test_that("one class present gives AUC NA with a note; one case in a class gives no interval", {
  a <- mc_auc(rep(TRUE, 6), c(0.1, 0.2, 0.3, 0.4, 0.5, 0.6))
  expect_true(is.na(a$estimate))
  expect_match(a$note, "one class")
  expect_true(is.na(mc_average_precision(rep(FALSE, 4), c(0.1, 0.2, 0.3, 0.4))$estimate))
  b <- mc_auc(c(TRUE, FALSE, FALSE, FALSE), c(0.9, 0.1, 0.95, 0.2))
  expect_equal(b$estimate, 2 / 3)
  expect_true(is.na(b$lower))
})

test_that("AUC counts ties as one half and uses direction '<' even when the model is worse than chance", {
  # positives 0.2, 0.5; negatives 0.5, 0.8: pairs (0.2<0.5: 0) (0.2<0.8: 0) (0.5=0.5: 1/2) (0.5<0.8: 0)
  a <- mc_auc(c(TRUE, TRUE, FALSE, FALSE), c(0.2, 0.5, 0.5, 0.8))
  expect_equal(a$estimate, (1 / 2) / 4)
})

test_that("perfect separation gives AUC 1 with a degenerate DeLong interval and a note", {
  a <- mc_auc(c(FALSE, FALSE, FALSE, TRUE, TRUE), c(0.1, 0.2, 0.3, 0.8, 0.9))
  expect_equal(c(a$estimate, a$lower, a$upper), c(1, 1, 1))
  expect_match(a$note, "perfect separation")
})

test_that("DeLong interval equals the placement-variance formula worked by hand", {
  y <- c(TRUE, TRUE, TRUE, FALSE, FALSE, FALSE)
  s <- c(0.9, 0.6, 0.3, 0.5, 0.2, 0.1)
  # V10 (per positive: share of negatives below) = 1, 1, 2/3; V01 (per negative: share of positives above) = 2/3, 1, 1
  theta <- 8 / 9
  s10 <- sum((c(1, 1, 2 / 3) - theta)^2) / 2
  s01 <- sum((c(2 / 3, 1, 1) - theta)^2) / 2
  se <- sqrt(s10 / 3 + s01 / 3)
  a <- mc_auc(y, s)
  expect_equal(a$estimate, theta)
  expect_equal(a$lower, theta - qnorm(0.975) * se)
  expect_equal(a$upper, min(1, theta + qnorm(0.975) * se))
})

test_that("kappa variance equals the delta-method variance of the multinomial cell proportions", {
  counts <- matrix(c(20, 3, 2, 4, 15, 1, 1, 2, 12), 3)  # rows = truth
  k <- mc_kappa(counts)
  n <- sum(counts)
  kappa_of <- function(p) { p <- matrix(p, 3); pe <- sum(rowSums(p) * colSums(p)); (sum(diag(p)) - pe) / (1 - pe) }
  p <- as.vector(counts) / n
  grad <- vapply(seq_along(p), function(i) { h <- 1e-6; e <- replace(numeric(9), i, h); (kappa_of(p + e) - kappa_of(p - e)) / (2 * h) }, 0)
  variance <- as.numeric(t(grad) %*% (diag(p) - p %*% t(p)) %*% grad) / n
  expect_equal(k$estimate, kappa_of(p))
  expect_equal((k$upper - k$estimate) / qnorm(0.975), sqrt(variance), tolerance = 1e-6)
  if (requireNamespace("caret", quietly = TRUE)) {
    f <- function(v) factor(v, levels = 0:2)
    truth <- rep(rep(0:2, 3), as.vector(counts)); decided <- rep(rep(0:2, each = 3), as.vector(counts))
    expect_equal(unname(caret::confusionMatrix(f(decided), f(truth))$overall["Kappa"]), k$estimate)
  }
})

test_that("multi-class: per-class recall, balanced accuracy 2/3, accuracy 4/6 and kappa 1/2", {
  labels <- c(0L, 0L, 1L, 1L, 2L, 2L)
  probs <- rbind(c(.7, .2, .1), c(.2, .7, .1), c(.1, .8, .1), c(.3, .6, .1), c(.1, .1, .8), c(.5, .2, .3))
  m <- mc_multiclass_metrics(labels, probs, c("a", "b", "c"))
  expect_equal(m$confusion_matrix$matrix, matrix(c(1, 0, 1, 1, 2, 0, 0, 0, 1), 3))
  expect_equal(m$per_class$a$metrics$sensitivity$estimate, 1 / 2)
  expect_equal(m$per_class$b$metrics$sensitivity$estimate, 2 / 2)
  expect_equal(m$per_class$b$metrics$ppv$estimate, 2 / 3)
  expect_equal(m$per_class$c$metrics$specificity$estimate, 4 / 4)
  expect_equal(m$metrics$balanced_accuracy$estimate, (1 / 2 + 1 + 1 / 2) / 3)
  expect_equal(m$metrics$accuracy$estimate, 4 / 6)
  expect_equal(m$metrics$cohen_kappa$estimate, 1 / 2)
  # one-vs-rest AUC of class c: positives 0.8, 0.3 vs negatives 0.1 x4 -> 8/8
  expect_equal(m$per_class$c$metrics$roc_auc$estimate, 8 / 8)
  expect_match(m$metrics$macro_auc$method, "one-vs-rest")
  expect_equal(m$macro$sensitivity$estimate, (1 / 2 + 1 + 1 / 2) / 3)
})

test_that("thresholds chosen on validation: Youden, target sensitivity, target specificity", {
  y <- c(FALSE, FALSE, FALSE, FALSE, TRUE, TRUE, TRUE, TRUE)
  s <- c(0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9)
  # t = 0.7: sens 3/4, spec 4/4 (J = 3/4); t = 0.4: sens 4/4, spec 3/4 (J = 3/4): tie -> higher, 0.7
  yd <- mc_choose_threshold(y, s, "youden")
  expect_equal(c(yd$threshold, yd$sensitivity, yd$specificity), c(0.7, 3 / 4, 4 / 4))
  sens <- mc_choose_threshold(y, s, "sensitivity:0.95")
  expect_equal(c(sens$threshold, sens$sensitivity, sens$specificity), c(0.4, 4 / 4, 3 / 4))
  spec <- mc_choose_threshold(y, s, "specificity:0.9")
  expect_equal(c(spec$threshold, spec$specificity, spec$sensitivity), c(0.7, 4 / 4, 3 / 4))
  expect_error(mc_choose_threshold(y, s, "sensitivity:2"), class = "medclf_error")
  expect_error(mc_choose_threshold(rep(TRUE, 8), s, "youden"), "both classes", class = "medclf_error")
})

test_that("operating points: highest precision with recall >= 0.999 and its threshold", {
  d <- readme()
  ops <- mc_operating_points(d$labels == 1L, d$probabilities[, 2])
  pr <- Filter(function(o) o$kind == "precision_at_recall" && o$target == 0.999, ops)[[1]]
  # recall 16/16 needs the threshold at the lowest-scoring positive (logit -0.1); 1 negative above it
  expect_equal(pr$precision, 16 / 17)
  expect_equal(pr$threshold, 1 / (1 + exp(0.1)))
  se <- Filter(function(o) o$kind == "sensitivity_at_specificity" && o$target == 0.9, ops)[[1]]
  expect_equal(c(se$sensitivity, se$specificity), c(16 / 16, 9 / 10))
  sp <- Filter(function(o) o$kind == "specificity_at_sensitivity" && o$target == 0.95, ops)[[1]]
  expect_equal(c(sp$sensitivity, sp$specificity), c(16 / 16, 9 / 10))
})

test_that("every zero-width interval says why: constant scores, a single class, perfect agreement", {
  a <- mc_auc(c(TRUE, TRUE, FALSE, FALSE, FALSE), rep(0.4, 5))
  expect_equal(c(a$estimate, a$lower, a$upper), c(1 / 2, 1 / 2, 1 / 2))
  expect_match(a$note, "^constant scores: .*zero width")
  k <- mc_kappa(matrix(c(0, 0, 3, 4), 2))      # truth 3 no / 4 yes, every case called yes
  expect_equal(c(k$estimate, k$lower, k$upper), c(0, 0, 0))
  expect_match(k$note, "^a single class in the decisions")
  k <- mc_kappa(matrix(c(0, 2, 0, 5), 2))      # every case truly yes, decisions mixed
  expect_match(k$note, "^a single class in the truth")
  k <- mc_kappa(matrix(c(3, 0, 0, 4), 2))
  expect_equal(c(k$estimate, k$lower, k$upper), c(1, 1, 1))
  expect_match(k$note, "^perfect agreement")
  expect_equal(mc_value(0.3, 0.3, 0.3, "m")$note, "interval has zero width")   # the safety net
  expect_null(mc_value(0.3, 0.2, 0.4, "m")$note)
})
