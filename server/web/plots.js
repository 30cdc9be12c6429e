// Leaderboard plots drawn with the vendored Vega-Lite (server/web/vendor). Every chart marks
// its series by shape or dash as well as colour, has a text description and a table-like
// caption, and names its data ("forest", "roc", "pvalues") so tests can read the values a
// chart holds through the embed's view API.

const palette = { scheme: "tableau10" };

function caption(figure, text) {
  const cap = document.createElement("figcaption");
  cap.textContent = text;
  figure.append(cap);
}

async function embed(figure, spec) {
  const target = document.createElement("div");
  target.className = "chart";
  figure.prepend(target);
  const result = await window.vegaEmbed(target, { $schema: "https://vega.github.io/schema/vega-lite/v5.json", width: "container", ...spec },
    { actions: false, renderer: "svg" });
  return result.view;
}

/** Every entry's primary value with its confidence interval, best first. */
export async function plotForest(figure, board) {
  const rows = board.entries.filter((e) => e.value !== null).map((e) => ({
    team: e.team, submission: e.submission_id, value: e.value,
    lower: e.ci[0] ?? e.value, upper: e.ci[1] ?? e.value, rank: e.rank === null ? "unranked" : String(e.rank),
  }));
  caption(figure, `Forest plot: ${board.primary_metric} of every entry with its 95% confidence interval (bars).`);
  return embed(figure, {
    description: `Forest plot of ${board.primary_metric} with 95% confidence intervals for ${rows.length} entries`,
    height: Math.max(60, 28 * rows.length),
    datasets: { forest: rows },
    data: { name: "forest" },
    encoding: { y: { field: "team", type: "nominal", sort: null, title: "team" } },
    layer: [
      { mark: { type: "rule", strokeWidth: 2 }, encoding: {
        x: { field: "lower", type: "quantitative", title: board.primary_metric, scale: { zero: false }, axis: { tickCount: 5, labelOverlap: true } }, x2: { field: "upper" } } },
      { mark: { type: "point", filled: true, size: 80, shape: "diamond" }, encoding: {
        x: { field: "value", type: "quantitative" },
        tooltip: [{ field: "team" }, { field: "rank" }, { field: "value", format: ".3f" }, { field: "lower", format: ".3f" }, { field: "upper", format: ".3f" }] } },
    ],
  });
}

/** ROC curves of the top `top` entries, each with its bootstrap band. */
export async function plotRoc(figure, stats, top) {
  const keys = stats.submissions.map(String).filter((k) => stats.roc[k]).slice(0, top);
  const team = Object.fromEntries(stats.submissions.map((s, i) => [String(s), stats.teams[i]]));
  const rows = keys.flatMap((k) => stats.roc[k].fpr.map((fpr, i) => ({
    team: team[k], submission: Number(k), fpr, tpr: stats.roc[k].tpr[i],
    lower: stats.roc[k].tpr_lower[i], upper: stats.roc[k].tpr_upper[i], order: i,
  })));
  caption(figure, `ROC curves (${stats.metric}) of the top ${keys.length} entries; shaded bands are 95% bootstrap intervals; line dash tells entries apart.`);
  const colour = { field: "team", type: "nominal", scale: palette, sort: null, legend: { symbolOpacity: 1 } };
  return embed(figure, {
    description: `ROC curves of the top ${keys.length} entries with confidence bands`,
    height: 300,
    datasets: { roc: rows },
    data: { name: "roc" },
    encoding: {
      x: { field: "fpr", type: "quantitative", title: "false positive rate", scale: { domain: [0, 1] } },
      color: colour,
    },
    layer: [
      { mark: { type: "area", opacity: 0.18 }, encoding: { y: { field: "lower", type: "quantitative" }, y2: { field: "upper" }, order: { field: "order" } } },
      { mark: { type: "line", strokeWidth: 2, interpolate: "step-after" }, encoding: {
        y: { field: "tpr", type: "quantitative", title: "true positive rate", scale: { domain: [0, 1] } },
        strokeDash: { field: "team", type: "nominal", sort: null, legend: { title: "team (dash)" } }, order: { field: "order" } } },
      { data: { values: [{ fpr: 0, tpr: 0 }, { fpr: 1, tpr: 1 }] }, mark: { type: "line", strokeDash: [2, 4], color: "#777" },
        encoding: { x: { field: "fpr", type: "quantitative" }, y: { field: "tpr", type: "quantitative" }, color: { value: "#777" } } },
    ],
  });
}

/** All-pairs DeLong p-values as a heat map; each cell prints its p-value (not colour alone). */
export async function plotPValues(figure, stats) {
  const rows = [];
  stats.p_values.forEach((row, i) => row.forEach((p, j) => {
    if (i !== j) rows.push({ a: stats.teams[i], b: stats.teams[j], p, label: p === null ? "–" : p < 0.001 ? "<.001" : p.toFixed(3), significant: p !== null && p < 0.05 ? "p < 0.05" : "n.s." });
  }));
  caption(figure, `DeLong test p-values between every pair of ranked entries (${stats.metric}); darker is more significant, cells with p < 0.05 are outlined and bold.`);
  const order = stats.teams;
  return embed(figure, {
    description: `Matrix of pairwise DeLong p-values for ${order.length} entries`,
    height: Math.max(120, 40 * order.length),
    datasets: { pvalues: rows },
    data: { name: "pvalues" },
    encoding: {
      x: { field: "b", type: "nominal", sort: order, title: null },
      y: { field: "a", type: "nominal", sort: order, title: null },
    },
    layer: [
      { mark: { type: "rect" }, encoding: {
        color: { field: "p", type: "quantitative", scale: { scheme: "blues", reverse: true, domain: [0, 1] }, title: "p-value" },
        stroke: { condition: { test: "datum.p < 0.05", value: "#000" }, value: null },
        tooltip: [{ field: "a" }, { field: "b" }, { field: "p", format: ".4f" }, { field: "significant" }] } },
      { mark: { type: "text", fontSize: 12 }, encoding: {
        text: { field: "label" },
        fontWeight: { condition: { test: "datum.p < 0.05", value: "bold" }, value: "normal" },
        color: { condition: { test: "datum.p < 0.3", value: "white" }, value: "black" } } },
    ],
  });
}
