/*
 * HQ dashboard: the fleet's live health, HQ alerts, and one store's stock, alerts, devices and backlog, in
 * Chinese or English.
 *
 * Data flow: plain polling of the hub's JSON API every POLL_MS (3 s; `?poll_ms=` overrides, ≥ 250). A fleet
 * changes slowly next to a shelf, every hub worker serves the same API behind a load balancer, and a poll
 * holds no connection on a worker — so no stream is needed. Ages come from the hub (`heartbeat_age_s`,
 * `duration_s`), never from this browser's clock. After a failed poll the indicator says so and the next
 * attempt backs off with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter").
 *
 * Views: `#/` is the fleet, `#/stores/{store_id}` one store. Lists are reconciled by key (store id, alert id,
 * bin id, device id), so a poll never replaces the element that holds the keyboard focus.
 *
 * Config rollouts: the panel lists the newest rollouts (redrawn each poll) under a "new rollout" form that is
 * never redrawn: it posts to /api/config-rollouts and prefills from GET /api/stores/{id}/config.
 *
 * Panels for services that may not be deployed yet stay hidden until the hub offers them: sales while
 * GET /api/stores/{id}/sales/daily does not answer 200, members while /openapi.json has no
 * /api/members/{member_id}.
 *
 * No framework and no build step: the hub serves this file as is.
 */
(function () {
  "use strict";

  var I18N = {
    zh: {
      htmlLang: "zh-CN",
      title: "门店总览",
      skip: "跳到内容",
      switchTo: "English",
      switchToLang: "en",
      switchLabel: "Switch to English",
      "conn.connecting": "连接中…",
      "conn.live": "实时",
      "conn.reconnecting": "重新连接中…",
      hubLine: "总部 {hub}",
      hubDeaf: "总部未连上消息服务器，数据可能过时",
      "sum.stores": "门店",
      "sum.hqAlerts": "总部告警",
      "state.online": "在线",
      "state.stale": "心跳超时",
      "state.offline": "离线",
      "fleet.title": "门店状态",
      "fleet.caption": "每家门店网关的实时状态",
      "fleet.none": "还没有门店接入",
      "fleet.filtered": "没有符合筛选条件的门店",
      "filter.label": "筛选",
      "filter.offline": "仅看离线",
      "filter.alerts": "仅看有告警",
      "col.store": "门店",
      "col.state": "状态",
      "col.heartbeat": "最后心跳",
      "col.backlog": "积压",
      "col.devicesDown": "故障设备",
      "col.stockAlerts": "库存告警",
      "col.hqAlerts": "总部告警",
      "col.versions": "版本 / 配置",
      never: "从未",
      offlineFor: "已离线 {d}",
      oldest: "最早 {d}",
      growing: "↑ 持续增长",
      allOk: "全部正常 ({total})",
      downOf: "{down}/{total} 故障",
      "hq.title": "总部告警",
      "hq.showResolved": "显示已解决",
      "hq.none": "暂无总部告警",
      "hq.noneStore": "这家门店没有总部告警",
      hqKind: { store_offline: "门店离线", backlog_growing: "上传积压增长", device_down: "设备故障", outbox_quota: "缓存配额已满" },
      activeFor: "已持续 {d}",
      resolvedAfter: "{d}后恢复",
      resolution: { "back online": "已恢复在线", draining: "积压在减少", "outbox empty": "积压已清空", "no longer reported": "设备已移除" },
      causeStatus: "网关发出离线遗嘱",
      causeSilent: "收不到心跳",
      backlogStuck: "最早的待发事件已 {oldest}，没有减少（待发 {depth}）",
      backlogRising: "待发事件连续增长到 {depth}",
      back: "← 全部门店",
      "store.missing": "总部没有这家门店的数据",
      storeTitle: "门店 {store}",
      gatewayOf: "网关 {gw}",
      "fact.state": "状态",
      "fact.heartbeat": "最后心跳",
      "fact.version": "软件版本",
      "fact.config": "配置版本",
      "fact.offlineFor": "离线时长",
      "fact.uptime": "运行时长",
      "fact.cpu": "CPU",
      "fact.mem": "内存",
      "fact.disk": "剩余磁盘",
      "fact.temp": "主板温度",
      "fact.boot": "启动编号",
      "stock.title": "货架库存",
      "stock.caption": "每个货位的最新数量",
      "stock.bin": "货位",
      "stock.sku": "商品条码",
      "stock.count": "数量",
      "stock.limits": "安全 / 上限",
      "stock.level": "状态",
      "stock.none": "暂无库存数据",
      level: { ok: "正常", low: "低库存", out: "缺货", over: "超储", unknown: "未知" },
      "stockAlerts.title": "门店告警",
      "stockAlerts.none": "暂无未解决的门店告警",
      kind: { low: "低库存", out: "缺货", over: "超储", ambiguous: "计数存疑", sensor_fault: "传感器故障", misplaced: "错放商品", predicted_out: "即将缺货", loss_suspected: "疑似失窃", shrink_suspected: "疑似损耗" },
      alertState: { raised: "待处理", acknowledged: "已确认", resolved: "已解决" },
      stockAlertLine: "货位 {bin} · 数量 {count}",
      ackedBy: "{name} 已确认",
      "devices.title": "设备",
      "devices.caption": "最新心跳报告的设备状态",
      "devices.device": "设备",
      "devices.family": "类型",
      "devices.state": "状态",
      "devices.errors": "错误",
      "devices.detail": "错误明细 / 最近错误",
      "devices.none": "心跳中没有设备",
      family: { modbus: "Modbus 变送器", scale: "电子秤", scanner: "扫码枪", rfid: "RFID 读写器", ble: "蓝牙传感器" },
      deviceOnline: "在线",
      deviceOffline: "离线",
      disconnected: "未连接",
      battery: "电量 {pct}%",
      "backlog.title": "上传积压与序号",
      "backlog.samples": "最近几次心跳的积压",
      "backlog.at": "心跳时间",
      "backlog.depth": "待发事件",
      "backlog.oldest": "最早待发",
      "bl.depth": "待发事件",
      "bl.oldest": "最早待发",
      "bl.growing": "积压增长",
      "bl.lastSeq": "网关最新序号",
      "bl.receivedSeq": "总部收到的最高序号",
      "bl.appliedSeq": "总部已应用到",
      "bl.missing": "缺失序号",
      "bl.lost": "已放弃的序号",
      yes: "是",
      no: "否",
      none: "无",
      "storeHq.title": "总部告警记录",
      "sales.title": "每日销售",
      "sales.none": "最近 30 天没有销售",
      salesCol: { day: "日期", sales: "销售笔数", gross: "销售额（元）", returns: "退货笔数", refunds: "退款（元）", net: "净额（元）" },
      memberField: {
        member_id: "会员编号",
        tier: "等级",
        points: "积分",
        points_owed: "待抵扣积分",
        spend_30d_cny: "近 30 天消费（元）",
        spend_365d_cny: "近 365 天消费（元）",
        tier_as_of: "等级计算日",
        birth_month: "生日月份",
        registered: "已注册",
        source: "来源",
        created_at: "创建时间"
      },
      tier: { bronze: "铜卡", silver: "银卡", gold: "金卡", platinum: "白金卡" },
      memberSource: { api: "总部登记", sale: "消费时自动创建" },
      "members.title": "会员查询",
      "members.id": "会员编号",
      "members.lookup": "查询",
      "members.notFound": "没有这个会员",
      "members.failed": "查询失败（{detail}）",
      "col.commissioned": "调试",
      commissionedYes: "已调试",
      commissionedNo: "未调试",
      commissionedSub: "校准 {cal} · 绑定 {bind} · 取货测试 {passed}/{tests}",
      failedChecks: "{n} 次校准复核超差",
      "cm.title": "调试记录",
      "cm.none": "还没有收到这家门店的调试记录",
      "cm.at": "记录时间",
      "cm.installers": "安装人员",
      "cm.calibrations": "已校准货位",
      "cm.failedChecks": "复核超差",
      "cm.bindings": "已绑定货位",
      "cm.tests": "取货测试通过",
      "cm.bin": "货位",
      "cm.calibration": "校准复核",
      "cm.binding": "绑定商品",
      "cm.test": "取货测试",
      "cm.by": "操作人",
      checkOk: "合格（误差 {err} g）",
      checkBad: "超差（误差 {err} g）",
      forced: "强制应用",
      testState: { waiting: "等待取货", passed: "通过", failed: "未通过" },
      "ro.title": "配置下发",
      "ro.none": "还没有配置下发",
      "ro.caption": "每家门店对这次配置下发的结果",
      "ro.progress": "{done} / {total} 已完成",
      "ro.store": "门店",
      "ro.state": "结果",
      "ro.sent": "发送次数",
      "ro.detail": "详情",
      "ro.version": "配置版本 {v}",
      "ro.catVersion": "目录版本 {v}",
      "ro.watching": "观察设备错误率中",
      "ro.new": "新建配置下发",
      "ro.stores": "门店",
      "ro.allStores": "全部门店",
      "ro.someStores": "选定的门店",
      "ro.config": "门店配置（YAML）",
      "ro.catalogue": "商品目录（YAML 或 CSV）",
      "ro.note": "备注",
      "ro.submit": "下发",
      "ro.pickStore": "先选择门店",
      "ro.loaded": "已载入上次下发的内容（{when}）",
      "ro.template": "已载入 {store} 上次下发的内容；store_id 换成了 {{store_id}}，每家门店各自替换",
      "ro.noConfig": "这家门店还没有下发过配置：请粘贴门店当前的配置文件（store.yaml），或留空只下发目录",
      "ro.noCatalogue": "这家门店还没有下发过商品目录：请粘贴门店当前的目录文件（catalogue.yaml），或留空只下发配置",
      "ro.needStores": "请至少选择一家门店",
      "ro.needContent": "请填写门店配置或商品目录",
      "ro.failed": "下发失败：{detail}",
      roState: { pending: "进行中", applied: "已生效", rejected: "已拒绝", rolled_back: "已回滚", timed_out: "超时" },
      sep: " · "
    },
    en: {
      htmlLang: "en",
      title: "Fleet overview",
      skip: "Skip to content",
      switchTo: "中文",
      switchToLang: "zh-CN",
      switchLabel: "切换到中文",
      "conn.connecting": "Connecting…",
      "conn.live": "Live",
      "conn.reconnecting": "Reconnecting…",
      hubLine: "Hub {hub}",
      hubDeaf: "The hub has lost its MQTT broker: data may be out of date",
      "sum.stores": "Stores",
      "sum.hqAlerts": "HQ alerts",
      "state.online": "Online",
      "state.stale": "Stale",
      "state.offline": "Offline",
      "fleet.title": "Stores",
      "fleet.caption": "Live state of every store's gateway",
      "fleet.none": "No store has reported yet",
      "fleet.filtered": "No store matches the filters",
      "filter.label": "Filters",
      "filter.offline": "Offline only",
      "filter.alerts": "With alerts",
      "col.store": "Store",
      "col.state": "State",
      "col.heartbeat": "Last heartbeat",
      "col.backlog": "Backlog",
      "col.devicesDown": "Devices down",
      "col.stockAlerts": "Stock alerts",
      "col.hqAlerts": "HQ alerts",
      "col.versions": "Version / config",
      never: "never",
      offlineFor: "offline for {d}",
      oldest: "oldest {d}",
      growing: "↑ growing",
      allOk: "all OK ({total})",
      downOf: "{down}/{total} down",
      "hq.title": "HQ alerts",
      "hq.showResolved": "Show resolved",
      "hq.none": "No HQ alerts",
      "hq.noneStore": "No HQ alerts for this store",
      hqKind: { store_offline: "Store offline", backlog_growing: "Growing backlog", device_down: "Device down", outbox_quota: "Outbox quota hit" },
      activeFor: "for {d}",
      resolvedAfter: "resolved after {d}",
      resolution: { "back online": "back online", draining: "draining", "outbox empty": "outbox empty", "no longer reported": "device removed" },
      causeStatus: "the gateway's will says offline",
      causeSilent: "no heartbeat",
      backlogStuck: "oldest unsent event {oldest} old and not draining ({depth} waiting)",
      backlogRising: "outbox kept rising, now {depth}",
      back: "← All stores",
      "store.missing": "The hub has no data from this store",
      storeTitle: "Store {store}",
      gatewayOf: "gateway {gw}",
      "fact.state": "State",
      "fact.heartbeat": "Last heartbeat",
      "fact.version": "Software",
      "fact.config": "Config",
      "fact.offlineFor": "Offline for",
      "fact.uptime": "Uptime",
      "fact.cpu": "CPU",
      "fact.mem": "Memory",
      "fact.disk": "Disk free",
      "fact.temp": "Board temperature",
      "fact.boot": "Boot id",
      "stock.title": "Shelf stock",
      "stock.caption": "Latest count of every bin",
      "stock.bin": "Bin",
      "stock.sku": "SKU",
      "stock.count": "Count",
      "stock.limits": "Safety / max",
      "stock.level": "Level",
      "stock.none": "No stock data yet",
      level: { ok: "OK", low: "Low", out: "Out", over: "Over", unknown: "Unknown" },
      "stockAlerts.title": "Store alerts",
      "stockAlerts.none": "No open store alerts",
      kind: { low: "Low stock", out: "Out of stock", over: "Overstock", ambiguous: "Count uncertain", sensor_fault: "Sensor fault", misplaced: "Misplaced goods", predicted_out: "Stock-out predicted", loss_suspected: "Suspected loss", shrink_suspected: "Suspected shrink" },
      alertState: { raised: "Open", acknowledged: "Acknowledged", resolved: "Resolved" },
      stockAlertLine: "bin {bin} · count {count}",
      ackedBy: "acknowledged by {name}",
      "devices.title": "Devices",
      "devices.caption": "Devices as the latest heartbeat reports them",
      "devices.device": "Device",
      "devices.family": "Type",
      "devices.state": "State",
      "devices.errors": "Errors",
      "devices.detail": "Error counters / last error",
      "devices.none": "The heartbeat lists no devices",
      family: { modbus: "Modbus transmitter", scale: "Scale", scanner: "Scanner", rfid: "RFID reader", ble: "BLE sensor" },
      deviceOnline: "Online",
      deviceOffline: "Offline",
      disconnected: "not connected",
      battery: "battery {pct}%",
      "backlog.title": "Backlog and sequence",
      "backlog.samples": "Backlog at the last heartbeats",
      "backlog.at": "Heartbeat",
      "backlog.depth": "Waiting",
      "backlog.oldest": "Oldest",
      "bl.depth": "Events waiting",
      "bl.oldest": "Oldest waiting",
      "bl.growing": "Growing",
      "bl.lastSeq": "Gateway's last seq",
      "bl.receivedSeq": "Highest seq received",
      "bl.appliedSeq": "Applied up to",
      "bl.missing": "Missing seqs",
      "bl.lost": "Given-up seqs",
      yes: "yes",
      no: "no",
      none: "none",
      "storeHq.title": "HQ alert history",
      "sales.title": "Daily sales",
      "sales.none": "No sales in the last 30 days",
      salesCol: { day: "Day", sales: "Sales", gross: "Gross (CNY)", returns: "Returns", refunds: "Refunds (CNY)", net: "Net (CNY)" },
      memberField: {
        member_id: "Member id",
        tier: "Tier",
        points: "Points",
        points_owed: "Points owed",
        spend_30d_cny: "Spend, 30 days (CNY)",
        spend_365d_cny: "Spend, 365 days (CNY)",
        tier_as_of: "Tier as of",
        birth_month: "Birth month",
        registered: "Registered",
        source: "Source",
        created_at: "Created"
      },
      tier: { bronze: "Bronze", silver: "Silver", gold: "Gold", platinum: "Platinum" },
      memberSource: { api: "registered at HQ", sale: "created by a sale" },
      "members.title": "Member lookup",
      "members.id": "Member id",
      "members.lookup": "Look up",
      "members.notFound": "No such member",
      "members.failed": "Lookup failed ({detail})",
      "col.commissioned": "Commissioning",
      commissionedYes: "Commissioned",
      commissionedNo: "Not commissioned",
      commissionedSub: "calibrated {cal} · bound {bind} · pick tests {passed}/{tests}",
      failedChecks: "{n} check(s) out of tolerance",
      "cm.title": "Commissioning record",
      "cm.none": "No commissioning record from this store yet",
      "cm.at": "Recorded",
      "cm.installers": "Installers",
      "cm.calibrations": "Bins calibrated",
      "cm.failedChecks": "Checks out of tolerance",
      "cm.bindings": "Bins bound",
      "cm.tests": "Pick tests passed",
      "cm.bin": "Bin",
      "cm.calibration": "Calibration check",
      "cm.binding": "Bound to",
      "cm.test": "Pick test",
      "cm.by": "By",
      checkOk: "within tolerance (error {err} g)",
      checkBad: "out of tolerance (error {err} g)",
      forced: "forced",
      testState: { waiting: "waiting for a pick", passed: "passed", failed: "failed" },
      "ro.title": "Config rollouts",
      "ro.none": "No config rollouts yet",
      "ro.caption": "Each store's outcome of this config rollout",
      "ro.progress": "{done} / {total} settled",
      "ro.store": "Store",
      "ro.state": "Outcome",
      "ro.sent": "Sent",
      "ro.detail": "Detail",
      "ro.version": "config version {v}",
      "ro.catVersion": "catalogue version {v}",
      "ro.watching": "watching the device error rate",
      "ro.new": "New rollout",
      "ro.stores": "Stores",
      "ro.allStores": "All stores",
      "ro.someStores": "Selected stores",
      "ro.config": "Store config (YAML)",
      "ro.catalogue": "Product catalogue (YAML or CSV)",
      "ro.note": "Note",
      "ro.submit": "Push",
      "ro.pickStore": "Choose the stores first",
      "ro.loaded": "Loaded what was last pushed ({when})",
      "ro.template": "Loaded what was last pushed to {store}; its store_id became {{store_id}}, replaced per store",
      "ro.noConfig": "Nothing pushed to this store yet: paste the store's current config file (store.yaml), or leave it empty to push only a catalogue",
      "ro.noCatalogue": "No catalogue pushed to this store yet: paste its current catalogue file (catalogue.yaml), or leave it empty to push only the config",
      "ro.needStores": "Choose at least one store",
      "ro.needContent": "Fill in the store config or the catalogue",
      "ro.failed": "Push failed: {detail}",
      roState: {
        pending: "in progress",
        applied: "applied",
        rejected: "rejected",
        rolled_back: "rolled back",
        timed_out: "timed out"
      },
      sep: " · "
    }
  };

  var STATE_RANK = { offline: 0, stale: 1, online: 2 };
  var KIND_RANK = { out: 0, loss_suspected: 1, low: 2, predicted_out: 3, sensor_fault: 4, ambiguous: 5, shrink_suspected: 6, misplaced: 7, over: 8 };
  var STORAGE_LANG = "shelfgate.hq.lang";
  var STORAGE_FILTERS = "shelfgate.hq.filters";
  var POLL_MS = pollInterval();
  var REQUEST_TIMEOUT_MS = 8000;
  var BACKOFF_BASE_MS = 500;
  var BACKOFF_CAP_MS = 10000;
  var BACKOFF_FLOOR_MS = 200;
  var FEATURE_PROBE_MS = 60000;
  var SALES_COLUMNS = ["day", "sales", "gross", "returns", "refunds", "net"];
  var SALES_NUMERIC = { sales: true, gross: true, returns: true, refunds: true, net: true };

  var state = {
    lang: "zh",
    route: { view: "fleet", storeId: null },
    conn: "connecting",
    attempt: 0,
    timer: null,
    gen: 0,
    health: null,
    rollouts: null,
    fleet: null, // last /api/fleet
    hqAlerts: null,
    detail: null, // last /api/stores/{id}
    detailMissing: false,
    stock: [],
    stockAlerts: [],
    sales: null, // null: hidden
    commissioning: null, // last /api/stores/{id}/commissioning; null: none yet
    membersAvailable: false,
    member: null, // the last member looked up
    lastProbe: 0,
    filters: { offline: false, alerts: false },
    showResolved: false
  };

  function $(id) {
    return document.getElementById(id);
  }

  function pollInterval() {
    var asked = parseInt(new URLSearchParams(window.location.search).get("poll_ms") || "", 10);
    return isNaN(asked) ? 3000 : Math.max(250, asked);
  }

  // --- storage (private mode or a full quota must not break the page) ---------------------------------

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

  // --- language -------------------------------------------------------------------------------------

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
    if (s === undefined) {
      s = key;
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
    toggle.setAttribute("aria-label", t("switchLabel"));
    renderAll();
  }

  // --- formatting (ages and durations come from the hub) ------------------------------------------------

  function num(n) {
    return n === null || n === undefined ? "—" : new Intl.NumberFormat(I18N[state.lang].htmlLang).format(n);
  }

  function unitFor(s) {
    if (s < 60) {
      return [Math.round(s), "second"];
    }
    if (s < 3600) {
      return [Math.round(s / 60), "minute"];
    }
    if (s < 86400) {
      return [Math.round(s / 3600), "hour"];
    }
    return [Math.round(s / 86400), "day"];
  }

  /* "12 秒" / "12 sec": how long something lasted. */
  function duration(s) {
    if (s === null || s === undefined) {
      return "—";
    }
    var u = unitFor(Math.max(0, s));
    return new Intl.NumberFormat(I18N[state.lang].htmlLang, { style: "unit", unit: u[1], unitDisplay: "short" }).format(
      u[0]
    );
  }

  /* "12秒前" / "12 seconds ago". */
  function ago(s) {
    if (s === null || s === undefined) {
      return t("never");
    }
    var u = unitFor(Math.max(0, s));
    return new Intl.RelativeTimeFormat(I18N[state.lang].htmlLang, { numeric: "always" }).format(-u[0], u[1]);
  }

  function absolute(iso) {
    var d = new Date(iso);
    if (!iso || isNaN(d.getTime())) {
      return "";
    }
    return d.toLocaleString(I18N[state.lang].htmlLang, { dateStyle: "short", timeStyle: "medium" });
  }

  function ranges(list) {
    if (!list || !list.length) {
      return t("none");
    }
    return list
      .map(function (r) {
        return r.first_seq === r.last_seq ? String(r.first_seq) : r.first_seq + "–" + r.last_seq;
      })
      .join(", ");
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

  /* Make `container`'s children match `items` by key, creating with `build` and updating with `fill`. */
  function reconcile(container, items, keyOf, build, fill) {
    var existing = new Map();
    Array.prototype.forEach.call(container.children, function (child) {
      existing.set(child.getAttribute("data-key"), child);
    });
    var anchor = container.firstChild;
    items.forEach(function (item) {
      var key = String(keyOf(item));
      var node = existing.get(key);
      if (node) {
        existing.delete(key);
      } else {
        node = build(item);
        node.setAttribute("data-key", key);
      }
      fill(node, item);
      if (node !== anchor) {
        container.insertBefore(node, anchor);
      } else {
        anchor = anchor.nextSibling;
      }
    });
    existing.forEach(function (node) {
      container.removeChild(node);
    });
  }

  function stateBadge(node, s) {
    node.className = "state-badge state-" + s;
    node.textContent = t("state." + s);
  }

  // --- connection indicator ---------------------------------------------------------------------------

  function setConn(next) {
    state.conn = next;
    var node = $("conn");
    node.className = "conn conn-" + next;
    node.setAttribute("data-state", next);
    $("conn-text").textContent = t("conn." + next);
  }

  function renderHubLine() {
    var h = state.health;
    var line = $("hub-line");
    if (!h) {
      line.textContent = "";
      line.classList.remove("warn");
      return;
    }
    var deaf = h.mqtt_connected === false;
    line.textContent = t("hubLine", { hub: h.hub_id }) + (deaf ? t("sep") + t("hubDeaf") : "");
    line.classList.toggle("warn", deaf);
  }

  // --- fleet view ------------------------------------------------------------------------------------

  function compareStores(a, b) {
    var ra = STATE_RANK[a.state] === undefined ? 3 : STATE_RANK[a.state];
    var rb = STATE_RANK[b.state] === undefined ? 3 : STATE_RANK[b.state];
    if (ra !== rb) {
      return ra - rb; // problems first
    }
    return a.store_id < b.store_id ? -1 : a.store_id > b.store_id ? 1 : 0;
  }

  function matchesFilters(s) {
    if (state.filters.offline && s.state !== "offline") {
      return false;
    }
    if (state.filters.alerts && !(s.active_alerts > 0 || s.hq_alerts_active > 0)) {
      return false;
    }
    return true;
  }

  function buildFleetRow(s) {
    var tr = el("tr");
    tr.setAttribute("data-store-id", s.store_id);
    var store = el("td", "c-store");
    var link = el("a", "store-link");
    link.href = "#/stores/" + encodeURIComponent(s.store_id);
    store.appendChild(link);
    store.appendChild(el("span", "sub gw"));
    tr.appendChild(store);
    var st = el("td", "c-state");
    st.appendChild(el("span", "state-badge"));
    st.appendChild(el("span", "sub offline-for"));
    tr.appendChild(st);
    tr.appendChild(el("td", "c-heartbeat"));
    var backlog = el("td", "c-backlog num");
    backlog.appendChild(el("span", "depth"));
    backlog.appendChild(el("span", "sub oldest"));
    backlog.appendChild(el("span", "sub growing"));
    tr.appendChild(backlog);
    var dev = el("td", "c-devices");
    dev.appendChild(el("span", "dev-count"));
    dev.appendChild(el("ul", "dev-list"));
    tr.appendChild(dev);
    tr.appendChild(el("td", "c-stock-alerts num"));
    tr.appendChild(el("td", "c-hq-alerts num"));
    var ver = el("td", "c-version");
    ver.appendChild(el("span", "version"));
    ver.appendChild(el("span", "sub config"));
    tr.appendChild(ver);
    var cm = el("td", "c-commissioned");
    cm.appendChild(el("span", "cm-badge"));
    cm.appendChild(el("span", "sub cm-figures"));
    cm.appendChild(el("span", "sub cm-failed"));
    tr.appendChild(cm);
    return tr;
  }

  function fillFleetRow(tr, s) {
    tr.className = "state-" + s.state + (s.hq_alerts_active > 0 ? " has-hq-alerts" : "");
    tr.setAttribute("data-state", s.state);
    tr.querySelector(".store-link").textContent = s.store_id;
    tr.querySelector(".gw").textContent = s.gateway_id || "";
    stateBadge(tr.querySelector(".state-badge"), s.state);
    tr.querySelector(".offline-for").textContent =
      s.state === "offline" && s.offline_for_s !== null ? t("offlineFor", { d: duration(s.offline_for_s) }) : "";
    var hb = tr.querySelector(".c-heartbeat");
    hb.textContent = ago(s.heartbeat_age_s);
    hb.title = absolute(s.last_heartbeat_at);
    tr.querySelector(".depth").textContent = num(s.outbox_depth);
    tr.querySelector(".oldest").textContent =
      s.outbox_oldest_age_s !== null && s.outbox_oldest_age_s !== undefined && s.outbox_depth
        ? t("oldest", { d: duration(s.outbox_oldest_age_s) })
        : "";
    tr.querySelector(".growing").textContent = s.backlog_growing ? t("growing") : "";
    var down = s.devices_down || [];
    var count = tr.querySelector(".dev-count");
    if (s.devices_total === null || s.devices_total === undefined) {
      count.textContent = "—";
    } else if (!down.length) {
      count.textContent = t("allOk", { total: s.devices_total });
    } else {
      count.textContent = t("downOf", { down: down.length, total: s.devices_total });
    }
    count.className = "dev-count" + (down.length ? " bad" : "");
    var list = tr.querySelector(".dev-list");
    reconcile(
      list,
      down,
      function (d) {
        return d.device_id;
      },
      function () {
        return el("li");
      },
      function (li, d) {
        li.textContent = (d.family ? label("family", d.family) + t("sep") : "") + d.device_id;
        li.title = d.last_error || "";
      }
    );
    var stockAlerts = tr.querySelector(".c-stock-alerts");
    stockAlerts.textContent = num(s.active_alerts);
    stockAlerts.classList.toggle("bad", s.active_alerts > 0);
    var hq = tr.querySelector(".c-hq-alerts");
    hq.textContent = num(s.hq_alerts_active);
    hq.classList.toggle("bad", s.hq_alerts_active > 0);
    tr.querySelector(".version").textContent = s.version || "—";
    tr.querySelector(".config").textContent = s.config_version || "";
    var cm = tr.querySelector(".c-commissioned");
    cm.setAttribute("data-commissioned", s.commissioned ? "yes" : "no");
    cm.title = s.commissioned_at ? absolute(s.commissioned_at) : "";
    var badge = cm.querySelector(".cm-badge");
    badge.textContent = s.commissioned ? t("commissionedYes") : t("commissionedNo");
    badge.className = "cm-badge" + (s.commissioned ? " ok" : " pending");
    cm.querySelector(".cm-figures").textContent = s.commissioned_at
      ? t("commissionedSub", {
          cal: num(s.calibrations || 0),
          bind: num(s.bindings || 0),
          passed: num(s.pick_tests_passed || 0),
          tests: num(s.pick_tests || 0)
        })
      : "";
    var failed = cm.querySelector(".cm-failed");
    failed.textContent = s.failed_checks ? t("failedChecks", { n: num(s.failed_checks) }) : "";
    failed.classList.toggle("bad", !!s.failed_checks);
  }

  function renderFleet() {
    var all = state.fleet || [];
    var counts = { online: 0, stale: 0, offline: 0 };
    all.forEach(function (s) {
      counts[s.state] = (counts[s.state] || 0) + 1;
    });
    $("sum-stores").textContent = num(all.length);
    $("sum-online").textContent = num(counts.online);
    $("sum-stale").textContent = num(counts.stale);
    $("sum-offline").textContent = num(counts.offline);
    var shown = all.filter(matchesFilters).sort(compareStores);
    reconcile(
      $("fleet-body"),
      shown,
      function (s) {
        return s.store_id;
      },
      buildFleetRow,
      fillFleetRow
    );
    $("fleet-none").hidden = state.fleet === null || all.length > 0;
    $("fleet-filtered").hidden = !all.length || shown.length > 0;
  }

  function hqAlertText(a) {
    var d = a.detail || {};
    if (a.kind === "store_offline") {
      return d.cause === "silent" ? t("causeSilent") : t("causeStatus");
    }
    if (a.kind === "backlog_growing") {
      return d.cause === "stuck"
        ? t("backlogStuck", { oldest: duration(d.outbox_oldest_age_s), depth: num(d.outbox_depth) })
        : t("backlogRising", { depth: num(d.outbox_depth) });
    }
    if (a.kind === "device_down") {
      return d.last_error || "";
    }
    return a.message;
  }

  function buildHqAlert() {
    var li = el("li", "hq-alert");
    var head = el("div", "hq-alert-head");
    head.appendChild(el("span", "kind-badge"));
    var store = el("a", "store-link");
    head.appendChild(store);
    head.appendChild(el("span", "subject"));
    li.appendChild(head);
    li.appendChild(el("p", "what"));
    var when = el("p", "when");
    when.appendChild(el("time", "raised"));
    li.appendChild(when);
    return li;
  }

  function fillHqAlert(li, a) {
    li.className = "hq-alert kind-" + a.kind + (a.active ? " active" : " resolved");
    li.setAttribute("data-alert-id", a.alert_id);
    li.setAttribute("data-kind", a.kind);
    li.setAttribute("data-store-id", a.store_id);
    li.setAttribute("data-active", a.active ? "true" : "false");
    li.querySelector(".kind-badge").textContent = label("hqKind", a.kind);
    var link = li.querySelector(".store-link");
    link.textContent = a.store_id;
    link.href = "#/stores/" + encodeURIComponent(a.store_id);
    var subject = "";
    if (a.subject) {
      var family = a.detail && a.detail.family ? label("family", a.detail.family) + t("sep") : "";
      subject = family + a.subject;
    }
    li.querySelector(".subject").textContent = subject;
    li.querySelector(".what").textContent = hqAlertText(a);
    var raised = li.querySelector(".raised");
    raised.dateTime = a.raised_at;
    raised.title = absolute(a.raised_at);
    raised.textContent = a.active
      ? t("activeFor", { d: duration(a.duration_s) })
      : t("resolvedAfter", { d: duration(a.duration_s) }) + (a.resolution ? t("sep") + label("resolution", a.resolution) : "");
  }

  function renderHqAlertList(list, alerts, none) {
    reconcile(
      list,
      alerts,
      function (a) {
        return a.alert_id;
      },
      buildHqAlert,
      fillHqAlert
    );
    none.hidden = alerts.length > 0;
  }

  function renderHqAlerts() {
    var alerts = state.hqAlerts || [];
    var active = alerts.filter(function (a) {
      return a.active;
    });
    $("hq-alert-count").textContent = num(active.length);
    $("sum-hq-alerts").textContent = num(active.length);
    renderHqAlertList($("hq-alerts"), state.showResolved ? alerts : active, $("hq-alerts-none"));
    $("hq-alerts-none").hidden = state.hqAlerts === null || (state.showResolved ? alerts : active).length > 0;
  }

  // --- store view ------------------------------------------------------------------------------------

  function stockLevel(b) {
    // The same instantaneous level the store's board shows (edge.gateway.stock_level).
    if (b.count === null || b.count === undefined) {
      return "unknown";
    }
    if (b.count === 0) {
      return "out";
    }
    if (b.count < b.safety_stock) {
      return "low";
    }
    if (b.count > b.max_stock) {
      return "over";
    }
    return "ok";
  }

  function fact(dl, key, value, attr) {
    var dt = el("dt", null, t(key));
    var dd = el("dd", null, value);
    if (attr) {
      dd.setAttribute("data-fact", attr);
    }
    dl.appendChild(dt);
    dl.appendChild(dd);
  }

  function renderStoreHead() {
    var d = state.detail;
    var id = state.route.storeId;
    $("store-h").textContent = t("storeTitle", { store: id });
    $("store-missing").hidden = !state.detailMissing;
    var badge = $("store-state");
    var facts = $("store-facts");
    facts.replaceChildren();
    if (!d) {
      badge.hidden = true;
      return;
    }
    var s = d.store;
    badge.hidden = false;
    stateBadge(badge, s.state);
    if (s.gateway_id) {
      $("store-h").textContent = t("storeTitle", { store: id }) + t("sep") + t("gatewayOf", { gw: s.gateway_id });
    }
    fact(facts, "fact.state", t("state." + s.state), "state");
    fact(facts, "fact.heartbeat", ago(s.heartbeat_age_s), "heartbeat");
    if (s.state === "offline") {
      fact(facts, "fact.offlineFor", duration(s.offline_for_s), "offline-for");
    }
    fact(facts, "fact.version", s.version || "—", "version");
    fact(facts, "fact.config", s.config_version || "—", "config");
    var g = d.gateway;
    if (g) {
      fact(facts, "fact.uptime", duration(g.uptime_s), "uptime");
      fact(facts, "fact.cpu", num(g.cpu_pct) + " %", "cpu");
      fact(facts, "fact.mem", num(g.mem_rss_mb) + " MiB", "mem");
      fact(facts, "fact.disk", num(g.disk_free_mb) + " MiB", "disk");
      fact(facts, "fact.temp", g.temperature_c === null ? "—" : num(g.temperature_c) + " °C", "temp");
      fact(facts, "fact.boot", g.boot_id, "boot");
    }
  }

  function renderStock() {
    var bins = state.stock.slice().sort(function (a, b) {
      return a.bin_id < b.bin_id ? -1 : a.bin_id > b.bin_id ? 1 : 0;
    });
    reconcile(
      $("stock-body"),
      bins,
      function (b) {
        return b.bin_id;
      },
      function () {
        var tr = el("tr");
        tr.appendChild(el("td", "bin"));
        tr.appendChild(el("td", "sku mono"));
        tr.appendChild(el("td", "qty num"));
        tr.appendChild(el("td", "limits num"));
        var lvl = el("td", "lvl");
        lvl.appendChild(el("span", "level-badge"));
        tr.appendChild(lvl);
        return tr;
      },
      function (tr, b) {
        var level = stockLevel(b);
        tr.className = "level-" + level;
        tr.setAttribute("data-bin-id", b.bin_id);
        tr.setAttribute("data-level", level);
        tr.querySelector(".bin").textContent = b.bin_id;
        tr.querySelector(".sku").textContent = b.sku;
        tr.querySelector(".qty").textContent = num(b.count);
        tr.querySelector(".limits").textContent = num(b.safety_stock) + " / " + num(b.max_stock);
        tr.querySelector(".level-badge").textContent = label("level", level);
      }
    );
    $("stock-none").hidden = !state.detail || bins.length > 0;
  }

  function renderStockAlerts() {
    var alerts = state.stockAlerts.slice().sort(function (a, b) {
      var ra = KIND_RANK[a.kind] === undefined ? 9 : KIND_RANK[a.kind];
      var rb = KIND_RANK[b.kind] === undefined ? 9 : KIND_RANK[b.kind];
      return ra !== rb ? ra - rb : a.raised_at < b.raised_at ? -1 : 1;
    });
    reconcile(
      $("stock-alerts"),
      alerts,
      function (a) {
        return a.alert_id;
      },
      function () {
        var li = el("li", "stock-alert");
        li.appendChild(el("span", "kind-badge"));
        li.appendChild(el("span", "line"));
        li.appendChild(el("span", "sub state"));
        return li;
      },
      function (li, a) {
        li.className = "stock-alert kind-" + a.kind;
        li.setAttribute("data-alert-id", a.alert_id);
        li.setAttribute("data-kind", a.kind);
        li.querySelector(".kind-badge").textContent = label("kind", a.kind);
        li.querySelector(".line").textContent = t("stockAlertLine", { bin: a.bin_id, count: num(a.count) });
        li.querySelector(".state").textContent =
          label("alertState", a.state) + (a.acknowledged_by ? t("sep") + t("ackedBy", { name: a.acknowledged_by }) : "");
        li.title = a.message || "";
      }
    );
    $("stock-alert-count").textContent = num(alerts.length);
    $("stock-alerts-none").hidden = !state.detail || alerts.length > 0;
  }

  function errorCounters(d) {
    var parts = [];
    var byKind = d.errors_by_kind || {};
    Object.keys(byKind)
      .sort()
      .forEach(function (k) {
        if (byKind[k]) {
          parts.push(k + " " + num(byKind[k]));
        }
      });
    return parts.join(t("sep"));
  }

  function renderDevices() {
    var devices = state.detail ? state.detail.devices : [];
    reconcile(
      $("devices-body"),
      devices,
      function (d) {
        return d.device_id;
      },
      function () {
        var tr = el("tr");
        tr.appendChild(el("td", "dev-id mono"));
        tr.appendChild(el("td", "family"));
        var st = el("td", "dev-state");
        st.appendChild(el("span", "state-badge"));
        st.appendChild(el("span", "sub extra"));
        tr.appendChild(st);
        tr.appendChild(el("td", "errors num"));
        var detail = el("td", "dev-detail");
        detail.appendChild(el("span", "counters"));
        detail.appendChild(el("span", "sub last-error"));
        tr.appendChild(detail);
        return tr;
      },
      function (tr, d) {
        tr.className = d.online ? "dev-online" : "dev-offline";
        tr.setAttribute("data-device-id", d.device_id);
        tr.setAttribute("data-online", d.online ? "true" : "false");
        tr.querySelector(".dev-id").textContent = d.device_id;
        tr.querySelector(".family").textContent = d.family ? label("family", d.family) : "—";
        var badge = tr.querySelector(".state-badge");
        badge.className = "state-badge " + (d.online ? "state-online" : "state-offline");
        badge.textContent = d.online ? t("deviceOnline") : t("deviceOffline");
        var extra = [];
        if (d.connected === false) {
          extra.push(t("disconnected"));
        }
        if (d.battery_pct !== null && d.battery_pct !== undefined) {
          extra.push(t("battery", { pct: d.battery_pct }));
        }
        if (d.temperature_c !== null && d.temperature_c !== undefined) {
          extra.push(num(d.temperature_c) + " °C");
        }
        if (d.firmware) {
          extra.push("FW " + d.firmware);
        }
        tr.querySelector(".extra").textContent = extra.join(t("sep"));
        tr.querySelector(".errors").textContent = num(d.errors);
        tr.querySelector(".counters").textContent = errorCounters(d);
        tr.querySelector(".last-error").textContent = d.last_error || "";
      }
    );
    $("devices-none").hidden = !state.detail || devices.length > 0;
  }

  function renderBacklog() {
    var dl = $("backlog-facts");
    dl.replaceChildren();
    var d = state.detail;
    var samples = d ? d.backlog.samples : [];
    if (d) {
      var s = d.store;
      fact(dl, "bl.depth", num(d.backlog.outbox_depth), "depth");
      fact(dl, "bl.oldest", d.backlog.outbox_depth ? duration(d.backlog.outbox_oldest_age_s) : "—", "oldest");
      fact(dl, "bl.growing", d.backlog.growing ? t("yes") : t("no"), "growing");
      fact(dl, "bl.lastSeq", num(s.last_seq), "last-seq");
      fact(dl, "bl.receivedSeq", num(s.received_seq), "received-seq");
      fact(dl, "bl.appliedSeq", num(s.applied_seq), "applied-seq");
      fact(dl, "bl.missing", ranges(s.missing_ranges), "missing");
      fact(dl, "bl.lost", ranges(s.lost_ranges), "lost");
    }
    reconcile(
      $("backlog-samples-body"),
      samples.slice().reverse(),
      function (x) {
        return x.heartbeat_ts;
      },
      function () {
        var tr = el("tr");
        tr.appendChild(el("td", "at"));
        tr.appendChild(el("td", "depth num"));
        tr.appendChild(el("td", "oldest num"));
        return tr;
      },
      function (tr, x) {
        tr.querySelector(".at").textContent = absolute(x.received_at);
        tr.querySelector(".depth").textContent = num(x.outbox_depth);
        tr.querySelector(".oldest").textContent = x.outbox_depth ? duration(x.outbox_oldest_age_s) : "—";
      }
    );
    $("backlog-samples").hidden = samples.length === 0;
  }

  /* Whatever shape the sales service returns: a list of rows, or an object holding one. */
  function salesRows(body) {
    if (Array.isArray(body)) {
      return body;
    }
    if (body && typeof body === "object") {
      var keys = Object.keys(body);
      for (var i = 0; i < keys.length; i++) {
        if (Array.isArray(body[keys[i]])) {
          return body[keys[i]];
        }
      }
      return [body];
    }
    return [];
  }

  /* `DailySales` rows (hub.models) newest first, in a fixed column order; any other shape column by column. */
  function renderSales() {
    var panel = $("sales-panel");
    if (state.sales === null) {
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    var rows = salesRows(state.sales).filter(function (r) {
      return r && typeof r === "object";
    });
    var known = rows.length > 0 && SALES_COLUMNS.every(function (c) {
      return c in rows[0];
    });
    var columns = known || !rows.length ? SALES_COLUMNS : Object.keys(rows[0]);
    if (known) {
      rows = rows.slice().sort(function (a, b) {
        return a.day < b.day ? 1 : a.day > b.day ? -1 : 0;
      });
    }
    var head = $("sales-head");
    head.replaceChildren();
    columns.forEach(function (c) {
      var th = el("th", SALES_NUMERIC[c] ? "num" : null, label("salesCol", c));
      th.scope = "col";
      head.appendChild(th);
    });
    var body = $("sales-body");
    body.replaceChildren();
    rows.forEach(function (r) {
      var tr = el("tr");
      columns.forEach(function (c) {
        var v = r[c];
        var text = v !== null && typeof v === "object" ? JSON.stringify(v) : v === null || v === undefined ? "—" : String(v);
        var td = el("td", typeof v === "number" || SALES_NUMERIC[c] ? "num" : null, text);
        td.setAttribute("data-col", c);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    $("sales-none").hidden = rows.length > 0;
  }

  /* The store's commissioning record (GET /api/stores/{id}/commissioning): a summary, then one row per bin. */
  function renderCommissioning() {
    var rec = state.commissioning;
    var dl = $("commissioning-facts");
    dl.replaceChildren();
    $("commissioning-none").hidden = !!rec;
    $("commissioning-bins").hidden = !rec;
    if (!rec) {
      $("commissioning-body").replaceChildren();
      return;
    }
    var cals = rec.calibrations || {};
    var binds = rec.bindings || {};
    var tests = rec.tests || {};
    var failed = 0;
    var passed = 0;
    Object.keys(cals).forEach(function (k) {
      if (cals[k].check && !cals[k].check.ok) {
        failed += 1;
      }
    });
    Object.keys(tests).forEach(function (k) {
      if (tests[k].state === "passed") {
        passed += 1;
      }
    });
    fact(dl, "cm.at", absolute(rec.generated_at), "cm-at");
    fact(dl, "cm.installers", (rec.installers || []).join(", ") || "—", "cm-installers");
    fact(dl, "cm.calibrations", num(Object.keys(cals).length), "cm-calibrations");
    fact(dl, "cm.failedChecks", num(failed), "cm-failed");
    fact(dl, "cm.bindings", num(Object.keys(binds).length), "cm-bindings");
    fact(dl, "cm.tests", num(passed) + " / " + num(Object.keys(tests).length), "cm-tests");
    var bins = Object.keys(Object.assign({}, cals, binds, tests)).sort();
    reconcile(
      $("commissioning-body"),
      bins,
      function (b) {
        return b;
      },
      function () {
        var tr = el("tr");
        tr.appendChild(el("td", "bin"));
        tr.appendChild(el("td", "cal"));
        tr.appendChild(el("td", "bind"));
        tr.appendChild(el("td", "test"));
        tr.appendChild(el("td", "by"));
        return tr;
      },
      function (tr, b) {
        var c = cals[b];
        var bd = binds[b];
        var pt = tests[b];
        tr.setAttribute("data-bin", b);
        tr.querySelector(".bin").textContent = b;
        var cal = tr.querySelector(".cal");
        if (!c) {
          cal.textContent = "—";
        } else if (!c.check) {
          cal.textContent = absolute(c.ts);
        } else {
          cal.textContent =
            t(c.check.ok ? "checkOk" : "checkBad", { err: num(c.check.error_g) }) + (c.forced ? t("sep") + t("forced") : "");
        }
        cal.classList.toggle("bad", !!(c && c.check && !c.check.ok));
        tr.querySelector(".bind").textContent = bd ? bd.after.sku : "—";
        var test = tr.querySelector(".test");
        test.textContent = pt ? label("testState", pt.state) : "—";
        test.classList.toggle("bad", !!(pt && pt.state === "failed"));
        var who = [c, bd, pt]
          .filter(function (x) {
            return !!x;
          })
          .map(function (x) {
            return x.installer;
          });
        tr.querySelector(".by").textContent = who.filter(function (w, i) {
          return who.indexOf(w) === i;
        }).join(", ");
      }
    );
  }

  function renderStore() {
    renderStoreHead();
    renderCommissioning();
    renderStock();
    renderStockAlerts();
    renderDevices();
    renderBacklog();
    renderHqAlertList(
      $("store-hq-alerts"),
      state.detail ? state.detail.hq_alerts : [],
      $("store-hq-alerts-none")
    );
    $("store-hq-alerts-none").hidden = !state.detail || state.detail.hq_alerts.length > 0;
    renderSales();
  }

  function renderAll() {
    setConn(state.conn);
    renderHubLine();
    var fleetView = state.route.view === "fleet";
    $("view-fleet").hidden = !fleetView;
    $("view-store").hidden = fleetView;
    $("members-panel").hidden = !state.membersAvailable;
    renderMember();
    if (fleetView) {
      renderFleet();
      renderHqAlerts();
      renderRollouts();
    } else {
      renderStore();
    }
  }

  /* Config rollouts (hub.config_rollout): the newest first, each with its per-store outcome. Hidden while the
     hub does not serve /api/config-rollouts (optionalJSON gives null). */
  function renderRollouts() {
    var panel = $("rollouts-panel");
    var list = state.rollouts;
    panel.hidden = list === null || list === undefined;
    if (panel.hidden) {
      return;
    }
    $("rollouts-none").hidden = list.length > 0;
    var items = list.map(function (r) {
      var total = r.targets.length;
      var li = el("li", "rollout");
      li.setAttribute("data-rollout", r.rollout_id);
      var head = el("p", "rollout-head");
      head.appendChild(el("span", "rollout-id", r.rollout_id));
      head.appendChild(el("span", "rollout-when", absolute(r.created_at)));
      if (r.note) {
        head.appendChild(el("span", "rollout-note", r.note));
      }
      var prog = el("span", "rollout-progress", t("ro.progress", { done: total - r.counts.pending, total: total }));
      prog.setAttribute("data-done", r.done ? "true" : "false");
      head.appendChild(prog);
      li.appendChild(head);
      var table = el("table", "grid rollout-targets");
      table.appendChild(el("caption", "visually-hidden", t("ro.caption")));
      var hr = el("tr");
      ["ro.store", "ro.state", "ro.sent", "ro.detail"].forEach(function (k) {
        var th = el("th", k === "ro.sent" ? "num" : "", t(k));
        th.scope = "col";
        hr.appendChild(th);
      });
      var thead = el("thead");
      thead.appendChild(hr);
      table.appendChild(thead);
      var body = el("tbody");
      r.targets.forEach(function (tg) {
        var tr = el("tr");
        tr.setAttribute("data-store", tg.store_id);
        tr.appendChild(el("td", "", tg.store_id));
        var st = el("td");
        st.appendChild(el("span", "ro-state ro-" + tg.state, label("roState", tg.state)));
        tr.appendChild(st);
        tr.appendChild(el("td", "num", num(tg.sent_count)));
        var detail = tg.errors && tg.errors.length ? tg.errors.join("\n") : tg.error;
        if (!detail && tg.config_version) {
          var parts = [];
          if (!tg.pushed || tg.pushed.indexOf("config") >= 0 || !tg.catalogue_version) {
            parts.push(t("ro.version", { v: tg.config_version }));
          }
          if (tg.catalogue_version && tg.pushed && tg.pushed.indexOf("catalogue") >= 0) {
            parts.push(t("ro.catVersion", { v: tg.catalogue_version }));
          }
          if (tg.state === "applied" && tg.watch === "watching") {
            parts.push(t("ro.watching"));
          }
          detail = parts.join(t("sep"));
        }
        tr.appendChild(el("td", "ro-detail", detail || "—"));
        body.appendChild(tr);
      });
      table.appendChild(body);
      li.appendChild(table);
      return li;
    });
    $("rollouts").replaceChildren.apply($("rollouts"), items);
    renderStoreChoices();
    redrawHints();
  }

  /* --- the new-rollout form (POST /api/config-rollouts) ------------------------------------------------
     Never rebuilt by a poll: store checkboxes are only added for stores not listed yet, and the textareas are
     prefilled from GET /api/stores/{id}/config only while the user has not typed in them. */
  var roForm = { dirty: { config: false, catalogue: false }, loadedFor: null, hints: {} };

  function renderStoreChoices() {
    var box = $("ro-store-list");
    var have = {};
    box.querySelectorAll("input[type=checkbox]").forEach(function (cb) {
      have[cb.value] = true;
    });
    (state.fleet || []).forEach(function (entry) {
      if (have[entry.store_id]) {
        return;
      }
      var lab = el("label", "ro-store");
      var cb = document.createElement("input");
      cb.type = "checkbox";
      cb.value = entry.store_id;
      cb.name = "ro-store";
      cb.addEventListener("change", onStoresChanged);
      lab.appendChild(cb);
      lab.appendChild(document.createTextNode(" " + entry.store_id));
      box.appendChild(lab);
    });
  }

  function chosenStores() {
    if ($("ro-scope-all").checked) {
      return (state.fleet || []).map(function (e) {
        return e.store_id;
      });
    }
    var out = [];
    $("ro-store-list")
      .querySelectorAll("input[type=checkbox]")
      .forEach(function (cb) {
        if (cb.checked) {
          out.push(cb.value);
        }
      });
    return out;
  }

  /* Hints with values are kept by key and values, so a language switch (renderAll → renderRollouts) redraws
     them; plain ones use data-i18n like the page's static text. */
  function setHint(id, key, vars) {
    var p = $(id);
    if (vars) {
      p.removeAttribute("data-i18n");
      roForm.hints[id] = { key: key, vars: vars };
      p.textContent = t(key, vars);
    } else {
      delete roForm.hints[id];
      p.setAttribute("data-i18n", key);
      p.textContent = t(key);
    }
  }

  function redrawHints() {
    Object.keys(roForm.hints).forEach(function (id) {
      $(id).textContent = t(roForm.hints[id].key, roForm.hints[id].vars);
    });
  }

  function onStoresChanged() {
    $("ro-form-error").hidden = true;
    $("ro-store-list").hidden = $("ro-scope-all").checked;
    var stores = chosenStores();
    if (!stores.length) {
      roForm.loadedFor = null;
      setHint("ro-config-hint", "ro.pickStore");
      setHint("ro-catalogue-hint", "ro.pickStore");
      return;
    }
    var first = stores[0];
    var key = stores.join(",");
    roForm.loadedFor = key;
    getJSON("/api/stores/" + encodeURIComponent(first) + "/config").then(
      function (last) {
        if (roForm.loadedFor !== key) {
          return; // the choice changed meanwhile
        }
        var several = stores.length > 1;
        fillFrom(last.config, "config", "ro-config", "ro-config-hint", "ro.noConfig", several ? first : null);
        fillFrom(last.catalogue, "catalogue", "ro-catalogue", "ro-catalogue-hint", "ro.noCatalogue", null);
      },
      function () {
        setHint("ro-config-hint", "ro.noConfig");
        setHint("ro-catalogue-hint", "ro.noCatalogue");
      }
    );
  }

  function fillFrom(file, which, areaId, hintId, emptyKey, templateOf) {
    if (!file) {
      if (!roForm.dirty[which]) {
        $(areaId).value = "";
      }
      setHint(hintId, emptyKey);
      return;
    }
    if (!roForm.dirty[which]) {
      var text = file.text;
      if (templateOf) {
        text = text.replace(new RegExp("^store_id:\\s*['\"]?" + escapeRe(templateOf) + "['\"]?\\s*$", "m"), "store_id: {{store_id}}");
      }
      $(areaId).value = text;
    }
    if (templateOf) {
      setHint(hintId, "ro.template", { store: templateOf });
    } else {
      setHint(hintId, "ro.loaded", { when: absolute(file.pushed_at) });
    }
  }

  function escapeRe(s) {
    return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  }

  /* A catalogue pasted from an HQ CSV export: a first line of comma-separated column names, no YAML colon. */
  function catalogueFormat(text) {
    var first = text.split("\n", 1)[0];
    return first.indexOf(",") >= 0 && first.indexOf(":") < 0 ? "csv" : "yaml";
  }

  function problemText(body, status) {
    if (body && typeof body.detail === "string") {
      return body.detail;
    }
    if (body && Array.isArray(body.detail)) {
      return body.detail
        .map(function (d) {
          var where = (d.loc || []).filter(function (x) {
            return x !== "body";
          });
          return (where.length ? where.join(".") + ": " : "") + d.msg;
        })
        .join("; ");
    }
    return "HTTP " + status;
  }

  function submitRollout(ev) {
    ev.preventDefault();
    var err = $("ro-form-error");
    err.hidden = true;
    var stores = chosenStores();
    var config = $("ro-config").value;
    var catalogue = $("ro-catalogue").value;
    if (!stores.length) {
      err.textContent = t("ro.needStores");
      err.hidden = false;
      return;
    }
    if (!config.trim() && !catalogue.trim()) {
      err.textContent = t("ro.needContent");
      err.hidden = false;
      return;
    }
    var body = { stores: $("ro-scope-all").checked ? "all" : stores, note: $("ro-note").value.trim() };
    if (config.trim()) {
      body.config_yaml = config;
    }
    if (catalogue.trim()) {
      body.catalogue_text = catalogue;
      body.catalogue_format = catalogueFormat(catalogue);
    }
    $("ro-submit").disabled = true;
    fetch("/api/config-rollouts", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body)
    })
      .then(function (resp) {
        return resp.json().then(
          function (json) {
            return { resp: resp, json: json };
          },
          function () {
            return { resp: resp, json: null };
          }
        );
      })
      .then(function (r) {
        if (r.resp.status !== 201) {
          throw new Error(problemText(r.json, r.resp.status));
        }
        var others = (state.rollouts || []).filter(function (x) {
          return x.rollout_id !== r.json.rollout_id;
        });
        state.rollouts = [r.json].concat(others);
        roForm.dirty.config = false;
        roForm.dirty.catalogue = false;
        $("ro-note").value = "";
        renderRollouts();
      })
      .catch(function (e) {
        err.textContent = t("ro.failed", { detail: e && e.message ? e.message : String(e) });
        err.hidden = false;
      })
      .finally(function () {
        $("ro-submit").disabled = false;
      });
  }

  function startRolloutForm() {
    $("ro-form").addEventListener("submit", submitRollout);
    $("ro-scope-all").addEventListener("change", onStoresChanged);
    $("ro-scope-list").addEventListener("change", onStoresChanged);
    $("ro-config").addEventListener("input", function () {
      roForm.dirty.config = true;
    });
    $("ro-catalogue").addEventListener("input", function () {
      roForm.dirty.catalogue = true;
    });
  }

  // --- data ------------------------------------------------------------------------------------------

  function request(url) {
    var controller = new AbortController();
    var timer = setTimeout(function () {
      controller.abort();
    }, REQUEST_TIMEOUT_MS);
    return fetch(url, { headers: { Accept: "application/json" }, cache: "no-store", signal: controller.signal }).finally(
      function () {
        clearTimeout(timer);
      }
    );
  }

  function getJSON(url) {
    return request(url).then(function (resp) {
      if (!resp.ok) {
        var err = new Error(url + ": HTTP " + resp.status);
        err.status = resp.status;
        throw err;
      }
      return resp.json();
    });
  }

  /* The JSON when the URL answers 200, null for any other answer (the service is not there yet). */
  function optionalJSON(url) {
    return request(url).then(
      function (resp) {
        return resp.status === 200 ? resp.json() : null;
      },
      function () {
        return null;
      }
    );
  }

  function probeFeatures() {
    state.lastProbe = Date.now();
    return optionalJSON("/openapi.json").then(function (api) {
      state.membersAvailable = !!(api && api.paths && api.paths["/api/members/{member_id}"]);
    });
  }

  function fetchFleet() {
    var hq = "/api/hq-alerts?limit=200" + (state.showResolved ? "" : "&active=true");
    return Promise.all([
      getJSON("/api/fleet"),
      getJSON(hq),
      getJSON("/api/health"),
      optionalJSON("/api/config-rollouts?limit=10")
    ]).then(function (res) {
      state.fleet = res[0];
      state.hqAlerts = res[1];
      state.health = res[2];
      state.rollouts = res[3];
    });
  }

  function fetchStore(id) {
    var base = "/api/stores/" + encodeURIComponent(id);
    return getJSON(base).then(
      function (detail) {
        return Promise.all([
          getJSON(base + "/stock"),
          getJSON(base + "/alerts?active=true"),
          optionalJSON(base + "/sales/daily"),
          optionalJSON(base + "/commissioning")
        ]).then(function (res) {
          if (state.route.storeId !== id) {
            return;
          }
          state.detail = detail;
          state.detailMissing = false;
          state.stock = res[0];
          state.stockAlerts = res[1];
          state.sales = res[2];
          state.commissioning = res[3];
        });
      },
      function (err) {
        if (err.status === 404) {
          state.detail = null;
          state.detailMissing = true;
          state.stock = [];
          state.stockAlerts = [];
          state.sales = null;
          state.commissioning = null;
          return;
        }
        throw err;
      }
    );
  }

  function poll() {
    clearTimeout(state.timer);
    state.timer = null;
    var gen = ++state.gen;
    var route = state.route;
    var work = route.view === "store" ? fetchStore(route.storeId) : fetchFleet();
    var probe = Date.now() - state.lastProbe > FEATURE_PROBE_MS ? probeFeatures() : Promise.resolve();
    Promise.all([work, probe])
      .then(function () {
        if (gen !== state.gen) {
          return; // a newer poll (route change) owns the page
        }
        state.attempt = 0;
        state.conn = "live";
        renderAll();
        schedule(POLL_MS);
      })
      .catch(function () {
        if (gen !== state.gen) {
          return;
        }
        state.conn = "reconnecting";
        setConn("reconnecting");
        var cap = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, state.attempt));
        state.attempt += 1;
        schedule(Math.max(BACKOFF_FLOOR_MS, Math.random() * cap));
      });
  }

  function schedule(ms) {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, ms);
  }

  // --- routing ---------------------------------------------------------------------------------------

  function parseRoute() {
    var m = /^#\/stores\/(.+)$/.exec(window.location.hash);
    if (m) {
      return { view: "store", storeId: decodeURIComponent(m[1]) };
    }
    return { view: "fleet", storeId: null };
  }

  function onRoute() {
    var next = parseRoute();
    var changed = next.view !== state.route.view || next.storeId !== state.route.storeId;
    state.route = next;
    if (changed && next.view === "store") {
      state.detail = null;
      state.detailMissing = false;
      state.stock = [];
      state.stockAlerts = [];
      state.sales = null;
      state.commissioning = null;
      $("stock-body").replaceChildren();
      $("stock-alerts").replaceChildren();
      $("devices-body").replaceChildren();
      $("store-hq-alerts").replaceChildren();
    }
    renderAll();
    poll();
    if (changed) {
      window.scrollTo(0, 0);
    }
  }

  // --- members (shown only when the members service is deployed) -----------------------------------------

  function lookupMember(ev) {
    ev.preventDefault();
    var id = $("member-id").value.trim();
    if (!id) {
      return;
    }
    var out = $("member-result");
    var err = $("member-error");
    request("/api/members/" + encodeURIComponent(id))
      .then(function (resp) {
        if (resp.status === 404) {
          throw new Error(t("members.notFound"));
        }
        if (!resp.ok) {
          throw new Error(t("members.failed", { detail: "HTTP " + resp.status }));
        }
        return resp.json();
      })
      .then(function (m) {
        state.member = m;
        renderMember();
        out.hidden = false;
        err.hidden = true;
      })
      .catch(function (e) {
        out.hidden = true;
        err.textContent = e && e.message ? e.message : String(e);
        err.hidden = false;
      });
  }

  function memberValue(k, v) {
    if (v === null || v === undefined) {
      return "—";
    }
    if (k === "tier") {
      return label("tier", v);
    }
    if (k === "source") {
      return label("memberSource", v);
    }
    if (typeof v === "boolean") {
      return v ? t("yes") : t("no");
    }
    if (k === "created_at") {
      return absolute(v);
    }
    return typeof v === "object" ? JSON.stringify(v) : typeof v === "number" ? num(v) : String(v);
  }

  function renderMember() {
    var out = $("member-result");
    var m = state.member;
    out.replaceChildren();
    if (!m) {
      return;
    }
    Object.keys(m).forEach(function (k) {
      out.appendChild(el("dt", null, label("memberField", k)));
      var dd = el("dd", null, memberValue(k, m[k]));
      dd.setAttribute("data-field", k);
      out.appendChild(dd);
    });
  }

  // --- start -----------------------------------------------------------------------------------------

  function start() {
    var saved = load(STORAGE_FILTERS);
    if (saved) {
      try {
        var f = JSON.parse(saved);
        state.filters.offline = !!f.offline;
        state.filters.alerts = !!f.alerts;
      } catch (e) {
        /* ignore a damaged value */
      }
    }
    $("filter-offline").checked = state.filters.offline;
    $("filter-alerts").checked = state.filters.alerts;
    function onFilter() {
      state.filters.offline = $("filter-offline").checked;
      state.filters.alerts = $("filter-alerts").checked;
      save(STORAGE_FILTERS, JSON.stringify(state.filters));
      renderFleet();
    }
    $("filter-offline").addEventListener("change", onFilter);
    $("filter-alerts").addEventListener("change", onFilter);
    $("show-resolved").addEventListener("change", function () {
      state.showResolved = $("show-resolved").checked;
      poll();
    });
    $("lang-toggle").addEventListener("click", function () {
      setLang(state.lang === "zh" ? "en" : "zh");
    });
    $("member-form").addEventListener("submit", lookupMember);
    startRolloutForm();
    window.addEventListener("hashchange", onRoute);
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") {
        poll(); // browsers throttle timers in background tabs: catch up at once
      }
    });
    state.route = parseRoute();
    setLang(initialLang());
    poll();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
