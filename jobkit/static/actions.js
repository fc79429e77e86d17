// Stage 4's part of the jobs page: Cancel and Retry buttons (DELETE /jobs/{id}, POST
// /jobs/{id}/retry), a retrying job's tries and next try, a deferred job's run time, and a
// retry's link to its job both ways. jobs.js calls these where stage 4's template asks for
// them; stage 3's page has none. Loaded before jobs.js.
"use strict";

(() => {
  const CANCELLABLE = new Set(["queued", "deferred", "in_progress"]);
  const RETRYABLE = new Set(["failed", "cancelled"]);
  const page = () => window.jobsPage;
  const clock = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace(/(Z|\+00:00)$/, "") : "");

  function nextTry(job) {
    const last = job.attempt_log.at(-1);
    return last && last.outcome === "retrying" ? last.next_try_at : null;
  }

  function statusText(job) {
    const retry = job.retry_of ? ` (retry of ${job.retry_of.slice(0, 8)})` : "";
    if (job.status !== "deferred") return job.status + retry;
    const next = nextTry(job);
    if (next) return `retrying: try ${job.attempts + 1} at ${clock(next)}`;
    return (job.run_at ? `deferred until ${clock(job.run_at)}` : "deferred") + retry;
  }

  // The page's own requests: same origin, JSON; what jobkit.dashboard.same_site_only lets by.
  async function act(button, method, url, done, sent = {}) {
    button.disabled = true; // one request per click; the server makes one job per intent anyway
    try {
      const response = await fetch(url, {
        method,
        headers: { "Content-Type": "application/json" },
        body: method === "POST" ? JSON.stringify(sent) : undefined,
      });
      const body = await response.json().catch(() => ({}));
      page().say(response.ok ? done(body) : `${method} ${url}: ${response.status} ${body.detail ?? ""}`);
    } finally {
      button.disabled = false;
    }
  }

  function buttons(job) {
    const made = [];
    if (CANCELLABLE.has(job.status)) {
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.textContent = "Cancel";
      cancel.setAttribute("aria-label", `cancel job ${job.job_id.slice(0, 8)}`);
      cancel.addEventListener("click", () =>
        act(cancel, "DELETE", `/jobs/${job.job_id}`, (body) => `Job ${job.job_id.slice(0, 8)}: ${body.status}.`));
      made.push(cancel);
    }
    if (RETRYABLE.has(job.status)) {
      const retry = document.createElement("button");
      retry.type = "button";
      retry.textContent = "Retry";
      retry.setAttribute("aria-label", `retry job ${job.job_id.slice(0, 8)}`);
      retry.addEventListener("click", () =>
        act(retry, "POST", `/jobs/${job.job_id}/retry`, (body) => `Retried as job ${body.job_id.slice(0, 8)}.`));
      made.push(retry);
    }
    return made;
  }

  function fill(cell, job) {
    if (cell.dataset.status === job.status) return; // keep the buttons (and the focus) as they are
    cell.dataset.status = job.status;
    cell.replaceChildren(...buttons(job));
  }

  function link(jobId) {
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = jobId.slice(0, 8);
    open.setAttribute("aria-label", `details of job ${jobId}`);
    open.addEventListener("click", () => window.jobsPage.openDetail(jobId));
    return open;
  }

  function detail(list, job, field) {
    if (job.run_at) field(list, "runs at (UTC)", clock(job.run_at));
    const next = nextTry(job);
    if (next) field(list, "next try (UTC)", clock(next));
    if (job.attempt_log.length) {
      const tries = document.createElement("ol");
      tries.className = "tries";
      for (const attempt of job.attempt_log) {
        const item = document.createElement("li");
        const ended = attempt.finish_time ? ` → ${clock(attempt.finish_time)}` : "";
        item.textContent = `try ${attempt.attempt}: ${attempt.outcome} ${clock(attempt.start_time)}${ended}` +
          (attempt.error ? ` (${attempt.error})` : "");
        tries.append(item);
      }
      field(list, "tries, one by one", tries);
    }
    if (job.retry_of) field(list, "retry of", link(job.retry_of));
    if (job.retried_by) field(list, "retried as", link(job.retried_by));
    const actions = buttons(job);
    if (actions.length) {
      const span = document.createElement("span");
      span.append(...actions);
      field(list, "actions", span);
    }
  }

  // Bulk retry: the failed jobs of the function the filter picks, not retried yet, at most
  // MAX_BULK (the server's bound too), after the person has said yes.
  const MAX_BULK = 100;
  const bulk = document.getElementById("retry-failed");
  bulk?.addEventListener("click", async () => {
    const fn = new FormData(document.getElementById("filters")).get("function") || null;
    const which = fn ? `failed ${fn} jobs` : "failed jobs";
    if (!window.confirm(`Retry the ${which} not retried yet (at most ${MAX_BULK}, newest first)?`)) return;
    await act(bulk, "POST", "/jobs/retry", (body) =>
      `Retried ${body.retried.length} ${which}` + (body.more ? "; more remain: press again." : "."), { function: fn });
  });

  window.jobActions = { statusText, fill, detail };
})();
