// The live part of a session page: events, logs, task rows and progress from the SSE stream,
// and the control buttons sent with fetch. Plain JavaScript, no build step.
"use strict";
(function () {
  const page = document.getElementById("session");
  if (!page) return;
  const $ = (id) => document.getElementById(id);
  const MAX_EVENTS = 500;
  const MAX_LOG_LINES = 1000;
  const maxRows = parseInt(page.dataset.maxRows, 10) || 1000;
  const baseStream = page.dataset.stream.split("?")[0];
  const SESSION_STATUS = {
    "session.created": "Pending", "session.started": "Running", "session.resumed": "Running",
    "session.paused": "Paused", "session.completed": "Completed", "session.failed": "Failed",
    "session.stopped": "Stopped", "session.destroyed": "Destroyed",
  };
  const TASK_STATE = {
    "task.queued": "queued", "task.started": "started", "task.succeeded": "succeeded",
    "task.failed": "failed", "task.retrying": "queued", "task.canceled": "canceled",
  };
  let lastSeq = null;
  let source = null;
  const logLines = [];

  function setStatus(status) {
    const el = $("status");
    el.textContent = status;
    el.className = "status st-" + status.toLowerCase();
  }

  function setProgress(fraction) {
    const pct = Math.floor(fraction * 100 + 1e-9);
    const bar = $("progress");
    bar.setAttribute("aria-valuenow", String(pct));
    bar.querySelector(".fill").style.width = pct + "%";
    $("progress-label").textContent = pct + " %";
  }

  function clock(ts) {  // UTC, as the records' ISO 8601 times
    return new Date(ts * 1000).toISOString().slice(11, 23);
  }

  function summary(data) {
    const text = Object.entries(data || {})
      .map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : String(v)))
      .join(" ");
    return text.length > 240 ? text.slice(0, 239) + "…" : text;
  }

  function nearBottom(el) {
    return el.scrollHeight - el.scrollTop - el.clientHeight < 40;
  }

  function addEvent(e) {
    const list = $("events");
    const follow = nearBottom(list);
    const li = document.createElement("li");
    li.className = "ev ev-" + e.type.replace(/\./g, "-");
    li.dataset.seq = String(e.seq);
    const time = clock(e.ts);
    li.textContent = `${time} #${e.seq} ${e.type}${e.task ? " " + e.task : ""} ${summary(e.data)}`;
    list.appendChild(li);
    while (list.childElementCount > MAX_EVENTS) list.removeChild(list.firstElementChild);
    if (follow) list.scrollTop = list.scrollHeight;
  }

  function addLog(e) {
    const pre = $("logs");
    const follow = nearBottom(pre);
    logLines.push((e.task ? "[" + e.task + "] " : "") + (e.data.line || ""));
    if (logLines.length > MAX_LOG_LINES) logLines.splice(0, logLines.length - MAX_LOG_LINES);
    pre.textContent = logLines.join("\n");
    if (follow) pre.scrollTop = pre.scrollHeight;
  }

  function cell(row, cls, text) {
    const td = row.querySelector("." + cls);
    if (td) td.textContent = text;
  }

  function updateTask(e) {
    const state = TASK_STATE[e.type];
    if (!state || !e.task) return;
    const body = $("tasks").tBodies[0];
    let row = body.querySelector(`tr[data-task="${CSS.escape(e.task)}"]`);
    if (!row) {
      if (body.rows.length >= maxRows) return;
      row = body.insertRow();
      row.dataset.task = e.task;
      for (const cls of ["name", "id mono", "state", "attempts", "worker mono", "started mono",
                         "finished mono"]) {
        row.insertCell().className = cls;
      }
      cell(row, "name", (e.data && e.data.name) || "");
      cell(row, "id", "#" + e.task.slice(e.task.lastIndexOf("-") + 1));
      row.querySelector(".id").title = e.task;
    }
    const badge = document.createElement("span");
    badge.className = "st st-" + state;
    badge.textContent = state;
    row.querySelector(".state").replaceChildren(badge);
    if (e.type === "task.started") {
      cell(row, "attempts", String((e.data && e.data.attempt) || ""));
      cell(row, "worker", e.worker || "");
      cell(row, "started", clock(e.ts));
      cell(row, "finished", "");
    } else if (state !== "queued") {
      cell(row, "finished", clock(e.ts));
    }
  }

  function apply(e) {
    if (e.type !== "listener.gap") lastSeq = e.seq;
    addEvent(e);
    if (e.type === "task.log") addLog(e);
    updateTask(e);
    if (SESSION_STATUS[e.type]) setStatus((e.data && e.data.status) || SESSION_STATUS[e.type]);
  }

  function onRecord(r) {
    if (r.gone) {
      setStatus("Destroyed");
      return;
    }
    setStatus(r.status);
    setProgress(r.progress);
    for (const [state, n] of Object.entries(r.tasks)) {
      const b = document.querySelector(`#counts [data-state="${state}"] b`);
      if (b) b.textContent = String(n);
    }
    $("started").textContent = r.started_at || "–";
    $("finished").textContent = r.finished_at || "–";
  }

  function connect(url) {
    source = new EventSource(url);
    const state = $("stream-state");
    source.onopen = () => { state.textContent = "live"; };
    source.onerror = () => {
      state.textContent = source.readyState === EventSource.CLOSED ? "closed" : "reconnecting…";
    };
    source.onmessage = (m) => apply(JSON.parse(m.data));
    source.addEventListener("record", (m) => onRecord(JSON.parse(m.data)));
    source.addEventListener("end", () => {
      source.close();
      state.textContent = "session ended";
    });
  }

  const form = $("controls");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const button = ev.submitter;
    if (!button) return;
    const action = button.dataset.action;
    if (action === "destroy" && !window.confirm("Destroy this session and all its data?")) return;
    const token = $("token");
    const body = new URLSearchParams(token && token.value ? { token: token.value } : {});
    const result = $("control-result");
    result.textContent = action + "…";
    fetch(button.formAction, {
      method: "POST", credentials: "same-origin", body: body,
      headers: { "Accept": "application/json" },
    })
      .then((r) => (r.ok ? r.json() : r.text().then((t) => { throw new Error(r.status + ": " + t); })))
      .then((j) => {
        result.textContent = action + ": " + (j.accepted ? "accepted" : "refused");
        if (j.accepted && token) token.closest("label").remove();
        if (j.accepted && source && source.readyState === EventSource.CLOSED) {
          connect(baseStream + "?after=" + (lastSeq === null ? 0 : lastSeq));
        }
      })
      .catch((err) => { result.textContent = action + " failed: " + err.message; });
  });

  connect(page.dataset.stream);
})();
