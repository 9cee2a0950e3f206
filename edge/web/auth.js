/*
 * Shared by every gateway page (loaded before the page's own script): makes the pages work when the gateway
 * API requires a login (edge/auth.py, docs/security.md "Local API: users, roles, sessions, audit").
 *
 * - Every write (POST/PUT/PATCH/DELETE) carries the session's CSRF token in `X-CSRF-Token`, read from the
 *   `sg_csrf` cookie the login set: the session cookie alone is refused for writes, so another site cannot make
 *   a logged-in browser act (OWASP CSRF Prevention Cheat Sheet, double-submit).
 * - An /api answer of 401 (no session, expired, user removed) sends the browser to /login?next=<this page>.
 * - When logged in, a small "log out" button is shown.
 * With auth off (a loopback-only developer gateway) there is no cookie and nothing here changes a request.
 */
(function () {
  "use strict";
  var originalFetch = window.fetch.bind(window);
  var WRITES = { POST: 1, PUT: 1, PATCH: 1, DELETE: 1 };

  function cookie(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) return decodeURIComponent(parts[i].slice(eq + 1));
    }
    return "";
  }

  function toLogin() {
    var here = location.pathname + location.search;
    location.assign("/login?next=" + encodeURIComponent(here));
  }

  function isApi(url) {
    var u = new URL(url, location.href);
    return u.origin === location.origin && u.pathname.indexOf("/api/") === 0 && u.pathname !== "/api/auth/login";
  }

  window.fetch = function (input, init) {
    init = init || {};
    var url = typeof input === "string" ? input : input.url;
    var method = String(init.method || (typeof input === "string" ? "GET" : input.method) || "GET").toUpperCase();
    var csrf = cookie("sg_csrf");
    if (WRITES[method] && csrf) {
      var headers = new Headers(init.headers || (typeof input === "string" ? undefined : input.headers));
      headers.set("X-CSRF-Token", csrf);
      init = Object.assign({}, init, { headers: headers });
    }
    return originalFetch(input, init).then(function (resp) {
      if (resp.status === 401 && isApi(url)) toLogin();
      return resp;
    });
  };

  function logout() {
    return window.fetch("/api/auth/logout", { method: "POST" }).then(toLogin, toLogin);
  }

  function addLogoutButton() {
    if (!cookie("sg_csrf") || document.getElementById("sg-logout")) return;
    var zh = String(document.documentElement.lang || "zh").toLowerCase().indexOf("zh") === 0;
    var b = document.createElement("button");
    b.id = "sg-logout";
    b.type = "button";
    b.textContent = zh ? "退出登录" : "Log out";
    b.style.cssText = "position:fixed;right:.5rem;bottom:.5rem;z-index:50;font:inherit;font-size:.85rem;" +
      "padding:.35rem .7rem;border:1px solid #888;border-radius:.4rem;background:#fff;color:#16324f";
    b.addEventListener("click", logout);
    document.body.appendChild(b);
  }

  function user() {
    // Set by login.js; only trusted for display — the gateway takes the user from the session.
    if (!cookie("sg_csrf")) return "";
    try { return sessionStorage.getItem("shelfgate.auth.user") || ""; } catch (e) { return ""; }
  }

  window.shelfgateAuth = {
    logout: logout,
    user: user,
    csrfToken: function () { return cookie("sg_csrf"); }
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", addLogoutButton);
  else addLogoutButton();
})();
