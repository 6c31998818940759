# Heterogeneity of the AUC across subgroups: the R half of python/medclf/evaluate/subgroups.py
# (`medclf report --by`; method in its docstring); the two agree to 1e-9
# (python/tests/parity/test_subgroups_parity.py). Needs metrics.R (mc_z).

MC_SUBGROUP_METHOD_Q <- paste("Cochran's Q on the subgroups' AUCs with inverse-variance weights (SE = interval",
                              "half-width / z: DeLong, or Obuchowski over groups); chi-square with k - 1 degrees of freedom")

# The standard error behind a normal interval estimate +- z SE, read on a side not truncated at 0 or 1.
mc_se_from_interval <- function(value) {
  est <- value$estimate; lower <- value$lower; upper <- value$upper
  if (is.null(est) || is.null(lower) || is.null(upper) || is.na(est) || is.na(lower) || is.na(upper)) return(NULL)
  sides <- c(if (lower > 0) (est - lower) / mc_z(), if (upper < 1) (upper - est) / mc_z())
  if (length(sides)) max(sides) else NULL
}

# Cochran's Q over the subgroups with a positive standard error; NULL with fewer than two.
mc_subgroup_heterogeneity <- function(estimates, standard_errors) {
  keep <- vapply(seq_along(estimates), function(i) !is.null(estimates[[i]]) && !is.null(standard_errors[[i]]) &&
                   !is.na(estimates[[i]]) && standard_errors[[i]] > 0, TRUE)
  if (sum(keep) < 2) return(NULL)
  values <- unlist(estimates[keep]); weights <- 1 / unlist(standard_errors[keep])^2
  pooled <- sum(weights * values) / sum(weights)
  q <- sum(weights * (values - pooled)^2)
  df <- sum(keep) - 1
  list(q = q, df = df, p = stats::pchisq(q, df, lower.tail = FALSE), pooled_auc = pooled, n_subgroups = sum(keep),
       method = MC_SUBGROUP_METHOD_Q)
}
