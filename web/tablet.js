// The tablet page's script now lives in ES modules under /tablet/ (entry
// /tablet/main.js, which the page loads itself). A page kept from an older
// version still asks for /tablet.js as a classic script: this loads the
// modules in its place. No inline script, so the page's policy holds.
"use strict";
(() => {
  const s = document.createElement("script");
  s.type = "module";
  s.src = "/tablet/main.js";
  document.head.appendChild(s);
})();
