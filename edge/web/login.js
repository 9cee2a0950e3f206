/*
 * Login page logic: POST /api/auth/login (JSON), then back to `next` (only a path on this gateway — never
 * another site, so a crafted link cannot bounce a fresh session elsewhere). The gateway sets the HttpOnly
 * session cookie and the readable CSRF cookie that /static/auth.js sends on writes.
 */
(function () {
  "use strict";
  var I18N = {
    zh: {
      htmlLang: "zh-CN", title: "登录", username: "用户名", password: "密码", submit: "登录",
      busy: "正在登录…", wrong: "用户名或密码错误", limited: "尝试次数过多，请 {s} 秒后再试",
      missing: "请输入用户名和密码", failed: "登录失败（{detail}）", switchTo: "English", switchToLang: "en"
    },
    en: {
      htmlLang: "en", title: "Log in", username: "User name", password: "Password", submit: "Log in",
      busy: "Logging in…", wrong: "Wrong user name or password", limited: "Too many attempts; try again in {s} s",
      missing: "Enter your user name and password", failed: "Login failed ({detail})", switchTo: "中文",
      switchToLang: "zh-CN"
    }
  };
  var STORAGE_LANG = "shelfgate.board.lang";  // the board's choice: one language across the gateway's pages
  var lang = pickLang();

  function pickLang() {
    var saved = null;
    try { saved = localStorage.getItem(STORAGE_LANG); } catch (e) { saved = null; }
    if (saved === "zh" || saved === "en") return saved;
    var first = String((navigator.languages && navigator.languages[0]) || navigator.language || "").toLowerCase();
    return first === "zh" || first.indexOf("zh-") === 0 ? "zh" : "en";
  }

  function t(key, vars) {
    var s = I18N[lang][key];
    Object.keys(vars || {}).forEach(function (k) { s = s.replace("{" + k + "}", vars[k]); });
    return s;
  }

  function apply() {
    document.documentElement.lang = I18N[lang].htmlLang;
    document.title = t("title");
    Array.prototype.forEach.call(document.querySelectorAll("[data-i18n]"), function (el) {
      el.textContent = t(el.getAttribute("data-i18n"));
    });
    var toggle = document.getElementById("lang-toggle");
    toggle.textContent = t("switchTo");
    toggle.lang = t("switchToLang");
  }

  function nextPath() {
    var next = new URLSearchParams(location.search).get("next") || "/board";
    // A path on this origin only: "/x" yes; "//evil", "/\\evil", "https://…" no.
    return /^\/(?![\/\\])/.test(next) ? next : "/board";
  }

  function showError(text) {
    var el = document.getElementById("error");
    el.textContent = text;
    el.hidden = !text;
  }

  function submit(ev) {
    ev.preventDefault();
    var username = document.getElementById("username").value.trim();
    var password = document.getElementById("password").value;
    if (!username || !password) { showError(t("missing")); return; }
    var button = document.getElementById("submit");
    button.disabled = true;
    button.textContent = t("busy");
    showError("");
    fetch("/api/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ username: username, password: password })
    }).then(function (resp) {
      if (resp.ok) {
        try { sessionStorage.setItem("shelfgate.auth.user", username); } catch (e) { /* shown only */ }
        location.replace(nextPath());
        return;
      }
      if (resp.status === 401) showError(t("wrong"));
      else if (resp.status === 429) showError(t("limited", { s: resp.headers.get("Retry-After") || "60" }));
      else showError(t("failed", { detail: "HTTP " + resp.status }));
    }, function (err) {
      showError(t("failed", { detail: String(err && err.message || err) }));
    }).then(function () {
      button.disabled = false;
      button.textContent = t("submit");
    });
  }

  document.getElementById("lang-toggle").addEventListener("click", function () {
    lang = lang === "zh" ? "en" : "zh";
    try { localStorage.setItem(STORAGE_LANG, lang); } catch (e) { /* private mode: not remembered */ }
    apply();
  });
  document.getElementById("login-form").addEventListener("submit", submit);
  apply();
  document.getElementById("username").focus();
})();
