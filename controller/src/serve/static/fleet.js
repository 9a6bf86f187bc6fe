// Fleet's pages, live: follows /api/events (Server-Sent Events; the browser resumes with
// Last-Event-ID after a cut) and updates the rows of the nodes shown, by textContent only
// (a value is never parsed as HTML). Each row's age is counted here from its report's time;
// past the page's staleness bound the row says "stale", never the last state it heard.
(function () {
  "use strict";
  var body = document.body;
  var staleMs = Number(body.getAttribute("data-stale-ms") || "90000");

  function rows(name) {
    return document.querySelectorAll('tr[data-node="' + CSS.escape(name) + '"]');
  }

  function ageText(ms) {
    if (ms < 0) { ms = 0; }
    var s = Math.round(ms / 1000);
    if (s < 120) { return s + " s ago"; }
    var m = Math.round(s / 60);
    if (m < 120) { return m + " min ago"; }
    return Math.round(m / 60) + " h ago";
  }

  function setField(row, field, value) {
    var cell = row.querySelector('[data-field="' + field + '"]');
    if (cell) { cell.textContent = value === null || value === undefined ? "—" : String(value); }
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("tr[data-node]").forEach(function (row) {
      var at = Number(row.getAttribute("data-reported-ms") || "0");
      var state = row.getAttribute("data-state") || "unknown";
      if (at > 0) {
        setField(row, "age", ageText(now - at));
        if (now - at > staleMs && state !== "unreachable") { state = "stale"; }
      }
      setField(row, "state", state.replace("_", " "));
      row.className = "state-" + state;
    });
  }

  function apply(view) {
    rows(view.name).forEach(function (row) {
      row.setAttribute("data-reported-ms", view.reported_ms || "0");
      row.setAttribute("data-state", view.state);
      setField(row, "active", view.active);
      setField(row, "restarts", view.restarts);
      setField(row, "error", view.state === "unreachable" ? view.error : "");
    });
    tick();
  }

  function when(ms) {
    return ms ? new Date(ms).toISOString().replace(".000Z", "Z") : "—";
  }

  // A rollout's page: its state and each target's row follow the rollout's notes.
  function applyRollout(r) {
    if (r.id !== body.getAttribute("data-rollout")) { return; }
    // An ended rollout takes no control.
    if (!r.in_flight) {
      document.querySelectorAll("button[data-action]").forEach(function (b) { b.hidden = true; });
    }
    document.querySelectorAll("[data-rollout-field]").forEach(function (el) {
      var v = r[el.getAttribute("data-rollout-field")];
      el.textContent = v === null || v === undefined ? "" : String(v);
    });
    r.nodes.forEach(function (n) {
      document.querySelectorAll('tr[data-rollout-node="' + CSS.escape(n.node) + '"]').forEach(function (row) {
        setField(row, "outcome", n.outcome);
        // When the node's agent says its step ended (for the browser test's latency).
        row.setAttribute("data-ended-ms", n.ended_ms || "");
        setField(row, "step", n.step);
        setField(row, "started", n.started_ms ? when(n.started_ms) : null);
        setField(row, "ended", n.ended_ms ? when(n.ended_ms) : null);
        setField(row, "reason", n.reason || "");
      });
    });
  }

  // A rollout's controls: POST with this session's CSRF token; the answer, as text.
  document.querySelectorAll("button[data-action]").forEach(function (button) {
    button.addEventListener("click", function () {
      var id = body.getAttribute("data-rollout");
      var out = document.querySelector("[data-control-result]");
      fetch("/api/rollouts/" + encodeURIComponent(id) + "/" + button.getAttribute("data-action"), {
        method: "POST",
        headers: { "X-CSRF-Token": body.getAttribute("data-csrf") || "" },
        credentials: "same-origin"
      }).then(function (r) {
        return r.json().then(function (j) {
          if (out) { out.textContent = r.ok ? button.getAttribute("data-action") + ": sent" : (j.error || String(r.status)); }
        });
      }).catch(function (e) { if (out) { out.textContent = String(e); } });
    });
  });

  if (window.EventSource && body.hasAttribute("data-live")) {
    var source = new EventSource("/api/events");
    source.addEventListener("node", function (e) { apply(JSON.parse(e.data)); });
    source.addEventListener("rollout", function (e) { applyRollout(JSON.parse(e.data)); });
    source.addEventListener("reset", function () { window.location.reload(); });
    source.addEventListener("open", function () { body.setAttribute("data-live", "connected"); });
    source.addEventListener("error", function () { body.setAttribute("data-live", "reconnecting"); });
  }
  tick();
  setInterval(tick, 1000);
})();
