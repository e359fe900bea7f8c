// Building the page: elements made with text content only (nothing the API returns is ever
// parsed as HTML), and the formats every view shares (UTC times, sizes, durations).

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

// -- states: loading, empty, error ------------------------------------------------------------

export const loading = (what) => h("p", { class: "state loading", role: "status" }, `Loading ${what}…`);

export const empty = (title, ...details) =>
  h("div", { class: "state empty" }, h("p", { class: "empty-title" }, title), ...details.map((d) => h("p", {}, d)));

export function failure(error, retry) {
  return h(
    "div",
    { class: "state error", role: "alert" },
    h("p", {}, h("strong", {}, "Could not load this: "), error.message),
    retry ? h("button", { type: "button", onclick: retry }, "Try again") : null,
  );
}

// -- formats ----------------------------------------------------------------------------------

// The views' times are fixed-width UTC text (2026-03-01T10:15:03.123456Z); the console shows
// them in UTC, as the API keeps them, and says so.
export function utc(text) {
  if (!text) return "—";
  return `${text.slice(0, 10)} ${text.slice(11, 19)}`;
}

export const utcDay = (text) => (text ? text.slice(0, 10) : "—");

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} days ${hours % 24} h`;
}

export function minutes(n) {
  if (n % 1440 === 0) return n === 1440 ? "24 hours" : `${n / 1440} days`;
  if (n % 60 === 0) return n === 60 ? "60 minutes" : `${n / 60} hours`;
  return `${n} minutes`;
}

export const days = (n) => (n === 1 ? "1 day" : `${n} days`);

export const parseUtc = (text) => (text ? Date.parse(text) : NaN);

// "Expires in" counts from the system's time, which may be a simulated clock: the offset
// between it and this browser's clock is measured at sign-in.
let clockOffset = 0;
export function setSystemTime(text) {
  const system = parseUtc(text);
  clockOffset = Number.isNaN(system) ? 0 : system - Date.now();
}
export const systemNow = () => Date.now() + clockOffset;

export function expiresIn(text) {
  const at = parseUtc(text);
  if (Number.isNaN(at)) return "—";
  const left = (at - systemNow()) / 1000;
  if (left <= 0) return "due";
  if (left < 86400) return duration(left);
  return days(Math.floor(left / 86400));
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind ?? text.toLowerCase().replace(/[^a-z]+/g, "-")}` }, text);
}

export const statusLabel = (status) =>
  ({
    COMPLETE: "Complete",
    IN_PROGRESS: "In Progress",
    SCHEDULED: "Pending",
    FAILED: "Failed",
    EXPIRED: "Expired",
  })[status] ?? status;

export const typeLabel = (type) => ({ FULL: "Full", INCREMENTAL: "Incremental" })[type] ?? type;

export function table(columns, rows, { caption, className } = {}) {
  // Each cell knows its column's title: a narrow screen shows rows as cards, titled cells.
  const titles = columns.map((c) => (Array.isArray(c) ? c[0] : c));
  for (const row of rows) {
    [...row.children].forEach((cell, i) => {
      if (titles[i]) cell.dataset.label = titles[i];
    });
  }
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: className },
      caption ? h("caption", { class: "visually-hidden" }, caption) : null,
      h(
        "thead",
        {},
        // A column is its title, or [title, "num"] for one aligned right (numbers).
        h("tr", {}, columns.map((c) => (Array.isArray(c) ? h("th", { scope: "col", class: c[1] }, c[0]) : h("th", { scope: "col" }, c)))),
      ),
      h("tbody", {}, rows),
    ),
  );
}

let toastTimer;
export function toast(message) {
  const element = document.getElementById("toast");
  element.textContent = message;
  element.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    element.hidden = true;
  }, 6000);
}
