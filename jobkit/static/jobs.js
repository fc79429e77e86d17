// The jobs page (stages 3 and 4): a table driven by GET /jobs (filters, cursor paging), a
// detail view from GET /jobs/{id}, and ONE event stream for the whole page (GET /events:
// counts, queue, workers and the jobs that move), so new jobs appear and bars move without a
// reload; one stream per browser, however many tabs show the page. Plain JavaScript served
// as a file: no build step, no CDN. The stage's template
// holds the markup; a part it leaves out (stage 3 has no queue depth, no actions) is skipped.
"use strict";

const TRUNCATE_AT = 80; // characters of a result or error shown in the table
const HEARD_MAX = 1000; // jobs the page remembers as last heard, to skip what has not changed
const config = JSON.parse(document.getElementById("page-config").textContent);
const FINAL = new Set(config.final);
const $ = (selector) => document.querySelector(selector);

const view = {
  jobs: new Map(), // job id -> the job as last heard, for the rows shown
  next: null, // GET /jobs's next_cursor for the page after this one
  cursors: [], // the cursors of the pages before this one (the first page: none)
  stale: false, // rows were dropped off the end since the page was read
  detail: null, // the id of the job in the detail view, if open
  heard: new Map(), // job id -> the job as the stream last told it, as JSON
};

// --- Reading the filters, and the page of jobs they select ---
function filters() {
  const form = new FormData($("#filters"));
  return { status: form.get("status"), function: form.get("function"), limit: Number(form.get("limit")) };
}

async function loadPage(cursor = null) {
  const { status, function: fn, limit } = filters();
  const params = new URLSearchParams({ limit });
  if (status) params.set("status", status);
  if (fn) params.set("function", fn);
  if (cursor) params.set("cursor", cursor);
  const response = await fetch(`/jobs?${params}`);
  if (!response.ok) return say(`GET /jobs answered ${response.status}`);
  const page = await response.json();
  view.jobs = new Map(page.jobs.map((job) => [job.job_id, job]));
  view.next = page.next_cursor;
  view.stale = false;
  const shown = new URLSearchParams(params);
  shown.delete("cursor");
  history.replaceState(null, "", `?${shown}`);
  drawTable();
}

function matches(job) {
  const { status, function: fn } = filters();
  return (!status || job.status === status) && (!fn || job.function === fn);
}

// --- The table ---
const text = (value) => document.createTextNode(value ?? "");
function when(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace(/(Z|\+00:00)$/, "") : "";
}
function outcome(job) {
  if (job.error) return job.error;
  return job.status === "complete" ? JSON.stringify(job.result) : "";
}
function truncated(value) {
  return value.length > TRUNCATE_AT ? `${value.slice(0, TRUNCATE_AT)}…` : value;
}

function drawTable() {
  const body = $("#jobs");
  body.replaceChildren(...[...view.jobs.values()].map(makeRow));
  if (!view.jobs.size) {
    const empty = document.createElement("tr");
    empty.innerHTML = '<td colspan="7">No jobs here.</td>';
    body.append(empty);
  }
  $("#newer").disabled = view.cursors.length === 0;
  $("#older").disabled = view.next === null && !view.stale;
}

function makeRow(job) {
  const row = document.createElement("tr");
  row.id = `job-${job.job_id}`;
  row.innerHTML = `<td><button type="button" class="open"></button></td><td class="function"></td>
    <td class="status"></td><td class="progress"><progress max="100"></progress> <span class="message"></span></td>
    <td class="enqueued"></td><td class="outcome"></td><td class="actions"></td>`;
  row.querySelector(".open").append(text(job.job_id.slice(0, 8)));
  row.querySelector(".open").setAttribute("aria-label", `details of job ${job.job_id}`);
  row.querySelector(".open").addEventListener("click", () => openDetail(job.job_id));
  row.querySelector("progress").setAttribute("aria-label", `progress of job ${job.job_id.slice(0, 8)}`);
  fillRow(row, job);
  return row;
}

function fillRow(row, job) {
  row.className = job.status;
  row.querySelector(".function").textContent = job.function;
  row.querySelector(".status").textContent = statusText(job);
  row.querySelector("progress").value = job.progress;
  row.querySelector(".message").textContent = job.message ?? "";
  row.querySelector(".enqueued").textContent = when(job.enqueue_time);
  const result = row.querySelector(".outcome");
  result.textContent = truncated(outcome(job));
  result.classList.toggle("error", Boolean(job.error));
  if (window.jobActions) window.jobActions.fill(row.querySelector(".actions"), job);
}

function statusText(job) {
  return window.jobActions ? window.jobActions.statusText(job) : job.status;
}

// --- What the page's one event stream says ---
function heard(state) {
  for (const status of config.statuses) {
    const cell = document.querySelector(`[data-count="${status}"]`);
    if (cell) cell.textContent = state.counts[status] ?? 0; // the button's name, as it shows
  }
  showQueue(state.queue);
  let added = false;
  if (view.heard.size > HEARD_MAX) view.heard.clear(); // a page open for days stays small
  for (const job of state.jobs) {
    const heardBefore = view.heard.get(job.job_id);
    const json = JSON.stringify(job);
    if (heardBefore === json) continue; // nothing new: leave the row (and the focus) alone
    view.heard.set(job.job_id, json);
    if (view.jobs.has(job.job_id)) {
      view.jobs.set(job.job_id, job);
      const row = document.getElementById(`job-${job.job_id}`);
      if (row) fillRow(row, job);
    } else if (isNew(job)) {
      view.jobs.set(job.job_id, job);
      added = true;
    }
    if (view.detail === job.job_id) drawDetail(job);
  }
  if (added) keepNewestFirst();
}

function isNew(job) {
  // Only the first page grows: a job newer than every job shown, that the filters select.
  if (view.cursors.length || !matches(job)) return false;
  const newest = view.jobs.values().next().value;
  return !newest || newerFirst(job, newest) < 0;
}

// Newest first, as GET /jobs orders them: by enqueue time, then by id. The times are compared
// as times, not as text: "…:05Z" (a whole second, written with no fraction) is before "…:05.5Z".
function newerFirst(a, b) {
  const byTime = Date.parse(b.enqueue_time) - Date.parse(a.enqueue_time);
  return byTime || (a.job_id === b.job_id ? 0 : a.job_id < b.job_id ? 1 : -1);
}

function keepNewestFirst() {
  const order = [...view.jobs.values()].sort(newerFirst);
  const limit = filters().limit;
  if (order.length > limit) view.stale = true; // the next page starts further down now
  view.jobs = new Map(order.slice(0, limit).map((job) => [job.job_id, job]));
  drawTable();
}

function showQueue(queue) {
  const workers = $("#workers");
  $("#redis-down").hidden = queue !== null;
  if (queue === null) return;
  $("#no-workers").hidden = queue.workers.length > 0;
  workers.replaceChildren(...queue.workers.map((worker) => {
    const item = document.createElement("li");
    item.append(text(`${worker.id} (pid ${worker.pid} on ${worker.host}): heard ${worker.last_seen_s} s ago, ` +
      `running ${worker.running}, done ${worker.done}, failed ${worker.failed}`));
    return item;
  }));
  $("#workers-count").textContent = queue.workers.length;
  for (const name of ["ready", "scheduled", "running", "oldest_ready_age_s"]) {
    const cell = document.querySelector(`[data-queue="${name}"]`);
    if (cell) cell.textContent = queue[name] ?? "–";
  }
}

function say(message) {
  $("#live").textContent = message;
}

// --- The one event stream, for every tab of the browser ---
// A browser keeps at most six connections to a server, for all its tabs together, and a
// stream holds one as long as it lasts: six tabs, each with a stream of its own, would leave
// none for anything else. So one tab, the one the browser gives the lock STREAM to, follows
// GET /events and passes on what it hears to the page's other tabs (a BroadcastChannel);
// when that tab closes, the browser gives the lock to another, which opens the stream.
const STREAM = "jobs-page-stream"; // the lock's and the channel's name (each origin has its own)
const RETRY_S = 2; // after a refused stream, about this long before the first try again...
const RETRY_MAX_S = 60; // ...doubling each time, up to this
const LIVE = "Live: this page updates itself.";
const tabs = "BroadcastChannel" in window ? new BroadcastChannel(STREAM) : null;
const stream = { leads: false, last: null, opened: false, refused: 0, source: null, retry: null };

function listen() {
  if (!navigator.locks || !tabs) return followWhileShown();
  tabs.onmessage = (event) => heardFromTab(event.data);
  navigator.locks.request(STREAM, () => new Promise(() => follow())); // held until the tab closes
  tabs.postMessage({ hello: true }); // the tab that follows the stream answers with its last state
}

function heardFromTab(message) {
  if (message.hello && stream.leads) {
    tabs.postMessage({ say: $("#live").textContent });
    if (stream.last) tabs.postMessage({ state: stream.last });
  }
  if (stream.leads) return;
  if (message.say) say(message.say);
  if (message.reload) reloadPage();
  if (message.state) heard(JSON.parse(message.state));
}

function tell(message) { // this tab and the others
  say(message.say);
  if (message.reload) reloadPage();
  tabs?.postMessage(message);
}

// No lock to share a stream with (http on a host other than localhost is not a secure
// context): each tab follows a stream of its own, and closes it while the tab is hidden.
function followWhileShown() {
  document.addEventListener("visibilitychange", () => (document.hidden ? stopFollowing() : follow()));
  if (!document.hidden) follow();
}

function stopFollowing() {
  clearTimeout(stream.retry);
  stream.source?.close();
  stream.source = null;
}

function follow() {
  stopFollowing(); // one stream at a time, whatever asks for it
  stream.leads = true;
  const source = (stream.source = new EventSource("/events"));
  source.onopen = () => {
    stream.refused = 0;
    tell({ say: LIVE, reload: stream.opened }); // after a break, what was missed is read again
    stream.opened = true;
  };
  source.onmessage = (event) => {
    stream.last = event.data;
    heard(JSON.parse(event.data));
    tabs?.postMessage({ state: event.data });
  };
  source.onerror = () => {
    // A stream the server ended: the browser reconnects by itself. One it refused (a 429 when
    // too many are open, a 503): the browser gives up, so the page tries again after a while,
    // longer each time, with jitter, so that pages refused together do not come back together.
    if (source.readyState !== EventSource.CLOSED) return tell({ say: "Reconnecting to the server…" });
    source.close();
    const wait = Math.min(RETRY_MAX_S, RETRY_S * 2 ** stream.refused) * (0.5 + Math.random());
    stream.refused += 1;
    tell({ say: `The server refused the page's stream: trying again in ${Math.round(wait)} s…` });
    stream.retry = setTimeout(follow, wait * 1000);
  };
}

function reloadPage() {
  loadPage(view.cursors.at(-1) ?? null);
}

// --- The detail view ---
async function openDetail(jobId) {
  const response = await fetch(`/jobs/${jobId}`);
  if (!response.ok) return say(`GET /jobs/${jobId} answered ${response.status}`);
  view.detail = jobId;
  drawDetail(await response.json());
  const dialog = $("#detail");
  if (!dialog.open) dialog.showModal();
}

function field(list, name, value, pre = false) {
  const term = document.createElement("dt");
  term.textContent = name;
  const detail = document.createElement("dd");
  if (pre) {
    const block = document.createElement("pre");
    block.textContent = value;
    detail.append(block);
  } else {
    detail.append(value instanceof Node ? value : text(value));
  }
  list.append(term, detail);
}

function drawDetail(job) {
  $("#detail-title").textContent = `Job ${job.job_id}`;
  const list = $("#detail-fields");
  list.replaceChildren();
  field(list, "function", job.function);
  field(list, "status", statusText(job));
  field(list, "arguments", JSON.stringify(job.args, null, 2), true);
  if (job.error) field(list, "error", job.error, true);
  if (job.status === "complete") field(list, "result", JSON.stringify(job.result, null, 2), true);
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = job.progress;
  bar.setAttribute("aria-label", "progress");
  const progress = document.createElement("span");
  progress.append(bar, text(` ${job.progress} % ${job.message ?? ""}`));
  field(list, "progress", progress);
  field(list, "enqueued (UTC)", when(job.enqueue_time));
  field(list, "started (UTC)", when(job.start_time));
  field(list, "finished (UTC)", when(job.finish_time));
  if (job.start_time && job.finish_time) {
    field(list, "duration", `${((Date.parse(job.finish_time) - Date.parse(job.start_time)) / 1000).toFixed(3)} s`);
  }
  field(list, "tries", job.attempts);
  if (window.jobActions) window.jobActions.detail(list, job, field);
}

// --- Wiring ---
function start() {
  const params = new URLSearchParams(location.search);
  for (const name of ["status", "function", "limit"]) {
    const control = $(`#filters [name="${name}"]`);
    if (params.get(name) && [...control.options].some((o) => o.value === params.get(name))) {
      control.value = params.get(name);
    }
  }
  $("#filters").addEventListener("change", () => { view.cursors = []; loadPage(); });
  $("#filters").addEventListener("submit", (event) => event.preventDefault());
  for (const button of document.querySelectorAll("[data-status]")) {
    button.addEventListener("click", () => {
      $('#filters [name="status"]').value = button.dataset.status;
      view.cursors = [];
      loadPage();
    });
  }
  $("#older").addEventListener("click", async () => {
    if (view.stale) await loadPage(view.cursors.at(-1) ?? null);
    if (!view.next) return;
    view.cursors.push(view.next);
    await loadPage(view.next);
  });
  $("#newer").addEventListener("click", () => {
    view.cursors.pop();
    loadPage(view.cursors.at(-1) ?? null);
  });
  $("#detail").addEventListener("close", () => { view.detail = null; });
  loadPage().then(listen);
}

window.jobsPage = { view, loadPage, fillRow, say, field, openDetail, newerFirst, leads: () => stream.leads };
start();
