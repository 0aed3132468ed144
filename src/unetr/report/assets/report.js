/* unetr report: the tables, the slice viewer, the training curves and the attention maps, drawn from the JSON
   document in #report-data. Plain JavaScript, no library and nothing fetched: the volumes are zlib streams
   (base64) decoded with the browser's own DecompressionStream.

   Volumes are (X, Y, Z) arrays in RAS orientation with X varying fastest. Every plane is shown as radiologists
   look at it: axial from the feet and coronal from the front (the patient's right on the left), sagittal
   from the patient's left (anterior on the left), superior and anterior up. */
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("report-data").textContent);

  // ------------------------------------------------------------------------------------------ helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const fmt = (v, digits = 3) => (isNum(v) ? v.toFixed(digits) : "–");
  const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);

  function hexRgb(hex) {
    return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  }

  function scoreColor(v) {  // 0 red .. 0.5 yellow .. 1 green, pale enough to read text on
    if (!isNum(v)) return "";
    const hue = 120 * clamp(v, 0, 1);
    return `hsl(${hue.toFixed(0)}, 70%, 82%)`;
  }

  async function inflate(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    if (typeof DecompressionStream === "undefined") {
      throw new Error("this browser has no DecompressionStream; open the report in a current browser");
    }
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  const CLASSES = DATA.classes;
  const FOREGROUND = CLASSES.filter((c) => c.index > 0);
  const METRICS = [["dice", "Dice", 3], ["hd95", "HD95", 1], ["surface_dice", "SD", 3]];

  // ------------------------------------------------------------------------------------------ header, summary
  function renderHeader() {
    const m = DATA.meta;
    const parts = [`${DATA.cases.length} case(s)`];
    if (m.run) parts.push(`run ${m.run}`);
    if (m.version) parts.push(`unetr ${m.version}`);
    parts.push(`written ${m.generated}`);
    document.getElementById("subtitle").textContent = parts.join(" · ");
    const notes = document.getElementById("notes");
    for (const n of DATA.notes) notes.append(el("li", { text: n }));
  }

  function renderValidation() {
    const v = DATA.validation;
    const root = document.getElementById("validation");
    if (!v) return;
    const perClass = (p) => Object.entries(p.classes).filter(([n]) => n !== "background")
      .map(([n, d]) => `${n} ${fmt(d)}`).join(", ");
    const fold = v.num_folds ? `fold ${v.fold} of ${v.num_folds}` : "the validation cases";
    root.append(el("p", {},
      el("b", { text: "Validation during training" }), ` (${fold}): best mean Dice `,
      el("b", { text: fmt(v.best.mean_dice) }), ` at iteration ${v.best.iteration} (${perClass(v.best)}); last `,
      `${fmt(v.last.mean_dice)} at iteration ${v.last.iteration}.`));
  }

  function renderSummary() {
    const s = DATA.summary;
    const root = document.getElementById("summary");
    if (!s) {
      root.append(el("p", { class: "muted", text: "No evaluation (give --metrics, or --pred with --labels)." }));
      return;
    }
    const cell = (m, d) => (m && isNum(m.mean) ? `${m.mean.toFixed(d)} ± ${m.std.toFixed(d)}` : "–");
    const rows = s.classes.map((c) => el("tr", {},
      el("td", {}, swatch(c.index), c.name), ...METRICS.map(([k, , d]) => el("td", { text: cell(c[k], d) })),
      el("td", { text: c.dice.n })));
    rows.push(el("tr", {}, el("td", {}, el("b", { text: "mean over classes" })),
      ...METRICS.map(([k, , d]) => el("td", {}, el("b", { text: fmt(s.mean[k], d) }))), el("td")));
    root.append(
      el("p", { text: `Evaluation of ${s.cases} case(s): mean ± std over cases; a class absent from both maps is ` +
        "left out, a missed or invented class scores Dice 0 and HD95 = the image diagonal. SD: surface Dice." }),
      el("table", { class: "summary", "data-testid": "summary" },
        el("thead", {}, el("tr", {}, el("th", { text: "class" }), ...METRICS.map(([, l]) => el("th", { text: l })),
          el("th", { text: "n" }))),
        el("tbody", {}, rows)));
  }

  function swatch(index) {
    const c = CLASSES[index];
    return c && index > 0 ? el("span", { class: "swatch", style: `background:${c.color}` }) : null;
  }

  // ------------------------------------------------------------------------------------------ case table
  class CaseTable {
    constructor(table, onOpen) {
      this.table = table;
      this.onOpen = onOpen;
      this.columns = [{ key: "name", label: "case", get: (r) => r.name },
        { key: "mean_dice", label: "mean Dice", get: (r) => r.mean_dice, digits: 3, score: true }];
      for (const c of FOREGROUND) {
        for (const [m, label, digits] of METRICS) {
          this.columns.push({ key: `${c.index}:${m}`, label, cls: c, digits, score: m !== "hd95",
            get: (r) => (r.scores[c.index] ? r.scores[c.index][m] : null) });
        }
      }
      this.sort = { key: "mean_dice", dir: 1 };
      this.selected = null;
      this.render();
    }

    order() {
      const col = this.columns.find((c) => c.key === this.sort.key);
      const rows = DATA.cases.slice();
      rows.sort((a, b) => {
        const va = col.get(a), vb = col.get(b);
        if (col.key === "name") return this.sort.dir * String(va).localeCompare(String(vb), undefined, { numeric: true });
        const na = !isNum(va), nb = !isNum(vb);
        if (na || nb) return na - nb;  // missing values last, whichever the direction
        return this.sort.dir * (va - vb) || a.name.localeCompare(b.name, undefined, { numeric: true });
      });
      return rows;
    }

    sortBy(key) {
      this.sort = this.sort.key === key ? { key, dir: -this.sort.dir } : { key, dir: 1 };
      this.render();
    }

    render() {
      const head1 = el("tr", {}), head2 = el("tr", {});
      const arrow = (key) => (this.sort.key === key ? el("span", { class: "arrow", text: this.sort.dir > 0 ? "▲" : "▼" }) : null);
      for (const col of this.columns.slice(0, 2)) {
        head1.append(el("th", { rowspan: 2, class: `sortable${col.key === "name" ? " name" : ""}`, "data-key": col.key,
          onclick: () => this.sortBy(col.key) }, col.label, arrow(col.key)));
      }
      for (const c of FOREGROUND) head1.append(el("th", { colspan: METRICS.length }, swatch(c.index), c.name));
      for (const col of this.columns.slice(2)) {
        head2.append(el("th", { class: "sortable", "data-key": col.key, title: `${col.cls.name} ${col.label}`,
          onclick: () => this.sortBy(col.key) }, col.label, arrow(col.key)));
      }
      const body = el("tbody");
      for (const r of this.order()) {
        const tr = el("tr", { "data-case": r.name, class: (r.has_volume ? "" : "novolume") +
          (r.name === this.selected ? " selected" : ""), title: r.has_volume ? "open in the viewer" : "no image for this case" });
        for (const col of this.columns) {
          const v = col.get(r);
          if (col.key === "name") tr.append(el("td", { class: "name", text: v }));
          else tr.append(el("td", { style: col.score && isNum(v) ? `background:${scoreColor(v)}` : null, text: fmt(v, col.digits) }));
        }
        if (r.has_volume) tr.addEventListener("click", () => this.onOpen(r.name));
        body.append(tr);
      }
      this.table.replaceChildren(el("thead", {}, head1, head2), body);
    }

    select(name) {
      this.selected = name;
      for (const tr of this.table.querySelectorAll("tbody tr")) tr.classList.toggle("selected", tr.dataset.case === name);
    }

    neighbour(name, step) {
      const names = this.order().filter((r) => r.has_volume).map((r) => r.name);
      const i = names.indexOf(name);
      return names[(i + step + names.length) % names.length];
    }
  }

  // ------------------------------------------------------------------------------------------ planes
  // cols/rows: the volume axes along a plane's columns and rows; both run against the axis (see the top).
  const PLANES = [
    { name: "axial", normal: 2, cols: 0, rows: 1, edges: ["R", "L", "A", "P"] },
    { name: "coronal", normal: 1, cols: 0, rows: 2, edges: ["R", "L", "S", "I"] },
    { name: "sagittal", normal: 0, cols: 1, rows: 2, edges: ["A", "P", "S", "I"] },
  ];
  const AXIS = ["x", "y", "z"];

  /** Volume index of every pixel of plane `p` at slice `s`, row by row. */
  function planeIndex(shape, p, s) {
    const [X, Y] = shape;
    const W = shape[p.cols], H = shape[p.rows];
    const out = new Int32Array(W * H);
    const v = [0, 0, 0];
    v[p.normal] = s;
    let k = 0;
    for (let r = 0; r < H; r++) {
      v[p.rows] = H - 1 - r;
      for (let c = 0; c < W; c++) {
        v[p.cols] = W - 1 - c;
        out[k++] = v[0] + X * (v[1] + Y * v[2]);
      }
    }
    return out;
  }

  /** The voxel under plane pixel (col, row) at slice s. */
  function voxelAt(shape, p, col, row, s) {
    const v = [0, 0, 0];
    v[p.normal] = s;
    v[p.cols] = shape[p.cols] - 1 - clamp(col, 0, shape[p.cols] - 1);
    v[p.rows] = shape[p.rows] - 1 - clamp(row, 0, shape[p.rows] - 1);
    return v;
  }

  /** Canvas sizes (CSS px) of the three planes at one common scale, so that millimetres look alike everywhere. */
  function planeSizes(shape, spacing, box) {
    const mm = PLANES.map((p) => [shape[p.cols] * spacing[p.cols], shape[p.rows] * spacing[p.rows]]);
    const scale = Math.min(...mm.map(([w, h]) => Math.min(box / w, box / h)));
    return mm.map(([w, h]) => [Math.max(1, Math.round(w * scale)), Math.max(1, Math.round(h * scale))]);
  }

  /** One plane: a canvas drawn from an RGBA image at voxel resolution, scaled without smoothing. */
  class PlaneCanvas {
    constructor(spec, parent, handlers) {
      this.spec = spec;
      this.head = el("div", { class: "head" });
      this.canvas = el("canvas", { "data-plane": spec.name, tabindex: 0 });
      this.box = el("div", { class: "box" }, this.canvas);
      this.slider = el("input", { type: "range", min: 0, max: 0, step: 1, value: 0, "data-slider": spec.name,
        "aria-label": `${spec.name} slice` });
      this.root = el("div", { class: "plane", "data-testid": `plane-${spec.name}` }, this.head, this.box, this.slider);
      parent.append(this.root);
      this.off = document.createElement("canvas");
      this.ctx = this.canvas.getContext("2d");
      this.offctx = this.off.getContext("2d");
      const c = this.canvas;
      c.addEventListener("wheel", (e) => { e.preventDefault(); handlers.wheel(e.deltaY > 0 ? 1 : e.deltaY < 0 ? -1 : 0); },
        { passive: false });
      c.addEventListener("contextmenu", (e) => e.preventDefault());
      c.addEventListener("mouseenter", () => handlers.enter());
      c.addEventListener("mousedown", (e) => {
        e.preventDefault();
        c.focus({ preventScroll: true });
        const drag = handlers.down(e, this.pixel(e));
        if (!drag) return;
        const move = (ev) => drag.move(ev, this.pixel(ev));
        const up = () => { window.removeEventListener("mousemove", move); window.removeEventListener("mouseup", up); };
        window.addEventListener("mousemove", move);
        window.addEventListener("mouseup", up);
      });
      this.slider.addEventListener("input", () => handlers.slider(Number(this.slider.value)));
    }

    resize(cssW, cssH) {
      const dpr = window.devicePixelRatio || 1;
      this.cssW = cssW; this.cssH = cssH;
      this.canvas.style.width = `${cssW}px`;
      this.canvas.style.height = `${cssH}px`;
      this.canvas.width = Math.round(cssW * dpr);
      this.canvas.height = Math.round(cssH * dpr);
    }

    pixel(e) {  // plane pixel (col, row) under the mouse, fractional
      const r = this.canvas.getBoundingClientRect();
      return [(e.clientX - r.left) / r.width * this.W, (e.clientY - r.top) / r.height * this.H];
    }

    /** Draw `rgba` (W x H) and then `decorate(ctx, sx, sy)` in canvas pixels (sx, sy: pixels per voxel). */
    draw(rgba, W, H, decorate) {
      this.W = W; this.H = H;
      if (this.off.width !== W || this.off.height !== H) { this.off.width = W; this.off.height = H; }
      this.offctx.putImageData(new ImageData(rgba, W, H), 0, 0);
      const ctx = this.ctx;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
      ctx.drawImage(this.off, 0, 0, this.canvas.width, this.canvas.height);
      if (decorate) decorate(ctx, this.canvas.width / W, this.canvas.height / H);
      const dpr = window.devicePixelRatio || 1;
      ctx.font = `${Math.round(11 * dpr)}px sans-serif`;
      ctx.fillStyle = "rgba(255, 255, 255, 0.75)";
      const [l, r, t, b] = this.spec.edges, w = this.canvas.width, h = this.canvas.height, m = 3 * dpr;
      ctx.textBaseline = "middle"; ctx.textAlign = "left"; ctx.fillText(l, m, h / 2);
      ctx.textAlign = "right"; ctx.fillText(r, w - m, h / 2);
      ctx.textAlign = "center"; ctx.textBaseline = "top"; ctx.fillText(t, w / 2, m);
      ctx.textBaseline = "bottom"; ctx.fillText(b, w / 2, h - m);
    }
  }

  function drawCrosshair(ctx, x, y, sx, sy) {
    ctx.strokeStyle = "rgba(255, 255, 120, 0.55)";
    ctx.lineWidth = Math.max(1, Math.round(window.devicePixelRatio || 1));
    ctx.beginPath();
    ctx.moveTo((x + 0.5) * sx, 0); ctx.lineTo((x + 0.5) * sx, ctx.canvas.height);
    ctx.moveTo(0, (y + 0.5) * sy); ctx.lineTo(ctx.canvas.width, (y + 0.5) * sy);
    ctx.stroke();
  }

  // ------------------------------------------------------------------------------------------ slice viewer
  const MODES = [["both", "prediction (filled) + reference (outline)"], ["pred", "prediction"], ["ref", "reference"],
    ["diff", "disagreement (false positives / negatives)"]];

  class Viewer {
    constructor(root, table) {
      this.root = root;
      this.table = table;
      this.cases = new Map();
      this.case = null;
      this.enabled = CLASSES.map((c) => c.index > 0);
      this.colors = CLASSES.map((c) => hexRgb(c.color));
      this.mode = "both";
      this.opacity = 0.5;
      this.crosshair = true;
      this.active = 0;
      this.renders = 0;
      this.built = false;
    }

    build() {
      this.title = el("div", { class: "title" });
      this.modeSel = el("select", { "data-control": "mode" }, MODES.map(([v, l]) => el("option", { value: v, text: l })));
      this.modeSel.addEventListener("change", () => { this.mode = this.modeSel.value; this.render(); });
      this.opacityIn = el("input", { type: "range", min: 0, max: 100, value: 50, "data-control": "opacity" });
      this.opacityIn.addEventListener("input", () => { this.opacity = Number(this.opacityIn.value) / 100; this.render(); });
      this.windowSel = el("select", { "data-control": "window" });
      this.windowSel.addEventListener("change", () => {
        const w = this.vol.windows[Number(this.windowSel.value)];
        this.setWindow(w.lo, w.hi);
      });
      this.windowOut = el("span", { class: "muted", "data-testid": "window" });
      const cross = el("input", { type: "checkbox", checked: true, "data-control": "crosshair" });
      cross.addEventListener("change", () => { this.crosshair = cross.checked; this.render(); });
      this.planesDiv = el("div", { class: "planes" });
      const handlers = (i) => ({
        wheel: (d) => this.moveSlice(i, d),
        enter: () => { this.active = i; },
        slider: (v) => this.setSlice(i, v),
        down: (e, px) => this.mouseDown(i, e, px),
      });
      this.planes = PLANES.map((p, i) => new PlaneCanvas(p, this.planesDiv, handlers(i)));
      this.classesDiv = el("div", { class: "classes" });
      this.countsDiv = el("div", { class: "counts" });
      const d = DATA.disagreement;
      this.root.replaceChildren(
        this.title,
        el("div", { class: "toolbar" },
          el("label", {}, "show ", this.modeSel),
          el("label", {}, "opacity ", this.opacityIn),
          el("label", {}, "window ", this.windowSel, " ", this.windowOut),
          el("label", {}, cross, " crosshair")),
        this.planesDiv,
        el("div", { class: "side" },
          el("div", {}, el("b", { text: "Classes" }), this.classesDiv),
          el("div", {}, el("b", { text: "Disagreement" }),
            el("div", { class: "legend" },
              el("span", {}, el("span", { class: "swatch", style: `background:${d.fp}` }), "false positive"),
              el("span", {}, el("span", { class: "swatch", style: `background:${d.fn}` }), "false negative"),
              el("span", {}, el("span", { class: "swatch", style: `background:${d.swap}` }), "one class for another")),
            this.countsDiv)),
        el("p", { class: "help", text: "Mouse wheel, arrow keys (↑/↓ on the plane under the mouse) or the sliders: " +
          "slice by slice. Click or drag: move the crosshair, which links the three planes. Right-drag (or " +
          "shift-drag): window width (left/right) and level (up/down). Filled: prediction; outline: reference." }));
      for (const c of FOREGROUND) {
        const box = el("input", { type: "checkbox", checked: true, "data-class": c.index });
        box.addEventListener("change", () => { this.enabled[c.index] = box.checked; this.render(); });
        const color = el("input", { type: "color", value: c.color.toLowerCase(), "data-color": c.index });
        color.addEventListener("input", () => { this.colors[c.index] = hexRgb(color.value); this.render(); });
        this.classesDiv.append(el("label", {}, box, " ", color, " ", `${c.index} ${c.name}`));
      }
      document.addEventListener("keydown", (e) => this.key(e));
      window.addEventListener("resize", () => { if (this.vol) { this.layout(); this.render(); } });
      this.built = true;
    }

    async load(name) {
      if (this.cases.has(name)) {
        const vol = this.cases.get(name);
        this.cases.delete(name);
        this.cases.set(name, vol);  // the most recently opened last
        return vol;
      }
      const v = DATA.volumes[name];
      const [img, ref, pred] = await Promise.all([inflate(v.image),
        v.reference ? inflate(v.reference) : null, v.prediction ? inflate(v.prediction) : null]);
      const n = v.shape[0] * v.shape[1] * v.shape[2];
      for (const [what, a] of [["image", img], ["reference", ref], ["prediction", pred]]) {
        if (a && a.length !== n) throw new Error(`${name}: ${what} has ${a.length} voxels, expected ${n}`);
      }
      const vol = { ...v, name, img, ref, pred, levels: Float32Array.from(v.levels), counts: countDisagreement(ref, pred) };
      this.cases.set(name, vol);
      while (this.cases.size > 4) this.cases.delete(this.cases.keys().next().value);  // keep a few decoded cases
      return vol;
    }

    async open(name) {
      if (!this.built) this.build();
      const vol = await this.load(name);
      this.vol = vol;
      this.point = vol.point.slice();
      const w = vol.windows[0];
      this.windowSel.replaceChildren(...vol.windows.map((p, i) => el("option", { value: i, text: p.name })));
      this.windowSel.value = "0";
      this.setWindow(w.lo, w.hi, false);
      this.layout();
      this.renderTitle();
      this.renderCounts();
      this.table.select(name);
      this.root.dataset.case = name;
      this.render();
    }

    renderTitle() {
      const v = this.vol;
      const row = DATA.cases.find((c) => c.name === v.name);
      const nav = (step) => el("button", { type: "button", onclick: () => this.open(this.table.neighbour(v.name, step)) },
        step < 0 ? "◀ previous" : "next ▶");
      this.title.replaceChildren(...[
        el("b", { "data-testid": "viewer-case", text: v.name }),
        el("span", { class: "muted", text: `${v.shape.join(" × ")} voxels of ${v.spacing.map((s) => s.toPrecision(3)).join(" × ")} mm` +
          (row && isNum(row.mean_dice) ? ` · mean Dice ${row.mean_dice.toFixed(3)}` : "") + ` · ${v.modality}` }),
        nav(-1), nav(1),
        v.note ? el("span", { class: "note", "data-testid": "viewer-note", text: `Note: ${v.note}.` }) : null,
        !v.ref ? el("span", { class: "note", text: "No reference for this case." }) : null,
        !v.pred ? el("span", { class: "note", text: "No prediction for this case." }) : null].filter(Boolean));
    }

    renderCounts() {
      const v = this.vol;
      const ml = v.spacing[0] * v.spacing[1] * v.spacing[2] / 1000;
      if (!v.ref || !v.pred) {
        this.countsDiv.replaceChildren(el("p", { class: "muted", text: "needs both a reference and a prediction" }));
        return;
      }
      const rows = FOREGROUND.map((c) => el("tr", {},
        el("td", { class: "name" }, swatch(c.index), c.name),
        el("td", { "data-testid": `fp-${c.index}`, text: v.counts.fp[c.index] || 0 }),
        el("td", { "data-testid": `fn-${c.index}`, text: v.counts.fn[c.index] || 0 }),
        el("td", { text: `${((v.counts.fp[c.index] || 0) * ml).toFixed(2)} / ${((v.counts.fn[c.index] || 0) * ml).toFixed(2)}` })));
      this.countsDiv.replaceChildren(...[el("table", { "data-testid": "disagreement" },
        el("thead", {}, el("tr", {}, el("th", { class: "name", text: "class" }), el("th", { text: "FP voxels" }),
          el("th", { text: "FN voxels" }), el("th", { text: "FP / FN mL" }))),
        el("tbody", {}, rows)),
        v.note ? el("p", { class: "muted", text: "counted on the displayed (coarser) grid" }) : null].filter(Boolean));
    }

    layout() {
      const v = this.vol;
      const width = this.root.clientWidth || 1200;
      const box = clamp(Math.floor((width - 40) / 3), 160, 460);
      const sizes = planeSizes(v.shape, v.spacing, box);
      this.planes.forEach((p, i) => {
        p.resize(...sizes[i]);
        p.box.style.width = `${box}px`;
        p.box.style.height = `${box}px`;
        p.slider.max = v.shape[p.spec.normal] - 1;
      });
    }

    setWindow(lo, hi, redraw = true) {
      this.win = { lo, hi: hi > lo ? hi : lo + 1e-3 };
      const L = this.vol.levels, g = new Uint8Array(L.length), span = this.win.hi - this.win.lo;
      for (let i = 0; i < L.length; i++) g[i] = Math.round(255 * clamp((L[i] - this.win.lo) / span, 0, 1));
      this.grey = g;
      const level = (this.win.lo + this.win.hi) / 2, w = this.win.hi - this.win.lo;
      this.windowOut.textContent = `W ${w.toPrecision(4)} L ${level.toPrecision(4)}`;
      if (redraw) this.render();
    }

    setSlice(i, s) {
      const axis = PLANES[i].normal;
      this.point[axis] = clamp(Math.round(s), 0, this.vol.shape[axis] - 1);
      this.render();
    }

    moveSlice(i, d) {
      this.active = i;
      this.setSlice(i, this.point[PLANES[i].normal] + d);
    }

    mouseDown(i, e, px) {
      this.active = i;
      if (e.button === 2 || e.shiftKey) {
        const start = { x: e.clientX, y: e.clientY, lo: this.win.lo, hi: this.win.hi };
        const range = this.vol.levels[this.vol.levels.length - 1] - this.vol.levels[0] || 1;
        return { move: (ev) => {
          const w0 = start.hi - start.lo, l0 = (start.hi + start.lo) / 2;
          const w = Math.max(range / 1000, w0 + (ev.clientX - start.x) * range / 400);
          const l = l0 + (ev.clientY - start.y) * range / 400;
          this.setWindow(l - w / 2, l + w / 2);
        } };
      }
      const set = (p) => {
        const v = voxelAt(this.vol.shape, PLANES[i], Math.floor(p[0]), Math.floor(p[1]), this.point[PLANES[i].normal]);
        this.point = v;
        this.render();
      };
      set(px);
      return { move: (ev, p) => set(p) };
    }

    key(e) {
      if (!this.vol || ["INPUT", "SELECT", "TEXTAREA", "BUTTON"].includes(e.target.tagName)) return;
      const step = { ArrowUp: 1, ArrowRight: 1, PageUp: 5, ArrowDown: -1, ArrowLeft: -1, PageDown: -5 }[e.key];
      if (step === undefined) return;
      const r = this.root.getBoundingClientRect();
      if (r.bottom < 0 || r.top > window.innerHeight) return;  // the viewer is not on screen
      e.preventDefault();
      this.moveSlice(this.active, step);
    }

    render() {
      const v = this.vol;
      if (!v) return;
      this.planes.forEach((pc, i) => this.renderPlane(pc, PLANES[i]));
      this.renders += 1;
      this.root.dataset.renders = String(this.renders);
    }

    renderPlane(pc, p) {
      const v = this.vol, s = this.point[p.normal];
      const W = v.shape[p.cols], H = v.shape[p.rows];
      const idx = planeIndex(v.shape, p, s);
      const n = W * H, out = new Uint8ClampedArray(n * 4);
      const ref = v.ref ? new Uint8Array(n) : null, pred = v.pred ? new Uint8Array(n) : null;
      for (let k = 0; k < n; k++) {
        if (ref) ref[k] = v.ref[idx[k]];
        if (pred) pred[k] = v.pred[idx[k]];
      }
      const a = this.opacity, en = this.enabled, col = this.colors, mode = this.mode;
      const dis = DATA.disagreement, fp = hexRgb(dis.fp), fn = hexRgb(dis.fn), sw = hexRgb(dis.swap);
      for (let k = 0; k < n; k++) {
        const g = this.grey[v.img[idx[k]]];
        let c = null, alpha = a;
        const r = ref ? ref[k] : 0, q = pred ? pred[k] : 0;
        if (mode === "diff") {
          if (ref && pred && r !== q) {
            const isFp = q > 0 && en[q], isFn = r > 0 && en[r];
            c = isFp && isFn ? sw : isFp ? fp : isFn ? fn : null;
          }
        } else if (mode === "ref") {
          if (r > 0 && en[r]) c = col[r];
        } else {
          if (q > 0 && en[q]) c = col[q];
          if (mode === "both" && r > 0 && en[r] && isEdge(ref, k, W, H)) { c = col[r]; alpha = 1; }
        }
        const o = 4 * k;
        if (c) {
          out[o] = g + (c[0] - g) * alpha; out[o + 1] = g + (c[1] - g) * alpha; out[o + 2] = g + (c[2] - g) * alpha;
        } else {
          out[o] = g; out[o + 1] = g; out[o + 2] = g;
        }
        out[o + 3] = 255;
      }
      const pt = this.point;
      const cx = W - 1 - pt[p.cols], cy = H - 1 - pt[p.rows];
      pc.draw(out, W, H, this.crosshair ? (ctx, sx, sy) => drawCrosshair(ctx, cx, cy, sx, sy) : null);
      pc.slider.value = String(s);
      pc.head.textContent = `${p.name} · ${AXIS[p.normal]} ${s + 1} / ${v.shape[p.normal]}`;
      pc.root.dataset.slice = String(s);
    }
  }

  /** True when pixel k of a W x H label plane has a 4-neighbour (or the border) with another label. */
  function isEdge(lab, k, W, H) {
    const x = k % W, y = (k - x) / W, v = lab[k];
    return x === 0 || y === 0 || x === W - 1 || y === H - 1 ||
      lab[k - 1] !== v || lab[k + 1] !== v || lab[k - W] !== v || lab[k + W] !== v;
  }

  /** Per class, voxels predicted but not in the reference (fp) and in the reference but not predicted (fn). */
  function countDisagreement(ref, pred) {
    const fp = new Array(256).fill(0), fn = new Array(256).fill(0);
    if (!ref || !pred) return { fp, fn };
    for (let i = 0; i < ref.length; i++) {
      const r = ref[i], q = pred[i];
      if (r !== q) {
        if (q > 0) fp[q] += 1;
        if (r > 0) fn[r] += 1;
      }
    }
    return { fp, fn };
  }

  // ------------------------------------------------------------------------------------------ curves
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
    return out;
  }

  /** An SVG line chart; hovering shows every series' value at the nearest logged iteration. */
  function lineChart(parent, { id, title, x, series, yRange, digits }) {
    const Wd = 620, Ht = 280, m = { l: 52, r: 14, t: 26, b: 36 };
    const pts = series.map((s) => x.map((xi, i) => [xi, s.values[i]]).filter(([, y]) => isNum(y)));
    const allY = pts.flat().map(([, y]) => y);
    if (!allY.length) return;
    const xs = x.filter(isNum), x0 = Math.min(...xs), x1 = Math.max(...xs);
    let [y0, y1] = yRange || [Math.min(...allY), Math.max(...allY)];
    if (!(y1 > y0)) { y0 -= 0.5; y1 += 0.5; }
    const X = (v) => m.l + (v - x0) / ((x1 - x0) || 1) * (Wd - m.l - m.r);
    const Y = (v) => Ht - m.b - (v - y0) / (y1 - y0) * (Ht - m.t - m.b);
    const root = svg("svg", { width: Wd, height: Ht, viewBox: `0 0 ${Wd} ${Ht}`, "data-chart": id });
    root.append(Object.assign(svg("text", { x: m.l, y: 16, "font-size": 13, "font-weight": 600 }), { textContent: title }));
    const axis = svg("g", { class: "axis" });
    for (const t of niceTicks(y0, y1, 5)) {
      axis.append(svg("line", { x1: m.l, x2: Wd - m.r, y1: Y(t), y2: Y(t), "stroke-opacity": 0.4 }));
      axis.append(Object.assign(svg("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end" }), { textContent: +t.toPrecision(4) }));
    }
    for (const t of niceTicks(x0, x1, 6)) {
      axis.append(svg("line", { x1: X(t), x2: X(t), y1: Ht - m.b, y2: Ht - m.b + 4 }));
      axis.append(Object.assign(svg("text", { x: X(t), y: Ht - m.b + 16, "text-anchor": "middle" }), { textContent: t }));
    }
    axis.append(Object.assign(svg("text", { x: (Wd + m.l) / 2, y: Ht - 4, "text-anchor": "middle" }), { textContent: "iteration" }));
    root.append(axis);
    series.forEach((s, i) => {
      if (!pts[i].length) return;
      const d = pts[i].map(([a, b], j) => `${j ? "L" : "M"}${X(a).toFixed(1)},${Y(b).toFixed(1)}`).join("");
      root.append(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": s.width || 1.6 }));
      if (pts[i].length < 60) for (const [a, b] of pts[i]) root.append(svg("circle", { cx: X(a), cy: Y(b), r: 2.2, fill: s.color }));
    });
    const guide = svg("line", { y1: m.t, y2: Ht - m.b, stroke: "#444", "stroke-dasharray": "3,3", visibility: "hidden" });
    root.append(guide);
    const hover = svg("rect", { x: m.l, y: m.t, width: Wd - m.l - m.r, height: Ht - m.t - m.b, fill: "transparent" });
    root.append(hover);
    const tip = el("div", { class: "tip", "data-testid": `tip-${id}` });
    const xsWithData = x.filter((xi, i) => isNum(xi) && series.some((s) => isNum(s.values[i])));
    hover.addEventListener("mousemove", (e) => {
      const r = root.getBoundingClientRect();
      const xv = x0 + ((e.clientX - r.left) * Wd / r.width - m.l) / (Wd - m.l - m.r) * (x1 - x0);
      const near = xsWithData.reduce((b, xi) => (Math.abs(xi - xv) < Math.abs(b - xv) ? xi : b), xsWithData[0]);
      const i = x.indexOf(near);
      guide.setAttribute("x1", X(near)); guide.setAttribute("x2", X(near)); guide.setAttribute("visibility", "visible");
      tip.replaceChildren(el("b", { text: `iteration ${near}` }),
        ...series.filter((s) => isNum(s.values[i])).map((s) => el("div", {},
          el("span", { class: "swatch", style: `background:${s.color}` }), `${s.name}: ${s.values[i].toPrecision(digits || 4)}`)));
      tip.style.display = "block";
      const px = (e.clientX - r.left) + 14;
      tip.style.left = `${px > Wd - 180 ? px - 200 : px}px`;
      tip.style.top = `${e.clientY - r.top + 10}px`;
    });
    hover.addEventListener("mouseleave", () => { tip.style.display = "none"; guide.setAttribute("visibility", "hidden"); });
    const legend = el("div", { class: "legend" }, series.map((s) => el("span", {},
      el("span", { class: "swatch", style: `background:${s.color}` }), s.name)));
    parent.append(el("div", { class: "chart" }, root, tip, legend));
  }

  function renderTraining() {
    const t = DATA.training, root = document.getElementById("curves");
    if (!t) {
      root.append(el("p", { class: "muted", text: "No training curves (give --run with a metrics.csv)." }));
      return;
    }
    const col = (name) => t.rows.map((r) => r[t.columns.indexOf(name)]);
    const charts = el("div", { class: "charts" });
    root.append(charts);
    const x = col("iteration");
    const loss = [{ name: "training loss", color: "#1f5fa8", values: col("train_loss") }];
    lineChart(charts, { id: "loss", title: "Training loss", x, series: loss });
    const dice = [];
    for (const c of CLASSES) {
      if (c.index === 0 || !t.columns.includes(`val_dice_${c.name}`)) continue;
      dice.push({ name: c.name, color: c.color, values: col(`val_dice_${c.name}`) });
    }
    if (t.columns.includes("val_mean_dice")) dice.push({ name: "mean", color: "#111", width: 2.4, values: col("val_mean_dice") });
    if (dice.length) lineChart(charts, { id: "dice", title: "Validation Dice", x, series: dice, yRange: [0, 1] });
    if (t.columns.includes("lr")) {
      lineChart(charts, { id: "lr", title: "Learning rate", x, series: [{ name: "lr", color: "#b05a00", values: col("lr") }], digits: 3 });
    }
  }

  // ------------------------------------------------------------------------------------------ model, attention
  function renderModel() {
    const root = document.getElementById("model-facts");
    if (!DATA.model) {
      root.append(el("p", { class: "muted", text: "No run directory given (--run)." }));
      return;
    }
    root.append(el("table", { class: "facts", "data-testid": "model-facts" },
      el("tbody", {}, DATA.model.facts.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v }))))));
  }

  const HEAT = [[0, [0, 0, 4]], [0.3, [87, 16, 110]], [0.55, [188, 55, 84]], [0.8, [249, 142, 9]], [1, [252, 255, 164]]];
  function heatColor(t) {
    for (let i = 1; i < HEAT.length; i++) {
      if (t <= HEAT[i][0]) {
        const [t0, c0] = HEAT[i - 1], [t1, c1] = HEAT[i], f = (t - t0) / (t1 - t0);
        return c0.map((c, j) => c + (c1[j] - c) * f);
      }
    }
    return HEAT[HEAT.length - 1][1];
  }

  class AttentionView {
    constructor(root, att) {
      this.root = root;
      this.att = att;
    }

    async init() {
      const a = this.att;
      const [img, lab, w, rec] = await Promise.all([inflate(a.image), a.label ? inflate(a.label) : null,
        inflate(a.weights), inflate(a.received)]);
      Object.assign(this, { img, lab, w, rec });
      this.N = a.grid[0] * a.grid[1] * a.grid[2];
      this.layer = a.layers - 1;
      this.mode = "query";
      this.opacity = 0.6;
      this.point = a.point.slice();
      const layerIn = el("input", { type: "range", min: 1, max: a.layers, value: a.layers, "data-control": "layer" });
      const layerOut = el("span", { text: `${a.layers} / ${a.layers}` });
      layerIn.addEventListener("input", () => { this.layer = Number(layerIn.value) - 1; layerOut.textContent = `${layerIn.value} / ${a.layers}`; this.render(); });
      const modeSel = el("select", { "data-control": "attention-mode" },
        el("option", { value: "query", text: "attention of the marked patch to every patch" }),
        el("option", { value: "received", text: "attention each patch receives (mean over all patches)" }));
      modeSel.addEventListener("change", () => { this.mode = modeSel.value; this.render(); });
      const op = el("input", { type: "range", min: 0, max: 100, value: 60 });
      op.addEventListener("input", () => { this.opacity = Number(op.value) / 100; this.render(); });
      const planesDiv = el("div", { class: "planes" });
      this.planes = PLANES.map((p, i) => new PlaneCanvas(p, planesDiv, {
        wheel: (d) => this.setSlice(i, this.point[p.normal] + d),
        enter: () => {},
        slider: (v) => this.setSlice(i, v),
        down: (e, px) => {
          const set = (q) => { this.point = voxelAt(a.shape, p, Math.floor(q[0]), Math.floor(q[1]), this.point[p.normal]); this.render(); };
          set(px);
          return { move: (ev, q) => set(q) };
        },
      }));
      this.queryOut = el("span", { class: "muted" });
      this.root.replaceChildren(
        el("p", { text: `Case ${a.case}: the ${a.shape.join(" × ")} voxel window the model sees (after its preprocessing, ` +
          `${a.spacing.map((s) => s.toPrecision(3)).join(" × ")} mm), cut around the largest structure; ${a.layers} transformer ` +
          `blocks, ${a.heads || "?"} heads (averaged), ${this.N} patches of ${a.patch}³ voxels. Colours run from the weakest ` +
          "(dark, clear) to the strongest patch (bright) of the map shown. Click a patch to make it the query." }),
        el("div", { class: "toolbar" }, el("label", {}, "block ", layerIn, " ", layerOut), el("label", {}, "show ", modeSel),
          el("label", {}, "opacity ", op), this.queryOut),
        planesDiv);
      const box = clamp(Math.floor(((this.root.clientWidth || 1200) - 40) / 3), 160, 360);
      const sizes = planeSizes(a.shape, a.spacing, box);
      this.planes.forEach((pc, i) => {
        pc.resize(...sizes[i]);
        pc.box.style.width = `${box}px`; pc.box.style.height = `${box}px`;
        pc.slider.max = a.shape[PLANES[i].normal] - 1;
      });
      this.render();
    }

    setSlice(i, s) {
      const axis = PLANES[i].normal;
      this.point[axis] = clamp(Math.round(s), 0, this.att.shape[axis] - 1);
      this.render();
    }

    token(pc) {  // patch coordinates -> token index (X slowest, Z fastest)
      const g = this.att.grid;
      return (pc[0] * g[1] + pc[1]) * g[2] + pc[2];
    }

    render() {
      const a = this.att, P = a.patch, N = this.N;
      const qp = this.point.map((v) => Math.floor(v / P));
      const q = this.token(qp);
      this.queryOut.textContent = `query patch (${qp.join(", ")}) of (${a.grid.join(", ")})`;
      PLANES.forEach((p, i) => {
        const pc = this.planes[i], s = this.point[p.normal];
        const W = a.shape[p.cols], H = a.shape[p.rows];
        const idx = planeIndex(a.shape, p, s);
        const out = new Uint8ClampedArray(W * H * 4);
        for (let k = 0; k < W * H; k++) {
          const g = this.img[idx[k]], o = 4 * k;
          out[o] = g; out[o + 1] = g; out[o + 2] = g; out[o + 3] = 255;
        }
        const gW = a.grid[p.cols], gH = a.grid[p.rows];
        const heat = new Uint8ClampedArray(gW * gH * 4);
        const pcoord = [0, 0, 0];
        pcoord[p.normal] = Math.floor(s / P);
        for (let r = 0; r < gH; r++) {
          for (let c = 0; c < gW; c++) {
            pcoord[p.cols] = gW - 1 - c; pcoord[p.rows] = gH - 1 - r;
            const key = this.token(pcoord);
            const v = (this.mode === "query" ? this.w[(this.layer * N + q) * N + key] : this.rec[this.layer * N + key]) / 255;
            const col = heatColor(v), o = 4 * (r * gW + c);
            heat[o] = col[0]; heat[o + 1] = col[1]; heat[o + 2] = col[2]; heat[o + 3] = 255 * this.opacity * v;
          }
        }
        const hc = document.createElement("canvas");
        hc.width = gW; hc.height = gH;
        hc.getContext("2d").putImageData(new ImageData(heat, gW, gH), 0, 0);
        const cx = W - 1 - this.point[p.cols], cy = H - 1 - this.point[p.rows];
        pc.draw(out, W, H, (ctx, sx, sy) => {
          ctx.imageSmoothingEnabled = true;
          ctx.drawImage(hc, 0, 0, ctx.canvas.width, ctx.canvas.height);
          if (this.mode === "query") {
            const c0 = (gW - 1 - qp[p.cols]) * P, r0 = (gH - 1 - qp[p.rows]) * P;
            ctx.strokeStyle = "#7fdbff";
            ctx.lineWidth = 2;
            ctx.strokeRect(c0 * sx, r0 * sy, P * sx, P * sy);
          }
          drawCrosshair(ctx, cx, cy, sx, sy);
        });
        pc.slider.value = String(s);
        pc.head.textContent = `${p.name} · ${AXIS[p.normal]} ${s + 1} / ${a.shape[p.normal]}`;
      });
      this.root.dataset.renders = String((Number(this.root.dataset.renders) || 0) + 1);
    }
  }

  // ------------------------------------------------------------------------------------------ start
  async function main() {
    renderHeader();
    renderValidation();
    renderSummary();
    const viewerRoot = document.getElementById("viewer");
    let viewer = null;
    const table = new CaseTable(document.getElementById("case-table"), (name) => {
      viewer.open(name).then(() => viewerRoot.scrollIntoView({ behavior: "instant", block: "start" }))
        .catch((e) => reportError(viewerRoot, e));
    });
    viewer = new Viewer(viewerRoot, table);
    renderTraining();
    renderModel();
    window.unetrReport = { data: DATA, viewer, table };
    const jobs = [];
    const first = table.order().find((r) => r.has_volume);
    if (first) jobs.push(viewer.open(first.name).catch((e) => reportError(viewerRoot, e)));
    const attRoot = document.getElementById("attention");
    if (DATA.attention) {
      const att = new AttentionView(attRoot, DATA.attention);
      window.unetrReport.attention = att;
      jobs.push(att.init().catch((e) => reportError(attRoot, e)));
    } else {
      attRoot.append(el("p", { class: "muted", text: "No attention maps (they need --run and --images)." }));
    }
    await Promise.all(jobs);
    document.body.dataset.ready = "1";
  }

  function reportError(root, e) {
    console.error(e);
    root.append(el("p", { class: "note", text: `Could not show this: ${e.message || e}` }));
  }

  main();
})();
