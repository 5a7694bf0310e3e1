/* The waiting page: follow one payment live until it is final.
 *
 * Joins the transaction's Socket.IO room (the server pushes the current status on join and
 * every change after it); polls /check-payment-status every few seconds while the socket is
 * not connected or has not joined, and asks it now and then even while it is (a push lost on
 * its way, say a message queue failing between the join and the change, would otherwise leave
 * the page waiting for ever); stops all of it once the status is final. While the payment is
 * pending, a Back press shows a notice instead of leaving, and closing the tab asks first;
 * both guards go away once the result is in.
 */
(function () {
  "use strict";

  var root = document.getElementById("payment");
  if (!root) { return; }
  var words = JSON.parse(document.getElementById("payment-texts").textContent);
  var txId = root.dataset.transactionId;
  var statusUrl = root.dataset.statusUrl;
  var pollMs = (parseInt(root.dataset.pollSeconds, 10) || 5) * 1000;
  var checkMs = (parseInt(root.dataset.checkSeconds, 10) || 30) * 1000;
  var statusLine = document.getElementById("payment-status");
  var backNotice = document.getElementById("back-guard");
  var connectionNote = document.getElementById("connection-note");
  var status = root.dataset.status;
  var socket = null;
  var polling = false;
  var pollTimer = null;
  var connectTimer = null;
  var checkTimer = null;
  var guarded = false;
  var GUARD_STATE = { paymentGuard: txId };

  function isFinal(value) { return value !== "pending"; }

  // ---- showing a status -------------------------------------------------------------
  function show(value, moveFocus) {
    if (!value || value === status && root.dataset.shown === "1") { return; }
    var screen = words.screens[value] || "pending";
    status = value;
    root.dataset.status = value;
    root.dataset.shown = "1";
    statusLine.textContent = words.text[value] || value;
    statusLine.className = "status-line status-" + value;
    if (words.labels[value]) { document.title = document.title.replace(/^[^·]*·/, "Payment: " + words.labels[value].toLowerCase() + " ·"); }
    Array.prototype.forEach.call(root.querySelectorAll("[data-screen]"), function (el) {
      el.hidden = el.dataset.screen !== screen;
    });
    if (isFinal(value)) { finish(moveFocus); }
  }

  function finish(moveFocus) {
    stopPolling();
    clearTimeout(connectTimer);
    clearInterval(checkTimer);
    document.removeEventListener("visibilitychange", checkIfShown);
    if (socket) {
      socket.off();
      socket.disconnect();
      socket = null;
    }
    releaseGuards(true);
    connectionNote.hidden = true;
    root.dataset.finalAt = String(Date.now());
    if (moveFocus) {
      var heading = root.querySelector("[data-screen]:not([hidden]) h2");
      if (heading) { heading.focus(); }
    }
  }

  // ---- the article's edge cases: Back and closing the tab while pending ---------------
  function onPopState() {
    if (!guarded) { return; }
    history.pushState(GUARD_STATE, "", location.href);
    backNotice.hidden = false;
  }

  function onBeforeUnload(event) {
    event.preventDefault();
    event.returnValue = "Your payment may not be completed if you leave this page.";
    return event.returnValue;
  }

  function armGuards() {
    guarded = true;
    if (!(history.state && history.state.paymentGuard === txId)) {
      history.pushState(GUARD_STATE, "", location.href);
    }
    window.addEventListener("popstate", onPopState);
    window.addEventListener("beforeunload", onBeforeUnload);
  }

  function finishBack(event) {
    // The guard's extra entry is a copy of this page: a Back press that lands on the
    // original entry goes on to the page before it, as the shopper meant.
    window.removeEventListener("popstate", finishBack);
    if (!(event.state && event.state.paymentGuard === txId)) { history.back(); }
  }

  function releaseGuards(keepBackWorking) {
    if (!guarded) { return; }
    guarded = false;
    window.removeEventListener("popstate", onPopState);
    window.removeEventListener("beforeunload", onBeforeUnload);
    backNotice.hidden = true;
    if (keepBackWorking && history.state && history.state.paymentGuard === txId) {
      window.addEventListener("popstate", finishBack);
    }
  }

  // Leaving on purpose (Cancel, or a new payment) must not trigger the guards.
  Array.prototype.forEach.call(document.querySelectorAll("form[data-leaves-page]"), function (form) {
    form.addEventListener("submit", function () { releaseGuards(false); });
  });
  window.addEventListener("checkout:leaving", function () { releaseGuards(false); });

  // ---- asking for the status: the polling fallback, and the slow check while live ------
  function askStatus() {
    return fetch(statusUrl, { headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        // An answer that was on its way when the result came (by the socket) is old news.
        if (data && data.transaction_id === txId && !isFinal(status)) { show(data.status, true); }
      })
      .catch(function () { /* offline for a moment: the next ask tries again */ });
  }

  function pollOnce() {
    if (!polling) { return; }
    askStatus().then(function () { if (polling) { pollTimer = setTimeout(pollOnce, pollMs); } });
  }

  function checkIfShown() {
    if (!document.hidden && !polling && !isFinal(status)) { askStatus(); }
  }

  function startPolling() {
    if (polling || isFinal(status)) { return; }
    polling = true;
    connectionNote.hidden = false;
    pollOnce();
  }

  function stopPolling() {
    polling = false;
    clearTimeout(pollTimer);
    pollTimer = null;
  }

  // ---- live updates ------------------------------------------------------------------
  function connect() {
    if (typeof window.io !== "function") { startPolling(); return; }
    // WebSocket only: with several server processes behind one port (REDIS_URL), long-polling
    // requests would land on processes that do not know the session. Where WebSockets are
    // blocked, the 5-second polling below takes over.
    socket = window.io({ transports: ["websocket"], reconnectionDelayMax: 10000, timeout: 8000 });
    socket.on("connect", function () { socket.emit("join", { transaction_id: txId }); });
    socket.on("payment_status_update", function (message) {
      if (!message || message.transaction_id !== txId) { return; }
      // The first push follows the join: from now on the room brings every change.
      stopPolling();
      connectionNote.hidden = true;
      show(message.status, true);
    });
    socket.on("payment_error", startPolling);
    socket.on("connect_error", startPolling);
    socket.on("disconnect", startPolling);
    connectTimer = setTimeout(function () { if (!socket || !socket.connected) { startPolling(); } }, 4000);
  }

  // A reload must not count as another return from the gateway.
  if (location.search && root.dataset.pageUrl) {
    history.replaceState(history.state, "", root.dataset.pageUrl);
  }
  root.dataset.shown = "1";
  if (isFinal(status)) {
    root.dataset.finalAt = String(Date.now());
  } else {
    armGuards();
    connect();
    checkTimer = setInterval(checkIfShown, checkMs);
    document.addEventListener("visibilitychange", checkIfShown);  // back to the tab: ask at once
  }
}());
