// The modal dialogs: Restore (cluster, database, table), Backup Settings, and the cluster's
// password. Each is a native <dialog> opened with showModal(): the rest of the page is inert,
// Tab stays inside, Escape cancels, and focus goes back to the button that opened it.

import { ApiError, api, cluster as clusterPath } from "./api.js";
import { days, h, minutes, replace, toast, typeLabel, utc } from "./dom.js";

function openDialog(title, { wide = false } = {}) {
  const opener = document.activeElement;
  const heading = h("h2", { id: `dialog-title-${Date.now()}` }, title);
  const body = h("div", { class: "dialog-body" });
  const dialog = h("dialog", { class: wide ? "wide" : "", "aria-labelledby": heading.id }, heading, body);
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener && document.contains(opener)) opener.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  return { dialog, body, close: () => dialog.close() };
}

function field(label, control, help) {
  const id = control.id || `f-${Math.random().toString(36).slice(2)}`;
  control.id = id;
  const helpId = help ? `${id}-help` : undefined;
  if (helpId) control.setAttribute("aria-describedby", helpId);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, help ? h("p", { class: "help", id: helpId }, help) : null);
}

function check(name, label, help) {
  const id = `c-${name}-${Math.random().toString(36).slice(2)}`;
  return h(
    "div",
    { class: "check" },
    h("input", { type: "checkbox", id, name }),
    h("label", { for: id }, h("span", { class: "check-label" }, label), h("span", { class: "help" }, help)),
  );
}

function errorBox() {
  return h("div", { class: "dialog-error", role: "alert", hidden: true });
}

function showError(box, message) {
  box.hidden = false;
  replace(box, h("strong", {}, "Refused: "), message);
  box.scrollIntoView({ block: "nearest" });
}

function actions(...buttons) {
  return h("div", { class: "dialog-actions" }, buttons);
}

function busy(button, text) {
  const previous = button.textContent;
  button.disabled = true;
  button.textContent = text;
  return () => {
    button.disabled = false;
    button.textContent = previous;
  };
}

// -- restore ----------------------------------------------------------------------------------

const DEPENDENCY_OPTIONS = [
  ["skip_missing_foreign_keys", "Skip missing foreign keys", "Leave out a foreign key whose referenced table is not restored, instead of refusing."],
  ["skip_missing_sequences", "Skip missing sequences", "Drop a column default that uses a sequence not restored, instead of refusing."],
  ["skip_missing_views", "Skip missing views", "Leave out a view that reads a table not restored with it, instead of refusing."],
];
const LOCALITIES = [
  "skip_localities_check",
  "Skip localities check",
  "Restore a multi-region backup into a single-region cluster (ADVANCED clusters only).",
];

export const CLUSTER_RESTORE_WARNING =
  "The restore completely erases all data in the destination cluster. All cluster data is replaced with the data from the backup. The destination cluster will be unavailable while the job is in progress.";

// source: the cluster view of the backup's cluster; backup: a listed backup; database and
// table ({schema, name}) narrow it to a DATABASE or TABLE restore.
export async function restoreDialog({ source, backup, database, table, onStarted }) {
  const kind = table ? "TABLE" : database ? "DATABASE" : "CLUSTER";
  const what = { CLUSTER: "cluster", DATABASE: "database", TABLE: "table" }[kind];
  const { body, close } = openDialog(`Restore ${what}`, { wide: true });
  body.append(h("p", { class: "state loading", role: "status" }, "Loading the clusters you may restore into…"));
  let destinations;
  try {
    destinations = (await api(`${clusterPath(source.id)}/restore-destinations`)).clusters;
  } catch (error) {
    replace(body, h("div", { class: "dialog-error", role: "alert" }, error.message), actions(h("button", { type: "button", onclick: close }, "Close")));
    return;
  }
  if (!destinations.length) {
    replace(
      body,
      h("p", {}, "You may not restore this backup into any cluster."),
      actions(h("button", { type: "button", onclick: close }, "Close")),
    );
    return;
  }

  const summary = h(
    "dl",
    { class: "facts" },
    h("dt", {}, "Backup taken on"),
    h("dd", {}, `${utc(backup.as_of_time)} UTC`),
    h("dt", {}, "Type"),
    h("dd", {}, typeLabel(backup.type)),
    h("dt", {}, "Source"),
    h("dd", {}, `${source.name} (${source.id})`),
    database ? [h("dt", {}, "Database"), h("dd", {}, database)] : null,
    table ? [h("dt", {}, "Table"), h("dd", {}, `${table.schema}.${table.name}`)] : null,
  );
  const select = h(
    "select",
    { name: "destination" },
    destinations.map((d) => h("option", { value: d.id, selected: d.id === source.id }, `${d.name} (${d.id}) · ${d.tier}`)),
  );
  const form = h("form", { novalidate: true });
  const error = errorBox();
  form.append(summary);
  form.append(field("Restore to cluster", select, "The same cluster, or an ADVANCED cluster of the same organization, where you may restore."));

  let newName;
  let intoName;
  let intoMode;
  if (kind === "DATABASE") {
    newName = h("input", { type: "text", name: "new_db_name", value: database, required: true, maxlength: 63, autocomplete: "off" });
    form.append(
      field(
        "Restore as database",
        newName,
        "A new database of this name is created. A name that exists on the destination is refused: drop or rename that database first.",
      ),
    );
  }
  if (kind === "TABLE") {
    const existingId = `into-existing-${Date.now()}`;
    const newId = `into-new-${Date.now()}`;
    intoName = h("input", { type: "text", name: "into_db", value: database, maxlength: 63, autocomplete: "off", "aria-label": "Existing database" });
    newName = h("input", { type: "text", name: "new_db_name", value: `${database}_restored`, maxlength: 63, autocomplete: "off", "aria-label": "New database", disabled: true });
    const existing = h("input", { type: "radio", name: "into", id: existingId, value: "existing", checked: true });
    const created = h("input", { type: "radio", name: "into", id: newId, value: "new" });
    intoMode = () => (created.checked ? "new" : "existing");
    const sync = () => {
      intoName.disabled = created.checked;
      newName.disabled = !created.checked;
    };
    existing.addEventListener("change", sync);
    created.addEventListener("change", sync);
    form.append(
      h(
        "fieldset",
        { class: "field" },
        h("legend", {}, "Restore into"),
        h("div", { class: "radio-row" }, existing, h("label", { for: existingId }, "An existing database"), intoName),
        h("div", { class: "radio-row" }, created, h("label", { for: newId }, "A new database"), newName),
        h("p", { class: "help" }, "The table must not exist in the target database: drop or rename it first."),
      ),
    );
  }
  const options = h("fieldset", { class: "field options" });
  if (kind !== "CLUSTER") {
    options.append(h("legend", {}, "Dependency options"));
    for (const [name, label, help] of DEPENDENCY_OPTIONS) options.append(check(name, label, help));
  } else {
    options.append(h("legend", {}, "Options"));
  }
  const localities = check(...LOCALITIES);
  options.append(localities);
  form.append(options);
  const syncLocalities = () => {
    const destination = destinations.find((d) => d.id === select.value);
    localities.hidden = !destination || destination.tier !== "ADVANCED";
    if (localities.hidden) localities.querySelector("input").checked = false;
  };
  select.addEventListener("change", syncLocalities);
  syncLocalities();

  if (kind === "CLUSTER") {
    form.prepend(h("div", { class: "danger", role: "note" }, h("strong", {}, "Warning. "), CLUSTER_RESTORE_WARNING));
  }
  form.append(error);

  const cancel = h("button", { type: "button", onclick: close }, "Cancel");
  const submit = h("button", { type: "submit", class: "primary" }, kind === "CLUSTER" ? "Continue" : "Restore");
  form.append(actions(cancel, submit));
  replace(body, form);
  select.focus();

  const request = () => {
    const opts = {};
    for (const box of form.querySelectorAll('input[type="checkbox"]')) opts[box.name] = box.checked;
    if (kind === "DATABASE") opts.new_db_name = newName.value.trim();
    if (kind === "TABLE") {
      if (intoMode() === "new") opts.new_db_name = newName.value.trim();
      else opts.into_db = intoName.value.trim();
    }
    const objects = kind === "CLUSTER" ? [] : [table ? { database, schema: table.schema, table: table.name } : { database }];
    return { type: kind, backup_id: backup.id, source_cluster_id: source.id, objects, restore_opts: opts };
  };

  const start = async (button, box) => {
    const destination = select.value;
    const done = busy(button, "Starting…");
    try {
      const job = await api(`${clusterPath(destination)}/restores`, { method: "POST", body: request() });
      close();
      toast(`Restore job ${job.id} started.`);
      onStarted(destination, job);
    } catch (failure) {
      done();
      showError(box, failure instanceof ApiError ? failure.message : String(failure));
    }
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    error.hidden = true;
    if (kind === "DATABASE" && !newName.value.trim()) return showError(error, "name the database to restore as.");
    if (kind === "TABLE" && !(intoMode() === "new" ? newName : intoName).value.trim()) return showError(error, "name the database to restore into.");
    if (kind !== "CLUSTER") return start(submit, error);
    confirmClusterRestore(destinations.find((d) => d.id === select.value));
  });

  // The CLUSTER restore's second step: the user types the destination cluster's name.
  function confirmClusterRestore(destination) {
    const typed = h("input", { type: "text", name: "confirm", autocomplete: "off", spellcheck: "false" });
    const confirmError = errorBox();
    const restore = h("button", { type: "submit", class: "danger-button" }, "Restore");
    const back = h("button", { type: "button" }, "Back");
    const confirmForm = h(
      "form",
      { novalidate: true },
      h("div", { class: "danger", role: "note" }, h("strong", {}, "Warning. "), CLUSTER_RESTORE_WARNING),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Backup taken on"),
        h("dd", {}, `${utc(backup.as_of_time)} UTC`),
        h("dt", {}, "Destination"),
        h("dd", {}, `${destination.name} (${destination.id}) · ${destination.tier}`),
      ),
      field(`Type the destination cluster's name, ${destination.name}, to confirm`, typed, "Every database of that cluster is replaced by the backup's."),
      confirmError,
      actions(back, restore),
    );
    back.addEventListener("click", () => {
      replace(body, form);
      submit.focus();
    });
    confirmForm.addEventListener("submit", (event) => {
      event.preventDefault();
      if (typed.value !== destination.name) {
        showError(
          confirmError,
          `"${typed.value}" is not the destination cluster's name (${destination.name}): nothing was restored.`,
        );
        typed.focus();
        typed.select();
        return;
      }
      start(restore, confirmError);
    });
    replace(body, confirmForm);
    typed.focus();
  }
}

// -- backup settings --------------------------------------------------------------------------

export function settingsDialog({ cluster, onSaved }) {
  const { body, close } = openDialog("Backup Settings");
  const config = cluster.backups_config;
  const choices = cluster.settings_choices;
  const editable = choices.configurable && cluster.actions.includes("change_backup_settings");
  const enabled = h("input", { type: "checkbox", role: "switch", id: `enabled-${cluster.id}`, checked: config.enabled, disabled: !editable });
  const frequency = h(
    "select",
    { name: "frequency_minutes", disabled: !editable },
    choices.frequency_minutes.map((m) => h("option", { value: m, selected: m === config.frequency_minutes }, minutes(m))),
  );
  const retention = h(
    "select",
    { name: "retention_days", disabled: !editable },
    choices.retention_days.map((d) => h("option", { value: d, selected: d === config.retention_days }, days(d))),
  );
  const syncEnabled = () => {
    const on = enabled.checked;
    frequency.disabled = !editable || !on;
    retention.disabled = !editable || !on;
  };
  enabled.addEventListener("change", syncEnabled);
  syncEnabled();

  const notices = h("ul", { class: "notices" });
  if (!choices.configurable) {
    notices.append(h("li", {}, `${cluster.tier} clusters take a backup every ${minutes(config.frequency_minutes)} and keep it ${days(config.retention_days)}; these settings cannot be changed. Upgrade the cluster to STANDARD or ADVANCED to configure them.`));
  } else {
    notices.append(h("li", {}, "A change of frequency or retention takes a full backup right away."));
    notices.append(
      h(
        "li",
        {},
        cluster.retention_changed
          ? "Retention has already been changed once on this cluster: a further change is refused (open a support ticket)."
          : "Retention can be changed once per cluster, and applies only to backups taken after the change.",
      ),
    );
    notices.append(h("li", {}, "Disabling backups takes no backup; frequency and retention cannot be set while backups are disabled."));
    if (!editable) notices.append(h("li", {}, "Your role may view these settings but not change them."));
  }
  const error = errorBox();
  const save = h("button", { type: "submit", class: "primary", disabled: !editable }, "Save");
  const form = h(
    "form",
    { novalidate: true },
    h("div", { class: "switch-row" }, enabled, h("label", { for: enabled.id }, "Enable backups")),
    field("Schedule backups every", frequency),
    field("Retain backups for", retention),
    notices,
    error,
    actions(h("button", { type: "button", onclick: close }, editable ? "Cancel" : "Close"), editable ? save : null),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!editable) return;
    error.hidden = true;
    const done = busy(save, "Saving…");
    try {
      await api(`${clusterPath(cluster.id)}/backups/config`, {
        method: "PUT",
        body: { enabled: enabled.checked, frequency_minutes: Number(frequency.value), retention_days: Number(retention.value) },
      });
      close();
      toast("Backup settings saved.");
      onSaved();
    } catch (failure) {
      done();
      showError(error, failure.message);
    }
  });
  replace(body, form);
  (editable ? enabled : form.querySelector("button")).focus();
}

// -- the cluster's password -------------------------------------------------------------------

export function passwordDialog({ cluster }) {
  const { body, close } = openDialog(`Set the password of ${cluster.name}`);
  const password = h("input", { type: "password", name: "password", autocomplete: "new-password", required: true, maxlength: 1024 });
  const again = h("input", { type: "password", name: "again", autocomplete: "new-password", required: true, maxlength: 1024 });
  const error = errorBox();
  const save = h("button", { type: "submit", class: "primary" }, "Set password");
  const form = h(
    "form",
    { novalidate: true },
    h("p", {}, "The password the backup and restore services use to connect to this cluster (as ", h("code", {}, cluster.connection_ref), "), and only to it. It is kept encrypted and never shown again; the audit trail records who set it."),
    field("Password", password),
    field("Password again", again),
    error,
    actions(h("button", { type: "button", onclick: close }, "Cancel"), save),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    if (!password.value) return showError(error, "type the password.");
    if (password.value !== again.value) return showError(error, "the two passwords differ.");
    const done = busy(save, "Saving…");
    try {
      await api(`${clusterPath(cluster.id)}/connection-secret`, { method: "PUT", body: { password: password.value } });
      password.value = "";
      again.value = "";
      close();
      toast(`The password of ${cluster.name} is set. If its last backup failed for want of it, a full backup starts now.`);
    } catch (failure) {
      done();
      showError(error, failure.message);
    }
  });
  replace(body, form);
  password.focus();
}


// -- a backup now -----------------------------------------------------------------------------

export function backupNowDialog({ cluster, onStarted }) {
  const { body, close } = openDialog(`Back up ${cluster.name} now`);
  const full = h("input", { type: "radio", name: "type", id: "now-full", value: "FULL", checked: true });
  const incremental = h("input", { type: "radio", name: "type", id: "now-incremental", value: "INCREMENTAL" });
  const error = errorBox();
  const start = h("button", { type: "submit", class: "primary" }, "Start backup");
  const form = h(
    "form",
    { novalidate: true },
    h(
      "fieldset",
      { class: "field" },
      h("legend", {}, "Type"),
      h("div", { class: "check" }, full, h("label", { for: full.id }, h("span", { class: "check-label" }, "Full"), h("span", { class: "help" }, "Starts a new chain: everything is stored."))),
      h("div", { class: "check" }, incremental, h("label", { for: incremental.id }, h("span", { class: "check-label" }, "Incremental"), h("span", { class: "help" }, "Stores what changed since the newest restorable backup's chain."))),
    ),
    h("p", { class: "help" }, `Kept ${days(cluster.backups_config.retention_days)}, like the scheduled ones. The schedule goes on as before.`),
    error,
    actions(h("button", { type: "button", onclick: close }, "Cancel"), start),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const done = busy(start, "Starting…");
    try {
      const backup = await api(`${clusterPath(cluster.id)}/backups`, { method: "POST", body: { type: incremental.checked ? "INCREMENTAL" : "FULL" } });
      close();
      toast(`Backup ${backup.id} started.`);
      onStarted(backup);
    } catch (failure) {
      done();
      showError(error, failure.message);
    }
  });
  replace(body, form);
  full.focus();
}
