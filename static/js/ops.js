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

  // Any page: a form is sent once. A second click while the first is on its way is dropped
  // (the server also refuses a refund form sent twice); Back to a kept page re-arms it.
  // One listener on the document, so forms a live refresh swaps in are guarded too.
  // A form with data-confirm (refunds, a cancel) asks first; "No" sends nothing.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form || (form.getAttribute("method") || "").toLowerCase() !== "post") return;
    if (form.getAttribute("data-sending")) { event.preventDefault(); return; }
    var question = confirmation(form);
    if (question && !window.confirm(question)) { event.preventDefault(); return; }
    form.setAttribute("data-sending", "1");
    form.setAttribute("aria-busy", "true");
    // Still here long after any answer could come (the gateway's 25 s budget and the server's
    // wait): the send was stopped (Esc). The same form, with its same key, may be sent again.
    setTimeout(function () { rearm(form); }, 40000);
  }, true);

  function rearm(form) {
    if (!document.body.contains(form) || !form.getAttribute("data-sending")) return;
    form.removeAttribute("data-sending");
    form.removeAttribute("aria-busy");
    window.dispatchEvent(new Event("checkout:forms-rearmed"));
  }
  // The form's question, with the amount typed in as money (or "the amount entered" when it
  // is not plain digits: the server decides what it means, or refuses it).
  function confirmation(form) {
    var question = form.getAttribute("data-confirm");
    if (!question || question.indexOf("{amount}") < 0) return question;
    var input = form.querySelector("input[name=amount]");
    var digits = input ? input.value.trim() : "";
    if (!/^[0-9]{1,12}$/.test(digits) || !/[1-9]/.test(digits)) return question.replace("{amount}", "the amount entered");
    return question.replace("{amount}", moneyText(digits, Number(form.getAttribute("data-exponent")),
                                                   form.getAttribute("data-currency")));
  }

  // Minor units as "1,234.50 USD", by string arithmetic: never a float.
  function moneyText(digits, exponent, currency) {
    digits = digits.replace(/^0+/, "");
    while (digits.length <= exponent) digits = "0" + digits;
    var major = digits.slice(0, digits.length - exponent).replace(/\B(?=([0-9]{3})+$)/g, ",");
    return (exponent ? major + "." + digits.slice(digits.length - exponent) : major) + " " + currency;
  }

  window.addEventListener("pageshow", function () {
    Array.prototype.forEach.call(document.querySelectorAll("form[data-sending]"), rearm);
  });

  if (kind !== "list" && kind !== "detail") return;

  // An action's answer (a refusal) is rendered at the action's address, which answers POST
  // only: show the page's own address, so a reload reads the page instead of sending the
  // form again, and refresh from there.
  var pageUrl = body.getAttribute("data-page-url") || window.location.href;
  if (body.getAttribute("data-page-url") && window.location.pathname !== pageUrl) {
    history.replaceState(history.state, "", pageUrl);
  }

  // Forms re-armed (Back to a kept page, or a send stopped with Esc): the Actions held back
  // meanwhile are refreshed now.
  window.addEventListener("checkout:forms-rearmed", function () {
    if (body.hasAttribute("data-refresh-held") && !document.querySelector("form[data-sending]")) {
      body.removeAttribute("data-refresh-held");
      refresh("");
    }
  });

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
    // The actions too (what remains to refund, what the buttons offer); an amount being typed
    // is carried over into the fresh form.
    return ["txn-summary", "txn-refunds", "txn-timeline", "txn-webhooks", "txn-actions"];
  }

  // While a form is on its way the Actions stay as they are: fresh forms would drop its
  // send-once guard (and a fresh refund form has a fresh key). The rest still refreshes, and
  // the Actions follow at the next refresh (or when the page is shown again after Back/Stop).
  function formOnItsWay() {
    if (!document.querySelector("form[data-sending]")) return false;
    body.setAttribute("data-refresh-held", "1");
    return true;
  }

  function refresh(message, changedId) {
    var ids = sectionsToSwap();
    return fetch(pageUrl, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.redirected) sessionEnded();  // sent to the login page
        if (response.redirected || !response.ok) throw new Error("refresh failed: " + response.status);
        return response.text();
      })
      .then(function (html) {
        var held = formOnItsWay();  // checked now: a form may have been sent during the fetch
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var focused = whereIs(document.activeElement);
        var typing = document.getElementById("refund-amount");
        var typed = typing ? { value: typing.value, start: typing.selectionStart, end: typing.selectionEnd } : null;
        ids.forEach(function (id) {
          if (held && id === "txn-actions") return;
          var next = fresh.getElementById(id);
          var current = document.getElementById(id);
          if (next && current) current.replaceWith(document.importNode(next, true));
        });
        var amount = document.getElementById("refund-amount");
        if (typed && typed.value && amount && amount !== typing) amount.value = typed.value;
        if (focused && !document.body.contains(focused.element)) {
          var again = document.querySelector(focused.selector);  // the same control in the fresh section
          if (again) again.focus({ preventScroll: true });
          if (again && again === amount && typed && typed.start !== null) amount.setSelectionRange(typed.start, typed.end);
        }
        if (changedId) {
          var row = document.querySelector('tr[data-transaction-id="' + cssEscape(changedId) + '"]');
          if (row) row.classList.add("updated");
        }
        if (message) announce(message);
      })
      .catch(function () { /* the next update or poll tries again */ });
  }

  // How to find the focused control again after its section is replaced: by id, by its row,
  // or by its form's action.
  function whereIs(element) {
    if (!element || element === document.body) return null;
    var selector = null;
    var row = element.closest && element.closest("tr[data-transaction-id]");
    var form = element.closest && element.closest("form[action]");
    if (element.id) {
      selector = "#" + cssEscape(element.id);
    } else if (row) {
      selector = 'tr[data-transaction-id="' + cssEscape(row.getAttribute("data-transaction-id")) + '"] ' +
        element.tagName.toLowerCase();
    } else if (form) {
      selector = 'form[action="' + cssEscape(form.getAttribute("action")) + '"] ' + element.tagName.toLowerCase() +
        (element.getAttribute("type") ? '[type="' + cssEscape(element.getAttribute("type")) + '"]' : "");
    }
    return selector ? { element: element, selector: selector } : null;
  }

  var ended = false;
  function sessionEnded() {
    if (ended) return;
    ended = true;
    setIndicator("off", "Live updates: off. Your session has ended; log in again.");
    announce("Your session has ended. Log in again to go on.");
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
  // WebSocket only (see payment.js); where it cannot connect, the page polls instead.
  var socket = window.io({ transports: ["websocket"] });
  var failures = 0;
  socket.on("connect", function () { socket.emit("ops_join"); });
  socket.on("ops_joined", function () { setIndicator("on", "Live updates: on"); });
  socket.on("ops_error", sessionEnded);
  socket.on("disconnect", function (reason) {
    // The server closes a socket whose staff session ended (logout, expiry); it does not come back.
    if (reason === "io server disconnect") { sessionEnded(); return; }
    if (!ended) setIndicator("off", "Live updates: reconnecting…");
  });
  socket.on("connect_error", function () {
    failures += 1;
    if (failures === 3 && !ended) { socket.disconnect(); poll(); return; }  // give up: poll instead
    if (!ended) setIndicator("off", "Live updates: reconnecting…");
  });
  socket.on("transaction_updated", onUpdate);
})();
