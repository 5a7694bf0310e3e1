/* Ops console live updates: join the ops room over Socket.IO and refresh what changed.
   No framework: the server renders every page; this script re-fetches the current page
   and swaps in the fresh sections. Without Socket.IO it falls back to polling. */
(function () {
  "use strict";

  var body = document.body;
  var kind = body.getAttribute("data-ops-page");
  var transactionId = body.getAttribute("data-transaction-id");
  var announcer = document.getElementById("live-status");
  var POLL_MS = 15000;
  var timer = null;

  if (kind !== "list" && kind !== "detail") return;

  function setIndicator(state, text) {
    var el = document.getElementById("live-indicator");
    if (!el) return;
    el.setAttribute("data-live", state);
    el.textContent = text;
  }

  function announce(text) {
    if (announcer) announcer.textContent = text;
  }

  function sectionsToSwap() {
    if (kind === "list") return ["transaction-rows", "status-counts"];
    var ids = ["txn-summary", "txn-refunds", "txn-timeline", "txn-webhooks"];
    var input = document.getElementById("refund-amount");
    // Never wipe an amount someone is typing.
    if (!input || (!input.value && document.activeElement !== input)) ids.push("txn-actions");
    return ids;
  }

  function refresh(message, changedId) {
    var ids = sectionsToSwap();
    return fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.redirected || !response.ok) throw new Error("refresh failed: " + response.status);
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        ids.forEach(function (id) {
          var next = fresh.getElementById(id);
          var current = document.getElementById(id);
          if (next && current) current.replaceWith(document.importNode(next, true));
        });
        if (changedId) {
          var row = document.querySelector('tr[data-transaction-id="' + cssEscape(changedId) + '"]');
          if (row) row.classList.add("updated");
        }
        if (message) announce(message);
      })
      .catch(function () { /* the next update or poll tries again */ });
  }

  function cssEscape(value) {
    return window.CSS && CSS.escape ? CSS.escape(value) : String(value).replace(/["\\]/g, "\\$&");
  }

  var latest = { message: "", changedId: null };

  function schedule(message, changedId) {
    latest = { message: message, changedId: changedId };
    if (timer) return;  // one refresh is already due; it will show this change too
    // A busy list hears many updates: refetch it at most about once a second.
    timer = setTimeout(function () {
      timer = null;
      refresh(latest.message, latest.changedId);
    }, kind === "list" ? 1000 : 250);
  }

  function onUpdate(payload) {
    if (!payload || typeof payload.transaction_id !== "string") return;
    var status = String(payload.status || "").replace(/_/g, " ");
    if (kind === "list") {
      var row = document.querySelector('tr[data-transaction-id="' + cssEscape(payload.transaction_id) + '"]');
      var cell = row && row.querySelector('[data-field="status"] .status');
      if (cell && payload.status) {
        cell.textContent = status;
        cell.className = "status status-" + payload.status;
      }
      schedule("Transaction " + payload.transaction_id + " is now " + status + ".", payload.transaction_id);
    } else if (payload.transaction_id === transactionId) {
      schedule("This transaction changed; its status is " + status + ".");
    }
  }

  function poll() {
    setIndicator("polling", "Live updates: refreshing every 15 s");
    setInterval(function () { if (!document.hidden) refresh(""); }, POLL_MS);
  }

  if (typeof window.io !== "function") {
    poll();
    return;
  }
  var socket = window.io();
  socket.on("connect", function () { socket.emit("ops_join"); });
  socket.on("ops_joined", function () { setIndicator("on", "Live updates: on"); });
  socket.on("ops_error", function () { setIndicator("off", "Live updates: off (log in again)"); });
  socket.on("disconnect", function () { setIndicator("off", "Live updates: reconnecting…"); });
  socket.on("connect_error", function () { setIndicator("off", "Live updates: reconnecting…"); });
  socket.on("transaction_updated", onUpdate);
})();
