/*
 * Staff alert board: live alerts and shelf stock of one store, in Chinese or English.
 *
 * Data flow: one EventSource on /api/alerts/stream. Every (re)connection starts with a `hello` event, sent by
 * the gateway only after it has subscribed this stream to its broadcast — so re-reading /api/alerts and
 * /api/stock *after* `hello` can miss nothing: a change either is in the snapshot or arrives as an event.
 * Snapshot and events are merged by `updated_at`, so an older snapshot never undoes a newer event.
 *
 * Reconnects are ours, not the browser's: on error the stream is closed and reopened after a backoff with
 * full jitter (STYLE.md; AWS Architecture Blog, "Exponential Backoff And Jitter"), so a gateway restart
 * does not make every phone in the store reconnect at the same instant.
 *
 * No framework and no build step: the store LAN may have no internet, and the gateway serves this file.
 */
(function () {
  "use strict";

  var I18N = {
    zh: {
      htmlLang: "zh-CN",
      title: "货架告警",
      skipToStock: "跳到库存",
      switchTo: "English",
      switchToLang: "en",
      switchLabel: "Switch to English",
      "conn.connecting": "连接中…",
      "conn.live": "实时",
      "conn.reconnecting": "重新连接中…",
      store: "门店 {store}",
      devices: "设备在线 {online}/{total}",
      "alerts.title": "待处理告警",
      "alerts.none": "暂无告警",
      "stock.title": "货架库存",
      "stock.caption": "每个货位的实时数量",
      "stock.product": "商品",
      "stock.count": "数量",
      "stock.level": "状态",
      "stock.none": "暂无库存数据",
      "stock.uncertain": "计数存疑",
      kind: { low: "低库存", out: "缺货", over: "超储", ambiguous: "计数存疑", sensor_fault: "传感器故障", misplaced: "错放商品", predicted_out: "即将缺货", loss_suspected: "疑似失窃", shrink_suspected: "疑似损耗" },
      state: { raised: "待处理", acknowledged: "已确认", resolved: "已解决" },
      level: { ok: "正常", low: "低库存", out: "缺货", over: "超储", unknown: "未知" },
      countVsSafety: "现有 {count} · 安全库存 {safety}",
      countVsMax: "现有 {count} · 上限 {max}",
      countOnly: "现有 {count}",
      raised: "{ago}发出",
      ackedBy: "{name} 已确认",
      ack: "确认",
      ackLabel: "确认告警：{product}",
      acking: "正在确认…",
      "staff.title": "请输入您的姓名",
      "staff.hint": "确认告警时会记录您的姓名，本机会记住它。",
      "staff.label": "姓名",
      "staff.ok": "确定",
      "staff.cancel": "取消",
      "staff.change": "更换",
      "staff.setName": "设置姓名",
      "staff.set": "当前员工：{name}",
      "staff.unset": "未设置员工姓名",
      justNow: "刚刚",
      unknownProduct: "未知商品",
      "err.ack": "确认失败，请重试（{detail}）",
      "err.gone": "该告警不存在或已被删除",
      "err.resolved": "该告警已解决",
      "err.load": "无法读取数据，正在重试",
      sep: " · "
    },
    en: {
      htmlLang: "en",
      title: "Shelf alerts",
      skipToStock: "Skip to stock",
      switchTo: "中文",
      switchToLang: "zh-CN",
      switchLabel: "切换到中文",
      "conn.connecting": "Connecting…",
      "conn.live": "Live",
      "conn.reconnecting": "Reconnecting…",
      store: "Store {store}",
      devices: "Devices online {online}/{total}",
      "alerts.title": "Active alerts",
      "alerts.none": "No active alerts",
      "stock.title": "Shelf stock",
      "stock.caption": "Live count of every bin",
      "stock.product": "Product",
      "stock.count": "Count",
      "stock.level": "Level",
      "stock.none": "No stock data yet",
      "stock.uncertain": "count uncertain",
      kind: { low: "Low stock", out: "Out of stock", over: "Overstock", ambiguous: "Count uncertain", sensor_fault: "Sensor fault", misplaced: "Misplaced goods", predicted_out: "Stock-out predicted", loss_suspected: "Suspected loss", shrink_suspected: "Suspected shrink" },
      state: { raised: "Open", acknowledged: "Acknowledged", resolved: "Resolved" },
      level: { ok: "OK", low: "Low", out: "Out", over: "Over", unknown: "Unknown" },
      countVsSafety: "{count} on shelf · safety stock {safety}",
      countVsMax: "{count} on shelf · max {max}",
      countOnly: "{count} on shelf",
      raised: "raised {ago}",
      ackedBy: "acknowledged by {name}",
      ack: "Acknowledge",
      ackLabel: "Acknowledge alert: {product}",
      acking: "Acknowledging…",
      "staff.title": "Your name",
      "staff.hint": "Your name is recorded when you acknowledge an alert; this device remembers it.",
      "staff.label": "Name",
      "staff.ok": "OK",
      "staff.cancel": "Cancel",
      "staff.change": "Change",
      "staff.setName": "Set name",
      "staff.set": "Staff: {name}",
      "staff.unset": "No staff name set",
      justNow: "just now",
      unknownProduct: "Unknown product",
      "err.ack": "Could not acknowledge, please retry ({detail})",
      "err.gone": "This alert no longer exists",
      "err.resolved": "This alert is already resolved",
      "err.load": "Cannot load data, retrying",
      sep: " · "
    }
  };

  /* Most urgent first: an empty shelf loses sales now; an overfull one only looks untidy. */
  var KIND_RANK = { out: 0, loss_suspected: 1, low: 2, predicted_out: 3, sensor_fault: 4, ambiguous: 5, shrink_suspected: 6, misplaced: 7, over: 8 };
  var STORAGE_LANG = "shelfgate.board.lang";
  var STORAGE_STAFF = "shelfgate.board.staff";
  var FADE_MS = 600;
  var BACKOFF_BASE_MS = 500;
  var BACKOFF_CAP_MS = 10000;
  var BACKOFF_FLOOR_MS = 200;
  var CLOCK_TICK_MS = 15000;
  var HEALTH_POLL_MS = 30000;

  var state = {
    lang: "zh",
    alerts: new Map(), // alert_id -> alert view (active ones only)
    cards: new Map(), // alert_id -> <li>
    stock: new Map(), // bin_id -> bin view
    health: null,
    loaded: false, // "no alerts" only after a snapshot said so, not while connecting
    conn: "connecting",
    es: null,
    attempt: 0,
    reconnectTimer: null,
    refreshGen: 0,
    touchedAlerts: new Set(), // ids changed by events since the current snapshot was requested
    touchedBins: new Set()
  };

  function $(id) {
    return document.getElementById(id);
  }

  // --- storage (private mode or a full quota must not break the board) -------------------------------

  function load(key) {
    try {
      return window.localStorage.getItem(key);
    } catch (e) {
      return null;
    }
  }

  function save(key, value) {
    try {
      window.localStorage.setItem(key, value);
    } catch (e) {
      /* remembered for this page only */
    }
  }

  // --- language ---------------------------------------------------------------------------------------

  function initialLang() {
    var saved = load(STORAGE_LANG);
    if (saved === "zh" || saved === "en") {
      return saved;
    }
    var langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
    var first = String(langs[0] || "").toLowerCase();
    return first === "zh" || first.indexOf("zh-") === 0 ? "zh" : "en";
  }

  function t(key, vars) {
    var s = I18N[state.lang][key];
    if (s === undefined) {
      s = I18N.en[key];
    }
    if (vars) {
      s = String(s).replace(/\{(\w+)\}/g, function (_, name) {
        return vars[name] === undefined || vars[name] === null ? "—" : String(vars[name]);
      });
    }
    return s;
  }

  function label(group, value) {
    var table = I18N[state.lang][group];
    return table && table[value] !== undefined ? table[value] : String(value);
  }

  function productName(name) {
    if (!name) {
      return t("unknownProduct");
    }
    return (state.lang === "zh" ? name.zh : name.en) || name.zh || name.en || t("unknownProduct");
  }

  function setLang(lang) {
    state.lang = lang;
    save(STORAGE_LANG, lang);
    document.documentElement.lang = I18N[lang].htmlLang;
    document.title = t("title");
    var nodes = document.querySelectorAll("[data-i18n]");
    for (var i = 0; i < nodes.length; i++) {
      nodes[i].textContent = t(nodes[i].getAttribute("data-i18n"));
    }
    var toggle = $("lang-toggle");
    toggle.textContent = t("switchTo");
    toggle.lang = t("switchToLang");
    toggle.setAttribute("aria-label", t("switchLabel"));
    renderConn();
    renderHeader();
    renderStaff();
    renderAlerts();
    renderStock();
  }

  // --- time -----------------------------------------------------------------------------------------

  function ago(iso) {
    var ms = Date.parse(iso);
    if (isNaN(ms)) {
      return "—";
    }
    // A phone clock a little ahead of the gateway must not show "in 3 seconds".
    var s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 45) {
      return t("justNow");
    }
    var rtf = new Intl.RelativeTimeFormat(I18N[state.lang].htmlLang, { numeric: "always" });
    if (s < 3600) {
      return rtf.format(-Math.round(s / 60), "minute");
    }
    if (s < 86400) {
      return rtf.format(-Math.round(s / 3600), "hour");
    }
    return rtf.format(-Math.round(s / 86400), "day");
  }

  function absolute(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) {
      return "";
    }
    return d.toLocaleString(I18N[state.lang].htmlLang, { dateStyle: "short", timeStyle: "medium" });
  }

  // --- connection indicator --------------------------------------------------------------------------

  function setConn(next) {
    state.conn = next;
    renderConn();
  }

  function renderConn() {
    var el = $("conn");
    el.className = "conn conn-" + state.conn;
    $("conn-text").textContent = t("conn." + state.conn);
    el.setAttribute("data-state", state.conn);
  }

  function renderHeader() {
    var h = state.health;
    var el = $("store");
    if (!h) {
      el.textContent = "";
      return;
    }
    el.textContent =
      t("store", { store: h.store_id }) + t("sep") + t("devices", { online: h.devices_online, total: h.devices_total });
  }

  // --- staff name ------------------------------------------------------------------------------------

  function staffName() {
    var name = load(STORAGE_STAFF);
    return name && name.trim() ? name.trim() : null;
  }

  function renderStaff() {
    var name = staffName();
    $("staff-line").textContent = name ? t("staff.set", { name: name }) : t("staff.unset");
    $("staff-change").textContent = name ? t("staff.change") : t("staff.setName");
  }

  /* Resolves with the entered name, or null when the user cancels. */
  function askStaffName() {
    return new Promise(function (resolve) {
      var dialog = $("staff-dialog");
      var form = $("staff-form");
      var input = $("staff-name");
      input.value = staffName() || "";
      function finish(value) {
        form.removeEventListener("submit", onSubmit);
        $("staff-cancel").removeEventListener("click", onCancel);
        dialog.removeEventListener("cancel", onCancel);
        if (dialog.open) {
          dialog.close();
        }
        resolve(value);
      }
      function onSubmit(ev) {
        ev.preventDefault();
        var name = input.value.trim();
        if (!name) {
          input.focus();
          return;
        }
        save(STORAGE_STAFF, name);
        renderStaff();
        finish(name);
      }
      function onCancel(ev) {
        ev.preventDefault();
        finish(null);
      }
      form.addEventListener("submit", onSubmit);
      $("staff-cancel").addEventListener("click", onCancel);
      dialog.addEventListener("cancel", onCancel);
      dialog.showModal();
      input.focus();
    });
  }

  // --- toast -----------------------------------------------------------------------------------------

  var toastTimer = null;

  function toast(message) {
    var el = $("toast");
    el.textContent = message;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () {
      el.hidden = true;
    }, 6000);
  }

  // --- alerts ----------------------------------------------------------------------------------------

  function compareAlerts(a, b) {
    var ra = KIND_RANK[a.kind] === undefined ? 9 : KIND_RANK[a.kind];
    var rb = KIND_RANK[b.kind] === undefined ? 9 : KIND_RANK[b.kind];
    if (ra !== rb) {
      return ra - rb;
    }
    if (a.raised_at !== b.raised_at) {
      return a.raised_at < b.raised_at ? -1 : 1; // RFC 3339 UTC strings sort by time
    }
    return a.alert_id < b.alert_id ? -1 : 1;
  }

  /* Apply one alert view; returns false when it is older than what we already show. */
  function applyAlert(alert) {
    var known = state.alerts.get(alert.alert_id);
    if (known && known.updated_at > alert.updated_at) {
      return false;
    }
    if (alert.state === "resolved") {
      if (known) {
        state.alerts.delete(alert.alert_id);
        removeCard(alert.alert_id, alert);
      }
      return true;
    }
    state.alerts.set(alert.alert_id, alert);
    return true;
  }

  function removeCard(id, finalView) {
    var card = state.cards.get(id);
    if (!card) {
      return;
    }
    state.cards.delete(id);
    if (finalView) {
      fillCard(card, finalView);
    }
    card.classList.add("leaving");
    card.setAttribute("aria-hidden", "true");
    var btn = card.querySelector("button");
    if (btn) {
      btn.disabled = true;
    }
    setTimeout(function () {
      if (card.parentNode) {
        card.parentNode.removeChild(card);
      }
    }, FADE_MS);
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) {
      node.className = cls;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function buildCard(id) {
    var li = el("li", "card");
    li.setAttribute("data-alert-id", id);
    var head = el("div", "card-head");
    head.appendChild(el("span", "kind"));
    head.appendChild(el("span", "state"));
    li.appendChild(head);
    li.appendChild(el("h3", "name"));
    li.appendChild(el("p", "where"));
    li.appendChild(el("p", "qty"));
    var meta = el("p", "meta");
    meta.appendChild(el("time", "raised"));
    meta.appendChild(el("span", "acked"));
    li.appendChild(meta);
    var btn = el("button", "btn btn-primary ack");
    btn.type = "button";
    btn.addEventListener("click", function () {
      acknowledge(id, btn);
    });
    li.appendChild(btn);
    return li;
  }

  function fillCard(li, a) {
    var bin = state.stock.get(a.bin_id);
    var product = productName(a.name || (bin && bin.name));
    li.className = "card kind-" + a.kind + " state-" + a.state + (li.classList.contains("leaving") ? " leaving" : "");
    li.setAttribute("data-state", a.state);
    li.setAttribute("data-kind", a.kind);
    li.querySelector(".kind").textContent = label("kind", a.kind);
    li.querySelector(".state").textContent = label("state", a.state);
    var name = li.querySelector(".name");
    name.textContent = product;
    var where = [a.location || (bin && bin.location) || "", a.bin_id].filter(Boolean).join(t("sep"));
    li.querySelector(".where").textContent = where;
    var qty;
    if (a.kind === "over" && bin) {
      qty = t("countVsMax", { count: a.count, max: bin.max_stock });
    } else if (bin) {
      qty = t("countVsSafety", { count: a.count, safety: bin.safety_stock });
    } else {
      qty = t("countOnly", { count: a.count });
    }
    li.querySelector(".qty").textContent = qty;
    var raised = li.querySelector(".raised");
    raised.dateTime = a.raised_at;
    raised.title = absolute(a.raised_at);
    raised.textContent = t("raised", { ago: ago(a.raised_at) });
    var acked = li.querySelector(".acked");
    acked.textContent = a.acknowledged_by ? t("sep") + t("ackedBy", { name: a.acknowledged_by }) : "";
    if (a.message) {
      li.title = a.message;
    }
    var btn = li.querySelector(".ack");
    var busy = btn.getAttribute("data-busy") === "1";
    btn.textContent = busy ? t("acking") : t("ack");
    btn.setAttribute("aria-label", t("ackLabel", { product: product }));
    btn.hidden = a.state !== "raised";
    btn.disabled = busy || a.state !== "raised";
  }

  function renderAlerts() {
    var list = $("alerts");
    var sorted = Array.from(state.alerts.values()).sort(compareAlerts);
    var anchor = list.firstChild;
    for (var i = 0; i < sorted.length; i++) {
      var a = sorted[i];
      var card = state.cards.get(a.alert_id);
      if (!card) {
        card = buildCard(a.alert_id);
        state.cards.set(a.alert_id, card);
      }
      fillCard(card, a);
      // Skip fading cards so they stay where they were while they leave.
      while (anchor && anchor !== card && anchor.classList && anchor.classList.contains("leaving")) {
        anchor = anchor.nextSibling;
      }
      if (anchor !== card) {
        list.insertBefore(card, anchor); // moves only cards whose position changed (keeps focus elsewhere)
      } else {
        anchor = anchor.nextSibling;
      }
    }
    $("alert-count").textContent = String(sorted.length);
    $("no-alerts").hidden = !state.loaded || sorted.length > 0;
  }

  function acknowledge(id, btn) {
    // Logged in (edge/web/auth.js): the gateway records the session's user, so do not ask for a name.
    var name = (window.shelfgateAuth && window.shelfgateAuth.user()) || staffName();
    var ready = name ? Promise.resolve(name) : askStaffName();
    ready.then(function (by) {
      if (!by) {
        return;
      }
      btn.setAttribute("data-busy", "1");
      btn.disabled = true;
      btn.textContent = t("acking");
      fetch("/api/alerts/" + encodeURIComponent(id) + "/ack", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ by: by })
      })
        .then(function (resp) {
          return resp.json().then(
            function (body) {
              return { status: resp.status, body: body };
            },
            function () {
              return { status: resp.status, body: null };
            }
          );
        })
        .then(function (r) {
          btn.removeAttribute("data-busy");
          if (r.status === 200 && r.body) {
            applyAlert(r.body);
          } else if (r.status === 404) {
            toast(t("err.gone"));
            var known = state.alerts.get(id);
            state.alerts.delete(id);
            removeCard(id, known);
          } else if (r.status === 409) {
            toast(t("err.resolved"));
            state.alerts.delete(id);
            removeCard(id, null);
          } else {
            toast(t("err.ack", { detail: "HTTP " + r.status }));
          }
          renderAlerts();
        })
        .catch(function (err) {
          btn.removeAttribute("data-busy");
          toast(t("err.ack", { detail: String(err && err.message ? err.message : err) }));
          renderAlerts();
        });
    });
  }

  // --- stock -----------------------------------------------------------------------------------------

  function renderStock() {
    var body = $("stock-body");
    var bins = Array.from(state.stock.values()).sort(function (a, b) {
      return a.bin_id < b.bin_id ? -1 : a.bin_id > b.bin_id ? 1 : 0;
    });
    var frag = document.createDocumentFragment();
    for (var i = 0; i < bins.length; i++) {
      var b = bins[i];
      var tr = el("tr", "level-" + b.level);
      tr.setAttribute("data-bin-id", b.bin_id);
      tr.setAttribute("data-level", b.level);
      var prod = el("td", "prod");
      prod.appendChild(el("span", "prod-name", productName(b.name)));
      prod.appendChild(el("span", "prod-where", [b.location, b.bin_id].filter(Boolean).join(t("sep"))));
      tr.appendChild(prod);
      var qty = el("td", "num");
      qty.appendChild(el("span", "qty-count", b.count === null || b.count === undefined ? "—" : String(b.count)));
      qty.appendChild(el("span", "qty-safety", "/ " + b.safety_stock));
      if (b.uncertain) {
        var q = el("span", "uncertain", "?");
        q.title = t("stock.uncertain");
        q.setAttribute("aria-label", t("stock.uncertain"));
        qty.appendChild(q);
      }
      tr.appendChild(qty);
      var lvl = el("td", "lvl");
      lvl.appendChild(el("span", "level-badge", label("level", b.level)));
      tr.appendChild(lvl);
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
    $("no-stock").hidden = !state.loaded || bins.length > 0;
  }

  // --- snapshot + stream ------------------------------------------------------------------------------

  function getJSON(url) {
    return fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" }).then(function (resp) {
      if (!resp.ok) {
        throw new Error(url + ": HTTP " + resp.status);
      }
      return resp.json();
    });
  }

  /* Re-read everything; merge so that events received meanwhile win over the (older) snapshot. */
  function refresh() {
    var gen = ++state.refreshGen;
    state.touchedAlerts = new Set();
    state.touchedBins = new Set();
    return Promise.all([getJSON("/api/alerts?active=true"), getJSON("/api/stock"), getJSON("/api/health")])
      .then(function (res) {
        if (gen !== state.refreshGen) {
          return; // a newer refresh is under way
        }
        state.loaded = true;
        var alerts = res[0];
        var bins = res[1];
        state.health = res[2];
        var seen = new Set();
        for (var i = 0; i < alerts.length; i++) {
          seen.add(alerts[i].alert_id);
          if (!state.touchedAlerts.has(alerts[i].alert_id)) {
            applyAlert(alerts[i]);
          }
        }
        // Resolved while we were away: no longer in the active list.
        Array.from(state.alerts.keys()).forEach(function (id) {
          if (!seen.has(id) && !state.touchedAlerts.has(id)) {
            var gone = state.alerts.get(id);
            state.alerts.delete(id);
            removeCard(id, gone);
          }
        });
        for (var j = 0; j < bins.length; j++) {
          if (!state.touchedBins.has(bins[j].bin_id)) {
            state.stock.set(bins[j].bin_id, bins[j]);
          }
        }
        renderHeader();
        renderStock();
        renderAlerts();
      })
      .catch(function () {
        if (gen === state.refreshGen) {
          toast(t("err.load"));
          reconnectSoon();
        }
      });
  }

  function refreshHealth() {
    getJSON("/api/health").then(
      function (h) {
        state.health = h;
        renderHeader();
      },
      function () {
        /* the stream's error handling reports a lost gateway */
      }
    );
  }

  function onAlertEvent(ev) {
    var msg = JSON.parse(ev.data);
    var alert = msg.alert;
    if (!alert || !alert.alert_id) {
      return;
    }
    state.touchedAlerts.add(alert.alert_id);
    if (applyAlert(alert)) {
      renderAlerts();
    }
  }

  function onStockEvent(ev) {
    var msg = JSON.parse(ev.data);
    var bin = msg.bin;
    if (!bin || !bin.bin_id) {
      return;
    }
    state.touchedBins.add(bin.bin_id);
    state.stock.set(bin.bin_id, bin);
    renderStock();
    renderAlerts(); // cards show count vs the bin's thresholds
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    if (state.es) {
      state.es.close();
    }
    var es = new EventSource("/api/alerts/stream");
    state.es = es;
    es.addEventListener("hello", function () {
      state.attempt = 0;
      setConn("live");
      refresh();
    });
    es.addEventListener("alert", onAlertEvent);
    es.addEventListener("stock", onStockEvent);
    es.onerror = function () {
      if (state.es === es) {
        reconnectSoon();
      }
    };
  }

  function reconnectSoon() {
    if (state.es) {
      state.es.close();
      state.es = null;
    }
    setConn("reconnecting");
    if (state.reconnectTimer !== null) {
      return;
    }
    var cap = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, state.attempt));
    state.attempt += 1;
    var delay = Math.max(BACKOFF_FLOOR_MS, Math.random() * cap);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  // --- start -----------------------------------------------------------------------------------------

  function start() {
    $("lang-toggle").addEventListener("click", function () {
      setLang(state.lang === "zh" ? "en" : "zh");
    });
    $("staff-change").addEventListener("click", function () {
      askStaffName();
    });
    setLang(initialLang());
    connect();
    // Show the snapshot even if a proxy or an old browser keeps the event stream from working.
    refresh();
    setInterval(refreshHealth, HEALTH_POLL_MS);
    // Relative times ("5 minutes ago") age while the page stays open.
    setInterval(renderAlerts, CLOCK_TICK_MS);
    // Phones freeze background tabs; when the board comes back, make sure the stream is alive.
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible" && (!state.es || state.es.readyState === EventSource.CLOSED)) {
        connect();
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
