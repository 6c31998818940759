# Issue 16: intervals for the summaries and calibration measures (R side; hand fractions).
z <- stats::qnorm(0.975)

test_that("balanced accuracy carries the MOVER-Wilson interval of its recalls", {
  b <- mc_balanced_accuracy(c(15, 9), c(16, 10), "n/a")
  w1 <- mc_wilson(15, 16); w2 <- mc_wilson(9, 10)
  expect_equal(b$estimate, (15 / 16 + 9 / 10) / 2)
  expect_equal(b$lower, b$estimate - sqrt((15 / 16 - w1[1])^2 + (9 / 10 - w2[1])^2) / 2)
  expect_equal(b$upper, b$estimate + sqrt((w1[2] - 15 / 16)^2 + (w2[2] - 9 / 10)^2) / 2)
  for (bound in w1) expect_equal(abs(15 / 16 - bound), z * sqrt(bound * (1 - bound) / 16))
  expect_identical(mc_count_metrics(list(tp = 15, fn = 1, tn = 9, fp = 1))$balanced_accuracy, b)
})

test_that("macro AUC of two classes is pROC's DeLong interval", {
  set.seed(5)
  y <- rbinom(50, 1, 0.5); s <- runif(50) + 0.4 * y
  p <- cbind(1 - s / 1.4, s / 1.4)
  m <- mc_macro_auc_delong(y, p); d <- mc_auc(y == 1, p[, 2])
  expect_equal(c(m$estimate, m$lower, m$upper), c(d$estimate, d$lower, d$upper), tolerance = 1e-12)
})

test_that("average precision, Brier and ECE by hand", {
  ap <- mc_average_precision_logit(c(TRUE, FALSE, TRUE, FALSE), c(0.9, 0.8, 0.7, 0.1))
  half <- z / sqrt(2 * (5 / 6) * (1 / 6))
  expect_equal(c(ap$estimate, ap$lower, ap$upper), c(5 / 6, plogis(log(5) - half), plogis(log(5) + half)))
  b <- mc_brier(c(1, 0), c(0.75, 0.5))
  expect_equal(c(b$estimate, b$upper - b$estimate), c(5 / 32, z * 3 / 32))
  expect_equal(mc_ece_estimate(c(0, 1, 1, 1), c(0.2, 0.2, 0.8, 0.8)), 1 / 4)
})

test_that("bootstrap draws are Park and Miller's minimal standard sequence", {
  idx <- mc_bootstrap_indices(10000, 1, 1)
  expect_equal(idx[1, 10000], floor(1043618065 / 2147483647 * 10000) + 1)
})

test_that("calibration slope and intercept equal glm's logistic fit", {
  set.seed(2)
  p <- runif(300, 0.02, 0.98); x <- qlogis(p)
  y <- rbinom(300, 1, plogis(0.5 * x + 0.3))
  si <- mc_calibration_slope_intercept(y == 1, p)
  fit <- glm(y ~ x, family = binomial, control = glm.control(epsilon = 1e-14, maxit = 100))
  off <- glm(y ~ 1, offset = x, family = binomial, control = glm.control(epsilon = 1e-14, maxit = 100))
  expect_equal(si[[1]]$estimate, unname(coef(fit)[2]), tolerance = 1e-8)
  expect_equal(si[[2]]$estimate, unname(coef(off)[1]), tolerance = 1e-8)
  expect_equal(si[[1]]$upper - si[[1]]$estimate, z * sqrt(vcov(fit)[2, 2]), tolerance = 1e-6)
})
