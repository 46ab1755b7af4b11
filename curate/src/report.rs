//! The static HTML report of a curate run: the page someone reads to judge whether the
//! verification thresholds are right, with every face shown beside the numbers that decided it.
//!
//! One self-contained file at `<run>/curate/report.html`: inline CSS and SVG, no scripts and no
//! external resources, so it opens from a copied run folder without a server. Images are linked,
//! not embedded, through paths relative to the run directory (`../<crop_path>`), which keeps the
//! page small for runs with many thousands of faces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use idforge_core::html::escape;
use idforge_core::schema::{FaceRow, FacesTable, Reason, Verdict};

/// Width of one histogram bin on the `id_score` axis.
const BIN: f32 = 0.02;
/// Side of a thumbnail, in CSS pixels.
const THUMB: u32 = 128;
/// Characters of the sha256 `image_id` shown; the full id is in the tooltip.
const SHORT_ID: usize = 12;

/// The thresholds verification used for one group, drawn on its histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupThresholds {
    /// The group these thresholds belong to (the `group` column).
    pub group: String,
    /// Median `id_score` of the group; absent where the group was too small to estimate it.
    pub median: Option<f32>,
    /// Robust spread σ̂ of `id_score` in the group.
    pub sigma: Option<f32>,
    /// The relative rule's cut (`median − k·σ̂`); faces below it are `id_outlier`.
    pub relative_cut: Option<f32>,
    /// The absolute floor; faces below it are `below_id_floor`.
    pub floor: f32,
}

/// Everything the report shows.
#[derive(Debug, Clone, Copy)]
pub struct ReportContext<'a> {
    /// Name of the run, shown in the title.
    pub run_name: &'a str,
    /// The `faces` table of the run.
    pub table: &'a FacesTable,
    /// Thresholds per group; a group without an entry is shown without threshold lines.
    pub groups: &'a [GroupThresholds],
    /// The curate settings, as JSON, so the page records what produced it.
    pub settings_json: &'a str,
}

/// Renders the whole page; pure, so it can be tested without touching the disk.
pub fn render(ctx: &ReportContext<'_>) -> String {
    let (grouped, ungrouped) = split_by_group(ctx.table);
    let mut html = head(ctx.run_name);
    html.push_str(&summary(&totals(ctx.table)));
    html.push_str(&group_index(&grouped));
    for (i, (name, rows)) in grouped.iter().enumerate() {
        let t = ctx.groups.iter().find(|t| t.group == *name);
        html.push_str(&group_section(i, name, rows, t));
    }
    html.push_str(&ungrouped_section(&ungrouped));
    html.push_str(&settings_section(ctx.settings_json));
    html.push_str("</body>\n</html>\n");
    html
}

/// Writes the page atomically (temporary sibling, then rename), so a reader never sees half a
/// report and an interrupted run leaves the previous one in place.
pub fn write(path: &Path, ctx: &ReportContext<'_>) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = idforge_core::table::temp_sibling(path);
    let result = std::fs::write(&tmp, render(ctx)).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The `src` of an image stored at `rel` (relative to the run directory), seen from
/// `<run>/curate/report.html`; percent-encoded so spaces, `#` or `?` in names still resolve.
fn image_src(rel: &str) -> String {
    let mut src = String::from("../");
    for b in rel.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            src.push(b as char);
        } else {
            src.push_str(&format!("%{b:02X}"));
        }
    }
    src
}

/// A number with `digits` decimals, or a dash where the value is absent.
fn num(v: Option<f32>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "—".to_string(),
    }
}

/// The start of `image_id`, enough to tell images apart by eye.
fn short_id(id: &str) -> &str {
    id.get(..SHORT_ID).unwrap_or(id)
}

/// One plain-English line per reason, for readers who do not know the filter names.
fn explain(reason: Reason) -> &'static str {
    match reason {
        Reason::Unreadable => "The file could not be read or decoded as an image.",
        Reason::LowResolution => "The image's short side is below the minimum resolution.",
        Reason::NoFace => "The face detector found no face in the image.",
        Reason::LowScore => "The detector was not confident enough that this is a face.",
        Reason::FaceTooSmall => "The face box is below the minimum size on one of its sides.",
        Reason::OtherFaceInImage => {
            "Another face in the same image matches the identity better; one face per image is kept."
        }
        Reason::IdOutlier => {
            "The face resembles its group much less than its group-mates do (below median − k·σ̂)."
        }
        Reason::BelowIdFloor => {
            "The face's mean similarity to its group is below the absolute floor."
        }
        Reason::Duplicate => "Nearly identical to a face already kept for this identity.",
        Reason::IdentityTooSmall => {
            "Too few images of this identity survived the filters, so all its faces are dropped."
        }
        _ => "See the detail column.",
    }
}

/// What the outcome column shows: the reason, or the verdict for rows without one.
fn outcome(r: &FaceRow) -> &'static str {
    r.reason.map_or(r.verdict.as_str(), Reason::as_str)
}

/// The headline numbers of a run.
#[derive(Debug, PartialEq, Eq)]
struct Totals {
    /// Distinct `image_id`s.
    images: usize,
    /// Rows with a `face_index`.
    faces: usize,
    /// Kept rows.
    kept: usize,
    /// Groups with at least one kept face.
    identities: usize,
    /// Rows per reason, in filter order, every reason present.
    per_reason: Vec<(Reason, usize)>,
}

fn totals(table: &FacesTable) -> Totals {
    let rows = &table.rows;
    let kept = rows.iter().filter(|r| r.verdict == Verdict::Kept);
    let per_reason = Reason::ALL
        .into_iter()
        .map(|reason| {
            (
                reason,
                rows.iter().filter(|r| r.reason == Some(reason)).count(),
            )
        })
        .collect();
    Totals {
        images: rows
            .iter()
            .map(|r| &r.image_id)
            .collect::<BTreeSet<_>>()
            .len(),
        faces: rows.iter().filter(|r| r.face_index.is_some()).count(),
        kept: kept.clone().count(),
        identities: kept
            .filter_map(|r| r.group.as_deref())
            .collect::<BTreeSet<_>>()
            .len(),
        per_reason,
    }
}

/// Rows per group, sorted by group name, and the rows rejected before grouping.
fn split_by_group(table: &FacesTable) -> (BTreeMap<&str, Vec<&FaceRow>>, Vec<&FaceRow>) {
    let mut grouped: BTreeMap<&str, Vec<&FaceRow>> = BTreeMap::new();
    let mut ungrouped = Vec::new();
    for r in &table.rows {
        match r.group.as_deref() {
            Some(g) => grouped.entry(g).or_default().push(r),
            None => ungrouped.push(r),
        }
    }
    ungrouped.sort_by_key(|r| r.reason);
    (grouped, ungrouped)
}

const CSS: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.zero td{color:#999}
.grid{display:flex;flex-wrap:wrap;gap:8px;margin:.5em 0}
.card{width:136px;margin:0;padding:3px;font-size:12px;border:1px solid #ddd;border-radius:4px}
.card img,.noimg{width:128px;height:128px;object-fit:cover;display:block;background:#eee}
.noimg{display:flex;align-items:center;justify-content:center;color:#999}
.card.rej{background:#fdecea;border-color:#c0392b}
.card.rej b{color:#c0392b}
.thr{color:#555}
svg.hist{background:#fafafa;border:1px solid #eee;max-width:100%}
svg.hist text{font:10px sans-serif}
pre{background:#f5f5f5;padding:1em;overflow:auto}
";

fn head(run_name: &str) -> String {
    let name = escape(run_name);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>idforge curate — {name}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n\
         <h1>Curate report: {name}</h1>\n"
    )
}

/// The run totals and the per-reason table.
fn summary(t: &Totals) -> String {
    let mut html = String::from("<table class=\"totals\">\n");
    for (label, n) in [
        ("Images seen", t.images),
        ("Faces detected", t.faces),
        ("Kept faces", t.kept),
        ("Identities with a kept face", t.identities),
    ] {
        html.push_str(&format!(
            "<tr><th>{label}</th><td class=\"n\">{n}</td></tr>\n"
        ));
    }
    html.push_str("</table>\n<h3>Rejections by reason, in filter order</h3>\n");
    html.push_str(
        "<table class=\"reasons\">\n<tr><th>reason</th><th>rows</th><th>meaning</th></tr>\n",
    );
    for &(reason, n) in &t.per_reason {
        let zero = if n == 0 { " class=\"zero\"" } else { "" };
        html.push_str(&format!(
            "<tr{zero}><td><code>{reason}</code></td><td class=\"n\">{n}</td><td>{}</td></tr>\n",
            explain(reason)
        ));
    }
    html.push_str("</table>\n");
    html
}

/// Kept and rejected faces of a group.
fn kept_rejected(rows: &[&FaceRow]) -> (usize, usize) {
    let kept = rows.iter().filter(|r| r.verdict == Verdict::Kept).count();
    (kept, rows.len() - kept)
}

/// A table of contents, so a reader can jump to the groups that lost most faces.
fn group_index(grouped: &BTreeMap<&str, Vec<&FaceRow>>) -> String {
    if grouped.is_empty() {
        return String::new();
    }
    let mut html = String::from(
        "<h3>Groups</h3>\n<table class=\"groups\">\n<tr><th>group</th><th>kept</th><th>rejected</th></tr>\n",
    );
    for (i, (name, rows)) in grouped.iter().enumerate() {
        let (kept, rejected) = kept_rejected(rows);
        html.push_str(&format!(
            "<tr><td><a href=\"#g{i}\">{}</a></td><td class=\"n\">{kept}</td><td class=\"n\">{rejected}</td></tr>\n",
            escape(name)
        ));
    }
    html.push_str("</table>\n");
    html
}

/// One group: heading, thresholds, histogram, kept grid and rejected grid. The anchor is the
/// group's position, not its name, so no user text ends up in an `id`.
fn group_section(i: usize, name: &str, rows: &[&FaceRow], t: Option<&GroupThresholds>) -> String {
    let (kept, rejected) = kept_rejected(rows);
    let mut html = format!(
        "<section class=\"group\">\n<h2 id=\"g{i}\">{}</h2>\n<p>{kept} kept · {rejected} rejected</p>\n",
        escape(name)
    );
    html.push_str(&thresholds_line(t));
    match Histogram::of(rows, t) {
        Some(h) => html.push_str(&h.svg(t)),
        None => html.push_str("<p class=\"thr\">No face of this group has an id_score.</p>\n"),
    }
    html.push_str(&kept_grid(rows));
    html.push_str(&rejected_grid(rows));
    html.push_str("</section>\n");
    html
}

fn thresholds_line(t: Option<&GroupThresholds>) -> String {
    match t {
        Some(t) => format!(
            "<p class=\"thr\">median {} · σ̂ {} · relative cut {} · floor {:.3}</p>\n",
            num(t.median, 3),
            num(t.sigma, 3),
            num(t.relative_cut, 3),
            t.floor
        ),
        None => "<p class=\"thr\">No thresholds recorded for this group.</p>\n".to_string(),
    }
}

/// A thumbnail of the face, or a grey placeholder where no crop was written.
fn thumb(path: Option<&str>, alt: &str) -> String {
    match path {
        Some(p) => format!(
            "<img src=\"{}\" alt=\"{}\" loading=\"lazy\" width=\"{THUMB}\" height=\"{THUMB}\">",
            escape(&image_src(p)),
            escape(alt)
        ),
        None => "<div class=\"noimg\">no crop</div>".to_string(),
    }
}

/// One face as a figure: the training crop where there is one, else the reference crop.
fn card(r: &FaceRow, caption: &str, class: &str) -> String {
    let key = r.key();
    let path = r.crop_path.as_deref().or(r.ref_path.as_deref());
    format!(
        "<figure class=\"card{class}\" title=\"{}\">{}<figcaption>{caption}</figcaption></figure>\n",
        escape(&key),
        thumb(path, short_id(&key))
    )
}

/// Kept faces, lowest `id_score` first: the borderline ones are what a threshold review is for.
fn kept_grid(rows: &[&FaceRow]) -> String {
    let mut kept: Vec<&FaceRow> = rows
        .iter()
        .copied()
        .filter(|r| r.verdict == Verdict::Kept)
        .collect();
    kept.sort_by(|a, b| {
        let key = |r: &FaceRow| r.id_score.unwrap_or(f32::INFINITY);
        key(a).total_cmp(&key(b))
    });
    let mut html = format!("<h3>Kept ({})</h3>\n<div class=\"grid\">\n", kept.len());
    for r in kept {
        let caption = format!("id {} · z {}", num(r.id_score, 3), num(r.id_z, 1));
        html.push_str(&card(r, &caption, ""));
    }
    html.push_str("</div>\n");
    html
}

/// Rejected faces of the group, in filter order, closest to passing first within a reason.
fn rejected_grid(rows: &[&FaceRow]) -> String {
    let mut rejected: Vec<&FaceRow> = rows
        .iter()
        .copied()
        .filter(|r| r.verdict == Verdict::Rejected)
        .collect();
    rejected.sort_by(|a, b| {
        let score = |r: &FaceRow| r.id_score.unwrap_or(f32::NEG_INFINITY);
        a.reason.cmp(&b.reason).then(score(b).total_cmp(&score(a)))
    });
    let mut html = format!(
        "<h3>Rejected ({})</h3>\n<div class=\"grid\">\n",
        rejected.len()
    );
    for r in rejected {
        let caption = format!(
            "<b>{}</b><br>{}<br>id {}",
            outcome(r),
            escape(r.detail.as_deref().unwrap_or("")),
            num(r.id_score, 3)
        );
        html.push_str(&card(r, &caption, " rej"));
    }
    html.push_str("</div>\n");
    html
}

/// Images rejected before any group existed (unreadable, too small, no face, ...).
fn ungrouped_section(rows: &[&FaceRow]) -> String {
    let mut html = format!(
        "<section class=\"ungrouped\">\n<h2 id=\"ungrouped\">Rejected before grouping ({})</h2>\n",
        rows.len()
    );
    if rows.is_empty() {
        html.push_str("<p>None.</p>\n</section>\n");
        return html;
    }
    html.push_str(
        "<table>\n<tr><th>image</th><th>identity</th><th>reason</th><th>detail</th><th>reference crop</th></tr>\n",
    );
    for r in rows {
        let img = r
            .ref_path
            .as_deref()
            .map(|p| thumb(Some(p), short_id(&r.image_id)));
        html.push_str(&format!(
            "<tr><td title=\"{}\"><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
            escape(&r.image_id),
            escape(short_id(&r.image_id)),
            escape(r.identity.as_deref().unwrap_or("")),
            outcome(r),
            escape(r.detail.as_deref().unwrap_or("")),
            img.unwrap_or_default()
        ));
    }
    html.push_str("</table>\n</section>\n");
    html
}

fn settings_section(json: &str) -> String {
    format!(
        "<details class=\"settings\">\n<summary>Settings</summary>\n<pre>{}</pre>\n</details>\n",
        escape(json)
    )
}

/// `id_score` counts of one group in bins of [`BIN`], kept and rejected apart.
#[derive(Debug, PartialEq)]
struct Histogram {
    /// Index of the first bin, in units of [`BIN`] from zero.
    first: i64,
    /// Kept faces per bin.
    kept: Vec<u32>,
    /// Rejected faces per bin.
    rejected: Vec<u32>,
}

/// Bin index of `v`; the small nudge keeps values on a bin edge (0.60) out of the bin below.
fn bin_of(v: f32) -> i64 {
    (v / BIN + 1e-3).floor() as i64
}

impl Histogram {
    /// Bins spanning the group's scores and its thresholds (so every line lands on the axis),
    /// clamped to the cosine range [-1, 1]; `None` where no face has a score.
    fn of(rows: &[&FaceRow], t: Option<&GroupThresholds>) -> Option<Self> {
        let scores: Vec<(f32, bool)> = rows
            .iter()
            .filter_map(|r| {
                r.id_score
                    .filter(|s| s.is_finite())
                    .map(|s| (s, r.verdict == Verdict::Kept))
            })
            .collect();
        if scores.is_empty() {
            return None;
        }
        let marks = t
            .into_iter()
            .flat_map(|t| [t.median, t.relative_cut, Some(t.floor)])
            .flatten();
        let (min, max) = scores
            .iter()
            .map(|s| s.0)
            .chain(marks.filter(|v| v.is_finite()))
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        let first = bin_of(min.max(-1.0));
        let len = (bin_of(max.min(1.0)) - first + 1).max(1) as usize;
        let mut h = Histogram {
            first,
            kept: vec![0; len],
            rejected: vec![0; len],
        };
        for (s, is_kept) in scores {
            let i = (bin_of(s) - first).clamp(0, len as i64 - 1) as usize;
            if is_kept {
                h.kept[i] += 1
            } else {
                h.rejected[i] += 1
            }
        }
        Some(h)
    }

    fn lo(&self) -> f32 {
        self.first as f32 * BIN
    }

    fn hi(&self) -> f32 {
        (self.first + self.kept.len() as i64) as f32 * BIN
    }

    /// The histogram as inline SVG: stacked bars (kept green under rejected red), ticks every
    /// 0.1, and labelled vertical lines for the floor, the relative cut and the median.
    fn svg(&self, t: Option<&GroupThresholds>) -> String {
        let plot = Plot::new(self);
        let mut svg = format!(
            "<svg class=\"hist\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
             viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"histogram of id_score\">\n",
            w = Plot::W,
            h = Plot::H
        );
        svg.push_str(&self.bars(&plot));
        svg.push_str(&self.axis(&plot));
        if let Some(t) = t {
            let lines = [
                ("floor", "floor", Some(t.floor), 0),
                ("cut", "relative cut", t.relative_cut, 1),
                ("median", "median", t.median, 2),
            ];
            for (class, label, value, row) in lines {
                if let Some(v) = value.filter(|v| (self.lo()..=self.hi()).contains(v)) {
                    svg.push_str(&plot.marker(class, label, v, row));
                }
            }
        }
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"4\" width=\"8\" height=\"8\" fill=\"{KEPT}\"/><text x=\"{tx}\" y=\"12\">kept</text>\n\
             <rect x=\"{x}\" y=\"16\" width=\"8\" height=\"8\" fill=\"{REJECTED}\"/><text x=\"{tx}\" y=\"24\">rejected</text>\n</svg>\n",
            x = Plot::W - 62.0,
            tx = Plot::W - 50.0
        ));
        svg
    }

    fn bars(&self, p: &Plot) -> String {
        let mut svg = String::new();
        for (i, (&k, &r)) in self.kept.iter().zip(&self.rejected).enumerate() {
            let x = p.x(self.lo() + i as f32 * BIN) + 0.5;
            let lo = self.lo() + i as f32 * BIN;
            let title = format!("{lo:.2}–{:.2}: {k} kept, {r} rejected", lo + BIN);
            let (kh, rh) = (k as f32 * p.per_face, r as f32 * p.per_face);
            let base = Plot::H - Plot::BOTTOM;
            svg.push_str(&format!(
                "<g><title>{title}</title>\
                 <rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{kh:.1}\" fill=\"{KEPT}\"/>\
                 <rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{rh:.1}\" fill=\"{REJECTED}\"/></g>\n",
                base - kh,
                base - kh - rh,
                w = (p.bin_width - 1.0).max(0.5)
            ));
        }
        svg
    }

    fn axis(&self, p: &Plot) -> String {
        let base = Plot::H - Plot::BOTTOM;
        let mut svg = format!(
            "<line x1=\"{l}\" y1=\"{base}\" x2=\"{r}\" y2=\"{base}\" stroke=\"#666\"/>\n\
             <text x=\"2\" y=\"{top}\">{peak}</text>\n",
            l = Plot::LEFT,
            r = Plot::W - Plot::RIGHT,
            top = Plot::TOP + 8.0,
            peak = p.peak
        );
        for b in self.first..=self.first + self.kept.len() as i64 {
            if b.rem_euclid(5) == 0 {
                let v = b as f32 * BIN;
                svg.push_str(&format!(
                    "<line x1=\"{x:.1}\" y1=\"{base}\" x2=\"{x:.1}\" y2=\"{y2}\" stroke=\"#666\"/>\
                     <text x=\"{x:.1}\" y=\"{ty}\" text-anchor=\"middle\">{v:.1}</text>\n",
                    x = p.x(v),
                    y2 = base + 4.0,
                    ty = base + 15.0
                ));
            }
        }
        svg
    }
}

/// Colour of kept faces in the histogram.
const KEPT: &str = "#2e8b57";
/// Colour of rejected faces in the histogram.
const REJECTED: &str = "#c0392b";

/// Geometry of the histogram drawing.
struct Plot {
    lo: f32,
    hi: f32,
    bin_width: f32,
    per_face: f32,
    peak: u32,
}

impl Plot {
    const W: f32 = 640.0;
    const H: f32 = 180.0;
    const LEFT: f32 = 30.0;
    const RIGHT: f32 = 10.0;
    const TOP: f32 = 40.0;
    const BOTTOM: f32 = 22.0;

    fn new(h: &Histogram) -> Self {
        let peak = h
            .kept
            .iter()
            .zip(&h.rejected)
            .map(|(k, r)| k + r)
            .max()
            .unwrap_or(0)
            .max(1);
        let width = Self::W - Self::LEFT - Self::RIGHT;
        Plot {
            lo: h.lo(),
            hi: h.hi(),
            bin_width: width / h.kept.len() as f32,
            per_face: (Self::H - Self::TOP - Self::BOTTOM) / peak as f32,
            peak,
        }
    }

    /// Horizontal position of score `v`.
    fn x(&self, v: f32) -> f32 {
        Self::LEFT + (v - self.lo) / (self.hi - self.lo) * (Self::W - Self::LEFT - Self::RIGHT)
    }

    /// A labelled vertical line at `v`; `row` staggers labels so close thresholds stay legible.
    fn marker(&self, class: &str, label: &str, v: f32, row: u32) -> String {
        let x = self.x(v);
        let ty = 10.0 + row as f32 * 11.0;
        let (tx, anchor) = if x > Self::W * 0.7 {
            (x - 3.0, "end")
        } else {
            (x + 3.0, "start")
        };
        let dash = if class == "median" {
            " stroke-dasharray=\"3,3\""
        } else {
            ""
        };
        format!(
            "<line class=\"{class}\" x1=\"{x:.1}\" y1=\"{ty}\" x2=\"{x:.1}\" y2=\"{base}\" stroke=\"#333\"{dash}/>\
             <text x=\"{tx:.1}\" y=\"{ty}\" text-anchor=\"{anchor}\">{label} {v:.3}</text>\n",
            base = Self::H - Self::BOTTOM
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVIL: &str = "<script>alert('x')</script> & co";

    fn face(row_id: u64, group: &str, score: f32, z: f32) -> FaceRow {
        let id = format!("{row_id:02}").repeat(32);
        let mut r = FaceRow::image_rejected(
            row_id,
            id.clone(),
            Some(group.into()),
            Reason::NoFace,
            String::new(),
        );
        r.verdict = Verdict::Kept;
        r.reason = None;
        r.detail = None;
        r.group = Some(group.into());
        r.face_index = Some(0);
        r.id_score = Some(score);
        r.id_z = Some(z);
        r.crop_path = Some(format!("curate/crops/{}/{id}_0.jpg", &id[..2]));
        r.ref_path = Some(format!("curate/refs/{}/{id}_0.jpg", &id[..2]));
        r
    }

    fn sample() -> FacesTable {
        let kept = face(1, EVIL, 0.712, 0.4);
        let mut outlier = face(2, EVIL, 0.301, -5.2);
        outlier.reject(Reason::IdOutlier, "id_score 0.301 < cut 0.520");
        outlier.crop_path = None;
        let small = FaceRow::image_rejected(
            3,
            "ff".repeat(32),
            None,
            Reason::LowResolution,
            "short side 511 < 512".into(),
        );
        FacesTable {
            embedder: "face-api".into(),
            embedding_dim: 0,
            rows: vec![kept, outlier, small],
        }
    }

    fn thresholds() -> Vec<GroupThresholds> {
        vec![GroupThresholds {
            group: EVIL.into(),
            median: Some(0.69),
            sigma: Some(0.05),
            relative_cut: Some(0.52),
            floor: 0.4,
        }]
    }

    fn page() -> String {
        let table = sample();
        let groups = thresholds();
        render(&ReportContext {
            run_name: "run<1>",
            table: &table,
            groups: &groups,
            settings_json: "{\"k\": \"<b>\"}",
        })
    }

    #[test]
    fn totals_count_images_faces_kept_and_identities() {
        let t = totals(&sample());
        assert_eq!((t.images, t.faces, t.kept, t.identities), (3, 2, 1, 1));
        let count = |r: Reason| t.per_reason.iter().find(|(x, _)| *x == r).unwrap().1;
        assert_eq!(count(Reason::IdOutlier), 1);
        assert_eq!(count(Reason::LowResolution), 1);
        assert_eq!(count(Reason::Duplicate), 0);
        assert_eq!(
            t.per_reason.iter().map(|p| p.0).collect::<Vec<_>>(),
            Reason::ALL
        );
    }

    #[test]
    fn page_shows_every_reason_and_the_counts() {
        let html = page();
        for r in Reason::ALL {
            assert!(
                html.contains(&format!("<td><code>{r}</code></td>")),
                "{r} missing"
            );
        }
        assert!(html.contains("<th>Images seen</th><td class=\"n\">3</td>"));
        assert!(html.contains("<th>Faces detected</th><td class=\"n\">2</td>"));
        assert!(html.contains("<th>Kept faces</th><td class=\"n\">1</td>"));
        assert!(html.contains("<th>Identities with a kept face</th><td class=\"n\">1</td>"));
        assert!(html.contains("<td><code>id_outlier</code></td><td class=\"n\">1</td>"));
        assert!(html.contains("<td><code>duplicate</code></td><td class=\"n\">0</td>"));
        assert!(html.contains("1 kept · 1 rejected"));
        assert!(html.contains("Rejected before grouping (1)"));
        assert!(html.contains("short side 511 &lt; 512"));
    }

    #[test]
    fn user_text_is_escaped() {
        let html = page();
        assert!(!html.contains("<script"), "raw script tag in page");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co"));
        assert!(html.contains("run&lt;1&gt;"));
        assert!(html.contains("{&quot;k&quot;: &quot;&lt;b&gt;&quot;}"));
    }

    #[test]
    fn histogram_has_bars_and_threshold_lines() {
        let html = page();
        assert_eq!(html.matches("<svg class=\"hist\"").count(), 1);
        assert!(html.contains("<line class=\"floor\""));
        assert!(html.contains("floor 0.400"));
        assert!(html.contains("<line class=\"cut\""));
        let table = sample();
        let rows: Vec<&FaceRow> = table.rows.iter().filter(|r| r.group.is_some()).collect();
        let h = Histogram::of(&rows, thresholds().first()).unwrap();
        // 0.30 .. 0.72 in bins of 0.02, the floor (0.40) inside.
        assert_eq!((h.first, h.kept.len()), (15, 21));
        assert_eq!(
            (h.kept.iter().sum::<u32>(), h.rejected.iter().sum::<u32>()),
            (1, 1)
        );
        assert_eq!(h.rejected[0], 1);
    }

    #[test]
    fn images_are_relative_to_the_run_and_lazy() {
        let html = page();
        let id = "01".repeat(32);
        assert!(html.contains(&format!(
            "src=\"../curate/crops/01/{id}_0.jpg\" alt=\"{}\" loading=\"lazy\"",
            &id[..12]
        )));
        // The outlier has no training crop: its reference crop stands in.
        assert!(html.contains(&format!(
            "src=\"../curate/refs/02/{}_0.jpg\"",
            "02".repeat(32)
        )));
        assert_eq!(image_src("a b/#1.jpg"), "../a%20b/%231.jpg");
    }

    #[test]
    fn write_replaces_the_file_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curate").join("report.html");
        let table = sample();
        let ctx = ReportContext {
            run_name: "r",
            table: &table,
            groups: &[],
            settings_json: "{}",
        };
        write(&path, &ctx).unwrap();
        write(&path, &ctx).unwrap();
        let html = std::fs::read_to_string(&path).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>") && html.contains("No thresholds recorded"));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
    }
}
