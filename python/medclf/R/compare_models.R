#!/usr/bin/env Rscript
# Compare models scored on the same test images: paired DeLong test of their ROC-AUCs.
#
#   Rscript R/compare_models.R A.json B.json [C.json ...] [--out comparison.json]
#       [--positive CLASS | --group NAME=CLASS,...] [--threshold 0.5] [--names a,b,c]
#
# Runs are named by --names, else by the shortest path suffixes that tell the files apart. A file
# given twice (however spelled) is refused: a run is not compared with itself.
# Files are joined by image path (row order for the original four-key files, which have no
# paths); files whose images or labels differ are refused. Each run gets one row (AUC with
# DeLong interval, sensitivity/specificity/accuracy at the threshold); each pair gets the AUC
# difference with its DeLong interval, z and p-value (pROC::roc.test, paired = TRUE), plus a
# Holm-adjusted p-value when there are more than two runs. Multi-class files without a
# positive class are compared class by class (one-vs-rest). Output: medclf.comparison/1 JSON.
# Computation: medclf_compare_json(request_json), shared with Python through rpy2.

mc_compare_dir <- function() {
  for (i in rev(seq_len(sys.nframe()))) {
    f <- sys.frame(i)$ofile
    if (!is.null(f) && basename(f) == "compare_models.R") return(dirname(normalizePath(f)))
  }
  file_arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  if (length(file_arg)) return(dirname(normalizePath(sub("^--file=", "", file_arg[1]))))
  dir <- Sys.getenv("MEDCLF_R_DIR", "")
  if (nzchar(dir)) dir else "R"
}
if (!exists("mc_framing", mode = "function") || !exists("mc_validate_predictions", mode = "function"))
  source(file.path(mc_compare_dir(), "report.R"))

MC_COMPARISON_SCHEMA <- "medclf.comparison/1"

# Put every run in the first run's image order; refuse differing images, labels or classes.
mc_align_runs <- function(runs) {
  first <- runs[[1]]
  by_path <- all(vapply(runs, function(r) !is.null(r$data$paths), TRUE))
  for (r in runs[-1]) {
    d <- r$data
    if (!identical(d$classes, first$data$classes))
      mc_fail(d$source, sprintf("classes (%s) differ from %s (%s)", paste(d$classes, collapse = ", "),
                                first$data$source, paste(first$data$classes, collapse = ", ")))
  }
  if (by_path) {
    for (r in runs) {
      dup <- r$data$paths[duplicated(r$data$paths)]
      if (length(dup)) mc_fail(r$data$source, sprintf("paths: '%s' appears more than once; cannot join by path", dup[1]))
    }
  }
  for (j in seq_along(runs)[-1]) {
    d <- runs[[j]]$data
    if (by_path) {
      only_first <- setdiff(first$data$paths, d$paths); only_this <- setdiff(d$paths, first$data$paths)
      if (length(only_first) || length(only_this))
        mc_fail(d$source, sprintf("images differ from %s: %d only there, %d only here (e.g. '%s'); compare runs on the same test images",
                                  first$data$source, length(only_first), length(only_this), c(only_first, only_this)[1]))
      o <- match(first$data$paths, d$paths)
      d$labels <- d$labels[o]; d$probabilities <- d$probabilities[o, , drop = FALSE]; d$paths <- d$paths[o]
    } else if (length(d$labels) != length(first$data$labels)) {
      mc_fail(d$source, sprintf("has %d images but %s has %d; compare runs on the same test images",
                                length(d$labels), first$data$source, length(first$data$labels)))
    }
    differ <- which(d$labels != first$data$labels)
    if (length(differ))
      mc_fail(d$source, sprintf("labels differ from %s for %d image(s) (e.g. %s); compare runs on the same test set",
                                first$data$source, length(differ),
                                if (by_path) sprintf("'%s'", first$data$paths[differ[1]]) else sprintf("row %d", differ[1])))
    runs[[j]]$data <- d
  }
  list(runs = runs, joined_by = if (by_path) "paths" else "row order (no paths in the files)")
}

# Paired DeLong test of two score vectors on the same cases (pROC::roc.test).
mc_paired_delong <- function(is_positive, score_a, score_b) {
  method <- "paired DeLong (pROC::roc.test)"
  if (sum(is_positive) < 2 || sum(!is_positive) < 2)
    return(list(difference = mc_value(NA, NA, NA, method, note = "needs at least 2 cases of each class"),
                z = NA_real_, p_value = NA_real_))
  roc_of <- function(s) pROC::roc(response = factor(is_positive, levels = c(FALSE, TRUE)), predictor = s,
                                  levels = c(FALSE, TRUE), direction = "<", quiet = TRUE)
  ra <- roc_of(score_a); rb <- roc_of(score_b)
  t <- suppressWarnings(pROC::roc.test(ra, rb, method = "delong", paired = TRUE, conf.level = MC_CONF_LEVEL))
  d <- as.numeric(pROC::auc(ra)) - as.numeric(pROC::auc(rb))
  list(difference = mc_value(d, t$conf.int[1], t$conf.int[2], method),
       z = unname(as.numeric(t$statistic)), p_value = as.numeric(t$p.value))
}

# The shortest path suffixes (extension .json dropped) that tell the files apart:
# results/A/resnet18/p.json and results/B/resnet18/p.json -> "A/resnet18/p", "B/resnet18/p".
mc_path_labels <- function(paths) {
  parts <- lapply(normalizePath(paths, mustWork = FALSE), function(p) {
    s <- strsplit(p, "/", fixed = TRUE)[[1]]
    s <- s[nzchar(s)]
    s[length(s)] <- sub("\\.json$", "", s[length(s)])
    s
  })
  for (k in seq_len(max(lengths(parts)))) {
    labels <- vapply(parts, function(s) paste(utils::tail(s, k), collapse = "/"), "")
    if (!anyDuplicated(labels)) return(labels)
  }
  labels
}

# A run compared with itself (the same file, however spelled) is refused.
mc_refuse_same_file <- function(paths) {
  real <- normalizePath(paths, mustWork = FALSE)
  again <- which(duplicated(real))
  if (length(again))
    mc_fail(paths[again[1]], sprintf("is the same predictions file as %s; compare a run with another run, not with itself",
                                     paths[match(real[again[1]], real)]))
}

mc_compare <- function(req) {
  specs <- req$runs
  if (is.data.frame(specs)) specs <- lapply(seq_len(nrow(specs)), function(i) as.list(specs[i, , drop = FALSE]))
  if (length(specs) < 2) mc_fail("compare", "needs at least two prediction files")
  mc_refuse_same_file(vapply(specs, function(s) s$predictions_path, ""))
  runs <- lapply(specs, function(s) {
    path <- s$predictions_path
    list(name = if (is.null(s$name)) basename(path) else s$name,
         data = mc_validate_predictions(mc_read_predictions_file(path), path))
  })
  aligned <- mc_align_runs(runs)
  runs <- aligned$runs
  framing <- mc_framing(runs[[1]]$data, mc_opt(req, "positive"), mc_opt(req, "group"))
  threshold <- mc_opt(req, "threshold", 0.5)
  first <- runs[[1]]$data
  codes <- mc_cluster_codes(req, length(first$labels))
  grouped <- mc_is_clustered(codes)
  # Targets: one binary framing, or each class one-vs-rest for a multi-class comparison.
  targets <- if (!is.null(framing)) list(list(label = framing$positive, framing = framing))
             else lapply(first$classes, function(k) list(label = k, framing = list(positive = k, negative = paste("not", k),
                                                                                    members = k, group = NULL)))
  rows <- lapply(runs, function(r) {
    row <- list(name = r$name, predictions = r$data$source, model = r$data$model)
    if (!is.null(framing)) {
      v <- mc_binary_view(r$data, framing)
      b <- mc_binary_metrics(v$is_positive, v$score, threshold)
      if (grouped) b$metrics <- mc_clustered_binary(b$metrics, v$is_positive, v$score, threshold, codes,
                                                    mc_cluster_resample_counts(codes, as.integer(v$is_positive)))
      row$roc_auc <- b$metrics$roc_auc
      for (nm in c("sensitivity", "specificity", "accuracy", "cohen_kappa")) row[[nm]] <- b$metrics[[nm]]
    } else {
      m <- mc_multiclass_metrics(r$data$labels, r$data$probabilities, r$data$classes)
      if (grouped) m <- mc_clustered_multiclass(m, r$data$labels, r$data$probabilities, codes,
                                                mc_cluster_resample_counts(codes, r$data$labels))
      row$macro_auc <- m$metrics$macro_auc
      row$balanced_accuracy <- m$metrics$balanced_accuracy
      row$accuracy <- m$metrics$accuracy
      row$cohen_kappa <- m$metrics$cohen_kappa
      row$per_class_auc <- lapply(m$per_class, function(pc) pc$metrics$roc_auc)
    }
    row
  })
  pairs <- list()
  for (i in seq_along(runs)) for (j in seq_along(runs)) {
    if (j <= i) next
    for (t in targets) {
      va <- mc_binary_view(runs[[i]]$data, t$framing); vb <- mc_binary_view(runs[[j]]$data, t$framing)
      test <- mc_paired_delong(va$is_positive, va$score, vb$score)
      if (grouped) test <- mc_clustered_paired(va$is_positive, va$score, vb$score, codes, test)
      pairs[[length(pairs) + 1]] <- list(a = runs[[i]]$name, b = runs[[j]]$name, positive_class = t$label,
                                         auc_a = mc_auc(va$is_positive, va$score)$estimate,
                                         auc_b = mc_auc(vb$is_positive, vb$score)$estimate,
                                         difference = test$difference, z = test$z, p_value = test$p_value)
    }
  }
  p <- vapply(pairs, function(x) x$p_value, 0)
  holm <- rep(NA_real_, length(p))
  holm[!is.na(p)] <- stats::p.adjust(p[!is.na(p)], method = "holm")
  for (k in seq_along(pairs)) pairs[[k]]$p_holm <- holm[k]
  out <- list(schema = MC_COMPARISON_SCHEMA, engine = mc_engine(),
              task = if (is.null(framing)) "multiclass (one-vs-rest per class)" else "binary",
              positive_class = if (is.null(framing)) NULL else framing$positive,
              grouping = if (is.null(framing)) NULL else framing$group,
              threshold = if (is.null(framing)) NULL else threshold,
              n = length(first$labels), joined_by = aligned$joined_by,
              runs = rows, pairwise = pairs,
              p_adjust = "Holm over all pairwise tests in this file")
  if (grouped) out$clusters <- mc_cluster_summary(codes)
  out
}

medclf_compare_json <- function(request_json) {
  result <- tryCatch(mc_compare(jsonlite::fromJSON(request_json, simplifyVector = TRUE)),
                     medclf_error = function(e) list(schema = "medclf.error/1", error = conditionMessage(e)))
  mc_to_json(result)
}

main <- function(argv = commandArgs(trailingOnly = TRUE)) {
  options <- list(
    optparse::make_option("--out", type = "character", default = NULL, help = "write the comparison JSON here [default: stdout]"),
    optparse::make_option("--positive", type = "character", default = NULL, help = "positive class [default: the files' positive_class]"),
    optparse::make_option("--group", type = "character", default = NULL, help = "clinical grouping, e.g. malignant=mel,bcc,akiec"),
    optparse::make_option("--threshold", type = "double", default = NULL, help = "threshold for sensitivity/specificity [default: 0.5]"),
    optparse::make_option("--names", type = "character", default = NULL, help = "comma-separated run names [default: the shortest distinct path suffixes]"),
    optparse::make_option("--clusters", type = "character", default = NULL,
                          help = paste("the group (patient, lesion) of each image of the first file, for intervals and tests",
                                       "over groups: a splits.csv (path and group columns) or a JSON array of group names")))
  parser <- optparse::OptionParser(usage = "Rscript %prog A.json B.json [C.json ...] [options]", option_list = options,
                                   description = "Paired DeLong comparison of models scored on the same test images.")
  fail <- function(msg) {
    message("compare_models.R: error: ", msg)
    quit(save = "no", status = 1)
  }
  parsed <- tryCatch(optparse::parse_args(parser, args = argv, positional_arguments = c(2, Inf)),
                     error = function(e) fail(conditionMessage(e)),
                     warning = function(w) fail(conditionMessage(w)))  # e.g. --threshold abc
  opt <- parsed$options
  files <- parsed$args
  names_ <- if (is.null(opt$names)) mc_path_labels(files) else trimws(strsplit(opt$names, ",", fixed = TRUE)[[1]])
  if (length(names_) != length(files)) fail(sprintf("--names has %d names for %d files", length(names_), length(files)))
  group <- tryCatch(mc_parse_group(opt$group), medclf_error = function(e) fail(conditionMessage(e)))
  clusters <- if (is.null(opt$clusters)) NULL else
    tryCatch(mc_read_clusters(opt$clusters, files[1]), medclf_error = function(e) fail(conditionMessage(e)))
  request <- Filter(Negate(is.null), list(
    runs = lapply(seq_along(files), function(i) list(name = names_[i], predictions_path = files[i])),
    positive = opt$positive, group = group, threshold = opt$threshold, clusters = clusters))
  out <- medclf_compare_json(mc_to_json(request))
  parsed_out <- jsonlite::fromJSON(out, simplifyVector = FALSE)
  if (!is.null(parsed_out$error)) fail(parsed_out$error)
  if (is.null(opt$out)) cat(out, "\n", sep = "")
  else tryCatch(mc_write_text_atomic(out, opt$out), medclf_error = function(e) fail(conditionMessage(e)))
  invisible(0)
}

if (sys.nframe() == 0L) main()
