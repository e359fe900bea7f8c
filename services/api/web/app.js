// The console: sign-in, the clusters, and each cluster's Backup and Restore page (Backups with
// the calendar and the databases → tables drill-down, Incomplete Backups, Restore Jobs, the
// audit trail). Routes live in the URL's fragment (#/clusters/ID/restores...), never the key.

import { ApiError, api, cluster as clusterPath, query, session } from "./api.js";
import { calendar } from "./calendar.js";
import { backupNowDialog, passwordDialog, restoreDialog, settingsDialog } from "./dialogs.js";
import {
  badge,
  bytes,
  days,
  duration,
  empty,
  expiresIn,
  failure,
  h,
  loading,
  minutes,
  parseUtc,
  replace,
  setSystemTime,
  statusLabel,
  systemNow,
  table,
  typeLabel,
  utc,
} from "./dom.js";

const main = document.getElementById("main");
const PAGE = 50;
const LATEST = "4611686018427387904"; // the audit trail's last page: every position is before it
let me = null;
let cleanups = [];

// -- routing ----------------------------------------------------------------------------------

function parseRoute() {
  const [path, search = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(search) };
}

export function href(...parts) {
  return `#/${parts.map((p) => encodeURIComponent(p)).join("/")}`;
}

function go(target) {
  if (location.hash === target) route();
  else location.hash = target;
}

function later(fn, ms) {
  const id = setTimeout(fn, ms);
  cleanups.push(() => clearTimeout(id));
}

async function route() {
  for (const cleanup of cleanups) cleanup();
  cleanups = [];
  if (!session.key) return signIn();
  try {
    if (!me) {
      me = await api("/api/v1/me");
      setSystemTime(me.now);
      showWho();
    }
    const { parts, params } = parseRoute();
    if (parts[0] === "clusters" && parts[1]) return await clusterPage(parts[1], parts.slice(2), params);
    return await clustersPage();
  } catch (error) {
    handle(error, route);
  }
}

function handle(error, retry) {
  if (error instanceof ApiError && error.status === 401) {
    session.signOut();
    me = null;
    return signIn(`Your API key was refused: ${error.message}. Sign in again.`);
  }
  replace(main, failure(error, retry));
}

// -- sign-in ----------------------------------------------------------------------------------

const ROLE_NAMES = {
  SYSTEM_ADMIN: "System Admin",
  ORG_ADMIN: "Organization Admin",
  CLUSTER_ADMIN: "Cluster Admin",
  CLUSTER_OPERATOR: "Cluster Operator",
  CLUSTER_DEVELOPER: "Cluster Developer",
  CLUSTER_MONITOR: "Cluster Monitor",
};

// "Cluster Operator on cluster orders-prod": one of the caller's role grants, as identity has it.
function grantText(grant) {
  const role = ROLE_NAMES[grant.role_name] ?? grant.role_name;
  if (grant.resource_type === "INSTALLATION") return role;
  return `${role} on ${grant.resource_type === "ORGANIZATION" ? "organization" : "cluster"} ${grant.resource_id}`;
}

function showWho() {
  document.getElementById("who").hidden = false;
  const name = document.getElementById("who-name");
  name.textContent = `Signed in as ${me.name}${me.administrator ? " (administrator)" : ""}`;
  name.title = me.grants.length ? me.grants.map(grantText).join("\n") : "No role grants: nothing to show.";
  const roles = document.getElementById("who-roles");
  roles.textContent = me.administrator ? "" : me.grants.length ? me.grants.map(grantText).join(" · ") : "no role grants";
}

function signIn(message) {
  document.getElementById("who").hidden = true;
  const key = h("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off", spellcheck: "false", required: true });
  const error = h("p", { class: "dialog-error", role: "alert", hidden: !message }, message ?? "");
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "sign-in", novalidate: true },
    h("h1", {}, "Sign in"),
    h("p", {}, "Enter your API key. The console keeps it for this browser tab only (until you sign out or close the tab) and sends it with each request; it never appears in an address."),
    h("div", { class: "field" }, h("label", { for: key.id }, "API key"), key, h("p", { class: "help" }, "The administrator's key of ", h("code", {}, "managed-backups up"), " is in ", h("code", {}, "DATA_DIR/admin-api-key"), "; an Organization Admin creates keys for others with ", h("code", {}, "managed-backups keys create"), ".")),
    error,
    h("div", { class: "dialog-actions" }, button),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = key.value.trim();
    if (!value) {
      error.hidden = false;
      error.textContent = "Enter an API key.";
      return;
    }
    button.disabled = true;
    try {
      me = await api("/api/v1/me", { key: value });
      session.signIn(value);
      setSystemTime(me.now);
      showWho();
      route();
    } catch (failed) {
      button.disabled = false;
      error.hidden = false;
      error.textContent = failed.status === 401 ? `Not signed in: ${failed.message}.` : failed.message;
    }
  });
  replace(main, form);
  key.focus();
}

document.getElementById("sign-out").addEventListener("click", () => {
  session.signOut();
  me = null;
  location.hash = "#/";
  signIn("Signed out.");
});

// -- clusters ---------------------------------------------------------------------------------

function windowText(r) {
  if (!r.oldest_restorable) return "nothing restorable";
  return `${utc(r.oldest_restorable)} → ${utc(r.newest_restorable)}`;
}

function lastBackupMark(c) {
  const last = c.last_backup;
  if (!last) return badge("No backup yet", "none");
  if (last.status === "FAILED") {
    return h(
      "span",
      { class: "mark-failed", title: last.error ? `${last.error.code}: ${last.error.message}` : "" },
      badge("Last backup failed", "failed"),
      last.error ? h("span", { class: "code" }, last.error.code) : null,
    );
  }
  return badge(statusLabel(last.status));
}

async function clustersPage() {
  document.title = "Clusters · managed-backups";
  replace(main, h("h1", {}, "Clusters"), loading("clusters"));
  const { clusters } = await api(`/api/v1/clusters${query({ detail: true })}`);
  if (!clusters.length) {
    replace(
      main,
      h("h1", {}, "Clusters"),
      empty(
        "No clusters to show.",
        "Either none is registered yet (a RegisterCluster command registers one), or your API key's role grants do not include viewing backups on any cluster.",
      ),
    );
    return;
  }
  const rows = clusters.map((c) =>
    h(
      "tr",
      { class: c.last_backup?.status === "FAILED" ? "failed-row" : "" },
      h("td", {}, h("a", { href: href("clusters", c.id), class: "strong" }, c.name), h("div", { class: "sub" }, c.id)),
      h("td", {}, c.organization),
      h("td", {}, badge(c.tier, "tier")),
      h("td", {}, c.backup_region),
      h("td", { class: "time" }, utc(c.recoverability.last_successful_backup)),
      h("td", {}, windowText(c.recoverability)),
      h("td", { class: "num" }, bytes(c.recoverability.stored_bytes)),
      h("td", {}, lastBackupMark(c)),
    ),
  );
  replace(
    main,
    h("h1", {}, "Clusters"),
    h("p", { class: "lead" }, `${clusters.length} cluster${clusters.length === 1 ? "" : "s"} you may view. Times are UTC.`),
    table(["Cluster", "Organization", "Tier", "Backup region", "Last successful backup", "Recoverability window", ["Stored", "num"], "Last backup"], rows, { caption: "Clusters" }),
  );
}

// -- one cluster ------------------------------------------------------------------------------

const TABS = [
  ["backups", "Backups"],
  ["incomplete", "Incomplete Backups"],
  ["restores", "Restore Jobs"],
  ["audit", "Audit trail"],
];

async function clusterPage(id, rest, params) {
  const tab = TABS.some(([name]) => name === rest[0]) ? rest[0] : "backups";
  replace(main, loading("the cluster"));
  const c = await api(clusterPath(id));
  document.title = `${c.name} · Backup and Restore · managed-backups`;
  const may = (action) => c.actions.includes(action);
  const live = c.state !== "DELETED";
  const config = c.backups_config;
  const buttons = h("div", { class: "head-actions" });
  if (live && may("take_backup")) {
    buttons.append(h("button", { type: "button", onclick: () => backupNowDialog({ cluster: c, onStarted: () => go(href("clusters", id, "backups")) }) }, "Back up now"));
  }
  if (live && may("change_backup_settings")) {
    buttons.append(h("button", { type: "button", onclick: () => settingsDialog({ cluster: c, onSaved: route }) }, "Settings"));
  }
  if (live && may("manage_clusters")) {
    buttons.append(h("button", { type: "button", onclick: () => passwordDialog({ cluster: c }) }, "Set password"));
  }
  const head = h(
    "div",
    { class: "cluster-head" },
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/" }, "Clusters"), " › ", h("span", { "aria-current": "page" }, c.name)),
    h("div", { class: "title-row" }, h("h1", {}, c.name, " ", h("span", { class: "id" }, c.id), " ", badge(c.tier, "tier")), buttons),
    live ? null : h("p", { class: "danger", role: "note" }, `This cluster was deleted on ${utc(c.deleted_at)} UTC; its backups are kept until ${utc(c.backups_kept_until)} UTC.`),
    c.last_backup?.status === "FAILED"
      ? h(
          "p",
          { class: "warning", role: "note" },
          h("strong", {}, "The last backup failed. "),
          c.last_backup.error ? `${c.last_backup.error.code}: ${c.last_backup.error.message}. ` : "",
          h("a", { href: href("clusters", id, "incomplete") }, "See Incomplete Backups"),
        )
      : null,
    h(
      "dl",
      { class: "facts wide" },
      h("dt", {}, "Organization"),
      h("dd", {}, c.organization),
      h("dt", {}, "Regions"),
      h("dd", {}, c.regions.join(", ")),
      h("dt", {}, "Backup region"),
      h("dd", {}, c.backup_region),
      h("dt", {}, "PostgreSQL"),
      h("dd", {}, c.database_version),
      h("dt", {}, "Backups"),
      h("dd", {}, config.enabled ? `every ${minutes(config.frequency_minutes)}, kept ${days(config.retention_days)}` : "disabled"),
      h("dt", {}, "Recoverability window"),
      h("dd", {}, windowText(c.recoverability)),
      h("dt", {}, "Last successful backup"),
      h("dd", {}, utc(c.recoverability.last_successful_backup)),
      h("dt", {}, "Stored"),
      h("dd", {}, bytes(c.recoverability.stored_bytes)),
    ),
  );
  const tabs = h(
    "div",
    { class: "tabs", role: "tablist", "aria-label": "Backup and Restore" },
    TABS.map(([name, label]) =>
      h(
        "a",
        {
          role: "tab",
          id: `tab-${name}`,
          href: href("clusters", id, name),
          "aria-selected": name === tab ? "true" : "false",
          "aria-controls": "tab-panel",
          tabindex: name === tab ? "0" : "-1",
          onkeydown: tabKeys,
        },
        label,
      ),
    ),
  );
  const panel = h("section", { id: "tab-panel", role: "tabpanel", "aria-labelledby": `tab-${tab}`, class: "panel" });
  replace(main, head, tabs, panel);
  const views = { backups: backupsTab, incomplete: incompleteTab, restores: restoresTab, audit: auditTab };
  await views[tab](c, panel, rest.slice(1), params);
}

function tabKeys(event) {
  const step = { ArrowLeft: -1, ArrowRight: 1 }[event.key];
  if (!step) return;
  const tabs = [...event.currentTarget.parentElement.querySelectorAll('[role="tab"]')];
  const next = tabs[(tabs.indexOf(event.currentTarget) + step + tabs.length) % tabs.length];
  event.preventDefault();
  next.focus();
  next.click();
}

function restoreStarted(destination) {
  go(href("clusters", destination, "restores"));
}

// -- Backups tab ------------------------------------------------------------------------------

async function backupsTab(c, panel, rest, params) {
  if (rest[0]) return rest[1] === undefined ? databasesView(c, panel, rest[0]) : tablesView(c, panel, rest[0], rest[1]);
  const day = params.get("day");
  const page = Number(params.get("page") ?? "1");
  const list = h("div", { class: "backups-list" }, loading("backups"));
  const side = h("div", { class: "backups-side" });
  replace(panel, h("div", { class: "backups-layout" }, side, list));
  const range = day ? { start_time: `${day}T00:00:00Z`, end_time: new Date(Date.parse(`${day}T00:00:00Z`) + 86400000).toISOString() } : {};
  const fetchPage = () => api(`${clusterPath(c.id)}/backups${query({ ...range, "pagination.page": page, "pagination.limit": PAGE })}`);
  const data = await fetchPage();
  const focus = day ? new Date(`${day}T00:00:00Z`) : data.backups[0]?.as_of_time ? new Date(parseUtc(data.backups[0].as_of_time)) : new Date(systemNow());
  side.append(
    calendar({
      year: focus.getUTCFullYear(),
      month: focus.getUTCMonth(),
      selected: day,
      fetchDays: async (start, end) => (await api(`${clusterPath(c.id)}/backups/days${query({ start_time: start, end_time: end })}`)).days,
      onPick: (picked) => go(`${href("clusters", c.id, "backups")}?day=${picked}`),
    }),
  );
  renderBackups(c, list, data, day, page);
  // New backups appear, and running ones complete, without a reload (the whole page is
  // redrawn then: the cluster's last backup and recoverability window changed too).
  const refresh = async () => {
    const next = await fetchPage();
    if (JSON.stringify(next) !== JSON.stringify(data)) return route();
    const running = next.backups.some((b) => b.status === "IN_PROGRESS");
    later(() => refresh().catch((error) => handle(error, route)), running ? 2000 : 10000);
  };
  later(() => refresh().catch((error) => handle(error, route)), data.backups.some((b) => b.status === "IN_PROGRESS") ? 2000 : 10000);
}

function renderBackups(c, list, data, day, page) {
  const heading = h(
    "div",
    { class: "list-head" },
    h("h2", {}, day ? `Backups of ${day} (UTC)` : "Backups"),
    day ? h("a", { href: href("clusters", c.id, "backups"), class: "chip" }, "Show all days") : h("span", { class: "sub" }, "Newest first; pick a day in the calendar."),
  );
  if (!data.backups.length) {
    replace(
      list,
      heading,
      empty(
        day ? `No backups from ${day}.` : "No backups to show yet.",
        day ? "Pick a marked day in the calendar." : "The first full backup is taken when the cluster is registered. If it failed, Incomplete Backups says why.",
      ),
    );
    return;
  }
  const canRestore = c.actions.includes("restore");
  const rows = data.backups.map((b) =>
    h(
      "tr",
      {},
      h("td", { class: "time" }, utc(b.as_of_time)),
      h("td", {}, badge(statusLabel(b.status))),
      h("td", {}, typeLabel(b.type)),
      h(
        "td",
        {},
        b.kept_past_retention ? [badge("kept past retention", "kept"), " "] : null,
        b.kept_past_retention && !b.expires_at ? h("span", { class: "sub", title: b.retention_note ?? "" }, b.retention_note) : b.status === "COMPLETE" ? expiresIn(b.expires_at) : "—",
      ),
      h(
        "td",
        { class: "num" },
        b.status === "COMPLETE" && b.database_count
          ? h("a", { href: href("clusters", c.id, "backups", b.id), class: "count", "aria-label": `${b.database_count} databases of the backup of ${utc(b.as_of_time)}` }, String(b.database_count))
          : String(b.database_count || "—"),
      ),
      h("td", { class: "num" }, bytes(b.size_bytes)),
      h(
        "td",
        { class: "actions" },
        canRestore && b.status === "COMPLETE"
          ? h("button", { type: "button", class: "small", "aria-label": `Restore the cluster from the backup of ${utc(b.as_of_time)}`, onclick: () => restoreDialog({ source: c, backup: b, onStarted: restoreStarted }) }, "Restore")
          : null,
      ),
    ),
  );
  const pager = pagination(data.pagination, (p) => `${href("clusters", c.id, "backups")}?${new URLSearchParams({ ...(day ? { day } : {}), page: p })}`);
  replace(list, heading, table(["Data From", "Status", "Type", "Expires In", ["Databases", "num"], ["Size", "num"], ""], rows, { caption: "Backups" }), pager);
}

function pagination(p, link) {
  if (!p.next_page && !p.previous_page) return null;
  return h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    p.previous_page ? h("a", { href: link(p.previous_page) }, "‹ Newer") : h("span", {}),
    p.next_page ? h("a", { href: link(p.next_page) }, "Older ›") : h("span", {}),
  );
}

async function backupSummary(c, backupId) {
  return api(`${clusterPath(c.id)}/backups/${encodeURIComponent(backupId)}`);
}

function backupCrumbs(c, backup, database) {
  return h(
    "nav",
    { class: "crumbs", "aria-label": "Backup" },
    h("a", { href: href("clusters", c.id, "backups") }, "Backups"),
    " › ",
    database ? h("a", { href: href("clusters", c.id, "backups", backup.id) }, `Backup of ${utc(backup.as_of_time)} UTC`) : h("span", { "aria-current": "page" }, `Backup of ${utc(backup.as_of_time)} UTC`),
    database ? [" › ", h("span", { "aria-current": "page" }, database)] : null,
  );
}

async function databasesView(c, panel, backupId) {
  replace(panel, loading("the backup's databases"));
  const [backup, data] = await Promise.all([backupSummary(c, backupId), api(`${clusterPath(c.id)}/backups/${encodeURIComponent(backupId)}/databases`)]);
  const canRestore = c.actions.includes("restore");
  const rows = data.databases.map((d) =>
    h(
      "tr",
      {},
      h("td", {}, d.name),
      h("td", { class: "num" }, h("a", { href: href("clusters", c.id, "backups", backupId, d.name), class: "count", "aria-label": `${d.table_count} tables of ${d.name}` }, String(d.table_count))),
      h(
        "td",
        { class: "actions" },
        canRestore ? h("button", { type: "button", class: "small", "aria-label": `Restore database ${d.name}`, onclick: () => restoreDialog({ source: c, backup, database: d.name, onStarted: restoreStarted }) }, "Restore") : null,
      ),
    ),
  );
  replace(
    panel,
    backupCrumbs(c, backup),
    h("h2", {}, "Databases"),
    h("p", { class: "sub" }, `${typeLabel(backup.type)} backup ${backup.id} · ${bytes(backup.size_bytes)} · databases without tables are not listed.`),
    rows.length ? table(["Name", ["Tables", "num"], ""], rows, { caption: "Databases of the backup" }) : empty("No database with tables in this backup."),
  );
}

async function tablesView(c, panel, backupId, database) {
  replace(panel, loading("the database's tables"));
  const [backup, data] = await Promise.all([
    backupSummary(c, backupId),
    api(`${clusterPath(c.id)}/backups/${encodeURIComponent(backupId)}/databases/${encodeURIComponent(database)}/tables`),
  ]);
  const canRestore = c.actions.includes("restore");
  const rows = data.tables.map((t) =>
    h(
      "tr",
      {},
      h("td", {}, t.schema),
      h("td", {}, t.name),
      h("td", { class: "num" }, t.row_count.toLocaleString("en")),
      h("td", { class: "num" }, bytes(t.size_bytes)),
      h(
        "td",
        { class: "actions" },
        canRestore
          ? h("button", { type: "button", class: "small", "aria-label": `Restore table ${t.schema}.${t.name}`, onclick: () => restoreDialog({ source: c, backup, database, table: { schema: t.schema, name: t.name }, onStarted: restoreStarted }) }, "Restore")
          : null,
      ),
    ),
  );
  replace(
    panel,
    backupCrumbs(c, backup, database),
    h("h2", {}, `Tables of ${database}`),
    rows.length ? table(["Schema", "Name", ["Rows", "num"], ["Size", "num"], ""], rows, { caption: `Tables of ${database}` }) : empty("No tables."),
  );
}

// -- Incomplete Backups tab -------------------------------------------------------------------

async function incompleteTab(c, panel) {
  replace(panel, loading("incomplete backups"));
  const { backups } = await api(`${clusterPath(c.id)}/backups/incomplete`);
  if (!backups.length) {
    replace(panel, h("h2", {}, "Incomplete Backups"), empty("No failed or pending backups.", "Every backup of this cluster that started has completed."));
    return;
  }
  const rows = backups.map((b) =>
    h(
      "tr",
      { class: b.status === "FAILED" ? "failed-row" : "" },
      h("td", { class: "time" }, utc(b.started)),
      h("td", {}, duration(b.duration_seconds)),
      h(
        "td",
        { class: "status-cell" },
        badge(statusLabel(b.status)),
        b.error ? h("div", { class: "error-code" }, b.error.code) : null,
        b.error ? h("div", { class: "error-message" }, b.error.message) : null,
        b.failed_step ? h("div", { class: "sub" }, `step: ${b.failed_step}`) : null,
      ),
      h("td", {}, typeLabel(b.type)),
      h("td", {}, b.description),
    ),
  );
  replace(panel, h("h2", {}, "Incomplete Backups"), table(["Started", "Duration", "Status", "Type", "Description"], rows, { caption: "Incomplete backups" }));
}

// -- Restore Jobs tab -------------------------------------------------------------------------

const KNOWN_JOB_FIELDS = new Set([
  "id", "backup_id", "status", "type", "completion_percent", "created_at", "completed_at", "backup_end_time",
  "source_cluster_name", "destination_cluster_name", "objects", "restore_opts", "client_error_code",
  "client_error_message", "phase", "phases", "bytes_done", "bytes_total", "source_cluster_id",
  "destination_cluster_id", "target_database", "failed_step", "destination_state",
]);
const seen = new Map(); // job id -> first observation while running {t, bytes}

function objectsText(objects) {
  if (!objects?.length) return "";
  const db = objects[0].database;
  const tables = objects.filter((o) => o.table).map((o) => `${o.schema ?? "public"}.${o.table}`);
  return tables.length ? `${db}: ${tables.join(", ")}` : db;
}

// A time as its day above its time of day, where a table has many columns.
function twoLines(text) {
  if (!text) return "—";
  const [day, time] = utc(text).split(" ");
  return [day, h("br"), time];
}

function progressCell(job) {
  const percent = Math.round(job.completion_percent * 1000) / 10;
  const cell = h("div", { class: "progress-cell" });
  const bar = h("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(percent), "aria-label": `Progress of restore ${job.id}` }, h("span", { style: null }));
  bar.firstChild.style.width = `${percent}%`;
  cell.append(bar, h("span", { class: "percent" }, `${percent.toFixed(1)}%`));
  if (job.status === "PENDING") {
    const first = seen.get(job.id);
    const now = Date.now();
    let rate = 0;
    if (first && now - first.t > 500 && job.bytes_done > first.bytes) rate = ((job.bytes_done - first.bytes) * 1000) / (now - first.t);
    else {
      const running = job.phases.find((p) => p.phase === "RUNNING");
      const since = running ? (systemNow() - parseUtc(running.at)) / 1000 : 0;
      if (since > 0 && job.bytes_done > 0) rate = job.bytes_done / since;
    }
    if (!first && job.phase === "Running") seen.set(job.id, { t: now, bytes: job.bytes_done });
    const eta = rate > 0 && job.bytes_total > job.bytes_done ? duration((job.bytes_total - job.bytes_done) / rate) : "—";
    cell.append(h("div", { class: "sub" }, `${job.phase} · ${bytes(job.bytes_done)} of ${bytes(job.bytes_total)} · ${rate ? `${bytes(rate)}/s` : "—/s"} · ETA ${eta}`));
  } else {
    cell.append(h("div", { class: "sub" }, `${bytes(job.bytes_done)} restored`));
  }
  return cell;
}

function jobDetails(job) {
  const extra = Object.entries(job).filter(([k, v]) => !KNOWN_JOB_FIELDS.has(k) && v !== null && !(Array.isArray(v) && !v.length));
  const options = Object.entries(job.restore_opts ?? {}).filter(([, v]) => v);
  if (!extra.length && !options.length && !job.destination_state) return null;
  return h(
    "details",
    {},
    h("summary", {}, "Details"),
    h(
      "dl",
      { class: "facts" },
      options.length ? [h("dt", {}, "Options"), h("dd", {}, options.map(([k, v]) => (v === true ? k : `${k}=${v}`)).join(", "))] : null,
      job.destination_state ? [h("dt", {}, "Destination"), h("dd", {}, job.destination_state)] : null,
      extra.map(([k, v]) => [h("dt", {}, k.replaceAll("_", " ")), h("dd", {}, Array.isArray(v) ? v.map((x) => (typeof x === "object" ? JSON.stringify(x) : String(x))).join(", ") : typeof v === "object" ? JSON.stringify(v) : String(v))]),
    ),
  );
}

async function restoresTab(c, panel, rest, params) {
  const page = Number(params.get("page") ?? "1");
  replace(panel, loading("restore jobs"));
  const render = async () => {
    const data = await api(`${clusterPath(c.id)}/restores${query({ "pagination.page": page, "pagination.limit": PAGE })}`);
    if (!data.restores.length) {
      replace(panel, h("h2", {}, "Restore Jobs"), empty("No restore jobs into this cluster yet.", "Start one with a Restore button on the Backups tab."));
    } else {
      const rows = data.restores.map((job) =>
        h(
          "tr",
          { dataset: { job: job.id }, class: job.status === "FAILED" ? "failed-row" : "" },
          h(
            "td",
            { class: "route" },
            h("div", {}, h("span", { class: "strong" }, job.source_cluster_name ?? job.source_cluster_id ?? "?"), job.objects?.length ? h("span", { class: "sub" }, ` · ${objectsText(job.objects)}`) : null),
            h("div", {}, h("span", { class: "arrow", "aria-label": "to" }, "→ "), h("span", { class: "strong" }, job.destination_cluster_name ?? job.destination_cluster_id), job.target_database ? h("span", { class: "sub" }, ` · ${job.target_database}`) : null),
          ),
          h("td", {}, job.type.charAt(0) + job.type.slice(1).toLowerCase()),
          h("td", { class: "time" }, twoLines(job.backup_end_time)),
          h(
            "td",
            { class: "status-cell" },
            badge(job.phase),
            job.client_error_code ? h("div", { class: "error-code" }, job.client_error_code) : null,
            job.client_error_message ? h("div", { class: "error-message" }, job.client_error_message) : null,
            job.failed_step ? h("div", { class: "sub" }, `step: ${job.failed_step}`) : null,
          ),
          h("td", {}, progressCell(job)),
          h("td", { class: "time" }, twoLines(job.created_at)),
          h("td", { class: "time" }, twoLines(job.completed_at)),
          h("td", {}, h("code", { class: "job-id" }, job.id), jobDetails(job)),
        ),
      );
      const pager = pagination(data.pagination, (p) => `${href("clusters", c.id, "restores")}?page=${p}`);
      // Keep an open "Details" open across refreshes.
      const open = new Set([...panel.querySelectorAll("tr[data-job] details[open]")].map((d) => d.closest("tr").dataset.job));
      replace(
        panel,
        h("h2", {}, "Restore Jobs"),
        h("p", { class: "sub" }, "Jobs restoring into this cluster, newest first. Running jobs update live."),
        table(["Source → Destination", "Restore type", "Backup taken on", "Status", "Progress", "Restore start", "Restore end", "Job ID"], rows, { caption: "Restore jobs" }),
        pager,
      );
      for (const id of open) panel.querySelector(`tr[data-job="${id}"] details`)?.setAttribute("open", "");
    }
    const running = data.restores.some((job) => job.status === "PENDING");
    later(() => render().catch((error) => handle(error, route)), running ? 1000 : 5000);
  };
  await render();
}

// -- Audit trail tab --------------------------------------------------------------------------

const EVENT_META = new Set(["event_id", "position", "cluster_id", "aggregate_id", "aggregate_version", "occurred_at", "recorded_at", "by", "type", "schema_version"]);

function eventSummary(event) {
  const parts = [];
  for (const [key, value] of Object.entries(event)) {
    if (EVENT_META.has(key) || value === null || (Array.isArray(value) && !value.length)) continue;
    const text = typeof value === "object" ? JSON.stringify(value) : String(value);
    parts.push(`${key}: ${text.length > 80 ? `${text.slice(0, 77)}…` : text}`);
  }
  const summary = parts.join(" · ");
  return summary.length > 320 ? `${summary.slice(0, 317)}…` : summary;
}

async function auditTab(c, panel, rest, params) {
  replace(panel, loading("the audit trail"));
  const after = params.get("after");
  const before = params.get("before") ?? (after ? null : LATEST);
  // One more than a page, to know whether there is another page that way.
  const { events: fetched } = await api(`${clusterPath(c.id)}/events${query({ limit: PAGE + 1, ...(after ? { after } : { before }) })}`);
  const more = fetched.length > PAGE;
  const events = !more ? fetched : after ? fetched.slice(0, PAGE) : fetched.slice(1);
  if (!events.length && !after && before === LATEST) {
    replace(panel, h("h2", {}, "Audit trail"), empty("No events recorded for this cluster."));
    return;
  }
  const rows = events.map((e) =>
    h(
      "tr",
      {},
      h("td", { class: "num" }, String(e.position)),
      h("td", { class: "time" }, utc(e.occurred_at)),
      h("td", {}, h("span", { class: "event-type" }, e.type)),
      h("td", {}, e.by ?? "—"),
      h("td", { class: "details" }, eventSummary(e)),
    ),
  );
  const first = events[0]?.position;
  const last = events.at(-1)?.position;
  const link = (p) => `${href("clusters", c.id, "audit")}?${new URLSearchParams(p)}`;
  const pager = h(
    "nav",
    { class: "pager", "aria-label": "Audit trail pages" },
    first !== undefined && (after || more) ? h("a", { href: link({ before: first }) }, "‹ Earlier events") : h("span", {}),
    before === LATEST ? h("span", { class: "sub" }, "Latest events") : h("a", { href: href("clusters", c.id, "audit") }, "Latest"),
    last !== undefined && before !== LATEST && (before || more) ? h("a", { href: link({ after: last }) }, "Later events ›") : h("span", {}),
  );
  replace(
    panel,
    h("h2", {}, "Audit trail"),
    h("p", { class: "sub" }, "Every event of this cluster in the order the event store recorded it, with who caused it."),
    events.length ? table([["#", "num"], "Time (UTC)", "Event", "By", "Details"], rows, { caption: "Audit trail", className: "audit" }) : empty("No more events this way."),
    pager,
  );
}

window.addEventListener("hashchange", route);
route();
