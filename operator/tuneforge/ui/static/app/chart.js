// Line charts of a job's metrics, drawn by uPlot (canvas: thousands of steps stay fast).
import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";

import { html } from "./html.js";
import { number } from "./format.js";

const COLOURS = ["#1f4fd1", "#c2410c", "#15803d"];

/** Axis labels that stay readable from learning rates (2e-4) to token counts. */
function tick(value) {
  const size = Math.abs(value);
  if (value === 0) return "0";
  if (size < 0.01 || size >= 1e5) return value.toExponential(1);
  return String(Number(value.toPrecision(3)));
}

function options(width, lines, yLabel) {
  return {
    width,
    height: 220,
    scales: { x: { time: false } },
    legend: { show: lines.length > 1 },
    axes: [{ label: "step" }, { label: yLabel, size: 64, values: (plot, splits) => splits.map(tick) }],
    series: [
      { label: "step" },
      ...lines.map((label, index) => ({ label, stroke: COLOURS[index % COLOURS.length], width: 2, spanGaps: true })),
    ],
  };
}

/**
 * `steps` are the x values, `lines` maps a series name to its y values (null where a step
 * has none). The figure's caption states the latest values, for screen readers and for
 * anyone who wants the number rather than the shape.
 */
export function LineChart({ title, yLabel, steps, lines }) {
  const box = useRef(null);
  const plot = useRef(null);
  const names = Object.keys(lines);
  const data = [steps, ...names.map((name) => lines[name])];
  const shape = names.join("|");

  useEffect(() => {
    const element = box.current;
    plot.current = new uPlot(options(element.clientWidth || 480, names, yLabel), data, element);
    const resize = new ResizeObserver(() => plot.current.setSize({ width: element.clientWidth, height: 220 }));
    resize.observe(element);
    return () => {
      resize.disconnect();
      plot.current.destroy();
      plot.current = null;
    };
  }, [shape, yLabel]);

  useEffect(() => {
    if (plot.current) plot.current.setData(data);
  });

  const latest = names.map((name) => {
    const values = lines[name].filter((value) => value !== null && value !== undefined);
    return `${name} ${values.length ? number(values[values.length - 1]) : "—"}`;
  });
  return html`<figure class="chart" data-points=${steps.length}>
    <figcaption><strong>${title}</strong> <span class="muted small">${steps.length ? latest.join(" · ") : "no points yet"}</span></figcaption>
    <div ref=${box} class="chart-canvas" role="img" aria-label=${`${title}: ${latest.join(", ")}`}></div>
  </figure>`;
}
