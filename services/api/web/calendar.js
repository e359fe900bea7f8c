// The Backups tab's calendar: one month (UTC), the days with backups marked with their count;
// picking a day shows that day's backups. Arrow keys move between days.

import { h, replace } from "./dom.js";

const WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];

const iso = (year, month, day) => `${year}-${String(month + 1).padStart(2, "0")}-${String(day).padStart(2, "0")}`;

// fetchDays(startIso, endIso) -> [{date, backups}]; onPick(dayIso)
export function calendar({ year, month, selected, fetchDays, onPick }) {
  const root = h("section", { class: "calendar", "aria-label": "Pick a day" });
  let current = { year, month };

  async function render() {
    const { year: y, month: m } = current;
    const start = new Date(Date.UTC(y, m, 1));
    const end = new Date(Date.UTC(y, m + 1, 1));
    const title = h("h3", { "aria-live": "polite" }, `${MONTHS[m]} ${y}`);
    const previous = h("button", { type: "button", class: "icon", "aria-label": "Previous month", onclick: () => move(-1) }, "‹");
    const next = h("button", { type: "button", class: "icon", "aria-label": "Next month", onclick: () => move(1) }, "›");
    const grid = h("div", { class: "calendar-grid", role: "grid" });
    replace(root, h("div", { class: "calendar-head" }, previous, title, next), grid, h("p", { class: "help" }, "Days with backups are marked. Times are UTC."));
    let counts = new Map();
    try {
      const days = await fetchDays(start.toISOString(), end.toISOString());
      counts = new Map(days.map((d) => [d.date, d.backups]));
    } catch (error) {
      grid.append(h("p", { class: "state error", role: "alert" }, error.message));
      return;
    }
    for (const name of WEEKDAYS) grid.append(h("span", { class: "weekday", role: "columnheader" }, name));
    const offset = (start.getUTCDay() + 6) % 7;
    for (let i = 0; i < offset; i += 1) grid.append(h("span", { class: "pad" }));
    const last = new Date(Date.UTC(y, m + 1, 0)).getUTCDate();
    for (let day = 1; day <= last; day += 1) {
      const date = iso(y, m, day);
      const n = counts.get(date) ?? 0;
      const label = `${MONTHS[m]} ${day}, ${y}: ${n ? `${n} backup${n === 1 ? "" : "s"}` : "no backups"}`;
      grid.append(
        h(
          "button",
          {
            type: "button",
            class: `day${n ? " has" : ""}${date === selected ? " selected" : ""}`,
            "aria-label": label,
            "aria-pressed": date === selected ? "true" : "false",
            title: label,
            dataset: { date },
            onclick: () => onPick(date),
            onkeydown: (event) => arrows(event, day, last),
          },
          h("span", { class: "num" }, String(day)),
          n ? h("span", { class: "dot" }, String(n)) : null,
        ),
      );
    }
  }

  function arrows(event, day, last) {
    const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -7, ArrowDown: 7 }[event.key];
    if (!step) return;
    event.preventDefault();
    const target = Math.min(last, Math.max(1, day + step));
    root.querySelector(`[data-date="${iso(current.year, current.month, target)}"]`)?.focus();
  }

  function move(delta) {
    const d = new Date(Date.UTC(current.year, current.month + delta, 1));
    current = { year: d.getUTCFullYear(), month: d.getUTCMonth() };
    render();
  }

  render();
  return root;
}
