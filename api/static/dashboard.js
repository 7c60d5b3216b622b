// Keeps the dashboard's pages current by polling their JSON under /ui/api (the session cookie goes
// with each request), and asks before a run is cancelled. The pages work without it, showing the
// state they were rendered with.
"use strict";

(() => {
  const POLL_MS = 1500;
  const IDLE_POLL_MS = 5000;
  const LIVE = new Set(["running", "paused"]);
  const OUTCOMES = ["answered", "busy", "no_answer", "failed", "cancelled", "skipped_dnc", "skipped_window"];
  const COUNTS = ["queued", "dialing", "in_flight", "retry_waiting", "window_waiting", "done"];

  document.addEventListener("submit", (event) => {
    const question = event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (response.status === 401) {
      window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname));
      throw new Error("signed out");
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  }

  // Calls `step` every `interval()` ms while the page is visible, until it resolves to false.
  function every(interval, step) {
    const tick = async () => {
      let again = true;
      if (!document.hidden) {
        try {
          again = await step();
        } catch (error) {
          again = error.message !== "signed out";
        }
      }
      if (again) window.setTimeout(tick, interval());
    };
    window.setTimeout(tick, interval());
  }

  function field(root, name) {
    return root.querySelector('[data-field="' + name + '"]');
  }

  function setText(root, name, text) {
    const element = field(root, name);
    if (element && element.textContent !== String(text)) element.textContent = text;
  }

  function showProgress(root, progress) {
    const bar = root.querySelector("progress");
    const pct = progress.total ? Math.floor((progress.done * 100) / progress.total) : 0;
    bar.max = progress.total || 1;
    bar.value = progress.done;
    bar.textContent = pct + "%";
    setText(root, "progress-label", progress.done + " of " + progress.total + " done · " + pct + "%");
  }

  function showStatus(root, status) {
    root.dataset.status = status;
    const badge = field(root, "status");
    badge.textContent = status;
    badge.className = "status status-" + status;
  }

  function clock(iso) {
    return iso ? new Date(iso).toISOString().slice(11, 19) : "";
  }

  // The runs list: refresh the live runs; reload when a run has started elsewhere.
  function watchRunsList(list) {
    const cards = () => Array.from(list.querySelectorAll("[data-run-id]"));
    const liveIds = () => cards().filter((c) => LIVE.has(c.dataset.status)).map((c) => c.dataset.runId);
    every(
      () => (liveIds().length ? POLL_MS : IDLE_POLL_MS),
      async () => {
        const query = liveIds().map((id) => "id=" + encodeURIComponent(id)).join("&");
        const answer = await getJSON("/ui/api/runs" + (query ? "?" + query : ""));
        const shown = new Set(cards().map((c) => c.dataset.runId));
        if (answer.newest.some((id) => !shown.has(id))) {
          window.location.reload();
          return false;
        }
        for (const run of answer.runs) {
          const card = list.querySelector('[data-run-id="' + run.id + '"]');
          if (!card) continue;
          showStatus(card, run.status);
          showProgress(card, run.progress);
          setText(card, "outcome-summary", (run.progress.outcomes.answered || 0) + " answered");
        }
        return true;
      },
    );
  }

  function callRow(call) {
    const row = document.createElement("tr");
    const cells = [
      [call.lead],
      [call.phone, "mono"],
      [call.attempt],
      [call.status, null, "call-status call-" + call.status],
      [call.outcome || ""],
      [call.duration ?? ""],
      [call.answered_by || ""],
      [call.bridged_status ? call.bridged_status + " (" + (call.bridged_seconds || 0) + " s)" : ""],
      [call.recording ? (call.recording.sid || call.recording.status) + (call.recording.seconds != null ? " (" + call.recording.seconds + " s)" : "") : "", "mono"],
      [call.error_message || ""],
      [clock(call.updated_at)],
      [call.call_sid || "", "mono"],
    ];
    for (const [text, cellClass, spanClass] of cells) {
      const cell = document.createElement("td");
      if (cellClass) cell.className = cellClass;
      if (spanClass) {
        const span = document.createElement("span");
        span.className = spanClass;
        span.textContent = text;
        cell.appendChild(span);
      } else {
        cell.textContent = text;
      }
      row.appendChild(cell);
    }
    return row;
  }

  // A run's page: progress, counts, outcomes, controls and the latest calls, until the run ends.
  function watchRun(root) {
    const id = root.dataset.run;
    const show = ({ run, calls }) => {
      showStatus(root, run.status);
      showProgress(root, run.progress);
      setText(root, "count-total", run.progress.total);
      for (const key of COUNTS) setText(root, "count-" + key, run.progress[key] ?? 0);
      for (const key of OUTCOMES) setText(root, "outcome-" + key, run.progress.outcomes[key] ?? 0);
      const opens = run.progress.window_waiting ? run.progress.window_opens_at : null;
      field(root, "window-opens").hidden = !opens;
      if (opens) setText(root, "window-opens-at", opens.slice(0, 16).replace("T", " "));
      const reason = field(root, "status-reason");
      reason.textContent = run.status_reason || "";
      reason.hidden = !run.status_reason;
      for (const form of root.querySelectorAll("form[data-when]")) {
        form.hidden = !form.dataset.when.split(" ").includes(run.status);
      }
      if (run.finished_at) setText(root, "finished", " · ended " + run.finished_at.slice(0, 16).replace("T", " ") + " UTC");
      root.querySelector("[data-calls]").replaceChildren(...calls.map(callRow));
      field(root, "no-calls").hidden = calls.length > 0;
    };
    every(
      () => POLL_MS,
      async () => {
        const answer = await getJSON("/ui/api/runs/" + encodeURIComponent(id));
        show(answer);
        return LIVE.has(answer.run.status);
      },
    );
  }

  document.addEventListener("DOMContentLoaded", () => {
    const list = document.querySelector("[data-runs-list]");
    if (list) watchRunsList(list);
    const run = document.querySelector("[data-run]");
    if (run && LIVE.has(run.dataset.status)) watchRun(run);
  });
})();
