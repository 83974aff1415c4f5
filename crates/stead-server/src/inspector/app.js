// The stead inspector. Everything it shows comes from /ui/api/ on this server, and is put on
// the page as text (textContent), never as markup: names and values are whatever clients
// wrote. The token, when the server asks for one, lives in this variable only.
"use strict";

let token = null;
let pending = null; // what to load again once a token is given
let timer = null;
const readings = []; // vital-sign readings for the charts: time, turns, commits timed

window.addEventListener("error", (e) => report(e.message || String(e)));
window.addEventListener("unhandledrejection", (e) => report(String(e.reason)));

function report(text) {
  const li = document.createElement("li");
  li.textContent = text;
  document.getElementById("errors").appendChild(li);
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

class Unauthorized extends Error {}

async function api(path) {
  return get("/ui/api/" + path);
}

// A write of JSON, with the token if there is one; answers the JSON answer, if any.
async function send(method, url, body) {
  const headers = { accept: "application/json", "content-type": "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  const resp = await fetch(url, { method, headers, body: JSON.stringify(body) });
  if (resp.status === 401) throw new Unauthorized("a token is needed");
  const answer = resp.status === 204 ? null : await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error((answer && answer.detail) || resp.statusText);
  return answer;
}

const put = (url, body) => send("PUT", url, body);

async function get(url) {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  const resp = await fetch(url, { headers });
  if (resp.status === 401) throw new Unauthorized("a token is needed");
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.detail || resp.statusText);
  return body;
}

async function load(what) {
  try {
    await what();
  } catch (e) {
    if (e instanceof Unauthorized) {
      pending = what;
      document.getElementById("auth").hidden = false;
      document.getElementById("token").focus();
      return;
    }
    const view = clear(document.getElementById("view"));
    view.appendChild(el("p", "Could not load: " + e.message, "muted"));
  }
}

// ----- the overview ------------------------------------------------------------------------

async function overview() {
  const v = await api("vitals");
  const view = clear(document.getElementById("view"));
  view.appendChild(el("h1", "Runtime"));
  const cards = el("div", null, "cards");
  chartCard(cards, "turns per second", "turns-chart");
  chartCard(cards, "commit latency, ms", "commit-chart");
  card(cards, "objects in memory", v.active_objects).dataset.vital = "active_objects";
  card(cards, "open WebSockets", v.open_websockets).dataset.vital = "open_websockets";
  card(cards, "alarms held", v.pending_alarms).dataset.vital = "pending_alarms";
  card(cards, "turns since start", v.turns).dataset.vital = "turns";
  view.appendChild(cards);
  view.appendChild(el("h2", "Namespaces"));
  const table = el("table");
  const head = el("tr");
  for (const h of ["class", "objects", "in memory", "turns", "WebSockets", ""]) head.appendChild(el("th", h));
  table.appendChild(head);
  for (const c of v.classes) {
    const tr = el("tr");
    tr.dataset.class = c.class;
    tr.appendChild(el("td", c.class));
    const stored = el("td", "…", "num");
    stored.dataset.count = c.class;
    tr.appendChild(stored);
    tr.appendChild(el("td", c.active_objects, "num"));
    tr.appendChild(el("td", c.turns, "num"));
    tr.appendChild(el("td", c.open_websockets, "num"));
    const td = el("td");
    const a = el("a", "objects");
    a.href = "#/search/" + encodeURIComponent(c.class) + "/";
    td.appendChild(a);
    tr.appendChild(td);
    table.appendChild(tr);
  }
  view.appendChild(table);
  sample(v);
  drawAll();
  // A node of a cluster: its members and partitions (no such route on other servers).
  const cluster = await optional("/cluster");
  if (cluster) clusterSection(view, cluster);
  // Stored objects per class: one read of the registry each, once per visit.
  const counts = await api("counts");
  for (const c of counts) {
    const td = table.querySelector('td[data-count="' + CSS.escape(c.class) + '"]');
    if (td) td.textContent = c.objects + (c.more ? "+" : "");
  }
  if (!timer) {
    timer = setInterval(() => {
      if (location.hash === "" || location.hash === "#/") load(refresh);
    }, 2000);
  }
}

// The cluster as this node sees it: the members with their addresses and the partitions
// each holds, what this node holds, and how many partitions are still to move.
function clusterSection(view, c) {
  const section = el("section");
  section.id = "cluster";
  section.appendChild(el("h2", "Cluster"));
  const cards = el("div", null, "cards");
  card(cards, "partitions", c.partitions);
  card(cards, "held by this node", Object.keys(c.held || {}).length);
  card(cards, "still to move", c.moving);
  section.appendChild(cards);
  const table = el("table");
  table.id = "members";
  const head = el("tr");
  for (const h of ["node", "address", "partitions", ""]) head.appendChild(el("th", h));
  table.appendChild(head);
  for (const m of c.members) {
    const tr = el("tr");
    tr.appendChild(el("td", m.node));
    tr.appendChild(el("td", m.address));
    tr.appendChild(el("td", m.partitions, "num"));
    tr.appendChild(el("td", m.holder === c.holder ? "this node" : "", "muted"));
    table.appendChild(tr);
  }
  section.appendChild(table);
  view.appendChild(section);
}

// A GET that answers null when the route does not exist here.
async function optional(url) {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  const resp = await fetch(url, { headers });
  if (resp.status === 404) return null;
  if (resp.status === 401) throw new Unauthorized("a token is needed");
  if (!resp.ok) throw new Error(resp.statusText);
  return resp.json();
}

function card(parent, label, value) {
  const c = el("div", null, "card");
  c.appendChild(el("div", value, "n"));
  c.appendChild(el("div", label, "label"));
  parent.appendChild(c);
  return c;
}

function chartCard(parent, label, id) {
  const c = card(parent, label, "–");
  const chart = el("canvas");
  chart.width = 240;
  chart.height = 48;
  chart.id = id;
  c.appendChild(chart);
  return c;
}

function sample(v) {
  readings.push({ t: Date.parse(v.at), turns: v.turns, commits: v.commits_timed, seconds: v.commit_seconds });
  while (readings.length > 60) readings.shift();
}

async function refresh() {
  const v = await api("vitals");
  sample(v);
  for (const c of document.querySelectorAll("[data-vital]")) {
    c.querySelector(".n").textContent = String(v[c.dataset.vital]);
  }
  drawAll();
}

// Between consecutive readings: turns per second, and the mean latency of the commits timed
// (carried over when none was).
function drawAll() {
  const rates = [];
  const latencies = [];
  let last = null;
  for (let i = 1; i < readings.length; i++) {
    const a = readings[i - 1];
    const b = readings[i];
    const dt = (b.t - a.t) / 1000;
    rates.push(dt > 0 ? (b.turns - a.turns) / dt : 0);
    const n = b.commits - a.commits;
    if (n > 0) last = ((b.seconds - a.seconds) / n) * 1000;
    latencies.push(last === null ? 0 : last);
  }
  draw("turns-chart", rates, (x) => String(Math.round(x)));
  draw("commit-chart", latencies, (x) => (last === null ? "–" : x.toFixed(2)));
}

// A series drawn as a line (no library: a canvas and a loop), its last value in the card.
function draw(id, values, format) {
  const canvas = document.getElementById(id);
  if (!canvas) return;
  canvas.parentNode.querySelector(".n").textContent = values.length ? format(values[values.length - 1]) : "–";
  if (!canvas.getContext) return;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (values.length < 2) return;
  const max = Math.max(1e-9, ...values);
  g.strokeStyle = "#2f6fd0";
  g.beginPath();
  values.forEach((r, i) => {
    const x = (i / (values.length - 1)) * (canvas.width - 2) + 1;
    const y = canvas.height - 2 - (r / max) * (canvas.height - 4);
    if (i === 0) g.moveTo(x, y);
    else g.lineTo(x, y);
  });
  g.stroke();
}

// ----- search --------------------------------------------------------------------------------

async function search(q, cls) {
  const params = new URLSearchParams({ q: q });
  if (cls) params.set("class", cls);
  const found = await api("objects?" + params.toString());
  const view = clear(document.getElementById("view"));
  const title = cls ? "Objects of " + cls : "Objects";
  view.appendChild(el("h1", q ? title + " starting with \u201c" + q + "\u201d" : title));
  if (found.length === 0) {
    view.appendChild(el("p", "None found (only objects that stored something are listed).", "muted"));
    return;
  }
  const table = el("table");
  table.id = "results";
  const head = el("tr");
  head.appendChild(el("th", "name"));
  head.appendChild(el("th", "class"));
  table.appendChild(head);
  for (const o of found) {
    const tr = el("tr");
    const td = el("td");
    const a = el("a", o.name);
    a.href = "#/object/" + encodeURIComponent(o.class) + "/" + encodeURIComponent(o.name);
    td.appendChild(a);
    tr.appendChild(td);
    tr.appendChild(el("td", o.class));
    table.appendChild(tr);
  }
  view.appendChild(table);
}

// ----- one object ----------------------------------------------------------------------------

// What each pattern's users look for: the pattern's own read route for an object of its
// class (the same answer its HTTP clients get), by the object's name, and its logs (every
// log route answers {"entries": [...], "next": cursor}, newest first).
const enc = encodeURIComponent;
const PATTERN_VIEWS = {
  counter: { title: "Counter", url: (n) => "/counters/" + enc(n) },
  lock: { title: "Lock", url: (n) => "/locks/" + enc(n) },
  leader: { title: "Leader election", url: (n) => "/leaders/" + enc(n) },
  sidecar: { title: "Sidecar", url: (n) => "/sidecars/" + enc(n) },
  session: { title: "Session", url: (n) => "/sessions/" + enc(n) },
  flagset: { title: "Flag set", url: (n) => "/flags/" + enc(n), logs: { audit: "Audit" } },
  controller: {
    title: "Controller",
    url: (n) => "/controllers/" + enc(n),
    logs: { decisions: "Decisions" },
  },
  budget: {
    title: "Budget",
    url: (n) => "/budgets/" + enc(n),
    logs: { events: "Events", history: "Closed cycles" },
  },
  reactor: {
    title: "Reactor entity",
    url: (n) => {
      const i = n.indexOf("/");
      return i < 0 ? null : "/reactors/" + enc(n.slice(0, i)) + "/" + enc(n.slice(i + 1));
    },
    logs: { decisions: "Decisions", "dead-letters": "Dead letters" },
  },
};

async function patternView(cls, name) {
  const p = PATTERN_VIEWS[cls];
  const url = p && p.url(name);
  if (!url) return null;
  let body;
  try {
    body = await get(url);
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    return null; // not one this pattern answers for (its route says why)
  }
  const box = el("section");
  box.id = "pattern-view";
  box.appendChild(el("h2", p.title));
  const facts = Object.entries(body).filter(([, v]) => v === null || typeof v !== "object");
  if (facts.length) {
    const cards = el("div", null, "cards");
    for (const [k, v] of facts) card(cards, k.replace(/_/g, " "), v === null ? "\u2013" : v);
    box.appendChild(cards);
  }
  const rest = Object.entries(body).filter(([, v]) => v !== null && typeof v === "object");
  if (rest.length) box.appendChild(pairs(rest, "field"));
  for (const [path, title] of Object.entries(p.logs || {})) {
    await logSection(box, url + "/" + path, title, "log-" + path);
  }
  return box;
}

// One page of a log as a table (a column per field, nested values as JSON), and a button
// for the next page while there is one.
async function logSection(box, url, title, id) {
  let page;
  try {
    page = await get(url + "?limit=20");
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    return; // this object has no such log (its route says why)
  }
  box.appendChild(el("h3", title));
  if (page.entries.length === 0) {
    box.appendChild(el("p", "Empty.", "muted"));
    return;
  }
  const columns = [];
  for (const e of page.entries) for (const k of Object.keys(e)) if (!columns.includes(k)) columns.push(k);
  const table = el("table");
  table.id = id;
  const head = el("tr");
  for (const c of columns) head.appendChild(el("th", c));
  table.appendChild(head);
  const more = el("button", "Older");
  const add = (entries) => {
    for (const e of entries) {
      const tr = el("tr");
      for (const c of columns) {
        const v = e[c];
        tr.appendChild(el("td", v === undefined || v === null ? "" : typeof v === "object" ? JSON.stringify(v) : v));
      }
      table.appendChild(tr);
    }
  };
  let next = page.next;
  add(page.entries);
  box.appendChild(table);
  more.hidden = next === null;
  more.addEventListener("click", () =>
    load(async () => {
      const p = await get(url + "?limit=20&cursor=" + next);
      add(p.entries);
      next = p.next;
      more.hidden = next === null;
    })
  );
  box.appendChild(more);
}

async function object(cls, name) {
  const params = new URLSearchParams({ class: cls, name: name, brief: "true" });
  const doc = await api("object?" + params.toString());
  const pattern = await patternView(cls, name);
  const view = clear(document.getElementById("view"));
  view.appendChild(el("h1", doc.class + " \u00b7 " + name));
  view.appendChild(actions(cls, name));
  if (pattern) view.appendChild(pattern);
  view.appendChild(el("p", doc.alarm ? "Alarm at " + doc.alarm : "No alarm.", "muted"));
  const jobs = Object.entries(doc.schedules || {});
  if (jobs.length) {
    view.appendChild(el("h2", "Schedules"));
    view.appendChild(pairs(jobs, "job"));
  }
  if (typeof doc.sql === "string") await sqlSection(view, cls, name);
  view.appendChild(el("h2", "Storage"));
  const entries = Object.entries(doc.entries);
  if (entries.length === 0) {
    view.appendChild(el("p", "Empty.", "muted"));
  } else {
    const t = pairs(entries, "key");
    t.id = "storage";
    view.appendChild(t);
  }
}

// The object's SQL database: its tables, and a console for statements that read (the
// server refuses any other). It opens with the first table's first rows.
async function sqlSection(view, cls, name) {
  const run = (sql) => api("sql?" + new URLSearchParams({ class: cls, name: name, sql: sql }).toString());
  // With --inspector-sql-writes the console runs any statement, in a turn of the object.
  const write = (sql) => send("POST", "/ui/api/sql", { class: cls, name: name, sql: sql });
  const box = el("section");
  box.id = "sql";
  box.appendChild(el("h2", "SQL"));
  const schema = await run(
    "SELECT name, type, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY type DESC, name",
  );
  const tables = schema.rows.filter((r) => r[1] === "table").map((r) => r[0]);
  const writes = schema.writes === true;
  const list = el("table");
  list.id = "sql-schema";
  const head = el("tr");
  for (const h of ["name", "type", "definition"]) head.appendChild(el("th", h));
  list.appendChild(head);
  for (const r of schema.rows) {
    const tr = el("tr");
    tr.appendChild(el("td", r[0]));
    tr.appendChild(el("td", r[1]));
    const td = el("td");
    td.appendChild(el("pre", r[2]));
    tr.appendChild(td);
    list.appendChild(tr);
  }
  box.appendChild(list);
  const form = el("form");
  form.id = "sql-console";
  const input = el("textarea");
  input.id = "sql-query";
  input.rows = 3;
  input.value = tables.length
    ? 'SELECT * FROM "' + tables[0].replace(/"/g, '""') + '" LIMIT 100'
    : "SELECT name FROM sqlite_schema";
  const button = el("button", writes ? "Run (may write)" : "Run (read-only)");
  button.type = "submit";
  form.appendChild(input);
  form.appendChild(button);
  box.appendChild(form);
  const out = el("div");
  out.id = "sql-result";
  box.appendChild(out);
  const show = async () => {
    clear(out);
    try {
      const r = writes ? await write(input.value) : await run(input.value);
      const t = el("table");
      const hr = el("tr");
      r.columns.forEach((c, i) => hr.appendChild(el("th", c + (r.decltypes[i] ? " " + r.decltypes[i] : ""))));
      t.appendChild(hr);
      for (const row of r.rows) {
        const tr = el("tr");
        for (const v of row) tr.appendChild(el("td", v === null ? "NULL" : typeof v === "object" ? JSON.stringify(v) : v));
        t.appendChild(tr);
      }
      out.appendChild(t);
      out.appendChild(
        el(
          "p",
          r.rows.length + " rows" + (r.truncated ? " (first 1000 shown)" : "") + ", " + r.rows_read + " read" +
            (r.rows_written ? ", " + r.rows_written + " written" : ""),
          "muted",
        ),
      );
    } catch (e) {
      if (e instanceof Unauthorized) throw e;
      out.appendChild(el("p", e.message, "error"));
    }
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    load(show);
  });
  view.appendChild(box);
  await show();
}

// Export the object as a document (a file), fork it under another name, or restore it from
// a file: the whole document, SQL database included, through /ui/api/object.
function actions(cls, name) {
  const bar = el("div", null, "actions");
  bar.id = "object-actions";
  const whole = () => api("object?" + new URLSearchParams({ class: cls, name: name }).toString());
  const target = (n) => "/ui/api/object?" + new URLSearchParams({ class: cls, name: n }).toString();
  const status = el("span", null, "muted");
  const exportButton = el("button", "Export");
  exportButton.type = "button";
  exportButton.addEventListener("click", () =>
    load(async () => {
      const doc = await whole();
      const a = el("a");
      a.href = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" }));
      a.download = cls + "-" + name + ".json";
      a.click();
      URL.revokeObjectURL(a.href);
    }),
  );
  const forkName = el("input");
  forkName.placeholder = "new name";
  forkName.id = "fork-name";
  const forkButton = el("button", "Fork");
  forkButton.type = "button";
  forkButton.addEventListener("click", () =>
    load(async () => {
      const to = forkName.value.trim();
      if (!to) return;
      await put(target(to), await whole());
      location.hash = "#/object/" + encodeURIComponent(cls) + "/" + encodeURIComponent(to);
    }),
  );
  const file = el("input");
  file.type = "file";
  file.accept = "application/json,.json";
  file.id = "restore-file";
  file.addEventListener("change", () =>
    load(async () => {
      const f = file.files && file.files[0];
      if (!f) return;
      const doc = JSON.parse(await f.text());
      if (!confirm("Replace everything " + name + " holds with " + f.name + "?")) return;
      await put(target(name), doc);
      status.textContent = "Restored from " + f.name + ".";
      await object(cls, name);
    }),
  );
  const restore = el("label", "Restore from a file: ");
  restore.appendChild(file);
  for (const x of [exportButton, forkName, forkButton, restore, status]) bar.appendChild(x);
  return bar;
}

function pairs(list, label) {
  const table = el("table");
  const head = el("tr");
  head.appendChild(el("th", label));
  head.appendChild(el("th", "value"));
  table.appendChild(head);
  for (const [k, v] of list) {
    const tr = el("tr");
    tr.appendChild(el("td", k));
    const td = el("td");
    td.appendChild(el("pre", JSON.stringify(v, null, 2)));
    tr.appendChild(td);
    table.appendChild(tr);
  }
  return table;
}

// ----- routing -------------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").map(decodeURIComponent);
  if (parts[0] === "object" && parts.length >= 3) {
    const cls = parts[1];
    const name = parts.slice(2).join("/");
    return load(() => object(cls, name));
  }
  if (parts[0] === "search") {
    const cls = parts[1] || null;
    const q = parts.slice(2).join("/");
    return load(() => search(q, cls));
  }
  const q = new URLSearchParams(location.search).get("q");
  if (q !== null && hash === "") {
    document.getElementById("q").value = q;
    return load(() => search(q, null));
  }
  return load(overview);
}

document.getElementById("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  token = document.getElementById("token").value.trim() || null;
  document.getElementById("auth").hidden = true;
  if (pending) load(pending);
});

window.addEventListener("hashchange", route);
route();
