# Internal against external validation: the R half of python/medclf/evaluate/external.py (method
# in its docstring; `medclf compare RUN RUN/external_NAME`); the two agree to 1e-9
# (python/tests/parity/test_subgroups_parity.py). Needs metrics.R and subgroups.R.

MC_EXTERNAL_METHOD <- paste("difference of two independent AUCs (external - internal): SE = sqrt(SE_int^2 + SE_ext^2),",
                            "each from its interval (DeLong, or Obuchowski over groups); normal interval, two-sided p")

mc_external_auc_difference <- function(internal, external) {
  se <- list(mc_se_from_interval(internal), mc_se_from_interval(external))
  if (is.null(internal$estimate) || is.null(external$estimate) || is.na(internal$estimate) ||
      is.na(external$estimate) || any(vapply(se, is.null, TRUE)))
    return(list(difference = mc_value(NA, NA, NA, MC_EXTERNAL_METHOD, note = "an AUC or its interval is undefined"),
                z = NULL, p_value = NULL))
  d <- external$estimate - internal$estimate
  sd <- sqrt(se[[1]]^2 + se[[2]]^2)
  if (sd == 0)
    return(list(difference = mc_value(d, d, d, MC_EXTERNAL_METHOD, note = "both intervals have zero width"),
                z = NULL, p_value = NULL))
  list(difference = mc_value(d, d - mc_z() * sd, d + mc_z() * sd, MC_EXTERNAL_METHOD), z = d / sd,
       p_value = 2 * stats::pnorm(-abs(d / sd)))
}
