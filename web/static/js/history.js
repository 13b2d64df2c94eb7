// History: one GPU's temperature (and memory, load, power on demand) over a range, at the
// resolution the history API picks for it, with the state thresholds as bands and state
// transitions and lease grants marked on the time axis. Drag on the chart (or use the zoom
// buttons) to zoom in: the zoomed range is fetched again, at a finer resolution.

import {getJSON, iso, serverNow} from "./api.js";
import {
  COLORS, columns, linesPlugin, makeChart, markersPlugin, STATE_COLORS, timeAxis,
  valueAxis, zonesPlugin, temperatureSeries, temperatureZones,
} from "./charts.js";
import {badge, h, replace, select, table} from "./dom.js";
import {dateTime, duration, num, parseTime, timeEl, utcOffset} from "./format.js";
import {live} from "./live.js";

export const RANGES = {
  "15m": {label: "15 min", seconds: 15 * 60},
  "1h": {label: "1 h", seconds: 3600},
  "24h": {label: "24 h", seconds: 86400},
  "7d": {label: "7 d", seconds: 7 * 86400},
  "30d": {label: "30 d", seconds: 30 * 86400},
};
const OPTIONAL_SERIES = {memory: "Memory", load: "Load", power: "Power"};
const MIN_WINDOW_MS = 30_000;
const REFRESH_MS = 30_000;
const MARKER_LIMIT = 2000;

class HistoryView {
  constructor(root, params) {
    this.root = root;
    this.gpuId = Number(params.path[1] ?? 0);
    // Another host's GPU (from the fleet page): its history by host, its marks by card.
    this.host = params.query.get("host") || null;
    this.uuid = this.host ? params.query.get("uuid") || null : null;
    this.range = RANGES[params.query.get("range")] ? params.query.get("range") : "1h";
    this.series = new Set((params.query.get("series") || "").split(",")
      .filter((s) => s in OPTIONAL_SERIES));
    const since = Number(params.query.get("since"));
    const until = Number(params.query.get("until"));
    this.zoom = since && until && since < until ? {since, until} : null;
    this.chart = null;
    this.markers = [];
    this.config = null;
    this.loads = 0;
    this.timer = null;
    this.build();
  }

  build() {
    const gpus = (this.host ? null : live.status?.gpus?.map((g) => g.gpu_id)) ?? [this.gpuId];
    if (!gpus.includes(this.gpuId)) gpus.push(this.gpuId);
    this.presetButtons = Object.entries(RANGES).map(([key, range]) =>
      h("button", {type: "button", class: "preset", dataset: {range: key},
                   onclick: () => this.setRange(key)}, range.label));
    this.seriesBoxes = Object.entries(OPTIONAL_SERIES).map(([key, label]) =>
      h("label", {class: "check"},
        h("input", {type: "checkbox", value: key, checked: this.series.has(key),
                    onchange: (e) => this.toggleSeries(key, e.target.checked)}), ` ${label}`));
    this.info = h("p", {class: "chart-info", role: "status"});
    this.chartEl = h("div", {class: "chart", role: "img",
                             "aria-label": `GPU ${this.gpuId} temperature history`});
    this.marks = h("div", {class: "marks"});
    replace(this.root,
      h("h1", {}, `History of GPU ${this.gpuId}${this.host ? ` on ${this.host}` : ""}`),
      h("div", {class: "controls"},
        select("GPU", gpus.sort((a, b) => a - b).map((g) => [g, `GPU ${g}`]), this.gpuId,
               (value) => {
                 location.hash = `#/history/${value}?range=${this.range}` +
                   (this.host ? `&host=${encodeURIComponent(this.host)}` : "");
               },
               "history-gpu"),
        h("div", {class: "group", role: "group", "aria-label": "Range"},
          h("span", {class: "group-label"}, "Range"), this.presetButtons),
        h("div", {class: "group", role: "group", "aria-label": "Also show"},
          h("span", {class: "group-label"}, "Also show"), this.seriesBoxes),
        h("div", {class: "group", role: "group", "aria-label": "Zoom"},
          h("span", {class: "group-label"}, "Zoom"),
          h("button", {type: "button", onclick: () => this.zoomBy(0.5)}, "In"),
          h("button", {type: "button", onclick: () => this.zoomBy(2)}, "Out"),
          h("button", {type: "button", onclick: () => this.pan(-0.5)}, "Earlier"),
          h("button", {type: "button", onclick: () => this.pan(0.5)}, "Later"),
          h("button", {type: "button", class: "reset", onclick: () => this.resetZoom()},
            "Reset"))),
      this.info, this.chartEl,
      h("p", {class: "hint"}, "Drag across the chart to zoom in. Bands: the state thresholds ",
        "(NORMAL, THROTTLED, CRITICAL, and severe above temp_critical). Marks on the time axis: ",
        "state transitions (triangles, in the colour of the new state) and lease grants ",
        "(diamonds)."),
      this.marks);
    this.updateControls();
  }

  /** The GPU's status from the live feed (this server's host only). */
  ownGpu() {
    return this.host ? null : live.status?.gpus?.find((g) => g.gpu_id === this.gpuId);
  }

  window() {
    if (this.zoom) return this.zoom;
    const until = serverNow();
    return {since: until - RANGES[this.range].seconds * 1000, until};
  }

  saveHash() {
    const query = new URLSearchParams({range: this.range});
    if (this.host) query.set("host", this.host);
    if (this.uuid) query.set("uuid", this.uuid);
    if (this.series.size) query.set("series", [...this.series].join(","));
    if (this.zoom) {
      query.set("since", String(Math.round(this.zoom.since)));
      query.set("until", String(Math.round(this.zoom.until)));
    }
    history.replaceState(null, "", `#/history/${this.gpuId}?${query}`);
  }

  updateControls() {
    for (const button of this.presetButtons) {
      button.setAttribute("aria-pressed", String(!this.zoom && button.dataset.range === this.range));
    }
  }

  setRange(key) {
    this.range = key;
    this.zoom = null;
    this.changed();
  }

  toggleSeries(key, on) {
    if (on) this.series.add(key);
    else this.series.delete(key);
    this.changed();
  }

  zoomTo(since, until) {
    const now = serverNow();
    let from = Math.round(since);
    let to = Math.min(Math.round(until), now);
    if (to - from < MIN_WINDOW_MS) {
      const middle = (from + to) / 2;
      from = middle - MIN_WINDOW_MS / 2;
      to = middle + MIN_WINDOW_MS / 2;
    }
    this.zoom = {since: from, until: to};
    this.changed();
  }

  zoomBy(factor) {
    const {since, until} = this.window();
    const middle = (since + until) / 2;
    const half = (until - since) * factor / 2;
    this.zoomTo(middle - half, middle + half);
  }

  pan(fraction) {
    const {since, until} = this.window();
    const shift = (until - since) * fraction;
    this.zoomTo(since + shift, until + shift);
  }

  resetZoom() {
    this.zoom = null;
    this.changed();
  }

  changed() {
    this.saveHash();
    this.updateControls();
    this.load();
  }

  async load() {
    clearTimeout(this.timer);
    const token = ++this.loads;
    const {since, until} = this.window();
    const points = Math.max(120, Math.min(1000, Math.round((this.chartEl.clientWidth || 800) / 2)));
    const span = {gpu_id: this.gpuId, since: iso(since), until: iso(until)};
    this.info.textContent = "Loading…";
    try {
      const [config, answer] = await Promise.all([
        this.config ? Promise.resolve(this.config) : getJSON("/api/gpu/config"),
        getJSON("/api/gpu/metrics/history", {...span, host: this.host, points}),
      ]);
      if (token !== this.loads) return; // a newer request is on its way
      // The marks are asked for once the buckets are in: they never hold the chart up.
      // Events name a GPU by index on this server's host, or by card (UUID).
      const which = this.host ? {...span, gpu_id: null, uuid: this.uuid ?? answer.uuid} : span;
      const marks = Promise.all([
        getJSON("/api/gpu/events", {...which, kind: "state_change", limit: MARKER_LIMIT}),
        getJSON("/api/gpu/events", {...which, kind: "lease_granted", limit: MARKER_LIMIT}),
      ]);
      this.config = config;
      this.markers = [];
      this.draw(answer, since, until);
      this.describe(answer, since, until, null, null);
      try {
        const [changes, grants] = await marks;
        if (token !== this.loads) return;
        this.setMarks(changes.events, grants.events);
        this.describe(answer, since, until, changes.events, grants.events);
      } catch (error) {
        if (token === this.loads) this.info.append(` · marks unavailable: ${error.message}`);
      }
    } catch (error) {
      if (token !== this.loads) return;
      this.info.textContent = `Could not load the history: ${error.message}`;
    } finally {
      if (token === this.loads && !this.zoom) {
        this.timer = setTimeout(() => this.load(), REFRESH_MS);
      }
    }
  }

  setMarks(changes, grants) {
    this.markers = [
      ...changes.map((e) => ({t: parseTime(e.timestamp) / 1000, shape: "up",
                              color: STATE_COLORS[e.payload.to] || "#374151"})),
      ...grants.map((e) => ({t: parseTime(e.timestamp) / 1000, shape: "diamond",
                             color: COLORS.lease})),
    ];
    this.chart?.redraw(false, false);
    this.drawMarks(changes, grants);
  }

  describe(answer, since, until, changes, grants) {
    const cut = (list) => (list.length >= MARKER_LIMIT ? ` (first ${MARKER_LIMIT})` : "");
    replace(this.info,
      `${dateTime(since)} → ${dateTime(until)} (${utcOffset(until)}) · resolution `,
      h("strong", {}, answer.resolution), ` in ${duration(answer.bucket_seconds)} buckets · `,
      `${num(answer.buckets.length)} points · `,
      changes === null ? "marks loading"
        : `${changes.length} state transitions${cut(changes)} · ` +
          `${grants.length} lease grants${cut(grants)}`,
      this.zoom ? " · zoomed" : "");
  }

  draw(answer, since, until) {
    const config = this.config.config;
    const totalMb = this.ownGpu()?.metrics?.memory_total_mb ?? null;
    const half = answer.bucket_seconds / 2;
    const show = this.series;
    const accessors = [(b) => b.temperature_min, (b) => b.temperature_max,
                       (b) => b.temperature_avg];
    const series = temperatureSeries();
    const axes = [timeAxis(since), valueAxis("temp", "°C", 3)];
    if (show.has("memory")) {
      accessors.push((b) => (totalMb && b.memory_used_max_mb !== null
        ? Math.round(b.memory_used_max_mb / totalMb * 1000) / 10 : null));
      series.push({label: "Memory used %", scale: "pct", stroke: COLORS.memory, width: 1.5,
                   points: {show: false}});
    }
    if (show.has("load")) {
      accessors.push((b) => b.load_avg);
      series.push({label: "Load %", scale: "pct", stroke: COLORS.load, width: 1.5,
                   points: {show: false}});
    }
    if (show.has("memory") || show.has("load")) {
      axes.push(valueAxis("pct", "%", 1, {grid: false}));
    }
    if (show.has("power")) {
      accessors.push((b) => b.power_avg_watts);
      series.push({label: "Power W", scale: "watts", stroke: COLORS.power, width: 1.5,
                   points: {show: false}});
      axes.push(valueAxis("watts", "W", 1, {grid: false}));
    }
    const data = columns(answer.buckets, (b) => parseTime(b.timestamp) / 1000 + half,
                         accessors, answer.bucket_seconds * 2.5);
    const zones = temperatureZones(config);
    const status = this.ownGpu();
    const slowdown = status?.thresholds?.slowdown_temp_celsius ?? null;
    this.chart?.destroy();
    replace(this.chartEl);
    this.chart = makeChart(this.chartEl, {
      height: 380,
      series,
      axes,
      bands: [{series: [2, 1], fill: COLORS.temperatureRange}],
      scales: {
        x: {time: true, range: () => [since / 1000, until / 1000]},
        temp: {range: (u, min, max) => [
          Math.floor(Math.min(min ?? config.temp_optimal, config.temp_optimal - 10) - 2),
          Math.ceil(Math.max(max ?? config.temp_throttle, config.temp_throttle) + 4)]},
        pct: {range: [0, 100]},
        watts: {range: (u, min, max) => [0, Math.max(100, (max ?? 0) * 1.1)]},
      },
      cursor: {drag: {x: true, y: false, setScale: false}},
      hooks: {setSelect: [(u) => {
        if (u.select.width > 4) {
          const from = u.posToVal(u.select.left, "x") * 1000;
          const to = u.posToVal(u.select.left + u.select.width, "x") * 1000;
          u.setSelect({left: 0, top: 0, width: 0, height: 0}, false);
          this.zoomTo(from, to);
        }
      }]},
      plugins: [
        zonesPlugin(() => zones),
        linesPlugin(() => (slowdown === null ? [] : [
          {value: slowdown, label: `card slowdown ${slowdown} °C`, color: "#7f1d1d"}])),
        markersPlugin(() => this.markers),
      ],
    }, data);
    this.chartEl.dataset.points = String(answer.buckets.length);
    this.chartEl.dataset.resolution = answer.resolution;
  }

  drawMarks(changes, grants) {
    const rows = [...changes, ...grants]
      .sort((a, b) => a.id - b.id)
      .map((e) => [timeEl(parseTime(e.timestamp)),
                   e.kind === "state_change" ? h("span", {}, badge(e.payload.from || "—"), " → ",
                                                   badge(e.payload.to))
                     : `lease granted: ${e.payload.allocation_id ?? ""}`,
                   e.kind === "state_change"
                     ? `${e.payload.cause}, ${num(e.payload.temperature_celsius)} °C, ` +
                       `memory ${num(e.payload.memory_percent, 1)} %`
                     : `${num(e.payload.memory_mb)} MiB for ${e.payload.owner ?? "—"}`]);
    replace(this.marks,
      h("details", {},
        h("summary", {}, `Marks on the time axis (${rows.length})`),
        table([`Time (${utcOffset()})`, "What", "Detail"], rows,
              {caption: "State transitions and lease grants in this range"})));
  }

  destroy() {
    clearTimeout(this.timer);
    this.loads += 1;
    this.chart?.destroy();
  }
}

export function mount(root, params) {
  const view = new HistoryView(root, params);
  view.load();
  return () => view.destroy();
}

export const title = "History";
