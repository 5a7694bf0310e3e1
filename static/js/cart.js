/* The catalog's cart: a running count and total while quantities change.
 *
 * The form works without this script; the server computes the real total from the catalog.
 * Money stays in integer minor units here too.
 */
(function () {
  "use strict";

  var form = document.getElementById("cart-form");
  var summary = document.getElementById("cart-summary");
  if (!form || !summary) { return; }
  var products = Array.prototype.slice.call(form.querySelectorAll(".product[data-sku]"));

  function formatMinor(amount, exponent, currency) {
    var scale = Math.pow(10, exponent);
    var whole = Math.floor(amount / scale);
    var fraction = String(amount % scale);
    while (fraction.length < exponent) { fraction = "0" + fraction; }
    var wholeText = String(whole).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return wholeText + (exponent ? "." + fraction : "") + " " + currency;
  }

  function update() {
    var count = 0;
    var totals = {};
    products.forEach(function (product) {
      var input = product.querySelector("input[type=number]");
      var quantity = parseInt(input.value, 10);
      if (!(quantity > 0 && quantity <= 99)) { return; }
      var currency = product.dataset.currency;
      count += quantity;
      totals[currency] = totals[currency] || { amount: 0, exponent: parseInt(product.dataset.exponent, 10) };
      totals[currency].amount += quantity * parseInt(product.dataset.price, 10);
    });
    var parts = Object.keys(totals).map(function (currency) {
      return formatMinor(totals[currency].amount, totals[currency].exponent, currency);
    });
    summary.textContent = count === 0
      ? "Your cart is empty."
      : "Cart: " + count + (count === 1 ? " item, " : " items, ") + parts.join(" + ");
    summary.hidden = false;
  }

  form.addEventListener("input", update);
  form.addEventListener("change", update);
  update();
}());
