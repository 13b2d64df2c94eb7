// Incidents: overheat incidents, newest first, with severity, GPU, duration and peak.

import {getJSON} from "./api.js";
import {h, replace, select, table} from "./dom.js";
import {duration, num, parseTime, reasonLabel, timeEl, utcOffset} from "./format.js";
import {live} from "./live.js";

const REFRESH_MS = 15_000;

export function severityBadge(incident) {
  return h("span", {class: `badge severity-${incident.severity}`}, incident.severity);
}

export function mount(root, params) {
  const filters = {gpu_id: params.query.get("gpu_id") || "", severity: params.query.get("severity") || ""};
  const listEl = h("div", {class: "incident-list"});
  const note = h("p", {class: "chart-info", role: "status"});
  const gpus = live.status?.gpus?.map((g) => g.gpu_id) ?? [];
  let timer = null;
  let loads = 0;

  const saveHash = () => {
    const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v !== ""));
    history.replaceState(null, "", `#/incidents${query.size ? `?${query}` : ""}`);
  };

  let stopped = false;
  const load = async () => {
    clearTimeout(timer);
    if (stopped) return;
    const token = ++loads;
    try {
      const answer = await getJSON("/api/gpu/incidents", {...filters, limit: 500});
      if (token !== loads) return;
      render(answer.incidents);
    } catch (error) {
      if (token === loads) note.textContent = `Could not load incidents: ${error.message}`;
    } finally {
      if (token === loads) timer = setTimeout(load, REFRESH_MS);
    }
  };

  const render = (incidents) => {
    note.textContent = `${incidents.length} incident${incidents.length === 1 ? "" : "s"}, ` +
      "newest first. An incident is a stretch at or above temp_throttle; severe when above " +
      "temp_critical.";
    const rows = incidents.map((i) => [
      h("a", {href: `#/incidents/${i.id}`, "aria-label": `Incident ${i.id}, GPU ${i.gpu_id}`},
        `#${i.id}`),
      severityBadge(i),
      `GPU ${i.gpu_id}`,
      timeEl(parseTime(i.start)),
      i.ongoing ? h("span", {class: "ongoing"}, `${duration(i.duration_seconds)}, ongoing`)
        : duration(i.duration_seconds),
      h("span", {}, `${num(i.peak_temperature_celsius)} °C at `, timeEl(parseTime(i.peak_at),
                                                                       {withDate: false})),
      i.clock_event_reasons.map(reasonLabel).join(", ") || "none",
    ]);
    replace(listEl, table(["Incident", "Severity", "GPU", `Start (${utcOffset()})`, "Duration",
                           "Peak", "Hardware reasons"], rows,
                          {caption: "Overheat incidents", empty: "No incidents recorded."}));
  };

  replace(root,
    h("h1", {}, "Incidents"),
    h("div", {class: "controls"},
      select("GPU", [["", "all GPUs"], ...gpus.map((g) => [g, `GPU ${g}`])], filters.gpu_id,
             (v) => { filters.gpu_id = v; saveHash(); load(); }, "incident-gpu"),
      select("Severity", [["", "any"], ["overheat", "overheat"], ["severe", "severe"]],
             filters.severity, (v) => { filters.severity = v; saveHash(); load(); },
             "incident-severity")),
    note, listEl);
  load();
  const off = live.on("event", (event) => {
    if (event.kind === "overheat" || event.kind === "resume") setTimeout(load, 11_000);
  });
  return () => {
    stopped = true;
    off();
    clearTimeout(timer);
    loads += 1;
  };
}

export const title = "Incidents";
