// Turnout dashboard: one ballot's turnout, live. No framework and no build step: the
// page is fed by the stream (GET /v1/ballots/{id}/stream): a `snapshot` of every row in
// the caller's scope, then `turnout` events with the rows each committed batch changed.
// The same rows drive the headline, the table at every drill-down level, and the chart's
// threshold; only the timeline is read separately (and then kept current by the
// stream's hourly buckets).
"use strict";

(() => {
  const TOKEN_KEY = "turnout.token";
  const CHILD_LEVEL = { national: "group", group: "branch", branch: "workplace" };
  const PLURAL = { group: "Groups", branch: "Branches", workplace: "Workplaces" };
  const RECOVER_MS = 5000;       // after the stream failed for good, try again this soon
  const DAY_REFRESH_MS = 3000;   // daily buckets are re-read at most this often
  const HOUR_MS = 3600e3;
  const DAY_MS = 24 * HOUR_MS;

  const $ = (id) => document.getElementById(id);
  const number = new Intl.NumberFormat("en-GB");
  const fmt = (n) => (n == null ? "–" : number.format(n));
  const pct = (x) => (x == null ? "–" : `${(x * 100).toFixed(1)}%`);
  const rowKey = (level, unit) => `${level}|${unit}`;

  const state = {
    token: null,
    ballots: [],
    ballot: null,          // {ballot_id, name, threshold, opens_at, closes_at, closed_at}
    rows: new Map(),       // rowKey -> row, as GET /v1/ballots/{id}/turnout shows rows
    path: [],              // [{level, unit, childLevel}], root first
    wanted: null,          // {level, unit} to drill to once rows arrive (from the URL)
    bucket: "hour",
    timeline: null,        // {level, unit, bucket, points: Map(ms -> votes)}
    source: null,
    lastSeq: null,
    recoverTimer: null,
    dayTimer: null,
    renderQueued: false,
    changed: new Set(),
  };

  class SignedOut extends Error {}

  // -- sign-in -------------------------------------------------------------------------

  function hashParams() {
    return new URLSearchParams(location.hash.slice(1));
  }

  function setHash(params) {
    const text = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (text ? `#${text}` : ""));
  }

  function readToken() {
    // A token handed over in the URL's fragment (the demo prints such a link; fragments
    // are never sent to a server): keep it for this tab, and take it out of the address
    // bar and the history at once.
    const params = hashParams();
    const given = params.get("token");
    if (given) {
      sessionStorage.setItem(TOKEN_KEY, given);
      params.delete("token");
      setHash(params);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function showSignIn(message) {
    stopStream();
    $("board").hidden = true;
    $("empty").hidden = true;
    $("picker").hidden = true;
    $("sign-out").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
    setConnection("", "");
    $("token").focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showSignIn(message);
  }

  async function api(path) {
    const response = await fetch(path, {
      headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json" },
    });
    if (response.status === 401) {
      signOut("That token was refused or has expired: paste a new one.");
      throw new SignedOut();
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.detail || `${response.status} ${response.statusText}`);
    }
    return response;
  }

  // -- ballots ---------------------------------------------------------------------------

  async function start() {
    state.token = readToken();
    if (!state.token) {
      showSignIn();
      return;
    }
    $("signin").hidden = true;
    $("sign-out").hidden = false;
    let list;
    try {
      list = await (await api("/v1/ballots")).json();
    } catch (error) {
      if (!(error instanceof SignedOut)) showEmpty(`The ballots could not be read: ${error.message}`, true);
      return;
    }
    state.ballots = list.items;
    if (!state.ballots.length) {
      showEmpty("No ballot with members in your scope has been counted yet. This page checks again every 15 seconds.", true);
      return;
    }
    const select = $("ballot");
    select.replaceChildren(...state.ballots.map((b) => {
      const option = document.createElement("option");
      option.value = b.ballot_id;
      const name = b.name || "Ballot (details not yet received)";
      option.textContent = `${name}${b.closed_at ? " (closed)" : ""}`;
      return option;
    }));
    $("picker").hidden = false;
    const params = hashParams();
    const wanted = state.ballots.find((b) => b.ballot_id === params.get("ballot"));
    const at = params.get("at");
    if (wanted && at && at.includes(":")) {
      const [level, ...unit] = at.split(":");
      state.wanted = { level, unit: unit.join(":") };
    }
    selectBallot((wanted || state.ballots[0]).ballot_id);
  }

  function showEmpty(message, retry) {
    $("board").hidden = true;
    const empty = $("empty");
    empty.textContent = message;
    empty.hidden = false;
    if (retry) setTimeout(() => { if (state.token && !state.source) start(); }, 15000);
  }

  function selectBallot(ballotId) {
    stopStream();
    const summary = state.ballots.find((b) => b.ballot_id === ballotId);
    $("ballot").value = ballotId;
    state.ballot = summary ? { ...summary } : { ballot_id: ballotId };
    state.rows = new Map();
    state.path = [];
    state.timeline = null;
    state.lastSeq = null;
    updateHash();
    $("empty").hidden = true;
    openStream();
  }

  function updateHash() {
    const params = hashParams();
    if (state.ballot) params.set("ballot", state.ballot.ballot_id);
    const node = state.path[state.path.length - 1];
    if (node && state.path.length > 1) params.set("at", `${node.level}:${node.unit}`);
    else params.delete("at");
    setHash(params);
  }

  // -- the stream ------------------------------------------------------------------------

  function openStream() {
    const ballotId = state.ballot.ballot_id;
    // EventSource cannot send an Authorization header: the stream takes the token as a
    // query parameter (and never logs it). Reconnections after a drop resume by
    // themselves with Last-Event-ID; a stream re-opened by hand says where it was.
    let url = `/v1/ballots/${encodeURIComponent(ballotId)}/stream?access_token=${encodeURIComponent(state.token)}`;
    if (state.lastSeq != null) url += `&last_event_id=${state.lastSeq}`;
    const source = new EventSource(url);
    state.source = source;
    setConnection("", "Connecting…");
    source.addEventListener("open", () => setConnection("live", "Live"));
    source.addEventListener("snapshot", (event) => {
      const data = JSON.parse(event.data);
      state.lastSeq = data.seq;
      state.ballot = { ...state.ballot, ...data.ballot };
      state.rows = new Map(data.rows.map((r) => [rowKey(r.level, r.unit), r]));
      settlePath();
      queueRender();
      loadTimeline();
    });
    source.addEventListener("turnout", (event) => {
      const data = JSON.parse(event.data);
      state.lastSeq = data.seq;
      for (const r of data.rows) {
        const key = rowKey(r.level, r.unit);
        const before = state.rows.get(key);
        if (r.eligible === 0) {
          state.rows.delete(key); // its last member moved away: the API lists it no more
          continue;
        }
        state.rows.set(key, r);
        if (!before || before.voted !== r.voted || before.eligible !== r.eligible) state.changed.add(key);
      }
      if (state.path.length === 0) settlePath();
      applyHours(data.hours);
      queueRender();
    });
    source.addEventListener("error", () => {
      if (source !== state.source) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused (401 once the token expired, 404) or a proxy's error page: the
        // browser will not retry by itself.
        source.close();
        state.source = null;
        setConnection("down", "Disconnected: retrying");
        state.recoverTimer = setTimeout(recover, tokenExpired() ? 0 : RECOVER_MS);
      } else {
        setConnection("down", "Reconnecting…");
      }
    });
  }

  // Whether the token's own `exp` has passed. Only to tell the user promptly: the
  // server decides, and accepts a token a little past `exp` (clock skew) but never
  // opens a stream with one.
  function tokenExpired() {
    try {
      const part = state.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
      return typeof claims.exp === "number" && claims.exp * 1000 <= Date.now();
    } catch {
      return false;
    }
  }

  async function recover() {
    state.recoverTimer = null;
    if (tokenExpired()) {
      signOut("Your token has expired: paste a new one.");
      return;
    }
    try {
      await api("/v1/ballots"); // signs out on 401
    } catch (error) {
      if (error instanceof SignedOut) return;
    }
    if (state.token && state.ballot && !state.source) openStream();
  }

  function stopStream() {
    if (state.source) state.source.close();
    state.source = null;
    clearTimeout(state.recoverTimer);
    state.recoverTimer = null;
  }

  function setConnection(kind, text) {
    const el = $("connection");
    el.className = `connection ${kind}`;
    el.textContent = text;
  }

  // -- units and drill-down ----------------------------------------------------------------

  function rowsAt(level, parent) {
    const found = [];
    for (const r of state.rows.values()) {
      if (r.level === level && (parent === undefined || r.parent === parent)) found.push(r);
    }
    return found;
  }

  // The top of what the caller sees: the national row, or (for organisers and reps) the
  // one group or branch they have, or all of theirs together.
  function rootNode() {
    if (state.rows.has(rowKey("national", "national"))) {
      return { level: "national", unit: "national", childLevel: "group" };
    }
    for (const level of ["group", "branch"]) {
      const units = rowsAt(level);
      if (units.length === 1) return { level, unit: units[0].unit, childLevel: CHILD_LEVEL[level] };
      if (units.length > 1) return { level: "scope", unit: null, childLevel: level };
    }
    return null;
  }

  function settlePath() {
    const root = rootNode();
    if (!root) {
      state.path = [];
      return;
    }
    const wanted = state.wanted || state.path[state.path.length - 1];
    state.wanted = null;
    state.path = [root];
    if (wanted && wanted.level !== root.level) {
      // Rebuild the way down to the wanted unit through its parents.
      const chain = [];
      let row = state.rows.get(rowKey(wanted.level, wanted.unit));
      while (row && !(row.level === root.level && row.unit === root.unit) && chain.length < 4) {
        chain.unshift({ level: row.level, unit: row.unit, childLevel: CHILD_LEVEL[row.level] });
        const parentLevel = { branch: "group", workplace: "branch" }[row.level];
        row = parentLevel ? state.rows.get(rowKey(parentLevel, row.parent)) : null;
      }
      const top = chain[0];
      if (top && (root.level === "scope" ? top.level === root.childLevel : true)) {
        state.path.push(...chain.filter((n) => n.level !== "workplace"));
      }
    }
  }

  function children(node) {
    if (node.level === "national" || node.level === "scope") return rowsAt(node.childLevel);
    return rowsAt(node.childLevel, node.unit);
  }

  function sortRows(rows) {
    return rows.sort((a, b) => {
      const an = a.votes_needed, bn = b.votes_needed;
      if ((an == null) !== (bn == null)) return an == null ? 1 : -1;
      if (an !== bn) return (bn || 0) - (an || 0);
      return a.unit < b.unit ? -1 : a.unit > b.unit ? 1 : 0;
    });
  }

  function neededFor(threshold, eligible, voted) {
    if (threshold == null) return null;
    // ceil(threshold x eligible) in integers where floating point would round up 0.3 x 10.
    const scale = 1e6;
    const needed = Math.ceil(Math.round(threshold * scale) * eligible / scale - 1e-9);
    return Math.max(0, needed - voted);
  }

  // A node's figures: its row, or for "all of yours" the sum of its children.
  function figures(node) {
    if (node.level !== "scope") return state.rows.get(rowKey(node.level, node.unit)) || null;
    const units = children(node);
    const sum = (name) => units.reduce((n, r) => n + r[name], 0);
    const eligible = sum("eligible"), voted = sum("voted");
    const threshold = state.ballot ? state.ballot.threshold : null;
    return {
      unit: null, level: "scope", eligible, voted,
      turnout: eligible ? voted / eligible : null, threshold,
      votes_needed: neededFor(threshold, eligible, voted),
      contactable: sum("contactable"), hard_to_reach: sum("hard_to_reach"),
    };
  }

  function nodeName(node) {
    if (node.level === "national") return "National";
    if (node.level === "scope") return `All your ${PLURAL[node.childLevel].toLowerCase()}`;
    return node.unit;
  }

  // -- rendering -------------------------------------------------------------------------

  function queueRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => {
      state.renderQueued = false;
      render();
    });
  }

  function render() {
    if (!state.path.length) {
      const message = state.rows.size === 0 && state.lastSeq != null
        ? "Nobody in your scope is on this ballot's roll yet. This page updates by itself."
        : "Waiting for the figures…";
      $("board").hidden = true;
      $("empty").textContent = message;
      $("empty").hidden = false;
      return;
    }
    $("empty").hidden = true;
    $("board").hidden = false;
    renderHeadline();
    renderCrumbs();
    renderTable();
    drawChart();
    state.changed.clear();
  }

  function setBar(bar, turnout, threshold) {
    const fill = bar.querySelector(".fill");
    const marker = bar.querySelector(".marker");
    fill.style.width = `${Math.min(100, (turnout || 0) * 100)}%`;
    bar.classList.toggle("has-threshold", threshold != null);
    bar.classList.toggle("reached", threshold != null && turnout != null && turnout >= threshold);
    if (threshold != null) marker.style.left = `${threshold * 100}%`;
  }

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text; // no needless aria-live announcements
  }

  function renderHeadline() {
    const root = state.path[0];
    const f = figures(root);
    const threshold = state.ballot ? state.ballot.threshold : null;
    setText("headline-title", root.level === "national" ? "National turnout" : `Turnout: ${nodeName(root)}`);
    setText("headline-turnout", pct(f && f.turnout));
    setText("headline-voted", fmt(f && f.voted));
    setText("headline-eligible", fmt(f && f.eligible));
    setText("headline-needed", threshold == null ? "no threshold" : fmt(f && f.votes_needed));
    setText("headline-threshold", threshold == null ? "none" : pct(threshold));
    const bar = $("headline-bar");
    setBar(bar, f && f.turnout, threshold);
    bar.setAttribute("aria-label", threshold == null
      ? `Turnout ${pct(f && f.turnout)}`
      : `Turnout ${pct(f && f.turnout)} against a ${pct(threshold)} threshold`);
  }

  function renderCrumbs() {
    const list = $("crumbs");
    list.replaceChildren(...state.path.map((node, i) => {
      const item = document.createElement("li");
      if (i === state.path.length - 1) {
        const here = document.createElement("span");
        here.setAttribute("aria-current", "page");
        here.textContent = nodeName(node);
        item.append(here);
      } else {
        const back = document.createElement("button");
        back.type = "button";
        back.className = "link";
        back.textContent = nodeName(node);
        back.addEventListener("click", () => drillTo(i));
        item.append(back);
      }
      return item;
    }));
    const node = state.path[state.path.length - 1];
    const f = figures(node);
    // At the top the headline already says it.
    setText("unit-summary", f && state.path.length > 1
      ? `${nodeName(node)}: ${pct(f.turnout)} turnout, ${fmt(f.voted)} of ${fmt(f.eligible)} voted` +
        (f.votes_needed == null ? "" : `, ${fmt(f.votes_needed)} more votes needed`)
      : "");
  }

  function cell(tag, text, className) {
    const el = document.createElement(tag);
    if (text != null) el.textContent = text;
    if (className) el.className = className;
    return el;
  }

  function ratioCell(part, whole) {
    const td = cell("td", null, "num");
    td.append(whole ? pct(part / whole) : "–", cell("span", `(${fmt(part)})`, "sub"));
    return td;
  }

  function renderTable() {
    const node = state.path[state.path.length - 1];
    const level = node.childLevel;
    const rows = sortRows(children(node));
    const where = node.level === "national" || node.level === "scope" ? "" : ` in ${node.unit}`;
    setText("units-caption", `${PLURAL[level]}${where}, most votes still needed first (${rows.length})`);
    const drillable = level in CHILD_LEVEL;
    $("units-body").replaceChildren(...rows.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.unit = r.unit;
      if (state.changed.has(rowKey(r.level, r.unit))) tr.className = "changed";
      const name = cell("th");
      name.scope = "row";
      if (drillable) {
        const open = cell("button", r.unit, "link");
        open.type = "button";
        open.setAttribute("aria-label", `${r.unit}: show its ${PLURAL[CHILD_LEVEL[level]].toLowerCase()}`);
        open.addEventListener("click", () => drillDown(r));
        name.append(open);
      } else {
        name.textContent = r.unit;
      }
      const turnout = cell("td", null, "turnout");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      bar.append(cell("span", null, "fill"), cell("span", null, "marker"));
      setBar(bar, r.turnout, r.threshold);
      turnout.append(cell("span", pct(r.turnout), "pct"), bar);
      tr.append(
        name,
        turnout,
        cell("td", r.votes_needed == null ? "–" : fmt(r.votes_needed), "num"),
        cell("td", `${fmt(r.voted)} / ${fmt(r.eligible)}`, "num"),
        ratioCell(r.contactable, r.eligible),
        cell("td", fmt(r.sms_consent), "num"),
        cell("td", fmt(r.contacted), "num"),
        cell("td", fmt(r.hard_to_reach), "num"),
        cell("td", fmt(r.reminders_sent), "num"),
        cell("td", fmt(r.replacements_requested), "num"),
      );
      return tr;
    }));
  }

  function drillDown(row) {
    state.path.push({ level: row.level, unit: row.unit, childLevel: CHILD_LEVEL[row.level] });
    afterDrill();
  }

  function drillTo(index) {
    state.path.length = index + 1;
    afterDrill();
  }

  function afterDrill() {
    updateHash();
    render();
    $("units-caption").focus(); // keyboard users land on what they opened
    loadTimeline();
  }

  // -- the timeline chart -------------------------------------------------------------------

  function chartNode() {
    const node = state.path[state.path.length - 1];
    return node && node.level !== "scope" ? node : null;
  }

  async function loadTimeline() {
    const node = chartNode();
    if (!node || !state.ballot) {
      state.timeline = null;
      drawChart();
      return;
    }
    const bucket = state.bucket;
    const params = new URLSearchParams({ level: node.level, bucket });
    if (node.level !== "national") params.set("unit", node.unit);
    let body;
    try {
      body = await (await api(`/v1/ballots/${encodeURIComponent(state.ballot.ballot_id)}/timeline?${params}`)).json();
    } catch (error) {
      if (error instanceof SignedOut) return;
      state.timeline = { level: node.level, unit: node.unit, bucket, points: new Map(), error: error.message };
      drawChart();
      return;
    }
    const current = chartNode();
    if (!current || current.level !== node.level || current.unit !== node.unit || state.bucket !== bucket) return;
    state.timeline = {
      level: node.level, unit: node.unit, bucket,
      points: new Map(body.buckets.map((b) => [Date.parse(b.hour || b.start), b.votes])),
    };
    drawChart();
  }

  function applyHours(hours) {
    const tl = state.timeline;
    if (!tl || !hours) return;
    const mine = hours.filter((h) => h.level === tl.level && h.unit === tl.unit);
    if (!mine.length) return;
    if (tl.bucket === "hour") {
      for (const h of mine) tl.points.set(Date.parse(h.hour), h.votes);
    } else if (!state.dayTimer) {
      // A day is the sum of its London hours: ask the server rather than redo the
      // time-zone arithmetic here.
      state.dayTimer = setTimeout(() => { state.dayTimer = null; loadTimeline(); }, DAY_REFRESH_MS);
    }
  }

  function svg(tag, attrs, text) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text != null) el.textContent = text;
    return el;
  }

  function drawChart() {
    const chart = $("chart");
    const desc = $("chart-desc");
    const node = chartNode();
    const tl = state.timeline;
    for (const b of document.querySelectorAll(".toggle button")) {
      b.setAttribute("aria-pressed", String(b.dataset.bucket === state.bucket));
    }
    chart.replaceChildren(desc);
    if (!node) {
      setText("chart-title", "Turnout over time");
      setText("chart-note", "Choose a unit in the table to see its turnout over time.");
      desc.textContent = "";
      chart.setAttribute("hidden", "");
      return;
    }
    chart.removeAttribute("hidden");
    setText("chart-title", `Turnout over time: ${nodeName(node)}`);
    if (!tl || tl.level !== node.level || tl.unit !== node.unit) {
      setText("chart-note", "Loading…");
      return;
    }
    setText("chart-note", tl.error ? `The timeline could not be read: ${tl.error}` : "Cumulative votes; the dashed line is the turnout threshold.");

    const width = Math.max(300, Math.round(chart.clientWidth || 800));
    const height = Math.round(Math.min(340, Math.max(200, width * 0.36)));
    chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const pad = { left: 64, right: 16, top: 16, bottom: 30 };
    const size = tl.bucket === "day" ? DAY_MS : HOUR_MS;

    const row = state.rows.get(rowKey(node.level, node.unit));
    const threshold = state.ballot ? state.ballot.threshold : null;
    const thresholdVotes = row && threshold != null ? neededFor(threshold, row.eligible, 0) : null;
    const points = [...tl.points.entries()].sort((a, b) => a[0] - b[0]);
    let total = 0;
    const steps = points.map(([t, votes]) => [t + size, (total += votes)]);

    const opens = Date.parse(state.ballot.opens_at);
    const closes = Date.parse(state.ballot.closes_at);
    let x0 = Number.isFinite(opens) ? opens : (points.length ? points[0][0] : Date.now() - DAY_MS);
    if (points.length) x0 = Math.min(x0, points[0][0]);
    let x1 = Math.min(Date.now(), Number.isFinite(closes) ? closes : Infinity);
    if (steps.length) x1 = Math.max(x1, steps[steps.length - 1][0]);
    if (!(x1 > x0)) x1 = x0 + size;
    const yMax = Math.max(thresholdVotes || 0, total, 1) * 1.1;
    const x = (t) => pad.left + ((t - x0) / (x1 - x0)) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / yMax) * (height - pad.top - pad.bottom);

    const base = y(0);
    chart.append(svg("line", { class: "axis", x1: pad.left, y1: base, x2: width - pad.right, y2: base }));
    chart.append(svg("line", { class: "axis", x1: pad.left, y1: pad.top, x2: pad.left, y2: base }));

    const coords = [[x(x0), y(0)]];
    let last = 0;
    for (const [t, cumulative] of steps) {
      coords.push([x(t), y(last)], [x(t), y(cumulative)]);
      last = cumulative;
    }
    coords.push([x(x1), y(last)]);
    const line = coords.map(([a, b], i) => `${i ? "L" : "M"}${a.toFixed(1)},${b.toFixed(1)}`).join("");
    chart.append(svg("path", { class: "area", d: `${line}L${x(x1).toFixed(1)},${base.toFixed(1)}Z` }));
    chart.append(svg("path", { class: "line", d: line }));

    chart.append(svg("text", { class: "tick", x: pad.left - 6, y: base, "text-anchor": "end", "dominant-baseline": "middle" }, "0"));
    chart.append(svg("text", { class: "tick", x: pad.left - 6, y: y(total), "text-anchor": "end", "dominant-baseline": "middle" }, fmt(total)));
    if (thresholdVotes != null) {
      const ty = y(thresholdVotes);
      chart.append(svg("line", { class: "threshold", x1: pad.left, y1: ty, x2: width - pad.right, y2: ty }));
      chart.append(svg("text", { class: "threshold-label", x: width - pad.right, y: ty - 6, "text-anchor": "end" },
        `Threshold ${pct(threshold)}: ${fmt(thresholdVotes)} votes`));
    }
    const spanDays = (x1 - x0) / DAY_MS;
    const when = new Intl.DateTimeFormat("en-GB", spanDays > 2
      ? { day: "numeric", month: "short", timeZone: "Europe/London" }
      : { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", timeZone: "Europe/London" });
    const ticks = Math.max(2, Math.min(6, Math.floor(width / 140)));
    for (let i = 0; i <= ticks; i++) {
      const t = x0 + ((x1 - x0) * i) / ticks;
      const anchor = i === 0 ? "start" : i === ticks ? "end" : "middle";
      chart.append(svg("text", { class: "tick", x: x(t), y: height - 8, "text-anchor": anchor }, when.format(t)));
    }
    desc.textContent = `Cumulative votes in ${nodeName(node)}: ${fmt(total)} so far` +
      (thresholdVotes == null ? "." : `; the threshold is ${fmt(thresholdVotes)} votes.`);
  }

  // -- CSV export --------------------------------------------------------------------------

  async function exportCsv() {
    const node = state.path[state.path.length - 1];
    if (!node || !state.ballot) return;
    const params = new URLSearchParams({ level: node.childLevel });
    if (node.level === "group" || node.level === "branch") params.set("within", node.unit);
    try {
      const response = await api(`/v1/ballots/${encodeURIComponent(state.ballot.ballot_id)}/turnout.csv?${params}`);
      const blob = await response.blob();
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      const disposition = response.headers.get("Content-Disposition") || "";
      const match = disposition.match(/filename="([^"]+)"/);
      link.download = match ? match[1] : "turnout.csv";
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (error) {
      if (!(error instanceof SignedOut)) setConnection("down", `Export failed: ${error.message}`);
    }
  }

  // -- wiring ---------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      start();
    });
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    $("ballot").addEventListener("change", (event) => selectBallot(event.target.value));
    $("export").addEventListener("click", exportCsv);
    for (const button of document.querySelectorAll(".toggle button")) {
      button.addEventListener("click", () => {
        if (state.bucket === button.dataset.bucket) return;
        state.bucket = button.dataset.bucket;
        state.timeline = null;
        drawChart();
        loadTimeline();
      });
    }
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(drawChart, 150);
    });
    start();
  });
})();
