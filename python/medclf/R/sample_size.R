# Sample sizes and interval widths for planning a test set: the R half of
# python/medclf/evaluate/sample_size.py (methods and references in its docstring; `medclf plan`);
# the two agree to 1e-9 (python/tests/parity/test_sample_size_parity.py). Needs metrics.R (mc_z).
#   source("R/metrics.R"); source("R/sample_size.R")
#   mc_plan("auc", expected = 0.85, width = 0.1)            # 117 positives, 117 negatives
#   mc_plan("sensitivity", 0.9, 0.1, prevalence = 0.2)      # Buderer: 139 positives, 692 images

MC_PLAN_METHODS <- list(wilson = "Wilson score interval",
                        buderer = "Buderer (1996), Wald interval of the class's cases",
                        `hanley-mcneil` = "Hanley & McNeil (1982) standard error",
                        cohen = "Cohen (1960) large-sample standard error")
MC_PLAN_LARGEST_N <- 1e7

mc_wilson_width <- function(p, n) {
  z <- mc_z()
  2 * z / (1 + z * z / n) * sqrt(p * (1 - p) / n + z * z / (4 * n * n))
}

mc_auc_width <- function(auc, n_pos, n_neg) {
  q1 <- auc / (2 - auc); q2 <- 2 * auc * auc / (1 + auc)
  variance <- (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
  2 * mc_z() * sqrt(variance)
}

mc_kappa_width <- function(kappa, prevalence, n) {
  chance <- prevalence * prevalence + (1 - prevalence) * (1 - prevalence)
  observed <- kappa * (1 - chance) + chance
  2 * mc_z() * sqrt(observed * (1 - observed) / n) / (1 - chance)
}

# The smallest n >= 1 with width_of(n) <= target (width_of falls as n grows).
mc_plan_smallest <- function(width_of, target) {
  high <- 1
  while (width_of(high) > target) {
    high <- high * 2
    if (high > MC_PLAN_LARGEST_N) stop(sprintf("--width %s: more than %d cases would be needed", target, MC_PLAN_LARGEST_N))
  }
  low <- high %/% 2
  while (low + 1 < high) {
    middle <- (low + high) %/% 2
    if (width_of(middle) <= target) high <- middle else low <- middle
  }
  high
}

mc_plan <- function(metric, expected, width, prevalence = NULL) {
  out <- list(metric = metric, expected = expected, width = width, prevalence = prevalence)
  if (metric %in% c("sensitivity", "specificity") && !is.null(prevalence)) {
    share <- if (metric == "sensitivity") prevalence else 1 - prevalence
    cases <- mc_z()^2 * expected * (1 - expected) / (width / 2)^2
    n_class <- ceiling(cases)
    return(c(out, list(method = MC_PLAN_METHODS$buderer, n_images = ceiling(cases / share),
                       n_positive = if (metric == "sensitivity") n_class else NULL,
                       n_negative = if (metric == "specificity") n_class else NULL)))
  }
  if (metric %in% c("sensitivity", "specificity", "accuracy")) {
    n <- mc_plan_smallest(function(k) mc_wilson_width(expected, k), width)
    return(c(out, list(method = MC_PLAN_METHODS$wilson, n_images = if (metric == "accuracy") n else NULL,
                       n_positive = if (metric == "sensitivity") n else NULL,
                       n_negative = if (metric == "specificity") n else NULL)))
  }
  share <- if (is.null(prevalence)) 0.5 else prevalence
  if (metric == "auc") {
    ratio <- (1 - share) / share
    negatives <- function(n_pos) max(1, ceiling(n_pos * ratio))
    n_pos <- mc_plan_smallest(function(k) mc_auc_width(expected, k, negatives(k)), width)
    return(c(out, list(method = MC_PLAN_METHODS$`hanley-mcneil`, n_images = n_pos + negatives(n_pos),
                       n_positive = n_pos, n_negative = negatives(n_pos))))
  }
  n <- mc_plan_smallest(function(k) mc_kappa_width(expected, share, k), width)
  c(out, list(method = MC_PLAN_METHODS$cohen, n_images = n, n_positive = NULL, n_negative = NULL))
}
