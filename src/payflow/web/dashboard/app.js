// The PayFlow dashboard: plain JavaScript, no build step, no third-party code.
//
// Every piece of data comes from the HTTP API with "Authorization: Bearer <key>"; the key is
// kept in sessionStorage (this tab only). The page polls every 2 seconds: GET /v1/queues for
// the overview (its rates are kept here to draw the charts), then the open view's own routes.
// Text from the API is always inserted as text (textContent), never as HTML.
"use strict";

(() => {
  const POLL_MS = 2000;
  const HISTORY_MS = 10 * 60 * 1000;
  const KEY_STORAGE = "payflow.apiKey";
  const PAGE = 25;
  const STATUSES = ["pending", "processing", "succeeded", "failed", "canceled",
                    "partially_refunded", "refunded"];
  const COLORS = ["#2563eb", "#d97706", "#0d9488", "#9333ea"];
  const QUEUE_ROLES = ["payments", "webhooks"];

  const $ = (id) => document.getElementById(id);
  const state = { key: "", overview: null, samples: [], view: null, timer: null,
                  deadQueue: null, signedIn: false };

  // --- DOM helpers ---------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttributes(el, attrs);
    appendAll(el, children);
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    setAttributes(el, attrs);
    appendAll(el, children);
    return el;
  }

  function setAttributes(el, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.setAttribute("class", value);
      else if (name === "text") el.textContent = value;
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function appendAll(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
  }

  function table(columns, rows, empty) {
    if (!rows.length) return h("p", { class: "empty", text: empty });
    return h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null,
                                                           text: c.title })))),
      h("tbody", {}, rows)));
  }

  function td(content, cls) {
    return h("td", { class: cls || null }, content);
  }

  function badge(text, kind) {
    return h("span", { class: `badge badge-${kind || tone(text)}`, text: label(text) });
  }

  function tone(value) {
    switch (value) {
      case "succeeded": case "success": case "alive": case "enabled": case "payment.success":
      case "refund.success":
        return "good";
      case "failed": case "dead": case "refused": case "disabled": case "payment.failed":
      case "refund.failed":
        return "bad";
      case "pending": case "processing": case "retrying":
        return "warn";
      case "partially_refunded": case "refunded":
        return "info";
      default:
        return "neutral";
    }
  }

  const label = (value) => String(value).replace(/_/g, " ");
  const mono = (text, title) => h("span", { class: "mono", title: title || null, text });

  // --- formatting ----------------------------------------------------------------------------

  const dateFormat = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
    hour12: false });
  const number = new Intl.NumberFormat(undefined);

  function when(iso) {
    if (!iso) return h("span", { class: "muted", text: "—" });
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return mono(iso);
    return h("span", { class: "when", title: iso },
      h("time", { datetime: iso, text: dateFormat.format(date) }),
      h("span", { class: "ago", text: ago(date) }));
  }

  function ago(date) {
    const seconds = Math.max(0, (Date.now() - date.getTime()) / 1000);
    if (seconds < 60) return `${Math.round(seconds)} s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
    return `${Math.round(seconds / 86400)} d ago`;
  }

  function money(amount, currency) {
    if (amount === null || amount === undefined) return "—";
    if (!currency) return number.format(amount);
    try {
      const format = new Intl.NumberFormat(undefined, { style: "currency", currency });
      const digits = format.resolvedOptions().maximumFractionDigits;
      return format.format(amount / 10 ** digits);
    } catch (e) {
      return `${number.format(amount)} ${currency}`;
    }
  }

  const rate = (value) => (value || 0).toFixed(2);

  // --- the API -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, problem) {
      const detail = problem && (problem.detail || problem.title);
      super(detail || `HTTP ${status}`);
      this.status = status;
      this.problem = problem || {};
    }
  }

  function idempotencyKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return "dash-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // A path relative to the page (/dashboard), so "v1/queues" is /v1/queues on this origin.
  async function api(path, { method = "GET", body, signOutOn401 = true } = {}) {
    const headers = { Accept: "application/json" };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method === "POST") headers["Idempotency-Key"] = idempotencyKey();
    let response;
    try {
      response = await fetch(path, { method, headers, cache: "no-store", credentials: "omit",
                                     body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ApiError(0, { detail: "The daemon does not answer." });
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const error = new ApiError(response.status, data);
      if (response.status === 401 && signOutOn401) {
        signOut(`The API key was refused: ${error.message}`);
      }
      throw error;
    }
    return data;
  }

  const enc = encodeURIComponent;

  // --- signing in and out --------------------------------------------------------------------

  function showLogin(message) {
    state.signedIn = false;
    $("app").hidden = true;
    $("login").hidden = false;
    const error = $("login-error");
    error.hidden = !message;
    error.textContent = message || "";
    $("api-key").focus();
  }

  function signOut(message) {
    clearTimeout(state.timer);
    state.key = "";
    state.overview = null;
    state.samples = [];
    sessionStorage.removeItem(KEY_STORAGE);
    showLogin(message);
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("api-key");
    const button = $("sign-in");
    state.key = input.value.trim();
    button.disabled = true;
    try {
      await api("v1/queues", { signOutOn401: false });
      sessionStorage.setItem(KEY_STORAGE, state.key);
      input.value = "";
      showApp();
    } catch (e) {
      state.key = "";
      showLogin(e.status === 401 ? "This API key was refused: it is not a key of this daemon."
                                 : `Cannot sign in: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }

  function showApp() {
    state.signedIn = true;
    $("login").hidden = true;
    $("app").hidden = false;
    route();
    clearTimeout(state.timer);
    tick();
  }

  // --- polling and routing -------------------------------------------------------------------

  async function tick() {
    try {
      const overview = await api("v1/queues");
      state.overview = overview;
      remember(overview);
      updateNav(overview);
      setLive(true);
      await refreshView();
    } catch (e) {
      if (e.status !== 401) setLive(false, e.message);
    } finally {
      if (state.signedIn) {
        clearTimeout(state.timer);
        state.timer = setTimeout(tick, POLL_MS);
      }
    }
  }

  // Refresh the open view; what keeps it from showing its data is said above it.
  async function refreshView() {
    const view = state.view;
    if (!view) return;
    const banner = $("view-error");
    try {
      await view.refresh();
      if (view === state.view) banner.hidden = true;
    } catch (e) {
      if (e.status === 401 || view !== state.view) return;
      banner.textContent = e.message;
      banner.hidden = false;
    }
  }

  // A refresh answered after a later one started (a filter changed meanwhile) is dropped.
  function latestOnly() {
    let generation = 0;
    return (work) => async () => {
      generation += 1;
      const mine = generation;
      const render = await work();
      if (mine === generation) render();
    };
  }

  function remember(overview) {
    const now = Date.now();
    state.samples.push({ t: now, rates: overview.rates });
    while (state.samples.length && state.samples[0].t < now - HISTORY_MS) state.samples.shift();
  }

  function setLive(ok, why) {
    const live = $("live");
    live.className = ok ? "live live-ok" : "live live-down";
    live.textContent = ok ? `Live · updated ${new Date().toLocaleTimeString()}`
                          : "Offline · retrying";
    live.title = ok ? "The page polls the API every 2 seconds" : why || "";
  }

  function updateNav(overview) {
    const dead = Object.values(overview.queues).reduce((sum, q) => sum + q.dead, 0);
    const count = $("dead-count");
    count.hidden = dead === 0;
    count.textContent = number.format(dead);
  }

  function notify(message, kind = "good") {
    const notice = $("notice");
    notice.className = `notice notice-${kind}`;
    notice.textContent = message;
    notice.hidden = false;
    clearTimeout(notify.timer);
    notify.timer = setTimeout(() => { notice.hidden = true; }, kind === "bad" ? 10000 : 5000);
  }

  // Run an action; say what it did, or why it failed; refresh the view.
  async function act(work) {
    try {
      notify(await work());
    } catch (e) {
      if (e.status !== 401) notify(e.message, "bad");
    }
    refreshView();
  }

  const VIEWS = { overview: overviewView, payments: paymentsView, endpoints: endpointsView,
                  dead: deadView };

  function route() {
    if (!state.signedIn) return;
    const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
    const view = name in VIEWS ? name : "overview";
    for (const link of document.querySelectorAll("#nav a")) {
      link.classList.toggle("active", link.dataset.view === view);
    }
    const root = $("view");
    root.replaceChildren();
    const id = rest.length ? decodeURIComponent(rest.join("/")) : "";
    $("view-error").hidden = true;
    state.view = view === "payments" && id ? paymentView(root, id) : VIEWS[view](root);
    refreshView();
  }

  // --- dialogs -------------------------------------------------------------------------------

  function dialog({ title, body, ok = "OK", cancel = "Cancel", danger = false }) {
    const box = $("dialog");
    $("dialog-title").textContent = title;
    $("dialog-body").replaceChildren(...[body].flat());
    const okButton = $("dialog-ok");
    okButton.textContent = ok;
    okButton.className = danger ? "danger" : "primary";
    $("dialog-cancel").hidden = cancel === null;
    $("dialog-cancel").textContent = cancel || "";
    box.returnValue = "";
    return new Promise((resolve) => {
      box.addEventListener("close", () => resolve(box.returnValue === "ok"), { once: true });
      box.showModal();
      (cancel === null ? okButton : $("dialog-cancel")).focus();
    });
  }

  const para = (text) => h("p", { text });

  // --- overview ------------------------------------------------------------------------------

  function overviewView(root) {
    const subtitle = h("p", { class: "subtitle" });
    const cards = h("div", { class: "queue-cards" });
    const throughput = h("div", { class: "chart" });
    const failures = h("div", { class: "chart" });
    const daemons = h("div");
    root.append(
      h("div", { class: "page-head" }, h("h1", { text: "Overview" }), subtitle),
      cards,
      h("div", { class: "charts" },
        h("section", { class: "card" },
          h("h2", { text: "Throughput" }),
          h("p", { class: "hint", text: "Jobs done per second, 1-minute average" }), throughput),
        h("section", { class: "card" },
          h("h2", { text: "Failure rate" }),
          h("p", { class: "hint", text: "Share of job runs retried or dead, 1-minute average" }),
          failures)),
      h("section", { class: "card" }, h("h2", { text: "Daemons" }), daemons));

    return {
      async refresh() {
        const overview = state.overview || await api("v1/queues");
        const names = Object.keys(overview.queues);
        const alive = overview.daemons.filter((d) => d.alive).length;
        subtitle.textContent = `${alive} of ${overview.daemons.length} daemons alive · store: ` +
                               `${overview.stores.join(", ") || "—"}`;
        cards.replaceChildren(...names.map((name, i) => queueCard(name, i, overview)));
        drawChart(throughput, names.map((name, i) => ({
          name, color: COLORS[i % COLORS.length],
          points: state.samples.map((s) => ({ t: s.t, v: (s.rates[name] || {}).done || 0 })),
        })), { format: (v) => (v < 10 ? String(+v.toFixed(2)) : number.format(Math.round(v))),
               unit: "jobs per second", floor: 1 });
        drawChart(failures, names.map((name, i) => ({
          name, color: COLORS[i % COLORS.length],
          points: state.samples.map((s) => ({ t: s.t, v: failureRate(s.rates[name]) })),
        })), { format: (v) => `${Math.round(v)}%`, unit: "percent", floor: 10, ceiling: 100 });
        daemons.replaceChildren(daemonTable(overview));
      },
    };
  }

  function failureRate(rates) {
    if (!rates) return 0;
    const failed = (rates.retried || 0) + (rates.dead || 0);
    const total = failed + (rates.done || 0);
    return total > 0 ? (100 * failed) / total : null; // null: no job ran, no point
  }

  function queueCard(name, index, overview) {
    const depth = overview.queues[name];
    const rates = overview.rates[name] || {};
    const stat = (title, value, cls) => h("div", { class: `stat ${cls || ""}` },
      h("span", { class: "stat-label", text: title }),
      h("span", { class: "stat-value", text: number.format(value) }));
    return h("section", { class: "card queue-card", "data-queue": name },
      h("div", { class: "queue-head" },
        h("h2", {}, h("span", { class: `swatch swatch-${index % COLORS.length}` }), name),
        h("span", { class: "muted", text: QUEUE_ROLES[index] || "" })),
      h("div", { class: "stats" },
        stat("Ready", depth.ready), stat("Processing", depth.processing),
        stat("Delayed", depth.delayed),
        stat("Dead", depth.dead, depth.dead > 0 ? "stat-bad" : "")),
      h("p", { class: "rates" },
        h("strong", { text: rate(rates.done) }), " done/s · ",
        h("strong", { text: rate(rates.retried) }), " retried/s · ",
        h("strong", { text: rate(rates.dead) }), " dead/s"));
  }

  function daemonTable(overview) {
    const columns = [{ title: "Daemon" }, { title: "Host" }, { title: "PID", num: true },
                     { title: "Store" }, { title: "Heartbeat", num: true }, { title: "State" },
                     { title: "In flight", num: true }, { title: "Done/s", num: true }];
    const rows = overview.daemons.map((d) => {
      const inFlight = Object.values(d.in_flight).reduce((a, b) => a + b, 0);
      const done = Object.values(d.rates || {}).reduce((a, r) => a + (r.done || 0), 0);
      const age = d.heartbeat_age_seconds;
      return h("tr", { "data-daemon": d.id },
        td(mono(d.id)), td(d.host || "—"), td(d.pid ?? "—", "num"), td(d.store || "—"),
        td(age === null ? "—" : `${age.toFixed(1)} s ago`, "num"),
        td(badge(d.alive ? "alive" : "dead")), td(number.format(inFlight), "num"),
        td(rate(done), "num"));
    });
    return table(columns, rows, "No daemon is registered on this Redis.");
  }

  // An SVG line chart of the samples kept by this page.
  function drawChart(container, series, { format, unit, floor, ceiling }) {
    const W = 560; const H = 200; const left = 44; const right = 10; const top = 10;
    const bottom = 24;
    const now = Date.now();
    const first = state.samples.length ? state.samples[0].t : now;
    const span = Math.min(HISTORY_MS, Math.max(30000, now - first));
    const x = (t) => left + ((t - (now - span)) / span) * (W - left - right);
    const values = series.flatMap((s) => s.points.map((p) => p.v)).filter((v) => v !== null);
    // 2-5 grid lines at round values (0.5, 1, 2, 2.5, 5, 10, ...)
    const highest = Math.max(floor, ...values) * 1.1;
    const step = niceCeiling(highest / 4);
    const max = Math.min(ceiling || Infinity, step * Math.max(2, Math.ceil(highest / step)));
    const y = (v) => top + (1 - Math.min(v, max) / max) * (H - top - bottom);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img",
                               "aria-label": `chart in ${unit}` });
    for (let v = 0; v <= max + step / 1000; v += step) {
      chart.append(
        svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "grid" }),
        svg("text", { x: left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" },
            format(v)));
    }
    const since = span < 60000 ? `−${Math.round(span / 1000)} s`
                               : `−${Math.round(span / 60000)} min`;
    chart.append(
      svg("text", { x: left, y: H - 6, class: "axis" }, since),
      svg("text", { x: W - right, y: H - 6, class: "axis", "text-anchor": "end" }, "now"));
    for (const s of series) {
      // A null value (nothing to measure) breaks the line; a lone point is a dot.
      let d = "";
      let run = [];
      const flush = () => {
        if (run.length === 1) {
          chart.append(svg("circle", { cx: x(run[0].t), cy: y(run[0].v), r: 2.5, fill: s.color }));
        }
        run.forEach((p, i) => { d += `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`; });
        run = [];
      };
      for (const p of s.points) {
        if (p.v === null) flush();
        else run.push(p);
      }
      flush();
      chart.append(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": 2,
                                 "stroke-linejoin": "round", "data-series": s.name }));
    }
    const legend = h("div", { class: "legend" }, series.map((s, i) => {
      const last = s.points.length ? s.points[s.points.length - 1].v : null;
      return h("span", { class: "legend-item" },
        h("span", { class: `swatch swatch-${i % COLORS.length}` }), s.name,
        h("strong", { text: last === null ? "—" : format(last) }));
    }));
    const note = state.samples.length < 3
      ? h("p", { class: "hint", text: "Collecting samples: the chart fills while this page is open." })
      : null;
    container.replaceChildren(chart, legend, note || "");
  }

  function niceCeiling(value) {
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (value <= step * power) return step * power;
    }
    return 10 * power;
  }

  // --- payments ------------------------------------------------------------------------------

  function paymentsView(root) {
    let limit = PAGE;
    const status = h("select", { id: "filter-status", "aria-label": "Status" },
      h("option", { value: "", text: "All statuses" }),
      STATUSES.map((s) => h("option", { value: s, text: label(s) })));
    const after = h("input", { id: "filter-created", type: "datetime-local", step: 1,
                               "aria-label": "Created after" });
    const reset = () => { limit = PAGE; view.refresh(); };
    status.addEventListener("change", reset);
    after.addEventListener("change", reset);
    const clear = h("button", { type: "button", class: "ghost", text: "Clear filters",
                                onclick: () => { status.value = ""; after.value = ""; reset(); } });
    const summary = h("p", { class: "muted" });
    const list = h("div");
    const more = h("button", { type: "button", class: "ghost", hidden: true, text: "Show more",
                               onclick: () => { limit = Math.min(100, limit + PAGE); view.refresh(); } });
    root.append(
      h("div", { class: "page-head" }, h("h1", { text: "Payments" })),
      h("section", { class: "card" },
        h("div", { class: "toolbar" },
          h("label", { class: "field" }, h("span", { text: "Status" }), status),
          h("label", { class: "field" }, h("span", { text: "Created after" }), after),
          clear, h("span", { class: "spacer" }), summary),
        list, h("div", { class: "more" }, more)));

    const view = {
      refresh: latestOnly()(async () => {
        const query = new URLSearchParams({ limit: String(limit) });
        if (status.value) query.set("status", status.value);
        const since = after.value ? new Date(after.value) : null;
        if (since && !Number.isNaN(since.getTime())) {
          query.set("created[gte]", String(Math.floor(since.getTime() / 1000)));
        }
        const page = await api(`v1/payments?${query}`);
        return () => {
          summary.textContent = page.data.length
            ? `${page.data.length}${page.has_more ? "+" : ""} payments, newest first` : "";
          more.hidden = !page.has_more || limit >= 100;
          list.replaceChildren(paymentTable(page.data));
        };
      }),
    };
    return view;
  }

  function paymentTable(payments) {
    const columns = [{ title: "Payment" }, { title: "Amount", num: true }, { title: "Method" },
                     { title: "Status" }, { title: "Created" }];
    const rows = payments.map((p) => h("tr", {
      class: "clickable", "data-payment": p.id, tabindex: 0,
      onclick: () => { location.hash = `#/payments/${enc(p.id)}`; },
      onkeydown: (e) => { if (e.key === "Enter") location.hash = `#/payments/${enc(p.id)}`; },
    }, td(mono(p.id)), td(money(p.amount, p.currency), "num"), td(methodText(p)),
       td(badge(p.status)), td(when(p.created_at))));
    return table(columns, rows, "No payment matches these filters.");
  }

  function methodText(p) {
    const d = p.method_details || {};
    const detail = d.vpa || (d.last4 && `${d.brand || "card"} ····${d.last4}`) || d.bank_code ||
                   d.wallet || "";
    return h("span", {}, label(p.method), detail ? h("span", { class: "muted", text: ` · ${detail}` }) : "");
  }

  function paymentView(root, id) {
    const head = h("div", { class: "page-head" });
    const facts = h("dl", { class: "facts" });
    const refunds = h("div");
    const events = h("div", { class: "events" });
    root.append(
      h("a", { href: "#/payments", class: "back", text: "← Payments" }), head,
      h("section", { class: "card" }, facts),
      h("section", { class: "card" }, h("h2", { text: "Refunds" }), refunds),
      h("section", { class: "card" }, h("h2", { text: "Events and delivery attempts" }), events));

    return {
      async refresh() {
        const path = `v1/payments/${enc(id)}`;
        const [payment, refundList, eventList] = await Promise.all([
          api(path), api(`${path}/refunds`), api(`${path}/events`)]);
        const attempts = await Promise.all(eventList.data.map(
          (e) => api(`v1/events/${enc(e.id)}/attempts`)));
        head.replaceChildren(h("h1", {}, h("span", { class: "mono title-id", text: payment.id }),
                               badge(payment.status)));
        facts.replaceChildren(...paymentFacts(payment));
        refunds.replaceChildren(refundTable(refundList.data));
        events.replaceChildren(...(eventList.data.length
          ? eventList.data.map((e, i) => eventCard(e, attempts[i].data))
          : [h("p", { class: "empty", text: "No event yet: one is sent when the payment " +
                                            "reaches a final state." })]));
      },
    };
  }

  function paymentFacts(p) {
    const fact = (term, value) => [h("dt", { text: term }), h("dd", {}, value)];
    const metadata = Object.entries(p.metadata || {});
    return [
      fact("Amount", h("span", { class: "num-text", text: money(p.amount, p.currency) })),
      fact("Refunded", h("span", { class: "num-text",
                                   text: money(p.amount_refunded, p.currency) })),
      fact("Method", methodText(p)),
      fact("Created", when(p.created_at)),
      fact("Updated", when(p.updated_at)),
      p.failure_code ? fact("Failure", `${p.failure_code}: ${p.failure_message || ""}`) : [],
      metadata.length ? fact("Metadata", metadata.map(([k, v]) => h("span", { class: "chip",
                                                                        text: `${k}: ${v}` }))) : [],
    ].flat();
  }

  function refundTable(refunds) {
    const columns = [{ title: "Refund" }, { title: "Amount", num: true }, { title: "Status" },
                     { title: "Created" }, { title: "Failure" }];
    const rows = refunds.map((r) => h("tr", { "data-refund": r.id },
      td(mono(r.id)), td(money(r.amount, r.currency), "num"), td(badge(r.status)),
      td(when(r.created_at)), td(r.failure_code || "—")));
    return table(columns, rows, "No refunds.");
  }

  function eventCard(event, attempts) {
    const retry = h("button", { type: "button", class: "ghost small", text: "Deliver again",
      onclick: () => act(async () => {
        await api(`v1/events/${enc(event.id)}/retry`, { method: "POST" });
        return `Event ${event.id} is queued for delivery again.`;
      }) });
    const columns = [{ title: "#", num: true }, { title: "Endpoint" }, { title: "Outcome" },
                     { title: "HTTP", num: true }, { title: "Latency", num: true },
                     { title: "At" }, { title: "Error" }, { title: "Next try" }];
    const rows = attempts.map((a) => h("tr", { "data-attempt": a.id },
      td(String(a.attempt), "num"), td(mono(a.endpoint_id)), td(badge(a.outcome)),
      td(a.status === null ? "—" : String(a.status), "num"),
      td(`${number.format(Math.round(a.latency_ms))} ms`, "num"), td(when(a.at)),
      td(a.error ? h("span", { class: "error-text", text: a.error })
                 : h("span", { class: "muted", text: "—" })),
      td(when(a.next_retry_at))));
    return h("div", { class: "event", "data-event": event.id },
      h("div", { class: "event-head" }, badge(event.type), mono(event.id), when(event.timestamp),
        h("span", { class: "spacer" }), retry),
      table(columns, rows, "No delivery attempt yet."));
  }

  // --- webhook endpoints ---------------------------------------------------------------------

  function endpointsView(root) {
    const list = h("div");
    root.append(
      h("div", { class: "page-head" }, h("h1", { text: "Webhook endpoints" }),
        h("p", { class: "subtitle", text: "Delivery health over the last 24 hours" })),
      h("section", { class: "card" }, list));
    return {
      async refresh() {
        const endpoints = (await api("v1/webhook_endpoints")).data;
        const health = await Promise.all(endpoints.map(
          (ep) => api(`v1/webhook_endpoints/${enc(ep.id)}/health`).catch(() => null)));
        list.replaceChildren(endpointTable(endpoints, health));
      },
    };
  }

  function endpointTable(endpoints, health) {
    const columns = [{ title: "Endpoint" }, { title: "State" }, { title: "Last success" },
                     { title: "Failure streak", num: true }, { title: "Attempts (failed)", num: true },
                     { title: "Actions", num: true }];
    const rows = endpoints.map((ep, i) => {
      const hl = health[i] || {};
      const state_ = ep.disabled ? badge("disabled") : badge("enabled");
      const streak = hl.failure_streak || 0;
      return h("tr", { "data-endpoint": ep.id },
        td(h("div", { class: "stack" }, h("span", { class: "mono strong", text: ep.url }),
          h("span", { class: "muted small" }, `${ep.id} · `,
            ep.enabled_events.includes("*") ? "all events" : ep.enabled_events.join(", "),
            ep.description ? ` · ${ep.description}` : ""))),
        td(h("div", { class: "stack" }, state_,
          ep.disabled_reason ? h("span", { class: "error-text small", text: ep.disabled_reason })
                             : "")),
        td(hl.last_success_at ? when(hl.last_success_at)
                              : h("span", { class: "muted", text: "none in 24 h" })),
        td(h("div", { class: "stack end" },
          h("span", { class: streak ? "bad-text strong" : "", text: String(streak) }),
          ep.failing_since ? h("span", { class: "muted small" }, "failing since ",
                                when(ep.failing_since)) : ""), "num"),
        td(`${number.format(hl.attempts || 0)} (${number.format(hl.failures || 0)})`, "num"),
        td(h("div", { class: "actions" }, endpointActions(ep))));
    });
    return table(columns, rows, "No webhook endpoint: create one with POST /v1/webhook_endpoints " +
                                "or [webhooks] endpoints.");
  }

  function endpointActions(ep) {
    const path = `v1/webhook_endpoints/${enc(ep.id)}`;
    const button = (text, onclick, cls) => h("button", { type: "button", class: cls || "ghost small",
                                                         text, onclick, "data-action": text });
    const enable = ep.disabled
      ? button("Enable", () => act(async () => {
        await api(path, { method: "PATCH", body: { disabled: false } });
        return `${ep.url} is enabled again.`;
      }), "primary small")
      : button("Disable", async () => {
        if (!await dialog({ title: "Disable this endpoint?", ok: "Disable", danger: true,
                            body: para(`${ep.url} gets no deliveries while disabled.`) })) return;
        act(async () => {
          await api(path, { method: "PATCH", body: { disabled: true } });
          return `${ep.url} is disabled.`;
        });
      });
    const rotate = button("Rotate secret", async () => {
      if (!await dialog({ title: "Rotate the signing secret?", ok: "Rotate",
                          body: para("A new secret signs from now on; the current one keeps " +
                                     "signing too during the rotation grace period.") })) return;
      try {
        const rotated = await api(`${path}/rotate_secret`, { method: "POST" });
        await dialog({ title: "New signing secret", cancel: null, ok: "Done", body: [
          para("Copy it now: it is not shown again."),
          h("pre", { class: "secret", text: rotated.secret }),
          para(`The previous secret signs too until ${rotated.previous_secrets_expire_at
            .map((t) => dateFormat.format(new Date(t))).join(", ") || "now"}.`)] });
        notify(`The secret of ${ep.url} was rotated.`);
      } catch (e) {
        if (e.status !== 401) notify(e.message, "bad");
      }
    });
    const recover = button("Recover", async () => {
      if (!await dialog({ title: "Recover missed deliveries?", ok: "Recover",
                          body: para(`Queue again every event of the last 24 hours that ${ep.url} ` +
                                     "did not receive (dead, refused, skipped).") })) return;
      act(async () => {
        const done = await api(`${path}/recover`, { method: "POST" });
        return `Queued ${done.requeued} event${done.requeued === 1 ? "" : "s"} again for ${ep.url}.`;
      });
    });
    return [enable, rotate, recover];
  }

  // --- dead letters --------------------------------------------------------------------------

  function deadView(root) {
    const tabs = h("div", { class: "segmented", role: "tablist" });
    const summary = h("p", { class: "muted" });
    const list = h("div");
    const replayAll = h("button", { type: "button", class: "primary", text: "Replay all",
                                    id: "replay-all", onclick: () => replayEvery() });
    const purge = h("button", { type: "button", class: "danger", text: "Purge…", id: "purge",
                                onclick: () => purgeAll() });
    root.append(
      h("div", { class: "page-head" }, h("h1", { text: "Dead letters" }),
        h("p", { class: "subtitle", text: "Jobs that will not be tried again, newest first" })),
      h("section", { class: "card" },
        h("div", { class: "toolbar" }, tabs, h("span", { class: "spacer" }), summary, replayAll,
          purge),
        list));

    let total = 0;
    const queue = () => state.deadQueue;

    async function replayEvery() {
      if (!await dialog({ title: `Replay every dead job of ${queue()}?`, ok: `Replay ${total}`,
                          body: para(`Each of the ${total} jobs goes back on ${queue()} and is ` +
                                     "tried again from its first attempt.") })) return;
      act(async () => {
        const done = await api("v1/dead_letters/replay", { method: "POST",
                                                           body: { queue: queue(), all: true } });
        return `Replayed ${done.replayed} job${done.replayed === 1 ? "" : "s"} onto ${queue()}.`;
      });
    }

    async function purgeAll() {
      if (!await dialog({ title: `Purge the dead letters of ${queue()}?`, danger: true,
                          ok: `Delete ${total} entr${total === 1 ? "y" : "ies"}`,
                          body: para(`All ${total} entries are deleted for good; their jobs ` +
                                     "are never tried again. This cannot be undone.") })) return;
      act(async () => {
        const done = await api(`v1/dead_letters?queue=${enc(queue())}`, { method: "DELETE" });
        return `Deleted ${done.deleted} dead letter${done.deleted === 1 ? "" : "s"} of ${queue()}.`;
      });
    }

    const view = {
      refresh: latestOnly()(async () => {
        const overview = state.overview || await api("v1/queues");
        const names = Object.keys(overview.queues);
        if (!names.includes(state.deadQueue)) state.deadQueue = names[0];
        const shown = queue();
        const page = await api(`v1/dead_letters?queue=${enc(shown)}&limit=100`);
        const count = (name) => (name === shown ? page.total : overview.queues[name].dead);
        return () => {
          total = page.total;
          tabs.replaceChildren(...names.map((name) => h("button", {
            type: "button", role: "tab", "aria-selected": String(name === shown),
            class: name === shown ? "selected" : "", "data-queue": name,
            onclick: () => { state.deadQueue = name; view.refresh(); },
          }, name, h("span", { class: "count", text: number.format(count(name)) }))));
          summary.textContent = page.total > page.data.length
            ? `newest ${page.data.length} of ${number.format(page.total)}` : "";
          replayAll.disabled = purge.disabled = total === 0;
          list.replaceChildren(deadTable(page.data));
        };
      }),
    };
    return view;
  }

  function deadTable(entries) {
    const columns = [{ title: "Entry" }, { title: "Failed" }, { title: "Reason" },
                     { title: "Job" }, { title: "" }];
    const rows = entries.map((entry) => h("tr", { "data-entry": entry.id },
      td(mono(entry.id)), td(when(entry.failed_at)),
      td(h("span", { class: "reason", text: entry.reason })),
      td(jobSummary(entry.job)),
      td(h("button", { type: "button", class: "ghost small", text: "Replay", "data-action": "replay",
        onclick: () => act(async () => {
          const done = await api("v1/dead_letters/replay", {
            method: "POST", body: { queue: entry.queue, id: entry.id } });
          return `Replayed ${done.replayed} job onto ${entry.queue}.`;
        }) }), "end")));
    return table(columns, rows, "No dead letters in this queue.");
  }

  // A JSON envelope as its kind and ids; anything else as its text.
  function jobSummary(job) {
    let body = null;
    try {
      body = JSON.parse(job);
    } catch (e) {
      body = null;
    }
    if (!body || typeof body !== "object" || Array.isArray(body) || !body.kind) {
      return h("span", { class: "mono job", title: job, text: job });
    }
    const ids = ["event_id", "payment_id", "refund_id", "endpoint"]
      .filter((k) => typeof body[k] === "string").map((k) => body[k]);
    return h("span", { class: "job", title: job }, h("span", { class: "chip", text: body.kind }),
      mono(ids.join(" → ")), body.attempt ? h("span", { class: "muted",
                                                         text: ` · attempt ${body.attempt}` }) : "");
  }

  // --- start ---------------------------------------------------------------------------------

  async function start() {
    $("login-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    window.addEventListener("hashchange", route);
    state.key = sessionStorage.getItem(KEY_STORAGE) || "";
    if (state.key) {
      showApp();
      return;
    }
    try {
      await api("v1/queues", { signOutOn401: false }); // an API without keys needs no sign-in
      showApp();
    } catch (e) {
      showLogin(e.status === 401 ? "" : `The daemon does not answer: ${e.message}`);
    }
  }

  start();
})();
