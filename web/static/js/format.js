// Formatting: times in the viewer's local zone (with its UTC offset), durations, numbers.

const pad = (n, width = 2) => String(Math.trunc(Math.abs(n))).padStart(width, "0");

/** "UTC+01:00" for the viewer's zone at that instant (offsets change with DST). */
export function utcOffset(ms = Date.now()) {
  const minutes = -new Date(ms).getTimezoneOffset();
  const sign = minutes < 0 ? "-" : "+";
  return `UTC${sign}${pad(minutes / 60)}:${pad(minutes % 60)}`;
}

/** The viewer's zone name, when the browser knows it ("Europe/Berlin"). */
export function zoneName() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch {
    return "";
  }
}

export const parseTime = (iso) => (iso ? Date.parse(iso) : null);

/** "2026-01-01 03:14:05" in local time. */
export function dateTime(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` + clock(ms);
}

/** "03:14:05" in local time. */
export function clock(ms) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A <time> element: local time shown, ISO UTC in datetime and title. */
export function timeEl(ms, {withDate = true, withOffset = false} = {}) {
  const el = document.createElement("time");
  if (ms === null || ms === undefined) {
    el.textContent = "—";
    return el;
  }
  const iso = new Date(ms).toISOString();
  el.dateTime = iso;
  el.title = `${iso} (UTC)`;
  el.textContent = (withDate ? dateTime(ms) : clock(ms)) + (withOffset ? ` ${utcOffset(ms)}` : "");
  return el;
}

/** 2 min 13 s, 1 h 4 min, 47 s, 0.3 s, 3 d 2 h (as the service's own summaries say it). */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 10) return `${Number(seconds.toFixed(1))} s`;
  const total = Math.round(seconds);
  if (total < 60) return `${total} s`;
  if (total < 3600) return `${Math.floor(total / 60)} min ${total % 60} s`;
  if (total < 86400) return `${Math.floor(total / 3600)} h ${Math.floor(total % 3600 / 60)} min`;
  return `${Math.floor(total / 86400)} d ${Math.floor(total % 86400 / 3600)} h`;
}

/** A number with grouping and at most `digits` decimals; null → "—". */
export function num(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return Number(value).toLocaleString("en-US", {maximumFractionDigits: digits});
}

export const withUnit = (value, unit, digits = 0) =>
  value === null || value === undefined ? "—" : `${num(value, digits)} ${unit}`;

const REASON_LABELS = {
  GpuIdle: "GPU idle",
  ApplicationsClocksSetting: "application clocks setting",
  SwPowerCap: "SW power cap",
  HwSlowdown: "HW slowdown",
  SyncBoost: "sync boost",
  SwThermalSlowdown: "SW thermal slowdown",
  HwThermalSlowdown: "HW thermal slowdown",
  HwPowerBrakeSlowdown: "HW power brake slowdown",
  DisplayClockSetting: "display clock setting",
};

/** NVML's clock-event reason names, readable: SwPowerCap → "SW power cap". */
export const reasonLabel = (name) => REASON_LABELS[name] || name;

/** Reasons that mean the hardware slowed the clocks (not idle or a setting). */
export const SLOWDOWN_REASONS = new Set(["SwPowerCap", "HwSlowdown", "SwThermalSlowdown",
                                          "HwThermalSlowdown", "HwPowerBrakeSlowdown"]);

/** A list in prose: "a", "a and b", "a, b and c". */
export function prose(items) {
  if (items.length <= 1) return items.join("");
  return `${items.slice(0, -1).join(", ")} and ${items[items.length - 1]}`;
}
