//! `index.html`: the leaderboard as one static page that works offline and from any folder:
//! styles, script and charts are inline, and the only files it loads are the grid thumbnails,
//! by relative path. A Content-Security-Policy forbids anything else, so a stray URL in a user's
//! file cannot make the page reach the network.
//!
//! Every piece of text from the leaderboard (method names, settings, prompts) is escaped; tables
//! read in full without script, which only adds sorting.

use std::fmt::Write as _;

use idforge_core::html::escape;

use super::markdown::{
    CLIP_T, COST_COLUMNS, DASH, FACE_SIM, GROUPS_NOTE, MEASURED_MARK, MEASURED_NOTE,
    SEPARATED_NOTE, agreement_sentence, any_separated, arena_definitions, arena_method_sentence,
    arena_votes_sentence, bootstrap_sentence, categories, cost_sources, find_metric, is_web_link,
    metric_format, percent, percent_short, question_text, question_title, rating_format,
    short_hash,
};
use super::{Grid, Leaderboard, MethodEntry, MetricInfo, SetResult, charts};
use crate::ratings::{ArenaResults, QuestionRatings};

const CSS: &str = include_str!("../../assets/leaderboard.css");
const JS: &str = include_str!("../../assets/leaderboard.js");

/// Only inline styles and script, and images from the page's own origin (or `data:`).
const CSP: &str = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; \
                   script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

/// The `src` of a thumbnail stored at `rel` (relative to the leaderboard folder), percent-encoded
/// so spaces, `#`, `?` or `:` in names still resolve as a relative path, never as a URL scheme.
fn image_src(rel: &str) -> String {
    let rel = rel.replace('\\', "/");
    let mut src = String::new();
    for b in rel.trim_start_matches('/').bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            src.push(b as char);
        } else {
            let _ = write!(src, "%{b:02X}");
        }
    }
    src
}

/// An `id` fragment from `s`: lower-case ASCII letters, digits and dashes.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').chars().take(40).collect()
}

/// The id of the section for the `i`-th set.
fn set_id(i: usize, set: &SetResult) -> String {
    let s = slug(&set.name);
    if s.is_empty() {
        format!("set-{}", i + 1)
    } else {
        format!("set-{}-{s}", i + 1)
    }
}

/// A chart ready to inline: the namespace declaration an HTML parser does not need is dropped,
/// so the page carries no URL of its own at all.
fn inline_svg(svg: String) -> String {
    svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}

/// Renders `index.html`: a header with the protocol, the networks and the bootstrap; per
/// reference set a sortable table (quality metrics with intervals beside the cost columns), the
/// identity-versus-prompt scatter and per-category bars; the image grids; the methods; and the
/// metric definitions. The result is one self-contained file apart from the thumbnails the grids
/// link, which it expects at their [`Grid`] paths relative to the page.
pub fn render(lb: &Leaderboard) -> String {
    let mut html = String::with_capacity(64 * 1024);
    head(&mut html, lb);
    header(&mut html, lb);
    html.push_str("<main id=\"main\">\n");
    for (i, set) in lb.sets.iter().enumerate() {
        set_section(&mut html, lb, i, set);
    }
    if let Some(arena) = &lb.arena {
        arena_sections(&mut html, lb, arena);
    }
    grids(&mut html, lb);
    methods(&mut html, lb);
    definitions(&mut html, lb);
    html.push_str("</main>\n");
    let _ = write!(
        html,
        "<footer class=\"page-footer\"><p>Generated {} by idforge {} · leaderboard schema {} · \
         <code>leaderboard.json</code> holds every number on this page.</p></footer>\n\
         <script>\n{JS}</script>\n</body>\n</html>\n",
        escape(&lb.generated_at),
        escape(&lb.idforge_version),
        lb.schema_version
    );
    html
}

fn head(html: &mut String, lb: &Leaderboard) {
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta name=\"generator\" content=\"idforge {}\">\n\
         <link rel=\"icon\" href=\"data:,\">\n\
         <title>Leaderboard — {} v{}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n\
         <a class=\"skip-link\" href=\"#main\">Skip to the results</a>\n",
        escape(&lb.idforge_version),
        escape(&lb.protocol.name),
        lb.protocol.version
    );
}

fn header(html: &mut String, lb: &Leaderboard) {
    let p = &lb.protocol;
    let m = &lb.models;
    let model = |name: &str, v: &Option<String>, what: &str| match v {
        Some(v) => format!("<li>{name} <code>{}</code></li>", escape(v)),
        None => format!(
            "<li>{name} <span class=\"absent\">not given</span> <span class=\"hint\">— no {what}</span></li>"
        ),
    };
    let _ = write!(
        html,
        "<header class=\"page-header\">\n<div class=\"wrap\">\n\
         <p class=\"eyebrow\">idforge benchmark</p>\n\
         <h1>Leaderboard <span class=\"proto\">{} v{}</span></h1>\n\
         <p class=\"lede\">Identity-personalised image generation methods, scored on one fixed \
         protocol. The small numbers under each value are its {:.0} % bootstrap interval; \
         — means not computed or not given.</p>\n\
         <dl class=\"facts\">\n",
        escape(&p.name),
        p.version,
        lb.bootstrap.level * 100.0
    );
    let cats = if p.categories.is_empty() {
        DASH.to_string()
    } else {
        p.categories
            .iter()
            .map(|c| escape(c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let facts = [
        (
            "Protocol",
            format!(
                "<ul class=\"plain\"><li><code>{}</code> version {}</li><li>sha256 <code title=\"{}\">{}</code>\
                 </li><li>references sha256 <code title=\"{}\">{}</code></li></ul>",
                escape(&p.name),
                p.version,
                escape(&p.sha256),
                escape(short_hash(&p.sha256)),
                escape(&p.references_sha256),
                escape(short_hash(&p.references_sha256))
            ),
        ),
        (
            "Prompts",
            format!(
                "<ul class=\"plain\"><li>{} prompts × {} seeds</li><li>categories: {cats}</li></ul>",
                p.prompts, p.seeds
            ),
        ),
        (
            "Models",
            format!(
                "<ul class=\"plain\">{}{}{}{}{}</ul>",
                model("Face", &Some(m.face_embedder.clone()), ""),
                m.face_detector
                    .as_ref()
                    .map(|d| model("Face detector", &Some(d.clone()), ""))
                    .unwrap_or_default(),
                model("CLIP", &m.clip, "CLIP-T, CLIP-I, CMMD"),
                model("DINO", &m.dino, "DINO score"),
                model("Inception", &m.inception, "FID, KID, IS")
            ),
        ),
        (
            "Intervals",
            format!(
                "<ul class=\"plain\"><li>{:.0} % bootstrap, {} resamples</li><li>over {}</li><li>seed {}</li></ul>",
                lb.bootstrap.level * 100.0,
                lb.bootstrap.resamples,
                escape(&lb.bootstrap.unit),
                lb.bootstrap.seed
            ),
        ),
        (
            "Generated",
            format!(
                "<ul class=\"plain\"><li>{}</li><li>idforge {}</li></ul>",
                escape(&lb.generated_at),
                escape(&lb.idforge_version)
            ),
        ),
    ];
    for (k, v) in facts {
        let _ = writeln!(html, "<div><dt>{k}</dt><dd>{v}</dd></div>");
    }
    if let Some(arena) = &lb.arena {
        let raters: Vec<String> = arena
            .questions
            .iter()
            .map(|q| {
                let agree = q
                    .agreement
                    .percent
                    .map_or_else(String::new, |p| format!(", {p:.0} % agree"));
                format!(
                    "<li>{}: {} votes, {} raters{agree}</li>",
                    escape(q.question.as_str()),
                    q.comparisons,
                    q.raters
                )
            })
            .collect();
        let _ = writeln!(
            html,
            "<div class=\"fact-arena\"><dt>Arena</dt><dd><ul class=\"plain\">{}<li>{}</li></ul></dd></div>",
            if raters.is_empty() {
                "<li>no rated votes yet</li>".to_string()
            } else {
                raters.join("")
            },
            escape(&arena.source)
        );
    }
    html.push_str("</dl>\n<nav class=\"toc\" aria-label=\"Sections\"><ul>\n");
    for (i, set) in lb.sets.iter().enumerate() {
        let _ = writeln!(
            html,
            "<li><a href=\"#{}\">{}</a></li>",
            set_id(i, set),
            escape(&set.name)
        );
    }
    if let Some(arena) = &lb.arena {
        if arena.questions.is_empty() {
            html.push_str("<li><a href=\"#arena\">Arena</a></li>\n");
        }
        for q in &arena.questions {
            let _ = writeln!(
                html,
                "<li><a href=\"#{}\">{}</a></li>",
                arena_id(q),
                escape(question_title(q.question))
            );
        }
    }
    if !lb.grids.is_empty() {
        html.push_str("<li><a href=\"#grids\">Image grids</a></li>\n");
    }
    html.push_str(
        "<li><a href=\"#methods\">Methods</a></li>\n<li><a href=\"#metrics\">Metric definitions</a></li>\n\
         </ul></nav>\n</div>\n</header>\n",
    );
}

/// A sortable column header: the button carries the keyboard and click handling, `aria-sort`
/// on the cell tells assistive technology the current order.
fn sort_header(
    col: usize,
    label: &str,
    kind: &str,
    default: &str,
    title: &str,
    class: &str,
) -> String {
    format!(
        "<th scope=\"col\" class=\"{class}\" aria-sort=\"none\" data-col=\"{col}\" data-type=\"{kind}\" \
         data-default=\"{default}\" title=\"{}\"><button type=\"button\">{label}<span class=\"sort-icon\" \
         aria-hidden=\"true\"></span></button></th>",
        escape(title)
    )
}

fn set_section(html: &mut String, lb: &Leaderboard, i: usize, set: &SetResult) {
    let id = set_id(i, set);
    let _ = write!(
        html,
        "<section class=\"set\" id=\"{id}\" aria-labelledby=\"{id}-h\">\n<div class=\"wrap\">\n\
         <h2 id=\"{id}-h\">{}</h2>\n<p class=\"set-meta\">",
        escape(&set.name)
    );
    if !set.description.is_empty() {
        let _ = write!(html, "{} · ", escape(&set.description));
    }
    let _ = writeln!(
        html,
        "{} identities · {} reference images</p>",
        set.identities, set.references
    );
    html.push_str(
        "<p class=\"table-hint\" aria-hidden=\"true\">Select a column heading to sort; select it again to \
         reverse. Small numbers are intervals.</p>\n",
    );

    // The table.
    let n_metrics = lb.metrics.len();
    let _ = write!(
        html,
        "<div class=\"table-wrap\" role=\"region\" aria-labelledby=\"{id}-cap\" tabindex=\"0\">\n\
         <table class=\"lb sortable\" id=\"{id}-table\">\n\
         <caption id=\"{id}-cap\" class=\"visually-hidden\">{} — results with {:.0} % intervals; select a column heading to sort.</caption>\n\
         <thead>\n<tr class=\"groups\"><td></td><td></td>",
        escape(&set.name),
        lb.bootstrap.level * 100.0
    );
    if n_metrics > 0 {
        let _ = write!(
            html,
            "<th scope=\"colgroup\" colspan=\"{n_metrics}\" class=\"group-quality\">Quality</th>"
        );
    }
    let _ = writeln!(
        html,
        "<th scope=\"colgroup\" colspan=\"{}\" class=\"group-cost\">Cost <span class=\"hint\">({MEASURED_MARK} measured by idforge, else as reported)</span></th></tr>",
        COST_COLUMNS.len()
    );
    html.push_str("<tr>");
    html.push_str(&sort_header(
        0,
        "Method",
        "text",
        "ascending",
        "Method name",
        "col-method",
    ));
    html.push_str(&sort_header(
        1,
        "Scored",
        "number",
        "ascending",
        "Generations found and decoded / generations the protocol expects",
        "num scored",
    ));
    for (j, mi) in lb.metrics.iter().enumerate() {
        let arrow = if mi.higher_is_better { "↑" } else { "↓" };
        let better = if mi.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        html.push_str(&sort_header(
            j + 2,
            &format!(
                "{} <span class=\"better\" aria-label=\"{better}\">{arrow}</span>",
                escape(&mi.label)
            ),
            "number",
            if mi.higher_is_better {
                "descending"
            } else {
                "ascending"
            },
            &format!("{}: {better}. {}", mi.label, mi.description),
            "num",
        ));
    }
    for (j, c) in COST_COLUMNS.iter().enumerate() {
        let class = if j == 0 {
            "num cost cost-first"
        } else {
            "num cost"
        };
        html.push_str(&sort_header(
            n_metrics + 2 + j,
            &escape(c.title),
            "number",
            "ascending",
            c.description,
            class,
        ));
    }
    html.push_str("</tr>\n</thead>\n<tbody>\n");
    for (r, row) in set.rows.iter().enumerate() {
        let entry = lb.methods.iter().find(|m| m.name == row.method);
        let _ = write!(
            html,
            "<tr data-method=\"{}\" data-order=\"{r}\"><th scope=\"row\" data-sort=\"{}\">{}</th>",
            escape(&row.method),
            escape(&row.method),
            method_name(&row.method, entry, true)
        );
        let frac = if row.expected > 0 {
            row.scored as f64 / row.expected as f64
        } else {
            0.0
        };
        let _ = write!(
            html,
            "<td class=\"num scored{}\" data-sort=\"{frac}\" title=\"{} of {} expected generations scored\">{}/{}</td>",
            if row.scored < row.expected {
                " incomplete"
            } else {
                ""
            },
            row.scored,
            row.expected,
            row.scored,
            row.expected
        );
        for mi in &lb.metrics {
            match row.metrics.get(&mi.key) {
                Some(e) if e.value.is_finite() => {
                    let f = metric_format(&mi.key);
                    let _ = write!(
                        html,
                        "<td class=\"num\" data-sort=\"{}\"><span class=\"v\">{}</span> <span class=\"ci\" title=\"{:.0} % interval, n = {}\">{}</span></td>",
                        e.value,
                        f.value(e.value),
                        lb.bootstrap.level * 100.0,
                        e.n,
                        f.interval(e)
                    );
                }
                _ => {
                    let _ = write!(html, "<td class=\"num absent\" data-sort=\"\">{DASH}</td>");
                }
            }
        }
        for (j, c) in COST_COLUMNS.iter().enumerate() {
            let cost = entry.map(|e| &e.cost);
            let v = cost.and_then(|cost| c.get(cost));
            let source = cost
                .and_then(|cost| c.get(cost).and(cost.source(c.key)))
                .map(|s| match s {
                    super::CostSource::Measured {
                        by, hardware, note, ..
                    } => format!(
                        " title=\"measured by {} on {}{}\"",
                        escape(&by),
                        escape(&hardware),
                        note.map(|n| format!(" ({})", escape(&n)))
                            .unwrap_or_default()
                    ),
                    super::CostSource::Reported => " title=\"as reported\"".to_string(),
                })
                .unwrap_or_default();
            let _ = write!(
                html,
                "<td class=\"num cost{}{}{}\" data-sort=\"{}\"{source}>{}</td>",
                if j == 0 { " cost-first" } else { "" },
                if v.is_none() { " absent" } else { "" },
                if c.measured(cost) { " measured" } else { "" },
                v.map(|v| v.to_string()).unwrap_or_default(),
                c.format(cost)
            );
        }
        html.push_str("</tr>\n");
    }
    let _ = writeln!(
        html,
        "</tbody>\n</table>\n</div>\n<p class=\"sort-status visually-hidden\" aria-live=\"polite\"></p>"
    );
    let any_measured = set.rows.iter().any(|row| {
        let cost = lb
            .methods
            .iter()
            .find(|m| m.name == row.method)
            .map(|e| &e.cost);
        COST_COLUMNS.iter().any(|c| c.measured(cost))
    });
    if any_measured {
        let _ = writeln!(
            html,
            "<p class=\"hint cost-note\">{}</p>",
            escape(MEASURED_NOTE)
        );
    }

    // The charts.
    html.push_str("<div class=\"charts\">\n");
    let tradeoff = charts::tradeoff_svg(lb, set);
    let caption = if tradeoff.contains("class=\"chart chart-tradeoff\"") {
        "Identity (Face-Sim) against prompt fidelity (CLIP-T), with intervals both ways; hollow markers \
         are built-in baselines. Hover a point for its values."
    } else {
        "Face-Sim per method with its interval; without CLIP-T there is no trade-off to plot. Hollow \
         markers are built-in baselines."
    };
    let _ = writeln!(
        html,
        "<figure class=\"chart-card\">{}<figcaption>{caption}</figcaption></figure>",
        inline_svg(tradeoff)
    );
    for key in [FACE_SIM, CLIP_T] {
        let Some(mi) = find_metric(lb, key) else {
            continue;
        };
        if !set
            .rows
            .iter()
            .any(|r| r.by_category.values().any(|m| m.contains_key(&mi.key)))
        {
            continue;
        }
        let _ = writeln!(
            html,
            "<figure class=\"chart-card\">{}<figcaption>{} per prompt category; whiskers are the intervals.</figcaption></figure>",
            inline_svg(charts::category_bars_svg(lb, set, &mi.key)),
            escape(&mi.label)
        );
    }
    html.push_str("</div>\n");
    category_table(html, lb, set);
    html.push_str("</div>\n</section>\n");
}

/// The method's name, a baseline badge, and (with `base`) its base model beneath.
fn method_name(name: &str, entry: Option<&MethodEntry>, base: bool) -> String {
    let mut s = format!("<span class=\"name\">{}</span>", escape(name));
    if entry.is_some_and(|e| e.builtin) {
        s.push_str(" <span class=\"badge\" title=\"Built-in baseline\">baseline</span>");
    }
    if let Some(base) = entry.and_then(|e| e.base_model.as_deref()).filter(|_| base) {
        let _ = write!(s, "<span class=\"sub\">{}</span>", escape(base));
    }
    s
}

/// The per-category numbers behind the bars, folded away, for readers who want the digits.
fn category_table(html: &mut String, lb: &Leaderboard, set: &SetResult) {
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
    let cats = categories(lb, set);
    html.push_str(
        "<details class=\"by-category\"><summary>Per-category values</summary>\n<div class=\"table-wrap\">\n\
         <table class=\"lb compact\">\n<thead><tr><th scope=\"col\">Category</th><th scope=\"col\">Method</th>",
    );
    for mi in &shown {
        let _ = write!(
            html,
            "<th scope=\"col\" class=\"num\">{}</th>",
            escape(&mi.label)
        );
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    for cat in &cats {
        let rows: Vec<_> = set
            .rows
            .iter()
            .filter(|r| r.by_category.contains_key(cat))
            .collect();
        for (k, row) in rows.iter().enumerate() {
            html.push_str("<tr>");
            if k == 0 {
                let _ = write!(
                    html,
                    "<th scope=\"rowgroup\" rowspan=\"{}\">{}</th>",
                    rows.len(),
                    escape(cat)
                );
            }
            let _ = write!(html, "<td>{}</td>", escape(&row.method));
            for mi in &shown {
                let cell = row.by_category[cat].get(&mi.key).map_or_else(
                    || DASH.to_string(),
                    |e| {
                        let f = metric_format(&mi.key);
                        format!(
                            "<span class=\"v\">{}</span> <span class=\"ci\">{}</span>",
                            f.value(e.value),
                            f.interval(e)
                        )
                    },
                );
                let _ = write!(html, "<td class=\"num\">{cell}</td>");
            }
            html.push_str("</tr>\n");
        }
    }
    html.push_str("</tbody>\n</table>\n</div>\n</details>\n");
}

fn grids(html: &mut String, lb: &Leaderboard) {
    if lb.grids.is_empty() {
        return;
    }
    html.push_str(
        "<section class=\"grids\" id=\"grids\" aria-labelledby=\"grids-h\">\n<div class=\"wrap\">\n\
         <h2 id=\"grids-h\">Image grids</h2>\n<p class=\"set-meta\">The reference photo, then each method's \
         generation for the same prompt and seed, with its Face-Sim to the reference.</p>\n",
    );
    for g in &lb.grids {
        grid(html, g);
    }
    html.push_str("</div>\n</section>\n");
}

fn grid(html: &mut String, g: &Grid) {
    let _ = write!(
        html,
        "<figure class=\"grid\">\n<figcaption><span class=\"tag\">{}</span> <strong>{}</strong> · \
         <code>{}</code> · seed {}<q>{}</q></figcaption>\n<div class=\"grid-row\">\n\
         <figure class=\"cell ref\"><img src=\"{}\" alt=\"Reference photo of {}\" decoding=\"async\">\
         <figcaption><span class=\"cell-name\">Reference</span></figcaption></figure>\n",
        escape(&g.set),
        escape(&g.identity),
        escape(&g.prompt_id),
        g.seed,
        escape(&g.prompt),
        escape(&image_src(&g.reference)),
        escape(&g.identity)
    );
    for c in &g.cells {
        let img = match &c.image {
            Some(path) => format!(
                "<img src=\"{}\" alt=\"{} for {}, prompt {}\" decoding=\"async\">",
                escape(&image_src(path)),
                escape(&c.method),
                escape(&g.identity),
                escape(&g.prompt_id)
            ),
            None => {
                "<div class=\"missing\" role=\"img\" aria-label=\"Image missing\">missing</div>"
                    .to_string()
            }
        };
        let score = match c.face_sim.filter(|v| v.is_finite()) {
            Some(v) => format!("Face-Sim {}", metric_format(FACE_SIM).value(v)),
            None => format!("Face-Sim {DASH}"),
        };
        let _ = writeln!(
            html,
            "<figure class=\"cell\" data-method=\"{}\">{img}<figcaption><span class=\"cell-name\">{}</span>\
             <span class=\"cell-score\">{score}</span></figcaption></figure>",
            escape(&c.method),
            escape(&c.method)
        );
    }
    html.push_str("</div>\n</figure>\n");
}

fn methods(html: &mut String, lb: &Leaderboard) {
    html.push_str(
        "<section class=\"methods\" id=\"methods\" aria-labelledby=\"methods-h\">\n<div class=\"wrap\">\n\
         <h2 id=\"methods-h\">Methods</h2>\n<div class=\"table-wrap\" role=\"region\" aria-labelledby=\"methods-h\" tabindex=\"0\">\n\
         <table class=\"lb compact\">\n<thead><tr><th scope=\"col\">Method</th><th scope=\"col\">Base model</th>\
         <th scope=\"col\">Trigger</th><th scope=\"col\">Settings</th><th scope=\"col\">Cost sources</th>\
         <th scope=\"col\">Paper or code</th></tr></thead>\n<tbody>\n",
    );
    let opt = |v: &Option<String>| v.as_deref().map_or_else(|| DASH.to_string(), escape);
    for m in &lb.methods {
        let settings = if m.settings.is_empty() {
            DASH.to_string()
        } else {
            let mut s = String::from("<ul class=\"settings\">");
            for (k, v) in &m.settings {
                let _ = write!(
                    s,
                    "<li><code>{}</code> = <code>{}</code></li>",
                    escape(k),
                    escape(v)
                );
            }
            s.push_str("</ul>");
            s
        };
        let link = match m.link.as_deref() {
            Some(l) if is_web_link(l) => {
                format!(
                    "<a href=\"{}\" rel=\"noopener noreferrer\">{}</a>",
                    escape(l.trim()),
                    escape(l.trim())
                )
            }
            Some(l) => escape(l),
            None => DASH.to_string(),
        };
        let _ = writeln!(
            html,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{settings}</td><td>{}</td><td class=\"link\">{link}</td></tr>",
            method_name(&m.name, Some(m), false),
            opt(&m.base_model),
            m.trigger.as_deref().map_or_else(
                || DASH.to_string(),
                |t| format!("<code>{}</code>", escape(t))
            ),
            match cost_sources(&m.cost) {
                s if s.is_empty() => DASH.to_string(),
                s => s.iter().map(|l| escape(l)).collect::<Vec<_>>().join("<br>"),
            }
        );
    }
    html.push_str("</tbody>\n</table>\n</div>\n</div>\n</section>\n");
}

fn definitions(html: &mut String, lb: &Leaderboard) {
    html.push_str(
        "<section class=\"metrics\" id=\"metrics\" aria-labelledby=\"metrics-h\">\n<div class=\"wrap\">\n\
         <h2 id=\"metrics-h\">Metric definitions</h2>\n<dl class=\"defs\">\n",
    );
    for mi in &lb.metrics {
        let _ = writeln!(
            html,
            "<div><dt>{} <code>{}</code></dt><dd>{} <span class=\"hint\">({})</span></dd></div>",
            escape(&mi.label),
            escape(&mi.key),
            escape(&mi.description),
            mi.reading()
        );
    }
    for c in &COST_COLUMNS {
        let _ = writeln!(
            html,
            "<div><dt>{}</dt><dd>{}; measured by idforge where marked {MEASURED_MARK}, else as reported in method.toml (see “Cost sources”).</dd></div>",
            escape(c.title),
            c.description
        );
    }
    if let Some(arena) = &lb.arena {
        for (term, text) in arena_definitions(arena) {
            let _ = writeln!(
                html,
                "<div><dt>{}</dt><dd>{}</dd></div>",
                escape(term),
                escape(&text)
            );
        }
    }
    let _ = writeln!(
        html,
        "<div><dt>Intervals</dt><dd>{}.</dd></div>\n</dl>\n</div>\n</section>",
        escape(&bootstrap_sentence(lb))
    );
}

/// The id of a question's arena section, e.g. `arena-fidelity`.
fn arena_id(q: &QuestionRatings) -> String {
    format!("arena-{}", q.question.as_str())
}

fn arena_sections(html: &mut String, lb: &Leaderboard, arena: &ArenaResults) {
    if arena.questions.is_empty() {
        let _ = writeln!(
            html,
            "<section class=\"arena\" id=\"arena\" aria-labelledby=\"arena-h\">\n<div class=\"wrap\">\n\
             <h2 id=\"arena-h\">Arena</h2>\n<p class=\"set-meta\">No rated votes in <code>{}</code> yet ({}).</p>\n\
             </div>\n</section>",
            escape(&arena.source),
            escape(&arena_votes_sentence(arena))
        );
        return;
    }
    for q in &arena.questions {
        arena_section(html, lb, arena, q);
    }
}

fn arena_section(html: &mut String, lb: &Leaderboard, arena: &ArenaResults, q: &QuestionRatings) {
    let id = arena_id(q);
    let level = format!("{:.0} %", arena.level * 100.0);
    let _ = write!(
        html,
        "<section class=\"arena\" id=\"{id}\" aria-labelledby=\"{id}-h\">\n<div class=\"wrap\">\n\
         <h2 id=\"{id}-h\">{}</h2>\n<p class=\"set-meta\"><q>{}</q> · {}</p>\n\
         <p class=\"set-meta arena-method\">{}.</p>\n\
         <p class=\"table-hint\" aria-hidden=\"true\">Select a column heading to sort; select it again to reverse.</p>\n",
        escape(question_title(q.question)),
        escape(question_text(q.question)),
        escape(&agreement_sentence(q)),
        escape(&arena_method_sentence(arena))
    );
    let groups = q.components > 1;
    let _ = write!(
        html,
        "<div class=\"table-wrap\" role=\"region\" aria-labelledby=\"{id}-cap\" tabindex=\"0\">\n\
         <table class=\"lb sortable arena-table\" id=\"{id}-table\">\n\
         <caption id=\"{id}-cap\" class=\"visually-hidden\">{} — Bradley–Terry ratings with {level} intervals; select a column heading to sort.</caption>\n\
         <thead>\n<tr>",
        escape(question_title(q.question))
    );
    let mut headers = vec![
        sort_header(
            0,
            "Method",
            "text",
            "ascending",
            "Method name",
            "col-method",
        ),
        sort_header(
            1,
            "Rank",
            "number",
            "ascending",
            "1 + the methods whose interval lies entirely above this one's",
            "num",
        ),
        sort_header(
            2,
            "Rating <span class=\"better\" aria-label=\"higher is better\">↑</span>",
            "number",
            "descending",
            "Bradley–Terry rating, LMArena scale: higher is better",
            "num",
        ),
        sort_header(
            3,
            &format!("{level} CI"),
            "number",
            "descending",
            "Bootstrap interval of the rating (sorts by its lower bound)",
            "num",
        ),
        sort_header(
            4,
            "Votes",
            "number",
            "descending",
            "Comparisons the method took part in",
            "num",
        ),
        sort_header(
            5,
            "Win rate",
            "number",
            "descending",
            "(wins + ½ ties) / votes",
            "num",
        ),
    ];
    if groups {
        headers.push(sort_header(
            6,
            "Group",
            "number",
            "ascending",
            "Methods compared with each other, directly or through others",
            "num",
        ));
    }
    html.push_str(&headers.concat());
    html.push_str("</tr>\n</thead>\n<tbody>\n");
    let f = rating_format();
    for (r, m) in q.methods.iter().enumerate() {
        let entry = lb.methods.iter().find(|e| e.name == m.method);
        let mark = if m.separated {
            "<sup class=\"sep-mark\" title=\"Rating only a bound: see the note below the table\">†</sup>"
        } else {
            ""
        };
        let _ = write!(
            html,
            "<tr data-method=\"{}\" data-order=\"{r}\"><th scope=\"row\" data-sort=\"{}\">{}{mark}</th>\
             <td class=\"num\" data-sort=\"{}\">{}</td>\
             <td class=\"num\" data-sort=\"{}\"><span class=\"v\">{}</span></td>",
            escape(&m.method),
            escape(&m.method),
            method_name(&m.method, entry, false),
            m.rank,
            m.rank,
            m.rating,
            f.value(m.rating)
        );
        match (m.lo, m.hi) {
            (Some(lo), Some(hi)) => {
                let _ = write!(
                    html,
                    "<td class=\"num\" data-sort=\"{lo}\"><span class=\"ci-inline\">[{}, {}]</span> \
                     <span class=\"ci\">+{} / −{}</span></td>",
                    f.value(lo),
                    f.value(hi),
                    f.value((hi - m.rating).max(0.0)),
                    f.value((m.rating - lo).max(0.0))
                );
            }
            _ => {
                let _ = write!(html, "<td class=\"num absent\" data-sort=\"\">{DASH}</td>");
            }
        }
        let _ = write!(
            html,
            "<td class=\"num\" data-sort=\"{}\" title=\"{} wins, {} losses, {} ties\">{}</td>\
             <td class=\"num\" data-sort=\"{}\">{}</td>",
            m.games,
            m.wins,
            m.losses,
            m.ties,
            m.games,
            m.win_rate,
            percent(m.win_rate)
        );
        if groups {
            let _ = write!(
                html,
                "<td class=\"num\" data-sort=\"{}\">{}</td>",
                m.component + 1,
                m.component + 1
            );
        }
        html.push_str("</tr>\n");
    }
    html.push_str(
        "</tbody>\n</table>\n</div>\n<p class=\"sort-status visually-hidden\" aria-live=\"polite\"></p>\n",
    );
    if any_separated(q) {
        let _ = writeln!(
            html,
            "<p class=\"note\"><span aria-hidden=\"true\">† </span>{}</p>",
            escape(SEPARATED_NOTE)
        );
    }
    if groups {
        let _ = writeln!(html, "<p class=\"note\">{}</p>", escape(GROUPS_NOTE));
    }
    html.push_str("<div class=\"charts arena-charts\">\n");
    let _ = writeln!(
        html,
        "<figure class=\"chart-card\">{}<figcaption>Ratings with their {level} bootstrap intervals, best first; \
         the dashed line is the mean rating, {}. Hover a point for its values.</figcaption></figure>",
        inline_svg(charts::arena_ratings_svg(lb, arena, q)),
        rating_format().value(arena.anchor)
    );
    html.push_str("</div>\n");
    win_matrix(html, q);
    html.push_str("</div>\n</section>\n");
}

/// Background of a win-rate cell: blue above one half, orange below (Okabe–Ito, distinguishable
/// with the common colour-vision deficiencies), stronger further from a half; pale enough for
/// dark text at every rate.
fn heat(rate: f64) -> String {
    let strength = ((rate - 0.5).abs() * 2.0).clamp(0.0, 1.0) * 0.55;
    let (r, g, b) = if rate >= 0.5 {
        (0, 114, 178)
    } else {
        (230, 159, 0)
    };
    format!("background-color: rgba({r}, {g}, {b}, {strength:.3})")
}

/// The win-rate matrix as a heat table: row against column, numbered as the ratings table.
fn win_matrix(html: &mut String, q: &QuestionRatings) {
    if q.methods.len() < 2 {
        return;
    }
    let id = arena_id(q);
    let _ = write!(
        html,
        "<h3 id=\"{id}-wins-h\">Win rates</h3>\n<p class=\"set-meta\">Row against column: (wins + ½ ties) / votes, \
         votes beneath; blue above 50 %, orange below; {DASH} never compared. Columns are numbered as the rows.</p>\n\
         <div class=\"table-wrap heat-wrap\" role=\"region\" aria-labelledby=\"{id}-wins-h\" tabindex=\"0\">\n\
         <table class=\"lb heat\" id=\"{id}-wins\">\n<thead><tr><td></td>"
    );
    for (c, m) in q.methods.iter().enumerate() {
        let _ = write!(
            html,
            "<th scope=\"col\" class=\"num\" title=\"{}\"><abbr title=\"{}\">{}</abbr></th>",
            escape(&m.method),
            escape(&m.method),
            c + 1
        );
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    for (r, row) in q.methods.iter().enumerate() {
        let _ = write!(
            html,
            "<tr><th scope=\"row\"><span class=\"idx\">{}</span> <span class=\"name\">{}</span></th>",
            r + 1,
            escape(&row.method)
        );
        for (c, col) in q.methods.iter().enumerate() {
            if r == c {
                html.push_str("<td class=\"self\" aria-label=\"same method\"></td>");
                continue;
            }
            match q.win_rate(&row.method, &col.method) {
                Some((rate, games)) => {
                    let _ = write!(
                        html,
                        "<td class=\"num\" style=\"{}\" title=\"{} against {}: {} over {games} votes\">\
                         <span class=\"v\">{}</span><span class=\"sub\">{games}</span></td>",
                        heat(rate),
                        escape(&row.method),
                        escape(&col.method),
                        percent(rate),
                        percent_short(rate)
                    );
                }
                None => {
                    let _ = write!(html, "<td class=\"num absent\">{DASH}</td>");
                }
            }
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody>\n</table>\n</div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaderboard::markdown::tests::sample;

    #[test]
    fn page_is_self_contained_and_escapes_user_text() {
        let lb = sample();
        let page = render(&lb);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(!page.contains("<b>&"), "raw markup from a method name");
        assert!(page.contains("&lt;b&gt;&amp;&quot;x&quot;"));
        assert!(page.contains("a photo of a person &lt;surfing&gt;"));
        // The only URL is the method's own paper link.
        let without_links = page.replace("https://example.org/paper", "");
        assert!(
            !without_links.contains("http:") && !without_links.contains("https:"),
            "external URL"
        );
        assert!(!page.contains("<link rel=\"stylesheet\"") && !page.contains("<script src"));
        assert!(page.contains("Content-Security-Policy"));
    }

    #[test]
    fn tables_charts_and_grids_are_there() {
        let lb = sample();
        let page = render(&lb);
        assert_eq!(page.matches("<table class=\"lb sortable\"").count(), 2);
        assert_eq!(page.matches("class=\"chart chart-tradeoff\"").count(), 1);
        assert_eq!(page.matches("class=\"chart chart-dots\"").count(), 1);
        assert_eq!(page.matches("class=\"chart chart-bars\"").count(), 3);
        assert!(page.contains("src=\"thumbs/m0.png\""));
        assert!(page.contains(">missing</div>"));
        assert!(page.contains("aria-sort=\"none\""));
        assert!(page.contains("<td class=\"num absent\" data-sort=\"\">—</td>"));
    }

    #[test]
    fn image_paths_stay_relative() {
        assert_eq!(image_src("thumbs/a b#1.png"), "thumbs/a%20b%231.png");
        assert_eq!(
            image_src("javascript:alert(1)"),
            "javascript%3Aalert%281%29"
        );
        assert_eq!(image_src("/etc/passwd"), "etc/passwd");
        assert_eq!(slug("Out of Train!"), "out-of-train");
    }

    #[test]
    fn arena_sections_have_a_sortable_table_a_chart_and_a_heat_table() {
        let lb = sample();
        let page = render(&lb);
        for q in ["fidelity", "adherence"] {
            assert!(page.contains(&format!("<section class=\"arena\" id=\"arena-{q}\"")));
            assert!(page.contains(&format!(
                "<table class=\"lb sortable arena-table\" id=\"arena-{q}-table\">"
            )));
            assert!(page.contains(&format!("<table class=\"lb heat\" id=\"arena-{q}-wins\">")));
            assert!(page.contains(&format!("<a href=\"#arena-{q}\">")));
        }
        assert_eq!(page.matches("class=\"chart chart-arena\"").count(), 2);
        // 3 methods: 6 off-diagonal cells per matrix, each with its colour.
        let matrix = page.split("id=\"arena-fidelity-wins\"").nth(1).unwrap();
        let matrix = &matrix[..matrix.find("</table>").unwrap()];
        assert_eq!(matrix.matches("background-color: rgba(").count(), 6);
        assert_eq!(matrix.matches("class=\"self\"").count(), 3);
        assert!(page.contains("&lt;b&gt;&amp;&quot;x&quot;") && !page.contains("<b>&"));
        assert!(page.contains("<dt>Arena rating</dt>"));
        assert!(page.contains("<dt>Arena</dt>"));
        // Stays self-contained.
        let without_links = page.replace("https://example.org/paper", "");
        assert!(!without_links.contains("http:") && !without_links.contains("https:"));
    }

    #[test]
    fn heat_is_blue_above_half_and_orange_below() {
        assert_eq!(heat(0.5), "background-color: rgba(0, 114, 178, 0.000)");
        assert_eq!(heat(1.0), "background-color: rgba(0, 114, 178, 0.550)");
        assert_eq!(heat(0.0), "background-color: rgba(230, 159, 0, 0.550)");
        assert_eq!(heat(0.25), "background-color: rgba(230, 159, 0, 0.275)");
    }
}
