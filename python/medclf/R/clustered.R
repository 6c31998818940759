# Intervals that count groups (patients, lesions, duplicate clusters), not images.
#
# The R half of python/medclf/evaluate/clustered.py (the methods and references are in its
# docstring and in docs/report.md); the two agree to 1e-9 (python/tests/parity/test_clustered_parity.py).
# When a scored split has a group with more than one image, the intervals are recomputed over groups:
# ROC-AUC by the clustered DeLong variance (Obuchowski 1997); proportions by Clopper-Pearson on the
# effective sample size of the cluster-robust ratio-estimator variance (Korn & Graubard 1998);
# balanced accuracy by MOVER-Wilson on effective counts; kappa, average precision, macro AUC,
# Brier score, ECE and calibration slope/intercept by a percentile group bootstrap (groups drawn
# within class strata with the portable Park-Miller generator). Estimates do not change.

MC_CLUSTER_BOOT_N <- 500
MC_CLUSTER_BOOT_SEED <- 20240617
MC_CLUSTER_METHOD_AUC <- "clustered DeLong over groups (Obuchowski 1997)"
MC_CLUSTER_METHOD_PROPORTION <- paste("Clopper-Pearson on the effective sample size of the cluster-robust ratio-estimator",
                                      "variance over groups (Korn & Graubard 1998)")
MC_CLUSTER_METHOD_F1 <- paste("2J/(1+J) of the Jaccard index J, interval as", MC_CLUSTER_METHOD_PROPORTION)
MC_CLUSTER_METHOD_BALANCED <- "mean of per-class recalls; MOVER-Wilson on the recalls' effective counts over groups"
MC_CLUSTER_METHOD_BOOT <- sprintf(paste("percentile group bootstrap: whole groups resampled within class strata",
                                        "(%d resamples, portable generator)"), MC_CLUSTER_BOOT_N)
MC_CLUSTER_BOOTSTRAPPED <- c("average_precision", "cohen_kappa", "brier_score", "ece", "calibration_slope",
                             "calibration_intercept")

# 0-based codes of the group names in byte order (as numpy's sort), or NULL without clusters.
mc_group_codes <- function(clusters) {
  if (is.null(clusters)) return(NULL)
  clusters <- as.character(clusters)
  match(clusters, sort(unique(clusters), method = "radix")) - 1L
}

mc_is_clustered <- function(codes) !is.null(codes) && length(codes) > 0 && max(tabulate(codes + 1L)) > 1

mc_cluster_summary <- function(codes) {
  list(n_images = length(codes), n_groups = length(unique(codes)), largest_group = max(tabulate(codes + 1L)),
       intervals = "over groups",
       bootstrap = list(n = MC_CLUSTER_BOOT_N, seed = MC_CLUSTER_BOOT_SEED, method = MC_CLUSTER_METHOD_BOOT))
}

mc_group_sums <- function(values, codes, groups) {
  out <- numeric(groups)
  if (length(values)) {
    s <- rowsum(as.numeric(values), codes)
    out[as.integer(rownames(s)) + 1L] <- s[, 1]
  }
  out
}

# list(theta, a = V10_i - m_i A, b = V01_i - n_i A) per group.
mc_group_parts <- function(is_positive, scores, codes) {
  m <- sum(is_positive); n <- sum(!is_positive)
  combined <- rank(scores)
  v10 <- (combined[is_positive] - rank(scores[is_positive])) / n
  v01 <- 1 - (combined[!is_positive] - rank(scores[!is_positive])) / m
  theta <- mean(v10)
  groups <- max(codes) + 1L
  list(theta = theta,
       a = mc_group_sums(v10, codes[is_positive], groups) - mc_group_sums(rep(1, m), codes[is_positive], groups) * theta,
       b = mc_group_sums(v01, codes[!is_positive], groups) - mc_group_sums(rep(1, n), codes[!is_positive], groups) * theta)
}

mc_group_covariance <- function(is_positive, codes, first, second) {
  m <- sum(is_positive); n <- sum(!is_positive)
  present <- length(unique(codes))
  present / (present - 1) * (sum(first$a * second$a) / (m * m) + sum(first$b * second$b) / (n * n) +
                               (sum(first$a * second$b) + sum(second$a * first$b)) / (m * n))
}

mc_clustered_paired <- function(is_positive, score_a, score_b, codes, unclustered) {
  if (is.na(unclustered$difference$lower) || !mc_is_clustered(codes)) return(unclustered)
  pa <- mc_group_parts(is_positive, score_a, codes); pb <- mc_group_parts(is_positive, score_b, codes)
  sig <- sqrt(max(mc_group_covariance(is_positive, codes, pa, pa) + mc_group_covariance(is_positive, codes, pb, pb) -
                    2 * mc_group_covariance(is_positive, codes, pa, pb), 0))
  d <- pa$theta - pb$theta
  z <- if (sig == 0) (if (d == 0) 0 else sign(d) * Inf) else d / sig
  crit <- mc_z()
  list(difference = mc_value(unclustered$difference$estimate, d - crit * sig, d + crit * sig,
                             "paired clustered DeLong over groups (Obuchowski 1997)"),
       z = if (is.finite(z)) z else NA_real_, p_value = 2 * stats::pnorm(-abs(z)))
}

mc_clustered_auc <- function(is_positive, scores, codes, unclustered) {
  if (is.na(unclustered$lower) || max(tabulate(codes + 1L)) < 2) return(unclustered)
  parts <- mc_group_parts(is_positive, scores, codes)
  theta <- parts$theta
  half <- mc_z() * sqrt(max(mc_group_covariance(is_positive, codes, parts, parts), 0))
  mc_value(unclustered$estimate, min(1, max(0, theta - half)), min(1, max(0, theta + half)), MC_CLUSTER_METHOD_AUC,
           note = unclustered$note)
}

# list(x, n, x_eff, n_eff, groups) of the proportion success / eligible.
mc_effective_counts <- function(success, eligible, codes) {
  n <- sum(eligible); x <- sum(success & eligible)
  groups <- if (length(codes)) max(codes) + 1L else 0L
  per_x <- mc_group_sums(as.numeric(success[eligible]), codes[eligible], groups)
  per_n <- mc_group_sums(rep(1, n), codes[eligible], groups)
  held <- per_n > 0
  present <- sum(held)
  if (n == 0 || max(per_n) <= 1) return(list(x = x, n = n, x_eff = NULL, n_eff = NULL, groups = present))
  p <- x / n
  variance <- if (present < 2) 0 else present / (present - 1) * sum((per_x[held] - p * per_n[held])^2) / n^2
  n_eff <- if (variance > 0) min(n, p * (1 - p) / variance) else present
  list(x = x, n = n, x_eff = p * n_eff, n_eff = n_eff, groups = present)
}

mc_unchanged <- function(e) is.null(e$n_eff)

mc_clopper_pearson_eff <- function(e) {
  alpha <- (1 - MC_CONF_LEVEL) / 2
  c(if (e$x == 0) 0 else stats::qbeta(alpha, e$x_eff, e$n_eff - e$x_eff + 1),
    if (e$x == e$n) 1 else stats::qbeta(1 - alpha, e$x_eff + 1, e$n_eff - e$x_eff))
}

mc_clustered_proportion <- function(success, eligible, codes, unclustered) {
  e <- mc_effective_counts(success, eligible, codes)
  if (mc_unchanged(e)) return(unclustered)
  ci <- mc_clopper_pearson_eff(e)
  out <- mc_value(e$x / e$n, ci[1], ci[2], MC_CLUSTER_METHOD_PROPORTION, note = unclustered$note)
  out$effective_n <- e$n_eff; out$groups <- e$groups
  out
}

mc_clustered_f1 <- function(is_positive, called, codes, unclustered) {
  e <- mc_effective_counts(is_positive & called, is_positive | called, codes)
  if (mc_unchanged(e)) return(unclustered)
  ci <- mc_clopper_pearson_eff(e)
  out <- mc_value(unclustered$estimate, 2 * ci[1] / (1 + ci[1]), 2 * ci[2] / (1 + ci[2]), MC_CLUSTER_METHOD_F1,
                  note = unclustered$note)
  out$effective_n <- e$n_eff; out$groups <- e$groups
  out
}

# `pairs`: list of list(success, eligible), one per recall.
mc_clustered_balanced <- function(pairs, codes, unclustered) {
  counts <- lapply(pairs, function(pr) mc_effective_counts(pr[[1]], pr[[2]], codes))
  if (is.na(unclustered$estimate) || all(vapply(counts, mc_unchanged, TRUE))) return(unclustered)
  p <- vapply(counts, function(e) e$x / e$n, 0)
  b <- vapply(counts, function(e) if (mc_unchanged(e)) mc_wilson(e$x, e$n) else mc_wilson(e$x_eff, e$n_eff), c(0, 0))
  k <- length(counts)
  est <- mean(p)
  lower <- est - sqrt(sum((p - b[1, ])^2)) / k
  upper <- est + sqrt(sum((b[2, ] - p)^2)) / k
  mc_value(est, max(0, lower), min(1, upper), MC_CLUSTER_METHOD_BALANCED, note = unclustered$note)
}

# A resample is a row of counts: how many times each image is drawn (its group's count). Every
# bootstrap statistic is computed for all resamples at once, each image weighted by its count;
# this equals computing it on the resample's list of images (the sums hold the same terms).

# (boot_n x n) counts of each image in each resample: whole groups drawn with replacement within
# class strata (a group's stratum: its most frequent class, the smallest on ties), strata in order.
mc_cluster_resample_counts <- function(codes, strata, boot_n = MC_CLUSTER_BOOT_N, seed = MC_CLUSTER_BOOT_SEED) {
  groups <- max(codes) + 1L
  group_stratum <- vapply(seq_len(groups) - 1L, function(g)
    which.max(tabulate(strata[codes == g] + 1L, nbins = max(strata) + 1L)) - 1L, 0L)
  group_counts <- matrix(0, boot_n, groups)
  strata_in_order <- sort(unique(group_stratum))
  for (s in seq_along(strata_in_order)) {
    in_stratum <- which(group_stratum == strata_in_order[s])
    drawn <- matrix(in_stratum[mc_bootstrap_indices(length(in_stratum), boot_n, seed + s - 1)], boot_n)
    for (j in seq_len(ncol(drawn))) {
      cells <- cbind(seq_len(boot_n), drawn[, j])  # one cell per row: no repeated index in one assignment
      group_counts[cells] <- group_counts[cells] + 1
    }
  }
  group_counts[, codes + 1L, drop = FALSE]
}

mc_cluster_percentile <- function(unclustered, draws) {
  if (is.na(unclustered$estimate)) return(unclustered)
  defined <- draws[is.finite(draws)]
  if (!length(defined)) return(mc_value(unclustered$estimate, NA, NA, MC_CLUSTER_METHOD_BOOT,
                                        note = "undefined in every resample"))
  alpha <- (1 - MC_CONF_LEVEL) / 2
  q <- stats::quantile(defined, c(alpha, 1 - alpha), names = FALSE, type = 7)
  mc_value(unclustered$estimate, q[1], q[2], MC_CLUSTER_METHOD_BOOT)
}

# Each resample's sums of `values` (one per image) over the runs of equal scores, in score order.
mc_run_sums <- function(counts, scores, values, decreasing) {
  o <- order(scores, decreasing = decreasing)
  s <- scores[o]
  run <- cumsum(c(TRUE, s[-1] != s[-length(s)]))
  t(rowsum(values[o] * t(counts[, o, drop = FALSE]), run, reorder = FALSE))
}

# Cumulative sums along each row of a matrix of whole numbers (counts): one cumsum down the
# columns of t(m), less the total of the rows before (exact: every partial sum is a whole number).
mc_row_cumsum <- function(m) {
  tm <- t(m)
  sums <- cumsum(as.vector(tm))
  before <- c(0, sums[seq_len(ncol(tm) - 1L) * nrow(tm)])
  t(matrix(sums - rep(before, each = nrow(tm)), nrow(tm)))
}

# mc_average_precision's estimate per resample (NA without a positive).
mc_weighted_ap <- function(y, scores, counts) {
  tp <- mc_row_cumsum(mc_run_sums(counts, scores, y, TRUE))
  fp <- mc_row_cumsum(mc_run_sums(counts, scores, 1 - y, TRUE))
  n_pos <- tp[, ncol(tp)]
  recall <- tp / n_pos
  gain <- recall - cbind(0, recall[, -ncol(recall), drop = FALSE])
  ap <- rowSums(ifelse(gain > 0, gain * tp / (tp + fp), 0))  # a score absent from a resample adds nothing
  ap[n_pos == 0] <- NA
  ap
}

# mc_rank_auc per resample (Mann-Whitney, ties one half; NA with one class absent).
mc_weighted_auc <- function(y, scores, counts) {
  positives <- mc_run_sums(counts, scores, y, FALSE)
  negatives <- mc_run_sums(counts, scores, 1 - y, FALSE)
  below <- mc_row_cumsum(negatives) - negatives
  n_pos <- rowSums(positives); n_neg <- rowSums(negatives)
  auc <- rowSums(positives * (below + 0.5 * negatives)) / (n_pos * n_neg)
  auc[n_pos == 0 | n_neg == 0] <- NA
  auc
}

# mc_ece_estimate per resample.
mc_weighted_ece <- function(outcome, probability, counts, bins = MC_ECE_BINS) {
  gaps <- matrix(0, length(outcome), bins)
  gaps[cbind(seq_along(outcome), pmin(pmax(ceiling(probability * bins), 1), bins))] <- outcome - probability
  rowSums(abs(counts %*% gaps)) / rowSums(counts)
}

# Cohen's kappa estimate (mc_kappa) per resample; NA where chance agreement is 1.
mc_weighted_kappa <- function(labels, decided, n_classes, counts) {
  cells <- matrix(0, length(labels), n_classes * n_classes)
  cells[cbind(seq_along(labels), labels * n_classes + decided + 1)] <- 1
  p <- (counts %*% cells) / rowSums(counts)  # column l * n_classes + d + 1: truth l, decision d
  classes <- seq_len(n_classes) - 1L
  po <- rowSums(p[, classes * n_classes + classes + 1, drop = FALSE])
  rows <- vapply(classes, function(l) rowSums(p[, l * n_classes + classes + 1, drop = FALSE]), numeric(nrow(p)))
  cols <- vapply(classes, function(d) rowSums(p[, classes * n_classes + d + 1, drop = FALSE]), numeric(nrow(p)))
  pe <- rowSums(matrix(rows * cols, nrow(p)))
  ifelse(pe == 1, NA, (po - pe) / (1 - pe))
}

mc_logits <- function(probability) {
  p <- pmin(pmax(probability, MC_LOGIT_CLIP), 1 - MC_LOGIT_CLIP)
  log(p / (1 - p))
}

# mc_logistic_fit for every resample at once (logit P = a + b x, or a + x), Newton from `start`
# (the full sample's coefficients; zeros when NULL), each resample until its step is under 1e-10;
# returns (resamples x 2) coefficients (a, b), NA where it does not converge.
mc_weighted_logistic_fits <- function(y, x, counts, slope, start) {
  rows <- nrow(counts)
  beta <- matrix(0, rows, 2)
  if (!is.null(start)) beta[, seq_along(start)] <- rep(start, each = rows)
  out <- matrix(NA_real_, rows, 2)
  active <- seq_len(rows)
  for (it in 1:100) {
    if (!length(active)) break
    w <- counts[active, , drop = FALSE]; b <- beta[active, , drop = FALSE]
    eta <- matrix(b[, 1] + (if (slope) outer(b[, 2], x) else rep(x, each = length(active))), length(active))
    mu <- 1 / (1 + exp(-eta))
    v <- w * mu * (1 - mu); r <- w * (rep(y, each = length(active)) - mu)
    i00 <- rowSums(v); g0 <- rowSums(r)
    if (slope) {
      i01 <- as.vector(v %*% x); i11 <- as.vector(v %*% (x * x)); g1 <- as.vector(r %*% x)
      det <- i00 * i11 - i01 * i01
      step <- cbind((i11 * g0 - i01 * g1) / det, (i00 * g1 - i01 * g0) / det)
    } else {
      step <- cbind(g0 / i00, 0)
    }
    singular <- rowSums(!is.finite(step)) > 0
    step[singular, ] <- 0
    beta[active, ] <- b + step
    done <- !singular & pmax(abs(step[, 1]), abs(step[, 2])) < 1e-10
    out[active[done], ] <- beta[active[done], ]
    active <- active[!done & !singular]
  }
  out
}

# The full sample's slope and intercept fits: where each resample's Newton iterations start.
mc_calibration_starts <- function(y, s) {
  x <- mc_logits(s)
  lapply(c(TRUE, FALSE), function(slope) { fit <- mc_logistic_fit(y, x, slope); if (is.null(fit)) NULL else fit$beta })
}

# Slopes and intercepts per resample as mc_calibration_slope_intercept estimates them (NA where it
# gives NA: one class absent, perfect separation for the slope, no convergence).
mc_weighted_calibration <- function(y, s, counts) {
  starts <- mc_calibration_starts(y, s)
  x <- mc_logits(s)
  positives <- as.vector(counts %*% y)
  defined <- positives > 0 & positives < rowSums(counts)
  pos <- counts > 0 & rep(y == 1, each = nrow(counts))
  neg <- counts > 0 & rep(y == 0, each = nrow(counts))
  # each resample's lowest and highest logit among its drawn positives and negatives
  xs <- rep(x, each = nrow(counts))
  extreme <- function(drawn, f, none) apply(matrix(ifelse(drawn, xs, none), nrow(counts)), 1, f)
  separated <- extreme(pos, min, Inf) > extreme(neg, max, -Inf) | extreme(pos, max, -Inf) < extreme(neg, min, Inf)
  slopes <- rep(NA_real_, nrow(counts)); intercepts <- slopes
  fit_slope <- defined & !separated
  if (any(fit_slope))
    slopes[fit_slope] <- mc_weighted_logistic_fits(y, x, counts[fit_slope, , drop = FALSE], TRUE, starts[[1]])[, 2]
  if (any(defined))
    intercepts[defined] <- mc_weighted_logistic_fits(y, x, counts[defined, , drop = FALSE], FALSE, starts[[2]])[, 1]
  list(slope = slopes, intercept = intercepts)
}

# Bootstrap statistics of one probability column (binary, or one class against the rest), per resample.
mc_column_draws <- function(y, s, counts) {
  fits <- mc_weighted_calibration(y, s, counts)
  list(average_precision = mc_weighted_ap(y, s, counts), brier_score = as.vector(counts %*% (s - y)^2) / rowSums(counts),
       ece = mc_weighted_ece(y, s, counts), calibration_slope = fits$slope, calibration_intercept = fits$intercept)
}

mc_clustered_counts <- function(metrics, y, called, codes) {
  eligible <- list(sensitivity = list(called, y), specificity = list(!called, !y), ppv = list(y, called),
                   npv = list(!y, !called), accuracy = list(called == y, rep(TRUE, length(y))))
  for (nm in names(eligible))
    if (!is.null(metrics[[nm]]))
      metrics[[nm]] <- mc_clustered_proportion(eligible[[nm]][[1]], eligible[[nm]][[2]], codes, metrics[[nm]])
  metrics$f1 <- mc_clustered_f1(y, called, codes, metrics$f1)
  metrics
}

mc_clustered_per_class <- function(per_class, labels, decided, probabilities, codes, counts) {
  for (k in seq_along(per_class)) {
    y <- labels == (k - 1L)
    m <- mc_clustered_counts(per_class[[k]]$metrics, y, decided == (k - 1L), codes)
    m$roc_auc <- mc_clustered_auc(y, probabilities[, k], codes, per_class[[k]]$metrics$roc_auc)
    draws <- mc_column_draws(as.numeric(y), probabilities[, k], counts)
    for (stat in MC_CLUSTER_BOOTSTRAPPED)
      if (!is.null(m[[stat]])) m[[stat]] <- mc_cluster_percentile(per_class[[k]]$metrics[[stat]], draws[[stat]])
    per_class[[k]]$metrics <- m
  }
  per_class
}

mc_clustered_binary <- function(metrics, is_positive, scores, threshold, codes, counts) {
  called <- scores >= threshold
  out <- mc_clustered_counts(metrics, is_positive, called, codes)
  out$balanced_accuracy <- mc_clustered_balanced(list(list(called, is_positive), list(!called, !is_positive)), codes,
                                                 metrics$balanced_accuracy)
  out$roc_auc <- mc_clustered_auc(is_positive, scores, codes, metrics$roc_auc)
  draws <- mc_column_draws(as.numeric(is_positive), scores, counts)
  draws$cohen_kappa <- mc_weighted_kappa(as.integer(is_positive), as.integer(called), 2L, counts)
  for (stat in MC_CLUSTER_BOOTSTRAPPED) out[[stat]] <- mc_cluster_percentile(metrics[[stat]], draws[[stat]])
  out
}

mc_clustered_multiclass <- function(result, labels, probabilities, codes, counts) {
  decided <- result$decided
  k <- ncol(probabilities)
  onehot <- outer(labels, seq_len(k) - 1L, "==") * 1
  aucs <- matrix(vapply(seq_len(k), function(j) mc_weighted_auc(as.numeric(labels == j - 1L), probabilities[, j], counts),
                        numeric(nrow(counts))), nrow(counts))
  n_defined <- rowSums(!is.na(aucs))
  draws <- list(cohen_kappa = mc_weighted_kappa(labels, decided, k, counts),
                macro_auc = ifelse(n_defined > 0, rowSums(aucs, na.rm = TRUE) / n_defined, NA),
                brier_score = as.vector(counts %*% rowSums((probabilities - onehot)^2)) / rowSums(counts),
                ece = mc_weighted_ece(as.numeric(decided == labels), apply(probabilities, 1, max), counts))
  metrics <- result$metrics
  metrics$accuracy <- mc_clustered_proportion(decided == labels, rep(TRUE, length(labels)), codes, metrics$accuracy)
  present <- (seq_len(k) - 1L)[vapply(seq_len(k) - 1L, function(j) any(labels == j), TRUE)]
  metrics$balanced_accuracy <- mc_clustered_balanced(lapply(present, function(j) list(decided == j, labels == j)),
                                                     codes, metrics$balanced_accuracy)
  for (stat in c("cohen_kappa", "macro_auc", "brier_score", "ece"))
    metrics[[stat]] <- mc_cluster_percentile(metrics[[stat]], draws[[stat]])
  result$metrics <- metrics
  result$per_class <- mc_clustered_per_class(result$per_class, labels, decided, probabilities, codes, counts)
  result
}
