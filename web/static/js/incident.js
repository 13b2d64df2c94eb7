// The post-mortem of one incident: a summary written from the data, the timeline from the
// context before to the context after (temperature, thresholds, the card's slowdown point,
// power; memory; hardware reasons and leases as bands), the facts, and downloads.

import {getJSON} from "./api.js";
import {charts} from "./incident-chart.js";
import {badge, h, replace, table} from "./dom.js";
import {
  clock, dateTime, duration, num, parseTime, prose, reasonLabel, timeEl, utcOffset, withUnit,
} from "./format.js";
import {severityBadge} from "./incidents.js";
import {describe, whereLabel} from "./processes.js";

const POINTS = 600; // buckets of the timeline (min, mean and max of each: no peak is lost)

/** The summary paragraph, in the viewer's local time. */
export function summary(doc) {
  const th = doc.thresholds;
  const start = parseTime(doc.start);
  const end = parseTime(doc.end);
  const sentences = [];
  const when = end === null ? `since ${clock(start)}`
    : `from ${clock(start)} to ${clock(end)}`;
  sentences.push(`GPU ${doc.gpu_id} ${doc.ongoing ? "has been" : "was"} above ` +
    `${th.temp_throttle} °C for ${duration(doc.duration_seconds)}${doc.ongoing ? " so far" : ""} ` +
    `(${when} on ${dateTime(start).slice(0, 10)}, ${utcOffset(start)}), peaking at ` +
    `${doc.peak_temperature_celsius} °C at ${clock(parseTime(doc.peak_at))}` +
    (doc.mean_temperature_celsius !== null ? `; its mean was ${num(doc.mean_temperature_celsius, 1)} °C.`
      : "."));
  sentences.push(doc.severity === "severe"
    ? `It was severe: ${duration(doc.above_critical_seconds)} above ${th.temp_critical} °C.`
    : `It never went above ${th.temp_critical} °C (the severe mark).`);
  const card = doc.card || {};
  if (card.margin_to_slowdown_celsius !== null && card.margin_to_slowdown_celsius !== undefined) {
    const margin = card.margin_to_slowdown_celsius;
    sentences.push(margin > 0
      ? `The peak stayed ${margin} °C below the card's own slowdown temperature ` +
        `(${card.slowdown_temp_celsius} °C).`
      : margin === 0 ? `The peak reached the card's own slowdown temperature ` +
        `(${card.slowdown_temp_celsius} °C).`
        : `The peak was ${-margin} °C past the card's own slowdown temperature ` +
          `(${card.slowdown_temp_celsius} °C).`);
  }
  const reasons = doc.clock_event_reasons_seen.filter((r) => r.name !== "GpuIdle");
  sentences.push(reasons.length
    ? `The hardware reported ${prose(reasons.map((r) =>
        `${reasonLabel(r.name)} (${duration(r.seconds)})`))}.`
    : "The hardware reported no slowdown reasons.");
  const counters = Object.entries(doc.throttle_time_seconds || {})
    .filter(([, seconds]) => seconds);
  if (counters.length) {
    sentences.push(`NVML's counters add ${prose(counters.map(([name, seconds]) =>
      `${duration(seconds)} of ${name.replace("_", " ")} throttling`))}.`);
  }
  if (doc.power.peak_watts !== null) {
    sentences.push(`Power peaked at ${num(doc.power.peak_watts, 1)} W` +
      (doc.power.limit_watts ? ` of a ${num(doc.power.limit_watts)} W limit.` : "."));
  }
  sentences.push(doc.leases.length
    ? `Leases active: ${prose(doc.leases.map((l) =>
        `${l.allocation_id} (${l.owner ?? "no owner"}, ${num(l.memory_mb)} MiB)`))}.`
    : "Leases active: none.");
  if (doc.processes?.length) {
    // One clause per job, container, pod or unit: "job 4711 of alice (python, 20,480 MiB)".
    const clauses = new Map();
    for (const p of doc.processes) {
      const memory = p.used_memory_mb ? `${num(p.used_memory_mb)} MiB` : "";
      if (!clauses.has(describe(p))) clauses.set(describe(p), describe(p, memory));
    }
    sentences.push(`Running on the GPU: ${prose([...clauses.values()])}.`);
  }
  if (doc.xid_errors.length) {
    sentences.push(`XID errors: ${prose(doc.xid_errors.map((x) =>
      `${x.payload?.xid ?? x.payload?.code ?? "?"} at ${clock(parseTime(x.timestamp))}`))}.`);
  }
  return sentences.join(" ");
}

function facts(doc, history) {
  const item = (label, ...value) => h("div", {class: "fact"}, h("dt", {}, label), h("dd", {}, value));
  const margin = doc.card.margin_to_slowdown_celsius;
  return h("dl", {class: "facts"},
    item("Start", timeEl(parseTime(doc.start), {withOffset: true})),
    item("End", doc.ongoing ? "ongoing" : timeEl(parseTime(doc.end), {withOffset: true})),
    item("Duration", duration(doc.duration_seconds)),
    item("Peak", `${doc.peak_temperature_celsius} °C at `, timeEl(parseTime(doc.peak_at),
                                                                  {withDate: false})),
    item("Mean", withUnit(doc.mean_temperature_celsius, "°C", 1)),
    item(`Above ${doc.thresholds.temp_critical} °C`, duration(doc.above_critical_seconds)),
    item("Power", `peak ${withUnit(doc.power.peak_watts, "W", 1)}, mean ` +
                  `${withUnit(doc.power.mean_watts, "W", 1)}, limit ${withUnit(doc.power.limit_watts, "W")}`),
    item("Memory", `max ${withUnit(doc.memory.max_used_mb, "MiB")} of ` +
                   `${withUnit(doc.memory.total_mb, "MiB")}`),
    item("Card slowdown / shutdown", `${withUnit(doc.card.slowdown_temp_celsius, "°C")} / ` +
         `${withUnit(doc.card.shutdown_temp_celsius, "°C")}` +
         (margin === null || margin === undefined ? "" : ` (margin ${margin} °C)`)),
    item("Samples", `${num(doc.sample_count)} during it; ${num(doc.samples_total)} in the window`),
    item("Timeline", `${num(history.count)} buckets of ${duration(history.bucket_seconds)} ` +
         `(resolution ${history.resolution}): min, mean and max of each`));
}

function details(doc) {
  const leaseRows = doc.leases.map((l) => [l.allocation_id, l.owner ?? "—", num(l.memory_mb),
    timeEl(parseTime(l.granted_at)), timeEl(parseTime(l.released_at ?? l.expires_at)), l.status]);
  const reasonRows = doc.clock_event_reasons_seen.map((r) => [reasonLabel(r.name), num(r.samples),
                                                              duration(r.seconds)]);
  const transitionRows = doc.transitions.map((t) => [timeEl(parseTime(t.timestamp)),
    h("span", {}, badge(t.from || "—"), " → ", badge(t.to)), t.cause,
    withUnit(t.temperature_celsius, "°C")]);
  const processRows = (doc.processes || []).map((p) => [String(p.pid), p.name ?? "—",
    p.user ?? "—", whereLabel(p) ?? "—", withUnit(p.used_memory_mb, "MiB")]);
  const offset = utcOffset(parseTime(doc.start));
  return [
    h("h2", {}, "Leases active"),
    table(["Allocation", "Owner", "MiB", `Granted (${offset})`, "Ended or expires", "Status"],
          leaseRows, {caption: "Leases alive at any moment of the incident",
                      empty: "No leases were active."}),
    h("h2", {}, "Hardware clock-event reasons"),
    table(["Reason", "Samples", "Time"], reasonRows,
          {caption: "Reasons reported during the incident", empty: "None reported."}),
    h("h2", {}, "State transitions"),
    table([`Time (${offset})`, "Change", "Cause", "Temperature"], transitionRows,
          {caption: "Transitions in the window", empty: "None."}),
    doc.processes === null ? null : [
      h("h2", {}, "Processes"),
      table(["PID", "Name", "User", "Job / container", "Memory"], processRows,
            {caption: "Compute processes seen during it", empty: "None recorded."})],
  ];
}

export function mount(root, params) {
  const id = Number(params.path[1]);
  let built = [];
  let cancelled = false;
  replace(root, h("h1", {}, `Incident #${id}`), h("p", {role: "status"}, "Loading…"));
  // The post-mortem without its samples, then its window from the history API: a
  // bounded number of buckets whatever the incident's length (the CSV has every sample).
  getJSON(`/api/gpu/incidents/${id}`, {max_samples: 0}).then(async (doc) => {
    // By the incident's card (its UUID on its host), never "whatever is in the slot".
    const history = await getJSON("/api/gpu/metrics/history", {
      uuid: doc.uuid, host: doc.host, since: doc.window.since, until: doc.window.until,
      points: POINTS});
    if (cancelled) return;
    const mainEl = h("div", {class: "chart", id: "incident-timeline", role: "img",
                             "aria-label": `Timeline of incident ${id}: temperature and power`});
    const memoryEl = h("div", {class: "chart memory", id: "incident-memory", role: "img",
                               "aria-label": "Memory used over the same time"});
    const bandEl = h("div", {class: "chart band", id: "incident-bands", role: "img",
                             "aria-label": "Hardware reasons and leases over the same time"});
    replace(root,
      h("p", {class: "crumbs"}, h("a", {href: "#/incidents"}, "Incidents"), ` › #${doc.id}`),
      h("h1", {}, `Incident #${doc.id} · GPU ${doc.gpu_id} `, severityBadge(doc),
        doc.ongoing ? h("span", {class: "badge ongoing"}, "ongoing") : null),
      h("p", {class: "gpu-name"}, `${doc.name ?? ""} · ${doc.uuid} · ${doc.host}`),
      h("p", {class: "summary", id: "incident-summary"}, summary(doc)),
      h("p", {class: "downloads"},
        h("a", {href: `/api/gpu/incidents/${doc.id}/report.html`, class: "button-link",
                id: "download-report", download: `incident-${doc.id}.html`}, "Download report"),
        " one HTML file for a ticket (opens offline, prints to PDF) · Download: ",
        h("a", {href: `/api/gpu/incidents/${doc.id}`, download: `incident-${doc.id}.json`},
          "post-mortem (JSON)"), " · ",
        h("a", {href: `/api/gpu/incidents/${doc.id}/samples.csv`,
                download: `incident-${doc.id}.csv`}, "every sample (CSV)")),
      h("h2", {}, `Timeline: ${num(doc.context_minutes)} min before to after`),
      h("p", {class: "hint"}, "The incident is shaded. Lines: temp_throttle, temp_critical and ",
        "the card's own slowdown temperature. Marks on the time axis: state transitions. ",
        "Drag to zoom, double-click to zoom out."),
      mainEl, memoryEl, bandEl,
      facts(doc, history),
      details(doc));
    built = charts(doc, history, mainEl, bandEl, memoryEl);
  }).catch((error) => {
    if (cancelled) return;
    replace(root, h("h1", {}, `Incident #${id}`),
      h("p", {class: "error", role: "alert"},
        error.code === "incident_not_found" ? `There is no incident #${id}.`
          : `Could not load incident #${id}: ${error.message}`),
      h("p", {}, h("a", {href: "#/incidents"}, "All incidents")));
  });
  return () => {
    cancelled = true;
    for (const chart of built) chart?.destroy();
  };
}

export const title = "Incident";
