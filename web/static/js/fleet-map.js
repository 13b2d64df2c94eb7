// The fleet at a glance: a cell per GPU, grouped by host, coloured by effective state, so a
// thousand GPUs fit on one screen; sortable by temperature, memory, power and state age.
// Each cell links to the GPU's card (and from there its history). Below it, a row per host:
// GPUs, worst state, last tick, sampler version, leases.

import {h, replace, select, table} from "./dom.js";
import {duration, num} from "./format.js";
import {stateBadges, STATE_RANK} from "./states.js";

export const SORTS = {
  host: {label: "host and GPU index", value: (g) => g.temperature_celsius, text: "temperature"},
  temperature: {label: "temperature", value: (g) => g.temperature_celsius},
  memory: {label: "memory used", value: (g) => g.memory_percent},
  power: {label: "power", value: (g) => g.power_watts},
  state_age: {label: "state age", value: (g) => g.state_age_seconds},
};

/** "42s", "5m", "3h", "2d": a state age that fits in a cell. */
export function shortAge(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${Math.round(seconds)}s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)}h`;
  return `${Math.round(seconds / 86400)}d`;
}

function cellText(gpu, sort) {
  switch (sort === "host" ? "temperature" : sort) {
    case "memory": return gpu.memory_percent === null ? "—" : num(gpu.memory_percent);
    case "power": return gpu.power_watts === null ? "—" : num(gpu.power_watts);
    case "state_age": return shortAge(gpu.state_age_seconds);
    default: return gpu.temperature_celsius === null ? "—" : String(gpu.temperature_celsius);
  }
}

function cellTitle(host, gpu) {
  const state = gpu.state === gpu.effective_state ? gpu.effective_state
    : `${gpu.effective_state} (raw ${gpu.state})`;
  return [`${host.host} · GPU ${gpu.gpu_id}${gpu.name ? ` · ${gpu.name}` : ""}`,
    `${state}, × ${num(gpu.speed_multiplier, 2)}` +
      (gpu.cooldown_remaining_seconds > 0
        ? `, ${duration(gpu.cooldown_remaining_seconds)} of cooldown left` : ""),
    `temperature ${gpu.temperature_celsius ?? "—"} °C`,
    `memory ${num(gpu.memory_used_mb)} / ${num(gpu.memory_total_mb)} MiB` +
      (gpu.memory_percent === null ? "" : ` (${num(gpu.memory_percent, 1)} %)`),
    `power ${gpu.power_watts === null ? "—" : `${num(gpu.power_watts, 1)} W`}`,
    `in this state for ${duration(gpu.state_age_seconds)}`,
    `leased ${num(gpu.leased_mb)} of ${num(gpu.capacity_mb)} MiB`].join("\n");
}

/** Sort key: bigger first, unknown last; ties by index (host order: by name). */
function ordered(hosts, sort) {
  const key = SORTS[sort].value;
  const val = (g) => key(g) ?? -Infinity;
  const list = hosts.map((host) => ({host, gpus: [...(host.gpus || [])]}));
  if (sort === "host") return list;
  for (const item of list) item.gpus.sort((a, b) => val(b) - val(a) || a.gpu_id - b.gpu_id);
  const top = (item) => (item.gpus.length ? val(item.gpus[0]) : -Infinity);
  return list.sort((a, b) => top(b) - top(a) || (a.host.host < b.host.host ? -1 : 1));
}

export function hostStatus(host) {
  if (host.recorded) return h("span", {class: "host-tag recorded"}, "recorded");
  if (host.stale) {
    return h("span", {class: "host-tag stale", title: host.stale_reason},
      `stale: ${host.stale_reason.replaceAll("_", " ")}`);
  }
  return h("span", {class: "host-tag live"}, "live");
}

export const hostHref = (name, gpuId = null) =>
  `#/fleet?host=${encodeURIComponent(name)}${gpuId === null ? "" : `&gpu=${gpuId}`}`;

/** One row per host: what GET /api/fleet/hosts says of it. */
export function hostsTable(hosts) {
  return table(
    ["Host", "GPUs", "Worst state", "Last tick", "Sampler", "Leases (MiB)", "Status"],
    hosts.map((host) => [
      h("a", {href: hostHref(host.host)}, host.host),
      `${host.gpu_count}${host.available_gpus < host.gpu_count
        ? ` (${host.available_gpus} available)` : ""}`,
      host.worst_state ? stateBadges(host.worst_state, host.worst_raw_state) : "—",
      host.last_tick_age_seconds === null ? "never" : `${duration(host.last_tick_age_seconds)} ago`,
      host.sampler ? `${host.sampler.process} ${host.sampler.version ?? "(version unknown)"}`
        : "none",
      `${num(host.leases.used_mb)} / ${num(host.leases.capacity_mb)}` +
        (host.leases.active ? ` (${host.leases.active} leases)` : ""),
      hostStatus(host),
    ]),
    {caption: "Hosts", empty: "No hosts in the database yet."});
}

export class FleetMap {
  constructor(sort) {
    this.sort = SORTS[sort] ? sort : "host";
    this.onSort = null;
    this.grid = h("div", {class: "fleet-map", role: "list", "aria-label": "GPUs by host"});
    this.legend = h("p", {class: "fleet-legend"});
    this.hostsWrap = h("div", {class: "fleet-hosts"});
    // The page puts it beside the host selector (one toolbar row: the map keeps the screen).
    this.sortControl = select("Sort GPUs by", Object.entries(SORTS).map(([k, s]) => [k, s.label]),
      this.sort, (value) => { this.sort = value; this.onSort?.(value); this.draw(); },
      "fleet-sort");
    this.el = h("section", {class: "fleet-view", "aria-label": "Every GPU"},
      this.legend, this.grid, this.hostsWrap);
    this.answer = null;
  }

  update(answer) {
    this.answer = answer;
    this.draw();
  }

  draw() {
    const answer = this.answer;
    if (!answer) return;
    const counts = {};
    for (const host of answer.hosts) {
      for (const [state, n] of Object.entries(host.states)) counts[state] = (counts[state] || 0) + n;
    }
    const shown = this.sort === "host" ? "temperature (°C)" : {
      temperature: "temperature (°C)", memory: "memory used (%)", power: "power (W)",
      state_age: "time in the state"}[this.sort];
    replace(this.legend,
      `${answer.gpu_count} GPUs on ${answer.count} hosts` +
        (answer.stale_count ? `, ${answer.stale_count} stale` : "") + `. Cells show ${shown}: `,
      STATE_RANK.filter((s) => counts[s]).map((s) =>
        h("span", {class: `legend-item state-${s.toLowerCase()}`}, `${s} ${counts[s]}`)));
    const active = document.activeElement; // a focused cell keeps the focus across a redraw
    const focused = this.grid.contains(active) && active.classList.contains("gpu-cell")
      ? [active.closest(".fleet-host").dataset.host, active.dataset.gpu] : null;
    replace(this.grid, ordered(answer.hosts, this.sort).map(({host, gpus}) =>
      h("div", {class: `fleet-host${host.stale ? " stale" : ""}${host.recorded ? " recorded" : ""}`,
                role: "listitem", dataset: {host: host.host, stale: String(host.stale)}},
        h("a", {class: "fleet-host-name", href: hostHref(host.host),
                title: host.stale ? `${host.host}: stale (${host.stale_reason}), last tick ` +
                  `${duration(host.last_tick_age_seconds)} ago` : host.host},
          host.stale ? "⚠ " : "", host.host),
        h("span", {class: "fleet-cells"}, gpus.map((gpu) =>
          h("a", {class: `gpu-cell state-${gpu.effective_state.toLowerCase()}` +
                    (gpu.state !== gpu.effective_state ? " held" : ""),
                  href: hostHref(host.host, gpu.gpu_id), title: cellTitle(host, gpu),
                  "aria-label": `${host.host} GPU ${gpu.gpu_id}: ${gpu.effective_state}`,
                  dataset: {gpu: gpu.gpu_id, state: gpu.effective_state, rawState: gpu.state,
                            temperature: gpu.temperature_celsius ?? ""}},
            cellText(gpu, this.sort)))))));
    if (focused) {
      const [name, gpu] = focused;
      [...this.grid.querySelectorAll(`.gpu-cell[data-gpu="${gpu}"]`)]
        .find((c) => c.closest(".fleet-host").dataset.host === name)?.focus();
    }
    replace(this.hostsWrap, hostsTable(answer.hosts));
  }
}
