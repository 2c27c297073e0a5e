// streamer's live view: one panel per stream (video, current label, score chart), the
// stream list and the run's health, fed by the server's WebSocket (read-only). No build
// step, no network but this server: uPlot is vendored (static/vendor).
/* global uPlot */

const token = new URLSearchParams(location.search).get("token");
const query = token ? `?token=${encodeURIComponent(token)}` : "";
/** Panels shown whole; those beyond start collapsed (no video pulled, no chart drawn). */
const EXPANDED_MAX = 8;
const REDRAW_MS = 100;
/** How often a live video's picture is looked at to count the frames shown. */
const FRAME_PROBE_MS = 50;

const state = {
  mode: null,
  historyS: 30,
  t0: 0,
  t1: 0,
  time: 0,
  connected: false,
  streams: new Map(), // name -> Panel
  healthShown: null,
};

// -- colours: the overlay's label_colour (CRC-32 of the label -> an OpenCV hue) -----------
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(text) {
  let crc = 0xffffffff;
  for (const byte of new TextEncoder().encode(text)) {
    crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}

const colours = new Map();
function labelColour(label, alpha = 1) {
  let rgb = colours.get(label);
  if (!rgb) {
    const hue = (crc32(label) % 180) * 2; // OpenCV hues are degrees / 2
    const s = 200 / 255;
    const f = (n) => {
      const k = (n + hue / 60) % 6;
      return Math.round(255 * (1 - s * Math.max(0, Math.min(k, 4 - k, 1))));
    };
    rgb = [f(5), f(3), f(1)];
    colours.set(label, rgb);
  }
  return `rgba(${rgb[0]}, ${rgb[1]}, ${rgb[2]}, ${alpha})`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function lowerBound(values, x) {
  let lo = 0;
  let hi = values.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (values[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// -- one stream ------------------------------------------------------------------------
class Panel {
  constructor(info, number) {
    this.name = info.stream;
    this.info = info;
    this.t = [];
    this.scores = {}; // label -> values aligned with t (null where absent)
    this.labels = [];
    this.segments = []; // {t0, t1, label}
    this.records = []; // review: every record, for the label at a time
    this.newest = null; // the newest output's label (live)
    this.loads = 0; // the img's "load" events
    this.changes = 0; // live: the picture seen to change since the first load
    this.frameProbe = null; // live: the last picture's fingerprint
    this.chart = null;
    this.chartLabels = "";
    this.dirty = true;
    this.loading = false; // review: a frame request in flight
    this.pendingTime = null;

    this.nowText = el("span", { class: "now" });
    this.li = el("li", { "data-stream": this.name }, el("span", { class: "name" }, this.name),
      this.nowText);
    this.li.addEventListener("click", () => this.expand(true));
    this.meta = el("span", { class: "meta" });
    this.heading = el("h3", {}, el("span", {}, this.name), this.meta);
    this.heading.addEventListener("click", () => this.expand(this.collapsed));
    this.labelEl = el("div", { class: "label" });
    this.chartEl = el("div", { class: "chart" });
    this.section = el("section", { class: "stream", "data-stream": this.name }, this.heading);
    this.img = null;
    this.collapsed = number >= EXPANDED_MAX;
    this.section.classList.toggle("collapsed", this.collapsed);
    this.section.append(this.labelEl, this.chartEl);
    this.update(info);
  }

  update(info) {
    const restarted = this.info.ended && !info.ended;
    this.info = info;
    this.li.classList.toggle("ended", !!info.ended);
    this.section.classList.toggle("ended", !!info.ended);
    const rate = info.rate ? ` ${+info.rate.toFixed(2)} ${info.media === "audio" ? "Hz" : "fps"}` : "";
    this.meta.textContent = `${info.media}${rate}`;
    if (info.video && !this.img) {
      this.img = el("img", { class: "video", alt: `video of ${this.name}` });
      this.img.addEventListener("load", () => {
        this.loads += 1;
        this.frameDone();
      });
      this.img.addEventListener("error", () => this.frameDone());
      this.section.insertBefore(this.img, this.labelEl);
      this.connectVideo();
    } else if (restarted) {
      this.connectVideo();
    }
  }

  connectVideo() {
    if (!this.img) return;
    if (this.collapsed) {
      this.img.removeAttribute("src");
    } else if (state.mode === "review") {
      this.showFrame(state.time);
    } else if (state.mode === "live") {
      this.img.src = `video/${encodeURIComponent(this.name)}.mjpg${query}`;
    }
  }

  expand(open) {
    this.collapsed = !open;
    this.section.classList.toggle("collapsed", this.collapsed);
    this.connectVideo();
    this.dirty = true;
    if (open) this.section.scrollIntoView({ block: "nearest" });
  }

  clear() {
    this.t = [];
    this.scores = {};
    this.labels = [];
    this.segments = [];
    this.records = [];
    this.newest = null;
    this.dirty = true;
  }

  add(record) {
    if (state.mode === "review") this.records.push(record);
    if (record.label !== null && record.label !== undefined) this.newest = record.label;
    if (record.kind === "segment") {
      if (record.t0 !== null && record.t1 !== null) {
        this.segments.push({ t0: record.t0, t1: record.t1, label: record.label || "" });
      }
    } else if (record.scores && typeof record.pts === "number") {
      const n = this.t.length;
      this.t.push(record.pts);
      for (const [label, value] of Object.entries(record.scores)) {
        if (!(label in this.scores)) {
          this.scores[label] = new Array(n).fill(null);
          this.labels.push(label);
        }
      }
      for (const label of this.labels) {
        const value = record.scores[label];
        this.scores[label].push(typeof value === "number" ? value : null);
      }
    }
    this.dirty = true;
  }

  /** Live: forget what is older than history_s before the newest output. */
  trim() {
    if (state.mode !== "live" || !this.t.length) return;
    const oldest = this.t[this.t.length - 1] - state.historyS;
    const cut = lowerBound(this.t, oldest);
    if (cut > 0) {
      this.t.splice(0, cut);
      for (const label of this.labels) this.scores[label].splice(0, cut);
    }
    while (this.segments.length && this.segments[0].t1 < oldest) this.segments.shift();
  }

  /** [t0, t1] the chart shows: the last history_s seconds, or the window around the slider. */
  window() {
    if (state.mode === "review") {
      const half = state.historyS / 2;
      return [state.time - half, state.time + half];
    }
    const last = this.t.length ? this.t[this.t.length - 1] : 0;
    return [Math.max(this.t.length ? this.t[0] : 0, last - state.historyS), last];
  }

  series() {
    const [from, to] = this.window();
    const a = lowerBound(this.t, from);
    const b = lowerBound(this.t, to + 1e-9);
    const scores = {};
    for (const label of this.labels) scores[label] = this.scores[label].slice(a, b);
    return { t: this.t.slice(a, b), scores };
  }

  labelNow() {
    if (state.mode !== "review") return this.newest;
    let found = null;
    for (const record of this.records) {
      if (record.pts > state.time + 1e-9) break;
      if (record.label !== null && record.label !== undefined) found = record.label;
    }
    return found;
  }

  showFrame(t) {
    if (!this.img || this.collapsed) return;
    if (this.loading) {
      this.pendingTime = t;
      return;
    }
    this.loading = true;
    const sep = query ? "&" : "?";
    this.img.src = `frame/${encodeURIComponent(this.name)}.jpg${query}${sep}t=${t.toFixed(3)}`;
  }

  /** Live: count a frame when the picture changed (an MJPEG image fires "load" only for
   * its first frame in Chromium). Approximate: identical frames count once. */
  probeFrame() {
    const img = this.img;
    if (!img || this.collapsed || state.mode !== "live" || !img.complete || !img.naturalWidth) {
      return;
    }
    probeCtx.drawImage(img, 0, 0, PROBE_W, PROBE_H);
    const pixels = probeCtx.getImageData(0, 0, PROBE_W, PROBE_H).data;
    let hash = 0;
    for (let i = 0; i < pixels.length; i += 1) hash = (hash * 31 + pixels[i]) | 0;
    if (this.frameProbe !== null && hash !== this.frameProbe && this.loads > 0) {
      this.changes += 1;
    }
    this.frameProbe = hash;
  }

  /** Frames the img showed: its loads, or (live MJPEG) the first load and each change. */
  get framesShown() {
    return Math.max(this.loads, this.loads > 0 ? 1 + this.changes : 0);
  }

  frameDone() {
    if (state.mode !== "review") return;
    this.loading = false;
    if (this.pendingTime !== null) {
      const t = this.pendingTime;
      this.pendingTime = null;
      this.showFrame(t);
    }
  }

  draw() {
    const label = this.labelNow();
    const text = label === null || label === undefined ? "" : String(label);
    if (this.labelEl.textContent !== text) {
      this.labelEl.textContent = text;
      this.nowText.textContent = text;
      const colour = text ? labelColour(text) : "";
      this.labelEl.style.color = colour;
      this.nowText.style.color = colour;
    }
    if (!this.dirty || this.collapsed) return;
    this.dirty = false;
    if (!this.labels.length) return;
    const { t, scores } = this.series();
    const data = [t, ...this.labels.map((l) => scores[l])];
    const key = this.labels.join("\u0000");
    const width = Math.max(200, this.chartEl.clientWidth || this.section.clientWidth - 20);
    if (!this.chart || this.chartLabels !== key) {
      if (this.chart) this.chart.destroy();
      this.chartLabels = key;
      this.chart = new uPlot(this.chartOptions(width), data, this.chartEl);
    } else {
      this.chart.setData(data, false);
    }
    const [from, to] = this.window();
    this.chart.setScale("x", { min: from, max: Math.max(to, from + 1e-3) });
  }

  chartOptions(width) {
    const panel = this;
    return {
      width,
      height: 180,
      legend: { show: true, live: false },
      cursor: { show: true, drag: { x: false, y: false } },
      scales: {
        x: { time: false },
        y: { range: (u, min, max) => [Math.min(0, min ?? 0), Math.max(1, max ?? 1)] },
      },
      axes: [
        { stroke: "#aaa", grid: { stroke: "#333" }, values: (u, ticks) => ticks.map((v) => `${+v.toFixed(2)} s`) },
        { stroke: "#aaa", grid: { stroke: "#333" } },
      ],
      series: [
        { label: "t" },
        ...this.labels.map((label) => ({
          label,
          stroke: labelColour(label),
          width: 1.5,
          spanGaps: false,
          points: { show: false },
        })),
      ],
      hooks: {
        drawClear: [
          (u) => {
            const { ctx } = u;
            const { left, top, width: w, height: h } = u.bbox;
            ctx.save();
            ctx.beginPath();
            ctx.rect(left, top, w, h);
            ctx.clip();
            for (const seg of panel.segments) {
              const x0 = u.valToPos(seg.t0, "x", true);
              const x1 = u.valToPos(seg.t1, "x", true);
              if (x1 < left || x0 > left + w) continue;
              ctx.fillStyle = labelColour(seg.label, 0.2);
              ctx.fillRect(x0, top, Math.max(1, x1 - x0), h);
            }
            if (state.mode === "review") {
              // the slider's time
              ctx.fillStyle = "rgba(255, 255, 255, 0.6)";
              ctx.fillRect(Math.round(u.valToPos(state.time, "x", true)), top, 1, h);
            }
            ctx.restore();
          },
        ],
      },
    };
  }
}

// -- messages ----------------------------------------------------------------------------
function onHello(message) {
  state.mode = message.mode;
  state.historyS = message.history_s || 30;
  document.getElementById("mode").textContent = message.mode === "review" ? "review" : "live";
  document.title = `streamer: ${message.mode === "review" ? "review" : "live view"}`;
  for (const panel of state.streams.values()) panel.clear();
  if (message.mode === "review") {
    document.getElementById("health").textContent = "a finished run";
    setupReview(message.t0 ?? 0, message.t1 ?? 0);
  }
}

function onStreams(message) {
  const list = document.getElementById("streams");
  const panels = document.getElementById("panels");
  for (const info of message.streams) {
    let panel = state.streams.get(info.stream);
    if (panel) {
      panel.update(info);
    } else {
      panel = new Panel(info, state.streams.size);
      state.streams.set(info.stream, panel);
      list.append(panel.li);
      panels.append(panel.section);
    }
  }
}

function onOutputs(message) {
  for (const record of message.outputs) {
    let panel = state.streams.get(record.stream);
    if (!panel) {
      onStreams({ streams: [{ stream: record.stream, media: "unknown", rate: null, video: false, ended: false }] });
      panel = state.streams.get(record.stream);
    }
    panel.add(record);
  }
  for (const panel of state.streams.values()) panel.trim();
}

function fmt(value, digits = 1) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function onHealth(message) {
  state.healthShown = message;
  const rows = [
    ["fps in", fmt(message.fps_in)],
    ["fps out", fmt(message.fps_out)],
    ["latency p50", message.latency_ms ? `${fmt(message.latency_ms.p50)} ms` : "–"],
    ["latency p99", message.latency_ms ? `${fmt(message.latency_ms.p99)} ms` : "–"],
    ["frames in", message.frames_in],
    ["outputs", message.outputs],
    ["dropped", message.dropped, message.dropped > 0],
  ];
  for (const [name, s] of Object.entries(message.streams || {})) {
    const missing = s.gaps ? ` (${s.frames_missing} frames)` : "";
    rows.push([`${name}: gaps`, `${s.gaps}${missing}`, s.gaps > 0]);
    if (s.dropped) rows.push([`${name}: dropped`, s.dropped, true]);
  }
  for (const [name, q] of Object.entries(message.queues || {})) {
    rows.push([name, `${q.depth}/${q.capacity}`, q.depth >= q.capacity]);
  }
  const table = el("table");
  for (const [name, value, bad] of rows) {
    const tr = el("tr", {}, el("td", {}, String(name)), el("td", {}, String(value ?? "–")));
    if (bad) tr.className = "bad";
    table.append(tr);
  }
  document.getElementById("health").replaceChildren(table);
}

// -- review ------------------------------------------------------------------------------
function setupReview(t0, t1) {
  state.t0 = t0;
  state.t1 = t1;
  const box = document.getElementById("review");
  let slider = document.getElementById("slider");
  if (!slider) {
    slider = el("input", { id: "slider", type: "range", "aria-label": "time" });
    const time = el("span", { id: "time" });
    box.append(slider, time);
    slider.addEventListener("input", () => setTime(Number(slider.value)));
  }
  slider.min = String(t0);
  slider.max = String(t1);
  slider.step = "0.01";
  box.hidden = false;
  setTime(Math.min(Math.max(state.time, t0), t1));
}

function setTime(t) {
  state.time = t;
  const slider = document.getElementById("slider");
  if (slider && Number(slider.value) !== t) slider.value = String(t);
  document.getElementById("time").textContent = `${t.toFixed(2)} s`;
  for (const panel of state.streams.values()) {
    panel.dirty = true;
    panel.showFrame(t);
  }
  redraw();
}

// -- the WebSocket -------------------------------------------------------------------------
let socket = null;
let retryMs = 500;

function setConnected(connected) {
  state.connected = connected;
  const status = document.getElementById("status");
  status.textContent = connected ? "connected" : "disconnected, retrying…";
  status.className = connected ? "online" : "offline";
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/ws${query}`);
  socket.addEventListener("open", () => {
    retryMs = 500;
    setConnected(true);
  });
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "hello") onHello(message);
    else if (message.type === "streams") onStreams(message);
    else if (message.type === "outputs") onOutputs(message);
    else if (message.type === "health") onHealth(message);
    scheduleRedraw();
  });
  socket.addEventListener("close", () => {
    setConnected(false);
    setTimeout(connect, retryMs);
    retryMs = Math.min(5000, retryMs * 2);
  });
}

const PROBE_W = 32;
const PROBE_H = 24;
const probeCtx = Object.assign(document.createElement("canvas"), {
  width: PROBE_W,
  height: PROBE_H,
}).getContext("2d", { willReadFrequently: true });
setInterval(() => {
  for (const panel of state.streams.values()) panel.probeFrame();
}, FRAME_PROBE_MS);

let redrawTimer = null;
function scheduleRedraw() {
  if (redrawTimer === null) redrawTimer = setTimeout(redraw, REDRAW_MS);
}

function redraw() {
  if (redrawTimer !== null) clearTimeout(redrawTimer);
  redrawTimer = null;
  for (const panel of state.streams.values()) panel.draw();
}

window.addEventListener("resize", () => {
  for (const panel of state.streams.values()) {
    if (panel.chart) {
      panel.chart.setSize({ width: Math.max(200, panel.chartEl.clientWidth), height: 180 });
    }
  }
});

// -- for tests and the console --------------------------------------------------------------
window.streamerView = {
  streams: () => [...state.streams.keys()],
  series: (stream) => state.streams.get(stream)?.series() ?? null,
  label: (stream) => state.streams.get(stream)?.labelNow() ?? null,
  get connected() {
    return state.connected;
  },
  framesShown: (stream) => state.streams.get(stream)?.framesShown ?? 0,
  get mode() {
    return state.mode;
  },
  get health() {
    return state.healthShown;
  },
  setTime: (t) => setTime(t),
};

connect();
