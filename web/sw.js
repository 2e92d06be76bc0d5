// The tablet page's service worker: keeps the page shell (page, script
// modules, style, manifest, icons) so the page still opens when the network
// blips. It never answers /api or the STOMP socket: calls and reservations
// always come from the server, or not at all.
"use strict";
const CACHE = "bizcall-shell-v2";
const SHELL = ["/tablet", "/tablet/main.js", "/tablet/strings.js", "/tablet/stomp.js", "/tablet/views.js", "/tablet.css",
               "/manifest.webmanifest", "/favicon.ico", "/icon-192.png", "/icon-512.png"];

self.addEventListener("install", (ev) => {
  ev.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (ev) => {
  ev.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

// Network first, so a new version shows at once; the cached shell only when
// the network fails. Anything outside the shell is left to the browser.
self.addEventListener("fetch", (ev) => {
  const url = new URL(ev.request.url);
  if (ev.request.method !== "GET" || url.origin !== self.location.origin || !SHELL.includes(url.pathname)) return;
  ev.respondWith(fetch(ev.request).then((res) => {
    if (res.ok) {
      const copy = res.clone();
      caches.open(CACHE).then((c) => c.put(url.pathname, copy));
    }
    return res;
  }).catch(() => caches.match(url.pathname).then((hit) => hit || Response.error())));
});
