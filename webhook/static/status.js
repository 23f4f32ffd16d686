// Keeps the status page current: fetch /api/v1/status and redraw, every few seconds.
// Everything from the server goes into the page as text, never as HTML.
(function () {
  "use strict";

  var body = document.body;
  var refreshMs = parseInt(body.dataset.refreshMs, 10) || 2000;
  var statusUrl = body.dataset.statusUrl || "/api/v1/status";
  var fleetUrl = body.dataset.fleetUrl;   // set only when --peers is configured

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") { node.textContent = attrs[key]; } else { node.setAttribute(key, attrs[key]); }
    });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  function when(value) {
    if (!value) { return document.createTextNode("never"); }
    return el("time", { datetime: value, text: value.replace("T", " ").replace("Z", " UTC") });
  }

  function setWhen(id, value) { $(id).replaceChildren(when(value)); }

  function short(sha) { return sha ? sha.slice(0, 7) : "–"; }

  function drawCommit(status) {
    var box = $("commit");
    if (!status.commit) {
      box.replaceChildren(el("p", { id: "commit-none", "class": "muted", text: "Nothing published yet." }));
      return;
    }
    var info = status.commit_info || {};
    box.replaceChildren(
      el("p", { "class": "commit-line" }, [
        el("code", { id: "commit-sha", "class": "sha", title: status.commit, text: short(status.commit) }),
        document.createTextNode(" "),
        el("span", { id: "commit-subject", "class": "subject", text: info.subject || "" })
      ]),
      el("p", { "class": "muted" }, [
        document.createTextNode("by "),
        el("span", { id: "commit-author", text: info.author || "unknown" }),
        document.createTextNode(", "),
        el("span", { id: "commit-time" }, [when(info.time)])
      ])
    );
  }

  // The same words as the template's: what the last rollout came to, and what waits.
  function rolloutBanner(status) {
    var r = status.rollout || {};
    var serving = short(status.live_commit || status.commit);
    if (r.state === "rolled_back") {
      return ["bad", short(r.commit) + " failed to start: " + r.reason + "; rolled back, serving " + serving];
    }
    if (r.state === "failed") { return ["bad", short(r.commit) + " failed to start: " + r.reason]; }
    if (r.state === "degraded") { return ["bad", "degraded: " + r.reason]; }
    if (r.state === "pending") { return ["busy", short(r.commit) + " is rolling out: waiting for the app to run it"]; }
    return ["", ""];
  }

  function drawDeploy(status) {
    var banner = rolloutBanner(status), box = $("rollout-banner"), note = $("deploy-note");
    box.className = "banner " + banner[0];
    box.textContent = banner[1];
    box.hidden = !banner[1];
    note.textContent = status.held ||
      (status.paused ? "deploys are paused; POST /api/v1/resume to publish again" : "");
    note.hidden = !note.textContent;
  }

  function rolloutCell(rollout) {
    if (!rollout) { return el("td"); }
    return el("td", {}, [el("span", { "class": "badge rollout-" + rollout.result, title: rollout.reason || "",
                                      text: rollout.result.replace("_", " ") })]);
  }

  function drawHistory(history) {
    var rows = history.map(function (entry) {
      var row = el("tr", { "class": "result-" + entry.result }, [
        el("td", {}, [when(entry.at)]),
        el("td", { text: entry.trigger }),
        el("td", {}, [el("span", { "class": "badge result-" + entry.result, text: entry.result })]),
        el("td", {}, [el("code", { "class": "sha", title: entry.commit || "", text: short(entry.commit) })]),
        rolloutCell(entry.rollout),
        el("td", { "class": "num", text: entry.duration_ms + " ms" })
      ]);
      if (entry.error) { row.title = entry.error; }
      return row;
    });
    if (!rows.length) {
      rows = [el("tr", { "class": "empty" }, [el("td", { colspan: "6", "class": "muted", text: "No deploys yet." })])];
    }
    $("history").replaceChildren.apply($("history"), rows);
  }

  function draw(status) {
    var state = $("state");
    state.textContent = status.state;
    state.className = "badge state-" + status.state;
    $("repo").textContent = status.repo;
    $("ref").textContent = status.ref;
    $("tracked-ref").textContent =
      status.tracked_ref && status.tracked_ref !== status.ref ? "(" + status.tracked_ref + ")" : "";
    document.title = "gitsync · " + status.ref + (status.commit ? " · " + short(status.commit) : "");
    drawCommit(status);
    drawDeploy(status);
    $("error-box").hidden = !status.last_error;
    $("last-error").textContent = status.last_error || "";
    $("link").textContent = status.link;
    setWhen("last-sync", status.last_sync_at);
    setWhen("last-success", status.last_success_at);
    $("failures").textContent = String(status.consecutive_failures);
    $("sync-count").textContent = String(status.sync_count);
    setWhen("started", status.started_at);
    $("version").textContent = status.version;
    drawHistory(status.history || []);
  }

  function drawFleet(fleet) {
    var rows = fleet.replicas.map(function (replica) {
      var rollout = replica.rollout && replica.rollout.state;
      return el("tr", { "class": replica.reachable ? "" : "unreachable" }, [
        el("td", {}, [el("code", { text: replica.address })]),
        el("td", {}, [el("code", { "class": "sha", title: replica.commit || "", text: short(replica.commit) })]),
        el("td", {}, [el("code", { "class": "sha", title: replica.live_commit || "", text: short(replica.live_commit) })]),
        el("td", { text: rollout || "–" }),
        el("td", { "class": "fleet-error", text: replica.last_error || "" }),
        el("td", { text: replica.reachable ? "yes" : "no" })
      ]);
    });
    $("fleet").replaceChildren.apply($("fleet"), rows);
    var badge = $("fleet-converged");
    badge.textContent = fleet.converged ? "converged" : "not converged";
    badge.className = "badge " + (fleet.converged ? "result-published" : "result-error");
  }

  function refreshFleet() {
    fetch(fleetUrl, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(drawFleet)
      .catch(function () { $("fleet-converged").textContent = "cannot ask the fleet"; })
      .finally(function () { window.setTimeout(refreshFleet, refreshMs); });
  }

  function refresh() {
    fetch(statusUrl, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (status) {
        draw(status);
        var updated = $("updated");
        updated.textContent = "updated " + new Date().toLocaleTimeString();
        updated.className = "live";
        body.dataset.refreshed = String((parseInt(body.dataset.refreshed, 10) || 0) + 1);
      })
      .catch(function (error) {
        var updated = $("updated");
        updated.textContent = "cannot reach gitsync (" + error.message + "); retrying";
        updated.className = "offline";
      })
      .finally(function () { window.setTimeout(refresh, refreshMs); });
  }

  window.setTimeout(refresh, refreshMs);
  if (fleetUrl) { refreshFleet(); }
}());
