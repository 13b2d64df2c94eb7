// Who is on a GPU: its running compute processes, as the status documents list them
// (largest first), one compact line each — user, where it runs, memory — for the cards.

import {h} from "./dom.js";
import {num} from "./format.js";

const SHOWN = 3; // lines per card; the rest are counted

/** Where a process runs, in a few characters: "job 4711.0", "pod 0f1d2c3b", "ctr 3f4a…". */
export function whereLabel(p) {
  if (p.slurm_job_id) return `job ${p.slurm_job_id}${p.slurm_step ? `.${p.slurm_step}` : ""}`;
  if (p.pod_uid) return `pod ${p.pod_uid.slice(0, 8)}`;
  if (p.container_id) return `ctr ${p.container_id.slice(0, 12)}`;
  return p.systemd_unit || null;
}

/**
 * One process as a sentence's clause: "job 4711 of alice", "python (pid 42) of bob"; with
 * a detail, "job 4711 of alice (python, 20,480 MiB)", "python (pid 42, 512 MiB) of bob".
 */
export function describe(p, detail = "") {
  const unit = p.systemd_unit || "";
  const of = p.user ? ` of ${p.user}` : "";
  const extra = detail ? `, ${detail}` : "";
  const owned = p.slurm_job_id ? `job ${p.slurm_job_id}`
    : p.pod_uid ? `pod ${p.pod_uid.slice(0, 8)}`
    : p.container_id ? `container ${p.container_id.slice(0, 12)}`
    : unit.endsWith(".service") ? unit : null;
  if (owned) return `${owned}${of}${detail ? ` (${p.name ?? `pid ${p.pid}`}${extra})` : ""}`;
  return `${p.name ?? "a process"} (pid ${p.pid}${extra})${of}`;
}

/** The card's list items: "alice · job 4711.0 · python · 20,480 MiB" per process. */
export function processItems(processes) {
  const list = processes || [];
  if (!list.length) return [h("li", {class: "proc none"}, "no compute processes")];
  const items = list.slice(0, SHOWN).map((p) => {
    const where = whereLabel(p);
    return h("li", {class: "proc", dataset: {pid: p.pid},
                    title: `pid ${p.pid}${p.uid !== null && p.uid !== undefined
                      ? `, uid ${p.uid}` : ""}${p.container_id ? `, container ${p.container_id}`
                      : ""}`},
      h("span", {class: "proc-user"}, p.user ?? "?"),
      where ? [" · ", h("span", {class: "proc-where"}, where)] : null,
      ` · ${p.name ?? `pid ${p.pid}`}`,
      h("span", {class: "proc-mem"},
        p.used_memory_mb === null || p.used_memory_mb === undefined ? "—"
          : `${num(p.used_memory_mb)} MiB`));
  });
  if (list.length > SHOWN) items.push(h("li", {class: "proc more"}, `and ${list.length - SHOWN} more`));
  return items;
}
