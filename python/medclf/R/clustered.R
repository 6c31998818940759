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

# Resamples: a list of 1-based image indices, groups drawn within class strata.
mc_cluster_resamples <- function(codes, strata, boot_n = MC_CLUSTER_BOOT_N, seed = MC_CLUSTER_BOOT_SEED) {
  groups <- max(codes) + 1L
  members <- lapply(seq_len(groups) - 1L, function(g) which(codes == g))
  group_stratum <- vapply(members, function(i) which.max(tabulate(strata[i] + 1L, nbins = max(strata) + 1L)) - 1L, 0L)
  draws <- list()
  for (s in seq_along(sort(unique(group_stratum)))) {
    stratum <- sort(unique(group_stratum))[s]
    in_stratum <- which(group_stratum == stratum)
    draws[[s]] <- list(groups = in_stratum, index = mc_bootstrap_indices(length(in_stratum), boot_n, seed + s - 1))
  }
  lapply(seq_len(boot_n), function(b) unlist(lapply(draws, function(d) unlist(members[d$groups[d$index[b, ]]]))))
}

mc_cluster_percentile <- function(unclustered, draws) {
  if (is.na(unclustered$estimate)) return(unclustered)
  draws <- unlist(draws)
  defined <- draws[!is.na(draws) & is.finite(draws)]
  if (!length(defined)) return(mc_value(unclustered$estimate, NA, NA, MC_CLUSTER_METHOD_BOOT,
                                        note = "undefined in every resample"))
  alpha <- (1 - MC_CONF_LEVEL) / 2
  q <- stats::quantile(defined, c(alpha, 1 - alpha), names = FALSE, type = 7)
  mc_value(unclustered$estimate, q[1], q[2], MC_CLUSTER_METHOD_BOOT)
}

mc_logits <- function(probability) {
  p <- pmin(pmax(probability, MC_LOGIT_CLIP), 1 - MC_LOGIT_CLIP)
  log(p / (1 - p))
}

# The full sample's slope and intercept fits: where each resample's Newton iterations start.
mc_calibration_starts <- function(y, s) {
  x <- mc_logits(s)
  lapply(c(TRUE, FALSE), function(slope) { fit <- mc_logistic_fit(y, x, slope); if (is.null(fit)) NULL else fit$beta })
}

mc_calibration_estimates <- function(y, s, starts) {
  x <- mc_logits(s)
  if (sum(y) == 0 || sum(y) == length(y)) return(c(NA_real_, NA_real_))
  separated <- min(x[y == 1]) > max(x[y == 0]) || max(x[y == 1]) < min(x[y == 0])
  slope <- if (separated) NULL else mc_logistic_fit(y, x, TRUE, starts[[1]])
  intercept <- mc_logistic_fit(y, x, FALSE, starts[[2]])
  c(if (is.null(slope)) NA_real_ else slope$beta[2], if (is.null(intercept)) NA_real_ else intercept$beta[1])
}

mc_column_draws <- function(y, s, i, starts) {
  yi <- y[i]; si <- s[i]
  fits <- mc_calibration_estimates(yi, si, starts)
  list(average_precision = if (any(yi == 1)) mc_ap_estimate(yi == 1, si) else NA_real_, brier_score = mean((si - yi)^2),
       ece = mc_ece_estimate(yi, si), calibration_slope = fits[1], calibration_intercept = fits[2])
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

mc_clustered_per_class <- function(per_class, labels, decided, probabilities, codes, indices) {
  for (k in seq_along(per_class)) {
    y <- labels == (k - 1L)
    m <- mc_clustered_counts(per_class[[k]]$metrics, y, decided == (k - 1L), codes)
    m$roc_auc <- mc_clustered_auc(y, probabilities[, k], codes, per_class[[k]]$metrics$roc_auc)
    starts <- mc_calibration_starts(as.numeric(y), probabilities[, k])
    draws <- lapply(indices, function(i) mc_column_draws(as.numeric(y), probabilities[, k], i, starts))
    for (stat in MC_CLUSTER_BOOTSTRAPPED)
      if (!is.null(m[[stat]])) m[[stat]] <- mc_cluster_percentile(per_class[[k]]$metrics[[stat]],
                                                                  lapply(draws, function(d) d[[stat]]))
    per_class[[k]]$metrics <- m
  }
  per_class
}

mc_clustered_binary <- function(metrics, is_positive, scores, threshold, codes, indices) {
  called <- scores >= threshold
  out <- mc_clustered_counts(metrics, is_positive, called, codes)
  out$balanced_accuracy <- mc_clustered_balanced(list(list(called, is_positive), list(!called, !is_positive)), codes,
                                                 metrics$balanced_accuracy)
  out$roc_auc <- mc_clustered_auc(is_positive, scores, codes, metrics$roc_auc)
  starts <- mc_calibration_starts(as.numeric(is_positive), scores)
  draws <- lapply(indices, function(i) {
    d <- mc_column_draws(as.numeric(is_positive), scores, i, starts)
    cm <- mc_confusion(is_positive[i], called[i])
    d$cohen_kappa <- mc_kappa(matrix(c(cm$tn, cm$fn, cm$fp, cm$tp), 2))$estimate
    d
  })
  for (stat in MC_CLUSTER_BOOTSTRAPPED)
    out[[stat]] <- mc_cluster_percentile(metrics[[stat]], lapply(draws, function(d) d[[stat]]))
  out
}

mc_clustered_multiclass <- function(result, labels, probabilities, codes, indices) {
  decided <- result$decided
  k <- ncol(probabilities)
  draws <- lapply(indices, function(i) {
    li <- labels[i]; pi <- probabilities[i, , drop = FALSE]; di <- decided[i]
    onehot <- outer(li, seq_len(k) - 1L, "==") * 1
    aucs <- unlist(lapply(seq_len(k), function(j) {
      n_j <- sum(li == j - 1L)
      if (n_j > 0 && n_j < length(li)) mc_rank_auc(li == j - 1L, pi[, j]) else NULL
    }))
    list(cohen_kappa = mc_kappa(unclass(mc_confusion_table(li, di, k)))$estimate,
         macro_auc = if (length(aucs)) mean(aucs) else NA_real_,
         brier_score = mean(rowSums((pi - onehot)^2)), ece = mc_ece_estimate(as.numeric(di == li), apply(pi, 1, max)))
  })
  metrics <- result$metrics
  metrics$accuracy <- mc_clustered_proportion(decided == labels, rep(TRUE, length(labels)), codes, metrics$accuracy)
  present <- (seq_len(k) - 1L)[vapply(seq_len(k) - 1L, function(j) any(labels == j), TRUE)]
  metrics$balanced_accuracy <- mc_clustered_balanced(lapply(present, function(j) list(decided == j, labels == j)),
                                                     codes, metrics$balanced_accuracy)
  for (stat in c("cohen_kappa", "macro_auc", "brier_score", "ece"))
    metrics[[stat]] <- mc_cluster_percentile(metrics[[stat]], lapply(draws, function(d) d[[stat]]))
  result$metrics <- metrics
  result$per_class <- mc_clustered_per_class(result$per_class, labels, decided, probabilities, codes, indices)
  result
}
