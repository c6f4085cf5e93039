// Alerts: the live list from the alert feed (WatchAlerts), filterable, with acknowledge and resolve
// for operators, and the recently resolved ones on request (ListAlerts).

import { AlertState, type Alert } from "../../gen/metermesh/alerts/v1/alerts_pb";
import { AnomalyKind, Severity } from "../../gen/metermesh/anomaly/v1/anomaly_pb";
import { isActive, type FeedChange } from "../alertfeed";
import { describeError } from "../api";
import type { Page } from "../context";
import { h, Panel, setChildren } from "../dom";
import { enumKey, enumLabel, num, when } from "../format";

type View = "active" | "all";

const MAX_ROWS = 500;

export const alertsPage: Page = (root, ctx) => {
  const operator = ctx.session.role === "operator";
  const status = h("span", { class: "live-status", id: "feed-status" });
  const panel = new Panel("Alerts", "alerts-panel", "wide");
  const flash = new Set<string>();
  const resolvedFromList = new Map<string, Alert>();
  let view: View = "active";
  let minSeverity = Severity.UNSPECIFIED;
  let meterFilter = "";
  let actionError: HTMLElement | null = null;
  const expanded = new Set<string>();

  const viewSelect = h(
    "select",
    {
      "aria-label": "Which alerts",
      id: "alerts-view",
      onchange: (e: Event) => {
        view = (e.target as HTMLSelectElement).value as View;
        if (view === "all") void loadResolved();
        render();
      },
    },
    h("option", { value: "active" }, "Open and acknowledged"),
    h("option", { value: "all" }, "Including resolved"),
  );
  const severitySelect = h(
    "select",
    {
      "aria-label": "Minimum severity",
      onchange: (e: Event) => {
        minSeverity = Number((e.target as HTMLSelectElement).value) as Severity;
        render();
      },
    },
    h("option", { value: Severity.UNSPECIFIED }, "Any severity"),
    [Severity.WARNING, Severity.MAJOR, Severity.CRITICAL].map((s) => h("option", { value: s }, `${enumLabel(Severity, s)} or worse`)),
  );
  const meterInput = h("input", {
    type: "search",
    placeholder: "Meter id…",
    "aria-label": "Filter by meter",
    class: "search",
    oninput: (e: Event) => {
      meterFilter = (e.target as HTMLInputElement).value.trim().toLowerCase();
      render();
    },
  });

  setChildren(
    root,
    h("div", { class: "page-head" }, h("h1", null, "Alerts"), status),
    h("div", { class: "toolbar" }, viewSelect, severitySelect, meterInput),
    panel.el,
  );

  const loadResolved = async () => {
    try {
      const res = await ctx.api.alerts.listAlerts(
        { filter: { states: [AlertState.RESOLVED], meterIds: ctx.session.role === "consumer" ? ctx.session.meters : [] }, pageSize: 50 },
        { signal: ctx.signal },
      );
      for (const a of res.alerts) resolvedFromList.set(a.alertId, a);
      render();
    } catch (err) {
      if (ctx.signal.aborted) return;
      showActionError(describeError(err, "The alerts service").message);
    }
  };

  const showActionError = (message: string) => {
    actionError = h("div", { class: "message error", role: "alert", id: "alert-action-error" }, message);
    render();
  };

  const act = async (alert: Alert, action: "acknowledge" | "resolve", button: HTMLButtonElement) => {
    button.disabled = true;
    actionError = null;
    try {
      const res =
        action === "acknowledge"
          ? await ctx.api.alerts.acknowledgeAlert({ alertId: alert.alertId, acknowledgedBy: ctx.session.subject }, { signal: ctx.signal })
          : await ctx.api.alerts.resolveAlert({ alertId: alert.alertId, resolvedBy: ctx.session.subject }, { signal: ctx.signal });
      if (res.alert) ctx.feed.applyAlert(res.alert);
    } catch (err) {
      if (ctx.signal.aborted) return;
      button.disabled = false;
      showActionError(`Could not ${action} ${alert.alertId}: ${describeError(err, "The alerts service").message}`);
    }
  };

  const render = () => {
    const feed = ctx.feed;
    status.className = `live-status ${feed.status}`;
    status.dataset.feed = feed.status;
    status.textContent = feed.status === "live" ? "● Live" : feed.status === "connecting" ? "Connecting…" : feed.status === "reconnecting" ? "Reconnecting…" : "Stopped";
    status.title = feed.error;

    const all = new Map(resolvedFromList);
    for (const [id, a] of feed.alerts) all.set(id, a);
    const alerts = [...all.values()]
      .filter((a) => (view === "all" ? true : isActive(a)))
      .filter((a) => a.severity >= minSeverity)
      .filter((a) => !meterFilter || a.meterId.toLowerCase().includes(meterFilter))
      .sort((a, b) => Number(isActive(b)) - Number(isActive(a)) || b.severity - a.severity || (lastSeen(b) - lastSeen(a)));

    const feedProblem = feed.status !== "live" && feed.error ? h("div", { class: "message warn", role: "status" }, feed.error) : null;
    // A storm of alerts stays usable: the most severe and recent first, at most MAX_ROWS rows.
    const shown = alerts.slice(0, MAX_ROWS);
    panel.setNote(alerts.length > shown.length ? `${num(shown.length, 0)} of ${num(alerts.length, 0)} shown` : `${num(alerts.length, 0)} shown`);
    if (alerts.length === 0) {
      panel.show(
        feedProblem,
        actionError,
        h("p", { class: "message muted", id: "no-alerts" }, feed.status === "live" ? "No alerts match. New ones appear here as they happen." : "Waiting for the alert stream…"),
      );
      return;
    }
    panel.show(
      feedProblem,
      actionError,
      h(
        "div",
        { class: "scroll tall" },
        h(
          "table",
          { class: "table alerts-table", "data-count": shown.length },
          h(
            "thead",
            null,
            h("tr", null, h("th", null, "Severity"), h("th", null, "Alert"), h("th", null, "Meter"), h("th", null, "State"), h("th", { class: "num" }, "Events"), h("th", null, "Last seen"), operator ? h("th", null, "") : null),
          ),
          h("tbody", null, shown.map((a) => row(a))),
          ),
      ),
    );
  };

  const row = (a: Alert): HTMLElement[] => {
    const state = enumKey(AlertState, a.state);
    const ack = h("button", { type: "button", class: "btn small", "data-action": "acknowledge", disabled: a.state !== AlertState.OPEN }, "Acknowledge");
    const resolve = h("button", { type: "button", class: "btn small", "data-action": "resolve", disabled: a.state === AlertState.RESOLVED }, "Resolve");
    ack.addEventListener("click", () => void act(a, "acknowledge", ack));
    resolve.addEventListener("click", () => void act(a, "resolve", resolve));
    const open = expanded.has(a.alertId);
    const tr = h(
      "tr",
      {
        class: `alert-row row-${state}${flash.has(a.alertId) ? " flash" : ""}`,
        "data-alert-id": a.alertId,
        "data-meter-id": a.meterId,
        "data-kind": enumKey(AnomalyKind, a.kind),
        "data-severity": enumKey(Severity, a.severity),
        "data-state": state,
      },
      h("td", null, h("span", { class: `badge sev-${enumKey(Severity, a.severity)}` }, enumLabel(Severity, a.severity))),
      h(
        "td",
        null,
        h(
          "button",
          { type: "button", class: "link", "aria-expanded": String(open), onclick: () => (open ? expanded.delete(a.alertId) : expanded.add(a.alertId), render()) },
          a.summary || enumLabel(AnomalyKind, a.kind),
        ),
      ),
      h("td", null, h("a", { href: `#/meters/${encodeURIComponent(a.meterId)}`, class: "mono" }, a.meterId)),
      h("td", null, h("span", { class: `state state-${state}` }, enumLabel(AlertState, a.state)), a.acknowledgedBy ? h("div", { class: "muted small" }, `by ${a.acknowledgedBy}`) : null),
      h("td", { class: "num" }, a.eventCount.toString()),
      h("td", null, when(a.lastSeenTime)),
      operator ? h("td", { class: "actions" }, ack, resolve) : null,
    );
    if (!open) return [tr];
    const ev = a.lastEvent;
    return [
      tr,
      h(
        "tr",
        { class: "alert-detail" },
        h(
          "td",
          { colspan: operator ? 7 : 6 },
          h("p", null, ev?.explanation ?? "No event details."),
          ev && ev.features.length
            ? h(
                "ul",
                { class: "features" },
                ev.features.map((f) =>
                  h("li", null, h("span", { class: "mono" }, f.name), `: ${num(f.value, 2)} ${f.unit}`, f.expectedValue !== undefined ? ` (expected ${num(f.expectedValue, 2)} ${f.unit})` : "", ` · ${num(f.contribution * 100, 0)}% of score`),
                ),
              )
            : null,
          h("p", { class: "muted small" }, `Kind ${enumLabel(AnomalyKind, a.kind)} · first seen ${when(a.firstSeenTime)} · opened ${when(a.createTime)}${a.resolvedBy ? ` · resolved by ${a.resolvedBy}` : ""}`),
        ),
      ),
    ];
  };

  const onChange = (e: Event) => {
    const { alert, update } = (e as CustomEvent<FeedChange>).detail;
    if (update) {
      flash.add(alert.alertId);
      setTimeout(() => {
        flash.delete(alert.alertId);
      }, 2000);
    }
    render();
  };
  ctx.feed.addEventListener("change", onChange);
  ctx.feed.addEventListener("status", render);
  ctx.onLeave(() => {
    ctx.feed.removeEventListener("change", onChange);
    ctx.feed.removeEventListener("status", render);
  });
  render();
};

function lastSeen(a: Alert): number {
  return a.lastSeenTime ? Number(a.lastSeenTime.seconds) : 0;
}
