"use strict";
// Draws the report from the two JSON blocks of the page, with nothing fetched. Every number shown
// carries data-key (its place in the report), data-unit and data-value (the raw number), so tools and
// the test can check the page against the JSON report. Each chart's <svg> gets data-drawn: the
// number of data marks (class "mark") it drew.
(function () {
  const report = JSON.parse(document.getElementById("report").textContent);
  const charts = JSON.parse(document.getElementById("charts").textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const COLOR = { ok: "#2f6fdf", bad: "#d64545", p99: "#e08a1e", good: "#2a9d6f" };

  function html(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    // textContent, never innerHTML: error messages are server text.
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(parent, tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    parent.appendChild(e);
    return e;
  }

  const count = (n) => Math.round(n).toLocaleString("en-US");
  const FORMAT = {
    count: count,
    ms: (ns) => (ns / 1e6).toFixed(2) + " ms",
    s: (ns) => (ns / 1e9).toFixed(2) + " s",
    rate: (r) => r.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }),
  };
  // Axis labels: short, in the unit that suits the value.
  function duration(ns) {
    const short = (x) => String(Number(x.toPrecision(3)));
    if (ns >= 1e9) return short(ns / 1e9) + " s";
    if (ns >= 1e6) return short(ns / 1e6) + " ms";
    return short(ns / 1e3) + " µs";
  }
  function shown(tag, key, unit, v, attrs) {
    return html(tag, Object.assign({ "data-key": key, "data-unit": unit, "data-value": String(v) }, attrs || {}),
      FORMAT[unit](v));
  }
  function row(tbody, cells) {
    const tr = html("tr");
    for (const cell of cells) tr.appendChild(typeof cell === "string" ? html("td", {}, cell) : cell);
    tbody.appendChild(tr);
  }

  // ---- text ----
  const o = report.options || {};
  const mode = o.rps ? `open loop at ${count(o.rps)} requests/s` : `closed loop, ${count(o.concurrency)} callers`;
  document.getElementById("run").textContent =
    `${o.call} on ${o.host} · ${mode} · ${o.connections} connections · ${FORMAT.s(o.duration)} · ${report.date}`;

  const statuses = report.statusCodeDistribution || {};
  const errorCount = Object.entries(statuses).filter(([code]) => code !== "OK").reduce((n, [, c]) => n + c, 0);
  const cards = document.getElementById("summary");
  function card(label, value, bad) {
    const c = html("div", { class: bad ? "card bad" : "card" });
    c.appendChild(html("div", { class: "label" }, label));
    value.classList.add("value");
    c.appendChild(value);
    cards.appendChild(c);
  }
  card("Requests", shown("div", "count", "count", report.count));
  card("Requests/s", shown("div", "rps", "rate", report.rps));
  card("Errors", html("div", { id: "errors-total", "data-value": String(errorCount) }, count(errorCount)), errorCount > 0);
  card("Average", shown("div", "average", "ms", report.average));
  card("Fastest", shown("div", "fastest", "ms", report.fastest));
  card("Slowest", shown("div", "slowest", "ms", report.slowest));
  card("Total", shown("div", "total", "s", report.total));

  const distribution = document.querySelector("#distribution tbody");
  for (const d of report.latencyDistribution || []) {
    row(distribution, [`p${d.percentage}`, shown("td", `latencyDistribution.${d.percentage}`, "ms", d.latency)]);
  }
  const statusRows = document.querySelector("#statuses tbody");
  const answered = Math.max(1, report.count);
  for (const [code, n] of Object.entries(statuses)) {
    row(statusRows, [code, shown("td", `statusCodeDistribution.${code}`, "count", n),
      html("td", { class: "share" }, (100 * n / answered).toFixed(1) + " %")]);
  }
  const errors = Object.entries(report.errorDistribution || {});
  if (errors.length) {
    document.getElementById("errors-section").hidden = false;
    const tbody = document.querySelector("#errors tbody");
    for (const [message, n] of errors) {
      row(tbody, [html("td", { "data-count": String(n) }, count(n)), html("td", { class: "message" }, message)]);
    }
  }

  // ---- charts ----
  function niceStep(span, target) {
    const raw = span / Math.max(1, target);
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const m = raw / power;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * power;
  }
  function linearTicks(max, target) {
    if (!(max > 0)) return [0, 1];
    const step = niceStep(max, target);
    const ticks = [];
    for (let v = 0; v <= max * 1.0001 + step; v += step) {
      ticks.push(v);
      if (v >= max) break;
    }
    return ticks;
  }
  function logTicks(low, high) {
    const ticks = [];
    for (let d = Math.floor(Math.log10(low)); d <= Math.ceil(Math.log10(high)); d++) {
      for (const m of [1, 2, 5]) {
        const v = m * Math.pow(10, d);
        if (v >= low && v <= high) ticks.push(v);
      }
    }
    return ticks.length >= 2 ? ticks : [low, high];
  }

  // A plot area with axes: x is "log" (values), "linear" (values) or "band" (categories); y is linear
  // from zero. Returns the scales and the group to draw marks into.
  function frame(el, opts) {
    const [, , width, height] = el.getAttribute("viewBox").split(" ").map(Number);
    const m = { left: 58, right: 14, top: 12, bottom: 40 };
    const w = width - m.left - m.right, h = height - m.top - m.bottom;
    const yTicks = linearTicks(opts.yMax, 4);
    const yTop = yTicks[yTicks.length - 1] || 1;
    const y = (v) => m.top + h - (v / yTop) * h;
    let x;
    if (opts.x === "log") {
      const [a, b] = [Math.log(opts.xMin), Math.log(Math.max(opts.xMax, opts.xMin * 1.0001))];
      x = (v) => m.left + ((Math.log(v) - a) / (b - a)) * w;
    } else if (opts.x === "band") {
      const band = w / Math.max(1, opts.bands.length);
      x = (i) => m.left + band * i;
      x.band = band;
    } else {
      const span = Math.max(opts.xMax - opts.xMin, 1e-9);
      x = (v) => m.left + ((v - opts.xMin) / span) * w;
    }
    for (const t of yTicks) {
      svg(el, "line", { class: "grid", x1: m.left, x2: m.left + w, y1: y(t), y2: y(t) });
      svg(el, "text", { x: m.left - 6, y: y(t) + 4, "text-anchor": "end" }, opts.yFormat(t));
    }
    svg(el, "line", { class: "axis", x1: m.left, x2: m.left + w, y1: m.top + h, y2: m.top + h });
    svg(el, "line", { class: "axis", x1: m.left, x2: m.left, y1: m.top, y2: m.top + h });
    if (opts.x === "band") {
      const every = Math.ceil(opts.bands.length / 12);
      opts.bands.forEach((label, i) => {
        if (i % every === 0) {
          svg(el, "text", { x: x(i) + x.band / 2, y: m.top + h + 15, "text-anchor": "middle" }, label);
        }
      });
    } else {
      const ticks = opts.x === "log" ? logTicks(opts.xMin, opts.xMax) : linearTicks(opts.xMax, 6);
      for (const t of ticks) {
        svg(el, "line", { class: "axis", x1: x(t), x2: x(t), y1: m.top + h, y2: m.top + h + 4 });
        svg(el, "text", { x: x(t), y: m.top + h + 16, "text-anchor": "middle" }, opts.xFormat(t));
      }
    }
    svg(el, "text", { class: "label", x: m.left + w / 2, y: height - 4, "text-anchor": "middle" }, opts.xLabel);
    const g = svg(el, "g", { class: "marks" });
    return { x, y, g, m, w, h, base: m.top + h };
  }
  function done(el) {
    el.setAttribute("data-drawn", String(el.querySelectorAll(".mark").length));
  }
  function empty(el, text) {
    const [, , width, height] = el.getAttribute("viewBox").split(" ").map(Number);
    svg(el, "text", { class: "label", x: width / 2, y: height / 2, "text-anchor": "middle" }, text);
    done(el);
  }

  function histogram(el, bins, color, markers, xLabel) {
    const filled = bins.filter((b) => b.count > 0);
    if (!filled.length) return empty(el, "no calls to show");
    const xMin = bins[0].from, xMax = Math.max(bins[bins.length - 1].to, xMin * 1.01);
    const f = frame(el, {
      x: "log", xMin, xMax, yMax: Math.max(...bins.map((b) => b.count)),
      xFormat: duration, yFormat: count, xLabel,
    });
    for (const b of filled) {
      const x0 = f.x(Math.max(b.from, xMin)), x1 = Math.max(f.x(Math.min(Math.max(b.to, b.from * 1.01), xMax)), x0 + 2);
      const rect = svg(f.g, "rect", {
        class: "mark", x: x0 + 0.5, width: Math.max(1, x1 - x0 - 1), y: f.y(b.count), height: f.base - f.y(b.count),
        fill: color, "data-from": String(b.from), "data-to": String(b.to), "data-count": String(b.count),
      });
      svg(rect, "title", {}, `${duration(b.from)} – ${duration(b.to)}: ${count(b.count)}`);
    }
    (markers || []).forEach(([label, value, stroke], i) => {
      if (!(value >= xMin && value <= xMax)) return;
      const at = f.x(value);
      svg(f.g, "line", { x1: at, x2: at, y1: f.m.top, y2: f.base, stroke, "stroke-dasharray": "4 3" });
      // Labels on the right half go left of their line, so none runs off the chart; each marker has
      // its own row, so close percentiles do not overprint.
      const right = at > f.m.left + f.w / 2;
      svg(f.g, "text", { x: right ? at - 4 : at + 4, y: f.m.top + 10 + 14 * i, fill: stroke,
        "text-anchor": right ? "end" : "start" }, `${label} ${duration(value)}`);
    });
    done(el);
  }

  const percentile = (p) => ((report.latencyDistribution || []).find((d) => d.percentage === p) || {}).latency;
  histogram(document.getElementById("chart-latency"), charts.latencyBins, COLOR.ok,
    [["p50", percentile(50), "#1d2330"], ["p99", percentile(99), COLOR.p99]], "latency");

  (function requestsPerSecond(el) {
    const points = charts.timeline;
    if (!points.length) return empty(el, "no seconds recorded");
    const f = frame(el, {
      x: "band", bands: points.map((p) => `${p.second}s`), yMax: Math.max(...points.map((p) => p.rps)),
      yFormat: count, xLabel: "second of the run",
    });
    points.forEach((p, i) => {
      const x = f.x(i) + f.x.band * 0.12, width = f.x.band * 0.76;
      const rect = svg(f.g, "rect", {
        class: "mark", x, width, y: f.y(p.rps), height: f.base - f.y(p.rps), fill: COLOR.ok,
        "data-second": String(p.second), "data-requests": String(p.requests), "data-errors": String(p.errors),
      });
      svg(rect, "title", {}, `second ${p.second}: ${count(p.rps)} requests/s, ${count(p.errors)} errors`);
      if (p.errors > 0) {
        const errorRate = (p.rps * p.errors) / p.requests;
        svg(f.g, "rect", { x, width, y: f.y(errorRate), height: f.base - f.y(errorRate), fill: COLOR.bad });
      }
    });
    done(el);
  })(document.getElementById("chart-rps"));

  (function percentilesOverTime(el) {
    const points = charts.timeline.filter((p) => p.p99 > 0);
    if (!points.length) return empty(el, "no successful calls");
    const f = frame(el, {
      x: "band", bands: charts.timeline.map((p) => `${p.second}s`), yMax: Math.max(...points.map((p) => p.p99)),
      yFormat: duration, xLabel: "second of the run",
    });
    const at = (p) => f.x(charts.timeline.indexOf(p)) + f.x.band / 2;
    for (const [key, color] of [["p50", COLOR.ok], ["p99", COLOR.p99]]) {
      const d = points.map((p, i) => `${i ? "L" : "M"}${at(p).toFixed(1)},${f.y(p[key]).toFixed(1)}`).join(" ");
      svg(f.g, "path", { class: "mark", d, fill: "none", stroke: color, "stroke-width": 2, "data-series": key,
        "data-points": String(points.length) });
      for (const p of points) {
        const dot = svg(f.g, "circle", { cx: at(p), cy: f.y(p[key]), r: 3.5, fill: color });
        svg(dot, "title", {}, `second ${p.second}: ${key} ${duration(p[key])}`);
      }
      const legendX = key === "p50" ? f.m.left + 10 : f.m.left + 70;
      svg(f.g, "rect", { x: legendX, y: f.m.top + 2, width: 12, height: 3, fill: color });
      svg(f.g, "text", { x: legendX + 16, y: f.m.top + 7 }, key);
    }
    done(el);
  })(document.getElementById("chart-percentiles"));

  (function statusCodes(el) {
    const entries = Object.entries(statuses);
    if (!entries.length) return empty(el, "no answers");
    const [, , width] = el.getAttribute("viewBox").split(" ").map(Number);
    const rowHeight = 24, left = 130, right = 80, most = Math.max(...entries.map(([, n]) => n));
    el.setAttribute("viewBox", `0 0 ${width} ${entries.length * rowHeight + 8}`);
    entries.forEach(([code, n], i) => {
      const y = 4 + i * rowHeight;
      svg(el, "text", { class: "label", x: left - 8, y: y + 15, "text-anchor": "end" }, code);
      const barWidth = Math.max(2, ((width - left - right) * n) / most);
      svg(el, "rect", { class: "mark", x: left, y: y + 3, width: barWidth, height: rowHeight - 8,
        fill: code === "OK" ? COLOR.ok : COLOR.bad, "data-code": code, "data-count": String(n) });
      svg(el, "text", { x: left + barWidth + 6, y: y + 15 }, count(n));
    });
    done(el);
  })(document.getElementById("chart-status"));

  if (report.churn) {
    const churn = report.churn;
    document.getElementById("churn-section").hidden = false;
    const tbody = document.querySelector("#churn tbody");
    const stale = shown("td", "churn.stale", "count", churn.stale, { class: churn.stale ? "stale-some" : "stale-none" });
    row(tbody, ["stale answers", stale]);
    row(tbody, ["onboarded", shown("td", "churn.onboarded", "count", churn.onboarded)]);
    row(tbody, ["lookups of them", shown("td", "churn.checked", "count", churn.checked)]);
    row(tbody, ["not found within 5 s or unchecked", shown("td", "churn.failures", "count", churn.failures)]);
    row(tbody, ["found, n", shown("td", "churn.foundAfter.count", "count", churn.foundAfter.count)]);
    row(tbody, ["change to found, p50", shown("td", "churn.foundAfter.p50", "ms", churn.foundAfter.p50)]);
    row(tbody, ["change to found, p99", shown("td", "churn.foundAfter.p99", "ms", churn.foundAfter.p99)]);
    row(tbody, ["change to found, slowest", shown("td", "churn.foundAfter.slowest", "ms", churn.foundAfter.slowest)]);
    histogram(document.getElementById("chart-found-after"), charts.foundAfterBins || [], COLOR.good,
      [["p50", churn.foundAfter.p50, "#1d2330"], ["p99", churn.foundAfter.p99, COLOR.p99]],
      "from UpsertMerchant returning to the edge answering FOUND");
  }
})();
