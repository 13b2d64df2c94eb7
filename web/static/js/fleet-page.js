// The fleet page: a host selector over GET /api/fleet/hosts. All hosts: the fleet map (a cell
// per GPU) and the hosts table. One host: its summary row and its GPUs' cards.
//   #/fleet              all hosts when the database holds several, else this host's cards
//   #/fleet?host=*       all hosts        #/fleet?host=NAME&gpu=N   one host (GPU N shown)

import {getJSON} from "./api.js";
import {h, replace, select} from "./dom.js";
import * as cards from "./fleet.js";
import {FleetMap, hostsTable} from "./fleet-map.js";
import {live} from "./live.js";

const ALL = "*";
const MAP_POLL_MS = 5000; // a thousand GPUs' rows: every 5 s is plenty for a glance
const HOSTS_POLL_MS = 10_000;

function hashFor(host, extra = {}) {
  const query = new URLSearchParams({host, ...extra});
  return `#/fleet?${query}`;
}

export function mount(root, params) {
  const query = params?.query ?? new URLSearchParams();
  let host = query.get("host"); // null: decided by the first answer
  const focusGpu = query.get("gpu");
  const picker = h("span", {class: "host-picker"});
  const sortSlot = h("span", {class: "sort-slot"});
  const summary = h("div", {class: "host-summary"});
  const body = h("div", {class: "fleet-body"});
  const error = h("p", {class: "error", hidden: true, role: "alert"});
  replace(root, h("h1", {}, "Fleet"), h("div", {class: "controls fleet-toolbar"}, picker, sortSlot),
    error, summary, body);
  let timer = null;
  let stopped = false;
  let unmountCards = null;
  let map = null;
  let pickerKey = null;

  const drawPicker = (answer) => {
    const options = [[ALL, `All hosts (${answer.count} hosts, ${answer.gpu_count} GPUs)`],
      ...answer.hosts.map((x) => [x.host, `${x.host} · ${x.gpu_count} GPUs` +
        (x.recorded ? " · recorded" : x.stale ? " · stale" : "")])];
    if (host !== ALL && !answer.hosts.some((x) => x.host === host)) {
      options.push([host, `${host} (no GPUs)`]);
    }
    const key = JSON.stringify(options);
    if (key === pickerKey) return; // unchanged: an open dropdown stays open
    pickerKey = key;
    replace(picker, select("Host", options, host,
      (value) => { location.hash = hashFor(value); }, "fleet-host"));
  };

  const showCards = () => {
    if (unmountCards) return;
    const cardsRoot = h("div", {class: "host-cards"});
    replace(body, cardsRoot);
    unmountCards = cards.mount(cardsRoot, params, {host, heading: false, focusGpu}) || null;
  };

  const poll = async () => {
    clearTimeout(timer);
    try {
      let answer = await getJSON("/api/fleet/hosts", host === ALL ? {gpus: true} : {});
      if (host === null) {
        host = answer.count > 1 ? ALL : (answer.hosts[0]?.host ?? live.status?.host ?? ALL);
        history.replaceState(null, "", hashFor(host));
        if (host === ALL) answer = await getJSON("/api/fleet/hosts", {gpus: true});
      }
      if (stopped) return;
      error.hidden = true;
      drawPicker(answer);
      if (host === ALL) {
        if (!map) {
          map = new FleetMap(query.get("sort"));
          map.onSort = (sort) => history.replaceState(null, "", hashFor(ALL, {sort}));
          replace(summary);
          replace(sortSlot, map.sortControl);
          replace(body, map.el);
        }
        map.update(answer);
      } else {
        replace(summary, hostsTable(answer.hosts.filter((x) => x.host === host)));
        showCards();
      }
    } catch (e) {
      if (stopped) return;
      error.hidden = false;
      error.textContent = `Cannot read the fleet's hosts: ${e.message}`;
      if (host === null) { // the cards of this host still work from the live feed
        host = live.status?.host ?? null;
        if (host !== null) showCards();
      }
    } finally {
      if (!stopped) timer = setTimeout(poll, host === ALL ? MAP_POLL_MS : HOSTS_POLL_MS);
    }
  };
  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
    unmountCards?.();
  };
}

export const title = "Fleet";
