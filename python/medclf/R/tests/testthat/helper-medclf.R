# caret (a cross-check) asks for the time zone; a fixed one avoids a timedatectl warning.
if (!nzchar(Sys.getenv("TZ"))) Sys.setenv(TZ = "UTC")
# Load the medclf R functions (report.R sources metrics.R and io.R) and locate the scripts.
medclf_r_dir <- normalizePath(file.path("..", ".."))
source(file.path(medclf_r_dir, "report.R"))
source(file.path(medclf_r_dir, "calc_model_performance.R"))  # main() is guarded by sys.nframe()
source(file.path(medclf_r_dir, "compare_models.R"))       # likewise guarded
fixture <- function(name) file.path(medclf_r_dir, "tests", "testthat", "fixtures", name)

# Run an R script with Rscript; returns list(status, stdout, stderr).
run_rscript <- function(script, args) {
  out <- tempfile(); err <- tempfile()
  status <- system2(file.path(R.home("bin"), "Rscript"), c("--vanilla", shQuote(file.path(medclf_r_dir, script)), shQuote(args)),
                    stdout = out, stderr = err)
  list(status = status, stdout = readLines(out, warn = FALSE), stderr = readLines(err, warn = FALSE))
}

write_text_file <- function(text) {
  path <- tempfile(fileext = ".json")
  writeLines(text, path)
  path
}

# A valid medclf predictions object for two classes, as a JSON string.
predictions_json <- function(labels, p_yes, classes = c("no", "yes"), positive = "yes") {
  probs <- lapply(p_yes, function(p) c(1 - p, p))
  as.character(jsonlite::toJSON(list(schema = "medclf.predictions/1", split = "test", classes = classes,
                                     positive_class = positive, labels = labels,
                                     predictions = as.integer(p_yes >= 0.5), probabilities = probs),
                                auto_unbox = TRUE, digits = NA))
}
