// emoadapt serve: the validation-mode page. Plain JavaScript, no libraries, nothing fetched
// from anywhere but this server. The last clip is kept in memory (a Blob) so that a
// confirmation, a correction or an enrolment can send it again: the server keeps no clip.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const token = document.querySelector('meta[name="emoadapt-token"]').content;
  const config = JSON.parse(document.querySelector('meta[name="emoadapt-config"]').content);
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#7f7f7f",
    "#17becf", "#bcbd22", "#e377c2"];
  let stream = null;
  let lastClip = null;     // {blob, name}
  let lastResult = null;
  let forgetArmed = false;
  let lastData = null;     // the user's corrections and model versions last drawn

  const classColor = (c) => COLORS[Math.max(0, config.classes.indexOf(c)) % COLORS.length];
  // one class order everywhere (bars, legends, charts), whichever head answered: the model's
  // classes as the server lists them, then a user's own labels in alphabetical order
  const ordered = (labels) => [...config.classes.filter((c) => labels.includes(c)),
    ...labels.filter((c) => !config.classes.includes(c)).sort()];
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  // charts are drawn in CSS pixels (one SVG unit = one pixel at the chart's width), so that
  // their text is the CSS size (13 px), never scaled down on a narrow card
  const chartWidth = (svg) => Math.max(300, Math.round(svg.getBoundingClientRect().width || svg.parentNode.clientWidth || 560));

  function say(text, kind) {
    const m = $("message");
    m.textContent = text;
    m.className = kind || "";
  }

  function user() { return $("user").value.trim(); }

  async function api(method, path, body, contentType) {
    const headers = {"X-Emoadapt-Token": token};
    if (body) headers["Content-Type"] = contentType || "application/octet-stream";
    let r;
    try {
      r = await fetch(path, {method, headers, body, credentials: "same-origin"});
    } catch (e) {
      throw new Error("the server cannot be reached: " + e.message);
    }
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const err = new Error((data && data.message) || ("HTTP " + r.status));
      err.code = data && data.error;
      err.data = data || {};
      throw err;
    }
    return data;
  }

  const q = (params) => "?" + new URLSearchParams(params).toString();

  function busy(on) {
    for (const id of ["record", "confirm", "other", "new-label", "enrol", "adapt", "forget", "upload"]) $(id).disabled = on;
    for (const b of $("choices").querySelectorAll("button")) b.disabled = on;
    document.body.classList.toggle("busy", on);
  }

  // -- capture ------------------------------------------------------------------------------
  async function startCamera() {
    if (stream) return stream;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("this browser gives no camera here (a page on http://127.0.0.1 or localhost can use it)");
    }
    stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 480}, audio: false});
    $("preview").srcObject = stream;
    $("camera").textContent = "Camera on";
    $("camera").disabled = true;
    return stream;
  }

  function recorderType() {
    for (const t of ["video/webm;codecs=vp8", "video/webm;codecs=vp9", "video/webm", "video/mp4"]) {
      if (window.MediaRecorder && MediaRecorder.isTypeSupported(t)) return t;
    }
    return "";
  }

  async function record() {
    const seconds = Math.min(Math.max(parseFloat($("seconds").value) || 3, 0.5), config.maxSeconds);
    busy(true);
    try {
      const s = await startCamera();
      const type = recorderType();
      const rec = new MediaRecorder(s, type ? {mimeType: type} : undefined);
      const chunks = [];
      rec.ondataavailable = (e) => { if (e.data && e.data.size) chunks.push(e.data); };
      const done = new Promise((resolve) => { rec.onstop = resolve; });
      say("Recording " + seconds + " s...", "info");
      rec.start();
      await new Promise((r) => setTimeout(r, seconds * 1000));
      rec.stop();
      await done;
      const blob = new Blob(chunks, {type: (rec.mimeType || type || "video/webm").split(";")[0]});
      await analyse(blob, blob.type.includes("mp4") ? "camera.mp4" : "camera.webm");
    } catch (e) {
      say("Recording failed: " + e.message, "error");
    } finally {
      busy(false);
    }
  }

  async function uploadFile() {
    const f = $("upload").files[0];
    if (!f) return;
    busy(true);
    try { await analyse(f, f.name); } finally { busy(false); $("upload").value = ""; }
  }

  async function analyse(blob, name) {
    if (blob.size > config.maxUploadBytes) {
      say("The clip is " + (blob.size / 1e6).toFixed(1) + " MB; the limit is " + (config.maxUploadBytes / 1e6).toFixed(1) + " MB.", "error");
      return;
    }
    say("Analysing...", "info");
    try {
      const res = await api("POST", "/api/predict" + q({name}), blob, blob.type);
      lastClip = {blob, name};
      lastResult = res;
      if (res.user && !user()) $("user").value = res.user;
      showResult(res);
      say("The model says " + res.label + (res.user ? " (recognised: " + res.user + ")" : "") + ". Is it right?", "ok");
      await refreshData();
    } catch (e) {
      // the previous result (and its clip, which a confirmation or correction sends) stays as it was
      const kept = lastResult ? " The result below is still the one of " + lastClip.name + "." : "";
      say((e.code === "no_face" ? "No face found in " + name + ": " + e.message : e.message) + kept, "error");
    }
  }

  // -- result: bars and timeline ------------------------------------------------------------
  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  // an SVG element has no .hidden property: the attribute, which the style sheet hides
  function show(node, on) { node.toggleAttribute("hidden", !on); }

  function drawBars(svg, probs) {
    clear(svg);
    const labels = ordered(Object.keys(probs));
    const W = chartWidth(svg), rowH = 26, left = 90, right = 64;
    svg.setAttribute("viewBox", `0 0 ${W} ${labels.length * rowH + 6}`);
    labels.forEach((c, i) => {
      const y = i * rowH + 3, w = (W - left - right) * probs[c];
      svg.appendChild(el("text", {x: left - 8, y: y + 16, "text-anchor": "end", class: "axis"}, c));
      svg.appendChild(el("rect", {x: left, y, width: W - left - right, height: rowH - 6, class: "track"}));
      svg.appendChild(el("rect", {x: left, y, width: Math.max(w, 0.5), height: rowH - 6, fill: classColor(c), "data-label": c, class: "bar"}));
      svg.appendChild(el("text", {x: left + w + 6, y: y + 16, class: "value"}, (100 * probs[c]).toFixed(1) + " %"));
    });
  }

  // axes of a 0..1 chart: ticks left of the plot, the y title on its own line above them
  // (pad.t leaves room for it), the x title under the plot
  function axes(svg, W, H, pad, xmax, xlabel, ylabel) {
    svg.appendChild(el("line", {x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b, class: "frame"}));
    svg.appendChild(el("line", {x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b, class: "frame"}));
    for (const v of [0, 0.5, 1]) {
      const y = H - pad.b - v * (H - pad.t - pad.b);
      svg.appendChild(el("text", {x: pad.l - 6, y: y + 4, "text-anchor": "end", class: "axis tick"}, v.toFixed(1)));
      svg.appendChild(el("line", {x1: pad.l, y1: y, x2: W - pad.r, y2: y, class: "grid"}));
    }
    svg.appendChild(el("text", {x: (W + pad.l) / 2, y: H - 4, "text-anchor": "middle", class: "axis title"}, xlabel));
    svg.appendChild(el("text", {x: 4, y: 14, class: "axis title"}, ylabel));
  }

  function drawTimeline(svg, timeline) {
    clear(svg);
    const W = chartWidth(svg), H = 230, pad = {l: 44, r: 14, t: 34, b: 38};
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    if (!timeline.length) return;
    const t0 = timeline[0].time, t1 = timeline[timeline.length - 1].time;
    const span = Math.max(t1 - t0, 1e-6);
    const x = (t) => pad.l + (timeline.length === 1 ? 0.5 : (t - t0) / span) * (W - pad.l - pad.r);
    const y = (p) => H - pad.b - p * (H - pad.t - pad.b);
    axes(svg, W, H, pad, t1, `time (s): ${t0.toFixed(2)} to ${t1.toFixed(2)}`, "probability");
    const legend = $("legend");
    clear(legend);
    for (const c of ordered(Object.keys(timeline[0].probabilities))) {
      const pts = timeline.map((f) => `${x(f.time).toFixed(1)},${y(f.probabilities[c]).toFixed(1)}`).join(" ");
      svg.appendChild(el("polyline", {points: pts, stroke: classColor(c), class: "series", "data-label": c}));
      const item = document.createElement("span");
      const sw = document.createElement("i");
      sw.style.background = classColor(c);
      item.appendChild(sw);
      item.appendChild(document.createTextNode(c));
      legend.appendChild(item);
    }
  }

  function showResult(res) {
    $("result-card").hidden = false;
    $("label").textContent = res.label;
    $("label").style.color = classColor(res.label);
    $("result-user").textContent = res.user ? "recognised: " + res.user : "(not recognised: a stranger for the model)";
    const tl = res.timeline;
    const span = res.fps && tl.length ? `, ${tl[0].time.toFixed(1)}-${tl[tl.length - 1].time.toFixed(1)} s` : "";
    $("result-meta").textContent = `${res.faces} of ${res.frames} analysed frames with a face${span}` +
      (res.tracks > 1 ? `, ${res.tracks} faces: the main one shown` : "") + (res.truncated ? ", cut at the length limit" : "");
    drawBars($("bars"), res.probabilities);
    drawTimeline($("timeline"), res.timeline);
    const choices = $("choices");
    clear(choices);
    for (const c of config.classes) {
      if (c === res.label) continue;
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = c;
      b.dataset.label = c;
      b.style.borderColor = classColor(c);
      b.addEventListener("click", () => correct(c));
      choices.appendChild(b);
    }
  }

  // -- validation, enrolment ----------------------------------------------------------------
  async function correct(label, newLabel) {
    if (!lastClip) { say("Record or upload a clip first.", "error"); return; }
    $("new-label").hidden = true;
    busy(true);
    say("Saving...", "info");
    try {
      const params = {label, name: lastClip.name};
      if (user()) params.user = user();
      if (newLabel) params.new_label = "1";
      const r = await api("POST", "/api/correct" + q(params), lastClip.blob, lastClip.blob.type);
      if (r.user && !user()) $("user").value = r.user;
      let text = `Correction ${r.id} recorded: ${r.label}` + (r.corrections ? ` (${r.corrections} so far)` : "") + ".";
      if (r.adapted) text += r.adapted.accepted ? ` Your model was adapted: version ${r.adapted.version}.` : " Adaptation tried: the current model was kept.";
      if (r.adapted && r.adapted.explanation) text += " " + r.adapted.explanation;
      if (r.adapt_error) text += " The automatic adaptation failed (" + r.adapt_error + "): try Adapt my model now later.";
      say(text, "ok");
      $("other-label").value = "";
      await refreshData();
    } catch (e) {
      if (e.code === "unknown_label") {
        const hint = e.data.suggestions && e.data.suggestions.length ? " Did you mean " + e.data.suggestions.join(" or ") + "?" : "";
        say(`"${label}" is not an emotion the model knows.${hint}`, "error");
        const b = $("new-label");
        b.textContent = `Add "${label}" as a new emotion of my model`;
        b.dataset.label = label;
        b.hidden = false;
      } else {
        say(e.code === "unknown_user" ? e.message + ". Type your name above to enrol with this clip." : e.message, "error");
      }
    } finally {
      busy(false);
    }
  }

  async function enrol() {
    if (!lastClip) { say("Record or upload a clip first.", "error"); return; }
    if (!user()) { say("Type your name first.", "error"); $("user").focus(); return; }
    busy(true);
    try {
      const r = await api("POST", "/api/enroll" + q({user: user(), name: lastClip.name}), lastClip.blob, lastClip.blob.type);
      say(`Enrolled ${r.user}: ${plural(r.added, "face embedding")} added.`, "ok");
      await refreshData();
    } catch (e) {
      say(e.message, "error");
    } finally {
      busy(false);
    }
  }

  // -- my data ------------------------------------------------------------------------------
  function row(tbody, cells) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
    return tr;
  }

  const when = (t) => new Date(t * 1000).toLocaleString(undefined, {dateStyle: "short", timeStyle: "medium"});
  const measured = (v) => typeof v === "number" && isFinite(v);
  const pct = (v) => (measured(v) ? (100 * v).toFixed(0) + " %" : "n/a");

  // the learning curve: held-out accuracy of each personal model version (the installed
  // model's, and the universal model's on the same held-out corrections); shown once a
  // version has a measured accuracy, else a note in words instead of empty axes
  function drawHistory(svg, versions) {
    clear(svg);
    const points = versions.filter((v) => measured(v.held_out_accuracy_before) && measured(v.held_out_accuracy_after));
    const note = $("history-note");
    show(svg, points.length > 0);
    note.textContent = !versions.length ? "No personal model yet: the universal model answers for you."
      : !points.length ? "Accuracy on held-back corrections appears from two corrections on."
        : "\u25cf your model, \u25cb the universal model, on corrections held back while each version was checked.";
    if (!points.length) return;
    const W = chartWidth(svg), H = 220, pad = {l: 44, r: 18, t: 34, b: 40};
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    axes(svg, W, H, pad, versions.length, "personal model version (corrections)", "accuracy on held-back corrections");
    const n = versions.length;
    const x = (i) => pad.l + (i + 0.5) / Math.max(n, 1) * (W - pad.l - pad.r);
    const y = (p) => H - pad.b - p * (H - pad.t - pad.b);
    const step = Math.max(1, Math.ceil(n * 56 / (W - pad.l - pad.r)));  // labels at least 56 px apart
    versions.forEach((v, i) => {
      if (i % step === 0 || i === n - 1) {
        svg.appendChild(el("text", {x: x(i), y: H - pad.b + 16, "text-anchor": "middle", class: "axis tick"}, `v${v.version} (${v.n_corrections})`));
      }
    });
    const line = (key, cls) => svg.appendChild(el("polyline", {class: cls,
      points: versions.map((v, i) => [v, i]).filter(([v]) => points.includes(v)).map(([v, i]) => `${x(i).toFixed(1)},${y(v[key]).toFixed(1)}`).join(" ")}));
    line("held_out_accuracy_before", "curve universal");
    line("held_out_accuracy_after", "curve personal");
    versions.forEach((v, i) => {
      if (!points.includes(v)) return;
      const b = v.held_out_accuracy_before, a = v.held_out_accuracy_after;
      svg.appendChild(el("circle", {cx: x(i), cy: y(b), r: 6, class: "before", "data-version": v.version, "data-value": b}));
      svg.appendChild(el("circle", {cx: x(i), cy: y(a), r: 5, class: "after", "data-version": v.version, "data-value": a}));
    });
  }

  // corrections per emotion: one bar per label the user corrected (hidden before the first)
  function drawCorrections(svg, corrections) {
    clear(svg);
    const counts = {};
    for (const c of corrections) counts[c.label] = (counts[c.label] || 0) + 1;
    const labels = ordered(Object.keys(counts));
    show(svg, labels.length > 0);
    if (!labels.length) return;
    const W = chartWidth(svg), rowH = 24, left = 90, right = 40;
    const most = Math.max(...Object.values(counts));
    svg.setAttribute("viewBox", `0 0 ${W} ${labels.length * rowH + 6}`);
    labels.forEach((c, i) => {
      const y = i * rowH + 3, w = (W - left - right) * counts[c] / most;
      svg.appendChild(el("text", {x: left - 8, y: y + 15, "text-anchor": "end", class: "axis"}, c));
      svg.appendChild(el("rect", {x: left, y, width: Math.max(w, 2), height: rowH - 8, fill: classColor(c), class: "count", "data-label": c, "data-count": counts[c]}));
      svg.appendChild(el("text", {x: left + w + 6, y: y + 15, class: "value"}, String(counts[c])));
    });
  }

  async function refreshUsers() {
    try {
      const r = await api("GET", "/api/users");
      const list = $("user-list");
      clear(list);
      for (const u of r.users) {
        const o = document.createElement("option");
        o.value = u;
        list.appendChild(o);
      }
      return r.users;
    } catch (e) {
      return [];
    }
  }

  // what the user's model does, in plain words: the last adaptation report's explanation
  function explain(report) {
    const p = $("model-explanation");
    p.textContent = report && report.explanation ? report.explanation : "";
    p.hidden = !p.textContent;
  }

  async function refreshData() {
    const users = await refreshUsers();
    const u = user();
    $("data-user").textContent = u ? "(" + u + ")" : "(type your name above)";
    const ctb = $("corrections").querySelector("tbody"), htb = $("history").querySelector("tbody");
    clear(ctb);
    clear(htb);
    explain(null);
    if (!u || !users.includes(u)) {
      lastData = null;
      drawHistory($("history-plot"), []);
      drawCorrections($("corrections-plot"), []);
      return;
    }
    try {
      const [c, h] = await Promise.all([
        api("GET", `/api/users/${encodeURIComponent(u)}/corrections`),
        api("GET", `/api/users/${encodeURIComponent(u)}/history`),
      ]);
      for (const r of c.corrections.slice().reverse()) row(ctb, [r.id, r.label, when(r.time), r.frames]).dataset.label = r.label;
      for (const v of h.versions) {
        row(htb, ["v" + v.version, when(v.created), v.n_corrections,
          `${pct(v.held_out_accuracy_before)} \u2192 ${pct(v.held_out_accuracy_after)}`, v.status]).dataset.version = v.version;
      }
      for (const r of h.reports.filter((r) => !r.accepted)) {
        row(htb, ["kept", when(r.time), r.n_corrections, `${pct(r.held_out_accuracy_before)} \u2192 ${pct(r.held_out_accuracy_after)}`,
          r.reason]).className = "rejected";
      }
      lastData = {corrections: c.corrections, versions: h.versions};
      drawHistory($("history-plot"), h.versions);
      drawCorrections($("corrections-plot"), c.corrections);
      explain(h.reports.length ? h.reports[h.reports.length - 1] : null);
    } catch (e) {
      say(e.message, "error");
    }
  }

  async function adapt() {
    if (!user()) { say("Type your name first.", "error"); return; }
    busy(true);
    try {
      const r = await api("POST", `/api/users/${encodeURIComponent(user())}/adapt`);
      const acc = measured(r.held_out_accuracy_after) ? ` (held-out accuracy ${pct(r.held_out_accuracy_before)} \u2192 ${pct(r.held_out_accuracy_after)})` : "";
      const why = r.explanation ? " " + r.explanation : "";
      say((r.accepted ? `Model adapted: version ${r.version} on ${plural(r.n_corrections, "correction")}${acc}.`
        : `Model kept: ${r.reason}${acc}.`) + why, r.accepted ? "ok" : "info");
      await refreshData();
    } catch (e) {
      say(e.message, "error");
    } finally {
      busy(false);
    }
  }

  async function forget() {
    if (!user()) { say("Type your name first.", "error"); return; }
    if (!forgetArmed) {
      forgetArmed = true;
      $("forget").textContent = "Really forget " + user() + "? Click again";
      setTimeout(() => { forgetArmed = false; $("forget").textContent = "Forget me"; }, 8000);
      return;
    }
    forgetArmed = false;
    $("forget").textContent = "Forget me";
    busy(true);
    try {
      const r = await api("DELETE", `/api/users/${encodeURIComponent(user())}`);
      say(`Forgot ${r.user}: ${plural(r.corrections, "correction")}, ${plural(r.embeddings, "face embedding")} and ${plural(r.heads, "personal model")} deleted.`, "ok");
      $("user").value = "";
      await refreshData();
    } catch (e) {
      say(e.message, "error");
    } finally {
      busy(false);
    }
  }

  // -- wiring -------------------------------------------------------------------------------
  $("seconds").max = String(config.maxSeconds);
  $("camera").addEventListener("click", () => startCamera().catch((e) => say("No camera: " + e.message, "error")));
  $("record").addEventListener("click", record);
  $("upload").addEventListener("change", uploadFile);
  $("confirm").addEventListener("click", () => lastResult && correct(lastResult.label));
  $("other").addEventListener("click", () => $("other-label").value.trim() && correct($("other-label").value.trim()));
  $("new-label").addEventListener("click", () => correct($("new-label").dataset.label, true));
  $("enrol").addEventListener("click", enrol);
  $("adapt").addEventListener("click", adapt);
  $("refresh").addEventListener("click", refreshData);
  $("forget").addEventListener("click", forget);
  $("user").addEventListener("change", refreshData);
  let resizing = null;  // charts are drawn at the card's width: again when it changes
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      if (lastResult && !$("result-card").hidden) { drawBars($("bars"), lastResult.probabilities); drawTimeline($("timeline"), lastResult.timeline); }
      if (lastData) { drawHistory($("history-plot"), lastData.versions); drawCorrections($("corrections-plot"), lastData.corrections); }
    }, 150);
  });
  refreshData();
  document.body.dataset.ready = "1";
})();
