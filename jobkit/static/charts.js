// Stage 4's charts on the jobs page: jobs finished per minute over the last hour, and how
// long they waited in the queue (p50, p95), from GET /stats (counted from the ledger on the
// server), drawn with uPlot (vendored in jobkit/static/uplot: no CDN). A sentence under the
// charts says the same in words, for a screen reader. And the cron job's last runs, from
// GET /cron.
"use strict";

(() => {
  const REFRESH_MS = 30_000; // the charts move a minute at a time; the table is live
  const HEIGHT = 170;
  const plots = {};

  function axes() {
    const ink = getComputedStyle(document.body).color;
    const grid = { stroke: "rgba(128, 128, 128, 0.25)" };
    return [{ stroke: ink, grid }, { stroke: ink, grid }];
  }

  function show(id, data, series) {
    const box = document.getElementById(id);
    if (plots[id]) return plots[id].setData(data);
    const options = {
      width: box.clientWidth || 420,
      height: HEIGHT,
      series: [{}, ...series.map((line) => ({ ...line, points: { show: true, size: 5 } }))],
      axes: axes(),
      tzDate: (seconds) => uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC"), // as the table: UTC
    };
    plots[id] = new uPlot(options, data, box);
  }

  const sum = (values) => values.reduce((a, b) => a + b, 0);

  async function draw() {
    const response = await fetch("/stats");
    if (!response.ok) return;
    const chart = await response.json();
    show("chart-done", [chart.minutes, chart.complete, chart.failed], [
      { label: "complete", stroke: "#2e9e5b", width: 2 },
      { label: "failed", stroke: "#d64550", width: 2 },
    ]);
    show("chart-wait", [chart.minutes, chart.wait_p50_s, chart.wait_p95_s], [
      { label: "wait p50 (s)", stroke: "#3b82f6", width: 2 },
      { label: "wait p95 (s)", stroke: "#d4a72c", width: 2 },
    ]);
    const waits = chart.wait_p95_s.filter((value) => value !== null);
    document.getElementById("chart-summary").textContent =
      `In the last hour: ${sum(chart.complete)} complete, ${sum(chart.failed)} failed` +
      (waits.length ? `; the latest minute's queue wait p95: ${waits.at(-1)} s.` : ".");
  }

  async function listCronRuns() {
    const list = document.getElementById("cron-runs");
    const response = await fetch("/cron");
    if (!list || !response.ok) return;
    list.replaceChildren(...(await response.json()).map((run) => {
      const item = document.createElement("li");
      const due = run.due.replace("T", " ").replace(/(Z|\+00:00)$/, "").slice(0, 16);
      const said = run.error ?? (run.result ? JSON.stringify(run.result) : "");
      // "no result": Redis has none for that tick, so it did not run (no worker was up) or
      // its result has expired: say both, not a bare "no result".
      const status = run.status === "no result" ? "not run, or its result has expired" : run.status;
      item.textContent = `${due} UTC: ${status}${said ? ` ${said}` : ""}`;
      item.className = run.status.replace(" ", "-");
      return item;
    }));
  }

  function refresh() {
    draw();
    listCronRuns();
  }

  if (document.getElementById("chart-done")) {
    refresh();
    setInterval(refresh, REFRESH_MS);
  }
})();
