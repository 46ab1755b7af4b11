//! The identity's class word (`man`, `woman`, `girl`, ...) and its trigger token in `P_general`.
//!
//! Personalisation binds an identity to a rare trigger token placed next to the class noun
//! (`a man img smiling`), so the adapter learns "this particular man" rather than a new word
//! with no prior. The class word comes from the captions themselves (the most frequent one over
//! an identity's images), and the trigger goes right after the subject noun as each caption
//! writes it.
//!
//! Words are matched whole and case-insensitively. A word is a run of alphanumeric characters,
//! `-` and `_`: `woman`, `human`, `manager`, `Germany` and `man-made` do not contain the word
//! `man`, while `man's` and `man,` do (the apostrophe and punctuation end the word).

use std::ops::Range;

/// Singular nouns accepted as an identity's class word, lowercase.
///
/// Only nouns that name one person and work as the subject of a portrait caption; plurals are
/// left out because a split prompt describes a single identity, and job or role nouns (`chef`,
/// `bride`) are left out because they describe the picture, not the person across pictures.
pub const CLASS_WORDS: &[&str] = &[
    "man",
    "woman",
    "boy",
    "girl",
    "person",
    "child",
    "kid",
    "lady",
    "gentleman",
    "guy",
    "baby",
    "toddler",
    "infant",
    "teenager",
    "teen",
];

/// Finds the first class word in a text (whole word, case-insensitive).
///
/// Returns the word as spelled in [`CLASS_WORDS`] (lowercase) and its byte range in `general`,
/// so the caller can insert a trigger after it or replace it. `None` when the text names no
/// person with a class word (`portrait of a chef`, `two men`).
pub fn find_class_word(general: &str) -> Option<(String, Range<usize>)> {
    words(general).find_map(|r| {
        let w = &general[r.clone()];
        CLASS_WORDS
            .iter()
            .find(|c| c.eq_ignore_ascii_case(w))
            .map(|c| (c.to_string(), r))
    })
}

/// The class word most frequent among `words` (one class word per caption of an identity,
/// typically from [`find_class_word`]), as spelled in [`CLASS_WORDS`].
///
/// Items are trimmed and compared case-insensitively; items that are not class words are
/// ignored, so an unrecognised word can never become an identity's class word. Ties go to the
/// word that occurred first, which keeps the choice deterministic for a given caption order.
/// `None` when no item is a class word.
pub fn most_frequent_class_word<'a>(words: impl IntoIterator<Item = &'a str>) -> Option<String> {
    // (class word, count, first position)
    let mut counts: Vec<(&'static str, usize, usize)> = Vec::new();
    for (pos, w) in words.into_iter().enumerate() {
        let w = w.trim();
        let Some(&class) = CLASS_WORDS.iter().find(|c| c.eq_ignore_ascii_case(w)) else {
            continue;
        };
        match counts.iter_mut().find(|(c, _, _)| *c == class) {
            Some(entry) => entry.1 += 1,
            None => counts.push((class, 1, pos)),
        }
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
        .map(|(c, _, _)| c.to_string())
}

/// Places `trigger` right after the subject noun of `general`.
///
/// - After the first whole-word occurrence of the identity's `class_word`
///   (`"a man smiling"`, `"man"`, `"img"` → `"a man img smiling"`).
/// - Else after the caption's own first class word: the trigger binds to the subject noun as
///   written (`"a person smiling"` for a `woman` identity → `"a person img smiling"`), since
///   rewriting the caption's noun would change its meaning.
/// - Else, with no class word at all, the caption is prefixed with
///   `a photo of a <class_word> <trigger>` (`an` before a vowel), joined with `, ` to the rest
///   when the rest is not empty (an empty `class_word` falls back to `person`).
///
/// Idempotent: when the trigger already follows the identity's class word or any class word,
/// `general` is returned unchanged, so re-running a stage never inserts it twice. An empty
/// trigger inserts nothing. A possessive keeps its `'s` after the trigger (`a man img's face`).
pub fn insert_trigger(general: &str, class_word: &str, trigger: &str) -> String {
    let trigger = trigger.trim();
    if trigger.is_empty() {
        return general.to_string();
    }
    let class_word = class_word.trim();
    let is_subject_noun =
        |w: &str| same_word(w, class_word) || CLASS_WORDS.iter().any(|c| c.eq_ignore_ascii_case(w));
    if words(general)
        .any(|r| is_subject_noun(&general[r.clone()]) && followed_by(general, r.end, trigger))
    {
        return general.to_string();
    }
    let target = words(general)
        .find(|r| !class_word.is_empty() && same_word(&general[r.clone()], class_word))
        .or_else(|| find_class_word(general).map(|(_, r)| r));
    if let Some(r) = target {
        return format!("{} {trigger}{}", &general[..r.end], &general[r.end..]);
    }
    let class = if class_word.is_empty() {
        "person"
    } else {
        class_word
    };
    let article = if class.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']) {
        "an"
    } else {
        "a"
    };
    let rest = general.trim();
    if rest.is_empty() {
        format!("a photo of {article} {class} {trigger}")
    } else {
        format!("a photo of {article} {class} {trigger}, {rest}")
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '-' || c == '_'
}

/// Byte ranges of the words of `text`.
fn words(text: &str) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut start: Option<usize> = None;
    text.char_indices()
        .chain([(text.len(), ' ')])
        .filter_map(
            move |(i, c)| match (is_word_char(c) && i < text.len(), start) {
                (true, None) => {
                    start = Some(i);
                    None
                }
                (false, Some(s)) => {
                    start = None;
                    Some(s..i)
                }
                _ => None,
            },
        )
}

fn same_word(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || (!a.is_ascii() && a.to_lowercase() == b.to_lowercase())
}

/// Whether `text[end..]` is whitespace then exactly `trigger` as a whole word.
fn followed_by(text: &str, end: usize, trigger: &str) -> bool {
    let rest = &text[end..];
    let after_space = rest.trim_start();
    if after_space.len() == rest.len() {
        return false;
    }
    after_space
        .strip_prefix(trigger)
        .is_some_and(|tail| !tail.starts_with(is_word_char))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_words_are_lowercase_singular_and_unique() {
        for (i, w) in CLASS_WORDS.iter().enumerate() {
            assert_eq!(*w, w.to_lowercase());
            assert!(!CLASS_WORDS[..i].contains(w), "{w} twice");
        }
    }

    #[test]
    fn finds_first_whole_word() {
        assert_eq!(
            find_class_word("a woman and a man"),
            Some(("woman".into(), 2..7))
        );
        assert_eq!(find_class_word("a human manager from Germany"), None);
        assert_eq!(find_class_word("a man-made lake"), None);
        assert_eq!(
            find_class_word("Portrait of a MAN, smiling"),
            Some(("man".into(), 14..17))
        );
        assert_eq!(
            find_class_word("close-up of a man's face"),
            Some(("man".into(), 14..17))
        );
        assert_eq!(
            find_class_word("a teenager"),
            Some(("teenager".into(), 2..10))
        );
        assert_eq!(find_class_word("two men and three women"), None);
        assert_eq!(find_class_word(""), None);
    }

    #[test]
    fn byte_ranges_survive_non_ascii() {
        let text = "café portrait of a girl";
        let (w, r) = find_class_word(text).unwrap();
        assert_eq!((w.as_str(), &text[r]), ("girl", "girl"));
    }

    #[test]
    fn most_frequent_with_first_occurrence_tie_break() {
        assert_eq!(
            most_frequent_class_word(["man", "woman", "woman"]),
            Some("woman".into())
        );
        assert_eq!(
            most_frequent_class_word(["girl", "woman", "woman", "girl"]),
            Some("girl".into())
        );
        assert_eq!(
            most_frequent_class_word(["woman", "girl", "girl", "woman"]),
            Some("woman".into())
        );
        assert_eq!(
            most_frequent_class_word([" Man ", "MAN", "chef", "chef", "chef"]),
            Some("man".into())
        );
        assert_eq!(most_frequent_class_word(["chef", ""]), None);
        assert_eq!(most_frequent_class_word(Vec::<&str>::new()), None);
    }

    #[test]
    fn trigger_goes_after_the_class_word() {
        assert_eq!(
            insert_trigger("a man smiling", "man", "img"),
            "a man img smiling"
        );
        assert_eq!(
            insert_trigger("portrait of a Woman", "woman", "sks"),
            "portrait of a Woman sks"
        );
        assert_eq!(
            insert_trigger("a woman, smiling", "woman", "sks"),
            "a woman sks, smiling"
        );
        assert_eq!(
            insert_trigger("a woman next to a man", "man", "img"),
            "a woman next to a man img",
            "the identity's class word wins over an earlier other class word"
        );
    }

    #[test]
    fn trigger_binds_to_the_caption_subject_noun() {
        assert_eq!(
            insert_trigger("a person smiling", "woman", "img"),
            "a person img smiling"
        );
        assert_eq!(
            insert_trigger("a young guy with a beard", "man", "img"),
            "a young guy img with a beard"
        );
    }

    #[test]
    fn no_class_word_prefixes_a_photo_of() {
        assert_eq!(
            insert_trigger("smiling, short hair", "man", "img"),
            "a photo of a man img, smiling, short hair"
        );
        assert_eq!(insert_trigger("", "woman", "img"), "a photo of a woman img");
        assert_eq!(
            insert_trigger("  ", "infant", "img"),
            "a photo of an infant img"
        );
        assert_eq!(
            insert_trigger("a portrait", "", "img"),
            "a photo of a person img, a portrait"
        );
    }

    #[test]
    fn whole_words_only() {
        assert_eq!(
            insert_trigger("a woman smiling", "man", "img"),
            "a woman img smiling"
        );
        assert_eq!(
            insert_trigger("a human manager", "man", "img"),
            "a photo of a man img, a human manager"
        );
    }

    #[test]
    fn idempotent() {
        for (text, class) in [
            ("a man smiling", "man"),
            ("a person smiling", "woman"),
            ("smiling", "man"),
            ("", "girl"),
            ("close-up of a man's face", "man"),
        ] {
            let once = insert_trigger(text, class, "img");
            assert_eq!(insert_trigger(&once, class, "img"), once, "{text}");
        }
        assert_eq!(
            insert_trigger("a man img smiling", "man", "img"),
            "a man img smiling"
        );
        assert_eq!(
            insert_trigger("a man imgx smiling", "man", "img"),
            "a man img imgx smiling"
        );
    }

    #[test]
    fn possessive_and_empty_trigger() {
        assert_eq!(
            insert_trigger("close-up of a man's face", "man", "img"),
            "close-up of a man img's face"
        );
        assert_eq!(insert_trigger("a man smiling", "man", " "), "a man smiling");
    }
}
