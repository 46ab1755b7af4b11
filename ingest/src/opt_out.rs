//! Opt-outs honoured by default: `X-Robots-Tag` response headers and robots.txt (RFC 9309).
//!
//! `X-Robots-Tag` values follow Google's syntax and the `noai` / `noimageai` convention of
//! dataset crawlers: `noai, noimageai`, or scoped to one crawler as `idforge: noimageai`. A
//! scoped value applies only when its user-agent token is ours; an unscoped one applies to all.

use idforge_core::schema::ImageStatus;

/// Directives that forbid using an image for a dataset.
pub const OPT_OUT_DIRECTIVES: [&str; 5] = ["noai", "noimageai", "noindex", "noimageindex", "none"];

/// Directives that carry a value after a colon and so must not be read as a user-agent scope.
const VALUED_DIRECTIVES: [&str; 4] = [
    "unavailable_after",
    "max-snippet",
    "max-image-preview",
    "max-video-preview",
];

/// If the `X-Robots-Tag` header values opt out for `agent_token`, the offending value.
pub fn x_robots_tag_opt_out<'a>(
    values: impl IntoIterator<Item = &'a str>,
    agent_token: &str,
) -> Option<String> {
    for value in values {
        let (scope, directives) = match value.split_once(':') {
            Some((scope, rest)) => {
                let scope = scope.trim().to_ascii_lowercase();
                if VALUED_DIRECTIVES.contains(&scope.as_str()) || scope.contains(',') {
                    (None, value)
                } else {
                    (Some(scope), rest)
                }
            }
            None => (None, value),
        };
        if scope
            .as_deref()
            .is_some_and(|s| s != agent_token && s != "*")
        {
            continue;
        }
        let hit = directives
            .split(',')
            .map(|d| d.trim().to_ascii_lowercase())
            .find(|d| OPT_OUT_DIRECTIVES.contains(&d.as_str()));
        if let Some(d) = hit {
            return Some(match scope {
                Some(s) => format!("X-Robots-Tag `{s}: {d}`"),
                None => format!("X-Robots-Tag `{d}`"),
            });
        }
    }
    None
}

/// A host's robots.txt, as far as this crawler is concerned.
pub enum RobotsRules {
    /// No robots.txt (4xx), or robots.txt handling is off.
    AllowAll,
    /// Unreachable or a server error: RFC 9309 §2.3.1.4 says assume complete disallow. The row
    /// status says which (`http_error`, `connect_error`, `timeout`): the site did not opt out,
    /// it could not say.
    DisallowAll(ImageStatus, String),
    /// Parsed rules for our user-agent token.
    Rules(Box<texting_robots::Robot>),
}

impl RobotsRules {
    /// Interprets a robots.txt response. `status` is `None` when the request itself failed, with
    /// `failure` saying how (`connect_error` or `timeout`) and `why`.
    pub fn from_response(
        status: Option<u16>,
        body: &[u8],
        agent_token: &str,
        failure: ImageStatus,
        why: &str,
    ) -> Self {
        match status {
            Some(200..=299) => match texting_robots::Robot::new(agent_token, body) {
                Ok(robot) => RobotsRules::Rules(Box::new(robot)),
                // An unparsable file carries no rule we could honour; RFC 9309 §2.2 parsers
                // ignore what they cannot read.
                Err(_) => RobotsRules::AllowAll,
            },
            Some(400..=499) => RobotsRules::AllowAll,
            Some(s) => RobotsRules::DisallowAll(
                ImageStatus::HttpError,
                format!(
                    "robots.txt answered HTTP {s}; not fetched (RFC 9309: assume complete disallow)"
                ),
            ),
            None => RobotsRules::DisallowAll(
                failure,
                format!(
                    "robots.txt unreachable ({why}); not fetched (RFC 9309: assume complete disallow)"
                ),
            ),
        }
    }

    /// `None` if `url` may be fetched, else the row status and the reason.
    pub fn check(&self, url: &str) -> Option<(ImageStatus, String)> {
        match self {
            RobotsRules::AllowAll => None,
            RobotsRules::DisallowAll(status, why) => Some((*status, why.clone())),
            RobotsRules::Rules(r) => (!r.allowed(url)).then(|| {
                (
                    ImageStatus::OptedOut,
                    "robots.txt disallows this path for our user agent".to_string(),
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(values: &[&str]) -> Option<String> {
        x_robots_tag_opt_out(values.iter().copied(), "idforge")
    }

    #[test]
    fn unscoped_directives_apply_to_everyone() {
        assert_eq!(opt(&["noai"]).as_deref(), Some("X-Robots-Tag `noai`"));
        assert_eq!(
            opt(&["nofollow, NoImageAI"]).as_deref(),
            Some("X-Robots-Tag `noimageai`")
        );
        assert!(opt(&["noindex"]).is_some() && opt(&["noimageindex"]).is_some());
        assert!(opt(&["none"]).is_some());
        assert_eq!(opt(&["nofollow", "noarchive"]), None);
        assert_eq!(opt(&[]), None);
    }

    #[test]
    fn scoped_directives_apply_only_to_their_agent() {
        assert_eq!(
            opt(&["idforge: noai"]).as_deref(),
            Some("X-Robots-Tag `idforge: noai`")
        );
        assert!(opt(&["IDFORGE: noimageai, nofollow"]).is_some());
        assert_eq!(opt(&["googlebot: noindex"]), None);
        assert!(opt(&["googlebot: nofollow", "noai"]).is_some());
    }

    #[test]
    fn valued_directives_are_not_scopes() {
        assert_eq!(opt(&["unavailable_after: 25 Jun 2010 15:00:00 PST"]), None);
        assert_eq!(opt(&["max-image-preview: none"]), None);
        assert!(opt(&["max-image-preview: large, noai"]).is_some());
    }

    #[test]
    fn robots_rules_follow_rfc_9309_status_handling() {
        let body = b"User-agent: *\nDisallow: /private/\n";
        let rules = |status, body: &[u8], agent| {
            RobotsRules::from_response(
                status,
                body,
                agent,
                ImageStatus::ConnectError,
                "connection refused",
            )
        };
        let r = rules(Some(200), body, "idforge");
        assert_eq!(r.check("http://h/img/a.jpg"), None);
        assert_eq!(
            r.check("http://h/private/a.jpg").unwrap().0,
            ImageStatus::OptedOut
        );
        let r = rules(Some(404), b"", "idforge");
        assert_eq!(r.check("http://h/private/a.jpg"), None);
        let (status, why) = rules(Some(503), b"", "idforge")
            .check("http://h/a.jpg")
            .unwrap();
        assert_eq!(status, ImageStatus::HttpError);
        assert!(why.contains("HTTP 503"), "{why}");
        let (status, why) = rules(None, b"", "idforge").check("http://h/a.jpg").unwrap();
        assert_eq!(status, ImageStatus::ConnectError);
        assert!(why.contains("unreachable (connection refused)"), "{why}");
        let only_us = b"User-agent: idforge\nDisallow: /\n\nUser-agent: *\nAllow: /\n";
        assert!(
            rules(Some(200), only_us, "idforge")
                .check("http://h/a.jpg")
                .is_some()
        );
        assert!(
            rules(Some(200), only_us, "otherbot")
                .check("http://h/a.jpg")
                .is_none()
        );
    }
}
