//! The leaderboard's charts as hand-written SVG: no font backend, no script, no external
//! resource, so they render the same inline in the HTML page, in a browser, or saved as files.
//!
//! Methods keep one colour and marker shape across every chart (their position in
//! [`Leaderboard::methods`]), from the Okabe–Ito palette, which stays distinguishable with the
//! common colour-vision deficiencies; the shapes tell methods apart in greyscale too. Every chart
//! and every mark carries a `<title>`, read by screen readers and shown as a tooltip.

use std::fmt::Write as _;

use idforge_core::html::escape;

use super::markdown::{
    CLIP_T, FACE_SIM, categories, find_metric, metric_format, question_title, rating_format,
    rating_interval,
};
use super::{Estimate, Leaderboard, MethodRow, MetricInfo, SetResult};
use crate::ratings::{ArenaResults, QuestionRatings};

/// Okabe & Ito's colour-blind-safe palette, strongest contrast on white first.
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#F0E442",
];

/// Marker shapes, cycled with a different period than the palette.
#[derive(Clone, Copy)]
enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
}

const SHAPES: [Shape; 5] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Diamond,
    Shape::Cross,
];

const FONT: &str =
    "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif";
const INK: &str = "#1f2328";
const MUTED: &str = "#59636e";
const GRID: &str = "#e6e8eb";
const AXIS: &str = "#8c959f";

/// The colour and shape of the method called `name`, fixed by its place in `lb.methods`.
fn style(lb: &Leaderboard, name: &str) -> (&'static str, Shape) {
    let i = lb
        .methods
        .iter()
        .position(|m| m.name == name)
        .unwrap_or(lb.methods.len());
    (PALETTE[i % PALETTE.len()], SHAPES[i % SHAPES.len()])
}

/// Whether the method called `name` is a built-in baseline (drawn hollow).
fn is_builtin(lb: &Leaderboard, name: &str) -> bool {
    lb.methods.iter().any(|m| m.name == name && m.builtin)
}

/// A marker of `shape` centred on (`x`, `y`); hollow markers are for baselines.
fn marker(shape: Shape, x: f64, y: f64, r: f64, colour: &str, hollow: bool) -> String {
    let paint = if hollow {
        format!("fill=\"#fff\" stroke=\"{colour}\" stroke-width=\"2\"")
    } else {
        format!("fill=\"{colour}\" stroke=\"#fff\" stroke-width=\"1\"")
    };
    match shape {
        Shape::Circle => format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r:.1}\" {paint}/>"),
        Shape::Square => {
            let s = r * 1.7;
            format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{s:.1}\" height=\"{s:.1}\" {paint}/>",
                x - s / 2.0,
                y - s / 2.0
            )
        }
        Shape::Triangle => {
            let h = r * 1.25;
            format!(
                "<path d=\"M{x:.1} {:.1}L{:.1} {:.1}L{:.1} {:.1}Z\" {paint}/>",
                y - h,
                x + h,
                y + h * 0.8,
                x - h,
                y + h * 0.8
            )
        }
        Shape::Diamond => {
            let h = r * 1.35;
            format!(
                "<path d=\"M{x:.1} {:.1}L{:.1} {y:.1}L{x:.1} {:.1}L{:.1} {y:.1}Z\" {paint}/>",
                y - h,
                x + h,
                y + h,
                x - h
            )
        }
        Shape::Cross => {
            let (h, t) = (r * 1.2, r * 0.42);
            format!(
                "<path d=\"M{:.1} {:.1}H{:.1}V{:.1}H{:.1}V{:.1}H{:.1}V{:.1}H{:.1}V{:.1}H{:.1}V{:.1}H{:.1}Z\" {paint}/>",
                x - t,
                y - h,
                x + t,
                y - t,
                x + h,
                y + t,
                x + t,
                y + h,
                x - t,
                y + t,
                x - h,
                y - t,
                x - t
            )
        }
    }
}

/// A linear axis over a "nice" domain (ends on tick multiples).
#[derive(Clone, Copy, Debug)]
struct Axis {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
    step: f64,
}

impl Axis {
    /// An axis covering `lo..=hi` mapped onto pixels `r0..r1`, with about `ticks` ticks.
    fn new(lo: f64, hi: f64, r0: f64, r1: f64, ticks: f64) -> Self {
        let (mut lo, mut hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        if !(lo.is_finite() && hi.is_finite()) {
            (lo, hi) = (0.0, 1.0);
        }
        if hi - lo < 1e-12 {
            let pad = if lo.abs() > 1e-12 {
                lo.abs() * 0.1
            } else {
                1.0
            };
            lo -= pad;
            hi += pad;
        }
        let raw = (hi - lo) / ticks.max(1.0);
        let mag = 10f64.powf(raw.log10().floor());
        let norm = raw / mag;
        let step = mag
            * if norm < 1.5 {
                1.0
            } else if norm < 3.0 {
                2.0
            } else if norm < 7.0 {
                5.0
            } else {
                10.0
            };
        // The small slack keeps a bound that sits on a tick (0, say) from gaining a tick.
        let d0 = (lo / step + 1e-9).floor() * step;
        let d1 = (hi / step - 1e-9).ceil() * step;
        Axis {
            d0,
            d1,
            r0,
            r1,
            step,
        }
    }

    fn map(&self, v: f64) -> f64 {
        self.r0 + (v - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0)
    }

    fn ticks(&self) -> Vec<f64> {
        let n = ((self.d1 - self.d0) / self.step).round() as i64;
        (0..=n).map(|i| self.d0 + i as f64 * self.step).collect()
    }

    /// A tick label with as many decimals as the step needs.
    fn label(&self, v: f64) -> String {
        let decimals = (-self.step.log10()).ceil().clamp(0.0, 6.0) as usize;
        let s = format!("{v:.decimals$}");
        if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
            s[1..].to_string()
        } else {
            s
        }
    }
}

/// Rough width of `text` in pixels at `size` px, for layout (no font metrics available).
fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.58
}

/// `text` cut to about `px` pixels at `size` px, with an ellipsis.
fn truncate(text: &str, px: f64, size: f64) -> String {
    let max = ((px / (size * 0.58)).floor() as usize).max(2);
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max - 1).collect();
        s.push('…');
        s
    }
}

/// The opening of a chart: root element, accessible title and description, white background.
fn open(w: f64, h: f64, title: &str, desc: &str, class: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart {class}\" viewBox=\"0 0 {w:.0} {h:.0}\" \
         width=\"{w:.0}\" height=\"{h:.0}\" role=\"img\" aria-label=\"{}\" font-family=\"{FONT}\" \
         font-size=\"12\" fill=\"{INK}\">\n<title>{}</title>\n<desc>{}</desc>\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n",
        escape(title),
        escape(title),
        escape(desc)
    )
}

/// A chart heading at the top left.
fn heading(title: &str, note: Option<&str>) -> String {
    let mut s = format!(
        "<text class=\"chart-title\" x=\"16\" y=\"24\" font-size=\"15\" font-weight=\"600\">{}</text>\n",
        escape(title)
    );
    if let Some(note) = note {
        let _ = writeln!(
            s,
            "<text class=\"chart-note\" x=\"16\" y=\"44\" font-size=\"12\" font-style=\"italic\" fill=\"{MUTED}\">{}</text>",
            escape(note)
        );
    }
    s
}

/// A value axis: grid lines and tick labels across the plot, and the axis title.
fn value_axis_y(axis: &Axis, x0: f64, x1: f64, title: &str) -> String {
    let mut s = String::from("<g class=\"axis axis-y\">\n");
    for t in axis.ticks() {
        let y = axis.map(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x0:.1}\" x2=\"{x1:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{GRID}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\" fill=\"{MUTED}\">{}</text>",
            x0 - 6.0,
            y + 4.0,
            axis.label(t)
        );
    }
    let (top, bottom) = (axis.r1.min(axis.r0), axis.r1.max(axis.r0));
    let _ = writeln!(
        s,
        "<line x1=\"{x0:.1}\" x2=\"{x0:.1}\" y1=\"{top:.1}\" y2=\"{bottom:.1}\" stroke=\"{AXIS}\"/>\
         <text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\" font-weight=\"600\">{}</text>\n</g>",
        (top + bottom) / 2.0,
        escape(title)
    );
    s
}

/// A value axis along the bottom.
fn value_axis_x(axis: &Axis, y0: f64, y1: f64, title: &str) -> String {
    let mut s = String::from("<g class=\"axis axis-x\">\n");
    for t in axis.ticks() {
        let x = axis.map(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y0:.1}\" y2=\"{y1:.1}\" stroke=\"{GRID}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{MUTED}\">{}</text>",
            y1 + 16.0,
            axis.label(t)
        );
    }
    let (left, right) = (axis.r0.min(axis.r1), axis.r0.max(axis.r1));
    let _ = writeln!(
        s,
        "<line x1=\"{left:.1}\" x2=\"{right:.1}\" y1=\"{y1:.1}\" y2=\"{y1:.1}\" stroke=\"{AXIS}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\" font-weight=\"600\">{}</text>\n</g>",
        (left + right) / 2.0,
        y1 + 36.0,
        escape(title)
    );
    s
}

/// An axis title: label, scale note or unit, and which way is better.
fn axis_title(mi: &MetricInfo) -> String {
    let better = if mi.higher_is_better {
        "higher is better"
    } else {
        "lower is better"
    };
    format!("{} — {better}", mi.label)
}

/// An estimate as tooltip text, e.g. `Face-Sim 0.612 [0.600, 0.625], n = 40`.
fn describe(mi: &MetricInfo, e: &Estimate) -> String {
    format!(
        "{} {}, n = {}",
        mi.label,
        metric_format(&mi.key).estimate(e),
        e.n
    )
}

/// `e` as (value, lo, hi) for plotting, the interval widened to hold the value, or `None`
/// when any part is not finite.
fn finite(e: &Estimate) -> Option<(f64, f64, f64)> {
    let (v, lo, hi) = (e.value, e.lo, e.hi);
    (v.is_finite() && lo.is_finite() && hi.is_finite()).then(|| (v, lo.min(v), hi.max(v)))
}

/// A chart that only says why there is nothing to draw.
fn empty_chart(title: &str, message: &str) -> String {
    let mut s = open(640.0, 120.0, title, message, "chart-empty");
    s.push_str(&heading(title, None));
    let _ = writeln!(
        s,
        "<text x=\"320\" y=\"76\" text-anchor=\"middle\" font-size=\"13\" fill=\"{MUTED}\">{}</text>\n</svg>",
        escape(message)
    );
    s
}

/// A legend: one marker and name per method, flowing over as many lines as the width needs.
/// Returns the SVG and the height it takes.
fn legend(lb: &Leaderboard, names: &[&str], x0: f64, y0: f64, width: f64) -> (String, f64) {
    let mut s = String::from("<g class=\"legend\">\n");
    let (mut x, mut y) = (x0, y0);
    for name in names {
        let label = truncate(name, 180.0, 12.0);
        let w = 22.0 + text_width(&label, 12.0) + 18.0;
        if x + w > x0 + width && x > x0 {
            x = x0;
            y += 20.0;
        }
        let (colour, shape) = style(lb, name);
        let hollow = is_builtin(lb, name);
        let baseline = if hollow { " (baseline)" } else { "" };
        let _ = writeln!(
            s,
            "<g><title>{}{baseline}</title>{}<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{}</text></g>",
            escape(name),
            marker(shape, x + 6.0, y - 4.0, 5.0, colour, hollow),
            x + 16.0,
            y,
            escape(&label)
        );
        x += w;
    }
    s.push_str("</g>\n");
    (s, y - y0 + 20.0)
}

/// Error bar from (`x0`, `y0`) to (`x1`, `y1`) with end caps across it.
fn whisker(x0: f64, y0: f64, x1: f64, y1: f64, colour: &str, cap: f64) -> String {
    let vertical = (x0 - x1).abs() < 1e-9;
    let caps = if vertical {
        format!(
            "M{:.1} {y0:.1}h{:.1}M{:.1} {y1:.1}h{:.1}",
            x0 - cap,
            2.0 * cap,
            x1 - cap,
            2.0 * cap
        )
    } else {
        format!(
            "M{x0:.1} {:.1}v{:.1}M{x1:.1} {:.1}v{:.1}",
            y0 - cap,
            2.0 * cap,
            y1 - cap,
            2.0 * cap
        )
    };
    format!(
        "<path d=\"M{x0:.1} {y0:.1}L{x1:.1} {y1:.1}{caps}\" stroke=\"{colour}\" stroke-width=\"1.5\" fill=\"none\"/>"
    )
}

/// The identity-versus-prompt trade-off for `set`: Face-Sim (y) against CLIP-T (x), one labelled
/// point per method with its bootstrap interval as error bars both ways, so a reader sees at a
/// glance which methods buy identity with prompt-following (copying the reference scores high
/// Face-Sim and low CLIP-T). Without CLIP-T (no CLIP weights given, or none for this set) it says
/// so and shows Face-Sim alone as a dot plot with intervals.
pub fn tradeoff_svg(lb: &Leaderboard, set: &SetResult) -> String {
    let title = format!("Identity vs prompt fidelity — {}", set.name);
    let Some(face) = find_metric(lb, FACE_SIM) else {
        return empty_chart(&title, "Face-Sim is not in this leaderboard.");
    };
    let with_face: Vec<_> = set
        .rows
        .iter()
        .filter_map(|r| {
            r.metrics
                .get(&face.key)
                .filter(|e| finite(e).is_some())
                .map(|e| (r, e))
        })
        .collect();
    if with_face.is_empty() {
        return empty_chart(&title, "Face-Sim is not available for this set.");
    }
    let clip = find_metric(lb, CLIP_T);
    let points: Vec<_> = match clip {
        Some(c) => with_face
            .iter()
            .filter_map(|(r, f)| {
                r.metrics
                    .get(&c.key)
                    .filter(|e| finite(e).is_some())
                    .map(|e| (*r, *f, e))
            })
            .collect(),
        None => Vec::new(),
    };
    match clip {
        Some(c) if !points.is_empty() => {
            let missing: Vec<&str> = with_face
                .iter()
                .filter(|(r, _)| !points.iter().any(|(p, _, _)| p.method == r.method))
                .map(|(r, _)| r.method.as_str())
                .collect();
            scatter(lb, set, face, c, &points, &missing)
        }
        _ => {
            let note = if lb.models.clip.is_none() || clip.is_none() {
                "CLIP-T not computed (no CLIP weights given)"
            } else {
                "CLIP-T not available for this set"
            };
            let rows: Vec<(&str, &Estimate)> = with_face
                .iter()
                .map(|(r, e)| (r.method.as_str(), *e))
                .collect();
            dot_plot(
                lb,
                &format!("{} — {}", face.label, set.name),
                note,
                face,
                &rows,
            )
        }
    }
}

type Point<'a> = (&'a MethodRow, &'a Estimate, &'a Estimate);

fn scatter(
    lb: &Leaderboard,
    set: &SetResult,
    face: &MetricInfo,
    clip: &MetricInfo,
    points: &[Point<'_>],
    missing: &[&str],
) -> String {
    let (w, h) = (640.0, 460.0);
    let (left, right, top, bottom) = (
        70.0,
        24.0,
        56.0,
        if missing.is_empty() { 56.0 } else { 76.0 },
    );
    let ys: Vec<_> = points.iter().filter_map(|(_, f, _)| finite(f)).collect();
    let xs: Vec<_> = points.iter().filter_map(|(_, _, c)| finite(c)).collect();
    let span = |v: &[(f64, f64, f64)]| {
        let lo = v.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = v.iter().map(|p| p.2).fold(f64::NEG_INFINITY, f64::max);
        let pad = (hi - lo) * 0.06;
        (lo - pad, hi + pad)
    };
    let (x_lo, x_hi) = span(&xs);
    let (y_lo, y_hi) = span(&ys);
    let xa = Axis::new(x_lo, x_hi, left, w - right, 6.0);
    let ya = Axis::new(y_lo, y_hi, h - bottom, top, 6.0);

    let desc = format!(
        "Scatter of {} (vertical) against {} (horizontal) for {} methods on the {} set; lines are {:.0} % bootstrap intervals. {}",
        face.label,
        clip.label,
        points.len(),
        set.name,
        lb.bootstrap.level * 100.0,
        points
            .iter()
            .map(|(r, f, c)| format!(
                "{}: {}; {}.",
                r.method,
                describe(face, f),
                describe(clip, c)
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut s = open(
        w,
        h,
        &format!("Identity vs prompt fidelity — {}", set.name),
        &desc,
        "chart-tradeoff",
    );
    s.push_str(&heading(
        &format!("Identity vs prompt fidelity — {}", set.name),
        Some("Up and to the right is better; lines show the bootstrap intervals."),
    ));
    s.push_str(&value_axis_y(&ya, left, w - right, &axis_title(face)));
    s.push_str(&value_axis_x(&xa, top, h - bottom, &axis_title(clip)));

    // Labels are placed greedily, nudged down when they would overlap an earlier one.
    let mut placed: Vec<(f64, f64, f64, f64)> = Vec::new();
    let mut labels = String::new();
    s.push_str("<g class=\"points\">\n");
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| ys[b].0.total_cmp(&ys[a].0));
    for i in order {
        let (row, f, c) = points[i];
        let ((yv, ylo, yhi), (xv, xlo, xhi)) = (ys[i], xs[i]);
        let (px, py) = (xa.map(xv), ya.map(yv));
        let (colour, shape) = style(lb, &row.method);
        let hollow = is_builtin(lb, &row.method);
        let _ = writeln!(
            s,
            "<g class=\"point\" data-method=\"{}\"><title>{}{}: {}; {}</title>{}{}{}</g>",
            escape(&row.method),
            escape(&row.method),
            if hollow { " (baseline)" } else { "" },
            escape(&describe(face, f)),
            escape(&describe(clip, c)),
            whisker(xa.map(xlo), py, xa.map(xhi), py, colour, 4.0),
            whisker(px, ya.map(ylo), px, ya.map(yhi), colour, 4.0),
            marker(shape, px, py, 6.0, colour, hollow)
        );
        let label = truncate(&row.method, 160.0, 12.0);
        let lw = text_width(&label, 12.0);
        let right_side = px + 10.0 + lw < w - right;
        let lx = if right_side { px + 9.0 } else { px - 9.0 - lw };
        let mut ly = py - 8.0;
        for _ in 0..8 {
            let hit = placed.iter().any(|&(x0, y0, x1, y1)| {
                lx < x1 && lx + lw > x0 && ly - 11.0 < y1 && ly + 2.0 > y0
            });
            if !hit {
                break;
            }
            ly += 13.0;
        }
        ly = ly.clamp(top + 10.0, h - bottom - 4.0);
        placed.push((lx, ly - 11.0, lx + lw, ly + 2.0));
        let _ = writeln!(
            labels,
            "<text x=\"{:.1}\" y=\"{ly:.1}\" text-anchor=\"{}\" font-size=\"12\" paint-order=\"stroke\" stroke=\"#fff\" stroke-width=\"3\" stroke-linejoin=\"round\">{}</text>",
            if right_side { lx } else { px - 9.0 },
            if right_side { "start" } else { "end" },
            escape(&label)
        );
    }
    s.push_str("</g>\n<g class=\"labels\">\n");
    s.push_str(&labels);
    s.push_str("</g>\n");
    if !missing.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{left:.1}\" y=\"{:.1}\" font-size=\"11\" font-style=\"italic\" fill=\"{MUTED}\">{}</text>",
            h - 10.0,
            escape(&truncate(
                &format!("Not shown (no {}): {}", clip.label, missing.join(", ")),
                w - left - right,
                11.0
            ))
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One row per method, the metric along x with its interval: the fallback when there is no
/// second metric to plot against.
fn dot_plot(
    lb: &Leaderboard,
    title: &str,
    note: &str,
    mi: &MetricInfo,
    rows: &[(&str, &Estimate)],
) -> String {
    let label_w = rows
        .iter()
        .map(|(n, _)| text_width(&truncate(n, 180.0, 12.0), 12.0))
        .fold(60.0, f64::max);
    let (w, row_h) = (640.0, 30.0);
    let (left, right, top, bottom) = (label_w + 28.0, 28.0, 70.0, 54.0);
    let h = top + row_h * rows.len() as f64 + bottom;
    let vals: Vec<_> = rows.iter().filter_map(|(_, e)| finite(e)).collect();
    let lo = vals.iter().map(|v| v.1).fold(f64::INFINITY, f64::min);
    let hi = vals.iter().map(|v| v.2).fold(f64::NEG_INFINITY, f64::max);
    let pad = (hi - lo) * 0.06;
    let xa = Axis::new(lo - pad, hi + pad, left, w - right, 6.0);
    let desc = format!(
        "{note}. Dot plot of {} per method with {:.0} % bootstrap intervals. {}",
        mi.label,
        lb.bootstrap.level * 100.0,
        rows.iter()
            .map(|(n, e)| format!("{n}: {}.", describe(mi, e)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut s = open(w, h, title, &desc, "chart-dots");
    s.push_str(&heading(title, Some(note)));
    s.push_str(&value_axis_x(&xa, top - 8.0, h - bottom, &axis_title(mi)));
    s.push_str("<g class=\"points\">\n");
    for (i, ((name, e), (v, elo, ehi))) in rows.iter().zip(vals.iter().copied()).enumerate() {
        let y = top + row_h * (i as f64 + 0.5);
        let (colour, shape) = style(lb, name);
        let hollow = is_builtin(lb, name);
        let _ = writeln!(
            s,
            "<g class=\"point\" data-method=\"{}\"><title>{}{}: {}</title>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"12\">{}</text>{}{}</g>",
            escape(name),
            escape(name),
            if hollow { " (baseline)" } else { "" },
            escape(&describe(mi, e)),
            left - 12.0,
            y + 4.0,
            escape(&truncate(name, 180.0, 12.0)),
            whisker(xa.map(elo), y, xa.map(ehi), y, colour, 5.0),
            marker(shape, xa.map(v), y, 6.0, colour, hollow)
        );
    }
    s.push_str("</g>\n</svg>\n");
    s
}

/// `row`'s estimate of metric `key` in category `cat`, when it is there and finite.
fn cat_estimate<'a>(row: &'a MethodRow, cat: &str, key: &str) -> Option<&'a Estimate> {
    row.by_category
        .get(cat)
        .and_then(|m| m.get(key))
        .filter(|e| finite(e).is_some())
}

/// `metric_key` per prompt category on `set`: grouped bars, one bar per method in its fixed
/// colour, with interval whiskers and a legend, so a method that only works for, say, close-up
/// portraits shows it. Says so instead when the metric is unknown, not per image, or absent.
pub fn category_bars_svg(lb: &Leaderboard, set: &SetResult, metric_key: &str) -> String {
    let Some(mi) = find_metric(lb, metric_key) else {
        return empty_chart(
            &format!("{metric_key} by prompt category — {}", set.name),
            &format!("{metric_key} was not computed (its network was not given)."),
        );
    };
    let title = format!("{} by prompt category — {}", mi.label, set.name);
    let cats: Vec<String> = categories(lb, set)
        .into_iter()
        .filter(|c| {
            set.rows
                .iter()
                .any(|r| cat_estimate(r, c, &mi.key).is_some())
        })
        .collect();
    let rows: Vec<_> = set
        .rows
        .iter()
        .filter(|r| cats.iter().any(|c| cat_estimate(r, c, &mi.key).is_some()))
        .collect();
    if cats.is_empty() || rows.is_empty() {
        return empty_chart(
            &title,
            &format!("{} per category is not available for this set.", mi.label),
        );
    }

    let w = 640.0;
    let (left, right) = (70.0, 20.0);
    let names: Vec<&str> = rows.iter().map(|r| r.method.as_str()).collect();
    let (legend_svg, legend_h) = legend(lb, &names, left, 48.0, w - left - right);
    let top = 48.0 + legend_h + 8.0;
    let plot_h = 260.0;
    let bottom = 62.0;
    let h = top + plot_h + bottom;

    let mut lo = 0f64;
    let mut hi = f64::NEG_INFINITY;
    for r in &rows {
        for c in &cats {
            if let Some((_, l, u)) = cat_estimate(r, c, &mi.key).and_then(finite) {
                lo = lo.min(l);
                hi = hi.max(u);
            }
        }
    }
    let ya = Axis::new(lo, hi * 1.02, top + plot_h, top, 5.0);
    let zero = ya.map(0f64.clamp(ya.d0, ya.d1));

    let desc = format!(
        "Grouped bar chart of {} for {} methods in {} prompt categories on the {} set; whiskers are {:.0} % bootstrap intervals.",
        mi.label,
        rows.len(),
        cats.len(),
        set.name,
        lb.bootstrap.level * 100.0
    );
    let mut s = open(w, h, &title, &desc, "chart-bars");
    s.push_str(&heading(&title, None));
    s.push_str(&legend_svg);
    s.push_str(&value_axis_y(&ya, left, w - right, &axis_title(mi)));

    let group_w = (w - left - right) / cats.len() as f64;
    let bar_w = (group_w * 0.8 / rows.len() as f64).min(48.0);
    s.push_str("<g class=\"bars\">\n");
    for (ci, cat) in cats.iter().enumerate() {
        let gx = left + group_w * ci as f64;
        let start = gx + (group_w - bar_w * rows.len() as f64) / 2.0;
        for (ri, row) in rows.iter().enumerate() {
            let Some(e) = cat_estimate(row, cat, &mi.key) else {
                continue;
            };
            let Some((v, elo, ehi)) = finite(e) else {
                continue;
            };
            let (colour, _) = style(lb, &row.method);
            let hollow = is_builtin(lb, &row.method);
            let x = start + bar_w * ri as f64;
            let (y0, y1) = (ya.map(v).min(zero), ya.map(v).max(zero));
            let fill = if hollow {
                format!("fill=\"#fff\" stroke=\"{colour}\" stroke-width=\"2\"")
            } else {
                format!("fill=\"{colour}\"")
            };
            let cx = x + bar_w / 2.0;
            let _ = writeln!(
                s,
                "<g class=\"bar\" data-method=\"{}\" data-category=\"{}\"><title>{}{} — {}: {}</title>\
                 <rect x=\"{:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{:.1}\" {fill}/>{}</g>",
                escape(&row.method),
                escape(cat),
                escape(&row.method),
                if hollow { " (baseline)" } else { "" },
                escape(cat),
                escape(&describe(mi, e)),
                x + 1.0,
                (bar_w - 2.0).max(1.0),
                (y1 - y0).max(0.5),
                whisker(
                    cx,
                    ya.map(elo),
                    cx,
                    ya.map(ehi),
                    INK,
                    (bar_w * 0.25).clamp(1.5, 5.0)
                )
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\"><title>{}</title>{}</text>",
            gx + group_w / 2.0,
            top + plot_h + 18.0,
            escape(cat),
            escape(&truncate(cat, group_w - 6.0, 12.0))
        );
    }
    let _ = writeln!(
        s,
        "</g>\n<line x1=\"{left:.1}\" x2=\"{:.1}\" y1=\"{zero:.1}\" y2=\"{zero:.1}\" stroke=\"{AXIS}\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\" font-weight=\"600\">Prompt category</text>\n</svg>",
        w - right,
        (left + w - right) / 2.0,
        top + plot_h + 44.0
    );
    s
}

/// A question's arena ratings: one row per method, best first, the rating as a marker and its
/// bootstrap interval as whiskers, with the mean rating (the anchor) as a dashed line. The axis
/// covers the methods whose rating the votes determine; a separated method (never won or
/// never lost: its rating is held by the prior, hundreds of points out) sits at the edge with
/// an arrow, so it does not squeeze everyone else into a corner.
pub fn arena_ratings_svg(lb: &Leaderboard, arena: &ArenaResults, q: &QuestionRatings) -> String {
    let title = question_title(q.question).to_string();
    if q.methods.is_empty() {
        return empty_chart(&title, "No rated votes for this question.");
    }
    let span = |m: &crate::ratings::MethodRating| {
        (
            m.lo.unwrap_or(m.rating).min(m.rating),
            m.hi.unwrap_or(m.rating).max(m.rating),
        )
    };
    let bounded: Vec<_> = q.methods.iter().filter(|m| !m.separated).collect();
    let basis: Vec<_> = if bounded.is_empty() {
        q.methods.iter().collect()
    } else {
        bounded
    };
    let mut lo = basis.iter().map(|m| span(m).0).fold(arena.anchor, f64::min);
    let mut hi = basis.iter().map(|m| span(m).1).fold(arena.anchor, f64::max);
    let pad = ((hi - lo) * 0.06).max(5.0);
    lo -= pad;
    hi += pad;

    let label_w = q
        .methods
        .iter()
        .map(|m| text_width(&truncate(&m.method, 180.0, 12.0), 12.0))
        .fold(60.0, f64::max);
    let (w, row_h) = (640.0, 30.0);
    let (left, right, top, bottom) = (label_w + 28.0, 28.0, 70.0, 54.0);
    let h = top + row_h * q.methods.len() as f64 + bottom;
    let xa = Axis::new(lo, hi, left, w - right, 6.0);
    let (x_min, x_max) = (xa.map(xa.d0), xa.map(xa.d1));
    let clamp = |x: f64| x.clamp(x_min, x_max);
    let f = rating_format();
    let describe = |m: &crate::ratings::MethodRating| {
        format!(
            "rating {} {}, rank {}, {} votes{}",
            f.value(m.rating),
            rating_interval(m.lo, m.hi),
            m.rank,
            m.games,
            if m.separated {
                " (never won or never lost: the rating is only a bound)"
            } else {
                ""
            }
        )
    };
    let desc = format!(
        "Dot plot of the Bradley–Terry ratings of {} methods for the {} question, with {:.0} % \
         bootstrap intervals. {}",
        q.methods.len(),
        q.question.as_str(),
        arena.level * 100.0,
        q.methods
            .iter()
            .map(|m| format!("{}: {}.", m.method, describe(m)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut s = open(w, h, &title, &desc, "chart-arena");
    s.push_str(&heading(
        &title,
        Some("Right is better; lines are the bootstrap intervals."),
    ));
    s.push_str(&value_axis_x(
        &xa,
        top - 8.0,
        h - bottom,
        "Rating (LMArena scale) — higher is better",
    ));
    let ax = xa.map(arena.anchor);
    let _ = writeln!(
        s,
        "<line class=\"anchor\" x1=\"{ax:.1}\" x2=\"{ax:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{MUTED}\" stroke-dasharray=\"4 3\"/>",
        top - 8.0,
        h - bottom
    );
    s.push_str("<g class=\"points\">\n");
    // Methods of the leaderboard keep their colour and shape; methods only in the arena take
    // the next ones, in rating order.
    let mut extra = lb.methods.len();
    for (i, m) in q.methods.iter().enumerate() {
        let y = top + row_h * (i as f64 + 0.5);
        let (colour, shape) = if lb.methods.iter().any(|e| e.name == m.method) {
            style(lb, &m.method)
        } else {
            extra += 1;
            (
                PALETTE[(extra - 1) % PALETTE.len()],
                SHAPES[(extra - 1) % SHAPES.len()],
            )
        };
        let hollow = is_builtin(lb, &m.method);
        let (elo, ehi) = span(m);
        let px = xa.map(m.rating);
        let off = px < x_min - 0.5 || px > x_max + 0.5;
        let mark = if off {
            // An arrowhead at the edge, pointing off the scale.
            let x = clamp(px);
            let dir = if px < x_min { -1.0 } else { 1.0 };
            format!(
                "<path class=\"off-scale\" d=\"M{:.1} {y:.1}L{:.1} {:.1}L{:.1} {:.1}Z\" fill=\"{colour}\"/>",
                x + dir * 8.0,
                x,
                y - 6.0,
                x,
                y + 6.0
            )
        } else {
            marker(shape, px, y, 6.0, colour, hollow)
        };
        let _ = writeln!(
            s,
            "<g class=\"point\" data-method=\"{}\"><title>{}{}: {}</title>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"12\">{}</text>{}{}</g>",
            escape(&m.method),
            escape(&m.method),
            if hollow { " (baseline)" } else { "" },
            escape(&describe(m)),
            left - 12.0,
            y + 4.0,
            escape(&truncate(&m.method, 180.0, 12.0)),
            whisker(clamp(xa.map(elo)), y, clamp(xa.map(ehi)), y, colour, 5.0),
            mark
        );
    }
    s.push_str("</g>\n</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaderboard::markdown::tests::sample;

    #[test]
    fn tradeoff_has_one_point_per_method_and_escapes_names() {
        let lb = sample();
        let svg = tradeoff_svg(&lb, &lb.sets[0]);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("class=\"point\"").count(), 3);
        assert!(svg.contains("&lt;b&gt;&amp;&quot;x&quot;"));
        assert!(!svg.contains("<b>"));
        assert!(svg.contains("<title>Identity vs prompt fidelity — in-train</title>"));
        assert!(svg.contains("CLIP-T — higher is better"));
    }

    #[test]
    fn tradeoff_without_clip_t_says_so_and_plots_face_sim() {
        let mut lb = sample();
        let svg = tradeoff_svg(&lb, &lb.sets[1]);
        assert!(svg.contains("CLIP-T not available for this set"), "{svg}");
        lb.models.clip = None;
        lb.metrics.retain(|m| m.key != "clip_t");
        let svg = tradeoff_svg(&lb, &lb.sets[0]);
        assert!(
            svg.contains("CLIP-T not computed (no CLIP weights given)"),
            "{svg}"
        );
        assert!(svg.contains("chart-dots"));
        assert_eq!(svg.matches("class=\"point\"").count(), 3);
    }

    #[test]
    fn category_bars_have_a_bar_per_method_and_category() {
        let lb = sample();
        let svg = category_bars_svg(&lb, &lb.sets[0], "face_sim");
        assert_eq!(svg.matches("class=\"bar\"").count(), 6);
        assert!(svg.contains("class=\"legend\""));
        // Protocol order: portrait first.
        assert!(svg.find(">portrait</text>").unwrap() < svg.find(">action</text>").unwrap());
        let none = category_bars_svg(&lb, &lb.sets[1], "clip_t");
        assert!(none.contains("not available"), "{none}");
        let unknown = category_bars_svg(&lb, &lb.sets[0], "dino");
        assert!(unknown.contains("not computed"), "{unknown}");
    }

    #[test]
    fn axis_ticks_are_round_and_cover_the_data() {
        let a = Axis::new(0.43, 0.93, 0.0, 100.0, 5.0);
        assert_eq!(a.step, 0.1);
        assert!(a.d0 <= 0.43 && a.d1 >= 0.93);
        assert_eq!(a.label(0.5), "0.5");
        let z = Axis::new(0.0, 1.0, 0.0, 100.0, 5.0);
        assert_eq!((z.d0, z.d1), (0.0, 1.0));
        let b = Axis::new(20.0, 20.0, 0.0, 1.0, 5.0);
        assert!(b.d0 < 20.0 && b.d1 > 20.0);
    }

    #[test]
    fn arena_chart_has_a_point_per_method_and_keeps_separated_ones_at_the_edge() {
        use crate::leaderboard::markdown::tests::sample_arena;
        let lb = sample();
        let arena = sample_arena(false);
        let svg = arena_ratings_svg(&lb, &arena, &arena.questions[0]);
        assert_eq!(svg.matches("class=\"point\"").count(), 3);
        assert!(svg.contains("class=\"anchor\""));
        assert!(!svg.contains("off-scale"));
        assert!(svg.contains("&lt;b&gt;&amp;&quot;x&quot;"));
        let arena = sample_arena(true);
        let q = &arena.questions[0];
        assert!(q.methods.iter().any(|m| m.separated));
        let svg = arena_ratings_svg(&lb, &arena, q);
        assert_eq!(svg.matches("class=\"point\"").count(), 4);
        assert_eq!(svg.matches("class=\"off-scale\"").count(), 1, "{svg}");
        assert!(svg.contains("the rating is only a bound"));
    }
}
