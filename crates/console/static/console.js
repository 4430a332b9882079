// Progressive enhancement: parts marked data-live refresh themselves without a reload. Every page
// works without JavaScript; the overview then shows the state at the time it was loaded.
(function () {
  "use strict";
  function refresh(element) {
    var source = element.getAttribute("data-live");
    var every = Math.max(1000, parseInt(element.getAttribute("data-every") || "2000", 10));
    var busy = false;
    function tick() {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch(source, { headers: { "Accept": "text/html" }, cache: "no-store" })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.text();
        })
        .then(function (html) {
          element.innerHTML = html;
          element.removeAttribute("data-stale");
        })
        .catch(function () { element.setAttribute("data-stale", "true"); })
        .then(function () { busy = false; });
    }
    window.setInterval(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    var parts = document.querySelectorAll("[data-live]");
    for (var i = 0; i < parts.length; i++) { refresh(parts[i]); }
    // The message browser shows the fields its mode needs.
    var mode = document.getElementById("mode");
    if (mode) {
      var show = function () {
        var fields = document.querySelectorAll("[data-mode]");
        for (var j = 0; j < fields.length; j++) {
          fields[j].hidden = fields[j].getAttribute("data-mode") !== mode.value;
        }
      };
      mode.addEventListener("change", show);
      show();
    }
  });
})();
