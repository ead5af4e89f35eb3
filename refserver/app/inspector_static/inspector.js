// The inspector page: panels from GET /api/state (polled), the timeline from
// GET /api/events (Server-Sent Events). Plain DOM, no libraries.
"use strict";

const labels = {};          // server_name -> hs1, hs2, …
let editable = [];          // [{label, user_id}]

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};
const json = (v) => JSON.stringify(v);
const name = (server) => labels[server] || server;
const who = (userId) => {
  const [local, ...rest] = userId.split(":");
  return `${local}:${name(rest.join(":"))}`;
};
const time = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false }) +
  "." + String(ms % 1000).padStart(3, "0");

// -- panels ------------------------------------------------------------------------------

function table(rows, columns, emptyText) {
  if (!rows.length) return el("div", { class: "empty" }, emptyText);
  const t = el("table");
  t.append(el("tr", {}, ...columns.map(([h]) => el("th", {}, h))));
  for (const row of rows) t.append(el("tr", {}, ...columns.map(([, f]) => el("td", {}, f(row)))));
  return t;
}

function fields(profile) {
  const names = Object.keys(profile).sort();
  if (!names.length) return el("span", { class: "empty" }, "(empty)");
  return el("div", { class: "fields" }, ...names.map((k) =>
    el("div", {}, el("span", { class: "fname" }, k), " ", el("code", {}, json(profile[k])))));
}

function destination(inst, d) {
  const box = el("div", { class: "dest", "data-testid": `dest-${inst.label}-${name(d.destination)}` });
  const toggle = el("button", { type: "button" }, d.down ? "bring back" : "take down");
  toggle.onclick = () => switchDestination(inst.label, d.destination, !d.down);
  box.append(
    el("div", {},
      el("b", {}, `→ ${name(d.destination)} `),
      el("span", { class: `state ${d.state}` }, d.state.replace("_", " ")),
      d.failures ? ` · ${d.failures} failed attempt(s), retry in ${d.retry_in_s} s` : "",
      d.down ? el("span", { class: "down" }, " · switched DOWN") : "",
      " ", toggle),
    el("div", {}, `PDUs in the outbox: ${d.pending_pdus} · profile stream cursor ${d.cursor} / head ${d.head}`),
  );
  if (d.dirty.length) {
    box.append(el("div", { class: "dirty" }, "MSC4259 pending (dirty): ",
      d.dirty.map((f) => `${who(f.user_id)} ${f.field} (${f.changes} change${f.changes > 1 ? "s" : ""})`).join(", ")));
  } else {
    box.append(el("div", { class: "empty" }, "no profile changes pending"));
  }
  if (d.owed_full_profile.length) {
    box.append(el("div", { class: "dirty" }, "join-time exchange owed: " + d.owed_full_profile.map(who).join(", ")));
  }
  return box;
}

function renderInstance(inst) {
  const card = el("section", { class: "instance", "data-testid": `instance-${inst.label}` });
  card.append(el("h2", {}, `${inst.label} `, el("span", { class: "name" }, inst.server_name)));
  card.append(el("h3", {}, "Local users (profile)"));
  card.append(table(inst.users, [
    ["user", (u) => who(u.user_id)],
    ["profile", (u) => fields(u.profile)],
  ], "no users yet"));
  card.append(el("h3", {}, "Rooms"));
  card.append(table(inst.rooms, [
    ["room", (r) => r.name || r.room_id],
    ["members", (r) => r.members.map((m) => `${who(m.user_id)} (${m.membership})`).join(", ")],
  ], "no rooms yet"));
  const cache = el("div", { "data-testid": `cache-${inst.label}` });
  cache.append(table(inst.cache, [
    ["remote user", (c) => el("div", {}, who(c.user_id), el("div", { class: "meta" },
      (c.complete ? "complete" : "partial") + (c.updated_ms ? ` · updated ${time(c.updated_ms)}` : "")))],
    ["cached profile", (c) => fields(c.profile)],
  ], "nothing cached"));
  card.append(el("h3", {}, "Remote-profile cache"), cache);
  card.append(el("h3", {}, "Destination queues"));
  const dests = el("div", { "data-testid": `destinations-${inst.label}` });
  if (!inst.destinations.length) dests.append(el("div", { class: "empty" }, "no destinations yet"));
  for (const d of inst.destinations) dests.append(destination(inst, d));
  card.append(dests);
  return card;
}

async function refresh() {
  try {
    const r = await fetch("/api/state");
    const state = await r.json();
    let known = true;
    for (const inst of state.instances) {
      known = known && labels[inst.server_name] === inst.label;
      labels[inst.server_name] = inst.label;
    }
    if (!known) renderTimeline();
    editable = state.instances.flatMap((i) => i.users.filter((u) => u.editable)
      .map((u) => ({ label: i.label, user_id: u.user_id })));
    const select = $("#user");
    const keys = editable.map((u) => `${u.label}|${u.user_id}`);
    if (select.options.length !== keys.length) {
      const chosen = select.value;
      select.replaceChildren(...editable.map((u, n) => el("option", { value: keys[n] }, `${who(u.user_id)}`)));
      if (keys.includes(chosen)) select.value = chosen;
    }
    $("#instances").replaceChildren(...state.instances.map(renderInstance));
  } catch (e) {
    $("#status").textContent = "state: " + e;
  }
}

// -- timeline ----------------------------------------------------------------------------

function describe(e) {
  const at = name(e.server);
  switch (e.kind) {
    case "profile.change":
      return [`${at}: ${who(e.user_id)} set ${e.field}`, e.removed ? "(removed)" : json(e.value)];
    case "profile.dirty":
      return [`${at}: ${e.users.map(who).join(", ")} changed → pending for ${e.destinations.map(name).join(", ") || "no server"}`];
    case "profile.edus": {
      const carried = e.fields + e.coalesced;
      return [`${at} → ${name(e.destination)}: profile update in txn ${e.txn_id}: ${e.contents.length} update(s), ` +
        `${e.fields} field(s) carrying ${carried} change(s)` + (e.coalesced ? `, ${e.coalesced} coalesced` : ""),
        e.contents.map(json).join("\n")];
    }
    case "txn.acknowledged":
    case "txn.failed": {
      const pdus = e.pdus.map((p) => `${p.type}${p.state_key !== undefined ? `[${p.state_key}]` : ""} by ${who(p.sender)}`);
      const head = `${at} → ${name(e.destination)} txn ${e.txn_id}: ${e.pdus.length} PDU(s), ${e.edus.length} EDU(s)`;
      const outcome = e.kind === "txn.acknowledged"
        ? ` → 200 in ${e.latency_ms} ms`
        : ` → ${e.status ? e.status : "no answer"} (${e.error}); attempt ${e.attempt}, retry in ${e.retry_in_s.toFixed(1)} s`;
      const detail = [...pdus.map((p) => "PDU " + p), ...e.edus.map((x) => `EDU ${x.edu_type} ${json(x.content)}`)];
      return [head + outcome, detail.join("\n")];
    }
    case "txn.received":
      return [`${at} ← ${name(e.origin)} txn ${e.txn_id}: ${e.pdus.length} PDU(s), ${e.edus.length} EDU(s)`,
        [...e.pdus.map((p) => `PDU ${p.type} by ${who(p.sender)}`), ...e.edus.map((x) => `EDU ${x.edu_type} ${json(x.content)}`)].join("\n")];
    case "profile.cached":
      return [`${at}: cache of ${who(e.user_id)} updated from ${name(e.origin)} (txn ${e.txn_id})`, json(e.fields)];
    case "sync.users":
      return [`${at}: /sync delivered a users section to ${who(e.user_id)} (MSC4429)`, json(e.users)];
    case "destination.switch":
      return [`${at} → ${name(e.destination)} switched ${e.down ? "DOWN (sends fail as unreachable)" : "back UP"}`];
    default:
      return [`${at}: ${e.kind}`, json(e)];
  }
}

const events = [];

function renderTimeline() {
  $("#timeline").replaceChildren();
  for (const e of events) addEvent(e, false);
}

function addEvent(e, keep = true) {
  if (keep) {
    events.push(e);
    if (events.length > 800) events.shift();
  }
  const [line, detail] = describe(e);
  const li = el("li", { "data-kind": e.kind, "data-seq": e.seq },
    el("span", { class: "t" }, time(e.ts_ms)), el("span", { class: "k" }, e.kind), line);
  if (detail) li.append(el("pre", {}, detail));
  $("#timeline").prepend(li);
  while ($("#timeline").children.length > 800) $("#timeline").lastChild.remove();
}

function listen() {
  const source = new EventSource("/api/events");
  source.addEventListener("feed", (m) => addEvent(JSON.parse(m.data)));
  source.onopen = () => { $("#status").textContent = "live"; $("#status").className = "live"; };
  source.onerror = () => { $("#status").textContent = "reconnecting…"; $("#status").className = ""; };
}

// -- actions -----------------------------------------------------------------------------

function parseValue(text) {
  try { return JSON.parse(text); } catch { return text; }
}

async function post(url, body) {
  const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: json(body) });
  return [r.status, await r.json()];
}

async function setProfile(values) {
  const [label, userId] = $("#user").value.split("|");
  if (!userId) { $("#form-result").textContent = "no editable user yet"; return; }
  const field = $("#field").value;
  const [status, body] = await post(`/api/instances/${label}/profile`, { user_id: userId, field, values });
  const answers = status === 200 ? body.results.map((r) => r.status).join(", ") : `${status} ${json(body)}`;
  $("#form-result").textContent = `PUT /profile/${who(userId)}/${field} ×${values.length}: ${answers}`;
  refresh();
}

async function switchDestination(label, destination, down) {
  const [status, body] = await post(`/api/instances/${label}/destinations/${encodeURIComponent(destination)}`, { down });
  $("#form-result").textContent = status === 200 ? `${label} → ${name(destination)}: ${down ? "down" : "up"}` : json(body);
  refresh();
}

const BURST = ["Europe/Berlin", "Asia/Tokyo", "America/Chicago", "Australia/Sydney", "Europe/Lisbon"];

$("#profile-form").addEventListener("submit", (ev) => { ev.preventDefault(); setProfile([parseValue($("#value").value)]); });
$("#burst").addEventListener("click", () => {
  const field = $("#field").value;
  const base = $("#value").value;
  setProfile(field === "m.tz" ? BURST : BURST.map((_, n) => `${base} ${n + 1}`));
});

// Labels first, so the first events already read hs1 / hs2.
refresh().then(listen);
setInterval(refresh, 1000);
