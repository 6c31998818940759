# medclf report: ONE entry point, medclf_report_json(request_json) -> results JSON string.
#
# Rscript (calc_model_performance.R) and Python (rpy2, python/medclf/evaluate/report.py) both call this
# function, so every line of the computation is shared. The request is a JSON object:
#   predictions_path | predictions   test predictions (file path, or the object inline)
#   val_predictions_path | val_predictions   validation predictions for a threshold rule
#   positive        name of the positive class (default: the file's positive_class)
#   threshold       fixed threshold on the positive-class probability (default 0.5)
#   threshold_rule  youden | sensitivity:T | specificity:T, chosen on the validation predictions
#   group           {"name": "malignant", "classes": ["mel", "bcc", "akiec"]}: binary report of
#                   the group (probability = sum of its classes' probabilities) versus the rest
#   boot_n, seed    percentile bootstrap intervals (resampling images) when boot_n > 0
#   clusters        the group (patient, lesion) of each prediction, in file order: when a group holds
#                   two images, intervals over groups (clustered.R) and a "clusters" record
#   legacy          TRUE: the original two-array output of calc_model_performance.R
# A user-fixable problem returns {"schema": "medclf.error/1", "error": "<message>"}.

mc_r_dir <- function() {
  for (i in rev(seq_len(sys.nframe()))) {
    f <- sys.frame(i)$ofile
    if (!is.null(f) && basename(f) == "report.R") return(dirname(normalizePath(f)))
  }
  dir <- Sys.getenv("MEDCLF_R_DIR", "")
  if (nzchar(dir)) return(dir)
  "R"
}
if (!exists("mc_binary_metrics", mode = "function") || !exists("mc_validate_predictions", mode = "function") ||
    !exists("mc_clustered_binary", mode = "function") || !exists("mc_decision_curve", mode = "function")) {
  for (.mc_file in c("metrics.R", "io.R", "clustered.R", "decision_curve.R")) sys.source(file.path(mc_r_dir(), .mc_file), envir = environment())
  rm(.mc_file)
}

MC_RESULTS_SCHEMA <- "medclf.results/1"
MC_OPTIMISTIC <- paste("the threshold was chosen on the same predictions it is scored on, so these estimates are",
                       "optimistic; choose it on validation predictions and score another split (e.g. test)")

mc_engine <- function() {
  list(name = "R", R = paste(R.version$major, R.version$minor, sep = "."),
       pROC = as.character(utils::packageVersion("pROC")),
       jsonlite = as.character(utils::packageVersion("jsonlite")))
}

mc_opt <- function(req, key, default = NULL) {
  v <- req[[key]]
  if (is.null(v) || (length(v) == 1 && is.na(v))) default else v
}

mc_load <- function(req, key) {
  inline <- mc_opt(req, key)
  path <- mc_opt(req, paste0(key, "_path"))
  if (!is.null(path)) return(mc_validate_predictions(mc_read_predictions_file(path), path))
  if (!is.null(inline)) return(mc_validate_predictions(inline, key))
  NULL
}

# The binary framing: which classes count as positive, under which name.
mc_framing <- function(data, positive, group) {
  classes <- data$classes
  if (!is.null(group)) {
    members <- unlist(group$classes)
    unknown <- setdiff(members, classes)
    if (is.null(group$name) || !length(members))
      mc_fail("group", "expected NAME=CLASS,CLASS (e.g. malignant=mel,bcc,akiec)")
    if (length(unknown))
      mc_fail(sprintf("group '%s'", group$name), sprintf("class '%s' is not one of the classes (%s)",
                                                        unknown[1], paste(classes, collapse = ", ")))
    if (length(members) == length(classes))
      mc_fail(sprintf("group '%s'", group$name), "contains every class; leave at least one class outside")
    return(list(positive = group$name, negative = paste("not", group$name), members = members,
                group = list(name = group$name, classes = I(members),  # I(): a JSON array even for one class
                             rule = "probability of the group = sum of its classes' probabilities")))
  }
  if (!is.null(positive) && !(positive %in% classes))
    mc_fail("positive class", sprintf("'%s' is not one of the classes (%s)", positive, paste(classes, collapse = ", ")))
  if (is.null(positive)) positive <- data$positive_class
  if (is.null(positive) && length(classes) == 2) {
    # The one convention that names a positive (no/yes -> yes), as in Python's splits.named_positive;
    # "the second class" would silently swap sensitivity and specificity (melanoma < other).
    if (!setequal(classes, c("no", "yes")))
      mc_fail("positive class", sprintf(paste0("binary study (%s vs %s) without a named positive class; ",
                                               "name it with --positive CLASS"), classes[1], classes[2]))
    positive <- "yes"
  }
  if (is.null(positive)) return(NULL)
  negative <- if (length(classes) == 2) setdiff(classes, positive) else paste("not", positive)
  list(positive = positive, negative = negative, members = positive, group = NULL)
}

# Truth and score of the positive side; the score adds member columns one at a time (the
# Python fallback does the same, so sums agree bit for bit).
mc_binary_view <- function(data, framing) {
  idx <- match(framing$members, data$classes)
  score <- data$probabilities[, idx[1]]
  if (length(idx) > 1) for (j in idx[-1]) score <- score + data$probabilities[, j]
  rest <- setdiff(seq_along(data$classes), idx)
  other <- data$probabilities[, rest[1]]
  if (length(rest) > 1) for (j in rest[-1]) other <- other + data$probabilities[, j]
  list(is_positive = (data$labels + 1L) %in% idx, score = score, other = other)
}

mc_cluster_codes <- function(req, n) {
  clusters <- mc_opt(req, "clusters")
  if (is.null(clusters)) return(NULL)
  if (length(clusters) != n) mc_fail("clusters", sprintf("%d group names for %d predictions", length(clusters), n))
  mc_group_codes(clusters)
}

mc_bootstrap <- function(n, boot_n, seed, statistic) {
  set.seed(seed)
  draws <- lapply(seq_len(boot_n), function(b) statistic(sample.int(n, n, replace = TRUE)))
  names_ <- names(draws[[1]])
  out <- list()
  for (nm in names_) {
    v <- vapply(draws, function(d) d[[nm]], 0)
    v <- v[!is.na(v)]
    out[[nm]] <- if (length(v)) list(lower = unname(stats::quantile(v, 0.025)), upper = unname(stats::quantile(v, 0.975)),
                                     n_defined = length(v))
                 else list(lower = NA, upper = NA, n_defined = 0L)
  }
  list(n = boot_n, seed = seed, method = "percentile bootstrap over images (stats::quantile type 7)", intervals = out)
}

mc_rank_auc <- function(is_positive, scores) {
  n_pos <- sum(is_positive); n_neg <- length(scores) - n_pos
  if (n_pos == 0 || n_neg == 0) return(NA_real_)
  (sum(rank(scores)[is_positive]) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
}

mc_binary_report <- function(req, data, framing) {
  view <- mc_binary_view(data, framing)
  threshold <- mc_opt(req, "threshold")
  rule <- mc_opt(req, "threshold_rule")
  selection <- NULL
  optimistic <- NULL
  if (!is.null(threshold) && !is.null(rule))
    mc_fail("options", "give either a threshold or a threshold rule, not both")
  if (!is.null(rule)) {
    val <- mc_load(req, "val_predictions")
    if (is.null(val))
      mc_fail("threshold rule", sprintf("'%s' needs validation predictions (--threshold-from predictions_val.json)", rule))
    if (!identical(val$classes, data$classes))
      mc_fail(val$source, sprintf("classes (%s) differ from the test predictions' classes (%s)",
                                  paste(val$classes, collapse = ", "), paste(data$classes, collapse = ", ")))
    val_view <- mc_binary_view(val, framing)
    selection <- mc_choose_threshold(val_view$is_positive, val_view$score, rule)
    selection$n_validation <- length(val_view$score)
    selection$source <- val$source
    threshold <- selection$threshold
    source <- paste0("validation:", rule)
    if (mc_same_predictions(val, data)) optimistic <- MC_OPTIMISTIC
  } else if (!is.null(threshold)) {
    if (!is.numeric(threshold) || threshold < 0 || threshold > 1)
      mc_fail("threshold", sprintf("%s is not a probability in [0, 1]", threshold))
    source <- "fixed"
  } else {
    threshold <- 0.5
    source <- "default"
  }
  b <- mc_binary_metrics(view$is_positive, view$score, threshold)
  two <- cbind(view$other, view$score)
  truth <- as.integer(view$is_positive)
  decided <- as.integer(view$score >= threshold)
  per_class <- mc_per_class(truth, decided, two, c(framing$negative, framing$positive))
  codes <- mc_cluster_codes(req, length(truth))
  counts <- mc_dc_resamples(truth, codes)  # shared by the intervals over groups and the curve's band
  if (mc_is_clustered(codes)) {
    b$metrics <- mc_clustered_binary(b$metrics, view$is_positive, view$score, threshold, codes, counts)
    per_class <- mc_clustered_per_class(per_class, truth, decided, two, codes, counts)
  }
  out <- list(schema = MC_RESULTS_SCHEMA, engine = mc_engine(), task = "binary",
              split = data$split, predictions = data$source, input_format = data$format,
              classes = data$classes, positive_class = framing$positive, negative_class = framing$negative,
              grouping = framing$group, threshold = threshold, threshold_source = source,
              threshold_selection = selection, threshold_optimistic = optimistic, decision_rule = "positive when probability >= threshold",
              n = length(truth), n_positive = sum(truth), n_negative = sum(1L - truth),
              confusion_matrix = b$confusion_matrix, metrics = b$metrics, per_class = per_class,
              macro = mc_macro(per_class),
              operating_points = mc_operating_points(view$is_positive, view$score),
              model = data$model)
  if (mc_is_clustered(codes)) out$clusters <- mc_cluster_summary(codes)
  prevalence <- mc_request_prevalence(req)  # checked before the curve, which returns early when a class is absent
  out["decision_curve"] <- list(mc_decision_curve(view$is_positive, view$score, codes, prevalence, counts))
  boot_n <- as.integer(mc_opt(req, "boot_n", 0))
  if (boot_n > 0) {
    y <- view$is_positive; s <- view$score
    out$bootstrap <- mc_bootstrap(length(s), boot_n, as.integer(mc_opt(req, "seed", 1)), function(i) {
      cm <- mc_confusion(y[i], s[i] >= threshold)
      m <- mc_count_metrics(cm)
      c(lapply(m, function(v) v$estimate), roc_auc = mc_rank_auc(y[i], s[i]),
        cohen_kappa = mc_kappa(matrix(c(cm$tn, cm$fn, cm$fp, cm$tp), 2))$estimate)
    })
  }
  out
}

# The request's population prevalence for decision curves (strictly between 0 and 1), or NULL.
mc_request_prevalence <- function(req) {
  prevalence <- mc_opt(req, "prevalence")
  if (!is.null(prevalence) && !(is.numeric(prevalence) && length(prevalence) == 1 && prevalence > 0 && prevalence < 1))
    mc_fail("prevalence", sprintf("%s is not a probability strictly between 0 and 1", format(prevalence)))
  prevalence
}

mc_multiclass_report <- function(req, data) {
  if (!is.null(mc_opt(req, "threshold")) || !is.null(mc_opt(req, "threshold_rule")))
    mc_fail("options", "a threshold needs a binary task: name --positive CLASS or --group NAME=CLASS,...")
  if (!is.null(mc_opt(req, "prevalence")))
    mc_fail("options", "a decision curve (--prevalence) needs a binary task: name --positive CLASS or --group NAME=CLASS,...")
  m <- mc_multiclass_metrics(data$labels, data$probabilities, data$classes)
  codes <- mc_cluster_codes(req, length(data$labels))
  if (mc_is_clustered(codes))
    m <- mc_clustered_multiclass(m, data$labels, data$probabilities, codes, mc_cluster_resample_counts(codes, data$labels))
  out <- list(schema = MC_RESULTS_SCHEMA, engine = mc_engine(), task = "multiclass",
              split = data$split, predictions = data$source, input_format = data$format,
              classes = data$classes, positive_class = NULL, threshold = NULL, threshold_source = "argmax",
              decision_rule = "class with the highest probability (first on ties)",
              n = length(data$labels), confusion_matrix = m$confusion_matrix, metrics = m$metrics,
              per_class = m$per_class, macro = m$macro, operating_points = list(), model = data$model)
  if (mc_is_clustered(codes)) out$clusters <- mc_cluster_summary(codes)
  boot_n <- as.integer(mc_opt(req, "boot_n", 0))
  if (boot_n > 0) {
    y <- data$labels; p <- data$probabilities; k <- length(data$classes)
    out$bootstrap <- mc_bootstrap(length(y), boot_n, as.integer(mc_opt(req, "seed", 1)), function(i) {
      decided <- max.col(p[i, , drop = FALSE], ties.method = "first") - 1L
      counts <- unclass(mc_confusion_table(y[i], decided, k))
      recalls <- diag(counts) / rowSums(counts)
      aucs <- vapply(seq_len(k), function(j) mc_rank_auc(y[i] == j - 1L, p[i, j]), 0)
      list(accuracy = sum(diag(counts)) / length(i), balanced_accuracy = mean(recalls[rowSums(counts) > 0]),
           cohen_kappa = mc_kappa(counts)$estimate,
           macro_auc = if (all(is.na(aucs))) NA_real_ else mean(aucs, na.rm = TRUE))
    })
  }
  out
}

mc_legacy <- function(result) {
  if (!identical(result$task, "binary"))
    mc_fail("--legacy", "the two-array output is binary only; name --positive CLASS or --group")
  m <- result$metrics
  list(c("Accuracy", "Sensitivity", "Specificity", "ROC-AUC", "Cohen's Kappa"),
       c(m$accuracy$estimate, m$sensitivity$estimate, m$specificity$estimate, m$roc_auc$estimate,
         m$cohen_kappa$estimate))
}

mc_report <- function(req) {
  data <- mc_load(req, "predictions")
  if (is.null(data)) mc_fail("request", "no predictions (predictions_path or predictions)")
  framing <- mc_framing(data, mc_opt(req, "positive"), mc_opt(req, "group"))
  result <- if (is.null(framing)) mc_multiclass_report(req, data) else mc_binary_report(req, data, framing)
  if (isTRUE(mc_opt(req, "legacy", FALSE))) mc_legacy(result) else result
}

medclf_report_json <- function(request_json) {
  result <- tryCatch({
    req <- jsonlite::fromJSON(request_json, simplifyVector = TRUE)
    mc_report(req)
  }, medclf_error = function(e) list(schema = "medclf.error/1", error = conditionMessage(e)))
  mc_to_json(result)
}
