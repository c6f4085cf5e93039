// One meter: its readings (import energy and voltage) with the anomalies found in them, the forecast
// with its p10-p90 band, the month's usage and bill projection against the tariff's slabs, and the
// efficiency analysis. Each panel loads on its own and says so when its service fails.

import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { AlertState } from "../../gen/metermesh/alerts/v1/alerts_pb";
import { AnomalyKind, Severity, type AnomalyEvent } from "../../gen/metermesh/anomaly/v1/anomaly_pb";
import { MeterCategory, type Meter, type Reading } from "../../gen/metermesh/common/v1/common_pb";
import type { ProjectMonthlyUsageResponse } from "../../gen/metermesh/forecast/v1/forecast_pb";
import { connectCode, describeError } from "../api";
import { forecastChart, readingsChart, type Chart, type Span } from "../charts";
import type { Page, PageContext } from "../context";
import { h, Panel, setChildren } from "../dom";
import { ago, enumKey, enumLabel, money, num, tsMs, when } from "../format";
import { isReporting } from "../meters";
import { Code } from "@connectrpc/connect";

const RANGES: { key: string; label: string; hours: number }[] = [
  { key: "24h", label: "24 hours", hours: 24 },
  { key: "7d", label: "7 days", hours: 168 },
];
const MAX_READINGS = 50_000;
const FORECAST_HOURS = 48;

const SEVERITY_COLOR: Record<number, string> = {
  [Severity.INFO]: "#0284c7",
  [Severity.WARNING]: "#d97706",
  [Severity.MAJOR]: "#ea580c",
  [Severity.CRITICAL]: "#dc2626",
};

export const meterPage: Page = (root, ctx, params) => {
  const meterId = decodeURIComponent(params[0] ?? "");
  const head = h("div", { class: "page-head" }, h("h1", null, "Meter ", h("span", { class: "mono" }, meterId)));
  const info = new Panel("Meter", "meter-info");
  setChildren(root, head, info.el);

  void ctx.api.ingest
    .getMeter({ meterId }, { signal: ctx.signal })
    .then((res) => {
      if (ctx.signal.aborted || !res.meter) return;
      renderMeter(root, ctx, res.meter, info);
    })
    .catch((err: unknown) => {
      if (ctx.signal.aborted) return;
      const code = connectCode(err);
      const e = describeError(err, "The ingest service");
      if (code === Code.PermissionDenied) {
        const mine = ctx.session.meters.length ? ` Your token allows: ${ctx.session.meters.join(", ")}.` : "";
        setChildren(
          root,
          head,
          h(
            "div",
            { class: "page-error", role: "alert", "data-code": "PERMISSION_DENIED" },
            h("h2", null, "Permission denied"),
            h("p", null, `You may not view meter ${meterId}: the gateway answered PERMISSION_DENIED (${(err as Error).message}).${mine}`),
            h("a", { href: "#/" }, "Back to my meters"),
          ),
        );
      } else if (code === Code.NotFound) {
        setChildren(
          root,
          head,
          h("div", { class: "page-error", role: "alert", "data-code": "NOT_FOUND" }, h("h2", null, "No such meter"), h("p", null, e.message), h("a", { href: "#/" }, "Back to the overview")),
        );
      } else {
        info.error(e.message, e.hint);
      }
    });
};

function renderMeter(root: HTMLElement, ctx: PageContext, meter: Meter, info: Panel): void {
  info.show(
    h(
      "dl",
      { class: "facts" },
      fact("Category", enumLabel(MeterCategory, meter.category)),
      fact("Tariff", meter.tariffId || "none"),
      fact("Interval", meter.intervalSeconds % 60 === 0 ? `${meter.intervalSeconds / 60} min` : `${meter.intervalSeconds} s`),
      fact("Time zone", meter.timeZone || "UTC"),
      fact("Sanctioned load", meter.sanctionedLoadKw ? `${num(meter.sanctionedLoadKw, 2)} kW` : "–"),
      fact("Last reading", when(meter.lastReadTime)),
      fact("Seen", h("span", null, h("span", { class: `dot ${isReporting(meter) ? "ok" : "stale"}` }), ago(tsMs(meter.lastSeenTime)))),
    ),
  );
  info.setNote(isReporting(meter) ? "reporting" : "not reporting");

  const readings = new Panel("Readings", "readings-panel", "wide");
  const forecast = new Panel(`Forecast, next ${FORECAST_HOURS} h`, "forecast-panel", "wide");
  const projection = new Panel("This month", "projection-panel");
  const efficiency = new Panel("Efficiency", "efficiency-panel");
  const alerts = new Panel("Alerts on this meter", "meter-alerts-panel", "wide");
  root.append(readings.el, forecast.el, h("div", { class: "grid two" }, projection.el, efficiency.el), alerts.el);

  const charts: Chart[] = [];
  const slot: ReadingsSlot = { chart: null, generation: 0 };
  ctx.onLeave(() => {
    charts.forEach((c) => c.destroy());
    slot.chart?.destroy();
  });

  // Readings and anomalies over a range; the forecast waits for the readings to draw actuals beside it.
  let rangeHours = 24;
  const rangeButtons = h(
    "div",
    { class: "segmented", role: "group", "aria-label": "Range" },
    RANGES.map((r) =>
      h("button", { type: "button", "data-range": r.key, "aria-pressed": r.hours === rangeHours ? "true" : "false", onclick: () => selectRange(r.hours) }, r.label),
    ),
  );
  readings.el.querySelector(".panel-head")!.append(rangeButtons);
  const selectRange = (hours: number) => {
    rangeHours = hours;
    for (const b of rangeButtons.querySelectorAll("button")) {
      b.setAttribute("aria-pressed", String(RANGES.find((r) => r.key === b.dataset.range)?.hours === hours));
    }
    void loadReadings(ctx, meter, hours, readings, slot);
  };
  const first = loadReadings(ctx, meter, rangeHours, readings, slot);
  void loadForecast(ctx, meter, forecast, charts, first);
  void loadProjection(ctx, meter, projection);
  void loadEfficiency(ctx, meter, efficiency);
  void loadAlerts(ctx, meter, alerts);
}

function fact(label: string, value: string | Node): HTMLElement {
  return h("div", { class: "fact" }, h("dt", null, label), h("dd", null, value));
}

async function fetchReadings(ctx: PageContext, meterId: string, startMs: number, endMs: number): Promise<Reading[]> {
  const out: Reading[] = [];
  let pageToken = "";
  do {
    const res = await ctx.api.ingest.getReadings(
      { meterId, startTime: timestampFromMs(startMs), endTime: timestampFromMs(endMs), pageSize: 10_000, pageToken },
      { signal: ctx.signal },
    );
    out.push(...res.readings);
    pageToken = res.nextPageToken;
  } while (pageToken && out.length < MAX_READINGS);
  return out;
}

/** The readings chart on show, and which load may replace it (the latest range asked for). */
interface ReadingsSlot {
  chart: Chart | null;
  generation: number;
}

async function loadReadings(ctx: PageContext, meter: Meter, hours: number, panel: Panel, slot: ReadingsSlot): Promise<Reading[]> {
  const generation = ++slot.generation;
  panel.loading();
  const end = Date.now() + 60_000;
  const start = end - hours * 3_600_000;
  const detection = ctx.api.anomaly
    .detectAnomalies(
      { source: { case: "storedReadings", value: { meterId: meter.meterId, timeRange: { startTime: timestampFromMs(start), endTime: timestampFromMs(end) } } } },
      { signal: ctx.signal },
    )
    .then((r) => ({ events: r.events, error: null as unknown }))
    .catch((error: unknown) => ({ events: [] as AnomalyEvent[], error }));
  let rows: Reading[];
  try {
    rows = await fetchReadings(ctx, meter.meterId, start, end);
  } catch (err) {
    if (ctx.signal.aborted || generation !== slot.generation) return [];
    slot.chart?.destroy();
    slot.chart = null;
    const e = describeError(err, "The ingest service");
    panel.error(e.message, e.hint);
    return [];
  }
  const { events, error } = await detection;
  if (ctx.signal.aborted || generation !== slot.generation) return rows;
  if (rows.length === 0) {
    slot.chart?.destroy();
    slot.chart = null;
    panel.empty(`No readings stored in the last ${hours} hours.`);
    return rows;
  }
  const times = rows.map((r) => (tsMs(r.readTime) ?? 0) / 1000);
  const energy = rows.map((r) => r.importEnergyWh);
  const hasVoltage = rows.some((r) => r.voltageV !== undefined);
  const voltage = hasVoltage ? rows.map((r) => r.voltageV ?? null) : null;
  const spans: Span[] = events.map((e) => ({
    startSec: (tsMs(e.startTime) ?? 0) / 1000,
    endSec: (tsMs(e.endTime) ?? tsMs(e.startTime) ?? 0) / 1000,
    color: SEVERITY_COLOR[e.severity] ?? SEVERITY_COLOR[Severity.WARNING],
  }));
  slot.chart?.destroy();
  const chart = readingsChart(times, energy, voltage, spans);
  slot.chart = chart;
  const totalKwh = energy.reduce((a, b) => a + b, 0) / 1000;
  panel.setNote(`${num(rows.length, 0)} readings · ${num(totalKwh, 2)} kWh imported`);
  const anomalyNote = error
    ? h("div", { class: "message warn small", "data-anomalies": "unavailable" }, `Anomaly marks unavailable: ${describeError(error, "The anomaly service").message}`)
    : events.length === 0
      ? h("p", { class: "muted small", "data-anomalies": "0" }, "No anomalies found in this range.")
      : h(
          "ul",
          { class: "anomaly-list scroll", "data-anomalies": events.length },
          events.slice(0, 20).map((e) =>
            h(
              "li",
              { "data-kind": enumKey(AnomalyKind, e.kind) },
              h("span", { class: `badge sev-${enumKey(Severity, e.severity)}` }, enumLabel(Severity, e.severity)),
              h("strong", null, enumLabel(AnomalyKind, e.kind)),
              h("span", { class: "muted small" }, when(e.startTime)),
              h("span", { class: "explanation" }, e.explanation),
            ),
          ),
          events.length > 20 ? h("li", { class: "muted small" }, `… and ${events.length - 20} more`) : null,
        );
  const legend = events.length ? h("p", { class: "legend-note muted small" }, "Shaded spans mark the anomalies listed below.") : null;
  panel.show(chart.el, legend, anomalyNote);
  return rows;
}

/** Hourly imported energy (kWh) by UTC hour start (seconds), counting only complete hours. */
function hourly(rows: Reading[]): Map<number, number> {
  const sums = new Map<number, { kwh: number; seconds: number }>();
  for (const r of rows) {
    const t = (tsMs(r.readTime) ?? 0) / 1000;
    const interval = r.intervalSeconds || 900;
    if (interval > 3600) continue;
    const hour = Math.floor((t - interval / 2) / 3600) * 3600;
    const s = sums.get(hour) ?? { kwh: 0, seconds: 0 };
    s.kwh += r.importEnergyWh / 1000;
    s.seconds += interval;
    sums.set(hour, s);
  }
  const out = new Map<number, number>();
  for (const [hour, s] of sums) if (s.seconds >= 3600 * 0.99) out.set(hour, s.kwh);
  return out;
}

async function loadForecast(ctx: PageContext, meter: Meter, panel: Panel, charts: Chart[], readings: Promise<Reading[]>): Promise<void> {
  try {
    const [res, rows] = await Promise.all([
      ctx.api.forecast.getForecast({ history: { case: "meterId", value: meter.meterId }, horizonHours: FORECAST_HOURS }, { signal: ctx.signal }),
      readings,
    ]);
    if (ctx.signal.aborted) return;
    if (res.points.length === 0) {
      panel.empty("The forecast service returned no points.");
      return;
    }
    const actual = hourly(rows);
    const fc = new Map(res.points.map((p) => [(tsMs(p.startTime) ?? 0) / 1000, p]));
    const forecastStart = Math.min(...fc.keys());
    const times = [...new Set([...[...actual.keys()].filter((t) => t >= forecastStart - 48 * 3600), ...fc.keys()])].sort((a, b) => a - b);
    const pick = (t: number, f: "p10EnergyKwh" | "p50EnergyKwh" | "p90EnergyKwh") => fc.get(t)?.[f] ?? null;
    const chart = forecastChart(
      times,
      times.map((t) => actual.get(t) ?? null),
      times.map((t) => pick(t, "p10EnergyKwh")),
      times.map((t) => pick(t, "p50EnergyKwh")),
      times.map((t) => pick(t, "p90EnergyKwh")),
      forecastStart,
      res.points.length,
    );
    charts.push(chart);
    const total = res.points.reduce((a, p) => a + (p.p50EnergyKwh ?? 0), 0);
    panel.setNote(`model ${res.modelVersion}`);
    panel.show(
      chart.el,
      h(
        "p",
        { class: "muted small" },
        `Median ${num(total, 1)} kWh over the next ${res.points.length} h; the band spans the 10th to 90th percentile.`,
        res.fallbackReason ? h("span", { class: "fallback", "data-fallback": res.fallbackReason }, ` Answered by ${res.modelVersion}: ${res.fallbackReason}.`) : null,
      ),
    );
  } catch (err) {
    if (ctx.signal.aborted) return;
    const e = describeError(err, "The forecast service");
    panel.error(e.message, e.hint);
  }
}

function currentMonth(timeZone: string): { year: number; month: number } {
  let parts: Intl.DateTimeFormatPart[];
  try {
    parts = new Intl.DateTimeFormat("en-CA", { timeZone: timeZone || "UTC", year: "numeric", month: "numeric" }).formatToParts(new Date());
  } catch {
    parts = new Intl.DateTimeFormat("en-CA", { timeZone: "UTC", year: "numeric", month: "numeric" }).formatToParts(new Date());
  }
  const get = (t: string) => Number(parts.find((p) => p.type === t)?.value);
  return { year: get("year"), month: get("month") };
}

const SLAB = /(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?) kWh|above (\d+(?:\.\d+)?) kWh/;

async function loadProjection(ctx: PageContext, meter: Meter, panel: Panel): Promise<void> {
  const { year, month } = currentMonth(meter.timeZone);
  try {
    const res = await ctx.api.forecast.projectMonthlyUsage({ meterId: meter.meterId, year, month }, { signal: ctx.signal });
    if (ctx.signal.aborted) return;
    panel.setNote(new Date(Date.UTC(year, month - 1, 1)).toLocaleString("en-GB", { month: "long", year: "numeric", timeZone: "UTC" }));
    panel.show(...projectionView(res));
  } catch (err) {
    if (ctx.signal.aborted) return;
    const e = describeError(err, "The forecast service");
    panel.error(e.message, e.hint);
  }
}

function projectionView(res: ProjectMonthlyUsageResponse): Node[] {
  const total = res.projectedTotalEnergyKwh;
  const bounds = new Set<number>();
  for (const l of res.projectedBillLines) {
    const m = SLAB.exec(l.description);
    if (m) bounds.add(Number(m[2] ?? m[3]));
  }
  const boundaries = [...bounds].filter((b) => b > 0).sort((a, b) => a - b);
  const scaleMax = Math.max(res.projectedTotalP90EnergyKwh, total, (boundaries.at(-1) ?? 0) * 1.15, 1);
  const pct = (v: number) => `${Math.min(100, Math.max(0, (100 * v) / scaleMax))}%`;
  const bar = h(
    "div",
    { class: "slab-bar", "data-slabs": boundaries.length, role: "img", "aria-label": `Projected ${num(total, 1)} kWh` },
    h("span", { class: "seg consumed", style: `width:${pct(res.consumedEnergyKwh)}`, title: `consumed ${num(res.consumedEnergyKwh, 1)} kWh` }),
    h("span", { class: "seg rest", style: `left:${pct(res.consumedEnergyKwh)};width:${pct(res.forecastRestEnergyKwh)}`, title: `forecast ${num(res.forecastRestEnergyKwh, 1)} kWh` }),
    h("span", { class: "whisker", style: `left:${pct(res.projectedTotalP10EnergyKwh)};width:calc(${pct(res.projectedTotalP90EnergyKwh)} - ${pct(res.projectedTotalP10EnergyKwh)})`, title: "p10-p90" }),
    boundaries.map((b) => h("span", { class: "slab-line", style: `left:${pct(b)}`, "data-kwh": b }, h("span", { class: "slab-label" }, `${num(b, 0)} kWh`))),
  );
  const out: Node[] = [
    h(
      "div",
      { class: "projection-figures" },
      figure("Consumed so far", `${num(res.consumedEnergyKwh, 1)} kWh`, `to ${when(res.asOfTime)}`),
      figure("Projected month", `${num(total, 1)} kWh`, `p10–p90: ${num(res.projectedTotalP10EnergyKwh, 0)}–${num(res.projectedTotalP90EnergyKwh, 0)} kWh`),
      figure("Projected bill", res.billAvailable ? money(res.projectedBillTotal) : "–", res.billAvailable ? res.tariffId : res.billUnavailableReason),
    ),
    bar,
    h("div", { class: "bar-legend muted small" }, h("span", { class: "key consumed" }), "consumed ", h("span", { class: "key rest" }), "forecast rest ", h("span", { class: "key whisker" }), "p10–p90 ", boundaries.length ? "· lines: slab limits" : ""),
  ];
  if (res.fallbackReason) out.push(h("p", { class: "muted small" }, `Rest of month from ${res.modelVersion}: ${res.fallbackReason}.`));
  if (res.billAvailable) {
    out.push(
      h(
        "table",
        { class: "table bill-lines", "data-lines": res.projectedBillLines.length },
        h("thead", null, h("tr", null, h("th", null, "Line"), h("th", { class: "num" }, "Quantity"), h("th", { class: "num" }, "Rate"), h("th", { class: "num" }, "Amount"))),
        h(
          "tbody",
          null,
          res.projectedBillLines.map((l) =>
            h(
              "tr",
              { class: SLAB.test(l.description) ? "slab" : "" },
              h("td", null, l.description),
              h("td", { class: "num" }, `${l.quantity} ${l.unit}`),
              h("td", { class: "num" }, l.rate ? money(l.rate) : ""),
              h("td", { class: "num" }, money(l.amount)),
            ),
          ),
        ),
        h("tfoot", null, h("tr", null, h("th", { colspan: 3 }, "Projected total"), h("th", { class: "num" }, money(res.projectedBillTotal)))),
      ),
    );
  } else {
    out.push(h("p", { class: "message muted small" }, `No bill projection: ${res.billUnavailableReason || "unavailable"}.`));
  }
  return out;
}

function figure(label: string, value: string, sub: string): HTMLElement {
  return h("div", { class: "figure" }, h("div", { class: "stat-label" }, label), h("div", { class: "figure-value" }, value), h("div", { class: "stat-sub" }, sub));
}

async function loadEfficiency(ctx: PageContext, meter: Meter, panel: Panel): Promise<void> {
  try {
    const r = await ctx.api.forecast.analyzeConsumption({ meterId: meter.meterId }, { signal: ctx.signal });
    if (ctx.signal.aborted) return;
    const score = r.efficiencyScore;
    const grade = score >= 75 ? "good" : score >= 50 ? "fair" : "poor";
    panel.setNote(`${num(r.dataCoveragePercent, 0)}% data coverage`);
    panel.show(
      h(
        "div",
        { class: "efficiency" },
        h("div", { class: `score ${grade}`, style: `--score:${score}`, "data-score": score, role: "img", "aria-label": `Efficiency score ${score} of 100` }, h("span", null, String(score))),
        h("p", { class: "explanation" }, r.efficiencyExplanation),
      ),
      h(
        "dl",
        { class: "facts compact" },
        fact("Mean per day", `${num(r.meanDailyEnergyKwh, 2)} kWh`),
        fact("Base load", `${num(r.baseLoadKw, 2)} kW`),
        fact("Peak hours", r.peakHours.length ? r.peakHours.map((x) => `${String(x).padStart(2, "0")}:00`).join(", ") : "–"),
        fact("Night share", `${num(r.nightSharePercent, 0)}%`),
        fact("Trend", `${r.trendPercentPerMonth >= 0 ? "+" : ""}${num(r.trendPercentPerMonth, 1)}% / month`),
        r.peerComparison && fact("Peers", `${num(r.peerComparison.percentile, 0)}th percentile of ${r.peerComparison.peerCount} (${r.peerComparison.peerGroup})`),
        r.pastComparison && fact("Vs. past", `${r.pastComparison.changePercent >= 0 ? "+" : ""}${num(r.pastComparison.changePercent, 1)}%`),
      ),
      r.recommendations.length
        ? h(
            "ul",
            { class: "recommendations", "data-count": r.recommendations.length },
            r.recommendations.map((rec) =>
              h("li", { "data-code": rec.code }, h("span", null, rec.text), h("span", { class: "saving" }, `≈ ${num(rec.estimatedSavingKwhPerMonth, 0)} kWh/month`)),
            ),
          )
        : h("p", { class: "muted small" }, "No recommendations: nothing stands out."),
    );
  } catch (err) {
    if (ctx.signal.aborted) return;
    const e = describeError(err, "The forecast service");
    panel.error(e.message, e.hint);
  }
}

async function loadAlerts(ctx: PageContext, meter: Meter, panel: Panel): Promise<void> {
  try {
    const res = await ctx.api.alerts.listAlerts({ filter: { meterIds: [meter.meterId] }, pageSize: 20 }, { signal: ctx.signal });
    if (ctx.signal.aborted) return;
    if (res.alerts.length === 0) {
      panel.empty("No alerts on this meter.");
      return;
    }
    panel.show(
      h(
        "ul",
        { class: "activity", "data-count": res.alerts.length },
        res.alerts.map((a) =>
          h(
            "li",
            { "data-alert-id": a.alertId, "data-state": enumKey(AlertState, a.state) },
            h("span", { class: `badge sev-${enumKey(Severity, a.severity)}` }, enumLabel(Severity, a.severity)),
            h("span", { class: "activity-text" }, a.summary),
            h("span", { class: `state state-${enumKey(AlertState, a.state)}` }, enumLabel(AlertState, a.state)),
            h("span", { class: "muted small" }, when(a.lastSeenTime)),
          ),
        ),
      ),
    );
  } catch (err) {
    if (ctx.signal.aborted) return;
    const e = describeError(err, "The alerts service");
    panel.error(e.message, e.hint);
  }
}
