// Fleet: one card per GPU — state, readings, hardware reasons, throttle advice and a
// 15-minute temperature sparkline — updated from the live feed.

import {getJSON, iso, serverNow} from "./api.js";
import {columns, COLORS, sparkline} from "./charts.js";
import {badge, h, replace} from "./dom.js";
import {effectiveState, STATE_RANK, stateBadges} from "./states.js";
import {clock, duration, num, parseTime, reasonLabel, SLOWDOWN_REASONS, withUnit} from "./format.js";
import {live} from "./live.js";
import {processItems} from "./processes.js";

const SPARK_SECONDS = 15 * 60;

/** The history page of a GPU: on another host than this server's, by host and UUID. */
const historyHref = (gpu) => (!gpu.host || gpu.host === live.status?.host
  ? `#/history/${gpu.gpu_id}`
  : `#/history/${gpu.gpu_id}?${new URLSearchParams({host: gpu.host, uuid: gpu.uuid})}`);

class Card {
  constructor(gpu) {
    this.gpuId = gpu.gpu_id;
    this.uuid = gpu.uuid; // the card in the slot now: the sparkline is its history
    this.host = gpu.host;
    this.spark = null;
    this.sparkData = [[], []];
    this.stateEventId = 0;
    const field = (label, key) => {
      const dd = h("dd", {dataset: {field: key}}, "—");
      this[key] = dd;
      return h("div", {class: "metric"}, h("dt", {}, label), dd);
    };
    this.badgeSlot = h("span", {class: "badge-slot"});
    this.name = h("p", {class: "gpu-name"});
    this.memoryFill = h("span", {class: "fill"});
    this.reasons = h("ul", {class: "chips", "aria-label": "hardware clock-event reasons"});
    this.advice = h("p", {class: "advice"});
    this.procs = h("ul", {class: "procs", "aria-label": "compute processes on this GPU"});
    this.updated = h("span", {class: "updated"});
    this.sparkRange = h("span", {class: "spark-range"});
    this.sparkEl = h("div", {class: "spark", role: "img",
                             "aria-label": `GPU ${gpu.gpu_id} temperature, last 15 minutes`});
    this.el = h("article", {class: "card", dataset: {gpu: gpu.gpu_id},
                            "aria-labelledby": `gpu-${gpu.gpu_id}-title`},
      h("header", {class: "card-head"},
        h("h2", {id: `gpu-${gpu.gpu_id}-title`}, `GPU ${gpu.gpu_id}`), this.badgeSlot),
      this.name,
      h("dl", {class: "metrics"},
        field("Temperature", "temperature"),
        field("Memory", "memory"),
        field("Load", "load"),
        field("Power", "power"),
        field("Clocks", "clocks"),
        field("Fan", "fan")),
      h("div", {class: "reasons"}, h("span", {class: "label"}, "Hardware reasons"), this.reasons),
      h("div", {class: "who"}, h("span", {class: "label"}, "Processes"), this.procs),
      this.advice,
      h("div", {class: "spark-wrap"},
        h("span", {class: "label"}, "Temperature, last 15 min "), this.sparkRange, this.sparkEl),
      h("footer", {class: "card-foot"},
        h("a", {href: historyHref(gpu)}, `History of GPU ${gpu.gpu_id}`),
        this.updated));
    this.memoryText = h("span", {}, "—");
    replace(this.memory, this.memoryText,
            h("span", {class: "bar", "aria-hidden": "true"}, this.memoryFill));
  }

  async loadSpark() {
    const until = serverNow();
    try {
      const answer = await getJSON("/api/gpu/metrics/history", {
        uuid: this.uuid, host: this.host, since: iso(until - SPARK_SECONDS * 1000),
        until: iso(until),
        points: 90,
      });
      const half = answer.bucket_seconds / 2;
      const data = columns(answer.buckets, (b) => parseTime(b.timestamp) / 1000 + half,
                           [(b) => b.temperature_avg], answer.bucket_seconds * 3);
      this.mergeSpark(data);
    } catch {
      this.sparkEl.dataset.state = "error";
    }
  }

  mergeSpark([xs, ys]) {
    const [oldX, oldY] = this.sparkData;
    const last = xs.length ? xs[xs.length - 1] : -Infinity;
    const keep = oldX.map((t, i) => [t, oldY[i]]).filter(([t]) => t > last);
    this.sparkData = [[...xs, ...keep.map(([t]) => t)], [...ys, ...keep.map(([, y]) => y)]];
    this.drawSpark();
  }

  pushSpark(t, value) {
    const [xs, ys] = this.sparkData;
    if (value === null || value === undefined) return;
    if (xs.length && t <= xs[xs.length - 1]) return;
    xs.push(t);
    ys.push(value);
    const cutoff = t - SPARK_SECONDS;
    while (xs.length > 2 && xs[0] < cutoff) {
      xs.shift();
      ys.shift();
    }
    this.drawSpark();
  }

  drawSpark() {
    if (!this.sparkData[0].length) return;
    const values = this.sparkData[1].filter((v) => v !== null);
    this.sparkRange.textContent = values.length
      ? `${num(Math.min(...values))}–${num(Math.max(...values))} °C` : "";
    if (this.spark) this.spark.setData(this.sparkData);
    else this.spark = sparkline(this.sparkEl, this.sparkData, {color: COLORS.temperature});
    this.sparkEl.dataset.points = String(this.sparkData[0].length); // drawn (tests, bench)
  }

  /** The badge shows the effective state (the one the advice follows), the raw state
   * beside it when they differ: never OPTIMAL next to "× 0 (CRITICAL)". */
  setState(effective, raw = effective) {
    this.effective = effective;
    replace(this.badgeSlot, stateBadges(effective, raw));
    this.el.dataset.state = effective;
    this.el.dataset.rawState = raw;
  }

  /** A state_change event: a worse raw state is the effective one at once; a better one
   * may be held by a cooldown, which the status poll that follows the event settles. */
  changeState(raw) {
    const held = STATE_RANK.indexOf(raw) < STATE_RANK.indexOf(this.effective) &&
      raw !== "UNAVAILABLE";
    this.setState(held ? this.effective : raw, raw);
  }

  update(gpu) {
    const m = gpu.metrics || {};
    this.setState(effectiveState(gpu), gpu.state);
    this.el.classList.toggle("unavailable", !gpu.available || gpu.state === "UNAVAILABLE");
    this.uuid = gpu.uuid;
    this.name.textContent = `${gpu.name || "unknown GPU"} · ${gpu.uuid}`;
    this.temperature.textContent = withUnit(m.temperature_celsius, "°C") +
      (m.memory_temperature_celsius !== null && m.memory_temperature_celsius !== undefined
        ? ` (memory ${m.memory_temperature_celsius} °C)` : "");
    this.memoryText.textContent = m.memory_used_mb === null || m.memory_used_mb === undefined ? "—"
      : `${num(m.memory_used_mb)} / ${num(m.memory_total_mb)} MiB (${num(m.memory_percent, 1)} %)`;
    this.memoryFill.style.width = `${Math.min(100, m.memory_percent || 0)}%`;
    this.load.textContent = withUnit(m.load_percent, "%");
    this.power.textContent = withUnit(m.power_watts, "W", 1) +
      (m.power_limit_watts ? ` of ${num(m.power_limit_watts)} W` : "");
    this.clocks.textContent = m.sm_clock_mhz === null || m.sm_clock_mhz === undefined ? "—"
      : `SM ${num(m.sm_clock_mhz)} · memory ${num(m.mem_clock_mhz)} MHz`;
    this.fan.textContent = m.fan_percent === null || m.fan_percent === undefined
      ? "not reported" : `${m.fan_percent} %`;
    const reasons = m.clock_event_reasons || [];
    replace(this.reasons, reasons.length
      ? reasons.map((name) => h("li", {class: SLOWDOWN_REASONS.has(name) ? "chip warn" : "chip"},
                                reasonLabel(name)))
      : h("li", {class: "chip none"}, "none"));
    replace(this.procs, processItems(gpu.processes));
    const t = gpu.throttling;
    const cooldown = t.cooldown_remaining_seconds > 0
      ? ` · ${duration(t.cooldown_remaining_seconds)} of cooldown left` : "";
    replace(this.advice,
      h("span", {class: "label"}, "Throttle advice"), " ",
      h("strong", {class: `multiplier ${t.should_throttle ? "slow" : "full"}`},
        `× ${num(t.speed_multiplier, 2)}`),
      ` (${t.effective_state})${cooldown}`, h("br"), h("span", {class: "reason"}, t.reason));
    const sampled = parseTime(gpu.timestamp);
    this.updated.textContent = sampled === null ? "no samples yet"
      : `sampled ${clock(sampled)} (${duration(gpu.sample_age_seconds ?? 0)} ago)`;
    if (sampled !== null) this.pushSpark(sampled / 1000, m.temperature_celsius);
  }

  destroy() {
    this.spark?.destroy();
  }
}

/** The cards of one host's GPUs: this server's host from the live feed (and its events),
 * another host (``host``) by polling its status. ``focusGpu``: scroll to that GPU's card. */
export function mount(root, params, {host = null, heading = true, focusGpu = null} = {}) {
  const grid = h("div", {class: "cards"});
  const emptyNote = h("p", {class: "empty", hidden: true}, "No GPUs have been sampled yet.");
  replace(root,
    heading ? h("h1", {}, "Fleet") : null,
    h("p", {class: "lede"}, "Every GPU on this host, as sampled now. States: ",
      ["OPTIMAL", "NORMAL", "THROTTLED", "CRITICAL", "UNAVAILABLE"].map((s) => [badge(s), " "]),
      "(the state the throttle advice follows; the raw state of the newest sample beside it ",
      "when it differs)"),
    emptyNote, grid);
  const cards = new Map();
  const own = host === null || host === live.status?.host;
  let focused = focusGpu === null;

  const render = (status) => {
    const seen = new Set();
    for (const gpu of status.gpus) {
      seen.add(gpu.gpu_id);
      let card = cards.get(gpu.gpu_id);
      if (!card) {
        card = new Card(gpu);
        cards.set(gpu.gpu_id, card);
        grid.append(card.el);
        card.loadSpark();
      }
      card.update(gpu);
    }
    for (const [id, card] of cards) {
      if (!seen.has(id)) {
        card.destroy();
        card.el.remove();
        cards.delete(id);
      }
    }
    emptyNote.hidden = status.gpus.length > 0;
    const target = focused ? null : cards.get(Number(focusGpu));
    if (target) {
      focused = true;
      target.el.classList.add("focused");
      target.el.scrollIntoView({block: "center"});
    }
  };

  if (!own) return pollHost(host, render, () => cards);
  if (live.status) render(live.status);
  const offStatus = live.on("status", render);
  const offEvent = live.on("event", (event) => {
    const card = cards.get(event.gpu_id);
    if (event.kind === "state_change" && card && event.id > card.stateEventId) {
      card.stateEventId = event.id; // events may arrive out of order (stream and list)
      card.changeState(event.payload.to);
    }
  });
  return () => {
    offStatus();
    offEvent();
    for (const card of cards.values()) card.destroy();
  };
}

/** Another host's cards: its status polled (the live feed and its events are this host's). */
function pollHost(host, render, cards) {
  let timer = null;
  let stopped = false;
  const poll = async () => {
    try {
      const status = await getJSON("/api/gpu/status/all", {host});
      if (!stopped) render(status);
    } catch {
      // the connection banner says so; try again at the next turn
    } finally {
      if (!stopped) timer = setTimeout(poll, live.intervalSeconds() * 1000);
    }
  };
  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
    for (const card of cards().values()) card.destroy();
  };
}

export const title = "Fleet";
