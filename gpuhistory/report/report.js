// The incident report's script (inlined into the report with the dashboard modules it
// imports): draws the post-mortem's charts with the dashboard's own code, from the data
// block of the file, and puts the viewer's local time beside every UTC time. It asks
// nothing of any server.

import {charts} from "./incident-chart.js";
import {dateTime, parseTime, utcOffset, zoneName} from "./format.js";

const data = JSON.parse(document.getElementById("report-data").textContent);
const doc = data.postmortem;

/** After each <time class="utc">, the same instant in the viewer's zone. */
function localTimes() {
  for (const el of document.querySelectorAll("time.utc")) {
    const ms = parseTime(el.dateTime);
    if (ms === null || Number.isNaN(ms)) continue;
    const local = document.createElement("span");
    local.className = "local";
    local.textContent = `${dateTime(ms)} ${utcOffset(ms)}`;
    el.after(local);
  }
  const zone = zoneName();
  const start = parseTime(doc.start);
  document.getElementById("local-zone").textContent =
    `Under each UTC time: the same time in this viewer's zone (${zone ? `${zone}, ` : ""}` +
    `${utcOffset(start)}), as the chart's axis shows it.`;
}

localTimes();
const chartEl = (id) => document.getElementById(id);
charts(doc, data.history, chartEl("incident-timeline"), chartEl("incident-bands"),
       chartEl("incident-memory"));
document.body.dataset.charts = "drawn";
