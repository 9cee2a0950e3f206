/*
 * Stocktake (盘点) and receiving on a phone: start a session for an area, count by typing or scanning a code
 * (a Bluetooth/USB keyboard-wedge scanner types into the focused code field), watch counted vs expected live,
 * read the variance report, confirm; book a delivery by scanning cases and pallets.
 *
 * Idempotent counting: every count carries a scan id made here (a UUID v4) before it is sent, and a count whose
 * answer is lost on the store Wi-Fi is re-sent with the SAME id, so a retry never counts twice (the gateway
 * keeps counts as a set by id). `crypto.randomUUID` exists only in secure contexts (https, localhost) and a
 * store LAN serves plain http, so the UUID is built from `crypto.getRandomValues`, which works everywhere.
 *
 * Live progress: the gateway's stream (/api/alerts/stream) carries a `stocktake` or `receipt` event after every
 * change (a handheld scanner's count too); the open session is re-read then. `hello` (sent once the stream is
 * subscribed) triggers a full re-read, so nothing is missed across a reconnect.
 */
(function () {
  "use strict";

  var I18N = {
    zh: {
      htmlLang: "zh-CN",
      title: "盘点与收货",
      switchTo: "English",
      switchToLang: "en",
      "conn.connecting": "连接中…",
      "conn.live": "实时",
      "conn.lost": "连接中断，重试中…",
      "tab.stocktake": "盘点",
      "tab.receiving": "收货",
      staff: "员工",
      "st.area": "区域",
      "st.start": "开始盘点",
      "st.session": "盘点区域",
      "st.code": "条码",
      "st.qty": "数量",
      "st.count": "计数",
      "st.scanner": "手持扫描枪",
      "st.assign": "绑定到本次盘点",
      "st.progress": "进度",
      "st.recent": "最近计数",
      "st.variance": "差异报告",
      "st.csv": "下载 CSV",
      "st.confirm": "确认盘点并调整账面",
      "st.cancel": "放弃本次盘点",
      "st.confirmAsk": "确认后将按盘点结果调整账面库存，且不能撤销。继续？",
      "st.cancelAsk": "放弃本次盘点？已盘数量不会入账。",
      "st.bins": "货位：{bins}",
      "st.elsewhere": "以下商品在其他货位也有存放，请一并盘点：{skus}",
      "st.scannerInfo": "扫描枪计数 {counted} · 未绑定 {unassigned} · 拒绝 {refused}",
      "st.none": "（无）",
      "st.counted": "已计数",
      "st.void": "作废",
      "st.total": "短缺 {short} 件 · 盈余 {over} 件 · 金额差异 {value} 元",
      "rc.start": "新建收货单",
      "rc.receipt": "收货单",
      "rc.note": "送货单 (CSV)",
      "rc.noteLoaded": "已载入 {name}（{n} 个托盘）",
      "rc.book": "入库",
      "rc.totals": "本单合计",
      "rc.recent": "最近扫描",
      "rc.commit": "确认收货并入账",
      "rc.cancel": "作废收货单",
      "rc.commitAsk": "确认收货后将增加账面库存。继续？",
      "rc.cancelAsk": "作废本收货单？",
      "col.product": "商品",
      "col.expected": "账面",
      "col.counted": "已盘",
      "col.remaining": "未盘",
      "col.variance": "差异",
      "col.value": "金额",
      "col.qty": "数量",
      status: { open: "进行中", confirmed: "已确认", cancelled: "已放弃", committed: "已入账" },
      "err.request": "操作失败：{detail}",
      "err.network": "网络异常，请重试"
    },
    en: {
      htmlLang: "en",
      title: "Stocktake & receiving",
      switchTo: "中文",
      switchToLang: "zh-CN",
      "conn.connecting": "Connecting…",
      "conn.live": "Live",
      "conn.lost": "Connection lost, retrying…",
      "tab.stocktake": "Stocktake",
      "tab.receiving": "Receiving",
      staff: "Staff",
      "st.area": "Area",
      "st.start": "Start stocktake",
      "st.session": "Area",
      "st.code": "Code",
      "st.qty": "Qty",
      "st.count": "Count",
      "st.scanner": "Handheld scanner",
      "st.assign": "Count into this session",
      "st.progress": "Progress",
      "st.recent": "Recent counts",
      "st.variance": "Variance report",
      "st.csv": "Download CSV",
      "st.confirm": "Confirm and adjust book stock",
      "st.cancel": "Abandon this stocktake",
      "st.confirmAsk": "Confirming adjusts book stock to the counts and cannot be undone. Continue?",
      "st.cancelAsk": "Abandon this stocktake? Nothing counted will be booked.",
      "st.bins": "Bins: {bins}",
      "st.elsewhere": "These products also have bins elsewhere; count them there too: {skus}",
      "st.scannerInfo": "Scanner counts {counted} · unassigned {unassigned} · refused {refused}",
      "st.none": "(none)",
      "st.counted": "Counted",
      "st.void": "Void",
      "st.total": "Short {short} · over {over} · value variance CNY {value}",
      "rc.start": "New receipt",
      "rc.receipt": "Receipt",
      "rc.note": "Delivery note (CSV)",
      "rc.noteLoaded": "Loaded {name} ({n} pallets)",
      "rc.book": "Receive",
      "rc.totals": "Receipt totals",
      "rc.recent": "Recent scans",
      "rc.commit": "Commit to book stock",
      "rc.cancel": "Void receipt",
      "rc.commitAsk": "Committing adds these goods to book stock. Continue?",
      "rc.cancelAsk": "Void this receipt?",
      "col.product": "Product",
      "col.expected": "Book",
      "col.counted": "Counted",
      "col.remaining": "To count",
      "col.variance": "Diff",
      "col.value": "CNY",
      "col.qty": "Qty",
      status: { open: "open", confirmed: "confirmed", cancelled: "abandoned", committed: "committed" },
      "err.request": "Failed: {detail}",
      "err.network": "Network problem, please retry"
    }
  };

  var STORAGE_LANG = "shelfgate.stocktake.lang";
  var STORAGE_STAFF = "shelfgate.staff";
  var state = { lang: "zh", session: null, sessionId: null, receipt: null, receiptId: null, sessions: [], receipts: [] };

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

  function statusText(value) {
    return I18N[state.lang].status[value] || value;
  }

  function productName(row) {
    var name = row.name;
    if (!name || !(name.zh || name.en)) return row.sku || row.gtin;
    return (state.lang === "zh" ? name.zh : name.en) || name.zh || name.en;
  }

  function uuid4() {
    var b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 (RFC 9562 §5.4)
    b[8] = (b[8] & 0x3f) | 0x80; // variant 10
    var h = Array.prototype.map.call(b, function (x) {
      return (x + 0x100).toString(16).slice(1);
    }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
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

  function detailText(body) {
    if (!body || body.detail === undefined) return "";
    var d = body.detail;
    if (typeof d === "string") return d;
    if (d && d.message) return d.message + (d.issues ? ": " + d.issues.join("; ") : "");
    if (Array.isArray(d)) {
      return d.map(function (x) {
        return x.msg || JSON.stringify(x);
      }).join("; ");
    }
    return JSON.stringify(d);
  }

  /* One request; a network failure is retried (same body, so the same scan id) a few times before giving up. */
  function api(method, url, body, raw) {
    var attempt = 0;
    function once() {
      var init = { method: method, cache: "no-store", headers: { Accept: "application/json" } };
      if (raw !== undefined) {
        init.body = raw;
        init.headers["Content-Type"] = "text/csv";
      } else if (body !== undefined) {
        init.body = JSON.stringify(body);
        init.headers["Content-Type"] = "application/json";
      }
      return fetch(url, init).then(
        function (resp) {
          return resp.json().catch(function () {
            return {};
          }).then(function (data) {
            if (!resp.ok) {
              var err = new Error(detailText(data) || String(resp.status));
              err.http = resp.status;
              throw err;
            }
            return data;
          });
        },
        function (netErr) {
          attempt += 1;
          if (attempt > 3) throw netErr;
          return new Promise(function (resolve) {
            setTimeout(resolve, 300 * attempt);
          }).then(once);
        }
      );
    }
    return once();
  }

  function fail(err) {
    toast(err && err.http ? t("err.request", { detail: err.message }) : t("err.network"));
  }

  function staff() {
    var v = $("staff").value.trim();
    return v ? v : undefined;
  }

  // --- language ----------------------------------------------------------------------------------------------

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
    renderSessions();
    renderSession();
    renderReceipts();
    renderReceipt();
  }

  function initialLang() {
    var saved = load(STORAGE_LANG);
    if (saved === "zh" || saved === "en") return saved;
    var first = String((navigator.languages && navigator.languages[0]) || navigator.language || "").toLowerCase();
    return first.indexOf("zh") === 0 || first === "" ? "zh" : "en";
  }

  // --- tabs --------------------------------------------------------------------------------------------------

  function showTab(name) {
    var st = name === "stocktake";
    $("tab-stocktake").setAttribute("aria-selected", String(st));
    $("tab-receiving").setAttribute("aria-selected", String(!st));
    $("pane-stocktake").hidden = !st;
    $("pane-receiving").hidden = st;
  }

  // --- stocktake ---------------------------------------------------------------------------------------------

  function refreshSessions() {
    return api("GET", "/api/stocktakes").then(function (list) {
      state.sessions = list;
      if (!state.sessionId) {
        var open = list.filter(function (s) {
          return s.status === "open";
        });
        if (open.length) state.sessionId = open[0].session_id;
      }
      renderSessions();
      return state.sessionId ? refreshSession() : null;
    });
  }

  function refreshSession() {
    var id = state.sessionId;
    return Promise.all([api("GET", "/api/stocktakes/" + encodeURIComponent(id)), api("GET", "/api/stocktakes/scanners")])
      .then(function (res) {
        if (id !== state.sessionId) return;
        state.session = res[0];
        state.scanners = res[1];
        renderSession();
      });
  }

  function renderSessions() {
    var ul = $("sessions");
    ul.textContent = "";
    state.sessions.forEach(function (s) {
      if (s.status !== "open" && s.session_id !== state.sessionId) return;
      var li = el("li");
      var b = el("button", null, s.area + " · " + statusText(s.status) + " · " + s.counted_units + "/" + s.expected_units);
      b.type = "button";
      b.setAttribute("data-session", s.session_id);
      b.setAttribute("aria-pressed", String(s.session_id === state.sessionId));
      b.addEventListener("click", function () {
        state.sessionId = s.session_id;
        $("variance").hidden = true;
        renderSessions();
        refreshSession().catch(fail);
      });
      li.appendChild(b);
      ul.appendChild(li);
    });
  }

  function renderSession() {
    var s = state.session;
    $("session").hidden = !s;
    if (!s) return;
    var open = s.status === "open";
    $("s-area").textContent = s.area;
    $("s-status").textContent = statusText(s.status);
    $("s-status").setAttribute("data-status", s.status);
    $("s-bins").textContent = t("st.bins", { bins: s.bins.join(", ") });
    $("s-elsewhere").hidden = !s.elsewhere.length;
    $("s-elsewhere").textContent = t("st.elsewhere", { skus: s.elsewhere.join(", ") });
    ["code", "qty", "count", "confirm", "cancel", "assign", "scanner"].forEach(function (id) {
      $(id).disabled = !open;
    });
    $("csv").href = "/api/stocktakes/" + encodeURIComponent(s.session_id) + "/variance.csv";

    var body = $("progress-body");
    body.textContent = "";
    s.progress.forEach(function (p) {
      var tr = el("tr", p.counted === p.expected ? "done" : p.counted < p.expected ? "short" : "over");
      tr.setAttribute("data-sku", p.sku);
      var name = el("td", null, productName(p));
      name.appendChild(el("div", "muted", p.sku));
      tr.appendChild(name);
      tr.appendChild(el("td", "num expected", p.expected));
      tr.appendChild(el("td", "num counted", p.counted));
      tr.appendChild(el("td", "num remaining", p.remaining));
      body.appendChild(tr);
    });

    var recent = $("recent");
    recent.textContent = "";
    s.recent.forEach(function (c) {
      var li = el("li");
      li.appendChild(el("span", null, c.sku + " × " + c.qty + (c.source && c.source !== "page" ? " (" + c.source + ")" : "")));
      if (open) {
        var v = el("button", "btn", t("st.void"));
        v.type = "button";
        v.addEventListener("click", function () {
          api("POST", "/api/stocktakes/" + encodeURIComponent(s.session_id) + "/counts/" + encodeURIComponent(c.scan_id) + "/void")
            .then(setSession, fail);
        });
        li.appendChild(v);
      }
      recent.appendChild(li);
    });

    var sel = $("scanner");
    var scanners = (state.scanners && state.scanners.scanners) || [];
    var keep = sel.value;
    sel.textContent = "";
    scanners.forEach(function (sc) {
      var o = el("option", null, sc.scanner_id + (sc.session_id === s.session_id ? " ✓" : ""));
      o.value = sc.scanner_id;
      sel.appendChild(o);
    });
    if (keep) sel.value = keep;
    sel.parentNode.hidden = !scanners.length;
    var c = (state.scanners && state.scanners.counters) || {};
    $("scanner-info").textContent = t("st.scannerInfo", c);
  }

  function setSession(view) {
    state.session = view;
    state.sessionId = view.session_id;
    renderSession();
    api("GET", "/api/stocktakes").then(function (list) {
      state.sessions = list;
      renderSessions();
    }, function () {});
  }

  function showVariance() {
    var s = state.session;
    if (!s) return;
    api("GET", "/api/stocktakes/" + encodeURIComponent(s.session_id) + "/variance").then(function (v) {
      var body = $("variance-body");
      body.textContent = "";
      v.rows.forEach(function (r) {
        var tr = el("tr", r.variance < 0 ? "short" : r.variance > 0 ? "over" : "done");
        tr.setAttribute("data-sku", r.sku);
        tr.appendChild(el("td", null, productName(r)));
        tr.appendChild(el("td", "num", r.expected));
        tr.appendChild(el("td", "num", r.counted));
        tr.appendChild(el("td", "num variance", (r.variance > 0 ? "+" : "") + r.variance));
        tr.appendChild(el("td", "num value", r.value_variance === null ? "—" : r.value_variance));
        body.appendChild(tr);
      });
      $("variance-total").textContent = t("st.total", { short: v.units_short, over: v.units_over, value: v.value_variance });
      $("variance").hidden = false;
    }, fail);
  }

  function onCount(ev) {
    ev.preventDefault();
    var s = state.session;
    var code = $("code").value.trim();
    if (!s || !code) return;
    var body = { scan_id: uuid4(), code: code, by: staff() };
    var qty = parseInt($("qty").value, 10);
    if (qty > 0) body.qty = qty;
    $("code").value = "";
    $("qty").value = "";
    $("code").focus();
    api("POST", "/api/stocktakes/" + encodeURIComponent(s.session_id) + "/counts", body).then(setSession, fail);
  }

  // --- receiving ---------------------------------------------------------------------------------------------

  function refreshReceipts() {
    return api("GET", "/api/receipts").then(function (list) {
      state.receipts = list;
      if (!state.receiptId) {
        var open = list.filter(function (r) {
          return r.status === "open";
        });
        if (open.length) state.receiptId = open[0].receipt_id;
      }
      renderReceipts();
      return state.receiptId ? refreshReceipt() : null;
    });
  }

  function refreshReceipt() {
    var id = state.receiptId;
    return api("GET", "/api/receipts/" + encodeURIComponent(id)).then(function (view) {
      if (id === state.receiptId) setReceipt(view, true);
    });
  }

  function renderReceipts() {
    var ul = $("receipts");
    ul.textContent = "";
    state.receipts.forEach(function (r) {
      if (r.status !== "open" && r.receipt_id !== state.receiptId) return;
      var li = el("li");
      var b = el("button", null, r.receipt_id + " · " + statusText(r.status) + " · " + r.units);
      b.type = "button";
      b.setAttribute("data-receipt", r.receipt_id);
      b.setAttribute("aria-pressed", String(r.receipt_id === state.receiptId));
      b.addEventListener("click", function () {
        state.receiptId = r.receipt_id;
        renderReceipts();
        refreshReceipt().catch(fail);
      });
      li.appendChild(b);
      ul.appendChild(li);
    });
  }

  function setReceipt(view, quiet) {
    state.receipt = view;
    state.receiptId = view.receipt_id;
    renderReceipt();
    if (!quiet) refreshReceipts().catch(function () {});
  }

  function renderReceipt() {
    var r = state.receipt;
    $("receipt").hidden = !r;
    if (!r) return;
    var open = r.status === "open";
    $("r-id").textContent = r.receipt_id;
    $("r-status").textContent = statusText(r.status);
    $("r-status").setAttribute("data-status", r.status);
    $("r-note").textContent = r.delivery_note ? t("rc.noteLoaded", { name: r.delivery_note, n: r.note_pallets.length }) : "";
    ["rc-code", "rc-qty", "rc-scan", "rc-commit", "rc-cancel", "rc-note"].forEach(function (id) {
      $(id).disabled = !open;
    });
    var body = $("rc-totals-body");
    body.textContent = "";
    r.totals.forEach(function (row) {
      var tr = el("tr");
      tr.setAttribute("data-gtin", row.gtin);
      var name = el("td", null, productName(row));
      name.appendChild(el("div", "muted", row.gtin));
      tr.appendChild(name);
      tr.appendChild(el("td", "num qty", row.qty));
      body.appendChild(tr);
    });
    var scans = $("rc-scans");
    scans.textContent = "";
    r.scans.slice(0, 20).forEach(function (s) {
      var li = el("li");
      li.appendChild(el("span", null, s.lines.map(function (l) {
        return l.gtin + " × " + l.qty + (l.sscc ? " [" + l.sscc + "]" : "");
      }).join(", ")));
      scans.appendChild(li);
    });
  }

  function onReceive(ev) {
    ev.preventDefault();
    var r = state.receipt;
    var code = $("rc-code").value.trim();
    if (!r || !code) return;
    var body = { scan_id: uuid4(), code: code };
    var qty = parseInt($("rc-qty").value, 10);
    if (qty > 0) body.qty = qty;
    $("rc-code").value = "";
    $("rc-qty").value = "";
    $("rc-code").focus();
    api("POST", "/api/receipts/" + encodeURIComponent(r.receipt_id) + "/scans", body).then(function (v) {
      setReceipt(v);
    }, fail);
  }

  function onNote() {
    var r = state.receipt;
    var file = $("rc-note").files[0];
    if (!r || !file) return;
    file.text().then(function (text) {
      return api("PUT", "/api/receipts/" + encodeURIComponent(r.receipt_id) + "/delivery-note?name=" + encodeURIComponent(file.name), undefined, text);
    }).then(function (v) {
      setReceipt(v);
    }, fail).then(function () {
      $("rc-note").value = "";
    });
  }

  // --- live stream -------------------------------------------------------------------------------------------

  var es = null;
  var retry = 0;

  function connect() {
    es = new EventSource("/api/alerts/stream");
    es.addEventListener("hello", function () {
      retry = 0;
      $("conn").textContent = t("conn.live");
      $("conn").setAttribute("data-i18n", "conn.live");
      $("conn").setAttribute("data-state", "live");
      refreshSessions().catch(fail);
      refreshReceipts().catch(fail);
    });
    es.addEventListener("stocktake", function (ev) {
      var item = JSON.parse(ev.data);
      var s = item.session;
      var known = false;
      state.sessions = state.sessions.map(function (x) {
        if (x.session_id === s.session_id) {
          known = true;
          return s;
        }
        return x;
      });
      if (!known) state.sessions.unshift(s);
      if (!state.sessionId && s.status === "open") state.sessionId = s.session_id;
      renderSessions();
      if (s.session_id === state.sessionId) refreshSession().catch(function () {});
    });
    es.addEventListener("receipt", function (ev) {
      var r = JSON.parse(ev.data).receipt;
      if (r.receipt_id === state.receiptId) refreshReceipt().catch(function () {});
      else refreshReceipts().catch(function () {});
    });
    es.onerror = function () {
      es.close();
      $("conn").textContent = t("conn.lost");
      $("conn").setAttribute("data-i18n", "conn.lost");
      $("conn").setAttribute("data-state", "lost");
      retry += 1;
      var cap = Math.min(30000, 500 * Math.pow(2, retry));
      setTimeout(connect, Math.random() * cap); // full jitter: phones do not all reconnect at once
    };
  }

  // --- start -------------------------------------------------------------------------------------------------

  function start() {
    $("staff").value = load(STORAGE_STAFF) || "";
    $("staff").addEventListener("change", function () {
      save(STORAGE_STAFF, $("staff").value.trim());
    });
    $("lang-toggle").addEventListener("click", function () {
      setLang(state.lang === "zh" ? "en" : "zh");
    });
    $("tab-stocktake").addEventListener("click", function () {
      showTab("stocktake");
    });
    $("tab-receiving").addEventListener("click", function () {
      showTab("receiving");
    });
    $("start-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      api("POST", "/api/stocktakes", { area: $("area").value.trim(), by: staff() }).then(function (v) {
        $("area").value = "";
        $("variance").hidden = true;
        setSession(v);
        refreshSession().catch(function () {});
      }, fail);
    });
    $("count-form").addEventListener("submit", onCount);
    $("assign").addEventListener("click", function () {
      var s = state.session;
      var scanner = $("scanner").value;
      if (!s || !scanner) return;
      api("PUT", "/api/stocktakes/scanners/" + encodeURIComponent(scanner), { session_id: s.session_id }).then(function () {
        return refreshSession();
      }).catch(fail);
    });
    $("show-variance").addEventListener("click", showVariance);
    $("confirm").addEventListener("click", function () {
      var s = state.session;
      if (!s || !window.confirm(t("st.confirmAsk"))) return;
      api("POST", "/api/stocktakes/" + encodeURIComponent(s.session_id) + "/confirm", { by: staff() }).then(function (v) {
        setSession(v);
        showVariance();
      }, fail);
    });
    $("cancel").addEventListener("click", function () {
      var s = state.session;
      if (!s || !window.confirm(t("st.cancelAsk"))) return;
      api("POST", "/api/stocktakes/" + encodeURIComponent(s.session_id) + "/cancel", { by: staff() }).then(setSession, fail);
    });
    $("rc-start").addEventListener("click", function () {
      api("POST", "/api/receipts", { by: staff() }).then(function (v) {
        setReceipt(v);
      }, fail);
    });
    $("rc-form").addEventListener("submit", onReceive);
    $("rc-note").addEventListener("change", onNote);
    $("rc-commit").addEventListener("click", function () {
      var r = state.receipt;
      if (!r || !window.confirm(t("rc.commitAsk"))) return;
      api("POST", "/api/receipts/" + encodeURIComponent(r.receipt_id) + "/commit", { by: staff() }).then(function (v) {
        setReceipt(v);
      }, fail);
    });
    $("rc-cancel").addEventListener("click", function () {
      var r = state.receipt;
      if (!r || !window.confirm(t("rc.cancelAsk"))) return;
      api("POST", "/api/receipts/" + encodeURIComponent(r.receipt_id) + "/cancel", { by: staff() }).then(function (v) {
        setReceipt(v);
      }, fail);
    });
    if (window.location.hash === "#receiving") showTab("receiving");
    setLang(initialLang());
    refreshSessions().catch(fail); // at once, not only after the stream's `hello`: a proxy may hold SSE back
    refreshReceipts().catch(fail);
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
