// The post-mortem's charts, drawn from a post-mortem document and the history API's buckets
// over its window: the timeline (temperature min/mean/max, thresholds, the card's slowdown
// point, power; the incident shaded, transitions marked), the memory used under it, and the
// bands below (hardware reasons and leases). The dashboard's incident page and the downloadable report
// (gpuhistory/report) both draw them with this module.

import uPlot from "./uplot.js";
import {
  COLORS, columns, legendTime, linesPlugin, makeChart, markersPlugin, shadePlugin,
  STATE_COLORS, temperatureSeries, timeAxis, valueAxis,
} from "./charts.js";
import {h, replace} from "./dom.js";
import {num, parseTime, reasonLabel} from "./format.js";

const REASON_COLORS = ["#b45309", "#b91c1c", "#7c3aed", "#0f766e", "#be185d", "#4d7c0f",
                       "#6b7280", "#1d4ed8", "#92400e"];
const AXIS_SIZE = 56;

/** Rows of the band chart: each hardware reason seen and each lease, on or off in each
 *  bucket (a row stays on to the next bucket, as the post-mortem counts seconds). */
function bandRows(doc, buckets, xs) {
  const rows = [];
  const names = [...new Set(buckets.flatMap((b) => b.clock_event_reasons))];
  names.forEach((name, i) => rows.push({
    label: reasonLabel(name), color: REASON_COLORS[i % REASON_COLORS.length],
    active: buckets.map((b) => b.clock_event_reasons.includes(name)),
  }));
  const windowEnd = parseTime(doc.window.until);
  for (const lease of doc.leases) {
    const from = parseTime(lease.granted_at) / 1000;
    const to = (parseTime(lease.released_at) ?? Math.min(parseTime(lease.expires_at), windowEnd))
      / 1000;
    rows.push({label: `lease ${lease.allocation_id} (${lease.owner ?? "no owner"}, ` +
                      `${num(lease.memory_mb)} MiB)`,
               color: COLORS.lease, active: xs.map((t) => t >= from && t < to)});
  }
  return rows.map((row, index) => ({
    ...row,
    values: row.active.map((on, j) => (on || (j > 0 && row.active[j - 1]) ? index : null)),
  }));
}

function rowLabels(rows) {
  return {hooks: {draw: [(u) => {
    const {ctx} = u;
    ctx.save();
    ctx.font = `${11 * uPlot.pxRatio}px system-ui, sans-serif`;
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    rows.forEach((row, index) => {
      const y = u.valToPos(index, "row", true) - 7 * uPlot.pxRatio;
      ctx.fillStyle = "#1f2937";
      ctx.fillText(row.label, u.bbox.left + 4 * uPlot.pxRatio, y);
    });
    ctx.restore();
  }]}};
}

/** Memory used (the largest of each bucket) against the card's total, on the same times;
 *  in GiB, so the axis stays as narrow as the others. */
function memoryChart(el, doc, history, {since, start, end, key}) {
  const half = history.bucket_seconds / 2;
  const gib = (mib) => (mib === null || mib === undefined ? null : mib / 1024);
  const data = columns(history.buckets, (b) => parseTime(b.timestamp) / 1000 + half,
                       [(b) => gib(b.memory_used_max_mb)],
                       Math.max(60, history.bucket_seconds * 2.5));
  const total = gib(doc.memory.total_mb);
  const top = Math.max(total ?? 0, ...data[1].filter((v) => v !== null), 1);
  return makeChart(el, {
    height: 150,
    series: [{value: legendTime},
             {label: "Memory used (max) GiB", scale: "gib", stroke: COLORS.memory, width: 1.5,
              fill: "rgba(29, 78, 216, 0.08)", points: {show: false},
              value: (u, v) => (v === null ? "—" : num(v, 1))}],
    axes: [{...timeAxis(since * 1000), label: null, labelSize: 0},
           {...valueAxis("gib", "GiB", 3), size: AXIS_SIZE},
           {scale: "gib", side: 1, size: AXIS_SIZE, label: "", labelSize: 18, values: () => [],
            grid: {show: false}, ticks: {show: false}}],
    scales: {x: {time: true}, gib: {range: [0, top * 1.08]}},
    cursor: {sync: {key}, drag: {x: false, y: false}},
    plugins: [
      shadePlugin(() => [{from: start, to: end, fill: "rgba(220, 38, 38, 0.10)"}]),
      linesPlugin(() => (total ? [{value: total, color: "#1e3a8a",
                                   label: `total ${num(doc.memory.total_mb)} MiB`}] : []),
                  "gib"),
    ],
  }, data);
}

/** Draw the timeline into mainEl, the memory used into memoryEl (when given) and the bands
 *  into bandEl; returns the charts. */
export function charts(doc, history, mainEl, bandEl, memoryEl = null) {
  const half = history.bucket_seconds / 2;
  const buckets = history.buckets;
  const xs = buckets.map((b) => parseTime(b.timestamp) / 1000 + half);
  const data = columns(buckets, (b) => parseTime(b.timestamp) / 1000 + half,
                       [(b) => b.temperature_min, (b) => b.temperature_max,
                        (b) => b.temperature_avg, (b) => b.power_max_watts],
                       Math.max(60, history.bucket_seconds * 2.5));
  const th = doc.thresholds;
  const slowdown = doc.card.slowdown_temp_celsius;
  const since = parseTime(doc.window.since) / 1000;
  const until = parseTime(doc.window.until) / 1000;
  const start = parseTime(doc.start) / 1000;
  const end = doc.end ? parseTime(doc.end) / 1000 : until;
  const sync = uPlot.sync(`incident-${doc.id}`);
  const lines = [
    {value: th.temp_throttle, label: `temp_throttle ${th.temp_throttle} °C`, color: "#b45309"},
    {value: th.temp_critical, label: `temp_critical ${th.temp_critical} °C`, color: "#b91c1c"},
    ...(slowdown === null ? [] : [{value: slowdown, label: `card slowdown ${slowdown} °C`,
                                  color: "#7f1d1d"}]),
  ];
  const markers = doc.transitions.map((t) => ({t: parseTime(t.timestamp) / 1000, shape: "up",
                                               color: STATE_COLORS[t.to] || "#374151"}));
  const temps = buckets.flatMap((b) => [b.temperature_min, b.temperature_max])
    .filter((t) => t !== null);
  const low = Math.min(...temps, th.temp_throttle - 10);
  const high = Math.max(...temps, th.temp_critical, slowdown ?? 0);
  let band = null;
  let memory = null;
  const main = makeChart(mainEl, {
    height: 340,
    series: [
      ...temperatureSeries(),
      {label: "Power (max) W", scale: "watts", stroke: COLORS.power, width: 1.25,
       points: {show: false}},
    ],
    bands: [{series: [2, 1], fill: COLORS.temperatureRange}],
    axes: [timeAxis(since * 1000), {...valueAxis("temp", "°C", 3), size: AXIS_SIZE},
           {...valueAxis("watts", "W", 1, {grid: false}), size: AXIS_SIZE}],
    scales: {
      x: {time: true, range: (u, min, max) => (min === null ? [since, until] : [min, max])},
      temp: {range: [Math.floor(low - 3), Math.ceil(high + 3)]},
      watts: {range: (u, min, max) => [0, Math.max(100, doc.power.limit_watts ?? 0,
                                                   (max ?? 0) * 1.1)]},
    },
    cursor: {sync: {key: sync.key}},
    hooks: {setScale: [(u, key) => {
      if (key !== "x") return;
      for (const follower of [memory, band]) {
        follower?.setScale("x", {min: u.scales.x.min, max: u.scales.x.max});
      }
    }]},
    plugins: [
      shadePlugin(() => [{from: start, to: end, fill: "rgba(220, 38, 38, 0.10)"}]),
      linesPlugin(() => lines),
      markersPlugin(() => markers),
    ],
  }, data);
  main.setScale("x", {min: since, max: until});
  if (memoryEl) {
    memory = memoryChart(memoryEl, doc, history, {since, start, end, key: sync.key});
    memory.setScale("x", {min: main.scales.x.min, max: main.scales.x.max});
    memoryEl.dataset.points = String(xs.length);
  }
  const rows = bandRows(doc, buckets, xs);
  if (rows.length) {
    band = makeChart(bandEl, {
      height: 34 * rows.length + 44,
      legend: {show: false},
      series: [{}, ...rows.map((row) => ({scale: "row", stroke: row.color, width: 10,
                                         points: {show: false}}))],
      // The side axes are empty but as wide as the main chart's, so the times line up.
      axes: [{...timeAxis(since * 1000), label: null, labelSize: 0},
             {scale: "row", size: AXIS_SIZE, label: "", labelSize: 18, values: () => [],
              grid: {show: false}, ticks: {show: false}},
             {scale: "row", side: 1, size: AXIS_SIZE, label: "", labelSize: 18,
              values: () => [], grid: {show: false}, ticks: {show: false}}],
      scales: {x: {time: true}, row: {range: [-0.6, rows.length - 0.2]}},
      cursor: {sync: {key: sync.key}, drag: {x: false, y: false}},
      plugins: [shadePlugin(() => [{from: start, to: end, fill: "rgba(220, 38, 38, 0.10)"}]),
                rowLabels(rows)],
    }, [xs, ...rows.map((row) => row.values)]);
    band.setScale("x", {min: main.scales.x.min, max: main.scales.x.max});
    bandEl.dataset.points = String(xs.length);
  } else {
    replace(bandEl, h("p", {class: "empty"}, "No hardware reasons and no leases in this window."));
  }
  mainEl.dataset.points = String(xs.length);
  return [main, memory, band];
}
