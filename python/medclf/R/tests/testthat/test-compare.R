# compare_models.R: paired DeLong by path, refusals, several runs.

write_run <- function(labels, p_yes, paths) {
  probs <- lapply(p_yes, function(p) c(1 - p, p))
  write_text_file(as.character(jsonlite::toJSON(list(schema = "medclf.predictions/1", classes = c("no", "yes"),
    positive_class = "yes", paths = paths, labels = labels, probabilities = probs), auto_unbox = TRUE, digits = NA)))
}

test_that("two runs joined by path: the AUC difference, its interval and p-value come from roc.test", {
  y <- c(0, 0, 0, 1, 1, 1); paths <- paste0("i", 1:6)
  a <- c(0.1, 0.2, 0.3, 0.7, 0.8, 0.9)   # AUC 9/9
  b <- c(0.1, 0.6, 0.3, 0.5, 0.8, 0.9)   # AUC 8/9 (0.5 < 0.6)
  fa <- write_run(y, a, paths)
  o <- 6:1  # B lists the same images in reverse order
  fb <- write_run(y[o], b[o], paths[o])
  r <- run_rscript("compare_models.R", c(fa, fb, "--names", "A,B"))
  expect_equal(r$status, 0)
  x <- jsonlite::fromJSON(paste(r$stdout, collapse = "\n"), simplifyVector = FALSE)
  expect_equal(x$schema, "medclf.comparison/1")
  p <- x$pairwise[[1]]
  expect_equal(c(p$auc_a, p$auc_b), c(9 / 9, 8 / 9), tolerance = 1e-14)
  expect_equal(p$difference$estimate, 1 / 9, tolerance = 1e-14)
  yy <- factor(y == 1, levels = c(FALSE, TRUE))
  t <- pROC::roc.test(pROC::roc(yy, a, levels = c(FALSE, TRUE), direction = "<", quiet = TRUE),
                      pROC::roc(yy, b, levels = c(FALSE, TRUE), direction = "<", quiet = TRUE), paired = TRUE)
  expect_equal(p$p_value, t$p.value, tolerance = 1e-12)
  expect_equal(c(p$difference$lower, p$difference$upper), as.numeric(t$conf.int), tolerance = 1e-12)
})

test_that("more than two runs: one row per run and every pair tested (Holm-adjusted too)", {
  y <- rep(c(0, 1), each = 5); paths <- paste0("i", 1:10)
  files <- vapply(1:3, function(k) write_run(y, (seq_len(10) + k * (y * 3)) / 20, paths), "")
  r <- run_rscript("compare_models.R", files)
  x <- jsonlite::fromJSON(paste(r$stdout, collapse = "\n"), simplifyVector = FALSE)
  expect_length(x$runs, 3)
  expect_length(x$pairwise, 3)
  expect_true(all(vapply(x$pairwise, function(p) p$p_holm >= p$p_value, TRUE)))
})

test_that("runs on different images or labels are refused with one message", {
  y <- c(0, 0, 1, 1)
  fa <- write_run(y, c(.1, .2, .8, .9), paste0("i", 1:4))
  fb <- write_run(y, c(.1, .2, .8, .9), paste0("j", 1:4))
  r <- run_rscript("compare_models.R", c(fa, fb))
  expect_equal(r$status, 1)
  expect_length(r$stderr, 1)
  expect_match(r$stderr, "images differ")
  fc <- write_run(c(0, 1, 1, 1), c(.1, .2, .8, .9), paste0("i", 1:4))
  r <- run_rscript("compare_models.R", c(fa, fc))
  expect_equal(r$status, 1)
  expect_match(r$stderr, "labels differ .* for 1 image")
})

test_that("a run compared with itself is refused, however the path is spelled", {
  y <- c(0, 0, 1, 1)
  fa <- write_run(y, c(.1, .2, .8, .9), paste0("i", 1:4))
  other <- file.path(dirname(fa), ".", basename(fa))
  r <- run_rscript("compare_models.R", c(fa, other))
  expect_equal(r$status, 1)
  expect_length(r$stderr, 1)
  expect_match(r$stderr, "is the same predictions file as .*not with itself")
})

test_that("runs are named by the shortest path suffixes that tell them apart", {
  root <- tempfile()
  for (s in c("A", "B")) dir.create(file.path(root, s, "resnet18"), recursive = TRUE)
  fa <- file.path(root, "A", "resnet18", "predictions_test.json")
  fb <- file.path(root, "B", "resnet18", "predictions_test.json")
  file.copy(write_run(c(0, 0, 1, 1), c(.1, .2, .8, .9), paste0("i", 1:4)), fa)
  file.copy(write_run(c(0, 0, 1, 1), c(.1, .6, .3, .9), paste0("i", 1:4)), fb)
  r <- run_rscript("compare_models.R", c(fa, fb))
  x <- jsonlite::fromJSON(paste(r$stdout, collapse = "\n"), simplifyVector = FALSE)
  expect_equal(vapply(x$runs, function(run) run$name, ""), c("A/resnet18/predictions_test", "B/resnet18/predictions_test"))
  expect_equal(mc_path_labels(c("/x/a/p.json", "/x/b/p.json", "/y/c.json")), c("a/p", "b/p", "y/c"))
})

test_that("--group is parsed by the one shared parser (empty member refused)", {
  fa <- write_run(c(0, 0, 1, 1), c(.1, .2, .8, .9), paste0("i", 1:4))
  fb <- write_run(c(0, 0, 1, 1), c(.1, .6, .3, .9), paste0("i", 1:4))
  r <- run_rscript("compare_models.R", c(fa, fb, "--group", "malignant=yes,,no"))
  expect_equal(r$status, 1)
  expect_length(r$stderr, 1)
  expect_match(r$stderr, "--group 'malignant=yes,,no': expected NAME=CLASS,CLASS")
})
