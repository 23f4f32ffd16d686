// Keeps the status page current: fetch /api/v1/status and redraw, every few seconds.
// Everything from the server goes into the page as text, never as HTML.
(function () {
  "use strict";

  var body = document.body;
  var refreshMs = parseInt(body.dataset.refreshMs, 10) || 2000;
  var statusUrl = body.dataset.statusUrl || "/api/v1/status";
  var fleetUrl = body.dataset.fleetUrl;   // set only when --peers is configured
  var skewMs = 0;   // the server's clock minus ours, from the Date header: "ago" is the server's
  var DELIVERY_WORDS = {   // the template's words for the receiver's results
    sync: "sync started", duplicate: "ignored: seen before", ping: "ping: the webhook works",
    other_event: "ignored: not a push", deleted: "ignored: the ref was deleted",
    other_ref: "ignored: another ref", unauthorized: "rejected: wrong signature or token",
    malformed: "rejected: not a webhook", too_large: "rejected: too large",
    disabled: "refused: the receiver is off"
  };

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") { node.textContent = attrs[key]; } else { node.setAttribute(key, attrs[key]); }
    });
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  // One zone on the whole page, UTC and said so, plus how long ago (as webhook/status.py).
  function utc(value) { return value.slice(0, 19).replace("T", " ") + " UTC"; }

  function relative(value) {
    var seconds = (Date.now() + skewMs - Date.parse(value)) / 1000, span = Math.abs(seconds), amount;
    if (span < 60) { amount = Math.floor(span) + " s"; }
    else if (span < 3600) { amount = Math.floor(span / 60) + " min"; }
    else if (span < 48 * 3600) { amount = Math.floor(span / 3600) + " h"; }
    else { amount = Math.floor(span / 86400) + " days"; }
    return seconds >= 0 ? amount + " ago" : "in " + amount;
  }

  function when(value, missing) {
    var frag = document.createDocumentFragment();
    if (!value) { frag.appendChild(document.createTextNode(missing || "never")); return frag; }
    frag.appendChild(el("time", { datetime: value, text: utc(value) }));
    frag.appendChild(document.createTextNode(" "));
    frag.appendChild(el("span", { "class": "ago", text: relative(value) }));
    return frag;
  }

  function setWhen(id, value, missing) { $(id).replaceChildren(when(value, missing)); }

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
    if (!rollout) { return el("td", { "data-label": "Rollout" }); }
    return el("td", { "data-label": "Rollout" }, [el("span", { "class": "badge rollout-" + rollout.result, title: rollout.reason || "",
                                      text: rollout.result.replace("_", " ") })]);
  }

  // An error row names the commit it tried, never the one still served.
  function commitCell(entry) {
    var sha = entry.attempted || (entry.result !== "error" ? entry.commit : null);
    var cell = el("td", { "data-label": "Commit", "class": "commit" },
                  [el("code", { "class": "sha", title: sha || "", text: short(sha) })]);
    if (entry.subject !== undefined && entry.subject !== null) {
      cell.appendChild(document.createTextNode(" "));
      cell.appendChild(el("span", { "class": "subject", text: entry.subject }));
      cell.appendChild(document.createTextNode(" "));
      cell.appendChild(el("span", { "class": "author muted", text: "by " + entry.author }));
    }
    return cell;
  }

  function drawHistory(history) {
    var rows = history.map(function (entry) {
      var shown = entry.recovered && entry.result === "unchanged" ? "recovered" : entry.result;
      var row = el("tr", { "class": "result-" + shown }, [
        el("td", { "data-label": "When" }, [when(entry.at)]),
        commitCell(entry),
        el("td", { "data-label": "Result" }, [el("span", { "class": "badge result-" + shown, text: shown })]),
        el("td", { "data-label": "Trigger", text: entry.trigger }),
        rolloutCell(entry.rollout),
        el("td", { "data-label": "Duration", "class": "num", text: entry.duration_ms + " ms" })
      ]);
      if (entry.error) { row.title = entry.error; }
      return row;
    });
    if (!rows.length) {
      rows = [el("tr", { "class": "empty" }, [el("td", { colspan: "6", "class": "muted", text: "No deploys yet." })])];
    }
    $("history").replaceChildren.apply($("history"), rows);
  }

  function drawDeliveries(deliveries) {
    var box = $("deliveries");
    var rows = deliveries.map(function (d) {
      var result = el("td", { "data-label": "Result",
                              text: (DELIVERY_WORDS[d.result] || d.result) + " (" + d.status + ")" });
      if (d.ref) {
        result.appendChild(document.createTextNode(" "));
        result.appendChild(el("code", { text: d.ref }));
      }
      return el("tr", { "class": "delivery-" + (d.status < 300 ? "ok" : "bad") }, [
        el("td", { "data-label": "When" }, [when(d.at)]),
        el("td", { "data-label": "Forge", text: d.forge }),
        el("td", { "data-label": "Event", text: d.event || "–" }),
        result
      ]);
    });
    if (!rows.length) {
      rows = [el("tr", { "class": "empty" }, [el("td", { colspan: "4", "class": "muted",
        text: box.dataset.receiverOn === "yes" ? "No webhook deliveries since gitsync started."
                                               : "The webhook receiver is off (no receiver secret)." })])];
    }
    box.replaceChildren.apply(box, rows);
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
    $("publish-count").textContent = String(status.publish_count);
    $("sync-count").textContent = String(status.sync_count);
    setWhen("next-poll", status.next_poll_at, status.state === "syncing" ? "now" : "–");
    setWhen("started", status.started_at);
    $("version").textContent = status.version;
    drawHistory(status.history || []);
    drawDeliveries(status.deliveries || []);
  }

  function drawFleet(fleet) {
    var rows = fleet.replicas.map(function (replica) {
      var rollout = replica.rollout && replica.rollout.state;
      return el("tr", { "class": replica.reachable ? "" : "unreachable" }, [
        el("td", { "data-label": "Replica" }, [el("code", { text: replica.address })]),
        el("td", { "data-label": "Commit" }, [el("code", { "class": "sha", title: replica.commit || "", text: short(replica.commit) })]),
        el("td", { "data-label": "Live commit" }, [el("code", { "class": "sha", title: replica.live_commit || "", text: short(replica.live_commit) })]),
        el("td", { "data-label": "Rollout", text: rollout || "–" }),
        el("td", { "data-label": "Last error", "class": "fleet-error", text: replica.last_error || "" }),
        el("td", { "data-label": "Reachable", text: replica.reachable ? "yes" : "no" })
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
        var served = Date.parse(response.headers.get("Date") || "");
        // +500 ms: the header is whole seconds, so the mean error is then nil
        if (!isNaN(served)) { skewMs = served + 500 - Date.now(); }
        return response.json();
      })
      .then(function (status) {
        draw(status);
        var updated = $("updated");
        updated.textContent = "updated " + utc(new Date(Date.now() + skewMs).toISOString());
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

  // The server wrote "ago" when it rendered; say it from this moment until the first refresh.
  Array.prototype.forEach.call(document.querySelectorAll("time[datetime] + .ago"), function (ago) {
    ago.textContent = relative(ago.previousElementSibling.getAttribute("datetime"));
  });
  window.setTimeout(refresh, refreshMs);
  if (fleetUrl) { refreshFleet(); }
}());
