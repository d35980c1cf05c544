// cauldron web view: draws the services page and the service pages from
// server-sent events, and writes keywords with JSON POSTs.  Written for
// cauldron; no library.
"use strict";
(function () {
  var body = document.body;
  var page = body.dataset.page;
  var serviceName = body.dataset.service;
  var main = document.getElementById("main");
  var link = document.getElementById("link");
  var PLOT_SECONDS = 300;

  function el(tag, attrs) {
    var node = document.createElement(tag);
    var key;
    for (key in attrs || {}) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "cls") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    }
    for (var i = 2; i < arguments.length; i++) {
      if (arguments[i] !== null && arguments[i] !== undefined) node.appendChild(arguments[i]);
    }
    return node;
  }

  function stream(url, handlers) {
    var source = new EventSource(url);
    source.onopen = function () { link.textContent = "connected"; link.className = "link ok"; };
    source.onerror = function () {
      link.textContent = "reconnecting…"; link.className = "link bad";
    };
    Object.keys(handlers).forEach(function (event) {
      source.addEventListener(event, function (e) { handlers[event](JSON.parse(e.data)); });
    });
    return source;
  }

  // -- the services page

  function servicesPage() {
    var table = el("table", { id: "services" },
      el("thead", null, el("tr", null,
        el("th", { text: "service" }), el("th", { text: "dispatcher" }), el("th", { text: "host" }),
        el("th", { text: "ports" }), el("th", { text: "keywords" }), el("th", { text: "age" }),
        el("th", { text: "state" }))));
    var tbody = el("tbody");
    var problem = el("p", { id: "problem", cls: "problem", hidden: "" });
    table.appendChild(tbody);
    main.appendChild(el("h1", { text: "Services" }));
    main.appendChild(problem);
    main.appendChild(table);
    stream("/events", {
      services: function (data) {
        tbody.textContent = "";
        data.services.forEach(function (row) {
          tbody.appendChild(el("tr", { "data-service": row.service, "data-state": row.state },
            el("td", null, el("a", { href: "/service/" + encodeURIComponent(row.service),
                                     text: row.service })),
            el("td", { text: row.dispatcher }), el("td", { text: row.host }),
            el("td", { text: row.dispatchPort + "/" + row.broadcastPort }),
            el("td", { text: String(row.keywords) }), el("td", { text: row.age + " s" }),
            el("td", { cls: "state " + row.state, text: row.state })));
        });
        if (data.error) { problem.textContent = data.error; problem.hidden = false; }
        else problem.hidden = true;
      }
    });
  }

  // -- the service page

  var keywords = {};   // name -> {info, row, value, widget, message, points}
  var plotted = null;  // name of the keyword on the plot
  var history = null;  // archived points shown instead of the live ones
  var readOnly = body.dataset.readOnly === "true";
  var canvas, plotTitle, lostBanner, table, archiveControls;

  function rangeText(info) {
    if (info.enumerators) {
      return Object.keys(info.enumerators).map(function (k) { return info.enumerators[k]; })
        .join(" | ");
    }
    if (info.bits && Object.keys(info.bits).length) {
      return "bits: " + Object.keys(info.bits).map(function (k) {
        return k + "=" + info.bits[k];
      }).join(" ");
    }
    if (info.range) return "[" + info.range[0] + ", " + info.range[1] + "]";
    return "";
  }

  function numeric(info) {
    return info.type === "integer" || info.type === "double" || info.type === "float";
  }

  function parsed(info, text) {
    if (numeric(info)) {
      var n = Number(text);
      return text.trim() !== "" && isFinite(n) ? n : text;
    }
    if (/array/.test(info.type) && /^\s*\[/.test(text)) {
      try { return JSON.parse(text); } catch (e) { return text; }
    }
    return text;
  }

  function write(name, value) {
    var kw = keywords[name];
    kw.message.textContent = "writing…";
    kw.message.className = "message pending";
    fetch("/service/" + encodeURIComponent(serviceName) + "/write", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ keyword: name, value: value })
    }).then(function (response) {
      return response.json().then(function (data) { return [response.ok, data]; });
    }).then(function (result) {
      if (result[0]) {
        kw.message.textContent = "✓ " + result[1].ascii;
        kw.message.className = "message ok";
      } else {
        kw.message.textContent = result[1].error + ": " + result[1].message;
        kw.message.className = "message error";
      }
    }).catch(function (error) {
      kw.message.textContent = "no answer: " + error;
      kw.message.className = "message error";
    });
  }

  function widgetFor(info) {
    var name = info.name;
    if (readOnly || info.readonly) return null;
    var input, button = null;
    if (info.type === "enumerated" && info.enumerators) {
      input = el("select", { name: name, "aria-label": "write " + name });
      Object.keys(info.enumerators).forEach(function (k) {
        var label = info.enumerators[k];
        input.appendChild(el("option", { value: label, text: label }));
      });
      input.addEventListener("change", function () { write(name, input.value); });
    } else if (info.type === "boolean") {
      input = el("input", { type: "checkbox", name: name, cls: "switch",
                            "aria-label": "write " + name });
      input.addEventListener("change", function () { write(name, input.checked); });
    } else {
      input = el("input", { name: name, "aria-label": "write " + name });
      if (numeric(info)) {
        input.type = "number";
        input.step = info.type === "integer" ? "1" : "any";
        if (info.range) { input.min = info.range[0]; input.max = info.range[1]; }
      } else {
        input.type = "text";
      }
      button = el("button", { type: "submit", text: "set" });
    }
    // novalidate: the dispatcher judges a value, and says why in its own words.
    var form = el("form", { cls: "write", "data-keyword": name, novalidate: "" }, input, button);
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      if (input.type !== "checkbox" && input.tagName !== "SELECT") {
        write(name, parsed(info, input.value));
      }
    });
    return { form: form, input: input };
  }

  function showValue(data) {
    var kw = keywords[data.keyword];
    if (!kw) return;
    kw.value.textContent = data.ascii;
    kw.value.classList.remove("changed");
    void kw.value.offsetWidth;  // restart the highlight
    kw.value.classList.add("changed");
    if (kw.widget && document.activeElement !== kw.widget.input) {
      if (kw.widget.input.type === "checkbox") kw.widget.input.checked = Boolean(data.binary);
      else if (kw.widget.input.tagName === "SELECT") kw.widget.input.value = data.ascii;
    }
    if (typeof data.binary === "number" && numeric(kw.info)) {
      kw.points.push([data.timestamp || Date.now() / 1000, data.binary]);
      if (kw.points.length > 2000) kw.points.splice(0, kw.points.length - 2000);
      if (plotted === data.keyword && history === null) drawPlot();
    }
  }

  function showState(state) {
    var lost = state.lost;
    lostBanner.hidden = lost.length === 0;
    lostBanner.textContent = lost.length
      ? "LOST: dispatcher " + lost.join(", ") + " is not heard; values may be stale"
      : "";
    body.classList.toggle("service-lost", lost.length > 0);
    Object.keys(keywords).forEach(function (name) {
      var kw = keywords[name];
      kw.row.classList.toggle("lost", lost.indexOf(kw.info.dispatcher) >= 0);
    });
  }

  function choosePlot(name) {
    plotted = name;
    history = null;
    plotTitle.textContent = name + " (" + (keywords[name].info.units || "no units") +
      "), up to the last " + PLOT_SECONDS / 60 + " minutes";
    canvas.hidden = false;
    if (archiveControls) archiveControls.hidden = false;
    drawPlot();
  }

  function loadHistory(since) {
    var url = "/service/" + encodeURIComponent(serviceName) + "/history?keyword=" +
      encodeURIComponent(plotted) + "&since=" + encodeURIComponent(since);
    fetch(url).then(function (r) { return r.json(); }).then(function (data) {
      if (data.error) { plotTitle.textContent = data.error + ": " + data.message; return; }
      history = data.records.filter(function (r) {
        return r.kind === "value" && typeof r.binary === "number";
      }).map(function (r) { return [r.timestamp, r.binary]; });
      plotTitle.textContent = plotted + ": archived, since " + since + " (" +
        history.length + " values)";
      drawPlot();
    });
  }

  function drawPlot() {
    if (!plotted) return;
    var ctx = canvas.getContext("2d");
    var w = canvas.width, h = canvas.height, pad = 40;
    var now = Date.now() / 1000;
    var points = history;
    if (points === null) {  // live: the window, from the value that held at its start
      var all = keywords[plotted].points, start = now - PLOT_SECONDS;
      points = all.filter(function (p) { return p[0] >= start; });
      var before = all.filter(function (p) { return p[0] < start; });
      if (before.length) points.unshift([start, before[before.length - 1][1]]);
    }
    ctx.clearRect(0, 0, w, h);
    ctx.strokeStyle = "#999"; ctx.strokeRect(pad, 10, w - pad - 10, h - 30);
    if (!points.length) return;
    // Live: the last minutes, or less while fewer are known (at least one minute).
    var t0 = history !== null ? points[0][0]
      : Math.max(now - PLOT_SECONDS, points[0][0] - Math.max(5, (now - points[0][0]) / 10));
    var t1 = history !== null ? Math.max(points[points.length - 1][0], t0 + 1) : now;
    var lo = Math.min.apply(null, points.map(function (p) { return p[1]; }));
    var hi = Math.max.apply(null, points.map(function (p) { return p[1]; }));
    if (hi === lo) { hi += 1; lo -= 1; }
    function x(t) { return pad + (t - t0) / (t1 - t0) * (w - pad - 10); }
    function y(v) { return 10 + (hi - v) / (hi - lo) * (h - 30); }
    ctx.fillStyle = "#333"; ctx.font = "11px sans-serif";
    ctx.fillText(String(+hi.toPrecision(6)), 2, 14);
    ctx.fillText(String(+lo.toPrecision(6)), 2, h - 20);
    ctx.strokeStyle = "#1565c0"; ctx.lineWidth = 1.5; ctx.beginPath();
    points.forEach(function (p, i) {  // steps: a value holds until the next
      if (i === 0) ctx.moveTo(x(p[0]), y(p[1]));
      else { ctx.lineTo(x(p[0]), y(points[i - 1][1])); ctx.lineTo(x(p[0]), y(p[1])); }
    });
    if (history === null) ctx.lineTo(x(now), y(points[points.length - 1][1]));
    ctx.stroke();
  }

  function build(snapshot) {
    main.textContent = "";
    keywords = {};
    readOnly = snapshot.readOnly;
    lostBanner = el("p", { id: "lost", cls: "lost-banner", hidden: "" });
    main.appendChild(el("h1", { text: "Service " + snapshot.service }));
    main.appendChild(lostBanner);
    table = el("table", { id: "keywords" }, el("thead", null, el("tr", null,
      el("th", { text: "keyword" }), el("th", { text: "value" }), el("th", { text: "units" }),
      el("th", { text: "type" }), el("th", { text: "range / values" }),
      readOnly ? null : el("th", { text: "write" }), el("th", { text: "" }))));
    var tbody = el("tbody");
    table.appendChild(tbody);
    snapshot.keywords.forEach(function (info) {
      var value = el("span", { cls: "value", id: "value-" + info.name });
      var message = el("span", { cls: "message", id: "message-" + info.name });
      var widget = widgetFor(info);
      var plot = numeric(info) ? el("button", { cls: "plot", type: "button", text: "plot" }) : null;
      var row = el("tr", { id: "row-" + info.name, "data-keyword": info.name },
        el("th", { title: info.description || "", text: info.name }),
        el("td", null, value), el("td", { text: info.units || "" }),
        el("td", { cls: "type", text: info.type + (info.readonly ? " (read-only)" : "") +
                         (info.writeonly ? " (write-only)" : "") }),
        el("td", { text: rangeText(info) }),
        readOnly ? null : el("td", null, widget ? widget.form : null, message),
        el("td", null, plot));
      keywords[info.name] = { info: info, row: row, value: value, widget: widget,
                              message: message, points: (snapshot.recent[info.name] || []) };
      if (plot) plot.addEventListener("click", function () { choosePlot(info.name); });
      tbody.appendChild(row);
    });
    main.appendChild(table);
    plotTitle = el("h2", { id: "plot-title" });
    canvas = el("canvas", { id: "plot", width: "900", height: "160", hidden: "" });
    main.appendChild(plotTitle);
    if (snapshot.archive) {
      var since = el("select", { id: "since" });
      ["15m", "1h", "6h", "24h", "7d"].forEach(function (s) {
        since.appendChild(el("option", { value: s, text: "last " + s }));
      });
      var load = el("button", { type: "button", text: "archived history" });
      var live = el("button", { type: "button", text: "live" });
      load.addEventListener("click", function () { loadHistory(since.value); });
      live.addEventListener("click", function () { choosePlot(plotted); });
      archiveControls = el("p", { cls: "archive", hidden: "" }, since, load, live);
      main.appendChild(archiveControls);
    }
    main.appendChild(canvas);
    Object.keys(snapshot.values).forEach(function (name) {
      var data = snapshot.values[name];
      var kw = keywords[name];
      if (kw) {
        var recent = snapshot.recent[name] || [];
        showValue(data);
        kw.points = recent.slice();
      }
    });
    showState(snapshot.state);
    if (plotted && keywords[plotted]) choosePlot(plotted);
  }

  function servicePage() {
    stream("/service/" + encodeURIComponent(serviceName) + "/events", {
      snapshot: build,
      value: showValue,
      state: showState,
      failure: function (data) {
        main.textContent = "";
        main.appendChild(el("p", { cls: "problem", id: "problem",
                                   text: data.error + ": " + data.message }));
      }
    });
    setInterval(function () { if (plotted && history === null) drawPlot(); }, 1000);
  }

  if (page === "service") servicePage();
  else servicesPage();
})();
