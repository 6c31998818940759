#!/usr/bin/env Rscript
# Report the performance of a model from its predictions file.
#
#   Rscript R/calc_model_performance.R PREDICTIONS.json [RESULTS.json] [options]
#
# Accepts medclf's predictions_<split>.json and the original four-key file of
# test_torchvision.py. Without RESULTS.json the results go to stdout. Bad input: one message on
# stderr and exit status 1. All computation is medclf_report_json() in report.R (shared with
# the Python `medclf report` command through rpy2).

mc_script_dir <- function() {
  file_arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  if (length(file_arg)) return(dirname(normalizePath(sub("^--file=", "", file_arg[1]))))
  for (i in rev(seq_len(sys.nframe()))) {
    f <- sys.frame(i)$ofile
    if (!is.null(f)) return(dirname(normalizePath(f)))
  }
  "R"
}
source(file.path(mc_script_dir(), "report.R"))

mc_cli_options <- function() {
  list(
    optparse::make_option("--positive", type = "character", default = NULL,
                          help = "name of the positive class [default: the file's positive_class; class 1 of a two-class file]"),
    optparse::make_option("--threshold", type = "double", default = NULL,
                          help = "fixed threshold on the positive-class probability [default: 0.5]"),
    optparse::make_option("--threshold-from", dest = "threshold_from", type = "character", default = NULL,
                          help = "validation predictions file on which --threshold-rule chooses the threshold"),
    optparse::make_option("--threshold-rule", dest = "threshold_rule", type = "character", default = NULL,
                          help = "youden | sensitivity:0.95 | specificity:0.9 (applied to --threshold-from, then used on the test file)"),
    optparse::make_option("--group", type = "character", default = NULL,
                          help = "clinical grouping of a multi-class model, e.g. malignant=mel,bcc,akiec"),
    optparse::make_option("--boot", type = "integer", default = 0L,
                          help = "number of bootstrap resamples for percentile intervals (0 = none) [default: %default]"),
    optparse::make_option("--seed", type = "integer", default = 1L, help = "bootstrap seed [default: %default]"),
    optparse::make_option("--clusters", type = "character", default = NULL,
                          help = paste("the group (patient, lesion) of each prediction, for intervals over groups: a",
                                       "splits.csv (path and group columns) or a JSON array of group names in file order")),
    optparse::make_option("--prevalence", type = "double", default = NULL,
                          help = paste("decision curve: the population's prevalence of the positive class where the test",
                                       "split's differs (an enriched or case-control test set) [default: the test split's]")),
    optparse::make_option("--legacy", action = "store_true", default = FALSE,
                          help = "write the original two-array form [[names], [Accuracy, Sensitivity, Specificity, ROC-AUC, Cohen's Kappa]]")
  )
}

main <- function(argv = commandArgs(trailingOnly = TRUE)) {
  parser <- optparse::OptionParser(
    usage = "Rscript %prog PREDICTIONS.json [RESULTS.json] [options]",
    option_list = mc_cli_options(),
    description = "Sensitivity, specificity, PPV, NPV, accuracy, F1, balanced accuracy (Clopper-Pearson), ROC-AUC (DeLong), average precision and Cohen's kappa of a predictions file.")
  fail <- function(message) {
    message("calc_model_performance.R: error: ", message)
    quit(save = "no", status = 1)
  }
  parsed <- tryCatch(optparse::parse_args(parser, args = argv, positional_arguments = c(1, 2)),
                     error = function(e) fail(conditionMessage(e)),
                     warning = function(w) fail(conditionMessage(w)))  # e.g. --threshold abc
  opt <- parsed$options
  files <- parsed$args
  group <- tryCatch(mc_parse_group(opt$group), medclf_error = function(e) fail(conditionMessage(e)))
  if (!is.null(opt$threshold_rule) && is.null(opt$threshold_from))
    fail("--threshold-rule needs --threshold-from VAL.json (validation predictions)")
  clusters <- if (is.null(opt$clusters)) NULL else
    tryCatch(mc_read_clusters(opt$clusters, files[1]), medclf_error = function(e) fail(conditionMessage(e)))
  request <- list(predictions_path = files[1], val_predictions_path = opt$threshold_from,
                  positive = opt$positive, threshold = opt$threshold, threshold_rule = opt$threshold_rule,
                  group = group, boot_n = opt$boot, seed = opt$seed, legacy = opt$legacy, clusters = clusters,
                  prevalence = opt$prevalence)
  request <- Filter(Negate(is.null), request)
  out <- medclf_report_json(mc_to_json(request))
  parsed_out <- jsonlite::fromJSON(out, simplifyVector = FALSE)
  if (!is.null(names(parsed_out)) && !is.null(parsed_out$error)) fail(parsed_out$error)
  if (length(files) == 2) {
    tryCatch(mc_write_text_atomic(out, files[2]), medclf_error = function(e) fail(conditionMessage(e)))
  } else {
    cat(out, "\n", sep = "")
  }
  invisible(0)
}

if (sys.nframe() == 0L) main()
