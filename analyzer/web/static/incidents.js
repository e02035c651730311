// mailpush web UI: the "merge two captures of one incident" form on the captures page.
// POST /api/incidents, then follow the merge until it is done and open its report.
"use strict";

(function () {
  const form = document.getElementById("incident-form");
  if (!form) return;
  const message = document.getElementById("incident-message");
  const HEADERS = { "X-Requested-With": "XMLHttpRequest", "Content-Type": "application/json" };

  function say(text, isError) {
    message.textContent = text;
    message.className = isError ? "error-text small" : "muted small";
  }

  async function follow(doc) {
    for (;;) {
      if (doc.status === "done") {
        say("Merged: " + ((doc.result && doc.result.message) || "done") + " Opening the report…");
        window.location = doc.report;
        return;
      }
      if (doc.status === "failed") { say("Merge failed: " + doc.error, true); return; }
      say("Merge " + doc.status + "…");
      await new Promise((resolve) => setTimeout(resolve, 700));
      const resp = await fetch(doc.url, { credentials: "same-origin", headers: HEADERS });
      if (!resp.ok) { say("Could not follow the merge (" + resp.status + ")", true); return; }
      doc = await resp.json();
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const ids = [form.elements.capture_a.value, form.elements.capture_b.value];
    const resp = await fetch("/api/incidents", {
      method: "POST", credentials: "same-origin", headers: HEADERS, body: JSON.stringify({ captures: ids }),
    });
    const doc = await resp.json().catch(() => ({}));
    if (resp.status !== 202) { say(doc.detail || ("Merge refused (" + resp.status + ")"), true); return; }
    follow(doc);
  });
})();
