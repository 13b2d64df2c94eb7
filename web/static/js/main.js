// The dashboard's shell: hash routes, the navigation, the banners and the live feed.

import {connection, serverNow} from "./api.js";
import {h, replace} from "./dom.js";
import {clock, duration, utcOffset, zoneName} from "./format.js";
import {live} from "./live.js";
import * as fleet from "./fleet-page.js";
import * as historyPage from "./history.js";
import * as incidents from "./incidents.js";
import * as incident from "./incident.js";
import * as leases from "./leases.js";

const ROUTES = [
  [/^\/?(fleet)?$/, fleet, "fleet"],
  [/^\/history(\/\d+)?$/, historyPage, "history"],
  [/^\/incidents$/, incidents, "incidents"],
  [/^\/incidents\/\d+$/, incident, "incidents"],
  [/^\/leases$/, leases, "leases"],
];

const main = document.getElementById("main");
const banners = document.getElementById("banners");
let unmount = null;

/** "#/history/1?range=24h" → {path: ["history", "1"], query: URLSearchParams}. */
function parseHash() {
  const text = location.hash.replace(/^#/, "");
  const [path, query = ""] = text.split("?");
  return {raw: path, path: path.split("/").filter(Boolean), query: new URLSearchParams(query)};
}

function route() {
  if (location.hash && !location.hash.startsWith("#/")) return; // an in-page anchor
  const params = parseHash();
  const found = ROUTES.find(([pattern]) => pattern.test(params.raw));
  unmount?.();
  unmount = null;
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    if (found && link.dataset.page === found[2]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!found) {
    replace(main, h("h1", {}, "Not found"),
      h("p", {}, "No such page. ", h("a", {href: "#/fleet"}, "Go to the fleet.")));
    document.title = "gpuhistory";
    return;
  }
  const [, page] = found;
  document.title = `${page.title} · gpuhistory`;
  unmount = page.mount(main, params) || null;
}

/** The banners: connection, database, simulated backend, unavailable GPUs, stale data. */
function renderBanners() {
  const list = [];
  const status = live.status;
  if (connection.state === "down") {
    list.push(["danger", "connection-lost",
      `Connection to the server lost at ${clock(connection.since + serverNow() - Date.now())}: ` +
      "retrying. " +
      "What is shown may be out of date."]);
  } else if (connection.state === "unavailable") {
    list.push(["danger", "database-unavailable",
      "The server cannot reach its database: readings are not being answered. Retrying."]);
  }
  const gpus = status?.gpus ?? [];
  const simulated = gpus.some((g) => g.backend === "sim") ||
    live.health?.backend?.name === "sim";
  if (simulated) {
    const detail = live.health?.backend?.detail;
    list.push(["info", "simulated",
      "Simulated backend: these readings replay a recorded trace, not hardware" +
      (detail ? ` (${detail}).` : ".")]);
  }
  const lost = gpus.filter((g) => !g.available || g.state === "UNAVAILABLE");
  if (lost.length) {
    list.push(["warning", "gpu-unavailable",
      `${lost.map((g) => `GPU ${g.gpu_id}`).join(", ")} ${lost.length === 1 ? "is" : "are"} ` +
      "unavailable (not detected, lost, or NVML failing)."]);
  }
  const health = live.health;
  const freshness = health?.freshness;
  if (connection.state === "up" && freshness?.stale) {
    const age = freshness.last_tick_age_seconds;
    const since = age == null ? "" : ` The last sample is ${duration(age)} old.`;
    list.push(["warning", "stale", freshness.reason === "monitoring_stopped"
      ? `Monitoring is stopped: the values shown are not current.${since}`
      : `The sampler has not sampled for more than ${duration(freshness.stale_after_seconds)} ` +
        `(it samples every ${duration(freshness.interval_seconds)}): it may have died or hang. ` +
        `The values shown are not current.${since}`]);
  }
  const others = (health?.reasons ?? []).filter((r) =>
    !r.startsWith("monitoring_stopped:") && !r.startsWith("sampler_stale:"));
  if (connection.state === "up" && health?.status === "degraded" && others.length) {
    list.push(["warning", "degraded", `Monitoring is degraded: ${others.join("; ")}.`]);
  }
  if (connection.state === "up" && status && gpus[0]?.monitoring?.monitoring === false &&
      !freshness?.stale) {
    list.push(["info", "monitoring-stopped",
      "Monitoring is stopped: no new samples are being taken."]);
  }
  replace(banners, list.map(([level, id, text]) =>
    h("div", {class: `banner banner-${level}`, id: `banner-${id}`,
              role: level === "danger" ? "alert" : "status"}, text)));
}

function renderMeta() {
  const host = document.getElementById("host");
  const mode = document.getElementById("live-mode");
  const zone = document.getElementById("zone");
  if (live.status) host.textContent = live.status.host;
  zone.textContent = `times: local, ${utcOffset()}${zoneName() ? ` (${zoneName()})` : ""}`;
  const labels = {stream: "live (event stream)", polling: "live (polling)",
                  offline: "offline", connecting: "connecting…"};
  mode.textContent = labels[live.mode] || live.mode;
  mode.dataset.mode = live.mode;
}

async function start() {
  window.addEventListener("hashchange", route);
  connection.addEventListener("change", () => {
    renderBanners();
    renderMeta();
  });
  live.on("status", () => {
    renderBanners();
    renderMeta();
  });
  live.on("mode", renderMeta);
  document.querySelector(".skip").addEventListener("click", (event) => {
    event.preventDefault();
    main.focus();
  });
  renderMeta();
  live.start();
  // Pages start with the GPUs known (or with the connection-lost banner up).
  await Promise.race([live.ready, new Promise((resolve) => setTimeout(resolve, 3000))]);
  route();
}

start();
