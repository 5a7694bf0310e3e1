/* Pay buttons: open the payment provider's page in a new tab and follow the result here.
 *
 * Without this script (or when the browser blocks the new tab) the form posts normally and
 * the server redirects this tab to the provider, which sends the shopper back when done.
 * With it, a blank tab is opened during the click (so pop-up blockers allow it), the payment
 * is started with a fetch, the new tab goes to the provider and this tab to the waiting page.
 */
(function () {
  "use strict";

  function showError(form, message) {
    var box = form.querySelector(".pay-error");
    if (!box) { return; }
    box.textContent = message;
    box.hidden = false;
  }

  function enhance(form) {
    form.addEventListener("submit", function (event) {
      if (!window.fetch || !window.FormData) { return; }
      event.preventDefault();
      var button = form.querySelector("button[type=submit]");
      var popup = null;
      try { popup = window.open("", "_blank"); } catch (e) { popup = null; }
      if (!popup) {
        form.submit();  // blocked: pay in this tab
        return;
      }
      try {
        popup.document.title = "Opening the payment page…";
        popup.document.body.textContent = "Opening the secure payment page…";
      } catch (e) { /* nothing to show it in */ }
      if (button) { button.disabled = true; }
      fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { Accept: "application/json" },
        credentials: "same-origin"
      })
        .then(function (response) {
          return response.json().catch(function () { return {}; }).then(function (data) {
            if (!response.ok || !data.payment_url) {
              throw new Error(data.message || "The payment could not be started. Please try again.");
            }
            return data;
          });
        })
        .then(function (data) {
          popup.opener = null;
          popup.location.replace(data.payment_url);
          window.dispatchEvent(new CustomEvent("checkout:leaving"));
          window.location.assign(data.page_url);
        })
        .catch(function (error) {
          popup.close();
          if (button) { button.disabled = false; }
          showError(form, error.message);
        });
    });
  }

  Array.prototype.forEach.call(document.querySelectorAll("form[data-pay-form]"), enhance);
}());
