// allq client dashboard: polls the same origin's REST API and shows servers and tubes;
// lists a tube's jobs by state and acts on them (kick, delete, pause, drain).
//
// Plain browser JavaScript, no build step and no third-party code. Every piece of
// text that comes from the API is written with textContent (never innerHTML), so
// tube names and job bodies can hold any characters. Rows are keyed by address and
// tube name and updated in place, so a button under the pointer is never replaced
// between two polls.
"use strict";

(function () {
  const POLL_MS = 1500;
  const PEEK_LIMIT = 64 * 1024; // characters of a job body shown
  const numbers = new Intl.NumberFormat("en-US");
  const STATES = ["ready", "reserved", "delayed", "buried", "parents"];

  const byId = (id) => document.getElementById(id);
  const serverRows = new Map(); // address (or "replica:<id>") -> {row, cells}
  const tubeRows = new Map(); // tube -> {row, cells, buttons, data}
  let timer = null;
  let toastTimer = null;

  // -- helpers ----------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) search.set(key, String(value));
    const text = search.toString();
    return text ? "?" + text : "";
  }

  // One REST call, relative to the page (so a reverse-proxy prefix keeps working).
  // Resolves to {status, body}; rejects only when the request itself failed.
  // A client published beyond loopback wants its admin token (Authorization:
  // Bearer): asked once, on the first 401, kept for this tab only.
  let token = window.sessionStorage.getItem("allq-admin-token");
  let asking = null;

  function askToken() {
    if (!asking) {
      asking = new Promise((resolve) => {
        const given = window.prompt("This allq client needs its admin token (--admin-token):");
        token = given ? given.trim() : null;
        if (token) window.sessionStorage.setItem("allq-admin-token", token);
        else window.sessionStorage.removeItem("allq-admin-token");
        resolve(token);
      }).finally(() => { setTimeout(() => { asking = null; }, 0); });
    }
    return asking;
  }

  async function call(method, path, params, retried) {
    const headers = { accept: "application/json" };
    const sent = token;
    if (sent) headers.authorization = "Bearer " + sent;
    const response = await fetch(path + query(params), {
      method: method,
      headers: headers,
      cache: "no-store",
    });
    // Calls refused together ask once: one sent before the token was given retries
    // with it instead of asking again.
    if (response.status === 401 && !retried
        && ((token && token !== sent) || (await askToken()))) {
      return call(method, path, params, true);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    return { status: response.status, body: body };
  }

  function errorText(reply) {
    if (reply.body && typeof reply.body === "object" && reply.body.detail) {
      return String(reply.body.detail);
    }
    return "HTTP " + reply.status;
  }

  function toast(message, kind) {
    const node = byId("toast");
    node.textContent = message;
    node.dataset.kind = kind || "ok";
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { node.hidden = true; }, 4000);
  }

  function banner(message) {
    const node = byId("banner");
    if (message) {
      setText(node, message);
      node.hidden = false;
    } else {
      node.hidden = true;
    }
  }

  // -- servers ----------------------------------------------------------------

  // A configured server's row is keyed by its address; a replica link's (the
  // primary's id served by its backup, at the backup's address) by that id.
  function serverRow(address, replicaOf) {
    const key = replicaOf ? "replica:" + replicaOf : address;
    let entry = serverRows.get(key);
    if (entry) return entry;
    const row = el("tr");
    if (replicaOf) row.dataset.replica = replicaOf;
    else row.dataset.server = address;
    const cells = {};
    const status = el("td");
    cells.status = el("span", "status");
    status.appendChild(cells.status);
    row.appendChild(status);
    for (const [field, className] of [["address", "mono"], ["server_id", "mono muted"],
      ["jobs", "num"], ["job_put", "num"], ["job_get", "num"], ["placement", ""],
      ["replication", ""]]) {
      cells[field] = el("td", className);
      cells[field].dataset.field = field;
      row.appendChild(cells[field]);
    }
    entry = { row: row, cells: cells };
    serverRows.set(key, entry);
    return entry;
  }

  // What a server's stats say of replication (docs/replication.md), in a few words.
  function replicationText(server) {
    const parts = [];
    const own = server && server.replication;
    if (own && typeof own === "object") {
      let text = "primary · " + own.state + " → " + (own.peer || "?");
      if (own.lag_records != null) {
        text += " · lag " + numbers.format(Number(own.lag_records) || 0) + " rec / " +
          (Number(own.lag_seconds) || 0).toFixed(2) + " s";
      }
      parts.push(text);
    }
    const replicas = server && Array.isArray(server.replicas) ? server.replicas : [];
    if (replicas.length) {
      parts.push("backup of " + replicas.map((r) => r.primary + " (" + r.state + ")").join(", "));
    }
    return parts.length ? parts.join(" · ") : "—";
  }

  function renderServerRow(entry, server, address, known) {
    const up = Boolean(server.up);
    entry.row.dataset.up = up ? "true" : "false";
    setText(entry.cells.status, up ? "up" : "down");
    entry.cells.status.dataset.state = up ? "up" : "down";
    entry.cells.status.title = up ? "" : String(server.reason || "");
    setText(entry.cells.address, address);
    setText(entry.cells.jobs, known ? numbers.format(known.jobs) : "—");
    setText(entry.cells.job_put, known ? numbers.format(known.server.job_put) : "—");
    setText(entry.cells.job_get, known ? numbers.format(known.server.job_get) : "—");
  }

  function renderServers(health, stats) {
    const tbody = byId("servers").tBodies[0];
    // Stats by "<server_id>,<address>": a replica link's entry shares its
    // backup's address, under the primary's id.
    const byName = new Map();
    for (const server of stats) {
      let jobs = 0;
      for (const tube of server.stats || []) {
        for (const state of STATES) jobs += Number(tube[state]) || 0;
      }
      byName.set(String(server.server_name || ""), { server: server, jobs: jobs });
    }
    const seen = new Set();
    for (const server of health.servers || []) {
      const address = String(server.address);
      seen.add(address);
      const entry = serverRow(address);
      const known = server.server_id ? byName.get(server.server_id + "," + address) : undefined;
      renderServerRow(entry, server, address, known);
      setText(entry.cells.server_id, server.server_id || "—");
      const draining = server.draining || (known && known.server.draining);
      setText(entry.cells.placement, draining ? "draining" : server.up ? "taking jobs" : "—");
      entry.cells.placement.className = draining ? "warn" : "muted";
      setText(entry.cells.replication, known ? replicationText(known.server) : "—");
      if (entry.row.parentNode !== tbody) tbody.appendChild(entry.row);
    }
    for (const replica of health.replica_links || []) {
      const address = String(replica.address);
      const key = "replica:" + replica.server_id;
      seen.add(key);
      const entry = serverRow(address, String(replica.server_id));
      const known = byName.get(replica.server_id + "," + address);
      renderServerRow(entry, replica, address, known);
      setText(entry.cells.server_id, replica.server_id + " (replica)");
      setText(entry.cells.placement, "draining");
      entry.cells.placement.className = "warn";
      setText(entry.cells.replication, "served by " + (replica.served_by || address) +
        " since epoch " + (replica.epoch == null ? "?" : replica.epoch));
      if (entry.row.parentNode !== tbody) tbody.appendChild(entry.row);
    }
    for (const [key, entry] of serverRows) {
      if (!seen.has(key)) {
        entry.row.remove();
        serverRows.delete(key);
      }
    }
    const failovers = Array.isArray(health.failovers) ? health.failovers : [];
    byId("failovers-box").hidden = failovers.length === 0;
    renderList("failovers", failovers, (item) => [
      String(item.server_id), String(item.backup), String(item.epoch),
      new Date(Number(item.at) * 1000).toLocaleString("en-GB"),
    ]);
  }

  // -- tubes ------------------------------------------------------------------

  function sumTubes(stats) {
    const tubes = new Map();
    for (const server of stats) {
      for (const tube of server.stats || []) {
        const name = String(tube.tube);
        let total = tubes.get(name);
        if (!total) {
          total = { tube: name, tps: 0, paused: false, draining: false };
          for (const state of STATES) total[state] = 0;
          tubes.set(name, total);
        }
        for (const state of STATES) total[state] += Number(tube[state]) || 0;
        total.tps += Number(tube.tps) || 0;
        total.paused = total.paused || Boolean(tube.paused);
        total.draining = total.draining || Boolean(tube.draining);
      }
    }
    return tubes;
  }

  function button(label, action, title, className) {
    const node = el("button", "btn" + (className ? " " + className : ""), label);
    node.type = "button";
    node.dataset.action = action;
    node.title = title;
    return node;
  }

  function tubeRow(name) {
    let entry = tubeRows.get(name);
    if (entry) return entry;
    const row = el("tr");
    row.dataset.tube = name;
    const cells = {};
    cells.tube = el("td", "mono tube-name", name);
    cells.tube.dataset.field = "tube";
    row.appendChild(cells.tube);
    for (const field of STATES.concat(["tps"])) {
      cells[field] = el("td", "num");
      cells[field].dataset.field = field;
      row.appendChild(cells[field]);
    }
    cells.state = el("td");
    cells.state.dataset.field = "state";
    row.appendChild(cells.state);
    const actions = el("td", "actions");
    const buttons = {
      jobs: button("Jobs", "jobs", "list this tube's jobs by state", "primary"),
      peek: button("Peek", "peek", "show the next ready job without reserving it"),
      kick: button("Kick all", "kick", "make every buried job of this tube ready again"),
      pause: button("Pause", "pause", "stop handing out this tube's jobs on every server"),
      drain: button("Drain", "drain", "take no new jobs into this tube on every server"),
      clear: button("Clear", "clear", "delete every job of this tube on every server", "danger"),
    };
    for (const node of Object.values(buttons)) actions.appendChild(node);
    row.appendChild(actions);
    entry = { row: row, cells: cells, buttons: buttons, data: null };
    buttons.jobs.addEventListener("click", () => openJobs(entry.data.tube, "buried"));
    buttons.peek.addEventListener("click", () => peek(entry.data.tube, false));
    buttons.kick.addEventListener("click", () => kick(entry));
    buttons.pause.addEventListener("click", () => pause(entry));
    buttons.drain.addEventListener("click", () => drain(entry));
    buttons.clear.addEventListener("click", () => clear(entry));
    tubeRows.set(name, entry);
    return entry;
  }

  function renderTubes(stats, known) {
    const tbody = byId("tubes").tBodies[0];
    const tubes = sumTubes(stats);
    const names = Array.from(tubes.keys()).sort();
    for (const name of names) {
      const data = tubes.get(name);
      const entry = tubeRow(name);
      entry.data = data;
      for (const state of STATES) {
        setText(entry.cells[state], numbers.format(data[state]));
        entry.cells[state].classList.toggle("zero", data[state] === 0);
      }
      entry.cells.buried.classList.toggle("alert", data.buried > 0);
      setText(entry.cells.tps, data.tps.toFixed(2));
      entry.cells.tps.classList.toggle("zero", data.tps === 0);
      renderState(entry.cells.state, data);
      entry.buttons.kick.disabled = data.buried === 0;
      setText(entry.buttons.kick,
        data.buried > 0 ? "Kick all " + numbers.format(data.buried) : "Kick all");
      setText(entry.buttons.drain, data.draining ? "Undrain" : "Drain");
      entry.buttons.drain.dataset.action = data.draining ? "undrain" : "drain";
      setText(entry.buttons.pause, data.paused ? "Resume" : "Pause");
      entry.buttons.pause.dataset.action = data.paused ? "unpause" : "pause";
      entry.buttons.pause.title = data.paused
        ? "hand out this tube's jobs again on every server"
        : "stop handing out this tube's jobs on every server";
    }
    for (const [name, entry] of tubeRows) {
      if (!tubes.has(name)) {
        entry.row.remove();
        tubeRows.delete(name);
      }
    }
    // Re-append only when the order changed: moving a row would cancel a click on it.
    const current = Array.from(tbody.rows, (row) => row.dataset.tube);
    if (current.length !== names.length || current.some((name, i) => name !== names[i])) {
      for (const name of names) tbody.appendChild(tubeRows.get(name).row);
    }
    byId("no-tubes").hidden = names.length > 0 || !known;
    return tubes;
  }

  function renderState(cell, data) {
    const wanted = [];
    if (data.paused) wanted.push("paused");
    if (data.draining) wanted.push("draining");
    const key = wanted.join(" ");
    if (cell.dataset.state === key && cell.childNodes.length) return;
    cell.dataset.state = key;
    cell.replaceChildren();
    if (!wanted.length) {
      cell.appendChild(el("span", "badge ok", "active"));
    }
    for (const word of wanted) cell.appendChild(el("span", "badge " + word, word));
  }

  // -- actions ----------------------------------------------------------------

  async function act(entry, method, path, params, describe) {
    const buttons = Object.values(entry.buttons);
    for (const node of buttons) node.classList.add("busy");
    try {
      const reply = await call(method, path, params);
      if (reply.status >= 400) {
        toast(entry.data.tube + ": " + errorText(reply), "error");
      } else {
        toast(describe(reply.body || {}), "ok");
      }
    } catch (e) {
      toast("request failed: " + e.message, "error");
    } finally {
      for (const node of buttons) node.classList.remove("busy");
      refreshNow();
    }
  }

  function kick(entry) {
    const tube = entry.data.tube;
    const count = Math.max(entry.data.buried, 1);
    if (!window.confirm("Kick every buried job of tube \u201c" + tube + "\u201d (" +
      numbers.format(entry.data.buried) + ") back to ready?")) {
      return null;
    }
    return act(entry, "PUT", "kick", { tube: tube, count: count }, (body) => {
      const kicked = (body.job_ids || []).length;
      return "Kicked " + numbers.format(kicked) + " buried job" + (kicked === 1 ? "" : "s") +
        " in " + tube;
    });
  }

  function pause(entry) {
    const tube = entry.data.tube;
    const paused = entry.data.paused;
    return act(entry, "PUT", paused ? "unpause" : "pause", { tube: tube }, () =>
      (paused ? "Resumed " : "Paused ") + tube);
  }

  function drain(entry) {
    const tube = entry.data.tube;
    const draining = entry.data.draining;
    if (!draining && !window.confirm("Drain tube \u201c" + tube + "\u201d? Every server " +
      "refuses new jobs for it until it is undrained.")) {
      return null;
    }
    return act(entry, "PUT", draining ? "undrain" : "drain", { tube: tube }, () =>
      (draining ? "Undrained " : "Draining ") + tube);
  }

  function clear(entry) {
    const tube = entry.data.tube;
    if (!window.confirm("Delete every job of tube \u201c" + tube + "\u201d on every server?")) {
      return null;
    }
    return act(entry, "DELETE", "tube", { tube: tube }, (body) => {
      const cleared = Number(body.cleared) || 0;
      return "Cleared " + numbers.format(cleared) + " job" + (cleared === 1 ? "" : "s") +
        " from " + tube;
    });
  }

  async function peek(tube, buried) {
    let reply;
    try {
      reply = await call("GET", "peek", buried ? { tube: tube, buried: "true" } : { tube: tube });
    } catch (e) {
      toast("request failed: " + e.message, "error");
      return;
    }
    if (reply.status >= 400) {
      toast(tube + ": " + errorText(reply), "error");
      return;
    }
    showJob(reply.body || {}, (buried ? "First buried job in " : "Next ready job in ") + tube,
      "No " + (buried ? "buried" : "ready") + " job in " + tube + ".");
  }

  // The job panel: one job's fields, its last error and its body.
  function showJob(job, title, emptyText) {
    const panel = byId("peek");
    setText(byId("peek-title"), title);
    const empty = !job.id;
    byId("peek-empty").hidden = !empty;
    byId("peek-meta").hidden = empty;
    byId("peek-body").hidden = empty;
    // A bury's recorded error (allq.worker records the handler's exception).
    const error = empty || job.error === undefined ? null : String(job.error);
    byId("peek-error-label").hidden = error === null;
    byId("peek-error").hidden = error === null;
    byId("peek-error").textContent = error === null ? "" : error;
    if (empty) {
      setText(byId("peek-empty"), emptyText);
    } else {
      for (const field of ["id", "tube", "server", "priority", "ttl", "expireds", "releases"]) {
        const value = job[field];
        setText(panel.querySelector('[data-field="' + field + '"]'),
          value === undefined || value === null ? "—" : value);
      }
      // A binary body (not UTF-8 text) comes as body_base64: shown as base64, said so.
      const binary = job.body_encoding === "base64";
      const text = String(binary ? job.body_base64 : job.body);
      let body = text;
      if (body.length > PEEK_LIMIT) {
        body = body.slice(0, PEEK_LIMIT) + "\n… (" + numbers.format(text.length) +
          " characters, first " + numbers.format(PEEK_LIMIT) + " shown)";
      }
      if (binary) {
        body = "(binary body, base64)\n" + body;
      }
      byId("peek-body").textContent = body;
    }
    panel.hidden = false;
  }

  // -- the jobs panel: a tube's jobs by state, a page at a time (GET /jobs) -------

  const PAGE = 20;
  const jobsView = { tube: null, state: "buried", offset: 0 };

  function openJobs(tube, state) {
    jobsView.tube = tube;
    jobsView.state = state;
    jobsView.offset = 0;
    byId("jobs").hidden = false;
    return loadJobs();
  }

  async function loadJobs() {
    const view = Object.assign({}, jobsView);
    if (!view.tube) return;
    setText(byId("jobs-title"), "Jobs in " + view.tube);
    for (const node of byId("jobs-states").querySelectorAll("button")) {
      node.setAttribute("aria-pressed", String(node.dataset.state === view.state));
    }
    byId("jobs-kick-all").hidden = view.state !== "buried";
    let reply;
    try {
      reply = await call("GET", "jobs", { tube: view.tube, state: view.state,
        offset: view.offset, limit: PAGE });
    } catch (e) {
      toast("request failed: " + e.message, "error");
      return;
    }
    if (view.tube !== jobsView.tube || view.state !== jobsView.state ||
      view.offset !== jobsView.offset) return; // another page was asked for meanwhile
    if (reply.status >= 400) {
      toast(view.tube + ": " + errorText(reply), "error");
      return;
    }
    const page = reply.body;
    const jobs = page.jobs || [];
    const total = Number(page.total) || 0;
    const tbody = byId("jobs-table").tBodies[0];
    tbody.replaceChildren();
    for (const job of jobs) tbody.appendChild(jobRow(job, view.state));
    byId("jobs-empty").hidden = jobs.length > 0;
    setText(byId("jobs-empty"), "No " + view.state + " job in " + view.tube + ".");
    setText(byId("jobs-range"), jobs.length
      ? (view.offset + 1) + "–" + (view.offset + jobs.length) + " of " + numbers.format(total)
      : numbers.format(total) + " " + view.state);
    byId("jobs-prev").disabled = view.offset === 0;
    byId("jobs-next").disabled = view.offset + jobs.length >= total;
    byId("jobs-kick-all").disabled = view.state !== "buried" || total === 0;
  }

  function jobRow(job, state) {
    const row = el("tr");
    row.dataset.jobId = job.id;
    row.appendChild(el("td", "mono", job.id));
    row.appendChild(el("td", "mono muted", job.server));
    for (const field of ["priority", "expireds", "releases"]) {
      row.appendChild(el("td", "num", numbers.format(Number(job[field]) || 0)));
    }
    const error = job.error === undefined ? "" : String(job.error);
    const errorCell = el("td", "job-error", error.length > 80 ? error.slice(0, 80) + "…" : error);
    errorCell.title = error;
    row.appendChild(errorCell);
    const actions = el("td", "actions");
    const view = button("View", "view", "show this job's body, attempts and last error");
    view.addEventListener("click", () => showJob(job, "Job " + job.id + " (" + state + ")", ""));
    actions.appendChild(view);
    if (state === "buried" || state === "delayed") {
      const kickOne = button("Kick", "kick-job", "make this job ready now", "primary");
      kickOne.addEventListener("click", () => jobAction("PUT", "kick", job, "Kicked "));
      actions.appendChild(kickOne);
    }
    const remove = button("Delete", "delete-job", "delete this job", "danger");
    remove.addEventListener("click", () => {
      if (window.confirm("Delete job " + job.id + " of tube \u201c" + job.tube + "\u201d?")) {
        jobAction("DELETE", "job", job, "Deleted ");
      }
    });
    actions.appendChild(remove);
    row.appendChild(actions);
    return row;
  }

  async function jobAction(method, path, job, done) {
    try {
      const reply = await call(method, path, { job_id: job.id });
      if (reply.status >= 400) toast(job.id + ": " + errorText(reply), "error");
      else toast(done + job.id, "ok");
    } catch (e) {
      toast("request failed: " + e.message, "error");
    }
    loadJobs();
    refreshNow();
  }

  async function kickAllBuried() {
    const tube = jobsView.tube;
    const entry = tubeRows.get(tube);
    const buried = entry && entry.data ? entry.data.buried : 0;
    if (!window.confirm("Kick every buried job of tube \u201c" + tube + "\u201d (" +
      numbers.format(buried) + ") back to ready?")) return;
    try {
      const reply = await call("PUT", "kick", { tube: tube, count: Math.max(buried, 1) });
      if (reply.status >= 400) toast(tube + ": " + errorText(reply), "error");
      else toast("Kicked " + numbers.format((reply.body.job_ids || []).length) + " in " + tube);
    } catch (e) {
      toast("request failed: " + e.message, "error");
    }
    loadJobs();
    refreshNow();
  }

  // -- interests and schedules (read only) --------------------------------------

  const shown = { interests: null, schedules: null, failovers: null };

  async function refreshLists() {
    const [interests, schedules] = await Promise.all([
      call("GET", "interests").catch(() => null), call("GET", "schedules").catch(() => null)]);
    if (interests && interests.status === 200) {
      renderList("interests", interests.body.interests || [], (item) => [
        item.tube,
        item.interests === "*" ? "* (every event)" : Object.entries(item.interests || {})
          .map(([field, pattern]) => field + " ~ /" + pattern + "/").join("  or  "),
      ]);
    }
    if (schedules && schedules.status === 200) {
      renderList("schedules", schedules.body.schedules || [], (item) => [
        item.name, item.tube,
        item.cron ? "cron " + item.cron + " (" + item.timezone + ")" : "every " + item.every + " s",
        item.paused ? "paused" : item.next_run_local || "—",
        numbers.format(Number(item.fired) || 0),
      ]);
    }
  }

  function renderList(name, items, cells) {
    const text = JSON.stringify(items);
    if (shown[name] === text) return; // unchanged: leave the rows (and a selection) alone
    shown[name] = text;
    const tbody = byId(name).tBodies[0];
    tbody.replaceChildren();
    for (const item of items) {
      const row = el("tr");
      cells(item).forEach((value, i) => row.appendChild(el("td", i === 0 ? "mono" : "", value)));
      tbody.appendChild(row);
    }
    byId("no-" + name).hidden = items.length > 0;
  }

  // -- polling ----------------------------------------------------------------

  async function refresh() {
    const live = byId("live");
    try {
      const [health, stats] = await Promise.all([call("GET", "health"), call("GET", "stats")]);
      if (!health.body || !Array.isArray(health.body.servers)) {
        throw new Error("/health answered " + health.status);
      }
      const known = stats.status === 200 && Array.isArray(stats.body);
      const statsList = known ? stats.body : [];
      renderServers(health.body, statsList);
      const tubes = renderTubes(statsList, known);
      let jobs = 0;
      for (const tube of tubes.values()) for (const state of STATES) jobs += tube[state];
      const up = health.body.up;
      const total = health.body.total;
      const counts = known
        ? numbers.format(tubes.size) + " tubes · " + numbers.format(jobs) + " jobs"
        : "counts unknown";
      setText(byId("summary-text"), up + "/" + total + " servers up · " + counts +
        " · updated " + new Date().toLocaleTimeString("en-GB"));
      if (up === 0) {
        banner("No server is reachable: the counts below are unknown until one is back.");
      } else if (stats.status !== 200) {
        banner("Stats unavailable: " + errorText(stats));
      } else {
        banner(null);
      }
      live.dataset.state = up === 0 ? "error" : up === total ? "ok" : "degraded";
    } catch (e) {
      live.dataset.state = "error";
      setText(byId("summary-text"), "client unreachable");
      banner("Cannot reach the allq client: " + e.message);
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(tick, POLL_MS);
  }

  async function tick() {
    await Promise.all([refresh(), refreshLists()]);
    schedule();
  }

  function refreshNow() {
    clearTimeout(timer);
    tick();
  }

  document.addEventListener("DOMContentLoaded", () => {
    byId("peek-close").addEventListener("click", () => { byId("peek").hidden = true; });
    byId("jobs-close").addEventListener("click", () => {
      byId("jobs").hidden = true;
      jobsView.tube = null;
    });
    for (const node of byId("jobs-states").querySelectorAll("button")) {
      node.addEventListener("click", () => openJobs(jobsView.tube, node.dataset.state));
    }
    byId("jobs-prev").addEventListener("click", () => {
      jobsView.offset = Math.max(jobsView.offset - PAGE, 0);
      loadJobs();
    });
    byId("jobs-next").addEventListener("click", () => {
      jobsView.offset += PAGE;
      loadJobs();
    });
    byId("jobs-refresh").addEventListener("click", () => loadJobs());
    byId("jobs-kick-all").addEventListener("click", () => kickAllBuried());
    tick();
  });
})();
