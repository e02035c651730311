// mailpush web UI: upload with progress, live capture list, report page refresh, copy buttons.
// Plain JS, no build step, no inline scripts (the pages' Content-Security-Policy forbids them).
"use strict";

(function () {
  const HEADERS = { "X-Requested-With": "XMLHttpRequest" }; // the server requires it for cookie-authenticated changes
  const VERDICT_ORDER = ["registered", "not_registered", "udp_blocked", "inconclusive"];

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }

  function humanSize(bytes) {
    const units = ["Bytes", "kB", "MB", "GB"];
    let value = bytes, i = 0;
    while (value >= 1000 && i < units.length - 1) { value /= 1000; i++; }
    return (i === 0 ? value : value.toFixed(1)) + " " + units[i];
  }

  // ---- capture list (index page) -------------------------------------------------------------------------
  const listBody = document.getElementById("captures-body");
  let listTimer = null;

  function renderRow(c) {
    const verdicts = el("td");
    const names = Object.keys(c.verdicts).sort((a, b) => VERDICT_ORDER.indexOf(a) - VERDICT_ORDER.indexOf(b));
    for (const v of names) {
      const n = c.verdicts[v];
      verdicts.appendChild(el("span", { class: "verdict verdict-" + v, text: v.replace(/_/g, " ") + (n > 1 ? " ×" + n : "") }));
      verdicts.appendChild(document.createTextNode(" "));
    }
    if (!names.length && c.status === "done") verdicts.appendChild(el("span", { class: "muted", text: "no Outlook client" }));
    const label = c.status === "running" && c.progress > 0 ? "running " + Math.round(100 * c.progress) + "%" : c.status;
    const statusCell = el("td", {}, [el("span", { class: "status status-" + c.status, text: label })]);
    if (c.error) statusCell.appendChild(el("div", { class: "error-text small", text: c.error }));
    return el("tr", { "data-id": c.id }, [
      el("td", {}, [el("a", { href: "/captures/" + c.id, text: c.filename }),
                    el("div", { class: "muted mono small nowrap", text: "sha256 " + c.sha256.slice(0, 12) + "…" })]),
      el("td", { text: (c.uploaded_at || "").replace("T", " ").replace("Z", "") }),
      el("td", { class: "num", text: humanSize(c.size) }),
      statusCell,
      verdicts,
      el("td", { class: "actions" }, [el("button", { class: "link-button danger", type: "button", "data-delete": c.id, text: "Delete" })]),
    ]);
  }

  async function refreshList() {
    let data;
    try {
      const table = document.getElementById("captures-table");
      const query = "?limit=" + (table.dataset.limit || 100) + "&offset=" + (table.dataset.offset || 0);
      const resp = await fetch("/api/captures" + query, { credentials: "same-origin", headers: HEADERS });
      if (resp.status === 401) { window.location = "/login"; return; }
      if (!resp.ok) return;
      data = await resp.json();
    } catch (e) { return; } // server restarting: try again at the next tick
    listBody.replaceChildren();
    if (!data.captures.length) {
      listBody.appendChild(el("tr", { class: "empty" }, [el("td", { colspan: "6", class: "muted", text: "No captures yet: upload one above." })]));
    }
    for (const c of data.captures) listBody.appendChild(renderRow(c));
    const pending = data.captures.some(c => c.status === "queued" || c.status === "running");
    schedule(pending);
  }

  function schedule(pending) {
    clearTimeout(listTimer);
    if (pending) listTimer = setTimeout(refreshList, 1500);
  }

  if (listBody) {
    const pendingNow = listBody.querySelector(".status-queued, .status-running");
    schedule(Boolean(pendingNow));
  }

  // ---- upload with drag-and-drop and progress ------------------------------------------------------------
  const form = document.getElementById("upload-form");
  if (form) {
    const input = document.getElementById("file-input");
    const maxBytes = Number(form.dataset.maxBytes);
    const box = document.getElementById("upload-status");
    const bar = document.getElementById("upload-bar");
    const percent = document.getElementById("upload-percent");
    const nameEl = document.getElementById("upload-name");
    const message = document.getElementById("upload-message");

    function show(file) {
      box.hidden = false;
      nameEl.textContent = file.name + " (" + humanSize(file.size) + ")";
      bar.className = "progress-bar";
      bar.style.width = "0%";
      percent.textContent = "0%";
      message.textContent = "Uploading…";
    }

    function fail(text) {
      bar.className = "progress-bar failed";
      bar.style.width = "100%";
      message.textContent = text;
    }

    function upload(file) {
      show(file);
      if (file.size > maxBytes) { fail("This file is larger than the server's upload limit."); return; }
      const data = new FormData();
      data.append("file", file, file.name);
      const secretsInput = document.getElementById("secrets-input");
      if (secretsInput && secretsInput.files.length) data.append("secrets", secretsInput.files[0], "secrets");
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/captures");
      xhr.setRequestHeader("X-Requested-With", "XMLHttpRequest");
      xhr.upload.onprogress = function (ev) {
        if (!ev.lengthComputable) return;
        const p = Math.round(100 * ev.loaded / ev.total);
        bar.style.width = p + "%";
        percent.textContent = p + "%";
      };
      xhr.onload = function () {
        let body = {};
        try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        if (xhr.status === 202) {
          bar.className = "progress-bar done";
          bar.style.width = "100%";
          percent.textContent = "100%";
          message.replaceChildren(document.createTextNode("Uploaded and queued for analysis. "),
            el("a", { href: "/captures/" + body.id, id: "upload-report-link", text: "Open the report" }));
          refreshList();
        } else if (xhr.status === 401) {
          window.location = "/login";
        } else {
          fail("Upload refused (" + xhr.status + "): " + (body.detail || xhr.statusText));
        }
      };
      xhr.onerror = function () { fail("Upload failed: the connection to the server was lost."); };
      xhr.send(data);
    }

    input.addEventListener("change", function () { if (input.files.length) upload(input.files[0]); input.value = ""; });
    ["dragenter", "dragover"].forEach(t => form.addEventListener(t, function (ev) { ev.preventDefault(); form.classList.add("dragover"); }));
    ["dragleave", "drop"].forEach(t => form.addEventListener(t, function (ev) { ev.preventDefault(); form.classList.remove("dragover"); }));
    form.addEventListener("drop", function (ev) { if (ev.dataTransfer.files.length) upload(ev.dataTransfer.files[0]); });
    form.addEventListener("submit", function (ev) { ev.preventDefault(); });
  }

  // ---- report page: reload when the analysis finishes ----------------------------------------------------
  const statusBadge = document.getElementById("capture-status");
  if (statusBadge && ["queued", "running"].includes(statusBadge.dataset.status)) {
    const id = statusBadge.dataset.captureId;
    const poll = async function () {
      try {
        const resp = await fetch("/api/captures/" + id, { credentials: "same-origin", headers: HEADERS });
        if (resp.ok) {
          const c = await resp.json();
          if (c.status === "running" && statusBadge.dataset.status === "queued") {
            statusBadge.dataset.status = "running"; // queued -> running: just update the badge, keep polling
            statusBadge.className = "status status-running";
          }
          if (c.status !== statusBadge.dataset.status) { window.location.reload(); return; }
          if (c.status === "running") {
            const pct = Math.round(100 * (c.progress || 0));
            statusBadge.textContent = pct > 0 ? "running " + pct + "%" : "running";
            const note = document.getElementById("pending-text");
            if (note) note.textContent = "Analysing" + (pct > 0 ? " (" + pct + "% of the file read)" : "") + "… This page updates by itself.";
          }
        }
      } catch (e) { /* retry */ }
      setTimeout(poll, 1000);
    };
    setTimeout(poll, 1000);
  }

  // ---- login and logout: sent by script with the anti-CSRF header the server requires -----------------------
  document.addEventListener("submit", async function (ev) {
    const form = ev.target;
    const action = form.getAttribute("action");
    if (action !== "/login" && action !== "/logout") return;
    ev.preventDefault();
    let resp;
    try {
      resp = await fetch(action, { method: "POST", body: new URLSearchParams(new FormData(form)), credentials: "same-origin", headers: HEADERS });
    } catch (e) { return; }
    if (resp.redirected || resp.ok) { window.location = resp.url; return; }
    const page = new DOMParser().parseFromString(await resp.text(), "text/html");
    const main = page.querySelector("main");
    if (main) document.querySelector("main").replaceChildren(...main.childNodes);
    else window.alert("The server answered " + resp.status);
  });

  // ---- delete and copy buttons (event delegation: rows are re-rendered) ----------------------------------
  document.addEventListener("click", async function (ev) {
    const del = ev.target.closest("[data-delete]");
    if (del) {
      if (!window.confirm("Delete this capture, its results and its plots?")) return;
      const resp = await fetch("/api/captures/" + del.dataset.delete, { method: "DELETE", credentials: "same-origin", headers: HEADERS });
      if (resp.status === 204 || resp.status === 404) {
        if (del.dataset.afterDelete) window.location = del.dataset.afterDelete;
        else refreshList();
      }
      return;
    }
    const copy = ev.target.closest("[data-copy]");
    if (copy) {
      const source = document.getElementById(copy.dataset.copy);
      const text = source.textContent;
      let ok = false;
      try {
        if (navigator.clipboard && window.isSecureContext) { await navigator.clipboard.writeText(text); ok = true; }
      } catch (e) { ok = false; }
      if (!ok) { // plain http on a LAN address is not a "secure context": fall back to a selection copy
        const range = document.createRange();
        range.selectNodeContents(source);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      }
      copy.textContent = ok ? "Copied" : "Select and copy";
      copy.classList.toggle("copied", ok);
      setTimeout(function () { copy.textContent = "Copy"; copy.classList.remove("copied"); }, 2000);
    }
  });
})();
