// Formatting for people: numbers, times, money and the contracts' enum values.

import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Money, TimeRange } from "../gen/metermesh/common/v1/common_pb";

/** "VOLTAGE_SURGE" -> "Voltage surge": an enum value's name (prefix already stripped by protobuf-es). */
export function enumLabel(e: Record<number, string>, value: number): string {
  const name = e[value];
  if (name === undefined) return `unknown (${value})`;
  const words = name.toLowerCase().replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** The lowercase enum value name, for CSS classes and data attributes: "critical", "open". */
export function enumKey(e: Record<number, string>, value: number): string {
  return (e[value] ?? String(value)).toLowerCase();
}

const numberFormats = new Map<number, Intl.NumberFormat>();

export function num(value: number, digits = 1): string {
  if (!Number.isFinite(value)) return "–";
  let f = numberFormats.get(digits);
  if (!f) {
    f = new Intl.NumberFormat("en", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
    numberFormats.set(digits, f);
  }
  return f.format(value);
}

export function tsMs(t: Timestamp | undefined): number | null {
  return t ? timestampMs(t) : null;
}

const dateTime = new Intl.DateTimeFormat("en-GB", {
  year: "numeric",
  month: "short",
  day: "2-digit",
  hour: "2-digit",
  minute: "2-digit",
});
const timeOnly = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit" });

export function when(t: Timestamp | undefined): string {
  const ms = tsMs(t);
  return ms === null ? "–" : dateTime.format(ms);
}

const shortDate = new Intl.DateTimeFormat("en-GB", { month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit" });

/** The time alone within the last day, else day and time: for tight table columns. */
export function short(t: Timestamp | undefined, now = Date.now()): string {
  const ms = tsMs(t);
  if (ms === null) return "–";
  return Math.abs(now - ms) < 86_400_000 ? timeOnly.format(ms) : shortDate.format(ms);
}

export function clock(ms: number): string {
  return timeOnly.format(ms);
}

/**
 * A billing period [start, end) of local midnights as its first and last day in the tariff's time
 * zone, e.g. "1 Oct 2026 – 31 Oct 2026".
 */
export function period(range: TimeRange | undefined, timeZone = "UTC"): string {
  const start = tsMs(range?.startTime);
  const end = tsMs(range?.endTime);
  if (start === null || end === null) return "–";
  let f: Intl.DateTimeFormat;
  try {
    f = new Intl.DateTimeFormat("en-GB", { year: "numeric", month: "short", day: "numeric", timeZone });
  } catch {
    f = new Intl.DateTimeFormat("en-GB", { year: "numeric", month: "short", day: "numeric", timeZone: "UTC" });
  }
  return `${f.format(start)} – ${f.format(end - 1)}`;
}

/** "12 s ago", "5 min ago", "3 h ago", "2 d ago". */
export function ago(ms: number | null, now = Date.now()): string {
  if (ms === null) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** An exact decimal amount with its currency, grouped for reading but never rounded. */
export function money(m: Money | undefined): string {
  if (!m) return "–";
  return `${m.currencyCode} ${decimal(m.amount)}`;
}

/** Groups the integer part of a decimal string in thousands, keeping every digit it has. */
export function decimal(s: string): string {
  const match = /^(-?)(\d+)(\.\d+)?$/.exec(s.trim());
  if (!match) return s;
  const [, sign, int, frac = ""] = match;
  return sign + int.replace(/\B(?=(\d{3})+(?!\d))/g, ",") + frac;
}

/** A UTC instant's date as YYYY-MM-DD (an <input type=date> value). */
export function isoDate(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}
