// Time-series charts with uPlot: the shared options, and the plugins that draw what a GPU
// chart needs besides its lines — temperature zones, threshold lines, spans and markers.

import uPlot from "./uplot.js";
import {clock, dateTime, utcOffset} from "./format.js";

export const COLORS = {
  temperature: "#c2410c",
  temperatureRange: "rgba(194, 65, 12, 0.14)",
  memory: "#1d4ed8",
  load: "#15803d",
  power: "#7c3aed",
  lease: "#0e7490",
};

export const STATE_COLORS = {
  OPTIMAL: "#15803d", NORMAL: "#1d4ed8", THROTTLED: "#b45309", CRITICAL: "#b91c1c",
  UNAVAILABLE: "#6b7280",
};

const ZONE_FILLS = {
  NORMAL: "rgba(29, 78, 216, 0.05)",
  THROTTLED: "rgba(217, 119, 6, 0.10)",
  CRITICAL: "rgba(220, 38, 38, 0.12)",
  SEVERE: "rgba(153, 27, 27, 0.20)",
};

const AXIS_FONT = "12px system-ui, sans-serif";
const px = (u, value) => Math.round(value) + 0.5; // crisp 1-px lines on the canvas

/** Temperature zones of the state table, from a config: [low, high, name, fill]. */
export function temperatureZones(config) {
  return [
    [config.temp_optimal, config.temp_normal, "NORMAL"],
    [config.temp_normal, config.temp_throttle, "THROTTLED"],
    [config.temp_throttle, config.temp_critical, "CRITICAL"],
    [config.temp_critical, 1000, "SEVERE"],
  ].map(([low, high, name]) => ({low, high, name, fill: ZONE_FILLS[name]}));
}

/** Fills the temperature zones behind the series; labels each at its lower edge, on top. */
export function zonesPlugin(getZones, scale = "temp") {
  const visible = (u) => {
    const zones = getZones();
    if (!zones?.length || !u.scales[scale] || u.scales[scale].min === null) return [];
    const {top, height} = u.bbox;
    return zones.map((zone) => ({
      ...zone,
      yHigh: Math.max(top, u.valToPos(zone.high, scale, true)),
      yLow: Math.min(top + height, u.valToPos(zone.low, scale, true)),
    })).filter((z) => z.yLow > top && z.yHigh < top + height && z.yLow > z.yHigh);
  };
  return {hooks: {
    drawClear: [(u) => {
      for (const zone of visible(u)) {
        u.ctx.fillStyle = zone.fill;
        u.ctx.fillRect(u.bbox.left, zone.yHigh, u.bbox.width, zone.yLow - zone.yHigh);
      }
    }],
    draw: [(u) => {
      const {ctx} = u;
      const ratio = uPlot.pxRatio;
      ctx.save();
      ctx.font = `${11 * ratio}px system-ui, sans-serif`;
      ctx.textAlign = "left"; // uPlot leaves the last axis's alignment set
      ctx.textBaseline = "bottom";
      for (const zone of visible(u)) {
        if (zone.yLow - zone.yHigh <= 12 * ratio) continue;
        const text = `${zone.name} ≥ ${zone.low} °C`;
        const x = u.bbox.left + 6 * ratio;
        const y = zone.yLow - 2 * ratio;
        ctx.fillStyle = "rgba(255, 255, 255, 0.85)";
        ctx.fillRect(x - 2 * ratio, y - 12 * ratio, ctx.measureText(text).width + 4 * ratio,
                     12 * ratio);
        ctx.fillStyle = "rgba(55, 65, 81, 0.95)";
        ctx.fillText(text, x, y);
      }
      ctx.restore();
    }],
  }};
}

/** Dashed horizontal lines at values of a scale: [{value, label, color}]. */
export function linesPlugin(getLines, scale = "temp") {
  return {hooks: {draw: [(u) => {
    const lines = getLines();
    if (!lines?.length || u.scales[scale].min === null) return;
    const {ctx} = u;
    const {left, top, width, height} = u.bbox;
    ctx.save();
    ctx.setLineDash([6 * uPlot.pxRatio, 4 * uPlot.pxRatio]);
    ctx.lineWidth = 1.5 * uPlot.pxRatio;
    ctx.font = `${11 * uPlot.pxRatio}px system-ui, sans-serif`;
    ctx.textAlign = "right";
    ctx.textBaseline = "bottom";
    const placed = []; // labels drawn so far: [y, left edge]
    const sorted = lines.filter((l) => l.value !== null && l.value !== undefined)
      .sort((a, b) => b.value - a.value);
    for (const line of sorted) {
      const y = px(u, u.valToPos(line.value, scale, true));
      if (y < top || y > top + height) continue;
      ctx.strokeStyle = line.color;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + width, y);
      ctx.stroke();
      // Right-aligned above the line; moved left of any label it would overlap.
      let right = left + width - 4 * uPlot.pxRatio;
      for (const [otherY, otherLeft] of placed) {
        if (Math.abs(otherY - y) < 13 * uPlot.pxRatio) right = Math.min(right, otherLeft - 10 * uPlot.pxRatio);
      }
      const textWidth = ctx.measureText(line.label).width;
      ctx.fillStyle = "rgba(255, 255, 255, 0.85)";
      ctx.fillRect(right - textWidth - 2, y - 13 * uPlot.pxRatio, textWidth + 4, 11 * uPlot.pxRatio);
      ctx.fillStyle = line.color;
      ctx.fillText(line.label, right, y - 2 * uPlot.pxRatio);
      placed.push([y, right - textWidth]);
    }
    ctx.restore();
  }]}};
}

/** Shaded time spans behind the series: [{from, to, fill}] in epoch seconds. */
export function shadePlugin(getSpans) {
  return {hooks: {drawClear: [(u) => {
    const {ctx} = u;
    const {top, height} = u.bbox;
    for (const span of getSpans() || []) {
      const x0 = Math.max(u.bbox.left, u.valToPos(span.from, "x", true));
      const x1 = Math.min(u.bbox.left + u.bbox.width, u.valToPos(span.to, "x", true));
      if (x1 <= x0) continue;
      ctx.fillStyle = span.fill;
      ctx.fillRect(x0, top, x1 - x0, height);
    }
  }]}};
}

/** Markers on the time axis: a thin line across the plot and a triangle at its foot.
 *  [{t (epoch s), color, shape: "up" | "diamond"}]. */
export function markersPlugin(getMarkers) {
  return {hooks: {draw: [(u) => {
    const markers = getMarkers();
    if (!markers?.length) return;
    const {ctx} = u;
    const {left, top, width, height} = u.bbox;
    const size = 5 * uPlot.pxRatio;
    ctx.save();
    for (const marker of markers) {
      const x = px(u, u.valToPos(marker.t, "x", true));
      if (x < left || x > left + width) continue;
      ctx.strokeStyle = marker.color;
      ctx.globalAlpha = 0.35;
      ctx.lineWidth = uPlot.pxRatio;
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.globalAlpha = 1;
      ctx.fillStyle = marker.color;
      ctx.beginPath();
      const foot = top + height;
      if (marker.shape === "diamond") {
        ctx.moveTo(x, foot - 2 * size);
        ctx.lineTo(x + size, foot - size);
        ctx.lineTo(x, foot);
        ctx.lineTo(x - size, foot - size);
      } else {
        ctx.moveTo(x, foot - 1.6 * size);
        ctx.lineTo(x + size, foot);
        ctx.lineTo(x - size, foot);
      }
      ctx.closePath();
      ctx.fill();
    }
    ctx.restore();
  }]}};
}

const two = (n) => String(n).padStart(2, "0");

/** Tick labels in local 24-hour time, with the date under the first tick and at each new day. */
export function timeTicks(u, splits, axisIdx, space, increment) {
  let previousDay = null;
  return splits.map((ts) => {
    const d = new Date(ts * 1000);
    const day = `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}`;
    const hm = `${two(d.getHours())}:${two(d.getMinutes())}`;
    let text = increment >= 86400 ? day.slice(5) : increment >= 60 ? hm
      : `${hm}:${two(d.getSeconds())}`;
    if (increment < 86400 && day !== previousDay) text += `\n${day}`;
    previousDay = day;
    return text;
  });
}

/** The x axis in local time; the offset is in the axis label. */
export function timeAxis(startMs) {
  return {
    font: AXIS_FONT, stroke: "#374151", grid: {stroke: "#e5e7eb"}, values: timeTicks,
    label: `local time (${utcOffset(startMs)})`, labelSize: 18, labelFont: AXIS_FONT,
  };
}

export function valueAxis(scale, label, side = 3, {grid = true, values = null} = {}) {
  return {
    scale, label, side, font: AXIS_FONT, labelFont: AXIS_FONT, stroke: "#374151",
    grid: grid ? {stroke: "#e5e7eb"} : {show: false}, size: 52, labelSize: 18,
    ...(values ? {values} : {}),
  };
}

/** The legend's time value, in local time with the date when the range spans days. */
export const legendTime = (u, ts) => (ts === null ? "—" : dateTime(ts * 1000));
export const legendClock = (u, ts) => (ts === null ? "—" : clock(ts * 1000));

/** The series of a bucketed temperature chart: time, then min and max (faint), then the
 * mean (bold), in the order of the history API's temperature_min/max/avg columns. */
export function temperatureSeries() {
  const faint = {scale: "temp", stroke: "rgba(194, 65, 12, 0.35)", width: 1,
                 points: {show: false}};
  return [
    {value: legendTime},
    {label: "min °C", ...faint},
    {label: "max °C", ...faint},
    {label: "Temperature °C", scale: "temp", stroke: COLORS.temperature, width: 2,
     points: {show: false}},
  ];
}

/** Create a uPlot chart that follows its container's width. */
export function makeChart(el, options, data) {
  const width = Math.max(240, el.clientWidth || 600);
  const chart = new uPlot({...options, width}, data, el);
  const observer = new ResizeObserver(() => {
    const next = Math.max(240, el.clientWidth);
    if (Math.abs(next - chart.width) > 2) chart.setSize({width: next, height: chart.height});
  });
  observer.observe(el);
  const destroy = chart.destroy.bind(chart);
  chart.destroy = () => {
    observer.disconnect();
    destroy();
  };
  return chart;
}

/** A sparkline: one series, no axes, no legend, no cursor. */
export function sparkline(el, data, {color = COLORS.temperature, height = 44, range = null} = {}) {
  return makeChart(el, {
    height, legend: {show: false}, cursor: {show: false}, select: {show: false},
    axes: [{show: false}, {show: false}],
    scales: {x: {time: true}, y: {range: range || ((u, min, max) => {
      const middle = ((min ?? 0) + (max ?? 0)) / 2;
      const half = Math.max(6, ((max ?? 0) - (min ?? 0)) / 2 + 2);
      return [middle - half, middle + half];
    })}},
    series: [{}, {stroke: color, width: 1.5, fill: "rgba(194, 65, 12, 0.08)", points: {show: false}}],
    padding: [4, 2, 4, 2],
  }, data);
}

/** Arrays for uPlot from rows: x (epoch s) and a column per accessor; a gap longer than
 *  `gapSeconds` between rows becomes a null point, so the line breaks there. */
export function columns(rows, time, accessors, gapSeconds = Infinity) {
  const xs = [];
  const ys = accessors.map(() => []);
  let previous = null;
  for (const row of rows) {
    const t = time(row);
    if (previous !== null && t - previous > gapSeconds) {
      xs.push((previous + t) / 2);
      ys.forEach((column) => column.push(null));
    }
    xs.push(t);
    accessors.forEach((get, i) => ys[i].push(get(row)));
    previous = t;
  }
  return [xs, ...ys];
}
