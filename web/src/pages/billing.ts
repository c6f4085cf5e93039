// Billing: the tariffs in effect (ListTariffs), a bill quote form (QuoteBill) showing the itemised
// lines, and the stored bills of a meter (ListBills).

import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { BillLineKind, BillStatus, type Bill, type Tariff } from "../../gen/metermesh/billing/v1/billing_pb";
import { MeterCategory } from "../../gen/metermesh/common/v1/common_pb";
import { describeError } from "../api";
import type { Page, PageContext } from "../context";
import { h, Panel, setChildren } from "../dom";
import { decimal, enumKey, enumLabel, isoDate, money, num, period, when } from "../format";
import { loadMeters } from "../meters";

export const billingPage: Page = (root, ctx) => {
  const tariffsPanel = new Panel("Tariffs in effect", "tariffs-panel");
  const quotePanel = new Panel("Quote a bill", "quote-panel");
  const billsPanel = new Panel("Bills per meter", "bills-panel", "wide");
  setChildren(root, h("div", { class: "page-head" }, h("h1", null, "Billing")), h("div", { class: "grid two" }, quotePanel.el, tariffsPanel.el), billsPanel.el);

  const tariffs = ctx.api.billing.listTariffs({ pageSize: 1000 }, { signal: ctx.signal }).then((res) => res.tariffs);
  tariffs.then(
    (list) => {
      if (ctx.signal.aborted) return;
      renderTariffs(tariffsPanel, list);
      renderQuoteForm(ctx, quotePanel, list);
    },
    (err: unknown) => {
      if (ctx.signal.aborted) return;
      const e = describeError(err, "The billing service");
      tariffsPanel.error(e.message, e.hint);
      quotePanel.error("Quotes need the tariff list.", e.message);
    },
  );
  // Bills name their days in their tariff's time zone.
  const zones = tariffs.then(
    (list) => new Map(list.map((t) => [t.tariffId, t.timeZone])),
    () => new Map<string, string>(),
  );
  void renderBills(ctx, billsPanel, zones);
};

function renderTariffs(panel: Panel, tariffs: Tariff[]): void {
  if (tariffs.length === 0) {
    panel.empty("No tariff is in effect today.");
    return;
  }
  panel.setNote(`${tariffs.length} tariffs`);
  panel.show(
    h(
      "ul",
      { class: "tariffs", "data-count": tariffs.length },
      tariffs.map((t) =>
        h(
          "li",
          { "data-tariff-id": t.tariffId },
          h("details", null,
            h("summary", null, h("strong", null, t.name), h("span", { class: "muted small" }, ` ${t.tariffId} · ${t.version} · ${enumLabel(MeterCategory, t.category)} · ${t.currencyCode}`)),
            h("p", null, t.description),
            h("dl", { class: "facts compact" },
              h("dt", null, "Utility"), h("dd", null, t.utility),
              h("dt", null, "In effect"), h("dd", null, `${t.effectiveStartDate} – ${t.effectiveEndDate || "open-ended"}`),
              h("dt", null, "Time zone"), h("dd", null, t.timeZone),
              t.timeOfUsePeriods.length ? [h("dt", null, "Time of use"), h("dd", null, t.timeOfUsePeriods.join(", "))] : [],
            ),
            h("ul", { class: "components" }, t.components.map((c) => h("li", null, h("strong", null, c.name), `: ${c.description}`))),
            h("p", { class: "muted small" }, "Source: ", t.sourceUrl ? h("a", { href: t.sourceUrl, target: "_blank", rel: "noopener noreferrer" }, t.sourceCitation) : t.sourceCitation),
          ),
        ),
      ),
    ),
  );
}

function field(label: string, input: HTMLElement, hint = ""): HTMLElement {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), input, hint ? h("span", { class: "field-hint" }, hint) : null);
}

function numberInput(name: string, value: number, step = "any"): HTMLInputElement {
  return h("input", { type: "number", name, value, min: 0, step, required: true, inputmode: "decimal" });
}

function renderQuoteForm(ctx: PageContext, panel: Panel, tariffs: Tariff[]): void {
  if (tariffs.length === 0) {
    panel.empty("No tariff to quote on.");
    return;
  }
  const now = new Date();
  const monthStart = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1);
  const monthEnd = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1);
  const tariffSelect = h("select", { name: "tariff", id: "quote-tariff", required: true }, tariffs.map((t) => h("option", { value: t.tariffId }, `${t.name} (${t.tariffId})`)));
  const start = h("input", { type: "date", name: "start", value: isoDate(monthStart), required: true });
  const end = h("input", { type: "date", name: "end", value: isoDate(monthEnd), required: true });
  const importKwh = numberInput("import_kwh", 250);
  const exportKwh = numberInput("export_kwh", 0);
  const loadKw = numberInput("load_kw", 2);
  const loadHp = numberInput("load_hp", 0);
  const touBox = h("fieldset", { class: "tou", hidden: true });
  const result = h("div", { class: "quote-result", id: "quote-result", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "btn primary" }, "Quote");

  const selected = () => tariffs.find((t) => t.tariffId === tariffSelect.value)!;
  const touInputs = new Map<string, HTMLInputElement>();
  const syncTou = () => {
    const t = selected();
    touInputs.clear();
    if (t.timeOfUsePeriods.length === 0) {
      touBox.hidden = true;
      setChildren(touBox);
      return;
    }
    touBox.hidden = false;
    // An even split to start from, the last period taking the rounding so that they add up exactly.
    const total = Number(importKwh.value || 0);
    const n = t.timeOfUsePeriods.length;
    const share = Math.floor((total / n) * 1000) / 1000;
    setChildren(
      touBox,
      h("legend", null, "Import by time-of-use period (kWh; must add up to the import)"),
      t.timeOfUsePeriods.map((p, i) => {
        const value = i < n - 1 ? share : Math.round((total - share * (n - 1)) * 1000) / 1000;
        const input = numberInput(`tou_${p}`, value);
        touInputs.set(p, input);
        return field(p.replace(/_/g, " "), input);
      }),
    );
  };
  tariffSelect.addEventListener("change", syncTou);
  importKwh.addEventListener("change", syncTou);
  syncTou();

  const form = h(
    "form",
    { class: "quote-form", id: "quote-form" },
    field("Tariff", tariffSelect),
    h("div", { class: "row" }, field("First day", start), field("Day after the last", end, "the period is [first, end)")),
    h("div", { class: "row" }, field("Imported", importKwh, "kWh"), field("Exported", exportKwh, "kWh (net metering)")),
    h("div", { class: "row" }, field("Sanctioned load", loadKw, "kW"), field("Connected pump load", loadHp, "HP (unmetered agriculture)")),
    touBox,
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    void quote();
  });

  const quote = async () => {
    submit.disabled = true;
    result.dataset.state = "loading";
    setChildren(result, h("div", { class: "loading" }, h("span", { class: "spinner" }), "Pricing…"));
    try {
      const startMs = Date.parse(`${start.value}T00:00:00Z`);
      const endMs = Date.parse(`${end.value}T00:00:00Z`);
      const res = await ctx.api.billing.quoteBill(
        {
          tariffId: tariffSelect.value,
          billingPeriod: { startTime: timestampFromMs(startMs), endTime: timestampFromMs(endMs) },
          usage: {
            importEnergyKwh: Number(importKwh.value),
            exportEnergyKwh: Number(exportKwh.value),
            sanctionedLoadKw: Number(loadKw.value),
            connectedLoadHp: Number(loadHp.value),
            timeOfUse: [...touInputs].map(([period, input]) => ({ period, importEnergyKwh: Number(input.value) })),
          },
        },
        { signal: ctx.signal },
      );
      if (ctx.signal.aborted || !res.bill) return;
      result.dataset.state = "ready";
      setChildren(result, billView(res.bill, selected().timeZone));
    } catch (err) {
      if (ctx.signal.aborted) return;
      result.dataset.state = "error";
      const e = describeError(err, "The billing service");
      setChildren(result, h("div", { class: "message error", role: "alert" }, h("strong", null, e.message), e.hint ? h("p", null, e.hint) : null));
    } finally {
      submit.disabled = false;
    }
  };
  panel.show(form, result);
}

/** An itemised bill: its lines with quantity, rate and amount, then subtotal and total. */
export function billView(bill: Bill, timeZone: string): HTMLElement {
  return h(
    "div",
    { class: "bill", "data-lines": bill.lines.length, "data-total": bill.total?.amount ?? "" },
    h(
      "p",
      { class: "muted small" },
      `${bill.tariffId} ${bill.tariffVersions.join(" + ")} · ${period(bill.billingPeriod, timeZone)} · import ${decimal(bill.importEnergyKwh)} kWh` +
        (bill.exportEnergyKwh && Number(bill.exportEnergyKwh) ? ` · export ${decimal(bill.exportEnergyKwh)} kWh` : ""),
    ),
    h(
      "table",
      { class: "table bill-lines" },
      h("thead", null, h("tr", null, h("th", null, "Line"), h("th", { class: "num" }, "Quantity"), h("th", { class: "num" }, "Rate"), h("th", { class: "num" }, "Amount"))),
      h(
        "tbody",
        null,
        bill.lines.map((l) =>
          h(
            "tr",
            { class: `bill-line kind-${enumKey(BillLineKind, l.kind)}`, "data-kind": enumKey(BillLineKind, l.kind) },
            h("td", null, l.description, l.appliesTo ? h("div", { class: "muted small" }, `on ${l.appliesTo}`) : null),
            h("td", { class: "num" }, `${decimal(l.quantity)} ${l.unit}`),
            h("td", { class: "num" }, l.ratePercent ? `${l.ratePercent}%` : l.rate ? money(l.rate) : ""),
            h("td", { class: "num" }, money(l.amount)),
          ),
        ),
      ),
      h(
        "tfoot",
        null,
        h("tr", null, h("td", { colspan: 3 }, "Subtotal (before duty, tax and rounding)"), h("td", { class: "num" }, money(bill.subtotal))),
        h("tr", { class: "total" }, h("th", { colspan: 3 }, "Total"), h("th", { class: "num", id: "bill-total" }, money(bill.total))),
      ),
    ),
  );
}

async function renderBills(ctx: PageContext, panel: Panel, zones: Promise<Map<string, string>>): Promise<void> {
  let meterIds: string[];
  try {
    meterIds = (await loadMeters(ctx)).meters.map((m) => m.meterId);
  } catch (err) {
    if (ctx.signal.aborted) return;
    // Without the meter list, a meter id can still be typed in.
    meterIds = ctx.session.meters;
    panel.setNote(`meter list unavailable: ${describeError(err, "The ingest service").message}`);
  }
  if (ctx.signal.aborted) return;
  const list = h("datalist", { id: "bill-meters" }, meterIds.slice(0, 1000).map((m) => h("option", { value: m })));
  const meterInput = h("input", { type: "text", name: "meter", list: "bill-meters", placeholder: "Meter id", value: meterIds[0] ?? "", required: true, class: "mono" });
  const out = h("div", { id: "bills-result", "aria-live": "polite" });
  const form = h("form", { class: "inline-form" }, field("Meter", meterInput), list, h("button", { type: "submit", class: "btn" }, "Show bills"));
  const show = async () => {
    const meterId = meterInput.value.trim();
    if (!meterId) return;
    setChildren(out, h("div", { class: "loading" }, h("span", { class: "spinner" }), "Loading bills…"));
    try {
      const [res, zone] = await Promise.all([ctx.api.billing.listBills({ meterId, pageSize: 24 }, { signal: ctx.signal }), zones]);
      if (ctx.signal.aborted) return;
      if (res.bills.length === 0) {
        setChildren(out, h("p", { class: "message muted", "data-count": 0 }, `No bills stored for ${meterId} yet: bills are issued by ComputeBill or a billing cycle.`));
        return;
      }
      setChildren(
        out,
        h(
          "table",
          { class: "table bills-table", "data-count": res.bills.length },
          h("thead", null, h("tr", null, h("th", null, "Period"), h("th", null, "Tariff"), h("th", { class: "num" }, "Import"), h("th", { class: "num" }, "Coverage"), h("th", { class: "num" }, "Total"), h("th", null, "Status"), h("th", null, "Issued"))),
          h(
            "tbody",
            null,
            res.bills.map((b) => {
              const tz = zone.get(b.tariffId) ?? "UTC";
              const detail = h("tr", { class: "bill-detail", hidden: true }, h("td", { colspan: 7 }, billView(b, tz)));
              const row = h(
                "tr",
                { "data-bill-id": b.billId, class: "clickable", tabindex: 0, title: "Show the lines" },
                h("td", null, period(b.billingPeriod, tz)),
                h("td", null, b.tariffId),
                h("td", { class: "num" }, `${decimal(b.importEnergyKwh)} kWh`),
                h("td", { class: "num" }, `${num(b.dataCoveragePercent, 0)}%`),
                h("td", { class: "num" }, money(b.total)),
                h("td", null, enumLabel(BillStatus, b.status)),
                h("td", null, when(b.issueTime)),
              );
              const toggle = () => (detail.hidden = !detail.hidden);
              row.addEventListener("click", toggle);
              row.addEventListener("keydown", (e) => {
                if (e.key === "Enter") toggle();
              });
              return [row, detail];
            }),
          ),
        ),
      );
    } catch (err) {
      if (ctx.signal.aborted) return;
      const e = describeError(err, "The billing service");
      setChildren(out, h("div", { class: "message error", role: "alert" }, h("strong", null, e.message), e.hint ? h("p", null, e.hint) : null));
    }
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    void show();
  });
  panel.show(form, out);
  if (meterInput.value) void show();
}
