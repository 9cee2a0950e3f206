/*
 * Cashier screen of one checkout lane, in Chinese or English.
 *
 * Data flow: one EventSource on /api/alerts/stream; the gateway sends `lane` events (the lane's whole view
 * after every change, whether the scanner, the scale or this page caused it) and `scale` events (the lane
 * scale's last stable weight). Every (re)connection starts with `hello`, sent after the stream is subscribed,
 * so re-reading GET /api/lanes/{lane} after it can miss nothing. Commands are POSTs whose answer is the lane's
 * view; a refusal is a 4xx whose `detail` says why, shown in the error banner and changing nothing.
 *
 * No framework and no build step: the store LAN may have no internet, and the gateway serves this file.
 */
(function () {
  "use strict";

  var I18N = {
    zh: {
      htmlLang: "zh-CN",
      title: "收银台",
      switchTo: "English",
      switchToLang: "en",
      "conn.connecting": "连接中…",
      "conn.live": "实时",
      "conn.reconnecting": "重新连接中…",
      "tx.title": "当前交易",
      "tx.empty": "请扫描商品",
      "tx.waiting": "请将商品放在秤上…",
      "tx.member": "会员",
      "tx.scale": "秤",
      "tx.total": "合计",
      "col.item": "商品",
      "col.qty": "数量/重量",
      "col.price": "单价",
      "col.amount": "金额",
      "col.actions": "操作",
      "btn.voidAll": "全部作废",
      "btn.cancel": "取消交易",
      "btn.complete": "完成结账",
      "btn.add": "添加",
      "btn.member": "设为会员",
      "btn.signIn": "登录",
      "btn.return": "开始退货",
      "btn.void": "作废",
      "input.title": "输入",
      "input.code": "条码",
      "input.member": "会员号",
      "input.cashier": "收银员",
      "input.return": "退货（原交易号）",
      cashier: "收银员：{cashier}",
      noCashier: "请先登录收银员",
      status: { open: "进行中", completed: "已完成", cancelled: "已取消", idle: "空闲" },
      kind: { sale: "销售", "return": "退货" },
      voided: "已作废",
      waitingWeight: "待称重",
      perKg: "/千克",
      scaleOffline: "离线",
      noLanes: "本店没有收银通道",
      "err.network": "网络错误，请重试"
    },
    en: {
      htmlLang: "en",
      title: "Checkout",
      switchTo: "中文",
      switchToLang: "zh-CN",
      "conn.connecting": "Connecting…",
      "conn.live": "Live",
      "conn.reconnecting": "Reconnecting…",
      "tx.title": "Current transaction",
      "tx.empty": "Scan an item",
      "tx.waiting": "Place the item on the scale…",
      "tx.member": "Member",
      "tx.scale": "Scale",
      "tx.total": "Total",
      "col.item": "Item",
      "col.qty": "Qty / weight",
      "col.price": "Unit price",
      "col.amount": "Amount",
      "col.actions": "Actions",
      "btn.voidAll": "Void all",
      "btn.cancel": "Cancel sale",
      "btn.complete": "Complete",
      "btn.add": "Add",
      "btn.member": "Set member",
      "btn.signIn": "Sign in",
      "btn.return": "Start return",
      "btn.void": "Void",
      "input.title": "Input",
      "input.code": "Barcode",
      "input.member": "Member no.",
      "input.cashier": "Cashier",
      "input.return": "Return (original transaction id)",
      cashier: "Cashier: {cashier}",
      noCashier: "Sign a cashier in first",
      status: { open: "open", completed: "completed", cancelled: "cancelled", idle: "idle" },
      kind: { sale: "sale", "return": "return" },
      voided: "voided",
      waitingWeight: "to weigh",
      perKg: "/kg",
      scaleOffline: "offline",
      noLanes: "This store has no checkout lanes",
      "err.network": "Network error, please retry"
    }
  };
  var STORAGE_LANG = "shelfgate.lane.lang";

  var state = { lang: "zh", lane: null, view: null, es: null, retry: 0, timer: null };

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
      /* remembered for this page only */
    }
  }

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
    render();
  }

  // --- rendering ------------------------------------------------------------------------------------

  function money(text) {
    return text === null || text === undefined ? "—" : "¥" + text;
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) {
      node.className = cls;
    }
    if (text !== undefined && text !== null) {
      node.textContent = text;
    }
    return node;
  }

  function lineRow(line, open) {
    var tr = el("tr", line.voided ? "voided" : line.pending ? "pending" : "");
    tr.setAttribute("data-line", String(line.line_no));
    tr.appendChild(el("td", "num", String(line.line_no)));
    var name = el("td", "name", (state.lang === "zh" ? line.name.zh : line.name.en) || line.name.zh || line.gtin);
    if (line.voided) {
      name.appendChild(el("span", "tag", t("voided")));
    }
    tr.appendChild(name);
    var measure = line.qty !== null ? "× " + line.qty : line.weight_kg !== null ? line.weight_kg + " kg" : t("waitingWeight");
    tr.appendChild(el("td", "num", measure));
    var unit = money(line.unit_price) + (line.measure === "weigh" ? t("perKg") : "");
    tr.appendChild(el("td", "num", unit));
    tr.appendChild(el("td", "num amount", money(line.amount)));
    var actions = el("td", "act");
    if (open && !line.voided) {
      var b = el("button", "btn btn-small", t("btn.void"));
      b.type = "button";
      b.addEventListener("click", function () {
        command("lines/" + line.line_no + "/void");
      });
      actions.appendChild(b);
    }
    tr.appendChild(actions);
    return tr;
  }

  function render() {
    var v = state.view;
    $("lane-id").textContent = state.lane || "";
    if (!v) {
      return;
    }
    $("cashier-line").textContent = v.cashier ? t("cashier", { cashier: v.cashier }) : t("noCashier");
    var tx = v.transaction;
    var open = !!tx && tx.status === "open";
    $("tx-status").textContent = tx ? label("kind", tx.kind) + " · " + label("status", tx.status) : label("status", "idle");
    $("tx-status").setAttribute("data-status", tx ? tx.status : "idle");
    $("tx-id").textContent = tx ? tx.transaction_id : "";
    var body = $("lines");
    body.textContent = "";
    var lines = tx ? tx.lines : [];
    for (var i = 0; i < lines.length; i++) {
      body.appendChild(lineRow(lines[i], open));
    }
    $("no-lines").hidden = lines.length > 0;
    $("waiting").hidden = !(open && tx.waiting_for_weight);
    $("member").textContent = tx && tx.member_id ? tx.member_id : "—";
    $("total").textContent = money(tx ? tx.total : "0.00");
    renderScale(v.scale);
    $("complete").disabled = !open;
    $("cancel").disabled = !open;
    $("void-all").disabled = !open;
  }

  function renderScale(scale) {
    var text = "—";
    if (scale) {
      if (!scale.online) {
        text = t("scaleOffline");
      } else if (scale.weight) {
        text = (scale.weight.weight_g / 1000).toFixed(3) + " kg";
      }
    }
    $("scale").textContent = text;
  }

  function showError(text) {
    var box = $("error");
    box.textContent = text;
    box.hidden = !text;
  }

  // --- commands -------------------------------------------------------------------------------------

  function command(path, body) {
    if (!state.lane) {
      return Promise.resolve(false);
    }
    var init = { method: "POST", headers: { "Content-Type": "application/json" } };
    if (body) {
      init.body = JSON.stringify(body);
    }
    return fetch("/api/lanes/" + encodeURIComponent(state.lane) + "/" + path, init)
      .then(function (r) {
        return r.json().then(function (data) {
          if (!r.ok) {
            var detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
            showError(detail + " (" + r.status + ")");
            return false;
          }
          showError("");
          state.view = data;
          render();
          return true;
        });
      })
      .catch(function () {
        showError(t("err.network"));
        return false;
      });
  }

  function onSubmit(formId, inputId, path, key) {
    $(formId).addEventListener("submit", function (ev) {
      ev.preventDefault();
      var input = $(inputId);
      var value = input.value.trim();
      if (!value) {
        return;
      }
      var body = {};
      body[key] = value;
      command(path, body).then(function (ok) {
        if (ok) {
          input.value = "";
        }
        if (formId === "scan-form") {
          input.focus();
        }
      });
    });
  }

  // --- live stream ----------------------------------------------------------------------------------

  function refresh() {
    return fetch("/api/lanes/" + encodeURIComponent(state.lane))
      .then(function (r) {
        return r.ok ? r.json() : null;
      })
      .then(function (view) {
        if (view) {
          state.view = view;
          render();
        }
      });
  }

  function setConn(key) {
    var c = $("conn");
    c.setAttribute("data-i18n", key);
    c.setAttribute("data-state", key.split(".")[1]);
    c.textContent = t(key);
  }

  function connect() {
    var es = new EventSource("/api/alerts/stream");
    state.es = es;
    es.addEventListener("hello", function () {
      state.retry = 0;
      setConn("conn.live");
      refresh();
    });
    es.addEventListener("lane", function (ev) {
      var item = JSON.parse(ev.data);
      if (item.lane && item.lane.lane === state.lane) {
        state.view = item.lane;
        render();
      }
    });
    es.addEventListener("scale", function (ev) {
      var item = JSON.parse(ev.data);
      if (state.view && item.scale && item.scale.lane === state.lane) {
        state.view.scale = item.scale;
        renderScale(item.scale);
      }
    });
    es.onerror = function () {
      es.close();
      setConn("conn.reconnecting");
      // Full-jitter backoff (as the board): a gateway restart must not make every screen reconnect at once.
      var ceiling = Math.min(30000, 500 * Math.pow(2, state.retry++));
      state.timer = window.setTimeout(connect, Math.random() * ceiling);
    };
  }

  function start() {
    setLang(initialLang());
    $("lang-toggle").addEventListener("click", function () {
      setLang(state.lang === "zh" ? "en" : "zh");
    });
    onSubmit("scan-form", "scan-code", "scan", "code");
    onSubmit("member-form", "member-id", "member", "member_id");
    onSubmit("cashier-form", "cashier-id", "cashier", "cashier");
    onSubmit("return-form", "return-id", "returns", "transaction_id");
    $("complete").addEventListener("click", function () {
      command("complete");
    });
    $("cancel").addEventListener("click", function () {
      command("cancel");
    });
    $("void-all").addEventListener("click", function () {
      command("void");
    });
    var wanted = new URLSearchParams(window.location.search).get("lane");
    fetch("/api/lanes")
      .then(function (r) {
        return r.ok ? r.json() : [];
      })
      .then(function (lanes) {
        var ids = lanes.map(function (l) {
          return l.lane;
        });
        state.lane = wanted && ids.indexOf(wanted) >= 0 ? wanted : ids[0] || null;
        if (!state.lane) {
          showError(t("noLanes"));
          return;
        }
        state.view = lanes[ids.indexOf(state.lane)];
        render();
        connect();
        $("scan-code").focus();
      })
      .catch(function () {
        showError(t("err.network"));
      });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
