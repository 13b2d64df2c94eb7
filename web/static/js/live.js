// Live data: the event stream (Server-Sent Events) for what happens, and polling of
// /api/gpu/status/all for the readings. Without a working stream, events are polled too
// (GET /api/gpu/events after the newest id seen), so nothing is missed either way.

import {connection, getJSON, iso, noteServerTime, serverNow} from "./api.js";

export const EVENT_KINDS = [
  "state_change", "throttle", "resume", "critical", "overheat", "gpu_lost", "gpu_found",
  "service_started", "service_stopped", "monitoring_started", "monitoring_stopped",
  "config_changed", "lease_granted", "lease_renewed", "lease_released", "lease_expired",
  "lease_exceeded", "unleased_usage", "process_started", "process_exited", "xid",
  "backend_error",
];

const STREAM_GRACE_MS = 6000; // a stream reconnecting for longer than this: poll events
const POLL_MIN_S = 1;
const POLL_MAX_S = 5;
const SEEN_MAX = 5000;

export class Live extends EventTarget {
  constructor() {
    super();
    this.mode = "connecting"; // "stream" | "polling" | "offline"
    this.status = null; // the newest /api/gpu/status/all answer
    this.health = null; // the newest /healthz answer
    this.lastEventId = null; // the newest event id received
    this.seen = new Set(); // ids received lately
    this.startedAt = null; // server time when the page started: events after it are new
    this.stream = null;
    this.streamOpened = false;
    this.streamDownSince = null;
    this.timer = null;
    this.refreshQueued = false;
    this.ready = new Promise((resolve) => { this.markReady = resolve; }); // the first poll done
  }

  start() {
    this.openStream();
    this.poll();
    connection.addEventListener("change", () => this.updateMode());
    // A hidden tab holds no stream (each holds a server thread) and polls nothing; shown
    // again, it reconnects and reads what it missed.
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) this.pause();
      else this.resume();
    });
  }

  pause() {
    clearTimeout(this.timer);
    this.timer = null;
    this.stream?.close();
    this.stream = null;
    this.streamOpened = false;
  }

  resume() {
    if (!this.stream) this.openStream();
    this.catchUp();
    this.poll();
  }

  on(type, handler) {
    const listener = (e) => handler(e.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, {detail}));
  }

  openStream() {
    if (!("EventSource" in window)) return;
    const stream = new EventSource("/api/gpu/events/stream");
    this.stream = stream;
    stream.addEventListener("open", () => {
      // A stream without an event id to send starts at the end of the log: read what
      // happened before it opened (since the page started, or between two streams).
      this.catchUp();
      this.streamOpened = true;
      this.streamDownSince = null;
      this.updateMode();
    });
    stream.addEventListener("error", () => {
      // A response ends every few minutes and the browser reconnects by itself (with
      // Last-Event-ID); only a stream that stays down makes the page poll events.
      if (this.streamDownSince === null) this.streamDownSince = Date.now();
      if (stream.readyState === EventSource.CLOSED && this.stream === stream) {
        this.stream = null; // refused (too many streams) or gone: poll, and try again
        setTimeout(() => { if (!this.stream && !document.hidden) this.openStream(); }, 5000);
      }
      this.updateMode();
    });
    for (const kind of EVENT_KINDS) {
      stream.addEventListener(kind, (message) => this.receive(JSON.parse(message.data)));
    }
  }

  streamUp() {
    return this.stream !== null && this.stream.readyState === EventSource.OPEN;
  }

  updateMode() {
    let mode = this.mode;
    if (connection.state === "down") mode = "offline";
    else if (this.streamUp()) mode = "stream";
    else if (!this.stream || Date.now() - (this.streamDownSince ?? Date.now()) > STREAM_GRACE_MS) {
      mode = "polling";
    } else if (mode === "offline") mode = "connecting"; // the stream is reconnecting
    if (mode !== this.mode) {
      this.mode = mode;
      this.emit("mode", mode);
    }
  }

  receive(event) {
    // The stream and the list may both deliver an event, or in a different order.
    if (this.seen.has(event.id)) return;
    this.seen.add(event.id);
    if (this.seen.size > SEEN_MAX) this.seen.delete(this.seen.values().next().value);
    this.lastEventId = Math.max(this.lastEventId ?? 0, event.id);
    this.emit("event", event);
    if (event.gpu_id !== null || event.kind === "config_changed") this.refreshSoon();
  }

  /** Fetch the status again shortly (several events in one tick: one fetch). */
  refreshSoon() {
    if (this.refreshQueued) return;
    this.refreshQueued = true;
    setTimeout(() => {
      this.refreshQueued = false;
      this.poll();
    }, 150);
  }

  intervalSeconds() {
    const interval = this.status?.gpus?.[0]?.monitoring?.interval_seconds ?? 3;
    const wanted = this.mode === "stream" ? interval : Math.min(interval, 2);
    return Math.max(POLL_MIN_S, Math.min(POLL_MAX_S, wanted));
  }

  async poll() {
    clearTimeout(this.timer);
    try {
      const [status, health] = await Promise.all([
        getJSON("/api/gpu/status/all"),
        getJSON("/healthz").catch(() => null),
      ]);
      noteServerTime(status.timestamp);
      this.startedAt ??= serverNow();
      this.status = status;
      if (health) this.health = health;
      this.markReady();
      this.emit("status", status);
      this.updateMode();
      if (this.mode === "polling") await this.pollEvents();
    } catch {
      this.updateMode();
    } finally {
      this.markReady();
      clearTimeout(this.timer);
      if (!document.hidden) {
        this.timer = setTimeout(() => this.poll(), this.intervalSeconds() * 1000);
      }
    }
  }

  catchUp() {
    this.pollEvents().catch(() => {});
  }

  async pollEvents() {
    if (this.startedAt === null) return;
    const params = this.lastEventId !== null
      ? {since_id: this.lastEventId, limit: 500}
      : {since: iso(this.startedAt), limit: 500};
    const page = await getJSON("/api/gpu/events", params);
    for (const event of page.events) this.receive(event);
  }
}

export const live = new Live();
