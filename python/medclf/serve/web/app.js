// medclf serve page: upload images to /api/predict and show each answer. No external resources.
"use strict";

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    // style through the CSSOM: the content security policy forbids inline style attributes
    if (key === "text") node.textContent = value; else if (key === "width") node.style.width = value;
    else node.setAttribute(key, value);
  }
  for (const child of children || []) node.appendChild(child);
  return node;
}

function fixed(x, digits) { return x === null || x === undefined ? "n/a" : Number(x).toFixed(digits); }

function metricText(name, m) {
  if (!m || m.estimate === null || m.estimate === undefined) return name + " not reported";
  const ci = m.lower === null || m.lower === undefined ? "" : " (95% CI " + fixed(m.lower, 3) + " to " + fixed(m.upper, 3) + ")";
  return name + " " + fixed(m.estimate, 3) + ci;
}

function probabilityTable(classes, probabilities, predicted) {
  const rows = classes.map((name, k) => el("tr", { class: name === predicted ? "top" : "" }, [
    el("td", { text: name }),
    el("td", { class: "p", text: fixed(probabilities[k], 4) }),
    el("td", {}, [el("span", { class: "bar", width: Math.round(probabilities[k] * 200) + "px" })]),
  ]));
  const head = el("tr", {}, [el("th", { text: "class" }), el("th", { text: "probability" }), el("th", {})]);
  return el("table", { class: "probabilities" }, [head, ...rows]);
}

function operatingPointText(op) {
  const side = op.at_or_above_threshold ? "at or above" : "below";
  const source = op.threshold_source.startsWith("validation:")
    ? "chosen on the validation split by the rule " + op.threshold_source.slice(11) : op.threshold_source;
  const members = op.classes.length > 1 || op.classes[0] !== op.name ? " = " + op.classes.join(" + ") : "";
  return "P(" + op.name + ")" + members + " = " + fixed(op.probability, 4) + ", " + side + " the threshold " +
    fixed(op.threshold, 4) + " (" + source + "). At this threshold on the " + op.split + " split (n = " + op.n +
    "): " + metricText("sensitivity", op.sensitivity) + ", " + metricText("specificity", op.specificity) +
    " [" + op.report + "].";
}

function metadataText(metadata) {
  // what the run's encoder made of each value: a value it could not place is read as missing
  const parts = Object.entries(metadata).map(([name, v]) => name + " " + v.read_as +
    (v.read_as === "missing" && v.value ? " (sent " + JSON.stringify(v.value) + ")" : ""));
  return "Metadata as the model read it: " + parts.join(", ") + ".";
}

function imageCard(entry, classes, heatmapNote) {
  const rejected = entry.quality.verdict !== "passed";
  const card = el("article", { class: "card" + (rejected ? " rejected" : "") }, [
    el("h2", { text: entry.name + " (" + entry.width + " x " + entry.height + ")" }),
    el("p", { class: "verdict-" + entry.quality.verdict, text: "Quality gate: " + entry.quality.verdict }),
  ]);
  if (rejected) {
    card.appendChild(el("ul", { class: "reasons" }, entry.quality.reasons.map((r) => el("li", { text: r }))));
    card.appendChild(el("p", { text: "No probabilities are shown for an image that failed the quality gate." }));
    return card;
  }
  const left = el("div", {}, [probabilityTable(classes, entry.probabilities, entry.predicted_class)]);
  if (entry.metadata) left.appendChild(el("p", { class: "metadata-used", text: metadataText(entry.metadata) }));
  if (entry.operating_point) left.appendChild(el("p", { class: "operating-point", text: operatingPointText(entry.operating_point) }));
  const right = el("div", {});
  if (entry.heatmap) {
    right.appendChild(el("img", { class: "heatmap", alt: "heat map of " + entry.name, src: entry.heatmap.overlay_png }));
    right.appendChild(el("p", { text: entry.heatmap.method + " map of class " + entry.heatmap.target_class }));
  } else if (heatmapNote) {
    right.appendChild(el("p", { text: heatmapNote }));
  }
  card.appendChild(el("div", { class: "cols" }, [left, right]));
  return card;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = false;
}

async function submitImages(event) {
  event.preventDefault();
  const files = document.getElementById("files").files;
  const results = document.getElementById("results");
  document.getElementById("error").hidden = true;
  results.replaceChildren();
  if (!files.length) { showError("Choose one or more images first."); return; }
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  // a metadata run's columns: one value for every image of this upload ("" = missing)
  for (const input of document.querySelectorAll("#metadata [name]")) form.append(input.name, input.value);
  document.getElementById("status").textContent = "Analysing " + files.length + " image(s)...";
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    const body = await response.json();
    document.getElementById("status").textContent = "";
    if (!response.ok) { showError("Error " + response.status + ": " + body.detail); return; }
    for (const entry of body.images) results.appendChild(imageCard(entry, body.classes, body.heatmap_note));
    document.getElementById("status").textContent = "Done: " + body.images.length + " image(s).";
  } catch (err) {
    document.getElementById("status").textContent = "";
    showError("The server did not answer: " + err);
  }
}

function metadataInput(column, k) {
  const id = "metadata-" + k;
  let input;
  if (column.kind === "numeric") {
    input = el("input", { type: "number", step: "any", id: id, name: column.name, placeholder: "empty = unknown" });
  } else {
    const options = [el("option", { value: "", text: "unknown" })];
    for (const category of column.categories) options.push(el("option", { value: category, text: category }));
    input = el("select", { id: id, name: column.name }, options);
  }
  return el("div", { class: "metadata-field" }, [el("label", { for: id, text: column.name }), input]);
}

function showMetadataInputs(columns) {
  // a run trained with --metadata-features needs its columns with every image; an image-only run gets none
  const box = document.getElementById("metadata");
  if (!columns || !columns.length) return;
  box.replaceChildren(el("legend", { text: "Metadata the model was trained with (leave unknown when not known; " +
    "the same values go with every image of this upload)" }), ...columns.map(metadataInput));
  box.hidden = false;
}

async function describeModel() {
  const response = await fetch("/api/model");
  const info = await response.json();
  const m = info.model;
  let text = "Model: " + (m.architecture || m.backend) + (m.run ? " from " + m.run : "") + ", " + info.classes.length +
    " classes (" + info.classes.join(", ") + "). Quality gate: " + info.quality_gate.source + ".";
  if (info.operating_point) text += " Operating point: " + info.operating_point.name + " from " + info.operating_point.report + ".";
  if (info.heatmap_note) text += " " + info.heatmap_note + ".";
  if (info.metadata && info.metadata.length) text += " Metadata: " + info.metadata.map((c) => c.name).join(", ") + ".";
  document.getElementById("model").textContent = text;
  showMetadataInputs(info.metadata);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("upload").addEventListener("submit", submitImages);
  describeModel().catch((err) => showError("Cannot read /api/model: " + err));
});
