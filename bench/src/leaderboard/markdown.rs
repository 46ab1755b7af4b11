//! `LEADERBOARD.md`: the leaderboard as GitHub-flavoured Markdown, for READMEs, pull requests
//! and terminals, where the HTML page cannot be shown.
//!
//! The number formats live here too (`metric_format` and friends) and the HTML page and the
//! charts use them, so a value reads the same in all three files.

use std::fmt::Write as _;

use idforge_core::schema::Question;

use super::{Cost, CostSource, Estimate, Leaderboard, MethodRow, MetricInfo, SetResult};
use crate::ratings::{Agreement, ArenaResults, NeitherPolicy, QuestionRatings};

/// Shown wherever a value is absent (metric not computed, cost not given, image missing).
pub(crate) const DASH: &str = "—";

/// How one metric's numbers are written: its precision. Values are shown as stored; scaled
/// metrics say so in their label (`KID×10³`, `No face %`), as `aggregate` writes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MetricFormat {
    /// Decimals shown.
    pub decimals: usize,
}

impl MetricFormat {
    /// `v` rounded, or [`DASH`] when it is not a finite number.
    pub(crate) fn value(&self, v: f64) -> String {
        self.number(v).unwrap_or_else(|| DASH.to_string())
    }

    /// `value [lo, hi]`, the interval in the same precision.
    pub(crate) fn estimate(&self, e: &Estimate) -> String {
        match (self.number(e.value), self.number(e.lo), self.number(e.hi)) {
            (Some(v), Some(lo), Some(hi)) => format!("{v} [{lo}, {hi}]"),
            _ => self.value(e.value),
        }
    }

    /// Just the interval, `[lo, hi]`, or nothing when a bound is not finite.
    pub(crate) fn interval(&self, e: &Estimate) -> String {
        match (self.number(e.lo), self.number(e.hi)) {
            (Some(lo), Some(hi)) => format!("[{lo}, {hi}]"),
            _ => String::new(),
        }
    }

    fn number(&self, v: f64) -> Option<String> {
        if !v.is_finite() {
            return None;
        }
        let s = format!("{v:.*}", self.decimals);
        // "-0.000" reads as a sign error.
        Some(
            if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
                s[1..].to_string()
            } else {
                s
            },
        )
    }
}

/// Lower-cased key with separators removed, so `face_sim`, `Face-Sim` and `facesim` match.
pub(crate) fn normalize_key(key: &str) -> String {
    key.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The format of the metric with `key`, as `aggregate` stores it: Face-Sim, CLIP-I, DINO,
/// Face-Div and CMMD with 3 decimals; CLIP-T (torchmetrics' 100·cos), FID, IS and KID (stored
/// ×1000) with 2; the no-face rate (stored in percent) with 1; arena ratings (LMArena's scale,
/// where a point is noise) with none; anything else with 3.
pub(crate) fn metric_format(key: &str) -> MetricFormat {
    let k = normalize_key(key);
    let decimals = match k.as_str() {
        "facesim" | "clipi" | "dino" | "facediv" | "cmmd" => 3,
        "clipt" | "fid" | "is" | "inceptionscore" | "kid" => 2,
        _ if k.contains("fail") => 1,
        _ if k.contains("rating") => 0,
        _ => 3,
    };
    MetricFormat { decimals }
}

/// The metric of `lb` whose key normalizes to `key` (see [`normalize_key`]).
pub(crate) fn find_metric<'a>(lb: &'a Leaderboard, key: &str) -> Option<&'a MetricInfo> {
    let k = normalize_key(key);
    lb.metrics.iter().find(|m| normalize_key(&m.key) == k)
}

/// Key of Face-Sim, the identity metric every leaderboard has.
pub(crate) const FACE_SIM: &str = "face_sim";
/// Key of CLIP-T, the prompt-following metric (absent without CLIP weights).
pub(crate) const CLIP_T: &str = "clip_t";

/// One cost column: title, unit-bearing header, decimals, its key in [`Cost`].
pub(crate) struct CostColumn {
    /// Short header, e.g. `Train (min)`.
    pub title: &'static str,
    /// What it is, for tooltips and definitions.
    pub description: &'static str,
    /// Decimals shown.
    pub decimals: usize,
    /// The figure's key ([`super::COST_KEYS`]), also its key in [`Cost::sources`].
    pub key: &'static str,
}

/// The cost columns shown beside the quality columns, in display order.
pub(crate) const COST_COLUMNS: [CostColumn; 5] = [
    CostColumn {
        title: "Train (min)",
        description: "Training or tuning time, minutes: per identity for methods tuned per \
                      identity (0 for tuning-free methods), the one-off training for a general \
                      adapter trained for this bench (processes of a resumed run summed)",
        decimals: 1,
        key: "training_minutes",
    },
    CostColumn {
        title: "Train peak (GiB)",
        description: "Peak memory while training, GiB",
        decimals: 1,
        key: "training_peak_memory_gib",
    },
    CostColumn {
        title: "Disk (MiB)",
        description: "Extra disk per identity, MiB (0 for a general adapter, whose one file \
                      serves every identity)",
        decimals: 1,
        key: "disk_per_identity_mib",
    },
    CostColumn {
        title: "s/image",
        description: "Inference seconds per image",
        decimals: 2,
        key: "seconds_per_image",
    },
    CostColumn {
        title: "Peak (GiB)",
        description: "Peak memory while generating, GiB (GPU memory on a GPU, resident memory \
                      on the CPU)",
        decimals: 1,
        key: "peak_memory_gib",
    },
];

/// The mark after a figure idforge measured, explained under every table.
pub(crate) const MEASURED_MARK: &str = "ᵐ";

/// The legend of [`MEASURED_MARK`].
pub(crate) const MEASURED_NOTE: &str = "Costs: ᵐ measured by idforge (how and on which \
    hardware: the Methods table); unmarked figures are as reported in the method's method.toml.";

impl CostColumn {
    /// The figure, if the method has it.
    pub(crate) fn get(&self, cost: &Cost) -> Option<f64> {
        cost.figure(self.key).filter(|v| v.is_finite())
    }

    /// Whether the figure is there and idforge measured it.
    pub(crate) fn measured(&self, cost: Option<&Cost>) -> bool {
        cost.and_then(|c| c.source(self.key))
            .is_some_and(|s| s.is_measured())
    }

    /// The figure with this column's decimals (and [`MEASURED_MARK`] when measured), or
    /// [`DASH`].
    pub(crate) fn format(&self, cost: Option<&Cost>) -> String {
        match cost.and_then(|c| self.get(c)) {
            Some(v) if self.measured(cost) => format!("{v:.*}{MEASURED_MARK}", self.decimals),
            Some(v) => format!("{v:.*}", self.decimals),
            None => DASH.to_string(),
        }
    }
}

/// Where a method's cost figures came from, one phrase per source, e.g. `s/image, Peak (GiB):
/// measured by idforge bench generate on <hardware> (rendering only)` and `Train (min):
/// reported (A100)`; empty without figures.
pub(crate) fn cost_sources(cost: &Cost) -> Vec<String> {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for c in &COST_COLUMNS {
        let Some(source) = cost.source(c.key) else {
            continue;
        };
        let what = match source {
            CostSource::Measured { by, hardware, note } => {
                let mut w = format!("measured by {by} on {hardware}");
                if let Some(n) = note {
                    let _ = write!(w, " ({n})");
                }
                w
            }
            CostSource::Reported => match &cost.hardware {
                Some(h) => format!("reported ({h})"),
                None => "reported".to_string(),
            },
        };
        match groups.iter_mut().find(|(w, _)| *w == what) {
            Some((_, titles)) => titles.push(c.title),
            None => groups.push((what, vec![c.title])),
        }
    }
    groups
        .into_iter()
        .map(|(what, titles)| format!("{}: {what}", titles.join(", ")))
        .collect()
}

/// The first 12 hex digits of a sha256: enough to tell two protocols apart by eye.
pub(crate) fn short_hash(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

/// Categories to show for `set`: the protocol's, in its order, then any others the rows carry.
pub(crate) fn categories(lb: &Leaderboard, set: &SetResult) -> Vec<String> {
    let mut out: Vec<String> = lb.protocol.categories.clone();
    for row in &set.rows {
        for c in row.by_category.keys() {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
    }
    out
}

/// The bootstrap as one sentence, e.g. "95 % bootstrap intervals over images (1000 resamples,
/// seed 7)".
pub(crate) fn bootstrap_sentence(lb: &Leaderboard) -> String {
    let b = &lb.bootstrap;
    let level = b.level * 100.0;
    let level = if (level - level.round()).abs() < 1e-9 {
        format!("{level:.0}")
    } else {
        format!("{level}")
    };
    format!(
        "{level} % bootstrap intervals over {} ({} resamples, seed {})",
        b.unit, b.resamples, b.seed
    )
}

/// Escapes text for a Markdown table cell or inline text: pipes would split cells, and
/// backslash-escaped punctuation keeps users' method names from becoming links, emphasis or
/// HTML. Line breaks become spaces, since a cell is one line.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '|' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '&' | '#' | '!' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Text inside backticks: code spans take no escapes, so backticks are dropped instead.
fn code(s: &str) -> String {
    format!("`{}`", s.replace(['`', '\n', '\r'], ""))
}

/// Renders `LEADERBOARD.md`: a header saying which protocol, networks and bootstrap produced the
/// numbers; per reference set a table of every metric in `lb.metrics` as `value [lo, hi]` with
/// the cost columns beside it, then Face-Sim and CLIP-T per prompt category; the methods; and the
/// metric definitions. Absent values are written as `—`.
pub fn render(lb: &Leaderboard) -> String {
    let mut md = String::new();
    header(&mut md, lb);
    for set in &lb.sets {
        set_table(&mut md, lb, set);
        category_table(&mut md, lb, set);
    }
    if let Some(arena) = &lb.arena {
        arena_sections(&mut md, arena);
    }
    methods(&mut md, lb);
    definitions(&mut md, lb);
    md
}

fn header(md: &mut String, lb: &Leaderboard) {
    let p = &lb.protocol;
    let m = &lb.models;
    let opt = |v: &Option<String>| v.as_deref().map_or_else(|| "not given".to_string(), code);
    let _ = writeln!(md, "# Leaderboard — {} v{}\n", escape(&p.name), p.version);
    let _ = writeln!(
        md,
        "- **Protocol:** {} version {}, sha256 {}, references sha256 {}; {} prompts × {} seeds; \
         categories: {}",
        code(&p.name),
        p.version,
        code(short_hash(&p.sha256)),
        code(short_hash(&p.references_sha256)),
        p.prompts,
        p.seeds,
        if p.categories.is_empty() {
            DASH.to_string()
        } else {
            p.categories
                .iter()
                .map(|c| escape(c))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        md,
        "- **Models:** face embedder {}{}; CLIP {}; DINO {}; Inception {}",
        code(&m.face_embedder),
        m.face_detector
            .as_ref()
            .map(|d| format!(" after detector {}", code(d)))
            .unwrap_or_default(),
        opt(&m.clip),
        opt(&m.dino),
        opt(&m.inception)
    );
    let _ = writeln!(md, "- **Intervals:** {}", escape(&bootstrap_sentence(lb)));
    if let Some(arena) = &lb.arena {
        let _ = writeln!(
            md,
            "- **Arena:** {}: {}. {}.",
            code(&arena.source),
            escape(&arena_votes_sentence(arena)),
            escape(&arena_method_sentence(arena))
        );
    }
    let _ = writeln!(
        md,
        "- **Generated:** {} by idforge {}",
        escape(&lb.generated_at),
        escape(&lb.idforge_version)
    );
    let _ = write!(
        md,
        "\nEach cell is `value [lo, hi]`; ↑ marks metrics where higher is better, ↓ lower; Scored counts \
         the generations found and decoded against those the protocol expects. "
    );
    let _ = writeln!(md, "{DASH} means not computed or not given.\n");
}

/// `↑` or `↓` after a label.
fn arrow(mi: &MetricInfo) -> &'static str {
    if mi.higher_is_better { "↑" } else { "↓" }
}

fn row_for<'a>(set: &'a SetResult, method: &str) -> Option<&'a MethodRow> {
    set.rows.iter().find(|r| r.method == method)
}

fn set_table(md: &mut String, lb: &Leaderboard, set: &SetResult) {
    let _ = writeln!(md, "## {}\n", escape(&set.name));
    if !set.description.is_empty() {
        let _ = write!(md, "{} ", escape(&set.description));
    }
    let _ = writeln!(
        md,
        "{} identities, {} reference images.\n",
        set.identities, set.references
    );

    let mut head = vec!["Method".to_string(), "Scored".to_string()];
    let mut align = vec![":---".to_string(), "---:".to_string()];
    for mi in &lb.metrics {
        head.push(format!("{} {}", escape(&mi.label), arrow(mi)));
        align.push("---:".into());
    }
    for c in &COST_COLUMNS {
        head.push(c.title.into());
        align.push("---:".into());
    }
    let _ = writeln!(md, "| {} |", head.join(" | "));
    let _ = writeln!(md, "|{}|", align.join("|"));
    for row in &set.rows {
        let entry = lb.methods.iter().find(|m| m.name == row.method);
        let mut cells = vec![
            method_cell(&row.method, entry.is_some_and(|e| e.builtin)),
            format!("{}/{}", row.scored, row.expected),
        ];
        for mi in &lb.metrics {
            cells.push(
                row.metrics
                    .get(&mi.key)
                    .map_or_else(|| DASH.to_string(), |e| metric_format(&mi.key).estimate(e)),
            );
        }
        for c in &COST_COLUMNS {
            cells.push(c.format(entry.map(|e| &e.cost)));
        }
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    md.push('\n');
    let any_measured = set.rows.iter().any(|row| {
        let cost = lb
            .methods
            .iter()
            .find(|m| m.name == row.method)
            .map(|e| &e.cost);
        COST_COLUMNS.iter().any(|c| c.measured(cost))
    });
    if any_measured {
        let _ = writeln!(md, "{}\n", escape(MEASURED_NOTE));
    }
}

fn method_cell(name: &str, builtin: bool) -> String {
    if builtin {
        format!("{} (baseline)", escape(name))
    } else {
        escape(name)
    }
}

fn category_table(md: &mut String, lb: &Leaderboard, set: &SetResult) {
    let shown: Vec<&MetricInfo> = [FACE_SIM, CLIP_T]
        .iter()
        .filter_map(|k| find_metric(lb, k))
        .filter(|mi| {
            set.rows
                .iter()
                .any(|r| r.by_category.values().any(|m| m.contains_key(&mi.key)))
        })
        .collect();
    if shown.is_empty() {
        return;
    }
    let _ = writeln!(md, "### {} by prompt category\n", escape(&set.name));
    let mut head = vec!["Category".to_string(), "Method".to_string()];
    for mi in &shown {
        head.push(format!("{} {}", escape(&mi.label), arrow(mi)));
    }
    let _ = writeln!(md, "| {} |", head.join(" | "));
    let _ = writeln!(md, "|:---|:---|{}", "---:|".repeat(shown.len()));
    for cat in categories(lb, set) {
        for entry in &lb.methods {
            let Some(row) = row_for(set, &entry.name) else {
                continue;
            };
            let Some(values) = row.by_category.get(&cat) else {
                continue;
            };
            let mut cells = vec![escape(&cat), method_cell(&row.method, entry.builtin)];
            for mi in &shown {
                cells.push(
                    values
                        .get(&mi.key)
                        .map_or_else(|| DASH.to_string(), |e| metric_format(&mi.key).estimate(e)),
                );
            }
            let _ = writeln!(md, "| {} |", cells.join(" | "));
        }
    }
    md.push('\n');
}

fn methods(md: &mut String, lb: &Leaderboard) {
    if lb.methods.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Methods\n");
    let _ = writeln!(
        md,
        "| Method | Base model | Trigger | Cost sources | Link |"
    );
    let _ = writeln!(md, "|:---|:---|:---|:---|:---|");
    for m in &lb.methods {
        let opt = |v: &Option<String>| v.as_deref().map_or_else(|| DASH.to_string(), escape);
        let link = match m.link.as_deref() {
            Some(l) if is_web_link(l) => format!("<{}>", l.replace(['<', '>', '|', ' '], "")),
            Some(l) => escape(l),
            None => DASH.to_string(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            method_cell(&m.name, m.builtin),
            opt(&m.base_model),
            m.trigger.as_deref().map_or_else(|| DASH.to_string(), code),
            match cost_sources(&m.cost) {
                s if s.is_empty() => DASH.to_string(),
                s => escape(&s.join("; ")),
            },
            link
        );
    }
    md.push('\n');
}

/// Whether `link` is an http(s) URL, the only kind rendered as a link.
pub(crate) fn is_web_link(link: &str) -> bool {
    let l = link.trim().to_ascii_lowercase();
    (l.starts_with("https://") || l.starts_with("http://"))
        && !link.chars().any(char::is_whitespace)
}

fn definitions(md: &mut String, lb: &Leaderboard) {
    let _ = writeln!(md, "## Metrics\n");
    for mi in &lb.metrics {
        let _ = writeln!(
            md,
            "- **{}** ({}; {}): {}",
            escape(&mi.label),
            code(&mi.key),
            mi.reading(),
            escape(&mi.description)
        );
    }
    for c in &COST_COLUMNS {
        let _ = writeln!(
            md,
            "- **{}**: {}; measured by idforge where marked {MEASURED_MARK}, else as reported \
             in method.toml.",
            escape(c.title),
            c.description
        );
    }
    if let Some(arena) = &lb.arena {
        for (term, text) in arena_definitions(arena) {
            let _ = writeln!(md, "- **{}**: {}", escape(term), escape(&text));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The arena: words and numbers shared by the Markdown and HTML renderings.

/// The question as raters saw it.
pub(crate) fn question_text(q: Question) -> &'static str {
    match q {
        Question::Fidelity => "Which image looks more like the person in the reference?",
        Question::Adherence => "Which image matches the prompt better?",
    }
}

/// The section title of a question's ratings, e.g. "Arena — identity fidelity".
pub(crate) fn question_title(q: Question) -> &'static str {
    match q {
        Question::Fidelity => "Arena — identity fidelity",
        Question::Adherence => "Arena — prompt adherence",
    }
}

/// Format of the ratings and their intervals: whole points.
pub(crate) fn rating_format() -> MetricFormat {
    metric_format("arena_rating")
}

/// A win rate in [0, 1] as a percentage with one decimal, e.g. "58.2 %".
pub(crate) fn percent(rate: f64) -> String {
    if rate.is_finite() {
        format!("{:.1} %", rate * 100.0)
    } else {
        DASH.to_string()
    }
}

/// A win rate in [0, 1] as a whole percentage, for the matrix cells.
pub(crate) fn percent_short(rate: f64) -> String {
    format!("{:.0} %", rate * 100.0)
}

/// The interval `[lo, hi]` of a method's rating, or [`DASH`] without resamples.
pub(crate) fn rating_interval(lo: Option<f64>, hi: Option<f64>) -> String {
    match (lo, hi) {
        (Some(lo), Some(hi)) => {
            let f = rating_format();
            format!("[{}, {}]", f.value(lo), f.value(hi))
        }
        _ => DASH.to_string(),
    }
}

/// e.g. "2345 votes rated (fidelity 1234, adherence 1111; left out: 3 practice)".
pub(crate) fn arena_votes_sentence(arena: &ArenaResults) -> String {
    let v = &arena.votes;
    let per_q: Vec<String> = arena
        .questions
        .iter()
        .map(|q| format!("{} {}", q.question.as_str(), q.comparisons))
        .collect();
    let mut s = format!("{} votes rated", v.rated);
    let mut left_out = Vec::new();
    if v.practice > 0 {
        left_out.push(format!("{} practice", v.practice));
    }
    if v.neither_dropped > 0 {
        left_out.push(format!("{} neither", v.neither_dropped));
    }
    if v.same_method > 0 {
        left_out.push(format!("{} same-method", v.same_method));
    }
    let mut details = per_q.join(", ");
    if !left_out.is_empty() {
        if !details.is_empty() {
            details.push_str("; ");
        }
        let _ = write!(details, "left out: {}", left_out.join(", "));
    }
    if !details.is_empty() {
        let _ = write!(s, " ({details})");
    }
    s
}

/// How the ratings were made, in one sentence.
pub(crate) fn arena_method_sentence(arena: &ArenaResults) -> String {
    let neither = match arena.neither {
        NeitherPolicy::Tie => "“neither” counted as a tie",
        NeitherPolicy::Drop => "“neither” answers left out",
    };
    let intervals = if arena.resamples > 0 {
        format!(
            "{:.0} % intervals from {} multinomial bootstrap resamples of the votes (seed {})",
            arena.level * 100.0,
            arena.resamples,
            arena.seed
        )
    } else {
        "no intervals (0 resamples)".to_string()
    };
    format!(
        "Bradley–Terry ratings (scale {}, base {}, mean {}), {neither}; {intervals}",
        arena.scale, arena.base, arena.anchor
    )
}

/// e.g. "12 raters; on 40 items several raters judged, 71.2 % of rater pairs agree
/// (Krippendorff's α = 0.45)".
pub(crate) fn agreement_sentence(q: &QuestionRatings) -> String {
    let a: &Agreement = &q.agreement;
    let raters = format!(
        "{} vote{} by {} rater{}",
        q.comparisons,
        if q.comparisons == 1 { "" } else { "s" },
        q.raters,
        if q.raters == 1 { "" } else { "s" }
    );
    match a.percent {
        Some(p) => {
            let alpha = a.krippendorff_alpha.map_or_else(
                || "undefined: every answer the same".to_string(),
                |v| format!("{v:.2}"),
            );
            format!(
                "{raters}; on the {} item{} that several raters judged, {p:.1} % of {} rater pairs agree \
                 (Krippendorff's α = {alpha})",
                a.units,
                if a.units == 1 { "" } else { "s" },
                a.rater_pairs
            )
        }
        None => format!("{raters}; no item was judged by two raters yet, so no agreement figure"),
    }
}

/// Whether any method of `q` is separated (its rating only a bound).
pub(crate) fn any_separated(q: &QuestionRatings) -> bool {
    q.methods.iter().any(|m| m.separated)
}

/// The footnote for separated methods.
pub(crate) const SEPARATED_NOTE: &str = "never won (or never lost) against the others, directly \
     or through them: no finite maximum-likelihood rating exists, the rating shown is held by \
     a weak prior and only says \"far below\" (or above); ranked by its interval as usual.";

/// The note for questions whose methods fall into groups that never met.
pub(crate) const GROUPS_NOTE: &str = "Some methods were never compared with others, directly \
     or through a chain of votes: each group averages 1000 on its own, and ratings and ranks \
     compare only within a group.";

/// The arena's column and figure definitions, as (term, definition).
pub(crate) fn arena_definitions(arena: &ArenaResults) -> Vec<(&'static str, String)> {
    let level = format!("{:.0} %", arena.level * 100.0);
    vec![
        (
            "Arena rating",
            format!(
                "Bradley–Terry maximum-likelihood rating from the raters' pairwise choices, on \
                 LMArena's scale: a method rated {} points above another is preferred {}:1 \
                 (ties count half a win each; {}). The ratings of methods compared with each \
                 other average {}.",
                arena.scale,
                arena.base,
                match arena.neither {
                    NeitherPolicy::Tie => "\"neither\" counts as a tie",
                    NeitherPolicy::Drop => "\"neither\" answers are left out",
                },
                arena.anchor
            ),
        ),
        (
            "Arena interval",
            format!(
                "{level} bootstrap interval of the rating: the votes resampled with replacement \
                 {} times, the ratings refitted on each resample, the {} and {} quantiles.",
                arena.resamples,
                format_args!("{:.1} %", (1.0 - arena.level) / 2.0 * 100.0),
                format_args!("{:.1} %", (1.0 + arena.level) / 2.0 * 100.0)
            ),
        ),
        (
            "Arena rank",
            "1 + the number of methods whose interval lies entirely above this method's \
             (LMArena's rank): methods whose intervals overlap share a rank."
                .to_string(),
        ),
        (
            "Votes",
            "comparisons the method took part in, for this question (practice answers excluded)."
                .to_string(),
        ),
        (
            "Win rate",
            "(wins + ½ ties) / votes; in the matrix, of the row's method against the column's."
                .to_string(),
        ),
        (
            "Rater agreement",
            "on items (same images, same pair of methods) answered by at least two raters, each \
             rater's last answer: the share of rater pairs that gave the same answer, and \
             Krippendorff's α for nominal data (1 perfect, 0 chance level)."
                .to_string(),
        ),
    ]
}

fn arena_sections(md: &mut String, arena: &ArenaResults) {
    if arena.questions.is_empty() {
        let _ = writeln!(md, "## Arena\n");
        let _ = writeln!(
            md,
            "No rated votes in {} yet ({}).\n",
            code(&arena.source),
            escape(&arena_votes_sentence(arena))
        );
        return;
    }
    for q in &arena.questions {
        arena_table(md, arena, q);
        arena_matrix(md, q);
    }
}

fn arena_table(md: &mut String, arena: &ArenaResults, q: &QuestionRatings) {
    let _ = writeln!(md, "## {}\n", question_title(q.question));
    let _ = writeln!(
        md,
        "{} {}.\n",
        escape(question_text(q.question)),
        escape(&agreement_sentence(q))
    );
    let groups = q.components > 1;
    let mut head = vec!["Method", "Rank", "Rating ↑"];
    let ci = format!("{:.0} % CI", arena.level * 100.0);
    head.push(&ci);
    head.extend(["Votes", "Win rate"]);
    if groups {
        head.push("Group");
    }
    let _ = writeln!(md, "| {} |", head.join(" | "));
    let _ = writeln!(md, "|:---|{}", "---:|".repeat(head.len() - 1));
    let f = rating_format();
    for m in &q.methods {
        let mut cells = vec![
            format!(
                "{}{}",
                escape(&m.method),
                if m.separated { " †" } else { "" }
            ),
            m.rank.to_string(),
            f.value(m.rating),
            rating_interval(m.lo, m.hi),
            m.games.to_string(),
            percent(m.win_rate),
        ];
        if groups {
            cells.push((m.component + 1).to_string());
        }
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    md.push('\n');
    if any_separated(q) {
        let _ = writeln!(md, "† {}\n", escape(SEPARATED_NOTE));
    }
    if groups {
        let _ = writeln!(md, "{}\n", escape(GROUPS_NOTE));
    }
}

fn arena_matrix(md: &mut String, q: &QuestionRatings) {
    if q.methods.len() < 2 {
        return;
    }
    let _ = writeln!(md, "### {}: win rates\n", question_title(q.question));
    let _ = writeln!(
        md,
        "Row against column: (wins + ½ ties) / votes, votes in parentheses; {DASH} never compared. \
         Columns are numbered as the rows.\n"
    );
    let n = q.methods.len();
    let mut head = vec![String::new()];
    head.extend((1..=n).map(|k| format!("{k}")));
    let _ = writeln!(md, "| {} |", head.join(" | "));
    let _ = writeln!(md, "|:---|{}", "---:|".repeat(n));
    for (r, row) in q.methods.iter().enumerate() {
        let mut cells = vec![format!("{} {}", r + 1, escape(&row.method))];
        for (c, col) in q.methods.iter().enumerate() {
            cells.push(if r == c {
                String::new()
            } else {
                match q.win_rate(&row.method, &col.method) {
                    Some((rate, games)) => format!("{} ({games})", percent_short(rate)),
                    None => DASH.to_string(),
                }
            });
        }
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    md.push('\n');
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::leaderboard::{
        BootstrapInfo, Grid, GridCell, LEADERBOARD_SCHEMA_VERSION, MethodEntry, ModelsUsed,
        ProtocolInfo,
    };

    fn est(value: f64, half: f64, n: usize) -> Estimate {
        Estimate {
            value,
            lo: value - half,
            hi: value + half,
            n,
        }
    }

    fn metric(key: &str, label: &str, higher: bool, per_image: bool) -> MetricInfo {
        MetricInfo {
            key: key.into(),
            label: label.into(),
            higher_is_better: higher,
            per_image,
            description: format!("{label} | what it measures"),
        }
    }

    /// A small leaderboard shared by this crate's rendering tests: three methods (one a
    /// baseline, one with a name full of markup), two sets, CLIP-T only on the first.
    pub(crate) fn sample() -> Leaderboard {
        let method = |name: &str, builtin: bool, cost: Cost| MethodEntry {
            name: name.into(),
            builtin,
            base_model: (!builtin).then(|| "SDXL 1.0".into()),
            link: (!builtin).then(|| "https://example.org/paper".into()),
            trigger: None,
            settings: BTreeMap::new(),
            cost,
        };
        let names = ["copy-reference", "photo|maker", "<b>&\"x\""];
        let row = |i: usize, clip: bool| {
            let mut metrics = BTreeMap::new();
            metrics.insert(
                "face_sim".into(),
                est([0.9123, 0.61234, 0.455][i], 0.0123, 40),
            );
            if clip {
                metrics.insert("clip_t".into(), est([21.456, 30.5, 31.25][i], 0.5, 40));
            }
            if i > 0 {
                metrics.insert("fid".into(), est(55.4321, 3.0, 40));
                metrics.insert("kid".into(), est(12.3456, 1.0, 40));
            }
            metrics.insert("face_failure".into(), est([0.0, 12.5, 5.0][i], 1.0, 40));
            let mut by_category = BTreeMap::new();
            for (c, shift) in [("portrait", 0.0), ("action", -0.05)] {
                let mut m = BTreeMap::new();
                m.insert(
                    "face_sim".into(),
                    est([0.9, 0.6, 0.45][i] + shift, 0.02, 20),
                );
                if clip {
                    m.insert(
                        "clip_t".into(),
                        est([21.0, 30.0, 31.0][i] - shift * 10.0, 0.6, 20),
                    );
                }
                by_category.insert(c.to_string(), m);
            }
            MethodRow {
                method: names[i].into(),
                expected: 40,
                scored: if i == 2 { 38 } else { 40 },
                metrics,
                by_category,
            }
        };
        Leaderboard {
            schema_version: LEADERBOARD_SCHEMA_VERSION,
            protocol: ProtocolInfo {
                name: "idforge-v1".into(),
                version: 1,
                sha256: "0123456789abcdef0123456789abcdef".into(),
                references_sha256: "fedcba9876543210fedcba9876543210".into(),
                seeds: 2,
                prompts: 10,
                categories: vec!["portrait".into(), "action".into()],
            },
            generated_at: "2025-01-02T03:04:05Z".into(),
            idforge_version: "0.1.0".into(),
            models: ModelsUsed {
                face_embedder: "face-api".into(),
                clip: Some("ViT-L-14.safetensors".into()),
                dino: None,
                inception: Some("pt_inception.pth".into()),
                face_detector: None,
            },
            bootstrap: BootstrapInfo {
                resamples: 1000,
                seed: 7,
                level: 0.95,
                unit: "(identity, prompt) items".into(),
            },
            metrics: vec![
                metric("face_sim", "Face-Sim", true, true),
                metric("clip_t", "CLIP-T", true, true),
                metric("fid", "FID", false, false),
                metric("kid", "KID×10³", false, false),
                metric("face_failure", "No face %", false, true),
            ],
            methods: vec![
                method(
                    "copy-reference",
                    true,
                    Cost {
                        training_minutes: Some(0.0),
                        ..Cost::default()
                    },
                ),
                method(
                    "photo|maker",
                    false,
                    Cost {
                        training_minutes: Some(0.0),
                        peak_memory_gib: Some(23.456),
                        disk_per_identity_mib: None,
                        seconds_per_image: Some(4.2),
                        hardware: Some("1× A100 80GB".into()),
                        training_peak_memory_gib: None,
                        sources: [(
                            "seconds_per_image".to_string(),
                            CostSource::Measured {
                                by: "idforge bench generate".into(),
                                hardware: "2× CPU <x>".into(),
                                note: Some("rendering only".into()),
                            },
                        )]
                        .into(),
                    },
                ),
                method("<b>&\"x\"", false, Cost::default()),
            ],
            sets: vec![
                SetResult {
                    name: "in-train".into(),
                    description: "Identities seen in training.".into(),
                    identities: 5,
                    references: 20,
                    rows: (0..3).map(|i| row(i, true)).collect(),
                },
                SetResult {
                    name: "out-of-train".into(),
                    description: "Identities never seen.".into(),
                    identities: 4,
                    references: 16,
                    rows: (0..3).map(|i| row(i, false)).collect(),
                },
            ],
            grids: vec![Grid {
                set: "in-train".into(),
                identity: "id_001".into(),
                prompt_id: "p03".into(),
                prompt: "a photo of a person <surfing>".into(),
                seed: 1,
                reference: "thumbs/ref.png".into(),
                cells: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| GridCell {
                        method: n.to_string(),
                        image: (i != 2).then(|| format!("thumbs/m{i}.png")),
                        face_sim: (i != 2).then_some(0.5),
                    })
                    .collect(),
            }],
            arena: Some(sample_arena(false)),
        }
    }

    /// Arena results for the sample's three methods on both questions (the better-named method
    /// wins 6 of 10, loses 2, ties 1, "neither" 1), rated by the real pipeline; with `loser`, a
    /// fourth method that loses every fidelity vote.
    pub(crate) fn sample_arena(loser: bool) -> ArenaResults {
        use idforge_core::schema::{Answer, VoteRow};
        let names = ["photo|maker", "<b>&\"x\"", "copy-reference"];
        let mut rows = Vec::new();
        let mut push = |q: Question, left: &str, right: &str, answer: Answer, k: usize| {
            rows.push(VoteRow {
                vote_id: rows.len() as i64,
                rater: format!("r{}", (k / 3) % 3),
                question: q,
                set: "in-train".into(),
                identity: format!("id_{}", (k / 3) % 4),
                prompt_id: "p03".into(),
                seed: 0,
                method_left: left.into(),
                method_right: right.into(),
                answer,
                practice: k.is_multiple_of(50),
                shown_at: 0,
                answered_at: 0,
                answer_ms: 900,
            });
        };
        for k in 0..240 {
            let (i, j) = [(0, 1), (0, 2), (1, 2)][k % 3];
            let answer = match k % 10 {
                0..=5 => Answer::Left,
                6 | 7 => Answer::Right,
                8 => Answer::Tie,
                _ => Answer::Neither,
            };
            let q = if k % 4 == 3 {
                Question::Adherence
            } else {
                Question::Fidelity
            };
            push(q, names[i], names[j], answer, k);
            if loser && k % 2 == 0 {
                push(
                    Question::Fidelity,
                    "never-wins",
                    names[k % 3],
                    Answer::Right,
                    k,
                );
            }
        }
        crate::ratings::rate_votes(
            &rows,
            "arena/votes.parquet",
            &crate::ratings::RatingOptions {
                resamples: 200,
                seed: 7,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn line_with<'a>(md: &'a str, needle: &str) -> &'a str {
        md.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{md}"))
    }

    #[test]
    fn pipes_and_markup_in_names_are_escaped() {
        let md = render(&sample());
        let row = line_with(&md, "photo\\|maker");
        // Escaped pipes do not split cells: Method, scored, 5 metrics, 5 costs = 12 cells.
        let unescaped = row.replace("\\|", "");
        assert_eq!(unescaped.matches('|').count(), 13, "{row}");
        assert!(md.contains("\\<b\\>\\&\"x\""), "{md}");
        assert!(!md.contains("<b>"), "{md}");
        assert!(line_with(&md, "**Face-Sim**").contains("Face-Sim \\| what it measures"));
    }

    #[test]
    fn values_have_per_metric_precision_and_intervals() {
        let md = render(&sample());
        let row = line_with(&md, "| photo\\|maker |");
        assert!(
            row.contains("| 0.612 [0.600, 0.625] |"),
            "Face-Sim 3 decimals: {row}"
        );
        assert!(
            row.contains("| 30.50 [30.00, 31.00] |"),
            "CLIP-T 2 decimals: {row}"
        );
        assert!(
            row.contains("| 55.43 [52.43, 58.43] |"),
            "FID 2 decimals: {row}"
        );
        assert!(row.contains("| 12.35 [11.35, 13.35] |"), "KID ×1000: {row}");
        assert!(
            row.contains("| 12.5 [11.5, 13.5] |"),
            "no-face rate, 1 decimal: {row}"
        );
        assert!(
            row.starts_with("| photo\\|maker | 40/40 | 0.612"),
            "scored: {row}"
        );
        assert!(
            row.ends_with("| 0.0 | — | — | 4.20ᵐ | 23.5 |"),
            "cost, the measured one marked: {row}"
        );
        assert!(line_with(&md, "| Method |").contains("KID×10³ ↓"));
    }

    #[test]
    fn measured_costs_are_marked_and_their_sources_listed() {
        let md = render(&sample());
        let methods = &md[md.find("## Methods").unwrap()..];
        let row = line_with(methods, "| photo\\|maker |");
        assert!(
            row.contains(
                "Train (min), Peak (GiB): reported (1× A100 80GB); s/image: measured by \
                 idforge bench generate on 2× CPU \\<x\\> (rendering only)"
            ),
            "{row}"
        );
        assert!(md.contains(MEASURED_NOTE), "the legend under the tables");
        let mut none = sample();
        for m in &mut none.methods {
            m.cost.sources.clear();
        }
        let md = render(&none);
        assert!(!md.contains(MEASURED_NOTE) && !md.contains("4.20ᵐ"), "{md}");
    }

    #[test]
    fn absent_metrics_and_costs_are_dashes() {
        let md = render(&sample());
        let base = line_with(&md, "| copy-reference (baseline) |");
        // No FID/KID for the baseline, no cost but training time.
        assert!(base.contains("| 0.912 [0.900, 0.925] | 21.46 [20.96, 21.96] | — | — | 0.0 [-1.0, 1.0] | 0.0 | — | — | — | — |"), "{base}");
        // CLIP-T absent on the second set.
        let second = &md[md.find("\n## out-of-train").unwrap()..];
        let row = line_with(second, "| photo\\|maker |");
        assert!(row.contains("| 0.612 [0.600, 0.625] | — | 55.43"), "{row}");
        let cat = &second[second.find("### out-of-train by prompt category").unwrap()..];
        let head = line_with(cat, "| Category |");
        assert!(
            !head.contains("CLIP-T"),
            "CLIP-T column only where computed: {head}"
        );
    }

    #[test]
    fn metrics_missing_from_the_list_are_not_shown() {
        let mut lb = sample();
        lb.metrics.retain(|m| m.key != "fid");
        let md = render(&lb);
        assert!(!md.contains("FID"), "{md}");
        assert!(!md.contains("55.43"), "{md}");
    }

    #[test]
    fn header_names_protocol_models_and_bootstrap() {
        let md = render(&sample());
        assert!(md.starts_with("# Leaderboard — idforge-v1 v1\n"));
        assert!(md.contains("sha256 `0123456789ab`"), "{md}");
        assert!(
            md.contains("CLIP `ViT-L-14.safetensors`; DINO not given"),
            "{md}"
        );
        assert!(
            md.contains(
                "95 % bootstrap intervals over (identity, prompt) items (1000 resamples, seed 7)"
            ),
            "{md}"
        );
        assert!(md.contains("2025-01-02T03:04:05Z"));
    }

    #[test]
    fn per_category_table_lists_categories_in_protocol_order() {
        let md = render(&sample());
        let cat = md.split("### in-train by prompt category").nth(1).unwrap();
        let portrait = cat.find("| portrait | photo\\|maker |").unwrap();
        let action = cat.find("| action | photo\\|maker |").unwrap();
        assert!(portrait < action);
        assert!(
            line_with(cat, "| action | photo\\|maker |")
                .contains("| 0.550 [0.530, 0.570] | 30.50 [29.90, 31.10] |")
        );
    }

    #[test]
    fn formats_by_key() {
        assert_eq!(metric_format("CLIP-I").value(0.12345), "0.123");
        assert_eq!(metric_format("is").value(12.345), "12.35");
        assert_eq!(metric_format("cmmd").value(1.23456), "1.235");
        assert_eq!(metric_format("face_failure").value(12.345), "12.3");
        assert_eq!(metric_format("kid").value(1.2345), "1.23");
        assert_eq!(metric_format("face_sim").value(-0.0001), "0.000");
        assert_eq!(metric_format("face_sim").value(f64::NAN), "—");
        assert_eq!(escape("a|b\nc"), "a\\|b c");
    }

    #[test]
    fn arena_sections_show_ratings_intervals_ranks_votes_and_win_rates() {
        let lb = sample();
        let md = render(&lb);
        let arena = lb.arena.as_ref().unwrap();
        let fid = &arena.questions[0];
        assert_eq!(fid.question, Question::Fidelity);
        let section = md.split("## Arena — identity fidelity\n").nth(1).unwrap();
        assert!(
            section
                .trim_start()
                .starts_with("Which image looks more like the person"),
            "{section}"
        );
        let head = line_with(section, "| Method |");
        assert_eq!(
            head,
            "| Method | Rank | Rating ↑ | 95 % CI | Votes | Win rate |"
        );
        // Best first; every number as the document has it.
        let best = &fid.methods[0];
        assert_eq!(best.method, "photo|maker");
        let row = line_with(section, "| photo\\|maker |");
        assert_eq!(
            row,
            format!(
                "| photo\\|maker | {} | {:.0} | [{:.0}, {:.0}] | {} | {:.1} % |",
                best.rank,
                best.rating,
                best.lo.unwrap(),
                best.hi.unwrap(),
                best.games,
                best.win_rate * 100.0
            )
        );
        assert!(section.contains("\\<b\\>\\&\"x\"") && !section.contains("<b>"));
        // The matrix: 3 methods, row 1 against column 2 as the pair record says.
        let matrix = section
            .split("### Arena — identity fidelity: win rates")
            .nth(1)
            .unwrap();
        let (rate, games) = fid
            .win_rate(&fid.methods[0].method, &fid.methods[1].method)
            .unwrap();
        let first = line_with(matrix, "| 1 photo\\|maker |");
        assert!(
            first.contains(&format!("| {:.0} % ({games}) |", rate * 100.0)),
            "{first}"
        );
        assert!(md.contains("## Arena — prompt adherence"));
        // Header and definitions.
        assert!(
            line_with(&md, "- **Arena:**").contains("“neither” counted as a tie"),
            "{md}"
        );
        assert!(md.contains("- **Arena rating**: Bradley–Terry"));
        assert!(md.contains("- **Rater agreement**:"));
        assert!(section.contains("Krippendorff's α = "), "{section}");
        assert!(!section.contains("†"), "no separated method here");
    }

    #[test]
    fn a_method_that_never_won_is_marked_and_explained() {
        let mut lb = sample();
        lb.arena = Some(sample_arena(true));
        let md = render(&lb);
        let row = line_with(&md, "| never-wins † |");
        assert!(row.contains("| 0.0 % |"), "{row}");
        assert!(md.contains("† never won (or never lost)"), "{md}");
    }

    #[test]
    fn an_arena_without_rated_votes_says_so() {
        let mut lb = sample();
        let mut arena = sample_arena(false);
        arena.questions.clear();
        lb.arena = Some(arena);
        let md = render(&lb);
        assert!(
            md.contains("## Arena\n\nNo rated votes in `arena/votes.parquet` yet"),
            "{md}"
        );
        lb.arena = None;
        assert!(!render(&lb).contains("Arena"));
    }
}
