//! Text into HTML (and SVG): the one escape every page idforge writes uses, so that identity
//! names, method names, prompts and settings — which come from users' files — never become
//! markup in the curate report, the leaderboard page or its charts.

/// Escapes `s` for HTML or XML element content and quoted attribute values alike: `&`, `<`,
/// `>`, `"` and `'` become character references; everything else is kept.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_in_content_and_attributes() {
        assert_eq!(
            escape("<a href=\"x\">&'y'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;y&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain é 名"), "plain é 名");
        assert_eq!(
            escape("&amp;"),
            "&amp;amp;",
            "escaping is not idempotent by design"
        );
    }
}
