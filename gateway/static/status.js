"use strict";
const REFRESH_MS = 2000;
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function show(id, value) { document.getElementById(id).textContent = String(value); }
function health(target) {
  if (target.down) return "down";
  return target.healthy === true ? "healthy" : "up";
}
function renderRoutes(routes) {
  const rows = routes.map((route) => {
    const row = el("tr");
    row.dataset.route = route.name;
    const serves = [route.http && "HTTP", route.websocket && "WebSocket"].filter(Boolean);
    row.append(el("td", route.name, "mono"), el("td", route.upstream || "-", "mono"),
               el("td", serves.join(" + ")));
    const targets = el("td");
    for (const target of route.targets || []) {
      const state = health(target);
      const item = el("span", target.address + " " + state, "target " + state);
      item.dataset.target = target.address;
      item.dataset.health = state;
      targets.append(item);
    }
    row.append(targets);
    const counts = route.counts || {};
    for (const key of ["requests", "server_errors", "upstream_errors", "websocket_open"]) {
      const cell = el("td", counts[key] ?? 0, "num");
      cell.dataset.count = key;
      row.append(cell);
    }
    return row;
  });
  document.querySelector("#routes tbody").replaceChildren(...rows);
}
function renderErrors(errors) {
  const rows = errors.map((error) => {
    const row = el("tr");
    const when = new Date(error.time_s * 1000).toLocaleTimeString([], {hour12: false});
    row.append(el("td", when, "mono"), el("td", error.route, "mono"),
               el("td", error.kind), el("td", error.message, "mono"));
    return row;
  });
  document.querySelector("#recent-errors tbody").replaceChildren(...rows);
  document.getElementById("no-errors").hidden = errors.length > 0;
}
function renewalText(renewal) {
  if (!renewal) return "-";
  if (renewal.last_error) {
    return renewal.failures + " failed, next try " + (renewal.next_attempt || "soon") +
      ": " + renewal.last_error;
  }
  return renewal.renew_at ? "renews " + renewal.renew_at : "ordering";
}
function renderCertificates(certificates) {
  const rows = certificates.map((certificate) => {
    const row = el("tr");
    row.dataset.hosts = certificate.hosts.join(",");
    const days = certificate.days_left;
    const state = days === null ? "missing" : days < 7 ? "expiring" : "valid";
    row.append(el("td", certificate.hosts.join(", "), "mono"), el("td", certificate.source),
               el("td", certificate.not_after || "none yet", "mono"),
               el("td", days === null ? "-" : days.toFixed(1), "num " + state),
               el("td", renewalText(certificate.renewal)));
    return row;
  });
  document.querySelector("#certificates tbody").replaceChildren(...rows);
  document.getElementById("certificates-section").hidden = certificates.length === 0;
}
function render(status) {
  show("rate", Number(status.requests_per_s).toFixed(1));
  show("requests", status.requests_total);
  // The bridges' own count when the source has it; else what observers reported.
  show("websockets", status.websocket_sessions ?? status.websocket_open);
  show("errors", status.upstream_errors_total);
  show("server-errors", status.server_errors_total);
  const pool = status.pool;
  show("pool", pool ? pool.connections + " (" + pool.idle + " idle)" : "-");
  const ready = document.getElementById("ready");
  ready.dataset.ready = String(status.ready.ok);
  ready.textContent = status.ready.ok ? "ready" : "not ready: " + status.ready.reason;
  renderRoutes(status.routes || []);
  renderCertificates(status.certificates || []);
  renderErrors(status.recent_errors || []);
  const when = new Date(status.time_s * 1000).toLocaleTimeString([], {hour12: false});
  show("updated", "updated " + when);
}
async function refresh() {
  const live = document.getElementById("live");
  try {
    const response = await fetch("status.json", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    live.dataset.state = "live";
    live.textContent = "live";
  } catch (error) {
    live.dataset.state = "stale";
    live.textContent = "disconnected";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
