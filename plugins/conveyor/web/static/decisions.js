// Conveyor's decision pages: read gates and decide through the approval API, with the Airflow
// session cookie. Everything from the API is put in the page as text nodes, never as HTML.
"use strict";

(() => {
  const body = document.body;
  const root = body.dataset.root || "";
  const api = `${root}/api/v1`;

  // el("p", {className: "x"}, "text", child, ...): children that are strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const badge = (text, kind) => el("span", { className: `badge ${kind || text || "unknown"}` }, text || "unknown");
  const notice = (kind, text) => el("div", { className: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  const mono = (text, title) => el("code", { title: title || null }, text);

  function when(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    const shown = Number.isNaN(date.getTime())
      ? iso
      : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
    return el("time", { datetime: iso, title: iso }, shown);
  }

  function gatePath(app, runId, gate) {
    return [app, runId, gate].map(encodeURIComponent).join("/");
  }

  function detailOf(data, response) {
    if (data && typeof data.detail === "string") return data.detail;
    if (data && Array.isArray(data.detail)) {
      return data.detail
        .map((d) => `${(d.loc || []).filter((x) => x !== "body").join(".")}: ${d.msg}`)
        .join("\n");
    }
    return `${response.status} ${response.statusText}`.trim();
  }

  // One call to the approval API: {ok, status, data} or {ok: false, status, detail}.
  async function call(method, path, payload) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (payload !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let response;
    try {
      response = await fetch(api + path, init);
    } catch (error) {
      return { ok: false, status: 0, detail: `Conveyor's approval API did not answer: ${error.message}` };
    }
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    if (response.ok) return { ok: true, status: response.status, data };
    return { ok: false, status: response.status, detail: detailOf(data, response) };
  }

  function failure(result) {
    const box = notice("error", result.detail);
    if (result.status === 401) {
      const next = window.location.pathname + window.location.search;
      box.append(" ", el("a", { href: `/auth/login?next=${encodeURIComponent(next)}` }, "Sign in again"));
    }
    return box;
  }

  function diffView(diff) {
    const lines = diff.replace(/\n$/, "").split("\n");
    return el(
      "pre",
      { className: "diff", "aria-label": "manifest diff" },
      lines.map((line) => {
        let kind = "ctx";
        if (line.startsWith("+++") || line.startsWith("---")) kind = "file";
        else if (line.startsWith("@@")) kind = "hunk";
        else if (line.startsWith("+")) kind = "add";
        else if (line.startsWith("-")) kind = "del";
        return el("span", { className: kind }, line);
      }),
    );
  }

  function manifestsSection(gate, open) {
    const changes = gate.manifests || [];
    if (!changes.length) {
      return el("p", { className: "muted" }, "No rendered manifests to show for this build yet.");
    }
    const changed = changes.filter((m) => m.diff).length;
    const summary = changed
      ? `Manifest changes: ${changes.map((m) => m.environment).join(", ")}`
      : "Manifests: no change against what runs now";
    return el(
      "details",
      { className: "manifests", open: open || null },
      el("summary", {}, summary),
      changes.map((m) =>
        el(
          "div",
          { className: "manifest", dataset: { environment: m.environment } },
          el("h4", {}, `${m.environment}`),
          el("p", { className: "muted" }, `Compared with: ${m.baseline || "nothing deployed there yet"}`),
          m.error ? notice("error", `The manifests could not be rendered: ${m.error}`) : null,
          m.diff ? diffView(m.diff) : m.error ? null : notice("info", "No change against what runs now."),
          m.rendered
            ? el("details", {}, el("summary", {}, "Rendered manifests"), el("pre", { className: "diff" }, m.rendered))
            : null,
        ),
      ),
    );
  }

  function checksSection(gate) {
    const checks = gate.checks || [];
    if (!checks.length) return null;
    return el(
      "div",
      { className: "checks" },
      el("h4", {}, "Tests and quality"),
      el(
        "table",
        {},
        el("thead", {}, el("tr", {}, el("th", {}, "Step"), el("th", {}, "State"), el("th", {}, "Result"))),
        el(
          "tbody",
          {},
          checks.map((c) =>
            el("tr", {}, el("td", {}, c.step), el("td", {}, c.state ? badge(c.state) : "—"), el("td", {}, c.summary || "—")),
          ),
        ),
      ),
    );
  }

  function decisionsSection(gate) {
    const decisions = gate.decisions || [];
    return el(
      "div",
      { className: "decisions-so-far" },
      el("h4", {}, "Decisions"),
      decisions.length
        ? el(
            "ul",
            { className: "decisions" },
            decisions.map((d) =>
              el(
                "li",
                { dataset: { user: d.user, decision: d.decision } },
                badge(d.decision === "approve" ? "approved" : "rejected"),
                " by ",
                el("strong", {}, d.user),
                d.roles && d.roles.length ? ` (${d.roles.join(", ")})` : "",
                " · ",
                when(d.at),
                d.commit !== gate.build.commit || d.digest !== gate.build.digest ? " · on an earlier build" : "",
                d.reason ? el("p", { className: "reason" }, d.reason) : null,
              ),
            ),
          )
        : el("p", { className: "muted" }, "Nobody has decided yet."),
    );
  }

  function policyText(gate) {
    const p = gate.policy;
    const who = [...p.users.map((u) => `user ${u}`), ...p.roles.map((r) => `role ${r}`)].join(", ") || "nobody";
    const self = p.allow_self_approval ? "" : "; nobody who triggered, pushed or wrote this change";
    return `${p.required} of: ${who}${self}`;
  }

  function facts(gate) {
    const b = gate.build || {};
    const rows = [
      ["Environment", gate.releases_to.length ? gate.releases_to.join(", ") : "—"],
      [
        "Version",
        [b.release_tag || "no release tag", b.build_number != null ? ` · build #${b.build_number}` : "", b.branch ? ` · branch ${b.branch}` : ""],
      ],
      [
        "Commit",
        b.commit
          ? [mono(b.commit.slice(0, 12), b.commit), b.author ? [" by ", el("span", { className: "author" }, b.author)] : "",
             b.pusher ? [", pushed by ", el("span", { className: "pusher" }, b.pusher)] : "",
             b.message ? el("p", { className: "commit-message" }, b.message) : ""]
          : "not known yet",
      ],
      ["Image digest", b.digest ? mono(b.digest) : "not known yet"],
      ["Manifests hash", b.manifests ? mono(b.manifests) : null],
      ["Run", [mono(gate.run_id), gate.triggered_by ? ` · triggered by ${gate.triggered_by}` : ""]],
      ["Gate", [gate.gate, gate.task_state ? [" · task ", badge(gate.task_state)] : ""]],
      ["Expires", gate.expires_at ? when(gate.expires_at) : null],
      [
        "Superseded by",
        gate.superseded_by
          ? el("a", { href: `${root}/gates/${gatePath(gate.app, gate.superseded_by, gate.gate)}` }, gate.superseded_by)
          : null,
      ],
      ["Approvers", [policyText(gate), el("span", { className: "muted" }, " · the policy this run started with")]],
      [
        "Approved so far",
        `${gate.approvals.length} of ${gate.required}${gate.approvals.length ? `: ${gate.approvals.join(", ")}` : ""}`,
      ],
    ];
    return el(
      "dl",
      { className: "facts" },
      rows.filter(([, value]) => value !== null).map(([name, value]) => [el("dt", {}, name), el("dd", { dataset: { fact: name } }, value)]),
    );
  }

  // The approve/reject controls of one gate; `shown` is the GateInfo the person is looking at.
  function decidePanel(shown, onDecided) {
    const result = el("div", { className: "result" });
    if (!shown.can_decide) {
      return el(
        "div",
        { className: "decide" },
        notice("info", `You cannot decide this gate: ${shown.why_not || "not allowed."}`),
        result,
      );
    }
    const reason = el("textarea", { id: `reason-${shown.run_id}-${shown.gate}`, name: "reason", maxlength: 2000 });
    const comment = el("input", { type: "text", id: `comment-${shown.run_id}-${shown.gate}`, name: "comment", maxlength: 2000 });
    const buttons = [];
    async function decide(action, text) {
      buttons.forEach((b) => (b.disabled = true));
      result.replaceChildren(notice("info", action === "approve" ? "Recording your approval…" : "Recording your rejection…"));
      const payload = { commit: shown.build.commit, digest: shown.build.digest, manifests: shown.build.manifests ?? null, reason: text };
      const answer = await call("POST", `/gates/${gatePath(shown.app, shown.run_id, shown.gate)}/${action}`, payload);
      buttons.forEach((b) => (b.disabled = false));
      if (!answer.ok) {
        result.replaceChildren(failure(answer));
        return;
      }
      const gate = answer.data;
      const done = action === "approve" ? "Your approval is recorded." : "Your rejection is recorded.";
      onDecided(gate, notice("ok", `${done} The gate is ${gate.status} (${gate.approvals.length} of ${gate.required} approvals).`));
    }
    const approve = el("button", { type: "button", className: "approve", onclick: () => decide("approve", comment.value) }, "Approve");
    const confirm = el("button", { type: "button", className: "reject confirm", onclick: () => decide("reject", reason.value) }, "Confirm reject");
    const cancel = el("button", { type: "button", onclick: () => { form.hidden = true; result.replaceChildren(); } }, "Cancel");
    const form = el(
      "div",
      { className: "reject-form", hidden: true },
      el("label", { for: reason.id }, "Reason for rejecting (required)"),
      reason,
      el("div", { className: "buttons" }, confirm, cancel),
    );
    const reject = el("button", { type: "button", className: "reject", onclick: () => { form.hidden = false; reason.focus(); } }, "Reject");
    buttons.push(approve, reject, confirm, cancel);
    return el(
      "div",
      { className: "decide" },
      el(
        "div",
        { className: "comment" },
        el("label", { for: comment.id }, "Comment on your approval (optional, kept in the audit trail)"),
        comment,
      ),
      el("div", { className: "buttons" }, approve, reject, el("span", { className: "muted" }, "Your decision is bound to the commit, image and manifests shown above.")),
      form,
      result,
    );
  }

  function gateCard(gate, { compact, message, onDecided }) {
    const title = `${gate.app} → ${gate.releases_to.join(", ") || gate.gate}`;
    const card = el(
      "article",
      { className: "card gate", dataset: { gate: `${gate.app}/${gate.run_id}/${gate.gate}`, status: gate.status } },
      el(
        "header",
        {},
        el("h3", {}, compact ? el("a", { href: `${root}/gates/${gatePath(gate.app, gate.run_id, gate.gate)}` }, title) : title),
        badge(gate.status),
        el("span", { className: "spacer" }),
        el("span", { className: "muted" }, gate.build && gate.build.release_tag ? gate.build.release_tag : gate.gate),
      ),
      el(
        "div",
        { className: "body" },
        facts(gate),
        checksSection(gate),
        manifestsSection(gate, !compact),
        decisionsSection(gate),
        decidePanel(gate, (updated, note) => {
          const fresh = gateCard(updated, { compact, message: note, onDecided });
          card.replaceWith(fresh);
          if (onDecided) onDecided(updated);
        }),
      ),
    );
    if (message) card.querySelector(".result").append(message);
    return card;
  }

  function historyTable(events) {
    if (!events.length) return el("p", { className: "muted" }, "No decisions yet.");
    return el(
      "table",
      { className: "history" },
      el(
        "thead",
        {},
        el("tr", {}, ["When", "App", "Run · gate", "Who", "Decision", "Outcome", "Reason or why refused"].map((h) => el("th", {}, h))),
      ),
      el(
        "tbody",
        {},
        events.map((e) =>
          el(
            "tr",
            { dataset: { user: e.user, action: e.action, outcome: e.outcome } },
            el("td", {}, when(e.at)),
            el("td", {}, e.app),
            el("td", { className: "wrap" }, el("a", { href: `${root}/gates/${gatePath(e.app, e.run_id, e.gate)}` }, `${e.run_id} · ${e.gate}`)),
            el("td", {}, e.user),
            el("td", {}, e.action),
            el("td", {}, badge(e.outcome), e.outcome === "refused" ? ` ${e.status_code}` : ""),
            el("td", { className: "wrap" }, e.outcome === "refused" ? e.why : e.reason || "—"),
          ),
        ),
      ),
    );
  }

  async function loadHistory(filter) {
    const target = document.getElementById("history");
    const query = filter ? `?app=${encodeURIComponent(filter.app)}` : "";
    const answer = await call("GET", `/audit${query}`);
    if (!answer.ok) {
      target.replaceChildren(failure(answer));
      return;
    }
    let events = answer.data.events;
    if (filter) events = events.filter((e) => e.run_id === filter.run_id && e.gate === filter.gate);
    target.replaceChildren(historyTable(events.slice().reverse().slice(0, 200)));
  }

  async function gatesPage() {
    const target = document.getElementById("gates");
    const answer = await call("GET", "/gates");
    if (!answer.ok) {
      target.replaceChildren(failure(answer));
    } else {
      const gates = answer.data.gates;
      const mine = gates.filter((g) => g.can_decide);
      const others = gates.filter((g) => !g.can_decide);
      const options = { compact: true, onDecided: () => loadHistory(null) };
      const group = (title, list) => (list.length ? [el("h3", { className: "group" }, `${title} (${list.length})`), list.map((g) => gateCard(g, options))] : []);
      target.replaceChildren(
        ...[
          gates.length ? [] : el("p", { className: "muted" }, "Nothing is waiting for a decision."),
          group("Yours to decide", mine),
          group("Waiting for others", others),
        ].flat(Infinity),
      );
    }
    await loadHistory(null);
  }

  async function gatePage() {
    const { dagId, runId, gateId } = body.dataset;
    const target = document.getElementById("gate");
    const filter = { app: dagId, run_id: runId, gate: gateId };
    const answer = await call("GET", `/gates/${gatePath(dagId, runId, gateId)}`);
    target.replaceChildren(
      answer.ok ? gateCard(answer.data, { compact: false, onDecided: () => loadHistory(filter) }) : failure(answer),
    );
    await loadHistory(filter);
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (body.dataset.page === "gates") gatesPage();
    else if (body.dataset.page === "gate") gatePage();
  });
})();
