// Reloads the page every data-refresh seconds (set on <body>), except
// while someone types in a form field or the tab is hidden. Pages work
// without it: a <noscript> meta refresh takes its place.
(function () {
  "use strict";
  var seconds = parseInt(document.body.getAttribute("data-refresh"), 10);
  if (!(seconds > 0)) {
    return;
  }
  var typed = false;
  document.addEventListener("input", function () { typed = true; });
  function busy() {
    var a = document.activeElement;
    return typed || document.hidden ||
      (a !== null && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA"));
  }
  function tick() {
    if (busy()) {
      setTimeout(tick, seconds * 1000);
      return;
    }
    window.location.reload();
  }
  setTimeout(tick, seconds * 1000);
})();
