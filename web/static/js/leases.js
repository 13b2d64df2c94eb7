// Leases and events: active leases per GPU with capacity bars, and the event log with filters.

import {getJSON, iso, serverNow} from "./api.js";
import {h, replace, select, table} from "./dom.js";
import {effectiveState, stateBadges} from "./states.js";
import {dateTime, duration, num, parseTime, timeEl, utcOffset} from "./format.js";
import {EVENT_KINDS, live} from "./live.js";

const EVENT_RANGES = {"15m": ["15 min", 900], "1h": ["1 h", 3600], "24h": ["24 h", 86400],
                      "7d": ["7 d", 7 * 86400]};
const PAGE = 1000;
const MAX_EVENTS = 5000;
const SHOWN_EVENTS = 500;

/** One line saying what an event was about. */
export function describe(event) {
  const p = event.payload || {};
  switch (event.kind) {
    case "state_change":
      return `${p.from ?? "—"} → ${p.to} (${p.cause}; ${num(p.temperature_celsius)} °C, ` +
             `memory ${num(p.memory_percent, 1)} %)`;
    case "throttle": case "resume": case "critical":
      return `${p.effective_state ?? p.state ?? p.cause ?? ""} at ${num(p.temperature_celsius)} °C`;
    case "overheat":
      return `${p.temperature_celsius} °C, through ${p.threshold_celsius} °C`;
    case "lease_granted": case "lease_renewed": case "lease_released": case "lease_expired":
      return `${p.allocation_id}` + (p.memory_mb ? ` · ${num(p.memory_mb)} MiB` : "") +
             (p.owner ? ` · ${p.owner}` : "") +
             (p.expires_at ? ` · until ${dateTime(parseTime(p.expires_at))}` : "");
    case "lease_exceeded":
      return `${p.allocation_id}: processes ${(p.pids || []).join(", ") || "—"} use ` +
             `${num(p.used_mib)} MiB, ${num(p.reserved_mib)} MiB reserved` +
             (p.owner ? ` · ${p.owner}` : "");
    case "unleased_usage":
      return `${num(p.unleased_mib)} MiB used by processes no lease covers ` +
             `(pids ${(p.pids || []).join(", ")}) while leases hold ${num(p.leased_mb)} of ` +
             `${num(p.capacity_mb)} MiB`;
    case "config_changed":
      return Object.entries(p.changes || {})
        .map(([key, change]) => `${key}: ${change.old} → ${change.new}`).join(", ");
    case "process_started": case "process_exited":
      return `${p.name ?? "?"} (pid ${p.pid}, ${num(p.used_memory_mib)} MiB)`;
    default: {
      const text = JSON.stringify(p);
      return text.length > 160 ? `${text.slice(0, 157)}…` : text;
    }
  }
}

/** What a lease covers: its pids, Slurm job and container, in one cell. */
function covers(c) {
  if (!c) return "—";
  const parts = [];
  if (c.pids?.length) parts.push(`pid ${c.pids.join(", ")}`);
  if (c.slurm_job) parts.push(`job ${c.slurm_job}`);
  if (c.container) parts.push(`container ${c.container.slice(0, 12)}`);
  return parts.join(" · ") || "—";
}

/** What the lease's processes use now against what it (with its group) reserved. */
function use(u) {
  if (!u) return "—";
  const text = `${num(u.used_mib)} of ${num(u.reserved_mib)} MiB`;
  return u.exceeded ? h("span", {class: "chip warn lease-exceeded"}, `${text}: exceeded`)
    : h("span", {class: "lease-within"}, text);
}

/** Memory used by processes that no lease covers, when there is some. */
function unleased(accounting) {
  if (!accounting || !accounting.unleased_mib) return null;
  const text = `Processes no lease covers (pid ${accounting.unleased_pids.join(", ")}) use ` +
    `${num(accounting.unleased_mib)} MiB` +
    (accounting.unleased_usage ? `, while leases hold ${accounting.near_capacity_pct} % of ` +
      "the capacity or more." : ".");
  return h("p", {class: accounting.unleased_usage ? "unleased error" : "unleased hint"}, text);
}

/** A time of today as 03:14:05, of another day with its date. */
function shortTime(ms) {
  const today = dateTime(serverNow()).slice(0, 10);
  return timeEl(ms, {withDate: dateTime(ms).slice(0, 10) !== today});
}

class Capacity {
  constructor() {
    this.el = h("div", {class: "capacity"});
    this.leases = [];
    this.fetchedAt = 0;
    this.tick = setInterval(() => this.countdown(), 1000);
    this.loads = 0;
  }

  async load() {
    const token = ++this.loads;
    try {
      const answer = await getJSON("/api/gpu/memory/leases", {status: "active", limit: 1000});
      if (token !== this.loads) return;
      this.leases = answer.leases;
      this.fetchedAt = Date.now();
      this.render();
    } catch (error) {
      if (token === this.loads) replace(this.el, h("p", {class: "error"}, error.message));
    }
  }

  render() {
    const gpus = live.status?.gpus ?? [];
    const offset = utcOffset(serverNow());
    replace(this.el, gpus.map((gpu) => {
      const cap = gpu.memory;
      const mine = this.leases.filter((l) => l.gpu_id === gpu.gpu_id);
      const fill = h("span", {class: "fill lease"});
      const used = h("span", {class: "device-used"});
      if (cap) {
        fill.style.width = `${Math.min(100, cap.leased_mb / Math.max(1, cap.capacity_mb) * 100)}%`;
        used.style.left = `${Math.min(100, (cap.device_used_mb ?? 0) / Math.max(1, cap.capacity_mb) * 100)}%`;
      }
      const accounting = gpu.lease_accounting;
      const uses = new Map((accounting?.leases ?? []).map((u) => [u.allocation_id, u]));
      const rows = mine.map((l) => [l.allocation_id, l.owner ?? "—", num(l.memory_mb),
        covers(l.covers), use(uses.get(l.allocation_id)),
        shortTime(parseTime(l.granted_at)), shortTime(parseTime(l.expires_at)),
        h("span", {class: "time-left", dataset: {expiresIn: l.expires_in_seconds}},
          duration(l.expires_in_seconds))]);
      return h("section", {class: "gpu-capacity", dataset: {gpu: gpu.gpu_id},
                           "aria-labelledby": `cap-${gpu.gpu_id}`},
        h("h3", {id: `cap-${gpu.gpu_id}`}, `GPU ${gpu.gpu_id} `,
          stateBadges(effectiveState(gpu), gpu.state)),
        cap ? h("p", {class: "cap-text"},
          `Leased ${num(cap.leased_mb)} of ${num(cap.capacity_mb)} MiB ` +
          `(${num(cap.leased_mb / Math.max(1, cap.capacity_mb) * 100, 1)} %) by ` +
          `${cap.active_leases} lease${cap.active_leases === 1 ? "" : "s"}; ` +
          `${num(cap.available_mb)} MiB available; the device itself uses ` +
          `${num(cap.device_used_mb)} MiB.`) : h("p", {}, "Lease capacity unknown."),
        unleased(accounting),
        h("div", {class: "bar capacity-bar", role: "img",
                  "aria-label": cap ? `${num(cap.leased_mb)} of ${num(cap.capacity_mb)} MiB leased`
                    : "capacity unknown"}, fill, used),
        table(["Allocation", "Owner", "MiB", "Covers", "Used", `Granted (${offset})`,
               "Expires", "Time left"],
              rows, {caption: `Active leases on GPU ${gpu.gpu_id}`,
                     empty: "No active leases."}));
    }));
    this.countdown();
  }

  countdown() {
    const elapsed = (Date.now() - this.fetchedAt) / 1000;
    for (const cell of this.el.querySelectorAll(".time-left")) {
      const left = Number(cell.dataset.expiresIn) - elapsed;
      cell.textContent = left > 0 ? duration(left) : "expired";
    }
  }

  destroy() {
    clearInterval(this.tick);
    this.loads += 1;
  }
}

class EventLog {
  constructor(params) {
    this.filters = {
      kind: params.query.get("kind") || "",
      gpu_id: params.query.get("gpu_id") || "",
      range: EVENT_RANGES[params.query.get("range")] ? params.query.get("range") : "1h",
    };
    this.events = [];
    this.loads = 0;
    this.note = h("p", {class: "chart-info", role: "status"});
    this.list = h("div", {});
    const gpus = live.status?.gpus?.map((g) => g.gpu_id) ?? [];
    this.el = h("section", {"aria-labelledby": "events-title"},
      h("h2", {id: "events-title"}, "Event log"),
      h("div", {class: "controls"},
        select("Kind", [["", "every kind"], ...EVENT_KINDS.map((k) => [k, k])], this.filters.kind,
               (v) => this.set("kind", v), "event-kind"),
        select("GPU", [["", "all GPUs"], ...gpus.map((g) => [g, `GPU ${g}`])],
               this.filters.gpu_id, (v) => this.set("gpu_id", v), "event-gpu"),
        select("Range", Object.entries(EVENT_RANGES).map(([k, [label]]) => [k, `last ${label}`]),
               this.filters.range, (v) => this.set("range", v), "event-range")),
      this.note, this.list);
  }

  set(key, value) {
    this.filters[key] = value;
    const query = new URLSearchParams(Object.entries(this.filters).filter(([, v]) => v !== ""));
    history.replaceState(null, "", `#/leases?${query}`);
    this.load();
  }

  matches(event) {
    const f = this.filters;
    return (!f.kind || event.kind === f.kind) &&
           (f.gpu_id === "" || String(event.gpu_id) === f.gpu_id);
  }

  async load() {
    const token = ++this.loads;
    const until = serverNow();
    const since = until - EVENT_RANGES[this.filters.range][1] * 1000;
    const params = {kind: this.filters.kind, gpu_id: this.filters.gpu_id, since: iso(since),
                    limit: PAGE};
    const found = [];
    let cursor = 0;
    this.note.textContent = "Loading…";
    try {
      while (found.length < MAX_EVENTS) {
        const page = await getJSON("/api/gpu/events", {...params, since_id: cursor});
        if (token !== this.loads) return;
        found.push(...page.events);
        cursor = page.last_id;
        if (page.count < PAGE) break;
      }
    } catch (error) {
      if (token === this.loads) this.note.textContent = `Could not load events: ${error.message}`;
      return;
    }
    this.truncated = found.length >= MAX_EVENTS;
    this.events = found.reverse();
    this.render();
  }

  receive(event) {
    if (!this.matches(event) || this.events.some((e) => e.id === event.id)) return;
    const at = this.events.findIndex((e) => e.id < event.id); // newest first, by id
    this.events.splice(at === -1 ? this.events.length : at, 0, event);
    this.render();
  }

  render() {
    const shown = this.events.slice(0, SHOWN_EVENTS);
    this.note.textContent = `${num(this.events.length)} event${this.events.length === 1 ? "" : "s"}` +
      ` in the last ${EVENT_RANGES[this.filters.range][0]}, newest first` +
      (this.truncated ? ` (the oldest ${num(MAX_EVENTS)} read; narrow the filters for more)` : "") +
      (shown.length < this.events.length ? `; the newest ${SHOWN_EVENTS} shown` : "") + ".";
    replace(this.list, table(
      ["#", `Time (${utcOffset(serverNow())})`, "Kind", "GPU", "What"],
      shown.map((e) => [String(e.id), timeEl(parseTime(e.timestamp)),
                        h("span", {class: `kind kind-${e.kind}`}, e.kind),
                        e.gpu_id === null ? "—" : `GPU ${e.gpu_id}`, describe(e)]),
      {caption: "Events", empty: "No events match."}));
  }
}

export function mount(root, params) {
  const capacity = new Capacity();
  const log = new EventLog(params);
  replace(root,
    h("h1", {}, "Leases and events"),
    h("section", {"aria-labelledby": "leases-title"},
      h("h2", {id: "leases-title"}, "Active leases"),
      h("p", {class: "hint"}, "The bar is the GPU's lease capacity (its memory less the reserve); ",
        "the filled part is leased, the dark tick is what the device really uses. ",
        "Used: what the processes a lease covers use now, against what it reserved."),
      capacity.el),
    log.el);
  capacity.load();
  log.load();
  const offStatus = live.on("status", () => capacity.render());
  const offEvent = live.on("event", (event) => {
    log.receive(event);
    if (event.kind.startsWith("lease_")) capacity.load();
  });
  return () => {
    offStatus();
    offEvent();
    capacity.destroy();
    log.loads += 1;
  };
}

export const title = "Leases and events";
