// GPU states as the dashboard shows them: the effective state (the one the throttle advice
// follows: held up through a cooldown or critical pause) with the raw state beside it when
// they differ, so a badge never contradicts the advice next to it.

import {badge, h} from "./dom.js";

export const STATE_RANK = ["OPTIMAL", "NORMAL", "THROTTLED", "CRITICAL", "UNAVAILABLE"];

/** A status document's (or fleet row's) effective state; the raw one when not given. An
 * unavailable GPU is UNAVAILABLE whatever cooldown it was in (the advice's rule too). */
export const effectiveState = (gpu) => (gpu.state === "UNAVAILABLE" || gpu.available === false
  ? "UNAVAILABLE" : gpu.effective_state || gpu.throttling?.effective_state || gpu.state);

/** The effective state's badge, and "raw X" beside it when the raw state differs. */
export function stateBadges(effective, raw) {
  return [badge(effective),
    raw && raw !== effective
      ? h("span", {class: "raw-state", title: "the newest sample's own state"}, ` raw ${raw}`)
      : null];
}
