# medclf metric functions: pure, no I/O.
#
# Conventions (the Python fallback, python/medclf/evaluate/metrics.py, implements the same ones, and a
# parity test holds the two to 1e-9):
# - Binary decisions: a case is called positive when its score (probability of the named
#   positive class) is >= the threshold.
# - Every metric is reported as list(estimate, lower, upper, method[, note]); 95% intervals.
# - A ratio whose denominator is 0 (e.g. sensitivity with no positive cases) has estimate,
#   lower and upper NA and a note saying which denominator is empty. It never errors.
# - Proportions (sensitivity, specificity, PPV, NPV, accuracy) get exact Clopper-Pearson
#   intervals (stats::binom.test). F1 gets the Clopper-Pearson interval of the Jaccard index
#   J = TP / (TP + FP + FN) mapped through the monotone F1 = 2J / (1 + J). Balanced accuracy:
#   MOVER-Wilson interval of a mean of independent binomial proportions (second half of the file).
# - ROC-AUC: pROC with levels = c(negative, positive), direction = "<" (higher score = more
#   positive; ties count 1/2); DeLong interval (pROC::ci.auc). One class present: NA + note.
#   Fewer than two cases in a class: estimate kept, interval NA (pROC's DeLong needs two).
# - Average precision: step-wise sum over distinct thresholds, AP = sum_k (R_k - R_{k-1}) P_k,
#   exactly sklearn.metrics.average_precision_score, logit interval. No positive cases: NA + note.
# - Macro AUC: DeLong covariance of the one-vs-rest AUCs; calibration: Brier, ECE, slope, intercept.
# - Cohen's kappa: (p_o - p_e) / (1 - p_e) with the large-sample variance of Fleiss, Cohen &
#   Everitt (1969); interval kappa +/- z * SE, clipped to [-1, 1]. p_e = 1: NA + note.

MC_CONF_LEVEL <- 0.95
# An interval narrower than this is reported as zero-width (its variance is 0), with the reason.
MC_ZERO_WIDTH <- 1e-12

mc_zero_width <- function(lower, upper) {
  length(lower) == 1 && length(upper) == 1 && !is.na(lower) && !is.na(upper) && upper - lower < MC_ZERO_WIDTH
}

# A metric value. A zero-width interval always carries a note: the metric functions give the
# specific reason; this generic one is the safety net for any other.
mc_value <- function(estimate, lower = NA_real_, upper = NA_real_, method, note = NULL) {
  out <- list(estimate = as.numeric(estimate), lower = as.numeric(lower),
              upper = as.numeric(upper), method = method)
  if (is.null(note) && mc_zero_width(out$lower, out$upper)) note <- "interval has zero width"
  if (!is.null(note)) out$note <- note
  out
}

# Clopper-Pearson interval of x successes in n trials; 0/0 gives NA with `empty_note`.
mc_proportion <- function(x, n, empty_note, method = "Clopper-Pearson") {
  if (n == 0) return(mc_value(NA, NA, NA, method, note = empty_note))
  ci <- stats::binom.test(x, n, conf.level = MC_CONF_LEVEL)$conf.int
  mc_value(x / n, ci[1], ci[2], method)
}

# Confusion counts of logical truth vs logical decision.
mc_confusion <- function(is_positive, called_positive) {
  list(tp = sum(is_positive & called_positive), fn = sum(is_positive & !called_positive),
       tn = sum(!is_positive & !called_positive), fp = sum(!is_positive & called_positive))
}

mc_count_metrics <- function(cm) {
  tp <- cm$tp; fn <- cm$fn; tn <- cm$tn; fp <- cm$fp
  sens <- mc_proportion(tp, tp + fn, "0/0: no positive cases; sensitivity undefined")
  spec <- mc_proportion(tn, tn + fp, "0/0: no negative cases; specificity undefined")
  ppv <- mc_proportion(tp, tp + fp, "0/0: no case called positive; PPV undefined")
  npv <- mc_proportion(tn, tn + fn, "0/0: no case called negative; NPV undefined")
  acc <- mc_proportion(tp + tn, tp + tn + fp + fn, "0/0: no cases")
  f1_method <- "Clopper-Pearson of Jaccard J=TP/(TP+FP+FN), mapped by F1=2J/(1+J)"
  jac <- mc_proportion(tp, tp + fp + fn, "0/0: no positive cases and none called positive; F1 undefined",
                       method = f1_method)
  to_f1 <- function(j) 2 * j / (1 + j)
  f1 <- jac
  f1$estimate <- to_f1(jac$estimate); f1$lower <- to_f1(jac$lower); f1$upper <- to_f1(jac$upper)
  bal <- mc_balanced_accuracy(c(tp, tn), c(tp + fn, tn + fp), "undefined unless both classes are present")
  list(sensitivity = sens, specificity = spec, ppv = ppv, npv = npv, accuracy = acc, f1 = f1,
       balanced_accuracy = bal)
}

# Mean over the values that are defined (NA ones left out); all NA -> NA. Estimate only.
mc_macro_mean <- function(values, method) {
  est <- vapply(values, function(v) v$estimate, 0)
  est <- est[!is.na(est)]
  if (length(est) == 0) return(mc_value(NA, NA, NA, method, note = "undefined for every class"))
  mc_value(mean(est), NA, NA, method)
}

mc_auc <- function(is_positive, scores) {
  method <- "DeLong (pROC, direction '<')"
  n_pos <- sum(is_positive); n_neg <- sum(!is_positive)
  if (n_pos == 0 || n_neg == 0)
    return(mc_value(NA, NA, NA, method, note = "only one class present; AUC undefined"))
  r <- pROC::roc(response = factor(is_positive, levels = c(FALSE, TRUE)), predictor = scores,
                 levels = c(FALSE, TRUE), direction = "<", quiet = TRUE)
  est <- as.numeric(pROC::auc(r))
  if (n_pos < 2 || n_neg < 2)
    return(mc_value(est, NA, NA, method, note = "fewer than 2 cases in a class; DeLong interval undefined"))
  ci <- suppressWarnings(as.numeric(pROC::ci.auc(r, method = "delong", conf.level = MC_CONF_LEVEL)))
  note <- if (est == 1 || est == 0) "perfect separation: DeLong variance is 0, interval degenerate"
          else if (mc_zero_width(ci[1], ci[3]))
            paste0(if (length(unique(scores)) == 1) "constant scores" else "every positive-negative pair ties alike",
                   ": DeLong variance is 0, interval has zero width")
          else NULL
  mc_value(est, ci[1], ci[3], method, note = note)
}

# One row per distinct score, highest first: counts of cases scoring >= that threshold.
mc_threshold_table <- function(is_positive, scores) {
  o <- order(scores, decreasing = TRUE)
  s <- scores[o]; y <- is_positive[o]
  n <- length(s)
  last <- if (n > 1) c(s[-1] != s[-n], TRUE) else TRUE
  tp <- cumsum(y)[last]; fp <- cumsum(!y)[last]
  n_pos <- sum(is_positive); n_neg <- n - n_pos
  data.frame(threshold = s[last], tp = tp, fp = fp,
             sensitivity = if (n_pos > 0) tp / n_pos else NA_real_,
             specificity = if (n_neg > 0) (n_neg - fp) / n_neg else NA_real_,
             precision = tp / (tp + fp))
}

mc_average_precision <- function(is_positive, scores) {
  method <- "step-wise sum over distinct thresholds (sklearn average_precision_score)"
  n_pos <- sum(is_positive)
  if (n_pos == 0) return(mc_value(NA, NA, NA, method, note = "no positive cases; AP undefined"))
  tab <- mc_threshold_table(is_positive, scores)
  mc_value(sum(diff(c(0, tab$tp / n_pos)) * tab$precision), NA, NA, method)
}

# Cohen's kappa of a square confusion matrix (rows = truth, columns = decision).
mc_kappa <- function(counts) {
  method <- "Cohen's kappa; asymptotic SE of Fleiss, Cohen & Everitt (1969)"
  n <- sum(counts)
  if (n == 0) return(mc_value(NA, NA, NA, method, note = "0/0: no cases"))
  p <- counts / n
  rows <- rowSums(p); cols <- colSums(p)
  po <- sum(diag(p)); pe <- sum(rows * cols)
  if (pe == 1) return(mc_value(NA, NA, NA, method,
                                note = "0/0: chance agreement is 1 (truth and decisions each one class); kappa undefined"))
  kappa <- (po - pe) / (1 - pe)
  degenerate <- mc_kappa_degenerate(counts, po)
  # kappa is constant on every table of this support: its variance is exactly 0 (the formula
  # below would leave rounding noise, an interval about 1e-8 wide).
  if (!is.null(degenerate))
    return(mc_value(kappa, kappa, kappa, method, note = paste0(degenerate, ": kappa variance is 0, interval has zero width")))
  a <- sum(diag(p) * (1 - (rows + cols) * (1 - kappa))^2)
  off <- p; diag(off) <- 0
  # outer(cols, rows, "+")[i, j] = p_.i + p_j., the weight of cell p_ij in the FCE formula.
  b <- (1 - kappa)^2 * sum(off * outer(cols, rows, "+")^2)
  variance <- max(0, (a + b - (kappa - pe * (1 - kappa))^2) / (n * (1 - pe)^2))
  z <- stats::qnorm(1 - (1 - MC_CONF_LEVEL) / 2)
  se <- sqrt(variance)
  mc_value(kappa, max(-1, kappa - z * se), min(1, kappa + z * se), method)
}

# Why kappa's variance is exactly 0 (kappa = 0 with one class in the truth or the decisions,
# kappa = 1 with perfect agreement), or NULL.
mc_kappa_degenerate <- function(counts, po) {
  if (sum(rowSums(counts) > 0) == 1) return("a single class in the truth")
  if (sum(colSums(counts) > 0) == 1) return("a single class in the decisions")
  if (po == 1) return("perfect agreement")
  NULL
}

# Parse "youden", "sensitivity:0.95", "specificity:0.9".
mc_parse_rule <- function(rule) {
  if (identical(rule, "youden")) return(list(kind = "youden", target = NA_real_))
  parts <- strsplit(rule, ":", fixed = TRUE)[[1]]
  target <- suppressWarnings(as.numeric(parts[2]))
  if (length(parts) != 2 || !(parts[1] %in% c("sensitivity", "specificity")) || is.na(target) ||
      target <= 0 || target > 1)
    stop(mc_error(sprintf("threshold rule '%s': use youden, sensitivity:T or specificity:T with 0 < T <= 1", rule)))
  list(kind = parts[1], target = target)
}

# Threshold chosen by a rule on (validation) predictions, from the distinct observed scores:
# youden = max(sens + spec - 1), ties to the higher threshold; sensitivity:T = the highest
# threshold with sensitivity >= T (lowering the threshold from the top, the first to reach T);
# specificity:T = the lowest threshold with specificity >= T.
mc_choose_threshold <- function(is_positive, scores, rule) {
  r <- mc_parse_rule(rule)
  if (sum(is_positive) == 0 || sum(!is_positive) == 0)
    stop(mc_error(sprintf("threshold rule '%s' needs both classes in the validation predictions", rule)))
  tab <- mc_threshold_table(is_positive, scores)
  i <- switch(r$kind,
    youden = { j <- tab$sensitivity + tab$specificity - 1; which(j == max(j))[1] },
    sensitivity = which(tab$sensitivity >= r$target)[1],
    specificity = { ok <- which(tab$specificity >= r$target); if (length(ok)) max(ok) else NA })
  if (is.na(i)) stop(mc_error(sprintf("threshold rule '%s': no threshold reaches the target on the validation predictions", rule)))
  list(threshold = tab$threshold[i], rule = rule, sensitivity = tab$sensitivity[i],
       specificity = tab$specificity[i])
}

mc_operating_point <- function(kind, target, tab, i) {
  if (length(i) == 0 || is.na(i))
    return(list(kind = kind, target = target, threshold = NA_real_, sensitivity = NA_real_,
                specificity = NA_real_, precision = NA_real_, note = "no threshold reaches the target"))
  list(kind = kind, target = target, threshold = tab$threshold[i], sensitivity = tab$sensitivity[i],
       specificity = tab$specificity[i], precision = tab$precision[i])
}

# Test-set operating points (step function over distinct thresholds, no interpolation):
# sensitivity at specificity >= T (lowest such threshold), specificity at sensitivity >= T
# (highest such threshold), highest precision with recall >= T (ties to the higher threshold).
mc_operating_points <- function(is_positive, scores, spec_targets = c(0.9, 0.95),
                                sens_targets = c(0.9, 0.95), recall_targets = c(0.95, 0.999)) {
  if (sum(is_positive) == 0 || sum(!is_positive) == 0) return(list())
  tab <- mc_threshold_table(is_positive, scores)
  out <- list()
  for (t in spec_targets) {
    ok <- which(tab$specificity >= t)
    out[[length(out) + 1]] <- mc_operating_point("sensitivity_at_specificity", t, tab, if (length(ok)) max(ok) else NA)
  }
  for (t in sens_targets)
    out[[length(out) + 1]] <- mc_operating_point("specificity_at_sensitivity", t, tab, which(tab$sensitivity >= t)[1])
  for (t in recall_targets) {
    ok <- which(tab$sensitivity >= t)
    i <- if (length(ok)) ok[which(tab$precision[ok] == max(tab$precision[ok]))[1]] else NA
    out[[length(out) + 1]] <- mc_operating_point("precision_at_recall", t, tab, i)
  }
  out
}

# Binary report: truth (logical), score of the positive class, threshold.
mc_binary_metrics <- function(is_positive, scores, threshold) {
  called <- scores >= threshold
  cm <- mc_confusion(is_positive, called)
  m <- mc_count_metrics(cm)
  m$roc_auc <- mc_auc(is_positive, scores)
  m$average_precision <- mc_average_precision_logit(is_positive, scores)
  m$cohen_kappa <- mc_kappa(matrix(c(cm$tn, cm$fn, cm$fp, cm$tp), 2))
  m <- c(m, mc_calibration_metrics(is_positive, scores))
  list(confusion_matrix = cm, metrics = m)
}

# One-vs-rest metrics of each class for decided classes `decided` (0-based indices).
mc_per_class <- function(labels, decided, probabilities, classes) {
  out <- list()
  indices <- if (length(labels)) mc_bootstrap_indices(length(labels)) else NULL
  for (k in seq_along(classes)) {
    is_k <- labels == (k - 1L)
    cm <- mc_confusion(is_k, decided == (k - 1L))
    m <- mc_count_metrics(cm)
    m$balanced_accuracy <- NULL
    m$accuracy <- NULL
    m$roc_auc <- mc_auc(is_k, probabilities[, k])
    m$average_precision <- mc_average_precision_logit(is_k, probabilities[, k])
    m <- c(m, mc_calibration_metrics(is_k, probabilities[, k], indices))
    out[[classes[k]]] <- list(n = sum(is_k), confusion_matrix = cm, metrics = m)
  }
  out
}

mc_macro <- function(per_class) {
  names_ <- c("sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "average_precision")
  out <- list()
  for (nm in names_)
    out[[nm]] <- mc_macro_mean(lapply(per_class, function(pc) pc$metrics[[nm]]),
                               "macro mean over classes where defined (one-vs-rest)")
  out
}

# Full confusion matrix, rows = truth, columns = decision (0-based indices).
mc_confusion_table <- function(labels, decided, n_classes) {
  table(factor(labels, levels = 0:(n_classes - 1)), factor(decided, levels = 0:(n_classes - 1)))
}

# Multi-class report: decided class = argmax of probabilities (first on ties).
mc_multiclass_metrics <- function(labels, probabilities, classes) {
  decided <- max.col(probabilities, ties.method = "first") - 1L
  counts <- unclass(mc_confusion_table(labels, decided, length(classes)))
  per_class <- mc_per_class(labels, decided, probabilities, classes)
  macro <- mc_macro(per_class)
  n <- length(labels)
  rows <- rowSums(counts)
  present <- which(rows > 0)
  bal <- mc_balanced_accuracy(diag(counts)[present], rows[present], "no cases")
  onehot <- outer(labels, seq_along(classes) - 1L, "==") * 1
  top <- mc_ece(decided == labels, apply(probabilities, 1, max))
  top$method <- MC_METHOD_ECE_TOP
  metrics <- list(accuracy = mc_proportion(sum(diag(counts)), n, "0/0: no cases"),
                  balanced_accuracy = bal, cohen_kappa = mc_kappa(counts),
                  macro_auc = mc_macro_auc_delong(labels, probabilities),
                  brier_score = mc_brier(onehot, probabilities), ece = top)
  dimnames(counts) <- NULL
  list(confusion_matrix = list(classes = classes, rows = "truth", columns = "decision",
                               matrix = counts),
       metrics = metrics, per_class = per_class, macro = macro, decided = decided)
}

# A condition the caller shows to the user as one message (exit status 1).
mc_error <- function(message) {
  structure(class = c("medclf_error", "error", "condition"), list(message = message, call = NULL))
}

# ---------------------------------------------------------------------------------------------
# Intervals for the summaries (issue 16) and calibration measures; the Python mirror is the
# second half of python/medclf/evaluate/metrics.py (parity to 1e-9: python/tests/parity/test_intervals_parity.py).
# ---------------------------------------------------------------------------------------------
MC_METHOD_BALANCED <- paste("mean of per-class recalls; MOVER-Wilson interval (Zou & Donner 2008) for a mean of",
                            "independent binomial proportions")
MC_METHOD_MACRO_AUC <- paste("macro mean of one-vs-rest AUCs over classes where defined (not Hand & Till);",
                             "DeLong covariance of the AUCs on the same images -> variance of their mean")
MC_METHOD_AP <- "step-wise sum over distinct thresholds (sklearn average_precision_score); logit interval (Boyd et al. 2013)"
MC_METHOD_BRIER <- "mean squared error of the probability; normal interval of a mean"
MC_METHOD_ECE <- "expected calibration error, 15 equal-width bins; percentile bootstrap (portable generator)"
MC_METHOD_ECE_TOP <- paste("top-label expected calibration error (confidence of the decided class vs correct), 15 equal-width",
                           "bins; percentile bootstrap (portable generator)")
MC_METHOD_SLOPE <- "logistic recalibration logit(P) = a + b logit(p): slope b, Wald interval"
MC_METHOD_INTERCEPT <- "calibration-in-the-large: logit(P) = a + logit(p) (offset): a, Wald interval"
MC_ECE_BINS <- 15
MC_ECE_BOOT_N <- 500
MC_ECE_BOOT_SEED <- 20240617
MC_LOGIT_CLIP <- 1e-12
MC_PM_MODULUS <- 2147483647
MC_PM_MULTIPLIER <- 16807

mc_z <- function() stats::qnorm(1 - (1 - MC_CONF_LEVEL) / 2)

mc_wilson <- function(x, n) {
  z <- mc_z(); p <- x / n
  center <- (x + z * z / 2) / (n + z * z)
  half <- z * sqrt(n) / (n + z * z) * sqrt(p * (1 - p) + z * z / (4 * n))
  c(max(0, center - half), min(1, center + half))
}

# Mean of independent proportions x_c / n_c with the MOVER-Wilson interval.
mc_balanced_accuracy <- function(successes, totals, na_note) {
  if (length(totals) == 0 || any(totals == 0)) return(mc_value(NA, NA, NA, MC_METHOD_BALANCED, note = na_note))
  k <- length(totals)
  p <- successes / totals
  b <- vapply(seq_len(k), function(i) mc_wilson(successes[i], totals[i]), c(0, 0))
  est <- mean(p)
  lower <- est - sqrt(sum((p - b[1, ])^2)) / k
  upper <- est + sqrt(sum((b[2, ] - p)^2)) / k
  mc_value(est, max(0, lower), min(1, upper), MC_METHOD_BALANCED)
}

# DeLong placements by mid-ranks (Sun & Xu 2014), per image, scaled so that sums of products
# over images are DeLong (co)variances.
mc_delong_influence <- function(is_positive, scores) {
  m <- sum(is_positive); n <- sum(!is_positive)
  combined <- rank(scores)
  v10 <- (combined[is_positive] - rank(scores[is_positive])) / n
  v01 <- 1 - (combined[!is_positive] - rank(scores[!is_positive])) / m
  theta <- mean(v10)
  psi <- numeric(length(scores))
  psi[is_positive] <- (v10 - theta) / sqrt(m * (m - 1))
  psi[!is_positive] <- (v01 - theta) / sqrt(n * (n - 1))
  psi
}

mc_macro_auc_delong <- function(labels, probabilities) {
  k_all <- seq_len(ncol(probabilities)) - 1L
  defined <- k_all[vapply(k_all, function(k) sum(labels == k) > 0 && sum(labels != k) > 0, TRUE)]
  if (length(defined) == 0) return(mc_value(NA, NA, NA, MC_METHOD_MACRO_AUC, note = "undefined for every class"))
  aucs <- vapply(defined, function(k) mc_auc(labels == k, probabilities[, k + 1])$estimate, 0)
  est <- mean(aucs)
  if (any(vapply(defined, function(k) min(sum(labels == k), sum(labels != k)) < 2, TRUE)))
    return(mc_value(est, NA, NA, MC_METHOD_MACRO_AUC, note = "a class has fewer than 2 cases; DeLong interval undefined"))
  total <- numeric(length(labels))
  for (k in defined) total <- total + mc_delong_influence(labels == k, probabilities[, k + 1])
  sd <- sqrt(sum(total * total)) / length(defined)
  z <- mc_z()
  mc_value(est, min(1, max(0, est - z * sd)), min(1, max(0, est + z * sd)), MC_METHOD_MACRO_AUC)
}

mc_average_precision_logit <- function(is_positive, scores) {
  ap <- mc_average_precision(is_positive, scores)
  ap$method <- MC_METHOD_AP
  est <- ap$estimate
  if (is.na(est)) return(ap)
  if (est <= 0 || est >= 1) { ap$note <- "AP is 0 or 1: logit interval undefined"; return(ap) }
  eta <- log(est / (1 - est))
  half <- mc_z() / sqrt(sum(is_positive) * est * (1 - est))
  mc_value(est, 1 / (1 + exp(-(eta - half))), 1 / (1 + exp(-(eta + half))), MC_METHOD_AP)
}

# Mean of (p - y)^2 per image (a matrix's rows are summed: multi-class Brier), normal interval.
mc_brier <- function(outcome, probability) {
  err <- (probability - outcome)^2
  per_image <- if (is.matrix(err)) rowSums(err) else err
  n <- length(per_image)
  if (n == 0) return(mc_value(NA, NA, NA, MC_METHOD_BRIER, note = "0/0: no cases"))
  est <- mean(per_image)
  if (n < 2) return(mc_value(est, NA, NA, MC_METHOD_BRIER, note = "one case: interval undefined"))
  half <- mc_z() * sqrt(sum((per_image - est)^2) / (n - 1)) / sqrt(n)
  mc_value(est, max(0, est - half), est + half, MC_METHOD_BRIER)
}

mc_ece_estimate <- function(outcome, probability, bins = MC_ECE_BINS) {
  idx <- pmin(pmax(ceiling(probability * bins), 1), bins)
  gaps <- rowsum(as.numeric(outcome) - probability, idx, reorder = FALSE)  # per non-empty bin, in image order
  sum(abs(gaps)) / length(outcome)
}

# (a * b) mod m exactly in doubles for a, b < 2^31 (split b into 16-bit halves).
mc_mulmod <- function(a, b, m = MC_PM_MODULUS) {
  hi <- b %/% 65536; lo <- b %% 65536
  ((((a * hi) %% m) * 65536) %% m + (a * lo) %% m) %% m
}

mc_powmod <- function(base, exponent, m = MC_PM_MODULUS) {
  result <- 1; base <- base %% m
  while (exponent > 0) {
    if (exponent %% 2 == 1) result <- mc_mulmod(result, base, m)
    base <- mc_mulmod(base, base, m); exponent <- exponent %/% 2
  }
  result
}

# The Park-Miller draws of python's bootstrap_indices, 1-based: one row per resample.
mc_bootstrap_indices <- function(n, boot_n = MC_ECE_BOOT_N, seed = MC_ECE_BOOT_SEED) {
  jump <- mc_powmod(MC_PM_MULTIPLIER, n)
  x <- seed %% MC_PM_MODULUS
  if (x == 0) x <- 1
  starts <- numeric(boot_n)
  for (b in seq_len(boot_n)) { starts[b] <- x; x <- mc_mulmod(x, jump) }
  out <- matrix(0L, boot_n, n)
  state <- starts
  for (j in seq_len(n)) {
    state <- (state * MC_PM_MULTIPLIER) %% MC_PM_MODULUS
    out[, j] <- as.integer(floor(state / MC_PM_MODULUS * n)) + 1L
  }
  out
}

mc_ece <- function(outcome, probability, indices = NULL) {
  outcome <- as.numeric(outcome)
  if (length(outcome) == 0) return(mc_value(NA, NA, NA, MC_METHOD_ECE, note = "0/0: no cases"))
  est <- mc_ece_estimate(outcome, probability)
  if (is.null(indices)) indices <- mc_bootstrap_indices(length(outcome))
  draws <- apply(indices, 1, function(i) mc_ece_estimate(outcome[i], probability[i]))
  alpha <- (1 - MC_CONF_LEVEL) / 2
  q <- stats::quantile(draws, c(alpha, 1 - alpha), names = FALSE, type = 7)
  mc_value(est, q[1], q[2], MC_METHOD_ECE)
}

# Newton-Raphson for logit(P) = a + b x (slope) or a + x (offset), from 0, as
# python's _logistic_fit; NULL when it does not converge.
mc_logistic_fit <- function(y, x, slope, start = NULL) {
  design <- if (slope) cbind(1, x) else matrix(1, length(y), 1)
  offset <- if (slope) 0 else x
  beta <- if (is.null(start)) rep(0, ncol(design)) else as.numeric(start)
  info_of <- function(beta) {
    mu <- 1 / (1 + exp(-(as.vector(design %*% beta) + offset)))
    list(mu = mu, info = crossprod(design, design * (mu * (1 - mu))))
  }
  for (it in 1:100) {
    f <- info_of(beta)
    step <- tryCatch(solve(f$info, crossprod(design, y - f$mu)), error = function(e) NULL)
    if (is.null(step)) return(NULL)
    beta <- beta + as.vector(step)
    if (max(abs(step)) < 1e-10) return(list(beta = beta, cov = solve(info_of(beta)$info)))
  }
  NULL
}

mc_calibration_slope_intercept <- function(outcome, probability) {
  y <- as.numeric(outcome)
  p <- pmin(pmax(probability, MC_LOGIT_CLIP), 1 - MC_LOGIT_CLIP)
  x <- log(p / (1 - p))
  if (sum(y) == 0 || sum(y) == length(y)) {
    note <- "only one class present; calibration slope and intercept undefined"
    return(list(mc_value(NA, NA, NA, MC_METHOD_SLOPE, note = note), mc_value(NA, NA, NA, MC_METHOD_INTERCEPT, note = note)))
  }
  z <- mc_z()
  out <- list()
  for (slope in c(TRUE, FALSE)) {
    method <- if (slope) MC_METHOD_SLOPE else MC_METHOD_INTERCEPT
    separated <- slope && (min(x[y == 1]) > max(x[y == 0]) || max(x[y == 1]) < min(x[y == 0]))
    fit <- if (separated) NULL else mc_logistic_fit(y, x, slope)
    if (is.null(fit)) {
      out[[length(out) + 1]] <- mc_value(NA, NA, NA, method, note = "perfect separation or no convergence; undefined")
      next
    }
    i <- if (slope) 2 else 1
    se <- sqrt(fit$cov[i, i])
    out[[length(out) + 1]] <- mc_value(fit$beta[i], fit$beta[i] - z * se, fit$beta[i] + z * se, method)
  }
  out
}

mc_calibration_metrics <- function(outcome, probability, indices = NULL) {
  si <- mc_calibration_slope_intercept(outcome, probability)
  list(brier_score = mc_brier(as.numeric(outcome), probability), ece = mc_ece(outcome, probability, indices),
       calibration_slope = si[[1]], calibration_intercept = si[[2]])
}
