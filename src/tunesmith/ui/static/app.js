// tunesmith ui: draws the charts from their JSON blocks and keeps the live parts of a page current.
"use strict";

const charts = {};

function drawCharts() {
  for (const canvas of document.querySelectorAll("canvas[data-chart]")) {
    const spec = JSON.parse(document.getElementById(canvas.dataset.chart).textContent);
    spec.options = Object.assign({ responsive: true, maintainAspectRatio: false }, spec.options || {});
    charts[canvas.id] = new Chart(canvas, spec);
  }
}

function text(id, value) {
  const el = document.getElementById(id);
  if (el && value !== undefined && value !== null) el.textContent = value;
}

function fmt(value) {
  if (value === undefined || value === null) return "-";
  return Math.abs(value) >= 1000 ? Math.round(value).toLocaleString() : Number(value.toPrecision(4)).toString();
}

function statusBadge(holder, status) {
  const el = document.getElementById(holder);
  if (!el) return;
  el.textContent = "";
  const span = document.createElement("span");
  span.className = "status s-" + status;
  span.textContent = status;
  el.appendChild(span);
}

async function poll(url, every, handle) {
  // calls handle(json) until it returns false; a failed fetch is retried
  for (;;) {
    try {
      const response = await fetch(url(), { credentials: "same-origin" });
      if (response.ok && handle(await response.json()) === false) return;
    } catch (err) {
      console.warn("poll", err);
    }
    await new Promise((r) => setTimeout(r, every));
  }
}

function followRun(holder) {
  // the run page: new logged values go onto the loss and throughput charts while it trains
  let after = Number(holder.dataset.after || 0);
  let settled = 0;
  if (holder.dataset.status !== "running") return;
  poll(() => holder.dataset.live + "?after=" + after, 1500, (data) => {
    for (const point of data.points) {
      after = Math.max(after, point.id);
      for (const chart of Object.values(charts)) {
        const set = chart.data.datasets.find((d) => d.label === point.name);
        if (set) set.data.push({ x: point.step, y: point.value });
      }
      if (point.name === "loss") text("latest-loss", fmt(point.value));
      if (point.name === "eval_loss") text("latest-eval-loss", fmt(point.value));
      if (point.name === "tokens_per_second") text("latest-tps", fmt(point.value));
      text("latest-step", point.step);
    }
    for (const chart of Object.values(charts)) chart.update("none");
    holder.dataset.points = String(after);
    text("run-log", data.log);
    if (data.version) {
      const v = document.getElementById("run-version");
      v.textContent = "Registered as ";
      const a = document.createElement("a");
      a.href = "/registry/v/" + encodeURIComponent(data.version);
      a.textContent = data.version;
      v.appendChild(a);
    }
    if (data.status !== "running") {
      // a finished run is registered a moment later: keep asking a little while for its version
      statusBadge("run-status", data.status);
      holder.dataset.status = data.status;
      if (data.error) text("run-log", data.log + "\n" + data.error);
      settled += 1;
      if (data.version || data.status !== "finished" || settled > 40) return false;
    }
  });
}

function followJob(holder) {
  // a job page: steps and output; a training job goes to its run's live page once the run exists
  if (!["starting", "running"].includes(holder.dataset.status)) return;
  poll(() => holder.dataset.live, 1000, (data) => {
    text("job-log", data.log);
    const steps = document.getElementById("job-steps");
    steps.textContent = "";
    for (const step of data.steps) {
      const li = document.createElement("li");
      li.textContent = step;
      steps.appendChild(li);
    }
    statusBadge("job-status", data.status);
    if (data.error) text("job-error", data.error);
    if (holder.dataset.kind === "train" && data.run_url && data.status === "running") {
      window.location.assign(data.run_url);
      return false;
    }
    if (!["starting", "running"].includes(data.status)) {
      const target = data.report_url || data.run_url;
      if (target && data.status === "finished") window.location.assign(target);
      return false;
    }
  });
}

function followRequests(body) {
  // the deployments page: new requests are added on top of the first page as they are logged
  let since = body.dataset.since;
  const base = body.dataset.live;
  poll(() => base + (base.includes("?") ? "&" : "?") + "since=" + encodeURIComponent(since), 2000, (data) => {
    for (const row of data.rows.slice().reverse()) {
      since = row.at > since ? row.at : since;
      const tr = document.createElement("tr");
      tr.className = "fresh";
      const cells = [row.when, row.model, row.version, row.route, row.status, row.latency === null ? "-" : row.latency, row.tokens];
      for (const value of cells) {
        const td = document.createElement("td");
        td.textContent = value;
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      const a = document.createElement("a");
      a.href = "/deployments/requests/" + encodeURIComponent(row.id);
      a.textContent = row.id.slice(0, 16);
      td.appendChild(a);
      tr.appendChild(td);
      body.insertBefore(tr, body.firstChild);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts();
  for (const bar of document.querySelectorAll(".split .bar[data-width]")) bar.style.width = bar.dataset.width + "%";
  const run = document.querySelector("#live[data-live]");
  if (run) followRun(run);
  const job = document.querySelector("#job[data-live]");
  if (job) followJob(job);
  const stream = document.querySelector("#stream[data-live]");
  if (stream) followRequests(stream);
});
