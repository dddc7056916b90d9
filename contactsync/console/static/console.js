// Progressive enhancement only: every page works without it.
// 1. Live refresh: the element marked data-live is re-read from the server every few seconds
//    (polling: no extra endpoint, the same page the server renders).
// 2. The filter is checked as the admin types (the CLI's error, caret included).
// 3. Forms marked data-confirm ask before they post.
(function () {
  "use strict";
  var REFRESH_MS = 4000;

  function refresh() {
    var live = document.querySelector("[data-live]");
    if (!live || document.hidden) return;
    fetch(window.location.href, { headers: { "X-Requested-With": "poll" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("[data-live]");
        var focused = live.contains(document.activeElement);
        if (fresh && !focused && fresh.innerHTML !== live.innerHTML) live.innerHTML = fresh.innerHTML;
      })
      .catch(function () { /* the next poll tries again */ });
  }

  function checkFilter() {
    var field = document.querySelector("[data-filter-field]");
    var expr = document.querySelector("[data-filter-expression]");
    var out = document.querySelector("[data-filter-result]");
    if (!field || !expr || !out) return;
    var timer = null;
    function check() {
      if (!field.value || !expr.value) { out.textContent = ""; out.className = "filter-check"; return; }
      var url = expr.dataset.checkUrl + "?" + new URLSearchParams({ field: field.value, expression: expr.value });
      fetch(url).then(function (r) { return r.text(); }).then(function (text) {
        var ok = text === "ok";
        out.textContent = ok ? "filter ok" : text;
        out.className = "filter-check " + (ok ? "ok" : "problem");
      });
    }
    function later() { clearTimeout(timer); timer = setTimeout(check, 250); }
    expr.addEventListener("input", later);
    field.addEventListener("change", later);
    check();
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });

  document.addEventListener("DOMContentLoaded", function () {
    checkFilter();
    setInterval(refresh, REFRESH_MS);
  });
})();
