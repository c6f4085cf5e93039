// uPlot charts: a responsive wrapper and the three chart shapes the dashboard draws (readings with
// anomaly marks, a forecast with its p10-p90 band, a small rate sparkline).

import uPlot from "uplot";
import { h } from "./dom";

export const COLORS = {
  energy: "#2563eb",
  energyFill: "rgba(37, 99, 235, 0.12)",
  voltage: "#d97706",
  band: "rgba(124, 58, 237, 0.16)",
  median: "#7c3aed",
  quantile: "rgba(124, 58, 237, 0.45)",
  actual: "#0f172a",
  anomaly: "rgba(220, 38, 38, 0.16)",
  anomalyEdge: "#dc2626",
  now: "#64748b",
  rate: "#059669",
  rateFill: "rgba(5, 150, 105, 0.12)",
};

const AXIS = { stroke: "#475569", grid: { stroke: "#e2e8f0", width: 1 }, ticks: { stroke: "#cbd5e1", width: 1 } };

export interface Chart {
  el: HTMLElement;
  plot: uPlot;
  destroy(): void;
}

/** A uPlot that follows its container's width. The container carries data-points for tests and tools. */
function responsive(opts: Omit<uPlot.Options, "width">, data: uPlot.AlignedData, cls: string, points: number): Chart {
  const el = h("div", { class: `chart ${cls}`, "data-points": points });
  const plot = new uPlot({ ...opts, width: 600 } as uPlot.Options, data, el);
  let lastWidth = 0;
  const ro = new ResizeObserver((entries) => {
    const width = Math.floor(entries[0].contentRect.width);
    if (width > 0 && width !== lastWidth) {
      lastWidth = width;
      plot.setSize({ width, height: opts.height });
    }
  });
  ro.observe(el);
  return {
    el,
    plot,
    destroy() {
      ro.disconnect();
      plot.destroy();
    },
  };
}

export interface Span {
  startSec: number;
  endSec: number;
  color: string;
}

/** Shades time spans across the plot (anomalies), at least a few pixels wide so a single reading shows. */
function spansPlugin(spans: Span[]): uPlot.Plugin {
  return {
    hooks: {
      draw: [
        (u: uPlot) => {
          const { ctx } = u;
          const { top, height, left, width } = u.bbox;
          const minW = 4 * devicePixelRatio;
          ctx.save();
          for (const s of spans) {
            let x0 = u.valToPos(s.startSec, "x", true);
            let x1 = u.valToPos(s.endSec, "x", true);
            if (x1 - x0 < minW) {
              const mid = (x0 + x1) / 2;
              x0 = mid - minW / 2;
              x1 = mid + minW / 2;
            }
            x0 = Math.max(x0, left);
            x1 = Math.min(x1, left + width);
            if (x1 <= x0) continue;
            ctx.fillStyle = COLORS.anomaly;
            ctx.fillRect(x0, top, x1 - x0, height);
            ctx.fillStyle = s.color;
            ctx.fillRect(x0, top, x1 - x0, 4 * devicePixelRatio);
          }
          ctx.restore();
        },
      ],
    },
  };
}

/** A dashed vertical line at one time (where the forecast begins). */
function markerPlugin(atSec: number, label: string): uPlot.Plugin {
  return {
    hooks: {
      draw: [
        (u: uPlot) => {
          const x = u.valToPos(atSec, "x", true);
          const { top, height, left, width } = u.bbox;
          if (x < left || x > left + width) return;
          const { ctx } = u;
          ctx.save();
          ctx.strokeStyle = COLORS.now;
          ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
          ctx.lineWidth = devicePixelRatio;
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
          ctx.setLineDash([]);
          ctx.fillStyle = COLORS.now;
          ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
          ctx.fillText(label, x + 4 * devicePixelRatio, top + 12 * devicePixelRatio);
          ctx.restore();
        },
      ],
    },
  };
}

const NO_POINTS = { show: false };
const COMPACT = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });
const stepped = uPlot.paths.stepped ? uPlot.paths.stepped({ align: -1 }) : undefined;

export function readingsChart(
  times: number[],
  energyWh: number[],
  voltage: (number | null)[] | null,
  spans: Span[],
): Chart {
  const series: uPlot.Series[] = [
    {},
    {
      label: "Import energy",
      scale: "Wh",
      stroke: COLORS.energy,
      fill: COLORS.energyFill,
      width: 1.5,
      paths: stepped,
      points: NO_POINTS,
      value: (_u, v) => (v === null ? "–" : `${v.toFixed(1)} Wh`),
    },
  ];
  const axes: uPlot.Axis[] = [{ ...AXIS }, { ...AXIS, scale: "Wh", label: "Wh per interval", size: 60 }];
  const data: (number | null)[][] = [times, energyWh];
  if (voltage) {
    series.push({
      label: "Voltage",
      scale: "V",
      stroke: COLORS.voltage,
      width: 1.5,
      spanGaps: false,
      points: NO_POINTS,
      value: (_u, v) => (v === null ? "–" : `${v.toFixed(1)} V`),
    });
    axes.push({ ...AXIS, scale: "V", side: 1, label: "Volts", size: 50, grid: { show: false } });
    data.push(voltage);
  }
  const c = responsive(
    {
      height: 280,
      series,
      axes,
      scales: { x: { time: true }, Wh: { range: (_u, min, max) => [Math.min(0, min), max * 1.1 || 1] } },
      plugins: [spansPlugin(spans)],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    },
    data as uPlot.AlignedData,
    "readings-chart",
    times.length,
  );
  c.el.dataset.anomalies = String(spans.length);
  c.el.dataset.series = voltage ? "import,voltage" : "import";
  return c;
}

export function forecastChart(
  times: number[],
  actual: (number | null)[],
  p10: (number | null)[],
  p50: (number | null)[],
  p90: (number | null)[],
  forecastStartSec: number,
  forecastPoints: number,
): Chart {
  const kwh = (_u: uPlot, v: number | null) => (v === null ? "–" : `${v.toFixed(2)} kWh`);
  return responsive(
    {
      height: 260,
      series: [
        {},
        { label: "Actual", stroke: COLORS.actual, width: 1.5, paths: stepped, points: NO_POINTS, value: kwh },
        { label: "p10", stroke: COLORS.quantile, width: 1, dash: [3, 3], points: NO_POINTS, value: kwh },
        { label: "Forecast p50", stroke: COLORS.median, width: 2, points: NO_POINTS, value: kwh },
        { label: "p90", stroke: COLORS.quantile, width: 1, dash: [3, 3], points: NO_POINTS, value: kwh },
      ],
      bands: [{ series: [4, 2], fill: COLORS.band }],
      axes: [{ ...AXIS }, { ...AXIS, label: "kWh per hour", size: 60 }],
      scales: { x: { time: true }, y: { range: (_u, min, max) => [Math.min(0, min), max * 1.1 || 1] } },
      plugins: [markerPlugin(forecastStartSec, "forecast")],
      legend: { live: true },
    },
    [times, actual, p10, p50, p90] as uPlot.AlignedData,
    "forecast-chart",
    forecastPoints,
  );
}

export function rateChart(times: number[], rates: number[]): Chart {
  return responsive(
    {
      height: 140,
      series: [
        {},
        {
          label: "Readings/s",
          stroke: COLORS.rate,
          fill: COLORS.rateFill,
          width: 1.5,
          value: (_u, v) => (v === null ? "–" : v.toFixed(1)),
        },
      ],
      axes: [{ ...AXIS }, { ...AXIS, size: 56, values: (_u, splits) => splits.map((v) => COMPACT.format(v)) }],
      // At least the last five minutes, so a first point does not stretch the axis over years.
      scales: {
        x: { time: true, range: (_u, min, max) => [Math.min(min, max - 300), max] },
        y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.2)] },
      },
      legend: { show: false },
      cursor: { show: false },
    },
    [times, rates],
    "rate-chart",
    times.length,
  );
}

/** Updates a chart's data and its data-points attribute. */
export function setData(c: Chart, data: uPlot.AlignedData): void {
  c.plot.setData(data);
  c.el.dataset.points = String(data[0].length);
}
