// The pypit dashboard page: reads /api/stream (server-sent events) and draws the pools,
// one chart per metric definition and the tail of events. No other source is loaded.
"use strict";

(function () {
  const POINTS = 300;            // points kept per chart
  const HISTOGRAM_FRAMES = 60;   // frames a distribution's histogram sums
  const EVENTS_SHOWN = 200;
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
                  "#4f46e5", "#ca8a04", "#db2777", "#059669"];

  const $ = (selector) => document.querySelector(selector);
  let charts = [];
  let source = null;
  let filter = "";
  let frames = 0;
  let maxSeries = null;          // tag sets the server keeps per metric (hello)

  function tagLabel(tags) {
    const parts = Object.entries(tags || {}).map(([k, v]) => `${k}=${v}`);
    return parts.length ? parts.join(", ") : "all";
  }

  function number(value, digits) {
    if (value === null || value === undefined) return "–";
    const magnitude = Math.abs(value);
    if (magnitude >= 1e9) return (value / 1e9).toFixed(1) + "G";
    if (magnitude >= 1e6) return (value / 1e6).toFixed(1) + "M";
    if (magnitude >= 1e4) return (value / 1e3).toFixed(1) + "k";
    if (Number.isInteger(value)) return String(value);
    return value.toFixed(digits === undefined ? (magnitude < 10 ? 2 : 1) : digits);
  }

  function bytes(value) {
    if (value === null || value === undefined) return "–";
    return (value / 1048576).toFixed(1) + " MiB";
  }

  function duration(seconds) {
    if (!seconds) return "–";
    if (seconds < 60) return seconds.toFixed(0) + "s";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m" + String(Math.floor(seconds % 60)).padStart(2, "0");
    return Math.floor(seconds / 3600) + "h" + String(Math.floor((seconds % 3600) / 60)).padStart(2, "0");
  }

  function element(tag, attributes, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- charts ------------------------------------------------------------------------------

  class Chart {
    constructor(definition, container) {
      this.definition = definition;
      this.card = element("div", {"class": "card chart", "data-metric": definition.name});
      this.card.append(element("h3", {}, definition.name));
      const unit = definition.unit ? `, ${definition.unit}` : "";
      const what = {
        counter: "counter: events per second",
        sum: `sum: rate per second${unit}`,
        last_value: `last value${unit}`,
        summary: `summary: p50 and p99 per interval${unit}`,
        distribution: `distribution: histogram of the last ${HISTOGRAM_FRAMES} intervals${unit}`,
      }[definition.kind];
      this.card.append(element("div", {"class": "kind"}, what));
      this.dropped = element("div", {"class": "kind dropped"});
      this.dropped.hidden = true;
      this.card.append(this.dropped);
      this.target = element("div", {"class": "plot"});
      this.card.append(this.target);
      container.append(this.card);
      this.xs = [];
      this.lines = new Map();      // label -> values aligned with xs
      this.histograms = new Map(); // label -> list of per-frame bucket counts
      this.plot = null;
      this.shape = "";
      this.points = 0;
    }

    showDropped(dropped) {
      this.dropped.hidden = !dropped;
      this.dropped.textContent = dropped
        ? `${dropped} events dropped: their tag sets were new once ${maxSeries} were kept`
        : "";
    }

    push(time, series) {
      if (this.definition.kind === "distribution") return this.pushHistogram(series);
      const values = new Map();
      for (const s of series) {
        const label = tagLabel(s.tags);
        if (this.definition.kind === "summary") {
          values.set(`p50 ${label}`, s.p50);
          values.set(`p99 ${label}`, s.p99);
        } else {
          values.set(label, s.value);
        }
      }
      this.xs.push(time);
      for (const [label, value] of values) {
        if (!this.lines.has(label)) this.lines.set(label, new Array(this.xs.length - 1).fill(null));
        this.lines.get(label).push(value === undefined ? null : value);
      }
      for (const [label, column] of this.lines) {
        if (column.length < this.xs.length) column.push(null);
      }
      if (this.xs.length > POINTS) {
        this.xs.shift();
        for (const column of this.lines.values()) column.shift();
      }
      this.points += 1;
    }

    pushHistogram(series) {
      for (const s of series) {
        const label = tagLabel(s.tags);
        if (!this.histograms.has(label)) this.histograms.set(label, []);
        const kept = this.histograms.get(label);
        kept.push(s.counts || []);
        if (kept.length > HISTOGRAM_FRAMES) kept.shift();
      }
      this.points += 1;
    }

    draw() {
      const width = Math.max(300, this.target.clientWidth || 400);
      let data, shape, options;
      if (this.definition.kind === "distribution") {
        [data, shape, options] = this.histogramPlot(width);
      } else {
        const labels = [...this.lines.keys()];
        shape = "lines:" + labels.join("|");
        data = [this.xs, ...labels.map((label) => this.lines.get(label))];
        options = {
          width, height: 200,
          scales: {x: {time: true}},
          axes: [{}, {label: this.definition.unit || "", size: 60}],
          series: [{}, ...labels.map((label, i) => ({
            label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
            dash: label.startsWith("p99 ") ? [4, 4] : undefined,
          }))],
        };
      }
      if (this.plot === null || shape !== this.shape) {
        if (this.plot !== null) this.plot.destroy();
        this.target.textContent = "";
        this.plot = new uPlot(options, data, this.target);
        this.shape = shape;
      } else {
        this.plot.setData(data);
      }
    }

    histogramPlot(width) {
      const bounds = this.definition.buckets;
      const labels = [...this.histograms.keys()];
      const sums = labels.map((label) => {
        const total = new Array(bounds.length + 1).fill(0);
        for (const counts of this.histograms.get(label)) {
          counts.forEach((count, i) => { total[i] += count; });
        }
        return total;
      });
      let low = bounds.length, high = 0;
      for (const total of sums) {
        total.forEach((count, i) => { if (count) { low = Math.min(low, i); high = Math.max(high, i); } });
      }
      if (low > high) { low = 0; high = Math.min(bounds.length, 5); }
      const xs = [];
      for (let i = low; i <= high; i++) xs.push(i);
      const data = [xs, ...sums.map((total) => xs.map((i) => total[i]))];
      const bucketName = (i) => (i < bounds.length ? `≤${number(bounds[i])}` : `>${number(bounds[bounds.length - 1])}`);
      const single = labels.length === 1;
      const options = {
        width, height: 200,
        scales: {x: {time: false, range: [low - 0.5, high + 0.5]}},
        axes: [
          {values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? bucketName(v) : "")),
           label: this.definition.unit || ""},
          {label: "count", size: 60},
        ],
        series: [{label: "bucket", value: (u, v) => (v === null ? "–" : bucketName(v))},
          ...labels.map((label, i) => ({
            label, stroke: COLORS[i % COLORS.length],
            fill: single ? COLORS[i % COLORS.length] + "55" : undefined,
            paths: single ? uPlot.paths.bars({size: [0.8, 60]}) : uPlot.paths.stepped({align: 0}),
            points: {show: false},
          }))],
      };
      return [data, `histogram:${labels.join("|")}:${low}-${high}`, options];
    }
  }

  function setDefinitions(definitions) {
    const container = $("#charts");
    for (const chart of charts) if (chart.plot) chart.plot.destroy();
    container.textContent = "";
    charts = definitions.map((definition) => new Chart(definition, container));
    $("#no-metrics").hidden = definitions.length > 0;
  }

  // -- pools -------------------------------------------------------------------------------

  function fact(value, label, extra) {
    const node = element("div", {"class": "fact"});
    node.append(element("b", {}, value), element("span", {}, label));
    if (extra) node.append(extra);
    return node;
  }

  function renderPools(pools) {
    const container = $("#pools");
    container.textContent = "";
    for (const pool of pools) {
      const status = pool.status;
      const card = element("div", {"class": "card pool", "data-pool": pool.name});
      const title = element("h2", {}, `pool ${pool.name}`);
      if (status.closed) title.append(element("span", {"class": "badge bad"}, "closed"));
      else if (status.degraded) title.append(element("span", {"class": "badge bad"}, "degraded"));
      else title.append(element("span", {"class": "badge ok"}, "serving"));
      card.append(title);
      const facts = element("div", {"class": "facts"});
      const meter = element("div", {"class": "meter"});
      const fill = element("div");
      fill.style.width = `${Math.min(100, 100 * (pool.saturation || 0))}%`;
      meter.append(fill);
      const rates = pool.rates || {};
      facts.append(
        fact(`${status.queue_depth} / ${status.max_queue_size}`, "queue (saturation)", meter),
        fact(String(status.in_flight), "in flight"),
        fact(`${status.busy_workers} / ${status.total_workers}`, "busy workers"),
        fact(number(rates.requests), "requests/s"),
        fact(number(rates.completed), "completed/s"),
        fact(number(rates.failed), "failed/s"),
        fact(number(rates.rejected), "rejected/s"),
        fact(String(status.restarts), "restarts"),
      );
      card.append(facts);
      const table = element("table", {"class": "workers"});
      const head = element("tr");
      for (const [name, numeric] of [["worker", 0], ["pid", 1], ["node", 0], ["state", 0],
          ["calls", 1], ["calls/s", 1], ["in flight", 1], ["RSS", 1], ["CPU", 1],
          ["uptime", 1], ["restarts", 1], ["last exit", 0]]) {
        head.append(element("th", numeric ? {"class": "num"} : {}, name));
      }
      const thead = element("thead");
      thead.append(head);
      table.append(thead);
      const body = element("tbody");
      for (const w of pool.workers) {
        const row = element("tr", {"data-worker": w.worker_id, "data-pid": String(w.pid),
                                   "data-state": w.state});
        const cells = [
          [w.worker_id, ""], [w.pid === null ? "–" : String(w.pid), "num"], [w.node || "–", ""],
          [w.state, `state-${w.state}`], [String(w.calls), "num calls"],
          [number(w.calls_per_s, 0), "num"], [String(w.in_flight), "num"],
          [bytes(w.rss_bytes), "num"],
          [w.cpu_percent === null || w.cpu_percent === undefined ? "–" : w.cpu_percent.toFixed(0) + "%", "num"],
          [duration(w.uptime), "num"], [String(w.restarts), "num"],
          [w.last_exit || w.failure || "–", "exit"],
        ];
        for (const [text, cls] of cells) row.append(element("td", cls ? {"class": cls} : {}, text));
        body.append(row);
      }
      table.append(body);
      card.append(table);
      container.append(card);
    }
  }

  // -- events ------------------------------------------------------------------------------

  function pairs(values) {
    return Object.entries(values || {})
      .map(([k, v]) => {
        const text = typeof v === "string" ? v : JSON.stringify(v);
        return `${k}=${text.length > 160 ? text.slice(0, 159) + "…" : text}`;
      })
      .join("  ");
  }

  function addEvents(events) {
    const body = $("#events tbody");
    for (const event of events) {
      const row = element("tr", {"data-event": event.name, "data-seq": event.seq});
      const when = new Date(event.time * 1000).toLocaleTimeString([], {hour12: false});
      row.append(element("td", {}, when), element("td", {}, event.name),
                 element("td", {"class": "kv"}, pairs(event.measurements)),
                 element("td", {"class": "kv"}, pairs(event.metadata)));
      body.prepend(row);
    }
    while (body.rows.length > EVENTS_SHOWN) body.deleteRow(body.rows.length - 1);
  }

  // -- the stream --------------------------------------------------------------------------

  function applyFrame(frame, draw) {
    frame.metrics.forEach((series, i) => { if (charts[i]) charts[i].push(frame.time, series); });
    (frame.dropped || []).forEach((dropped, i) => { if (charts[i]) charts[i].showDropped(dropped); });
    if (draw) {
      for (const chart of charts) chart.draw();
      renderPools(frame.pools);
      $("#clock").textContent = new Date(frame.time * 1000).toLocaleTimeString([], {hour12: false});
    }
  }

  function connect() {
    if (source !== null) source.close();
    const query = filter ? `?events=${encodeURIComponent(filter)}` : "";
    source = new EventSource(`api/stream${query}`);
    const badge = $("#connection");
    source.addEventListener("hello", (message) => {
      const hello = JSON.parse(message.data);
      // Each stream (a reconnection too) starts with the recent events again: replace the
      // tail rather than show them twice.
      $("#events tbody").textContent = "";
      maxSeries = hello.max_series;
      setDefinitions(hello.metrics);
      hello.history.forEach((frame, i) => applyFrame(frame, i === hello.history.length - 1));
      badge.textContent = "live";
      badge.className = "badge ok";
    });
    source.addEventListener("frame", (message) => {
      const frame = JSON.parse(message.data);
      applyFrame(frame, true);
      addEvents(frame.events);
      frames += 1;
      document.body.dataset.frames = String(frames);
    });
    source.onerror = () => {
      badge.textContent = "reconnecting";
      badge.className = "badge warn";
    };
  }

  let typing = null;
  $("#filter").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      filter = e.target.value.trim();
      $("#events tbody").textContent = "";
      connect();
    }, 300);
  });
  window.addEventListener("resize", () => {
    for (const chart of charts) {
      if (chart.plot) chart.plot.setSize({width: Math.max(300, chart.target.clientWidth), height: 200});
    }
  });
  connect();
})();
