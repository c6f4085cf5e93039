// Fleet overview: meters registered and reporting, readings per second (estimated from the meters'
// last read times between polls of ListMeters), open alerts by severity (live from the alert feed),
// recent alert activity and the meter list.

import { Severity } from "../../gen/metermesh/anomaly/v1/anomaly_pb";
import { MeterCategory, type Meter } from "../../gen/metermesh/common/v1/common_pb";
import { CHANGE_VERB, isActive } from "../alertfeed";
import { describeError } from "../api";
import { rateChart, setData, type Chart } from "../charts";
import type { Page, PageContext } from "../context";
import { h, Panel, setChildren } from "../dom";
import { ago, clock, enumKey, enumLabel, num, short, tsMs, when } from "../format";
import { isReporting, loadMeters, type MeterList } from "../meters";

const POLL_MS = 5000;
const RATE_WINDOW_MS = 30_000;
const SEVERITIES = [Severity.CRITICAL, Severity.MAJOR, Severity.WARNING, Severity.INFO];

function stat(id: string, label: string): { el: HTMLElement; set(value: string, sub?: string, raw?: number): void } {
  const value = h("div", { class: "stat-value" }, "…");
  const sub = h("div", { class: "stat-sub" });
  const el = h("div", { class: "stat", id }, h("div", { class: "stat-label" }, label), value, sub);
  return {
    el,
    set(v, s = "", raw) {
      value.textContent = v;
      sub.textContent = s;
      if (raw !== undefined) el.dataset.value = String(raw);
    },
  };
}

export const overviewPage: Page = (root, ctx) => {
  const consumer = ctx.session.role === "consumer";
  const meters = stat("stat-meters", consumer ? "My meters" : "Meters registered");
  const reporting = stat("stat-reporting", "Reporting now");
  const rate = stat("stat-rate", "Readings per second");
  const open = stat("stat-alerts", "Open alerts");

  const ratePanel = new Panel("Readings per second", "rate-panel");
  ratePanel.setNote(`estimated from meters' latest read times, polled every ${POLL_MS / 1000} s`);
  const alertsPanel = new Panel("Open alerts by severity", "severity-panel");
  alertsPanel.setNote("live");
  const activityPanel = new Panel("Recent alert activity", "activity-panel");
  const metersPanel = new Panel(consumer ? "My meters" : "Meters", "meters-panel");

  setChildren(
    root,
    h("div", { class: "page-head" }, h("h1", null, consumer ? "My meters" : "Fleet overview")),
    h("div", { class: "stats" }, meters.el, reporting.el, rate.el, open.el),
    h("div", { class: "grid two" }, ratePanel.el, alertsPanel.el),
    h("div", { class: "grid two" }, metersPanel.el, activityPanel.el),
  );

  renderAlerts(ctx, open, alertsPanel, activityPanel);
  const onFeed = () => renderAlerts(ctx, open, alertsPanel, activityPanel);
  ctx.feed.addEventListener("change", onFeed);
  ctx.feed.addEventListener("status", onFeed);
  ctx.onLeave(() => {
    ctx.feed.removeEventListener("change", onFeed);
    ctx.feed.removeEventListener("status", onFeed);
  });

  // Readings per second: between two polls, each meter whose latest read time moved on by k of its
  // intervals stored about k readings (at least one when it was seen again). The rate is taken over
  // the polls of the last RATE_WINDOW_MS, so meters reporting less often than we poll do not make it
  // jump between zero and twice the truth.
  let prev: { at: number; byMeter: Map<string, { read: number; seen: number }> } | null = null;
  let counted = 0;
  const samples: { at: number; counted: number }[] = [];
  const rateTimes: number[] = [];
  const rateValues: number[] = [];
  let chart: Chart | null = null;
  ctx.onLeave(() => chart?.destroy());
  let filter = "";
  let latest: MeterList | null = null;

  const search = h("input", {
    type: "search",
    placeholder: "Filter meters…",
    "aria-label": "Filter meters",
    class: "search",
    oninput: (e: Event) => {
      filter = (e.target as HTMLInputElement).value.trim().toLowerCase();
      if (latest) renderMeters(metersPanel, latest, filter, search);
    },
  });

  const poll = async () => {
    let list: MeterList;
    try {
      list = await loadMeters(ctx);
    } catch (err) {
      if (ctx.signal.aborted) return;
      const e = describeError(err, "The ingest service");
      metersPanel.error(e.message, e.hint);
      for (const s of [meters, reporting, rate]) s.set("–", "ingest unavailable");
      ratePanel.error(e.message, e.hint);
      return;
    }
    if (ctx.signal.aborted) return;
    latest = list;
    const now = Date.now();
    const byMeter = new Map<string, { read: number; seen: number }>();
    for (const m of list.meters) byMeter.set(m.meterId, { read: tsMs(m.lastReadTime) ?? 0, seen: tsMs(m.lastSeenTime) ?? 0 });
    const reportingCount = list.meters.filter((m) => isReporting(m, now)).length;
    meters.set(num(list.meters.length, 0) + (list.truncated ? "+" : ""), list.truncated ? "first 10,000 listed" : "", list.meters.length);
    reporting.set(num(reportingCount, 0), `of ${num(list.meters.length, 0)} (within 3 intervals)`, reportingCount);

    if (prev) {
      let readings = 0;
      for (const m of list.meters) {
        const before = prev.byMeter.get(m.meterId);
        const after = byMeter.get(m.meterId)!;
        if (!before || after.seen <= before.seen) continue;
        const step = (m.intervalSeconds || 900) * 1000;
        readings += after.read > before.read ? Math.max(1, Math.round((after.read - before.read) / step)) : 1;
      }
      if (samples.length === 0) samples.push({ at: prev.at, counted });
      counted += readings;
      samples.push({ at: now, counted });
      while (samples.length > 2 && now - samples[1].at >= RATE_WINDOW_MS) samples.shift();
      const perSecond = (counted - samples[0].counted) / ((now - samples[0].at) / 1000);
      rateTimes.push(now / 1000);
      rateValues.push(perSecond);
      if (rateTimes.length > 360) {
        rateTimes.shift();
        rateValues.shift();
      }
      rate.set(num(perSecond, 1), `over ${Math.round((now - samples[0].at) / 1000)} s to ${clock(now)}`, perSecond);
      if (!chart) {
        chart = rateChart(rateTimes, rateValues);
        ratePanel.show(chart.el);
      } else {
        setData(chart, [rateTimes, rateValues]);
      }
    } else {
      rate.set("…", "measuring (needs two polls)");
      ratePanel.loading("Measuring: the first rate needs two polls…");
    }
    prev = { at: now, byMeter };
    renderMeters(metersPanel, list, filter, search);
  };
  void poll();
  ctx.every(POLL_MS, () => void poll());
};

function renderAlerts(
  ctx: PageContext,
  open: ReturnType<typeof stat>,
  panel: Panel,
  activity: Panel,
): void {
  const counts = new Map<Severity, number>(SEVERITIES.map((s) => [s, 0]));
  for (const a of ctx.feed.alerts.values()) if (isActive(a)) counts.set(a.severity, (counts.get(a.severity) ?? 0) + 1);
  const total = [...counts.values()].reduce((x, y) => x + y, 0);
  const feedNote = ctx.feed.status === "live" ? "live" : ctx.feed.error || ctx.feed.status;
  open.set(num(total, 0), feedNote, total);
  if (ctx.feed.status !== "live" && ctx.feed.error && ctx.feed.alerts.size === 0) {
    panel.error(ctx.feed.error, "Alert counts appear when the alerts service is reachable.");
  } else {
    const max = Math.max(1, ...counts.values());
    panel.show(
      h(
        "ul",
        { class: "severity-bars", "data-total": total },
        SEVERITIES.map((s) => {
          const n = counts.get(s) ?? 0;
          return h(
            "li",
            { "data-severity": enumKey(Severity, s), "data-count": n },
            h("span", { class: `badge sev-${enumKey(Severity, s)}` }, enumLabel(Severity, s)),
            h("span", { class: "bar" }, h("span", { class: `bar-fill sev-${enumKey(Severity, s)}`, style: `width:${(100 * n) / max}%` })),
            h("a", { class: "count", href: "#/alerts" }, String(n)),
          );
        }),
      ),
    );
  }
  panel.setNote(feedNote);
  if (ctx.feed.recent.length === 0) {
    activity.empty(ctx.feed.status === "live" ? "No alert changes since you signed in." : "Waiting for the alert stream…");
  } else {
    activity.show(
      h(
        "ul",
        { class: "activity" },
        ctx.feed.recent.slice(0, 8).map((u) =>
          h(
            "li",
            { "data-alert-id": u.alert?.alertId ?? "" },
            h("span", { class: `badge sev-${enumKey(Severity, u.alert?.severity ?? 0)}` }, enumLabel(Severity, u.alert?.severity ?? 0)),
            h("span", { class: "activity-text" }, `${u.alert?.summary ?? "alert"} — ${CHANGE_VERB[u.changeKind]}`),
            h("span", { class: "muted small" }, when(u.changeTime)),
          ),
        ),
      ),
    );
  }
}

function renderMeters(panel: Panel, list: MeterList, filter: string, search: HTMLInputElement): void {
  const now = Date.now();
  const shown = list.meters.filter(
    (m) => !filter || m.meterId.toLowerCase().includes(filter) || m.tariffId.toLowerCase().includes(filter),
  );
  const rows = shown.slice(0, 100);
  const failures = list.failures.map((f) =>
    h("p", { class: "message error small" }, `${f.meterId}: ${describeError(f.error, "The ingest service").message}`),
  );
  const keepFocus = document.activeElement === search;
  panel.show(
    h("div", { class: "toolbar" }, search, h("span", { class: "muted small" }, `${num(shown.length, 0)} meters${shown.length > rows.length ? `, first ${rows.length} shown` : ""}`)),
    failures,
    rows.length === 0
      ? h("p", { class: "message muted" }, list.meters.length ? "No meter matches the filter." : "No meters registered yet.")
      : h(
          "div",
          { class: "scroll" },
          h(
            "table",
            { class: "table meters-table", "data-count": rows.length },
            h("thead", null, h("tr", null, h("th", null, "Meter"), h("th", null, "Category"), h("th", null, "Tariff"), h("th", null, "Last reading"), h("th", null, "Seen"))),
            h(
              "tbody",
              null,
              rows.map((m: Meter) =>
                h(
                  "tr",
                  { "data-meter-id": m.meterId },
                  h("td", null, h("span", { class: `dot ${isReporting(m, now) ? "ok" : "stale"}`, title: isReporting(m, now) ? "reporting" : "not reporting" }), h("a", { href: `#/meters/${encodeURIComponent(m.meterId)}` }, m.meterId)),
                  h("td", null, enumLabel(MeterCategory, m.category)),
                  h("td", null, m.tariffId || h("span", { class: "muted" }, "none")),
                  h("td", { title: when(m.lastReadTime) }, short(m.lastReadTime, now)),
                  h("td", null, ago(tsMs(m.lastSeenTime), now)),
                ),
              ),
            ),
            ),
        ),
  );
  if (keepFocus) search.focus();
}
