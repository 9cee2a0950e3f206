/*
 * Installer page. Data: /api/devices (polled; device health changes slowly), /api/stock + the SSE stream
 * /api/alerts/stream (`stock` events) for live bins, and the installer API (edge/installer.py) for the
 * calibration wizard (polled while it runs: it shows the raw-derived live weight, which the stream does not
 * carry), bind-and-test (the bind wizard's scan wait is polled too: the gateway, not the page, hears the
 * scanners; the catalogue lookup happens there) and the commissioning record. Cameras: /api/cameras and the ROI editor routes
 * (edge/camera_api.py; loopback-only) — the snapshot, editable outlines over it, bind, preview, apply.
 * Everything user- or device-supplied is set with textContent, never as HTML.
 */
(function () {
  "use strict";

  var STORAGE_LANG = "shelfgate.installer.lang";
  var STORAGE_NAME = "shelfgate.installer.name";
  var POLL_MS = 400;
  var DEVICES_MS = 3000;

  var I18N = {
    zh: {
      htmlLang: "zh-CN", switchTo: "English", title: "安装调试", installer: "安装人员",
      "devices.title": "设备", "devices.id": "设备", "devices.family": "类型", "devices.state": "状态",
      "devices.counters": "计数", "devices.lastError": "最近错误", online: "在线", offline: "离线",
      "bins.title": "货位", "bins.bin": "货位", "bins.product": "商品", "bins.weight": "重量 (克)",
      "bins.count": "数量", "bins.stable": "稳定", "bins.select": "调试", yes: "是", no: "否",
      "work.title": "货位调试", "cal.title": "称重校准", "cal.live": "实时重量", grams: "克",
      "cal.start": "开始校准", "cal.empty": "秤盘已清空", "cal.mass": "砝码质量 (克)", "cal.loaded": "已放上砝码",
      cancel: "取消", before: "修改前", after: "修改后", "cal.apply": "确认写入", "cal.applyForce": "仍然写入",
      stable: "稳定", unstable: "不稳定",
      "step.empty": "请清空秤盘(托盘留在上面),然后确认。", "step.zeroing": "请勿触碰:等待空盘读数稳定。",
      "step.load": "请放上已知质量的砝码,输入质量后确认。", "step.spanning": "请勿触碰:等待加载读数稳定。",
      "step.checking": "请勿触碰:复测砝码以检查新校准。", "step.checked": "请核对检查结果,然后写入或取消。",
      "step.applied": "校准已写入。", "step.cancelled": "已取消:校准未改变。", "step.failed": "失败:校准未改变。",
      checkLine: "复测 {measured} 克 / 砝码 {mass} 克:误差 {err} 克 ({pct}%),允许 ±{tol} 克 — {verdict}",
      ok: "通过", failedWord: "未通过", written: "已写入,校准时间 {at}。",
      "bind.title": "绑定商品", "bind.gtin": "商品条码 (GTIN/店内码)", "bind.preview": "查询", "bind.scan": "扫码绑定",
      "bind.hint": "在货位上用手持扫描枪扫商品条码;也可以输入条码数字。", "bind.scanner": "扫描枪",
      "bind.anyScanner": "任一手持扫描枪", "bind.waiting": "请在货位 {bin} 用扫描枪({scanner})扫商品条码…",
      "bind.timeout": "未收到扫描,请重试。", "bind.name": "名称", "bind.price": "价格 (元)",
      "bind.spread": "重量偏差 (克)",
      "bind.apply": "确认绑定", bound: "已绑定 {sku},单件 {unit} 克。", sku: "商品编码", unitWeight: "单件重量 (克)",
      "test.title": "取货测试", "test.start": "开始测试", "test.waiting": "请从货位取走一件商品…",
      "test.passed": "通过:数量 {before} → {after}。", "test.failed": "未通过:{detail}(数量 {before} → {after})",
      record: "调试记录 (JSON)", board: "店员看板", connecting: "连接中…", live: "实时",
      "cam.title": "摄像头区域", "cam.pick": "摄像头", "cam.refresh": "刷新画面", "cam.capture": "拍摄参考图",
      "cam.hint": "在画面上拖动画出新区域;拖动区域可移动,拖动右下角可调整大小。",
      "cam.roi": "区域", "cam.bin": "货位 (可选)", "cam.state": "状态", "cam.score": "得分", "cam.delete": "删除",
      "cam.preview": "预览修改", "cam.undo": "撤销修改", "cam.apply": "确认应用", "cam.change": "变化",
      "cam.noBin": "(无)", "cam.hasRef": "有参考图", "cam.noRef": "无参考图", "cam.noFrame": "暂无画面:{detail}",
      "cam.applied": "已应用 {n} 处修改。", "cam.recaptured": "已重拍参考图:{ids}。", "cam.captured": "参考图已拍摄。",
      "cam.capturing": "正在拍摄参考图,请保持货架前无人…", "cam.nothing": "没有修改。",
      "change.added": "新增", "change.removed": "删除", "change.changed": "修改", "change.unchanged": "不变",
      "state.ok": "正常", "state.low": "偏少", "state.empty": "缺货", "state.unknown": "未知", "state.new": "未应用"
    },
    en: {
      htmlLang: "en", switchTo: "中文", title: "Installation", installer: "Installer",
      "devices.title": "Devices", "devices.id": "Device", "devices.family": "Family", "devices.state": "State",
      "devices.counters": "Counters", "devices.lastError": "Last error", online: "online", offline: "offline",
      "bins.title": "Bins", "bins.bin": "Bin", "bins.product": "Product", "bins.weight": "Weight (g)",
      "bins.count": "Count", "bins.stable": "Stable", "bins.select": "Commission", yes: "yes", no: "no",
      "work.title": "Commission bin", "cal.title": "Calibration", "cal.live": "Live weight", grams: "g",
      "cal.start": "Start calibration", "cal.empty": "Plate is empty", "cal.mass": "Known mass (g)",
      "cal.loaded": "Mass is on the plate", cancel: "Cancel", before: "Before", after: "After",
      "cal.apply": "Write calibration", "cal.applyForce": "Write anyway", stable: "stable", unstable: "not stable",
      "step.empty": "Empty the plate (leave the tray on it), then confirm.",
      "step.zeroing": "Hold still: waiting for a stable empty reading.",
      "step.load": "Place the known mass on the plate, enter its mass, then confirm.",
      "step.spanning": "Hold still: waiting for a stable loaded reading.",
      "step.checking": "Hold still: re-reading the mass to check the new calibration.",
      "step.checked": "Review the check, then write (or cancel).", "step.applied": "Calibration written.",
      "step.cancelled": "Cancelled: the calibration is unchanged.", "step.failed": "Failed: the calibration is unchanged.",
      checkLine: "Re-read {measured} g for {mass} g: error {err} g ({pct} %), tolerance ±{tol} g — {verdict}",
      ok: "OK", failedWord: "FAILED", written: "Written, calibrated at {at}.",
      "bind.title": "Bind product", "bind.gtin": "Barcode (GTIN / in-store code)", "bind.preview": "Look up",
      "bind.scan": "Bind by scan", "bind.hint": "Scan the product's barcode at the bin with a handheld scanner, or type its digits.",
      "bind.scanner": "Scanner", "bind.anyScanner": "any handheld",
      "bind.waiting": "Scan the product's barcode at bin {bin} ({scanner})…",
      "bind.timeout": "No scan arrived: try again.", "bind.name": "Name", "bind.price": "Price (CNY)",
      "bind.spread": "Weight spread (g)",
      "bind.apply": "Confirm binding", bound: "Bound to {sku}, {unit} g each.", sku: "SKU",
      unitWeight: "Unit weight (g)", "test.title": "Pick test", "test.start": "Start pick test",
      "test.waiting": "Take one item from the bin now…", "test.passed": "Passed: count {before} → {after}.",
      "test.failed": "Failed: {detail} (count {before} → {after})", record: "Commissioning record (JSON)",
      board: "Staff board", connecting: "connecting…", live: "live",
      "cam.title": "Camera regions", "cam.pick": "Camera", "cam.refresh": "Refresh snapshot",
      "cam.capture": "Capture reference",
      "cam.hint": "Drag on the picture to draw a new region; drag a region to move it, its bottom-right corner to resize it.",
      "cam.roi": "Region", "cam.bin": "Bin (optional)", "cam.state": "State", "cam.score": "Score", "cam.delete": "Delete",
      "cam.preview": "Preview changes", "cam.undo": "Undo changes", "cam.apply": "Apply", "cam.change": "Change",
      "cam.noBin": "(none)", "cam.hasRef": "reference taken", "cam.noRef": "no reference", "cam.noFrame": "No picture yet: {detail}",
      "cam.applied": "Applied {n} change(s).", "cam.recaptured": "Reference re-taken for {ids}.",
      "cam.captured": "Reference captured.", "cam.capturing": "Capturing the reference: keep the shelf clear of people…",
      "cam.nothing": "Nothing changed.",
      "change.added": "added", "change.removed": "removed", "change.changed": "changed", "change.unchanged": "unchanged",
      "state.ok": "ok", "state.low": "low", "state.empty": "empty", "state.unknown": "unknown", "state.new": "not applied"
    }
  };

  var state = {
    lang: "en", bins: {}, order: [], selected: null, calTimer: null, testTimer: null, scanTimer: null, cal: null
  };

  function $(id) { return document.getElementById(id); }
  function load(key) { try { return window.localStorage.getItem(key); } catch (e) { return null; } }
  function save(key, v) { try { window.localStorage.setItem(key, v); } catch (e) { /* page only */ } }

  function t(key, vars) {
    var s = I18N[state.lang][key];
    if (s === undefined) { s = I18N.en[key] !== undefined ? I18N.en[key] : key; }
    if (vars) {
      s = String(s).replace(/\{(\w+)\}/g, function (_, n) {
        return vars[n] === undefined || vars[n] === null ? "—" : String(vars[n]);
      });
    }
    return s;
  }

  function initialLang() {
    var saved = load(STORAGE_LANG);
    if (saved === "zh" || saved === "en") { return saved; }
    var langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
    var first = String(langs[0] || "").toLowerCase();
    return first === "zh" || first.indexOf("zh-") === 0 ? "zh" : "en";
  }

  function setLang(lang) {
    state.lang = lang;
    save(STORAGE_LANG, lang);
    document.documentElement.lang = t("htmlLang");
    document.title = t("title");
    var nodes = document.querySelectorAll("[data-i18n]");
    for (var i = 0; i < nodes.length; i++) { nodes[i].textContent = t(nodes[i].getAttribute("data-i18n")); }
    $("lang-toggle").textContent = t("switchTo");
    $("conn").textContent = t($("conn").getAttribute("data-state") === "live" ? "live" : "connecting");
    renderBins();
    if (state.cal) { renderCal(state.cal); }
    renderCam();
  }

  function installer() { return ($("installer-name").value || "").trim() || "installer"; }

  function api(method, path, body) {
    var opts = { method: method, headers: {} };
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    return fetch(path, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (!r.ok) {
          var detail = data && data.detail !== undefined ? data.detail : r.statusText;
          var err = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
          err.status = r.status;
          throw err;
        }
        return data;
      });
    });
  }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "—" : String(text);
    if (cls) { td.className = cls; }
    tr.appendChild(td);
    return td;
  }

  function fmt(x, nd) { return x === null || x === undefined ? "—" : Number(x).toFixed(nd); }

  // --- devices --------------------------------------------------------------------------------------

  function renderDevices(list) {
    var body = $("devices-body");
    body.textContent = "";
    list.forEach(function (d) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-device", d.device_id);
      tr.setAttribute("data-online", d.online ? "true" : "false");
      cell(tr, d.device_id);
      cell(tr, d.family);
      cell(tr, t(d.online ? "online" : "offline"));
      cell(tr, (d.messages || 0) + " / " + (d.errors || 0));
      cell(tr, d.last_error);
      body.appendChild(tr);
    });
  }

  function pollDevices() {
    api("GET", "/api/devices").then(renderDevices).catch(function () { /* next poll */ });
  }

  // --- bins ----------------------------------------------------------------------------------------

  function productName(b) {
    var n = b.name || {};
    return (state.lang === "zh" ? n.zh : n.en) || n.zh || n.en || b.sku;
  }

  function renderBins() {
    var body = $("bins-body");
    body.textContent = "";
    state.order.forEach(function (id) {
      var b = state.bins[id];
      var tr = document.createElement("tr");
      tr.setAttribute("data-bin", id);
      if (id === state.selected) { tr.className = "selected"; }
      cell(tr, id);
      cell(tr, productName(b) + " · " + b.sku);
      cell(tr, fmt(b.weight_g, 1), "num w");
      cell(tr, b.count, "num c");
      cell(tr, t(b.stable ? "yes" : "no"));
      var td = document.createElement("td");
      var btn = document.createElement("button");
      btn.type = "button";
      btn.className = "btn select";
      btn.textContent = t("bins.select");
      btn.addEventListener("click", function () { select(id); });
      td.appendChild(btn);
      tr.appendChild(td);
      body.appendChild(tr);
    });
  }

  function loadStock() {
    return api("GET", "/api/stock").then(function (list) {
      state.order = [];
      list.forEach(function (b) { state.bins[b.bin_id] = b; state.order.push(b.bin_id); });
      renderBins();
    });
  }

  function connect() {
    var es = new EventSource("/api/alerts/stream");
    es.addEventListener("hello", function () {
      $("conn").setAttribute("data-state", "live");
      $("conn").textContent = t("live");
      loadStock().then(renderCamTable).catch(function () { /* retried on the next hello */ });
      pollDevices();
      loadScanners();
      loadCameras();
    });
    es.addEventListener("stock", function (ev) {
      var item = JSON.parse(ev.data);
      if (item.bin && state.bins[item.bin.bin_id]) { state.bins[item.bin.bin_id] = item.bin; renderBins(); }
    });
    es.onerror = function () {
      $("conn").setAttribute("data-state", "connecting");
      $("conn").textContent = t("connecting");
    };
  }

  function select(id) {
    if (state.selected && state.selected !== id && $("bind").getAttribute("data-state") === "waiting") {
      // Leaving a bin whose wizard waits for a scan: stop it, or the next scan would still bind that bin.
      api("DELETE", "/api/installer/binding/" + encodeURIComponent(state.selected) + "/scan").catch(function () {});
    }
    state.selected = id;
    $("work").hidden = false;
    $("work-bin").textContent = id;
    resetBind();
    $("test-result").textContent = "";
    $("test-result").setAttribute("data-state", "");
    $("cal-result").textContent = "";
    stopCal();
    state.cal = null;
    showCalButtons(null);
    $("cal-prompt").textContent = "";
    renderBins();
    api("GET", "/api/installer/calibration/" + encodeURIComponent(id)).then(function (st) {
      state.cal = st; renderCal(st); pollCal();
    }).catch(function () { /* no session running */ });
  }

  // --- calibration -----------------------------------------------------------------------------------

  function calUrl(suffix) { return "/api/installer/calibration/" + encodeURIComponent(state.selected) + (suffix || ""); }

  function showCalButtons(step) {
    $("cal-start").hidden = !(step === null || step === "applied" || step === "cancelled" || step === "failed");
    $("cal-empty").hidden = step !== "empty";
    $("cal-mass-wrap").hidden = step !== "load";
    $("cal-loaded").hidden = step !== "load";
    $("cal-cancel").hidden = step === null || step === "applied" || step === "cancelled" || step === "failed";
    $("cal-review").hidden = step !== "checked";
  }

  function diffRows(tbody, rows) {
    tbody.textContent = "";
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      var th = document.createElement("th");
      th.textContent = r[0];
      tr.appendChild(th);
      cell(tr, r[1]);
      var td = cell(tr, r[2]);
      if (String(r[1]) !== String(r[2])) { td.className = "changed"; }
      tbody.appendChild(tr);
    });
  }

  function renderCal(st) {
    var step = st.step;
    $("cal").setAttribute("data-step", step);
    $("cal-prompt").textContent = step === "failed" && st.error ? st.error : t("step." + step);
    $("cal-live").textContent = fmt(st.live_g, 1);
    $("cal-stable").setAttribute("data-stable", st.stable ? "true" : "false");
    $("cal-stable").textContent = t(st.stable ? "stable" : "unstable");
    showCalButtons(step);
    if (step === "checked" && st.check && st.after) {
      var c = st.check;
      $("cal-check").setAttribute("data-ok", c.ok ? "true" : "false");
      $("cal-check").textContent = t("checkLine", {
        measured: fmt(c.measured_g, 2), mass: c.mass_g, err: fmt(c.error_g, 2), pct: fmt(c.error_pct, 3),
        tol: fmt(c.tolerance_g, 2), verdict: t(c.ok ? "ok" : "failedWord")
      });
      diffRows($("cal-diff").querySelector("tbody"), [
        ["zero", st.before.zero, Number(st.after.zero).toPrecision(8)],
        ["span_g_per_unit", st.before.span_g_per_unit, Number(st.after.span_g_per_unit).toPrecision(8)]
      ]);
      $("cal-apply").textContent = t(c.ok ? "cal.apply" : "cal.applyForce");
      $("cal-apply").setAttribute("data-force", c.ok ? "false" : "true");
    }
  }

  function stopCal() { if (state.calTimer) { clearTimeout(state.calTimer); state.calTimer = null; } }

  function pollCal() {
    stopCal();
    var bin = state.selected;
    api("GET", calUrl()).then(function (st) {
      if (bin !== state.selected) { return; }
      state.cal = st;
      renderCal(st);
      state.calTimer = setTimeout(pollCal, POLL_MS);
    }).catch(function () { stopCal(); });
  }

  function calError(e) {
    $("cal-result").setAttribute("data-state", "error");
    $("cal-result").textContent = e.message;
  }

  function wireCal() {
    $("cal-start").addEventListener("click", function () {
      $("cal-result").textContent = "";
      api("POST", calUrl(), { installer: installer() }).then(function (st) { state.cal = st; renderCal(st); pollCal(); }).catch(calError);
    });
    $("cal-empty").addEventListener("click", function () {
      api("POST", calUrl("/empty")).then(renderCal).catch(calError);
    });
    $("cal-loaded").addEventListener("click", function () {
      var mass = parseFloat(String($("cal-mass").value).replace(",", "."));
      if (!(mass > 0)) { calError(new Error(t("cal.mass"))); return; }
      api("POST", calUrl("/loaded"), { mass_g: mass }).then(renderCal).catch(calError);
    });
    $("cal-cancel").addEventListener("click", function () {
      stopCal();
      api("DELETE", calUrl()).then(function (st) { state.cal = st; renderCal(st); }).catch(calError);
    });
    $("cal-apply").addEventListener("click", function () {
      var force = $("cal-apply").getAttribute("data-force") === "true";
      stopCal();
      api("POST", calUrl("/apply"), { force: force }).then(function (st) {
        state.cal = st;
        renderCal(st);
        $("cal-result").setAttribute("data-state", "ok");
        $("cal-result").textContent = t("written", { at: st.after && st.after.calibrated_at });
      }).catch(function (e) { calError(e); pollCal(); });
    });
  }

  // --- binding (by scan, or a typed code) and pick test ----------------------------------------------
  //
  // "Scan" arms a wait in the gateway (POST …/binding/{bin}/scan): only while it waits does the wizard take a
  // scan, from the chosen scanner or any handheld one. The page polls the wait: a refused code (not in the
  // catalogue) is shown and the wait goes on; a known one ends it with the item and the proposed binding.

  var pendingBinding = null;

  function bindUrl(suffix) { return "/api/installer/binding/" + encodeURIComponent(state.selected) + (suffix || ""); }

  function stopScanPoll() { if (state.scanTimer) { clearTimeout(state.scanTimer); state.scanTimer = null; } }

  function resetBind() {
    stopScanPoll();
    pendingBinding = null;
    $("bind").setAttribute("data-state", "");
    $("bind-review").hidden = true;
    $("bind-item").hidden = true;
    $("bind-refused").hidden = true;
    $("bind-refused").textContent = "";
    $("bind-prompt").textContent = "";
    $("bind-result").textContent = "";
    $("bind-scan-cancel").hidden = true;
  }

  function loadScanners() {
    api("GET", "/api/devices?family=scanner").then(function (list) {
      var sel = $("bind-scanner");
      var keep = sel.value;
      sel.textContent = "";
      var any = document.createElement("option");
      any.value = ""; any.setAttribute("data-i18n", "bind.anyScanner"); any.textContent = t("bind.anyScanner");
      sel.appendChild(any);
      list.forEach(function (d) {
        if (d.role === "lane") { return; }  // a lane scanner's scans are sales
        var o = document.createElement("option");
        o.value = d.device_id;
        o.textContent = d.device_id + (d.role ? " (" + d.role + ")" : "");
        sel.appendChild(o);
      });
      sel.value = keep;
      if (sel.value !== keep) { sel.value = ""; }
    }).catch(function () { /* typed codes still work */ });
  }

  function showBinding(p) {
    pendingBinding = p;
    var rows = [
      [t("sku"), p.before.sku, p.after.sku],
      [t("unitWeight"), p.before.unit_weight_g, p.after.unit_weight_g]
    ];
    if (p.after.unit_weight_spread_g !== undefined) {
      rows.push([t("bind.spread"), p.before.unit_weight_spread_g, p.after.unit_weight_spread_g]);
    }
    diffRows($("bind-diff").querySelector("tbody"), rows);
    var item = p.item;
    $("bind-item").hidden = !item;
    if (item) {
      $("bind-item").setAttribute("data-gtin", item.gtin);
      $("bind-name-zh").textContent = item.name.zh;
      $("bind-name-en").textContent = item.name.en;
      $("bind-price").textContent = item.price;
      $("bind-item-weight").textContent = item.unit_weight_g === null ? "—" : String(item.unit_weight_g);
      $("bind-item-spread").textContent = String(item.unit_weight_spread_g);
    }
    $("bind").setAttribute("data-state", "review");
    $("bind-review").hidden = false;
  }

  function bindError(e) {
    $("bind-result").setAttribute("data-state", "error");
    $("bind-result").textContent = e.message;
  }

  function renderScanWait(w) {
    var waiting = w.state === "waiting";
    $("bind-scan-cancel").hidden = !waiting;
    $("bind").setAttribute("data-state", waiting ? "waiting" : w.state === "scanned" ? "review" : w.state);
    $("bind-prompt").textContent = waiting ? t("bind.waiting", { bin: w.bin_id, scanner: w.scanner || t("bind.anyScanner") })
      : w.state === "timeout" ? t("bind.timeout") : "";
    var refused = w.refused;
    $("bind-refused").hidden = !refused;
    $("bind-refused").textContent = refused ? refused.reason : "";
    if (refused) { $("bind-refused").setAttribute("data-gtin", refused.gtin); }
    if (w.state === "scanned" && w.proposal) {
      $("bind-gtin").value = w.scan && w.scan.gtin ? w.scan.gtin : "";
      showBinding(w.proposal);
    }
  }

  function pollScan(bin) {
    stopScanPoll();
    api("GET", bindUrl("/scan")).then(function (w) {
      if (bin !== state.selected) { return; }
      renderScanWait(w);
      if (w.state === "waiting") { state.scanTimer = setTimeout(function () { pollScan(bin); }, POLL_MS); }
    }).catch(function (e) { stopScanPoll(); bindError(e); });
  }

  function wireBind() {
    $("bind-preview").addEventListener("click", function () {
      var code = ($("bind-gtin").value || "").trim();
      if (!code) { return; }
      resetBind();
      api("POST", bindUrl("/preview"), { code: code }).then(showBinding).catch(bindError);
    });
    $("bind-gtin").addEventListener("keydown", function (ev) { if (ev.key === "Enter") { $("bind-preview").click(); } });
    $("bind-scan").addEventListener("click", function () {
      var bin = state.selected;
      resetBind();
      var body = $("bind-scanner").value ? { scanner: $("bind-scanner").value } : {};
      api("POST", bindUrl("/scan"), body).then(function (w) { renderScanWait(w); pollScan(bin); }).catch(bindError);
    });
    $("bind-scan-cancel").addEventListener("click", function () {
      stopScanPoll();
      api("DELETE", bindUrl("/scan")).then(function () { resetBind(); }).catch(bindError);
    });
    $("bind-apply").addEventListener("click", function () {
      if (!pendingBinding) { return; }
      var p = pendingBinding;
      var body = { sku: p.after.sku, unit_weight_g: p.after.unit_weight_g, installer: installer(), source: p.source };
      if (p.after.unit_weight_spread_g !== undefined) { body.unit_weight_spread_g = p.after.unit_weight_spread_g; }
      api("POST", bindUrl(), body).then(function (r) {
        $("bind-review").hidden = true;
        $("bind").setAttribute("data-state", "bound");
        $("bind-result").setAttribute("data-state", "ok");
        var name = r.item ? (state.lang === "zh" ? r.item.name.zh : r.item.name.en) + " · " : "";
        $("bind-result").textContent = t("bound", { sku: name + r.bin.sku, unit: r.bin.unit_weight_g });
        state.bins[r.bin.bin_id] = r.bin;
        renderBins();
      }).catch(bindError);
    });
  }

  function renderTest(r) {
    var el = $("test-result");
    el.setAttribute("data-state", r.state);
    var vars = { before: r.count_before, after: r.count_after, detail: r.detail };
    el.textContent = r.state === "waiting" ? t("test.waiting") : t("test." + r.state, vars);
  }

  function pollTest(bin) {
    api("GET", "/api/installer/pick-test/" + encodeURIComponent(bin)).then(function (r) {
      if (bin !== state.selected) { return; }
      renderTest(r);
      if (r.state === "waiting") { state.testTimer = setTimeout(function () { pollTest(bin); }, POLL_MS); }
    }).catch(function (e) { $("test-result").setAttribute("data-state", "error"); $("test-result").textContent = e.message; });
  }

  function wireTest() {
    $("test-start").addEventListener("click", function () {
      var bin = state.selected;
      api("POST", "/api/installer/pick-test/" + encodeURIComponent(bin), { installer: installer() })
        .then(function (r) { renderTest(r); pollTest(bin); })
        .catch(function (e) { $("test-result").setAttribute("data-state", "error"); $("test-result").textContent = e.message; });
    });
  }

  // --- cameras: draw and bind ROIs on the snapshot ---------------------------------------------------------
  //
  // The snapshot is fetched plain (?overlay=false) and the outlines are an SVG on top whose viewBox is the
  // frame in pixels, so a pointer position maps to reference pixels with the SVG's own screen matrix. The
  // working copy (`cam.edit`) is only sent on preview/apply; the gateway validates it like the config.

  var SVGNS = "http://www.w3.org/2000/svg";
  var CAM_MS = 1500;
  var MIN_PX = 8;
  var cam = { id: null, view: null, edit: [], sel: null, drag: null, timer: null, pending: null };

  function camUrl(suffix) { return "/api/cameras/" + encodeURIComponent(cam.id) + (suffix || ""); }

  function rectOf(r) {
    if (r.rect) { return r.rect.slice(); }
    var xs = r.polygon.map(function (p) { return p[0]; }), ys = r.polygon.map(function (p) { return p[1]; });
    var x0 = Math.min.apply(null, xs), y0 = Math.min.apply(null, ys);
    return [x0, y0, Math.max.apply(null, xs) - x0, Math.max.apply(null, ys) - y0];
  }

  function camStatus(id) {
    var v = cam.view && cam.view.rois.filter(function (r) { return r.id === id; })[0];
    return v || null;
  }

  function frameSize() {
    var img = $("cam-img");
    if (cam.view && cam.view.frame_size) { return cam.view.frame_size; }
    if (img.naturalWidth) { return { width: img.naturalWidth, height: img.naturalHeight }; }
    return null;
  }

  function loadCameras() {
    api("GET", "/api/cameras").then(function (list) {
      if (!list.length) { return; }
      $("cameras").hidden = false;
      var sel = $("cam-select");
      if (sel.options.length !== list.length) {
        sel.textContent = "";
        list.forEach(function (c) {
          var o = document.createElement("option");
          o.value = c.device_id; o.textContent = c.device_id; sel.appendChild(o);
        });
      }
      if (!cam.id) { openCamera(list[0].device_id); }
    }).catch(function () { /* next hello */ });
  }

  function openCamera(id) {
    cam.id = id; cam.sel = null; cam.pending = null;
    $("cam-select").value = id;
    $("cam-review").hidden = true;
    $("cam-result").textContent = "";
    refreshSnapshot();
    loadRois(true);
  }

  function refreshSnapshot() {
    if (!cam.id) { return; }
    var img = $("cam-img");
    fetch(camUrl("/snapshot.jpg?overlay=false"), { cache: "no-store" }).then(function (r) {
      if (!r.ok) {
        return r.json().catch(function () { return {}; }).then(function (d) { throw new Error(d.detail || r.statusText); });
      }
      return r.blob();
    }).then(function (blob) {
      var old = img.getAttribute("src");
      img.onload = function () { if (old && old.indexOf("blob:") === 0) { URL.revokeObjectURL(old); } renderCam(); };
      img.src = URL.createObjectURL(blob);
      $("cam-img-error").hidden = true;
    }).catch(function (e) {
      $("cam-img-error").hidden = false;
      $("cam-img-error").textContent = t("cam.noFrame", { detail: e.message });
    });
  }

  function loadRois(resetEdit) {
    if (!cam.id) { return Promise.resolve(); }
    var id = cam.id;
    return api("GET", camUrl("/rois")).then(function (v) {
      if (id !== cam.id) { return; }
      cam.view = v;
      if (!resetEdit) { updateCamStates(); return; }
      if (resetEdit) {
        cam.edit = v.rois.map(function (r) {
          var e = { id: r.id, sku: r.sku || "", bin: r.bin || "" };
          if (r.rect) { e.rect = r.rect.slice(); } else { e.polygon = r.polygon.map(function (p) { return p.slice(); }); }
          return e;
        });
      }
      renderCam();
    }).catch(function (e) { camResult("error", e.message); });
  }

  function pollRois() {
    if (cam.timer) { clearTimeout(cam.timer); }
    cam.timer = setTimeout(function () {
      if (!cam.drag) { loadRois(false); }
      pollRois();
    }, CAM_MS);
  }

  function camResult(kind, text) {
    $("cam-result").setAttribute("data-state", kind);
    $("cam-result").textContent = text;
  }

  function el(name, attrs) {
    var n = document.createElementNS(SVGNS, name);
    Object.keys(attrs).forEach(function (k) { n.setAttribute(k, String(attrs[k])); });
    return n;
  }

  function renderCam() {
    if (!cam.id) { return; }
    var ref = $("cam-ref");
    var has = !!(cam.view && cam.view.has_reference);
    ref.setAttribute("data-stable", has ? "true" : "false");
    ref.setAttribute("data-has-reference", has ? "true" : "false");
    ref.textContent = t(has ? "cam.hasRef" : "cam.noRef");
    renderCamSvg();
    renderCamTable();
  }

  function renderCamSvg() {
    var svg = $("cam-svg");
    var size = frameSize();
    svg.textContent = "";
    if (!size) { return; }
    svg.setAttribute("viewBox", "0 0 " + size.width + " " + size.height);
    svg.setAttribute("preserveAspectRatio", "none");
    var hs = Math.max(10, Math.round(size.width / 70));
    cam.edit.forEach(function (r) {
      var st = camStatus(r.id);
      var stateName = st ? st.state : "new";
      var shape;
      if (r.rect) {
        shape = el("rect", { x: r.rect[0], y: r.rect[1], width: r.rect[2], height: r.rect[3] });
      } else {
        shape = el("polygon", { points: r.polygon.map(function (p) { return p.join(","); }).join(" ") });
      }
      shape.setAttribute("class", "roi" + (r.id === cam.sel ? " sel" : ""));
      shape.setAttribute("data-roi", r.id);
      shape.setAttribute("data-state", stateName);
      svg.appendChild(shape);
      var b = rectOf(r);
      var label = el("text", { x: b[0] + 4, y: Math.max(22, b[1] - 6), "class": "label" });
      label.textContent = r.id + (r.sku ? " · " + r.sku : "") + " " + t("state." + stateName);
      svg.appendChild(label);
      if (r.id === cam.sel && r.rect) {
        var h = el("rect", { x: b[0] + b[2] - hs / 2, y: b[1] + b[3] - hs / 2, width: hs, height: hs, "class": "handle" });
        h.setAttribute("data-handle", r.id);
        svg.appendChild(h);
      }
    });
  }

  function binOptions(select, value) {
    var none = document.createElement("option");
    none.value = ""; none.textContent = t("cam.noBin");
    select.appendChild(none);
    state.order.forEach(function (id) {
      var o = document.createElement("option");
      o.value = id; o.textContent = id + " · " + productName(state.bins[id]);
      select.appendChild(o);
    });
    if (value && state.order.indexOf(value) < 0) {
      var extra = document.createElement("option");
      extra.value = value; extra.textContent = value; select.appendChild(extra);
    }
    select.value = value || "";
  }

  function renderCamTable() {
    var body = $("cam-rois-body");
    if (!cam.id) { return; }
    body.textContent = "";
    cam.edit.forEach(function (r, i) {
      var st = camStatus(r.id);
      var tr = document.createElement("tr");
      tr.setAttribute("data-roi", r.id);
      tr.setAttribute("data-state", st ? st.state : "new");
      if (r.id === cam.sel) { tr.className = "sel"; }
      tr.addEventListener("click", function () { if (cam.sel !== r.id) { selectRoi(r.id); } });
      var td = document.createElement("td");
      var idIn = document.createElement("input");
      idIn.className = "roi-id"; idIn.value = r.id; idIn.maxLength = 64;
      idIn.addEventListener("change", function () { var was = r.id; r.id = idIn.value.trim(); if (cam.sel === was) { cam.sel = r.id; } renderCam(); });
      td.appendChild(idIn); tr.appendChild(td);
      td = document.createElement("td");
      var skuIn = document.createElement("input");
      skuIn.className = "roi-sku"; skuIn.value = r.sku || ""; skuIn.maxLength = 32; skuIn.autocomplete = "off";
      skuIn.placeholder = r.bin && state.bins[r.bin] ? state.bins[r.bin].sku : "";  // blank: the bin's SKU
      skuIn.addEventListener("input", function () { r.sku = skuIn.value.trim(); renderCamSvg(); });
      td.appendChild(skuIn); tr.appendChild(td);
      td = document.createElement("td");
      var binSel = document.createElement("select");
      binSel.className = "roi-bin";
      binOptions(binSel, r.bin);
      binSel.addEventListener("change", function () {
        r.bin = binSel.value;
        skuIn.placeholder = r.bin && state.bins[r.bin] ? state.bins[r.bin].sku : "";
      });
      td.appendChild(binSel); tr.appendChild(td);
      cell(tr, t("state." + (st ? st.state : "new")), "state state-" + (st ? st.state : "new"));
      cell(tr, st ? fmt(st.score, 2) : null, "num score");
      td = document.createElement("td");
      var del = document.createElement("button");
      del.type = "button"; del.className = "btn delete"; del.textContent = t("cam.delete");
      del.addEventListener("click", function (ev) {
        ev.stopPropagation();
        cam.edit.splice(i, 1);
        if (cam.sel === r.id) { cam.sel = null; }
        renderCam();
      });
      td.appendChild(del); tr.appendChild(td);
      body.appendChild(tr);
    });
  }

  function selectRoi(id) {
    // Selection without rebuilding the table: an input being typed into keeps its focus.
    cam.sel = id;
    var rows = $("cam-rois-body").querySelectorAll("tr");
    for (var i = 0; i < rows.length; i++) { rows[i].className = rows[i].getAttribute("data-roi") === id ? "sel" : ""; }
    renderCamSvg();
  }

  function updateCamStates() {
    // The periodic refresh: states and scores in place (rebuilding would steal the focus of an input).
    var rows = $("cam-rois-body").querySelectorAll("tr");
    if (rows.length !== cam.edit.length) { renderCam(); return; }
    for (var i = 0; i < rows.length; i++) {
      var st = camStatus(rows[i].getAttribute("data-roi"));
      var name = st ? st.state : "new";
      rows[i].setAttribute("data-state", name);
      var stateCell = rows[i].querySelector("td.state");
      stateCell.textContent = t("state." + name);
      stateCell.className = "state state-" + name;
      rows[i].querySelector("td.score").textContent = st ? fmt(st.score, 2) : "—";
    }
    var has = !!(cam.view && cam.view.has_reference);
    $("cam-ref").setAttribute("data-stable", has ? "true" : "false");
    $("cam-ref").setAttribute("data-has-reference", has ? "true" : "false");
    $("cam-ref").textContent = t(has ? "cam.hasRef" : "cam.noRef");
    renderCamSvg();
  }

  function svgPoint(ev) {
    var svg = $("cam-svg");
    var m = svg.getScreenCTM();
    if (!m) { return null; }
    var p = svg.createSVGPoint();
    p.x = ev.clientX; p.y = ev.clientY;
    var q = p.matrixTransform(m.inverse());
    var size = frameSize();
    return {
      x: Math.round(Math.min(Math.max(q.x, 0), size.width)),
      y: Math.round(Math.min(Math.max(q.y, 0), size.height))
    };
  }

  function newRoiId() {
    var ids = {};
    cam.edit.forEach(function (r) { ids[r.id] = true; });
    for (var n = cam.edit.length + 1; ; n++) { if (!ids["roi" + n]) { return "roi" + n; } }
  }

  function findRoi(id) { return cam.edit.filter(function (r) { return r.id === id; })[0] || null; }

  function onDown(ev) {
    if (!frameSize() || ev.button !== 0) { return; }
    var p = svgPoint(ev);
    if (!p) { return; }
    var target = ev.target;
    var handle = target.getAttribute && target.getAttribute("data-handle");
    var roiId = target.getAttribute && target.getAttribute("data-roi");
    if (handle) {
      cam.drag = { mode: "resize", roi: findRoi(handle), start: p };
    } else if (roiId) {
      var r = findRoi(roiId);
      cam.sel = roiId;
      cam.drag = { mode: "move", roi: r, start: p, orig: r.rect ? r.rect.slice() : null,
        origPoly: r.polygon ? r.polygon.map(function (q) { return q.slice(); }) : null };
    } else {
      var roi = { id: newRoiId(), rect: [p.x, p.y, 0, 0], sku: "", bin: "" };
      cam.edit.push(roi);
      cam.sel = roi.id;
      cam.drag = { mode: "draw", roi: roi, start: p };
    }
    $("cam-svg").setPointerCapture(ev.pointerId);
    ev.preventDefault();
    renderCam();
  }

  function onMove(ev) {
    var d = cam.drag;
    if (!d) { return; }
    var p = svgPoint(ev);
    if (!p) { return; }
    var size = frameSize();
    var r = d.roi;
    if (d.mode === "draw") {
      r.rect = [Math.min(p.x, d.start.x), Math.min(p.y, d.start.y), Math.abs(p.x - d.start.x), Math.abs(p.y - d.start.y)];
    } else if (d.mode === "resize") {
      r.rect = [r.rect[0], r.rect[1], Math.max(MIN_PX, p.x - r.rect[0]), Math.max(MIN_PX, p.y - r.rect[1])];
    } else if (d.orig) {
      var dx = Math.min(Math.max(p.x - d.start.x, -d.orig[0]), size.width - d.orig[0] - d.orig[2]);
      var dy = Math.min(Math.max(p.y - d.start.y, -d.orig[1]), size.height - d.orig[1] - d.orig[3]);
      r.rect = [d.orig[0] + dx, d.orig[1] + dy, d.orig[2], d.orig[3]];
    } else if (d.origPoly) {
      var ddx = p.x - d.start.x, ddy = p.y - d.start.y;
      r.polygon = d.origPoly.map(function (q) { return [Math.max(0, q[0] + ddx), Math.max(0, q[1] + ddy)]; });
    }
    renderCamSvg();
  }

  function onUp() {
    var d = cam.drag;
    cam.drag = null;
    if (!d) { return; }
    if (d.mode === "draw" && (d.roi.rect[2] < MIN_PX || d.roi.rect[3] < MIN_PX)) {
      cam.edit.splice(cam.edit.indexOf(d.roi), 1);  // a click, not a drag
      cam.sel = null;
    }
    renderCam();
    if (d.mode === "draw" && cam.sel) {
      var input = document.querySelector('#cam-rois-body tr[data-roi="' + cam.sel + '"] input.roi-sku');
      if (input) { input.focus(); }
    }
  }

  function camPayload() {
    return cam.edit.map(function (r) {
      var out = { id: r.id };
      if (r.rect) { out.rect = r.rect.map(function (v) { return Math.round(v); }); } else { out.polygon = r.polygon; }
      if (r.sku) { out.sku = r.sku; }
      if (r.bin) { out.bin = r.bin; }
      return out;
    });
  }

  function roiText(r) {
    if (!r) { return "—"; }
    var shape = r.rect ? "rect [" + r.rect.join(", ") + "]" : "polygon " + r.polygon.length + " pts";
    return shape + (r.sku ? " · " + r.sku : "") + (r.bin ? " · " + r.bin : "");
  }

  function camError(e) {
    var msg = e.message;
    try {
      var list = JSON.parse(msg);
      if (Array.isArray(list)) {
        msg = list.map(function (i) {
          if (i.message === undefined) { return (i.loc || []).join(".") + ": " + i.msg; }  // a malformed request
          return (i.roi ? i.roi + "." : "") + (i.field || "") + ": " + i.message;
        }).join("; ");
      }
    } catch (x) { /* a plain message */ }
    camResult("error", msg);
  }

  function showCamDiff(diff) {
    var tbody = $("cam-diff").querySelector("tbody");
    tbody.textContent = "";
    diff.filter(function (d) { return d.change !== "unchanged"; }).forEach(function (d) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-roi", d.id);
      tr.setAttribute("data-change", d.change);
      var th = document.createElement("th");
      th.textContent = d.id;
      tr.appendChild(th);
      cell(tr, t("change." + d.change));
      cell(tr, roiText(d.before));
      cell(tr, roiText(d.after), "changed");
      tbody.appendChild(tr);
    });
  }

  function wireCam() {
    var svg = $("cam-svg");
    svg.addEventListener("pointerdown", onDown);
    svg.addEventListener("pointermove", onMove);
    svg.addEventListener("pointerup", onUp);
    svg.addEventListener("pointercancel", onUp);
    $("cam-select").addEventListener("change", function () { openCamera($("cam-select").value); });
    $("cam-refresh").addEventListener("click", function () { refreshSnapshot(); loadRois(false); });
    $("cam-undo").addEventListener("click", function () {
      cam.sel = null; $("cam-review").hidden = true; $("cam-result").textContent = ""; loadRois(true);
    });
    $("cam-preview").addEventListener("click", function () {
      $("cam-result").textContent = "";
      var body = { rois: camPayload() };
      api("POST", camUrl("/rois/preview"), body).then(function (p) {
        if (!p.changed) { $("cam-review").hidden = true; camResult("ok", t("cam.nothing")); return; }
        cam.pending = body.rois;
        showCamDiff(p.diff);
        $("cam-review").hidden = false;
      }).catch(function (e) { $("cam-review").hidden = true; camError(e); });
    });
    $("cam-apply").addEventListener("click", function () {
      if (!cam.pending) { return; }
      api("PUT", camUrl("/rois"), { rois: cam.pending, installer: installer() }).then(function (r) {
        cam.pending = null;
        $("cam-review").hidden = true;
        var n = r.diff.filter(function (d) { return d.change !== "unchanged"; }).length;
        var text = t("cam.applied", { n: n });
        if (r.recaptured && r.recaptured.length) { text += " " + t("cam.recaptured", { ids: r.recaptured.join(", ") }); }
        if (r.warning) { text += " " + r.warning; }
        camResult(r.warning ? "error" : "ok", text);
        return loadRois(true);
      }).catch(camError);
    });
    $("cam-capture").addEventListener("click", function () {
      camResult("", t("cam.capturing"));
      $("cam-capture").disabled = true;
      api("POST", camUrl("/reference"), { installer: installer() }).then(function () {
        camResult("ok", t("cam.captured"));
        refreshSnapshot();
        return loadRois(false);
      }).catch(camError).then(function () { $("cam-capture").disabled = false; });
    });
    pollRois();
  }

  function start() {
    $("installer-name").value = load(STORAGE_NAME) || "";
    $("installer-name").addEventListener("change", function () { save(STORAGE_NAME, installer()); });
    $("lang-toggle").addEventListener("click", function () { setLang(state.lang === "zh" ? "en" : "zh"); });
    wireCal();
    wireBind();
    wireTest();
    wireCam();
    setLang(initialLang());
    api("GET", "/api/health").then(function (h) { $("store").textContent = h.store_id + " · " + h.gateway_id; }).catch(function () {});
    connect();
    setInterval(pollDevices, DEVICES_MS);
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
