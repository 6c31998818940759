# Decision curves (Vickers & Elkin 2006): the R half of python/medclf/evaluate/decision_curve.py
# (method and conventions in its docstring); the two agree to 1e-9.
# At threshold probability pt a case is called positive when its probability is >= pt, and
#   net benefit = sensitivity * prevalence - (1 - specificity) * (1 - prevalence) * pt / (1 - pt);
# treat all: prevalence - (1 - prevalence) * pt / (1 - pt); treat none: 0. The model's 95% band is
# a percentile bootstrap per threshold over mc_cluster_resample_counts' resamples (whole groups
# within class strata, or images within class strata when no group has two images).

MC_DC_THRESHOLDS <- (0:99) / 100
MC_DC_ROUNDING <- 1e-12  # a net-benefit difference below this is floating-point rounding, not benefit
MC_DC_METHOD <- paste("net benefit (Vickers & Elkin 2006) at threshold probabilities 0 to 0.99, positive when",
                      "probability >= threshold; 95% band: percentile bootstrap")

mc_net_benefit <- function(tp, fp, positives, negatives, threshold, prevalence = NULL) {
  if (is.null(prevalence)) prevalence <- positives / (positives + negatives)
  tp / positives * prevalence - fp / negatives * (1 - prevalence) * (threshold / (1 - threshold))
}

# (TP, FP) at every threshold, per row of `weights` (resamples x images).
mc_dc_counts <- function(y, scores, weights) {
  called <- outer(scores, MC_DC_THRESHOLDS, ">=") * 1
  list(tp = weights %*% (called * y), fp = weights %*% (called * (1 - y)))
}

# Runs of thresholds where the model's net benefit exceeds both defaults: list of c(first, last).
mc_dc_useful_ranges <- function(model, treat_all) {
  better <- c(model > pmax(treat_all, 0) + MC_DC_ROUNDING, FALSE)
  runs <- list(); start <- NA
  for (i in seq_along(better)) {
    if (better[i] && is.na(start)) start <- i
    if (!better[i] && !is.na(start)) { runs[[length(runs) + 1]] <- MC_DC_THRESHOLDS[c(start, i - 1)]; start <- NA }
  }
  runs
}

# The band's resamples: whole groups within class strata, or images when no group has two.
mc_dc_resamples <- function(is_positive, codes = NULL) {
  strata <- as.integer(is_positive)
  mc_cluster_resample_counts(if (mc_is_clustered(codes)) codes else seq_along(strata) - 1L, strata)
}

mc_decision_curve <- function(is_positive, scores, codes = NULL, prevalence = NULL, counts = NULL) {
  y <- as.numeric(is_positive)
  n_pos <- sum(y); n_neg <- length(y) - n_pos
  if (n_pos == 0 || n_neg == 0) return(NULL)
  grouped <- mc_is_clustered(codes)
  if (is.null(counts)) counts <- mc_dc_resamples(is_positive, codes)
  thresholds <- MC_DC_THRESHOLDS
  full <- mc_dc_counts(y, scores, matrix(1, 1, length(y)))
  model <- mc_net_benefit(as.vector(full$tp), as.vector(full$fp), n_pos, n_neg, thresholds, prevalence)
  boot <- mc_dc_counts(y, scores, counts)
  odds <- matrix(thresholds, nrow(counts), length(thresholds), byrow = TRUE)
  draws <- mc_net_benefit(boot$tp, boot$fp, as.vector(counts %*% y), as.vector(counts %*% (1 - y)), odds, prevalence)
  alpha <- (1 - MC_CONF_LEVEL) / 2
  band <- apply(draws, 2, stats::quantile, probs = c(alpha, 1 - alpha), names = FALSE, type = 7)
  pi <- if (is.null(prevalence)) n_pos / (n_pos + n_neg) else prevalence
  treat_all <- pi - (1 - pi) * thresholds / (1 - thresholds)
  list(method = MC_DC_METHOD, thresholds = thresholds,
       prevalence = list(value = pi, source = if (is.null(prevalence)) "test split" else "given"),
       model = list(estimate = model, lower = band[1, ], upper = band[2, ]),
       treat_all = treat_all, treat_none = 0, useful_ranges = mc_dc_useful_ranges(model, treat_all),
       bootstrap = list(n = MC_CLUSTER_BOOT_N, seed = MC_CLUSTER_BOOT_SEED,
                        over = if (grouped) "groups within class strata" else "images within class strata"))
}
