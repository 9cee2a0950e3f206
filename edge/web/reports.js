/*
 * Store reports on a tablet: replenishment list, ABC classes, slow movers, staff response times.
 *
 * Every tab reads one JSON route under /api/reports/ and offers the same rows as CSV (the link carries the same
 * parameters, so the download is what the screen shows). The replenishment list follows the shelves: it is
 * re-read when the gateway's stream (/api/alerts/stream) says a bin's stock changed, at most once per 2 s.
 * ABC, slow movers and staff response times are manager data: a 401/403 from the gateway shows "managers only"
 * instead of an error.
 */
(function () {
  "use strict";

  var I18N = {
    zh: {
      htmlLang: "zh-CN",
      title: "门店报表",
      switchTo: "English",
      switchToLang: "en",
      refresh: "刷新",
      updated: "更新于 {time}",
      "tab.replenishment": "补货清单",
      "tab.abc": "ABC 分类",
      "tab.slow": "滞销",
      "tab.staff": "员工响应",
      csv: "下载 CSV",
      show: "查看",
      days: "天数",
      denied: "仅限店长查看。",
      "rp.help": "低于安全库存的货位；后仓 = 账面库存 − 所有货架数量。",
      "rp.empty": "所有货位都在安全库存以上。",
      "rp.unknown": "数量未知的货位（未列出，后仓数量不确定）：{bins}",
      "rp.uncertain": "后仓数量不确定",
      "abc.by": "依据",
      "abc.value": "销售额",
      "abc.velocity": "销量",
      "abc.summary": "近 {days} 天 · 合计 {total} · A {a} 个 · B {b} 个 · C {c} 个",
      "slow.days": "无销售天数",
      "slow.empty": "没有滞销商品。",
      "slow.never": "从未售出",
      "staff.from": "从",
      "staff.to": "到",
      "staff.help": "从告警到确认、到解决的时间（中位数 / 90 分位）。",
      "staff.byShift": "按班次",
      "staff.byStaff": "按员工",
      "staff.none": "此期间没有告警。",
      "col.bin": "货位",
      "col.product": "商品",
      "col.shelf": "货架",
      "col.safety": "安全库存",
      "col.max": "满架",
      "col.backRoom": "后仓",
      "col.bring": "补货数量",
      "col.short": "需订货",
      "col.rank": "排名",
      "col.share": "占比",
      "col.cumulative": "累计占比",
      "col.class": "分类",
      "col.book": "账面库存",
      "col.lastSold": "最后售出",
      "col.daysSince": "未售天数",
      "col.shift": "班次",
      "col.staff": "员工",
      "col.alerts": "告警",
      "col.acked": "已确认",
      "col.ackMedian": "确认 中位数",
      "col.ackP90": "确认 P90",
      "col.resolveMedian": "解决 中位数",
      "col.resolveP90": "解决 P90",
      noShift: "班次外",
      "err.request": "读取失败：{detail}",
      "err.network": "网络异常，请重试"
    },
    en: {
      htmlLang: "en",
      title: "Store reports",
      switchTo: "中文",
      switchToLang: "zh-CN",
      refresh: "Refresh",
      updated: "Updated {time}",
      "tab.replenishment": "Replenishment",
      "tab.abc": "ABC",
      "tab.slow": "Slow movers",
      "tab.staff": "Staff response",
      csv: "Download CSV",
      show: "Show",
      days: "Days",
      denied: "Managers only.",
      "rp.help": "Bins under safety stock; back room = book stock − every shelf of the product.",
      "rp.empty": "Every bin is above its safety stock.",
      "rp.unknown": "Bins with an unknown count (not listed; back room uncertain): {bins}",
      "rp.uncertain": "back room uncertain",
      "abc.by": "By",
      "abc.value": "Revenue",
      "abc.velocity": "Units sold",
      "abc.summary": "Last {days} days · total {total} · A {a} · B {b} · C {c}",
      "slow.days": "Days without a sale",
      "slow.empty": "No slow movers.",
      "slow.never": "never sold",
      "staff.from": "From",
      "staff.to": "To",
      "staff.help": "Time from an alert to its acknowledgement and to its resolution (median / 90th percentile).",
      "staff.byShift": "Per shift",
      "staff.byStaff": "Per staff member",
      "staff.none": "No alerts in this period.",
      "col.bin": "Bin",
      "col.product": "Product",
      "col.shelf": "Shelf",
      "col.safety": "Safety",
      "col.max": "Full",
      "col.backRoom": "Back room",
      "col.bring": "Bring",
      "col.short": "To order",
      "col.rank": "Rank",
      "col.share": "Share",
      "col.cumulative": "Cumulative",
      "col.class": "Class",
      "col.book": "Book stock",
      "col.lastSold": "Last sold",
      "col.daysSince": "Days unsold",
      "col.shift": "Shift",
      "col.staff": "Staff",
      "col.alerts": "Alerts",
      "col.acked": "Acked",
      "col.ackMedian": "Ack median",
      "col.ackP90": "Ack p90",
      "col.resolveMedian": "Resolve median",
      "col.resolveP90": "Resolve p90",
      noShift: "outside shifts",
      "err.request": "Could not load: {detail}",
      "err.network": "Network problem, please retry"
    }
  };

  var STORAGE_LANG = "shelfgate.reports.lang";
  var TABS = ["replenishment", "abc", "slow", "staff"];
  var state = { lang: "zh", tab: "replenishment", data: {}, updated: null };

  function $(id) {
    return document.getElementById(id);
  }

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
      /* private mode: the setting lasts for this page only */
    }
  }

  function t(key, vars) {
    var s = I18N[state.lang][key];
    if (s === undefined) s = I18N.zh[key] || key;
    if (vars) {
      s = String(s).replace(/\{(\w+)\}/g, function (_, name) {
        return vars[name] === undefined ? "" : String(vars[name]);
      });
    }
    return s;
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function td(cls, text) {
    return el("td", cls, text);
  }

  var toastTimer = null;
  function toast(message) {
    var box = $("toast");
    box.textContent = message;
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () {
      box.hidden = true;
    }, 5000);
  }

  function name(zh, en, fallback) {
    var chosen = state.lang === "zh" ? zh || en : en || zh;
    return chosen || fallback;
  }

  function percent(share) {
    return (Number(share) * 100).toFixed(1) + "%";
  }

  /* Seconds as h:mm:ss or m:ss — the same in both languages, and sortable by eye. */
  function duration(s) {
    if (s === null || s === undefined) return "–";
    var total = Math.round(Number(s));
    var h = Math.floor(total / 3600);
    var m = Math.floor((total % 3600) / 60);
    var sec = total % 60;
    var mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(sec).padStart(2, "0");
  }

  function clockTime(date) {
    return date.toLocaleTimeString(I18N[state.lang].htmlLang, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function get(url) {
    return fetch(url, { cache: "no-store", headers: { Accept: "application/json" } }).then(function (resp) {
      return resp.json().catch(function () {
        return {};
      }).then(function (data) {
        if (!resp.ok) {
          var err = new Error(typeof data.detail === "string" ? data.detail : String(resp.status));
          err.http = resp.status;
          throw err;
        }
        return data;
      });
    });
  }

  // --- parameters shared by the JSON request and the CSV link ------------------------------------------------

  function query(tab) {
    if (tab === "abc") {
      return "?by=" + encodeURIComponent($("abc-by").value) + "&days=" + encodeURIComponent(days("abc-days"));
    }
    if (tab === "slow") return "?days=" + encodeURIComponent(days("slow-days"));
    if (tab === "staff") {
      var parts = [];
      if ($("staff-from").value) parts.push("from=" + encodeURIComponent($("staff-from").value));
      if ($("staff-to").value) parts.push("to=" + encodeURIComponent($("staff-to").value));
      return parts.length ? "?" + parts.join("&") : "";
    }
    return "";
  }

  function days(id) {
    var n = parseInt($(id).value, 10);
    if (!(n >= 1)) n = 30;
    if (n > 366) n = 366;
    return n;
  }

  var ROUTE = { replenishment: "replenishment", abc: "abc", slow: "slow-movers", staff: "staff" };

  function updateCsvLinks() {
    TABS.forEach(function (tab) {
      $("csv-" + tab).setAttribute("href", "/api/reports/" + ROUTE[tab] + ".csv" + query(tab));
    });
  }

  // --- loading -----------------------------------------------------------------------------------------------

  function refresh(tab) {
    updateCsvLinks();
    var denied = $(tab + "-denied");
    return get("/api/reports/" + ROUTE[tab] + query(tab)).then(
      function (data) {
        if (denied) denied.hidden = true;
        state.data[tab] = data;
        state.updated = new Date();
        render(tab);
      },
      function (err) {
        if (denied && (err.http === 401 || err.http === 403)) {
          state.data[tab] = null;
          denied.hidden = false;
          render(tab);
          return;
        }
        toast(err.http ? t("err.request", { detail: err.message }) : t("err.network"));
      }
    );
  }

  // --- rendering ---------------------------------------------------------------------------------------------

  function render(tab) {
    if (tab === "replenishment") renderReplenishment();
    else if (tab === "abc") renderAbc();
    else if (tab === "slow") renderSlow();
    else renderStaff();
    $("updated").textContent = state.updated ? t("updated", { time: clockTime(state.updated) }) : "";
  }

  function renderReplenishment() {
    var data = state.data.replenishment;
    var body = $("replenishment-body");
    body.textContent = "";
    var rows = data ? data.rows : [];
    rows.forEach(function (r) {
      var tr = el("tr");
      tr.setAttribute("data-bin", r.bin_id);
      if (r.shelf_count === 0) tr.className = "out";
      tr.appendChild(td("bin", r.bin_id + (r.location ? " · " + r.location : "")));
      var product = td("product", name(r.name_zh, r.name_en, r.sku));
      if (r.back_room_uncertain) product.appendChild(el("span", "badge", t("rp.uncertain")));
      tr.appendChild(product);
      tr.appendChild(td("num shelf", r.shelf_count));
      tr.appendChild(td("num safety", r.safety_stock));
      tr.appendChild(td("num max", r.max_stock));
      tr.appendChild(td("num back-room", r.back_room));
      tr.appendChild(td("num bring", r.bring));
      tr.appendChild(td("num short" + (r.short > 0 ? " alarm" : ""), r.short));
      body.appendChild(tr);
    });
    $("replenishment-empty").hidden = !data || rows.length > 0;
    var unknown = $("replenishment-unknown");
    var bins = data ? data.unknown_bins : [];
    unknown.hidden = bins.length === 0;
    unknown.textContent = bins.length ? t("rp.unknown", { bins: bins.join(", ") }) : "";
  }

  function renderAbc() {
    var data = state.data.abc;
    var body = $("abc-body");
    body.textContent = "";
    var metricKey = data && data.by === "velocity" ? "abc.velocity" : "abc.value";
    var money = metricKey === "abc.value"; // CNY with fen, as on a receipt
    $("abc-metric-head").setAttribute("data-i18n", metricKey);
    $("abc-metric-head").textContent = t(metricKey);
    $("abc-summary").textContent = data
      ? t("abc.summary", { days: data.days, total: money ? Number(data.total).toFixed(2) : data.total, a: data.classes.A, b: data.classes.B, c: data.classes.C })
      : "";
    (data ? data.rows : []).forEach(function (r) {
      var tr = el("tr");
      tr.setAttribute("data-sku", r.sku);
      tr.appendChild(td("num rank", r.rank));
      tr.appendChild(td("product", name(r.name_zh, r.name_en, r.sku)));
      tr.appendChild(td("num metric", money ? Number(r.metric).toFixed(2) : r.metric));
      tr.appendChild(td("num share", percent(r.share)));
      tr.appendChild(td("num cumulative", percent(r.cumulative_share)));
      var cls = td("class");
      cls.appendChild(el("span", "abc abc-" + r.abc_class, r.abc_class));
      tr.appendChild(cls);
      body.appendChild(tr);
    });
  }

  function renderSlow() {
    var data = state.data.slow;
    var body = $("slow-body");
    body.textContent = "";
    var rows = data ? data.rows : [];
    rows.forEach(function (r) {
      var tr = el("tr");
      tr.setAttribute("data-sku", r.sku);
      tr.appendChild(td("product", name(r.name_zh, r.name_en, r.sku)));
      tr.appendChild(td("num book", r.book_qty));
      tr.appendChild(td("last-sold", r.last_sold ? new Date(r.last_sold).toLocaleDateString(I18N[state.lang].htmlLang) : t("slow.never")));
      tr.appendChild(td("num days-since", r.days_since === null ? "–" : r.days_since));
      body.appendChild(tr);
    });
    $("slow-empty").hidden = !data || rows.length > 0;
  }

  function staffRows(bodyId, rows, isShift) {
    var body = $(bodyId);
    body.textContent = "";
    rows.forEach(function (r) {
      var tr = el("tr");
      tr.setAttribute("data-group", r.group);
      tr.appendChild(td("group", isShift && r.group === "-" ? t("noShift") : r.group));
      tr.appendChild(td("num count", r.count));
      tr.appendChild(td("num acked", r.acked));
      tr.appendChild(td("num ack-median", duration(r.ack_median_s)));
      tr.appendChild(td("num ack-p90", duration(r.ack_p90_s)));
      tr.appendChild(td("num resolve-median", duration(r.resolve_median_s)));
      tr.appendChild(td("num resolve-p90", duration(r.resolve_p90_s)));
      body.appendChild(tr);
    });
  }

  function renderStaff() {
    var data = state.data.staff;
    staffRows("staff-shift-body", data ? data.by_shift : [], true);
    staffRows("staff-member-body", data ? data.by_staff : [], false);
  }

  // --- language and tabs -------------------------------------------------------------------------------------

  function setLang(lang) {
    state.lang = lang;
    save(STORAGE_LANG, lang);
    document.documentElement.lang = I18N[lang].htmlLang;
    document.title = t("title");
    Array.prototype.forEach.call(document.querySelectorAll("[data-i18n]"), function (node) {
      node.textContent = t(node.getAttribute("data-i18n"));
    });
    var toggle = $("lang-toggle");
    toggle.textContent = t("switchTo");
    toggle.lang = t("switchToLang");
    TABS.forEach(function (tab) {
      if (state.data[tab] !== undefined) render(tab);
    });
  }

  function initialLang() {
    var saved = load(STORAGE_LANG);
    if (saved === "zh" || saved === "en") return saved;
    var first = String((navigator.languages && navigator.languages[0]) || navigator.language || "").toLowerCase();
    return first.indexOf("zh") === 0 || first === "" ? "zh" : "en";
  }

  function showTab(tab) {
    if (TABS.indexOf(tab) < 0) tab = "replenishment";
    state.tab = tab;
    TABS.forEach(function (name) {
      $("tab-" + name).setAttribute("aria-selected", String(name === tab));
      $("pane-" + name).hidden = name !== tab;
    });
    if (window.location.hash.slice(1) !== tab) history.replaceState(null, "", "#" + tab);
    return refresh(tab);
  }

  // --- live replenishment ------------------------------------------------------------------------------------

  var pending = null;
  function stockChanged() {
    if (state.tab !== "replenishment" || pending) return;
    pending = setTimeout(function () {
      pending = null;
      refresh("replenishment");
    }, 2000);
  }

  function connect() {
    if (!window.EventSource) return;
    var source = new EventSource("/api/alerts/stream");
    source.addEventListener("stock", stockChanged);
    source.addEventListener("hello", stockChanged);
  }

  // --- start -------------------------------------------------------------------------------------------------

  function start() {
    setLang(initialLang());
    $("lang-toggle").addEventListener("click", function () {
      setLang(state.lang === "zh" ? "en" : "zh");
    });
    $("refresh").addEventListener("click", function () {
      refresh(state.tab);
    });
    TABS.forEach(function (tab) {
      $("tab-" + tab).addEventListener("click", function () {
        showTab(tab);
      });
    });
    ["abc", "slow", "staff"].forEach(function (tab) {
      $(tab + "-form").addEventListener("submit", function (ev) {
        ev.preventDefault();
        refresh(tab);
      });
    });
    $("abc-by").addEventListener("change", function () {
      refresh("abc");
    });
    ["abc-days", "slow-days", "staff-from", "staff-to"].forEach(function (id) {
      $(id).addEventListener("change", updateCsvLinks);
    });
    showTab(window.location.hash.slice(1) || "replenishment");
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
