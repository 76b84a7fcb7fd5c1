// The Tunery dashboard (docs/dashboard.md): one page, hash-routed, that calls the public REST API (/v1) with the
// user's API key, as any other client does. No framework, no build step, nothing from a CDN; charts are inline SVG.
"use strict";

(() => {
  const KEY = "tunery.apiKey";
  const ROOT = new URL("..", document.baseURI); // the dashboard is at <root>/dashboard/, the API at <root>/v1
  const SVG = "http://www.w3.org/2000/svg";
  const LIVE = new Set(["validating_files", "queued", "running", "paused"]);
  const POLL_MS = 1000;

  // ---- the API key ---------------------------------------------------------------------------------------------
  const getKey = () => sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "";
  let me = null; // the promise of GET /v1/tunery/me for the key signed in (caller, below)
  function setKey(key, remember) {
    clearKey();
    (remember ? localStorage : sessionStorage).setItem(KEY, key);
  }
  function clearKey() {
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
    me = null;
  }
  // Who the key is (GET /v1/tunery/me: its project, its role, whether it may write), asked once a sign-in: the
  // pages offer only the actions it may take (a reader sees no upload, delete, pause, resume or cancel).
  function caller() {
    if (!me) {
      me = api("/tunery/me").catch((e) => {
        me = null; // asked again by the next page
        throw e;
      });
    }
    return me;
  }
  const mayWrite = async () => (await caller()).writes;

  // ---- DOM helpers -----------------------------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }
  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }
  const $ = (sel, root = document) => root.querySelector(sel);

  // ---- formatting ------------------------------------------------------------------------------------------------
  function age(ts) {
    if (!ts) return "";
    const d = Math.max(0, Date.now() / 1000 - ts);
    if (d < 60) return `${Math.round(d)} s ago`;
    if (d < 3600) return `${Math.round(d / 60)} min ago`;
    if (d < 86400) return `${Math.round(d / 3600)} h ago`;
    return `${Math.round(d / 86400)} d ago`;
  }
  const when = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "");
  function num(v, digits = 4) {
    if (v === undefined || v === null) return "";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toPrecision(digits).replace(/\.?0+$/, "");
  }
  const pct = (v) => (v === undefined || v === null ? "" : `${v > 0 ? "+" : ""}${(v * 100).toFixed(1)}%`);
  function bytes(n) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }
  const status = (st) => h("span", { class: `status status-${st}`, "data-status": st, text: st.replace("_", " ") });
  const jobLink = (id) => h("a", { href: `#/jobs/${id}`, text: id });
  const fileLink = (id) => (id ? h("a", { href: `#/files/${id}`, text: id }) : "");
  const chatLink = (model) => h("a", { href: `#/playground?model=${encodeURIComponent(model)}`, text: "chat" });

  // ---- the API ---------------------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }
  const apiUrl = (path) => `${ROOT.href}v1${path}`;

  async function api(path, { method = "GET", json, key } = {}) {
    const headers = { Authorization: `Bearer ${key ?? getKey()}` };
    if (json !== undefined) headers["Content-Type"] = "application/json";
    let r;
    try {
      r = await fetch(apiUrl(path), { method, headers, body: json === undefined ? undefined : JSON.stringify(json) });
    } catch (e) {
      throw new ApiError(0, `The server could not be reached (${e.message}).`);
    }
    const text = await r.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!r.ok) {
      const message = (data && data.error && data.error.message) || `${r.status} ${r.statusText}`;
      if (r.status === 401 && key === undefined) signOut(message);
      throw new ApiError(r.status, message);
    }
    return data;
  }

  // Every page of a list (newest first), for lists that are not long.
  async function all(path, limit = 100, max = 1000) {
    const out = [];
    let after = null;
    for (;;) {
      const sep = path.includes("?") ? "&" : "?";
      const page = await api(`${path}${sep}limit=${limit}${after ? `&after=${encodeURIComponent(after)}` : ""}`);
      out.push(...page.data);
      if (!page.has_more || !page.data.length || out.length >= max) return out;
      after = page.data[page.data.length - 1].id;
    }
  }

  // A multipart upload with its progress (fetch has no upload progress; XMLHttpRequest does).
  function upload(file, purpose, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", apiUrl("/files"));
      xhr.setRequestHeader("Authorization", `Bearer ${getKey()}`);
      xhr.upload.addEventListener("progress", (e) => e.lengthComputable && onProgress(e.loaded, e.total));
      xhr.addEventListener("load", () => {
        let data = null;
        try {
          data = JSON.parse(xhr.responseText);
        } catch {
          data = null;
        }
        if (xhr.status >= 200 && xhr.status < 300) resolve(data);
        else reject(new ApiError(xhr.status, (data && data.error && data.error.message) || `${xhr.status}`));
      });
      xhr.addEventListener("error", () => reject(new ApiError(0, "The upload failed: the server could not be reached.")));
      const form = new FormData();
      form.append("purpose", purpose);
      form.append("file", file, file.name);
      xhr.send(form);
    });
  }

  // ---- pages and their timers ------------------------------------------------------------------------------------
  let page = { alive: false };

  function every(p, ms, fn) {
    const tick = async () => {
      if (!p.alive) return;
      let again = true;
      try {
        again = (await fn()) !== false;
      } catch (e) {
        showError(e);
      }
      if (p.alive && again) p.timer = setTimeout(tick, ms);
    };
    return tick();
  }

  function showError(e) {
    const banner = $("#banner");
    banner.textContent = e instanceof Error ? e.message : String(e);
    banner.hidden = false;
  }
  const clearError = () => {
    $("#banner").hidden = true;
  };

  function signOut(message) {
    clearKey();
    const target = location.hash.startsWith("#/login") ? "#/jobs" : location.hash;
    sessionStorage.setItem("tunery.next", target || "#/jobs");
    sessionStorage.setItem("tunery.signedOut", message || "");
    if (location.hash === "#/login") route();
    else location.hash = "#/login";
  }

  const routes = [
    [/^#\/login$/, loginPage],
    [/^#\/jobs\/([\w.-]+)$/, jobPage],
    [/^#\/jobs$/, jobsPage],
    [/^#\/files\/([\w.-]+)$/, filePage],
    [/^#\/files$/, filesPage],
    [/^#\/models$/, modelsPage],
    [/^#\/playground(?:\?(.*))?$/, playgroundPage],
  ];

  function route() {
    page.alive = false;
    clearTimeout(page.timer);
    page = { alive: true };
    clearError();
    let hash = location.hash || "#/jobs";
    if (!getKey() && hash !== "#/login") {
      sessionStorage.setItem("tunery.next", hash);
      location.hash = "#/login";
      return;
    }
    $("#nav").hidden = !getKey();
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("active", hash.startsWith(`#/${a.dataset.nav}`));
    }
    const view = $("#view");
    view.replaceChildren();
    for (const [re, render] of routes) {
      const m = hash.match(re);
      if (m) {
        Promise.resolve(render(view, page, ...m.slice(1))).catch(showError);
        return;
      }
    }
    location.hash = "#/jobs";
  }

  // ---- sign in ---------------------------------------------------------------------------------------------------
  function loginPage(view) {
    const error = h("p", { id: "login-error", class: "error", role: "alert", hidden: true });
    const why = sessionStorage.getItem("tunery.signedOut");
    if (why) {
      error.textContent = why;
      error.hidden = false;
      sessionStorage.removeItem("tunery.signedOut");
    }
    const input = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
    const remember = h("input", { id: "remember", type: "checkbox" });
    const button = h("button", { id: "login-button", type: "submit", text: "Sign in" });
    const form = h(
      "form",
      { id: "login-form", class: "card login" },
      h("h1", { text: "Sign in to Tunery" }),
      h("label", {}, "API key", input),
      h("label", { class: "check" }, remember, "Keep me signed in on this browser"),
      button,
      error,
      h("p", {
        class: "hint",
        text:
          "The key goes to this server only, as Authorization: Bearer, and is kept in this tab " +
          "(or in this browser, when asked) until you sign out.",
      }),
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      error.hidden = true;
      button.disabled = true;
      const key = input.value.trim();
      try {
        await api("/models", { key }); // any read the key's role allows: a wrong key is a 401
        setKey(key, remember.checked);
        const next = sessionStorage.getItem("tunery.next") || "#/jobs";
        sessionStorage.removeItem("tunery.next");
        location.hash = next === "#/login" ? "#/jobs" : next;
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      } finally {
        button.disabled = false;
      }
    });
    view.append(form);
    input.focus();
  }

  // ---- jobs ------------------------------------------------------------------------------------------------------
  // The newest metrics event of a job: its step and total steps.
  async function progressOf(jobId) {
    const events = await api(`/fine_tuning/jobs/${jobId}/events?limit=50`);
    const m = events.data.find((e) => e.type === "metrics" && e.data && e.data.total_steps);
    return m ? { step: m.data.step, total: m.data.total_steps } : null;
  }

  function progressCell(job, progress) {
    if (job.status === "succeeded") return h("progress", { max: 1, value: 1, title: "done" });
    if (!progress) return "";
    return h(
      "span",
      { class: "progress" },
      h("progress", { max: progress.total, value: progress.step }),
      ` ${progress.step}/${progress.total}`,
    );
  }

  async function jobsPage(view, p) {
    const tbody = h("tbody");
    const empty = h("p", { class: "empty", hidden: true }, "No fine-tuning jobs yet: create one with the OpenAI SDK ",
      h("code", { text: "client.fine_tuning.jobs.create(model=..., training_file=...)" }), ".");
    view.append(
      h("h1", { text: "Fine-tuning jobs" }),
      h(
        "table",
        { id: "jobs-table", class: "list" },
        h("thead", {}, h("tr", {}, ["Job", "Status", "Model", "Fine-tuned model", "Created", "Progress"].map((t) => h("th", { text: t })))),
        tbody,
      ),
      empty,
    );
    await every(p, 3 * POLL_MS, async () => {
      const jobs = (await api("/fine_tuning/jobs?limit=100")).data;
      const progress = await Promise.all(
        jobs.map((j) => (j.status === "running" || j.status === "paused" ? progressOf(j.id).catch(() => null) : null)),
      );
      tbody.replaceChildren(
        ...jobs.map((j, i) =>
          h(
            "tr",
            { "data-job-id": j.id },
            h("td", {}, jobLink(j.id)),
            h("td", {}, status(j.status)),
            h("td", { text: j.model }),
            h("td", { text: j.fine_tuned_model || "" }),
            h("td", { title: when(j.created_at), text: age(j.created_at) }),
            h("td", {}, progressCell(j, progress[i])),
          ),
        ),
      );
      empty.hidden = jobs.length > 0;
    });
  }

  // The figures of a metrics event that are rewards (GRPO's reward, valid_reward; DPO's rewards_*), spreads aside.
  const isReward = (k) => /reward/.test(k) && !/_std$|^frac_/.test(k);
  const LOSSES = ["train_loss", "valid_loss", "full_valid_loss"];

  function seriesOf(metrics, keys) {
    return keys
      .map((k) => ({ name: k, points: metrics.filter((m) => typeof m[k] === "number").map((m) => [m.step, m[k]]) }))
      .filter((sr) => sr.points.length);
  }

  async function jobPage(view, p, jobId) {
    const events = new Map(); // id -> event, in the API's order (newest first) as kept in `order`
    let order = [];
    let job = null;

    const title = h("h1", {}, jobId, " ");
    const actions = h("div", { class: "actions" });
    const jobError = h("p", { id: "job-error", class: "error", hidden: true });
    const facts = h("dl", { class: "facts", id: "job-facts" });
    const progress = h("progress", { id: "job-progress-bar", max: 1, value: 0 });
    const progressText = h("span", { id: "job-progress-text" });
    const peakMemory = h("span", { id: "job-peak-memory" });
    const lossChart = s("svg", { id: "loss-chart", class: "chart", role: "img", "aria-label": "loss curves" });
    const rewardChart = s("svg", { id: "reward-chart", class: "chart", role: "img", "aria-label": "reward curves" });
    const lrChart = s("svg", { id: "lr-chart", class: "chart", role: "img", "aria-label": "learning rate" });
    const speedChart = s("svg", { id: "speed-chart", class: "chart", role: "img", "aria-label": "tokens per second" });
    const rewardFigure = h("figure", { hidden: true }, h("figcaption", { text: "Rewards" }), rewardChart);
    const checkpoints = h("tbody");
    const report = h("div", { id: "eval-report" });
    const hyper = h("div", { id: "hyperparameters" });
    const eventList = h("ol", { id: "events", class: "events" });

    view.append(
      h("div", { class: "crumbs" }, h("a", { href: "#/jobs", text: "Jobs" }), " / ", jobId),
      title,
      actions,
      jobError,
      facts,
      h("div", { class: "job-progress" }, progress, progressText, peakMemory),
      h(
        "section",
        { class: "charts" },
        h("figure", {}, h("figcaption", { text: "Loss" }), lossChart),
        rewardFigure,
        h("figure", {}, h("figcaption", { text: "Learning rate" }), lrChart),
        h("figure", {}, h("figcaption", { text: "Tokens per second" }), speedChart),
      ),
      h(
        "section",
        {},
        h("h2", { text: "Checkpoints" }),
        h(
          "table",
          { id: "checkpoints-table", class: "list" },
          h("thead", {}, h("tr", {}, ["Step", "Model", "Train loss", "Valid loss", "Eval report", ""].map((t) => h("th", { text: t })))),
          checkpoints,
        ),
        report,
      ),
      h("section", {}, h("h2", { text: "Hyperparameters" }), hyper),
      h("section", {}, h("h2", { text: "Events" }), eventList),
    );

    const act = (id, label, verb, allowed, confirmText) => {
      const b = h("button", { id, type: "button", text: label });
      b.disabled = !allowed;
      let armed = null;
      b.addEventListener("click", async () => {
        if (confirmText && !armed) {
          b.textContent = confirmText;
          b.classList.add("confirm");
          armed = setTimeout(() => {
            armed = null;
            b.textContent = label;
            b.classList.remove("confirm");
          }, 5000);
          return;
        }
        clearTimeout(armed);
        armed = null;
        b.disabled = true;
        try {
          job = await api(`/fine_tuning/jobs/${jobId}/${verb}`, { method: "POST" });
          renderJob();
          await refreshEvents();
        } catch (e) {
          showError(e);
          b.disabled = false;
        }
      });
      return b;
    };

    // The buttons are drawn again only when the status changes, so a click waiting for its confirmation survives
    // the page's polls.
    let actionsFor = null;
    const writes = await mayWrite();
    function renderJob() {
      title.replaceChildren(jobId, " ", status(job.status));
      if (!writes) {
        actions.replaceChildren(h("span", { id: "read-only", class: "hint", text: "Read-only key: no pause, resume or cancel." }));
      } else if (job.status !== actionsFor) {
        actionsFor = job.status;
        actions.replaceChildren(
          act("pause-job", "Pause", "pause", job.status === "running"),
          act("resume-job", "Resume", "resume", job.status === "paused"),
          act("cancel-job", "Cancel", "cancel", LIVE.has(job.status), "Really cancel?"),
        );
      }
      jobError.hidden = !job.error;
      if (job.error) jobError.textContent = `${job.error.code}: ${job.error.message}`;
      const row = (k, ...v) => [h("dt", { text: k }), h("dd", {}, ...v)];
      facts.replaceChildren(
        ...row("Model", job.model),
        ...row("Fine-tuned model", job.fine_tuned_model ? [job.fine_tuned_model, " (", chatLink(job.fine_tuned_model), ")"] : "—"),
        ...row("Method", (job.method && job.method.type) || "supervised"),
        ...row("Training file", fileLink(job.training_file)),
        ...row("Validation file", fileLink(job.validation_file) || "—"),
        ...row("Created", when(job.created_at)),
        ...row("Finished", when(job.finished_at) || "—"),
        ...(job.estimated_finish && LIVE.has(job.status) ? row("Estimated finish", when(job.estimated_finish)) : []),
        ...row("Trained tokens", job.trained_tokens ?? "—"),
        ...row("Seed", job.seed),
      );
      renderHyper();
    }

    function renderHyper() {
      const groups = [["hyperparameters", job.hyperparameters]];
      const m = job.method || {};
      if (m.type && m[m.type] && m[m.type].hyperparameters) groups.push([`method.${m.type}.hyperparameters`, m[m.type].hyperparameters]);
      const t = job.tunery || {};
      for (const k of ["training", "data", "method", "reinforcement", "eval", "scheduling"]) {
        if (t[k]) groups.push([`tunery.${k}`, t[k]]);
      }
      hyper.replaceChildren(
        ...groups.map(([name, values]) =>
          h(
            "table",
            { class: "kv", "data-group": name },
            h("caption", { text: name }),
            h("tbody", {}, Object.entries(values).map(([k, v]) =>
              h("tr", { "data-key": k }, h("th", { text: k }), h("td", { text: typeof v === "object" && v !== null ? JSON.stringify(v) : String(v) })),
            )),
          ),
        ),
      );
    }

    function renderMetrics() {
      const metrics = order.map((id) => events.get(id)).filter((e) => e.type === "metrics" && e.data).map((e) => e.data);
      metrics.sort((a, b) => a.step - b.step);
      const last = metrics[metrics.length - 1];
      if (last && last.total_steps) {
        progress.max = last.total_steps;
        progress.value = job && job.status === "succeeded" ? last.total_steps : last.step;
        progressText.textContent = ` step ${last.step} of ${last.total_steps}`;
      } else if (job && job.status === "succeeded") {
        progress.value = progress.max;
      }
      // the highest of the runs' peaks (a resumed run measures its own from its start)
      const peaks = metrics.map((m) => m.peak_memory_gib).filter((v) => typeof v === "number");
      peakMemory.textContent = peaks.length ? ` · peak memory ${Math.max(...peaks).toFixed(2)} GiB` : "";
      const keys = new Set(metrics.flatMap((m) => Object.keys(m)));
      // full_valid_loss is drawn where it differs from valid_loss (a validation set evaluated whole, the usual case,
      // reports the same figure as both)
      const same = metrics.every((m) => m.full_valid_loss === undefined || m.full_valid_loss === m.valid_loss);
      const losses = LOSSES.filter((k) => keys.has(k) && !(k === "full_valid_loss" && same));
      drawChart(lossChart, seriesOf(metrics, losses), "No loss reported yet.");
      const rewards = [...keys].filter(isReward).sort();
      rewardFigure.hidden = !rewards.length;
      if (rewards.length) drawChart(rewardChart, seriesOf(metrics, rewards), "");
      drawChart(lrChart, seriesOf(metrics, keys.has("learning_rate") ? ["learning_rate"] : []), "No learning rate reported yet.");
      // each step's throughput as the trainer timed it: a step slowed by a chat on the same cores shows here
      drawChart(speedChart, seriesOf(metrics, keys.has("tokens_per_second") ? ["tokens_per_second"] : []), "No throughput reported yet.");
    }

    function renderEvents() {
      eventList.replaceChildren(
        ...order.slice(0, 500).map((id) => {
          const e = events.get(id);
          return h(
            "li",
            { class: `event level-${e.level} type-${e.type}`, "data-event-id": e.id },
            h("time", { title: when(e.created_at), text: new Date(e.created_at * 1000).toLocaleTimeString() }),
            h("span", { class: "message", text: e.message }),
          );
        }),
      );
    }

    async function refreshEvents() {
      // First load: every page; then the newest pages until an event already seen.
      const fresh = [];
      let after = null;
      for (;;) {
        const q = `?limit=${order.length ? 100 : 1000}${after ? `&after=${after}` : ""}`;
        const pageOf = await api(`/fine_tuning/jobs/${jobId}/events${q}`);
        let known = false;
        for (const e of pageOf.data) {
          if (events.has(e.id)) {
            known = true;
            break;
          }
          fresh.push(e);
        }
        if (known || !pageOf.has_more || !pageOf.data.length) break;
        after = pageOf.data[pageOf.data.length - 1].id;
      }
      if (!fresh.length) return false;
      for (const e of fresh) events.set(e.id, e);
      order = [...fresh.map((e) => e.id), ...order];
      renderMetrics();
      renderEvents();
      return true;
    }

    let shownCheckpoints = "";
    let checkpointsRead = false;
    async function refreshCheckpoints() {
      const list = await all(`/fine_tuning/jobs/${jobId}/checkpoints`, 100);
      checkpointsRead = true;
      const sig = list.map((c) => c.id + JSON.stringify(c.tunery || {})).join();
      if (sig === shownCheckpoints) return;
      shownCheckpoints = sig;
      checkpoints.replaceChildren(
        ...list.map((c) => {
          const summary = c.tunery && c.tunery.eval_report;
          const button = h("button", { type: "button", class: "small", text: "Show report", "data-checkpoint": c.id });
          button.addEventListener("click", () => showReport(`/fine_tuning/jobs/${jobId}/checkpoints/${c.id}/eval_report`));
          return h(
            "tr",
            { "data-checkpoint-id": c.id },
            h("td", { text: c.step_number }),
            h("td", {}, c.fine_tuned_model_checkpoint, " (", chatLink(c.fine_tuned_model_checkpoint), ")", c.tunery && c.tunery.best ? h("span", { class: "badge", text: "best" }) : ""),
            h("td", { text: num(c.metrics.train_loss) }),
            h("td", { text: num(c.metrics.valid_loss ?? c.metrics.full_valid_loss) }),
            h("td", {}, summary ? reportSummary(summary) : "—"),
            h("td", {}, summary ? button : ""),
          );
        }),
      );
      if (job && job.fine_tuned_model && !$("#final-report", actions.parentNode)) {
        const b = h("button", { id: "final-report", type: "button", class: "small", text: "Final model's eval report" });
        b.addEventListener("click", () => showReport(`/fine_tuning/jobs/${jobId}/eval_report`));
        report.before(b);
      }
    }

    async function showReport(path) {
      report.replaceChildren(h("p", { class: "hint", text: "Loading the eval report…" }));
      try {
        report.replaceChildren(evalReport(await api(path)));
      } catch (e) {
        report.replaceChildren(h("p", { class: "error", text: e.message }));
      }
    }

    let ended = false;
    await every(p, POLL_MS, async () => {
      job = await api(`/fine_tuning/jobs/${jobId}`);
      renderJob();
      // a checkpoint comes with an event: the list is read again only when there are new events
      if ((await refreshEvents()) || !checkpointsRead) await refreshCheckpoints();
      renderMetrics();
      // one more round after the job ends, for its last events and checkpoints; then nothing changes
      if (!LIVE.has(job.status)) {
        if (ended) return false;
        ended = true;
        await refreshCheckpoints();
      }
      return true;
    });
  }

  function reportSummary(r) {
    const parts = [];
    if (r.validation_change !== null && r.validation_change !== undefined) parts.push(`validation ${pct(r.validation_change)}`);
    if (r.forgetting_change !== null && r.forgetting_change !== undefined) {
      parts.push(`forgetting ${pct(r.forgetting_change)}${r.forgetting_flagged ? " (flagged)" : ""}`);
    }
    if (r.reward !== null && r.reward !== undefined) {
      parts.push(`reward ${num(r.reward)} (${r.reward_change >= 0 ? "+" : ""}${num(r.reward_change)})`);
    }
    if (r.gate_passed !== null && r.gate_passed !== undefined) parts.push(`gate ${r.gate_passed ? "passed" : "failed"}`);
    return h("span", { class: "report-summary", text: parts.join(", ") || `step ${r.step}` });
  }

  function evalReport(r) {
    const table = (caption, head, rows) =>
      h("table", { class: "list" }, h("caption", { text: caption }), h("thead", {}, h("tr", {}, head.map((t) => h("th", { text: t })))),
        h("tbody", {}, rows.map((row) => h("tr", {}, row.map((c) => h("td", {}, c))))));
    const comparison = (caption, c) =>
      table(caption, ["", "loss", "perplexity", "examples", "tokens"], [
        ["base", num(c.base.loss), num(c.base.perplexity), c.base.examples, c.base.tokens],
        ["model", num(c.model.loss), num(c.model.perplexity), c.model.examples, c.model.tokens],
        ["change", num(c.change), pct(c.relative_change), "", ""],
      ]);
    const parts = [
      h("h3", { text: `Eval report: ${r.model}` }),
      h("p", { text: `step ${r.step} (epoch ${num(r.epoch, 3)}); base: ${r.baseline} (${r.base_model})` +
        (r.training_loss !== null && r.training_loss !== undefined ? `; last training loss ${num(r.training_loss)}` : "") }),
    ];
    if (r.validation) parts.push(comparison("Validation", r.validation));
    if (r.forgetting) {
      const f = r.forgetting;
      parts.push(comparison(`Forgetting on ${f.reference}: ${f.flagged ? "FLAGGED" : "ok"} (threshold ${pct(f.threshold)})`, f));
    }
    if (r.preference) {
      const pf = r.preference;
      parts.push(h("p", { text: `Preference (${pf.pairs} pairs, beta ${pf.beta}): reward accuracy ${(pf.reward_accuracy * 100).toFixed(1)}%, margin ${num(pf.reward_margin)}` }));
    }
    if (r.reward) {
      const rw = r.reward;
      const rewards = (caption, c) =>
        table(caption, ["", "mean reward", "std", "pass rate", "answers", "errors", "per grader"], [
          ...[["base", c.base], ["model", c.model]].map(([who, f]) => [who, num(f.mean), num(f.std),
            f.pass_rate === null || f.pass_rate === undefined ? "-" : `${(f.pass_rate * 100).toFixed(1)}%`, f.answers,
            f.errors, Object.entries(f.per_grader || {}).map(([k, v]) => `${k} ${num(v)}`).join(", ")]),
          ["change", num(c.change), "", "", "", "", ""],
        ]);
      const source = rw.prompts_from === "validation_file" ? "validation" : "training (no validation file)";
      parts.push(rewards(`Rewards: ${rw.grader} on ${rw.prompts} ${source} prompts, greedy`, rw.greedy));
      if (rw.sampled) {
        parts.push(rewards(`Rewards: sampled, ${rw.eval_samples} per prompt (temperature ${rw.temperature}, seed ${rw.seed})`, rw.sampled));
      }
      if (rw.samples && rw.samples.length) {
        parts.push(table("Answers (greedy), base against fine-tuned", ["line", "prompt", "base", "reward", "fine-tuned", "reward"],
          rw.samples.map((x) => [x.line, x.prompt, x.base, num(x.base_reward), x.fine_tuned, num(x.fine_tuned_reward)])));
      }
    }
    if (r.gate) {
      parts.push(table(`Gate: ${r.gate.passed ? "passed" : "failed"}`, ["check", "value", "limit", ""],
        r.gate.checks.map((c) => c.name === "min_reward_improvement"
          ? [c.name, c.value === null ? "-" : num(c.value), num(c.limit), c.passed ? "pass" : "fail"]
          : [c.name, pct(c.value), pct(c.limit), c.passed ? "pass" : "fail"])));
    }
    if (r.samples && r.samples.length) {
      parts.push(table(`Samples (greedy, from the ${r.samples_from})`, ["line", "prompt", "expected", "base", "fine-tuned"],
        r.samples.map((x) => [x.line, x.prompt, x.expected, x.base, x.fine_tuned])));
    }
    if (r.hardest_examples && r.hardest_examples.length) {
      parts.push(table("Hardest validation examples", ["line", "loss", "base loss", "example"],
        r.hardest_examples.map((x) => [x.line, num(x.loss), num(x.base_loss), x.text])));
    }
    for (const m of r.missing || []) parts.push(h("p", { class: "hint", text: `not measured: ${m}` }));
    return h("div", { class: "card report" }, parts);
  }

  // ---- charts ----------------------------------------------------------------------------------------------------
  const W = 640;
  const H = 240;
  const PAD = { l: 60, r: 14, t: 26, b: 30 };

  // A tick's label, with as many digits as the ticks' spacing needs to tell them apart.
  function tickLabel(v, spacing) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a < 1e-3 || a >= 1e5) return v.toExponential(Math.max(1, Math.min(6, Math.ceil(Math.log10(a / spacing)))));
    return v.toFixed(Math.max(0, Math.min(8, -Math.floor(Math.log10(spacing)))));
  }

  function ticks(lo, hi, n) {
    if (hi === lo) return [lo];
    return Array.from({ length: n + 1 }, (_, i) => lo + ((hi - lo) * i) / n);
  }

  // Line charts of series [{name, points: [[x, y], ...]}]: one <polyline data-series=name> each.
  function drawChart(svg, series, emptyText) {
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    svg.replaceChildren();
    const pts = series.flatMap((sr) => sr.points);
    if (!pts.length) {
      svg.append(s("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle", text: emptyText }));
      return;
    }
    let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
    let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
    if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
    if (y0 === y1) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.1, y1 + Math.abs(y1 || 1) * 0.1];
    const pad = (y1 - y0) * 0.05;
    [y0, y1] = [y0 - pad, y1 + pad];
    const X = (x) => PAD.l + ((x - x0) / (x1 - x0)) * (W - PAD.l - PAD.r);
    const Y = (y) => H - PAD.b - ((y - y0) / (y1 - y0)) * (H - PAD.t - PAD.b);
    const axes = s("g", { class: "axes" });
    for (const y of ticks(y0, y1, 4)) {
      axes.append(s("line", { x1: PAD.l, x2: W - PAD.r, y1: Y(y), y2: Y(y), class: "grid" }));
      axes.append(s("text", { x: PAD.l - 6, y: Y(y) + 4, "text-anchor": "end", text: tickLabel(y, (y1 - y0) / 4) }));
    }
    const xs = [...new Set(ticks(x0, x1, Math.min(5, x1 - x0)).map(Math.round))];
    for (const x of xs) axes.append(s("text", { x: X(x), y: H - PAD.b + 16, "text-anchor": "middle", text: x }));
    axes.append(s("text", { x: W - PAD.r, y: H - 2, "text-anchor": "end", class: "axis-label", text: "step" }));
    svg.append(axes);
    series.forEach((sr, i) => {
      const points = sr.points.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" ");
      svg.append(s("polyline", { class: `series s-${i % 6}`, "data-series": sr.name, "data-count": sr.points.length, points }));
      if (sr.points.length === 1) {
        const [x, y] = sr.points[0];
        svg.append(s("circle", { class: `dot s-${i % 6}`, cx: X(x), cy: Y(y), r: 3 }));
      }
      const lx = PAD.l + 8 + i * 150;
      svg.append(s("line", { class: `series s-${i % 6}`, x1: lx, x2: lx + 18, y1: 12, y2: 12 }));
      svg.append(s("text", { x: lx + 22, y: 16, class: "legend", text: `${sr.name} ${num(sr.points[sr.points.length - 1][1], 4)}` }));
    });
  }

  // Examples per range of tokens: the validation report's tokens.histogram.
  function drawHistogram(svg, hist) {
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.replaceChildren();
    const max = Math.max(...hist.counts, 1);
    const n = hist.counts.length;
    const bw = (W - PAD.l - PAD.r) / n;
    const Y = (c) => H - PAD.b - (c / max) * (H - PAD.t - PAD.b);
    for (const c of ticks(0, max, Math.min(4, max))) {
      svg.append(s("line", { x1: PAD.l, x2: W - PAD.r, y1: Y(c), y2: Y(c), class: "grid" }));
      svg.append(s("text", { x: PAD.l - 6, y: Y(c) + 4, "text-anchor": "end", text: num(Math.round(c)) }));
    }
    hist.counts.forEach((c, i) => {
      const label = `${hist.edges[i]}–${hist.edges[i + 1] - 1} tokens: ${c} example(s)`;
      svg.append(s("rect", { class: "bar", x: PAD.l + i * bw + 1, y: Y(c), width: Math.max(1, bw - 2), height: H - PAD.b - Y(c), "data-count": c },
        s("title", { text: label })));
    });
    const step = Math.max(1, Math.ceil(n / 6));
    for (let i = 0; i <= n; i += step) {
      svg.append(s("text", { x: PAD.l + i * bw, y: H - PAD.b + 16, "text-anchor": "middle", text: hist.edges[i] }));
    }
    svg.append(s("text", { x: W - PAD.r, y: H - 2, "text-anchor": "end", class: "axis-label", text: "tokens per example" }));
  }

  // ---- files -----------------------------------------------------------------------------------------------------
  async function filesPage(view, p) {
    const writes = await mayWrite();
    const input = h("input", { id: "file-input", type: "file", required: true });
    const purpose = h("select", { id: "purpose" },
      ["fine-tune", "batch", "evals", "user_data", "assistants", "vision"].map((v) => h("option", { value: v, text: v })));
    const button = h("button", { id: "upload-button", type: "submit", text: "Upload" });
    const bar = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true });
    const note = h("span", { id: "upload-status", class: "hint" });
    const form = h("form", { id: "upload-form", class: "card upload" }, h("h2", { text: "Upload a file" }), input, purpose, button, bar, note);
    const tbody = h("tbody");
    const report = h("section", { id: "validation-report" });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const file = input.files[0];
      if (!file) return;
      button.disabled = true;
      bar.hidden = false;
      bar.max = file.size || 1;
      bar.value = 0;
      note.textContent = `Uploading ${file.name}…`;
      try {
        const made = await upload(file, purpose.value, (loaded, total) => {
          bar.max = total;
          bar.value = loaded;
          note.textContent = `Uploading ${file.name}: ${Math.round((100 * loaded) / total)}%`;
        });
        bar.value = bar.max;
        note.replaceChildren("Uploaded ", fileLink(made.id), ".");
        input.value = "";
        const watch = (report.watch = {});
        const more = async () => {
          if (watch !== report.watch || !p.alive) return;
          if (await refreshValidation(report, made).catch((err) => showError(err))) setTimeout(more, POLL_MS);
        };
        await more();
        await refreshList();
      } catch (err) {
        note.textContent = "";
        showError(err);
      } finally {
        button.disabled = false;
      }
    });
    view.append(
      h("h1", { text: "Files" }),
      writes ? form : h("p", { id: "read-only", class: "hint", text: "Read-only key: files are uploaded and deleted by members and owners." }),
      report,
      h("table", { id: "files-table", class: "list" },
        h("thead", {}, h("tr", {}, ["File", "Name", "Purpose", "Size", "Status", "Created", ""].map((t) => h("th", { text: t })))),
        tbody),
    );
    const refreshList = async () => {
      const files = await all("/files", 1000, 1000);
      tbody.replaceChildren(
        ...files.map((f) => {
          const del = h("button", { type: "button", class: "small", text: "Delete" });
          let armed = false;
          del.addEventListener("click", async () => {
            if (!armed) {
              armed = true;
              del.textContent = "Really delete?";
              del.classList.add("confirm");
              return;
            }
            try {
              await api(`/files/${f.id}`, { method: "DELETE" });
              del.closest("tr").remove();
            } catch (err) {
              showError(err);
            }
          });
          return h("tr", { "data-file-id": f.id },
            h("td", {}, fileLink(f.id)), h("td", { text: f.filename }), h("td", { text: f.purpose }),
            h("td", { text: bytes(f.bytes) }), h("td", {}, status(f.status)),
            h("td", { title: when(f.created_at), text: age(f.created_at) }), h("td", {}, writes ? del : ""));
        }),
      );
    };
    await every(p, 5 * POLL_MS, refreshList);
  }

  async function filePage(view, p, fileId) {
    const facts = h("dl", { class: "facts" });
    const reportBox = h("section", { id: "validation-report" });
    view.append(h("div", { class: "crumbs" }, h("a", { href: "#/files", text: "Files" }), " / ", fileId), h("h1", { text: fileId }), facts, reportBox);
    await every(p, POLL_MS, async () => {
      const f = await api(`/files/${fileId}`);
      const row = (k, ...v) => [h("dt", { text: k }), h("dd", {}, ...v)];
      facts.replaceChildren(
        ...row("Name", f.filename), ...row("Purpose", f.purpose), ...row("Size", bytes(f.bytes)),
        ...row("Status", status(f.status)), ...(f.status_details ? row("Details", f.status_details) : []),
        ...row("Created", when(f.created_at)), ...(f.expires_at ? row("Expires", when(f.expires_at)) : []),
      );
      return refreshValidation(reportBox, f);
    });
  }

  // The validation report of a training file, once the scheduler has written it; true while it is still coming.
  async function refreshValidation(box, f) {
    if (f.purpose !== "fine-tune") {
      box.replaceChildren(h("p", { class: "hint", text: "Only training files (purpose fine-tune) are validated." }));
      return false;
    }
    const r = await api(`/files/${f.id}/validation`);
    if (r.status === "pending" || r.status === "uploaded") {
      box.replaceChildren(h("p", { class: "hint", id: "validation-pending", text: `Validating ${f.filename}…` }));
      return true;
    }
    box.replaceChildren(validationReport(r, f));
    return false;
  }

  function validationReport(r, f) {
    const out = [h("h2", {}, `Validation report of ${f.filename} `, status(r.status))];
    if (r.format === undefined) {
      out.push(h("p", { text: r.status_details || "No report." }));
      return h("div", {}, out);
    }
    const kv = (rows) => h("table", { class: "kv" }, h("tbody", {}, rows.map(([k, v]) => h("tr", { "data-key": k }, h("th", { text: k }), h("td", {}, v)))));
    out.push(kv([
      ["format", `${r.format ?? "—"}${r.kind ? ` (${r.kind})` : ""}`],
      ["lines", r.lines], ["examples", r.examples], ["messages", r.messages],
      ["errors", r.errors.total], ["exact duplicates", r.duplicates.exact], ["near duplicates", r.duplicates.near],
    ]));
    if (r.warnings && r.warnings.length) out.push(h("ul", { class: "warnings" }, r.warnings.map((w) => h("li", { text: w }))));
    const t = r.tokens;
    if (t) {
      out.push(h("h3", { text: `Tokens (${t.model}, ${t.tokenizer})` }));
      out.push(kv([
        ["total", t.total], ["trained", t.trained],
        ["per example", `min ${t.per_example.min}, mean ${t.per_example.mean}, p50 ${t.per_example.p50}, p95 ${t.per_example.p95}, max ${t.per_example.max}`],
        ...(t.over_max_seq_length ? [["over max_seq_length", `${t.over_max_seq_length.total} (max_seq_length ${t.max_seq_length})`]] : []),
      ]));
      if (t.histogram) {
        const svg = s("svg", { id: "token-histogram", class: "chart", role: "img", "aria-label": "tokens per example" });
        drawHistogram(svg, t.histogram);
        out.push(h("figure", {}, h("figcaption", { text: "Tokens per example" }), svg));
      }
    }
    const listed = (caption, id, head, rows) =>
      rows.length ? h("table", { class: "list", id }, h("caption", { text: caption }), h("thead", {}, h("tr", {}, head.map((x) => h("th", { text: x })))),
        h("tbody", {}, rows.map((row) => h("tr", {}, row.map((c) => h("td", { text: c ?? "" })))))) : "";
    out.push(listed(`Line errors (${r.errors.total})`, "line-errors", ["line", "field", "message"], r.errors.listed.map((e) => [e.line, e.field, e.message])));
    out.push(listed("Special tokens", "special-tokens", ["line", "field", "message"], r.special_tokens.listed.map((e) => [e.line, e.field, e.message])));
    out.push(listed("Exact duplicates", "duplicates", ["line", "duplicate of"], r.duplicates.listed.map((d) => [d.line, d.duplicate_of])));
    out.push(listed("Near duplicates", "near-duplicates", ["line", "similar to", "Jaccard"], r.duplicates.near_listed.map((d) => [d.line, d.similar_to, num(d.jaccard, 3)])));
    return h("div", { class: "card report" }, out);
  }

  // ---- models ----------------------------------------------------------------------------------------------------
  const CKPT = /:ckpt-step-(\d+)$/;

  // Each model's kind, the job that made it and its chain back to a base model.
  async function lineage() {
    const [models, jobs] = await Promise.all([api("/models"), all("/fine_tuning/jobs", 100, 1000)]);
    const byModel = new Map(jobs.filter((j) => j.fine_tuned_model).map((j) => [j.fine_tuned_model, j]));
    const info = (id) => {
      const ck = id.match(CKPT);
      const parent = ck ? id.replace(CKPT, "") : id;
      const job = byModel.get(parent);
      const kind = !id.startsWith("ft:") ? "base" : ck ? "checkpoint" : "fine-tuned";
      return { id, kind, job, step: ck ? Number(ck[1]) : null };
    };
    const chain = (id) => {
      const out = [];
      let cur = info(id);
      const seen = new Set();
      while (cur.job && !seen.has(cur.id)) {
        seen.add(cur.id);
        out.unshift(cur);
        cur = info(cur.job.model);
      }
      out.unshift(cur);
      return out;
    };
    return { models: models.data, info, chain };
  }

  async function modelsPage(view) {
    const { models, info, chain } = await lineage();
    const tbody = h("tbody");
    for (const m of models) {
      const c = chain(m.id);
      const me = info(m.id);
      const path = [];
      c.forEach((link, i) => {
        if (i) path.push(h("span", { class: "arrow", text: " → " }), link.job ? [jobLink(link.job.id), h("span", { class: "arrow", text: " → " })] : "");
        const label = link.kind === "checkpoint" ? `checkpoint at step ${link.step}` : link.kind;
        path.push(h("span", { class: `model kind-${link.kind}`, text: link.id === m.id && link.kind !== "base" ? label : link.id }));
      });
      tbody.append(h("tr", { "data-model-id": m.id, "data-kind": me.kind },
        h("td", { class: "model-id", text: m.id }), h("td", { text: me.kind }), h("td", { class: "lineage" }, path),
        h("td", { title: when(m.created), text: age(m.created) }), h("td", { text: m.owned_by }), h("td", {}, chatLink(m.id))));
    }
    view.append(
      h("h1", { text: "Models" }),
      h("table", { id: "models-table", class: "list" },
        h("thead", {}, h("tr", {}, ["Model", "Kind", "Lineage", "Created", "Owner", ""].map((t) => h("th", { text: t })))), tbody),
    );
  }

  // ---- playground ------------------------------------------------------------------------------------------------
  async function playgroundPage(view, p, query) {
    const params = new URLSearchParams(query || "");
    const { models, chain } = await lineage();
    const ids = models.map((m) => m.id);
    const pick = params.get("model") || ids.find((i) => i.startsWith("ft:")) || ids[0] || "";
    const option = (id, sel) => h("option", { value: id, text: id, selected: id === sel });
    const model = h("select", { id: "model-select" }, ids.map((i) => option(i, pick)));
    const baseOf = (id) => (id ? chain(id)[0].id : "");
    const base = h("select", { id: "base-select" }, h("option", { value: "", text: "(none)" }), ids.map((i) => option(i, baseOf(pick))));
    model.addEventListener("change", () => {
      base.value = baseOf(model.value);
      reset();
    });
    base.addEventListener("change", () => reset());
    const system = h("input", { id: "system-prompt", type: "text", placeholder: "System prompt (optional)" });
    const prompt = h("textarea", { id: "prompt", rows: 3, required: true, placeholder: "Say something to both models" });
    const maxTokens = h("input", { id: "max-tokens", type: "number", min: 1, max: 4096, value: 64 });
    const temperature = h("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0 });
    const send = h("button", { id: "send", type: "submit", text: "Send" });
    const clear = h("button", { id: "clear", type: "button", class: "secondary", text: "Clear" });
    const columns = [
      { select: model, box: h("div", { id: "chat-model", class: "chat" }), history: [] },
      { select: base, box: h("div", { id: "chat-base", class: "chat" }), history: [] },
    ];
    function reset() {
      for (const c of columns) {
        c.history = [];
        c.box.replaceChildren(h("p", { class: "hint", text: c.select.value || "no model" }));
      }
    }
    clear.addEventListener("click", reset);
    const form = h("form", { id: "playground-form", class: "card" },
      h("div", { class: "row" }, h("label", {}, "Model", model), h("label", {}, "Side by side with", base)),
      system, prompt,
      h("div", { class: "row" }, h("label", {}, "Max tokens", maxTokens), h("label", {}, "Temperature", temperature), send, clear));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const text = prompt.value.trim();
      if (!text) return;
      send.disabled = true;
      prompt.value = "";
      await Promise.all(columns.filter((c) => c.select.value).map(async (c) => {
        c.history.push({ role: "user", content: text });
        c.box.append(h("div", { class: "msg user", text }));
        const pending = h("div", { class: "msg assistant pending", text: "…" });
        c.box.append(pending);
        const messages = [...(system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []), ...c.history];
        const t0 = performance.now();
        try {
          const r = await api("/chat/completions", {
            method: "POST",
            json: { model: c.select.value, messages, max_tokens: Number(maxTokens.value) || 64, temperature: Number(temperature.value) },
          });
          const reply = r.choices[0].message.content || "";
          c.history.push({ role: "assistant", content: reply });
          pending.textContent = reply;
          pending.classList.remove("pending");
          pending.append(h("small", { text: ` ${r.usage ? r.usage.completion_tokens : "?"} tokens, ${((performance.now() - t0) / 1000).toFixed(1)} s` }));
        } catch (err) {
          c.history.pop();
          pending.textContent = err.message;
          pending.className = "msg error";
        }
      }));
      send.disabled = false;
    });
    view.append(h("h1", { text: "Playground" }), form, h("div", { class: "side-by-side" }, columns.map((c) => c.box)));
    reset();
  }

  // ---- start -----------------------------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("#logout").addEventListener("click", () => {
      clearKey();
      location.hash = "#/login";
    });
    window.addEventListener("hashchange", route);
    route();
  });
})();
