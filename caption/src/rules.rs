//! The `rules` splitter: an offline, deterministic clause classifier that turns one caption into
//! the three split-prompt texts (`P_general`, `P_bg`, `P_body`).
//!
//! It exists so that captions can be split without a vision-language model (CI, air-gapped
//! machines, and as the baseline a model-based splitter is measured against), and so that the
//! same caption always gives the same split: the output is part of cached artefacts, keyed by
//! [`RULES_VERSION`].
//!
//! # How it works
//!
//! 1. The caption is cut into sentences (`.` `!` `?` `;` followed by a space or the end, and
//!    line breaks), sentences into comma segments, and segments into *chunks*. A chunk starts
//!    - at a preposition (`in`, `at`, `on`, `with`, `behind`, `against`, `out of`, `next to`,
//!      ...), unless it follows an article or is a particle before another preposition
//!      (`looking down | at his phone`);
//!    - at a known verb (`wearing`, `holding`, `standing`, `smiling`, `looking`, ...), unless it
//!      follows an article (`a walking cane`), an auxiliary or a pronoun, or forms a known
//!      compound (`reading glasses`);
//!    - at `is`/`are`/`was`/`were` followed by a known verb (`A man | is standing`);
//!    - at an unknown `-ing` action right after a person noun (`a boy | splashing`);
//!    - at `while` / `whilst`, and at `and` when the next word starts a new phrase (an article,
//!      pronoun, auxiliary, known verb or preposition): `a beard | and a denim jacket`, or when
//!      the nouns on either side are different kinds of thing (`a goatee | and tattoos`), but
//!      not `black and white`, `salt and pepper hair` or `a white shirt and blue jeans`.
//!
//!    Chunks made only of function words (`She`, `and is`) are merged into the next chunk, and a
//!    motion verb whose direct object is a place is split from it
//!    (`while crossing | a busy intersection`).
//! 2. Each chunk is classified by its head: a preposition classifies by the cue words of its
//!    noun phrase — with no cue, a spatial preposition (`along`, `against`, `behind`,
//!    `in front of`, ...) means background and a possessed object (`at his phone`) means body;
//!    a verb by the verb (`smiling` → general, `holding` → body), except the `wearing`-type
//!    verbs, which go with what is worn; an unknown `-ing` head is an action unless its phrase
//!    names a scene thing (`blowing bubbles` vs `cheering crowd`); anything else by cue-word
//!    weights (nouns 2, adjectives and verbs 1, ties to the last cue, as English heads come
//!    last: `a red evening gown` is a garment). Words are looked up whole, by hyphen parts, in
//!    the singular, and as closed compounds of a garment or place (`sundress`, `cornfield`).
//!    Chunks without cues (`in her hands`, `at the camera`) take the class of the chunk before
//!    them in the segment, else of the next cued chunk in the segment, else of the neighbouring
//!    chunks in the sentence, else general; a segment with no cue at all uses the body part or
//!    person its phrases name (`flour on her hands` → body).
//! 3. Each part is its chunks in caption order. Chunks that were adjacent in the caption (same
//!    sentence) are joined with their original separator (a space, or `, ` across a comma) so
//!    running text stays intact; any other two chunks are joined with `, `.
//!
//! # Cue decisions
//!
//! - **general**: the subject noun phrase (class word, person nouns like `chef` or `bride`, age,
//!   ethnicity), face, hair and facial hair, expression and gaze, framing (`close-up`,
//!   `upper body shot`, `headshot`) and photo style (`black and white photo`, `studio lighting`,
//!   `soft natural light`). Things worn *on the face* — glasses, sunglasses, earrings, nose
//!   rings, piercings, makeup, face paint — are general: they sit inside the face crop and are
//!   part of how the person looks there, so the face prompt has to explain them.
//! - **body**: garments, *headwear* (hats, caps, berets, helmets, headscarves: they are clothing
//!   that changes from photo to photo, not the face, so keeping them out of `P_general` keeps the
//!   identity prompt stable), worn accessories off the face (headphones, necklaces, watches,
//!   bags, stethoscopes), tattoos and henna, body parts outside a prepositional phrase
//!   (`arms crossed`, `bare shoulders`), pose and actions and what is held.
//! - **background**: places, scenery, furniture or ground the person is on (`on a bench`,
//!   `on a blanket`), weather, season and time of day, people and animals in the scene, blur
//!   (`blurred`, `bokeh`), and lighting that comes from the scene (`sunlight`, `neon`,
//!   `city lights`). A capitalised word inside a prepositional phrase (`in Paris`,
//!   `along the Seine`) is taken as a place name (weak cue).
//! - Inside a prepositional phrase other than `with`, body parts and person nouns are neutral:
//!   `in her hands`, `on his father's shoulders`, `in front of her chest` only say where, so
//!   they follow the chunk before them; `with his arms crossed` describes the body.
//!
//! # Dropped joiners
//!
//! No word is lost, reordered within a chunk or added, except one: a chunk that starts with a
//! joiner in [`DROPPABLE_JOINERS`] (`and`, `while`, `whilst`) loses that joiner when it does not
//! directly follow its neighbour in the caption inside the same part (or begins its part) — the
//! joiner linked it to something that went elsewhere (`a man with a beard and a denim jacket` →
//! body `a denim jacket`). `with` is never dropped: it carries meaning (`with a dog`).

use serde::{Deserialize, Serialize};

/// Version of the rules; part of the cache key of every split made with them, so it must be
/// bumped whenever a lexicon or rule changes the output.
pub const RULES_VERSION: &str = "rules-v1";

/// Joiners that [`split`] may drop at the start of a clause whose linked neighbour went to
/// another part (see the module docs). Every other input word appears in exactly one part.
pub const DROPPABLE_JOINERS: &[&str] = &["and", "while", "whilst"];

/// The three texts a split-prompt adapter trains on for one face image.
///
/// Serialisable because splits are cached and written to tables.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SplitPrompt {
    /// `P_general`: the person — class word, age, face, hair, expression, gaze, framing, style.
    pub general: String,
    /// `P_bg`: everything behind and around the person — place, scenery, scene objects and light.
    pub background: String,
    /// `P_body`: body, clothing, headwear, accessories worn off the face, pose, action, held items.
    pub body: String,
}

/// Splits a caption into general / background / body texts with the offline rules.
///
/// Deterministic and total: any input (empty, punctuation only, non-English) gives a result;
/// text with no cues at all ends up in `general`. See the module docs for the rules.
pub fn split(caption: &str) -> SplitPrompt {
    let toks_and_chunks = analyse(caption);
    let (toks, chunks) = (&toks_and_chunks.0, &toks_and_chunks.1);
    SplitPrompt {
        general: assemble(caption, toks, chunks, Part::General),
        background: assemble(caption, toks, chunks, Part::Background),
        body: assemble(caption, toks, chunks, Part::Body),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    General,
    Background,
    Body,
}

impl Part {
    fn index(self) -> usize {
        match self {
            Part::General => 0,
            Part::Background => 1,
            Part::Body => 2,
        }
    }
}

/// One whitespace-separated word with its byte range in the caption.
#[derive(Debug)]
struct Tok {
    start: usize,
    end: usize,
    /// Lowercased, surrounding punctuation and a possessive `'s` removed.
    norm: String,
    possessive: bool,
    capitalised: bool,
    sentence_initial: bool,
}

#[derive(Debug, Clone)]
struct Chunk {
    sentence: usize,
    segment: usize,
    /// Global token indices.
    first: usize,
    last: usize,
    cue: Option<Part>,
    /// Cue used only when no chunk of the segment has one (`flour | on her hands`).
    fallback: Option<Part>,
    part: Part,
}

fn analyse(caption: &str) -> (Vec<Tok>, Vec<Chunk>) {
    let mut toks = Vec::new();
    let mut chunks = Vec::new();
    let mut segment_no = 0;
    for (sentence_no, sentence) in sentences(caption).into_iter().enumerate() {
        let sentence_chunks_from = chunks.len();
        let mut first_in_sentence = true;
        for (seg_start, seg_end) in segments(caption, sentence) {
            let from = toks.len();
            tokenize(caption, seg_start, seg_end, first_in_sentence, &mut toks);
            if toks.len() == from {
                continue;
            }
            first_in_sentence = false;
            let seg_toks = &toks[from..];
            for (a, b) in chunk_ranges(seg_toks) {
                let (cue, fallback) = classify(&seg_toks[a..b]);
                chunks.push(Chunk {
                    sentence: sentence_no,
                    segment: segment_no,
                    first: from + a,
                    last: from + b - 1,
                    cue,
                    fallback,
                    part: Part::General,
                });
            }
            segment_no += 1;
        }
        resolve(&mut chunks[sentence_chunks_from..]);
    }
    (toks, chunks)
}

/// Byte ranges of sentences, trimmed, without their terminator.
fn sentences(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let boundary = c == '\n'
            || (matches!(c, '.' | '!' | '?' | ';') && next.is_none_or(char::is_whitespace));
        if boundary {
            out.push((start, i));
            start = i + c.len_utf8();
        }
    }
    out.push((start, text.len()));
    out.into_iter()
        .filter_map(|(a, b)| trim_range(text, a, b))
        .collect()
}

/// Comma segments of a sentence (a comma between two digits is not a boundary).
fn segments(text: &str, (start, end): (usize, usize)) -> Vec<(usize, usize)> {
    let s = &text[start..end];
    let mut out = Vec::new();
    let mut seg_start = 0;
    let mut prev: Option<char> = None;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        if c == ','
            && !(prev.is_some_and(|p| p.is_ascii_digit())
                && next.is_some_and(|n| n.is_ascii_digit()))
        {
            out.push((start + seg_start, start + i));
            seg_start = i + 1;
        }
        prev = Some(c);
    }
    out.push((start + seg_start, end));
    out.into_iter()
        .filter_map(|(a, b)| trim_range(text, a, b))
        .collect()
}

/// Trims whitespace and trailing / leading clause punctuation; `None` when nothing is left.
fn trim_range(text: &str, a: usize, b: usize) -> Option<(usize, usize)> {
    let s = &text[a..b];
    let is_edge = |c: char| c.is_whitespace() || matches!(c, '.' | ',' | ';' | ':' | '!' | '?');
    let trimmed_start = s.trim_start_matches(is_edge);
    let lead = s.len() - trimmed_start.len();
    let trimmed = trimmed_start.trim_end_matches(is_edge);
    (!trimmed.is_empty()).then(|| (a + lead, a + lead + trimmed.len()))
}

fn tokenize(text: &str, start: usize, end: usize, sentence_start: bool, out: &mut Vec<Tok>) {
    let s = &text[start..end];
    let mut word_start: Option<usize> = None;
    let mut first = sentence_start;
    let mut push = |a: usize, b: usize, out: &mut Vec<Tok>| {
        let raw = &text[a..b];
        let core = raw.trim_matches(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\''));
        let core = core.trim_matches(|c: char| c == '\'' || c == '-');
        let mut norm = core.to_lowercase().replace('\u{2019}', "'");
        let mut possessive = false;
        for suffix in ["'s", "’s"] {
            if norm.len() > suffix.len() && norm.ends_with(suffix) {
                norm.truncate(norm.len() - suffix.len());
                possessive = true;
            }
        }
        let capitalised = core.chars().next().is_some_and(char::is_uppercase);
        out.push(Tok {
            start: a,
            end: b,
            norm,
            possessive,
            capitalised,
            sentence_initial: first,
        });
        first = false;
    };
    for (i, c) in s.char_indices() {
        match (c.is_whitespace(), word_start) {
            (true, Some(ws)) => {
                push(start + ws, start + i, out);
                word_start = None;
            }
            (false, None) => word_start = Some(i),
            _ => {}
        }
    }
    if let Some(ws) = word_start {
        push(start + ws, end, out);
    }
}

/// Chunk boundaries inside one segment, as relative `(start, end)` token ranges.
fn chunk_ranges(toks: &[Tok]) -> Vec<(usize, usize)> {
    let n = toks.len();
    let mut starts = vec![0];
    for i in 1..n {
        let w = toks[i].norm.as_str();
        let prev = toks[i - 1].norm.as_str();
        let next = toks.get(i + 1).map(|t| t.norm.as_str());
        let chunk_start = *starts.last().unwrap_or(&0);
        let next2 = toks.get(i + 2).map(|t| t.norm.as_str());
        let boundary = if is_joiner(w) {
            w != "and"
                || next.is_some_and(|n| {
                    starts_phrase(n) && !next2.is_some_and(|n2| is_compound(n, n2))
                })
                || and_links_different_things(&toks[chunk_start..i], &toks[i + 1..])
        } else if is_joiner(prev) {
            false
        } else if is_aux(w) {
            next.is_some_and(is_known_verb)
        } else if is_known_verb(w) {
            !is_determiner(prev)
                && !is_aux(prev)
                && !is_pronoun(prev)
                && !next.is_some_and(|n| is_compound(w, n))
        } else if is_preposition(w, next) {
            // Before another preposition it is a particle (`looking down | at his phone`).
            !is_determiner(prev) && !next.is_some_and(|n| is_preposition(n, None))
        } else {
            // An unknown action right after the subject noun: `a boy | splashing in a pool`.
            is_gerund_head(&toks[i..]) && cat_of(&toks[i - 1]) == Some(Cat::Person)
        };
        if boundary {
            starts.push(i);
        }
    }
    let mut ranges: Vec<(usize, usize)> = starts
        .iter()
        .zip(starts.iter().skip(1).copied().chain([n]))
        .map(|(&a, b)| (a, b))
        .collect();

    // Function-word-only chunks ("She", "and is") join the chunk after them (or before them).
    let mut i = 0;
    while i < ranges.len() && ranges.len() > 1 {
        let (a, b) = ranges[i];
        if toks[a..b].iter().all(|t| is_function(&t.norm)) {
            if i + 1 < ranges.len() {
                ranges[i + 1].0 = a;
            } else {
                ranges[i - 1].1 = b;
            }
            ranges.remove(i);
        } else {
            i += 1;
        }
    }

    // A motion verb whose direct object is a place: the place is background.
    let mut out = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match motion_object_split(&toks[a..b]) {
            Some(k) => {
                out.push((a, a + k));
                out.push((a + k, b));
            }
            None => out.push((a, b)),
        }
    }
    out
}

/// Whether an `and` without an article after it still joins two different kinds of thing:
/// `a goatee and tattoos` (face, body), but not `long hair and freckles` or `black and white`.
fn and_links_different_things(before: &[Tok], after: &[Tok]) -> bool {
    let noun_part = |t: &Tok| {
        lookup(&t.norm)
            .filter(|c| c.weight >= 2 && !t.possessive)
            .and_then(|c| part_of(c.cat, false))
    };
    let left = before.iter().rev().find_map(noun_part);
    let right = after
        .iter()
        .take(4)
        .take_while(|t| {
            !is_joiner(&t.norm) && !is_preposition(&t.norm, None) && !is_known_verb(&t.norm)
        })
        .find_map(noun_part);
    matches!((left, right), (Some(l), Some(r)) if l != r)
}

/// Relative index where the place object of a leading motion verb starts, if there is one.
fn motion_object_split(toks: &[Tok]) -> Option<usize> {
    let h = toks.iter().position(|t| !is_function(&t.norm))?;
    if !MOTION_VERBS.contains(&toks[h].norm.as_str()) || h + 1 >= toks.len() {
        return None;
    }
    let obj = &toks[h + 1];
    let starts_np = is_determiner(&obj.norm)
        || obj.capitalised
        || lookup(&obj.norm).is_some_and(|c| c.cat == Cat::Scene);
    let has_place = toks[h + 1..].iter().any(|t| {
        lookup(&t.norm).is_some_and(|c| c.cat == Cat::Scene)
            || (t.capitalised && !t.sentence_initial)
    });
    (starts_np && has_place && !is_preposition(&obj.norm, toks.get(h + 2).map(|t| t.norm.as_str())))
        .then_some(h + 1)
}

/// The chunk's class from its own words (`None` when it has no cue), and a fallback cue.
fn classify(toks: &[Tok]) -> (Option<Part>, Option<Part>) {
    let Some(h) = toks.iter().position(|t| !is_function(&t.norm)) else {
        return (None, None);
    };
    let head = toks[h].norm.as_str();
    let next = toks.get(h + 1).map(|t| t.norm.as_str());
    if is_preposition(head, next) {
        let np = &toks[h + 1..];
        // `with` + a body part describes the body (`with his arms crossed`); other prepositions
        // only say where (`in her hands`).
        let cue = score(np, head != "with");
        let names_body_part = np.iter().any(|t| cat_of(t) == Some(Cat::BodyPart));
        let fallback = np.iter().find_map(|t| match cat_of(t) {
            Some(Cat::BodyPart) => Some(Part::Body),
            Some(Cat::Person) => Some(Part::General),
            _ => None,
        });
        // A purely spatial preposition says "somewhere in the scene" unless it names the body.
        if cue.is_none() && !names_body_part && is_locative(head, next) {
            return (Some(Part::Background), None);
        }
        // Something of their own that is not a body part or a person is held or used:
        // `looking down | at his phone`, `with his trekking poles`.
        let possessed = np
            .first()
            .is_some_and(|t| matches!(t.norm.as_str(), "his" | "her" | "their" | "my" | "your"));
        if cue.is_none() && fallback.is_none() && possessed && np.len() > 1 {
            return (Some(Part::Body), None);
        }
        return (cue, fallback);
    }
    if next.is_some_and(|n| is_compound(head, n)) {
        return (score(toks, false), None);
    }
    if GENERAL_VERBS.contains(&head) {
        return (Some(Part::General), None);
    }
    if WEAR_VERBS.contains(&head) {
        // Worn things decide: only face things (glasses, makeup, a smile) keep it general.
        let (mut face, mut worn) = (false, false);
        for t in &toks[h + 1..] {
            match cat_of(t) {
                Some(Cat::FaceWorn | Cat::Face) => face = true,
                Some(Cat::Worn | Cat::BodyPart) => worn = true,
                _ => {}
            }
        }
        return (
            Some(if face && !worn {
                Part::General
            } else {
                Part::Body
            }),
            None,
        );
    }
    if BODY_VERBS.contains(&head) || is_gerund_head(&toks[h..]) {
        return (Some(Part::Body), None);
    }
    (score(toks, false), None)
}

/// An unknown `-ing` word opening a chunk is an action (`splashing in a pool`,
/// `blowing bubbles`, `building a snowman`) unless the phrase it opens names a scene thing,
/// where it describes that thing (`cheering crowd`, `rolling green hills`,
/// `overlooking the ocean`).
fn is_gerund_head(toks: &[Tok]) -> bool {
    let Some((head, rest)) = toks.split_first() else {
        return false;
    };
    let w = head.norm.as_str();
    w.len() >= 6
        && w.ends_with("ing")
        && !NOUNS_IN_ING.contains(&w)
        && !matches!(lookup(w), Some(c) if c.cat != Cat::Scene)
        && !rest
            .iter()
            .take_while(|t| {
                !is_joiner(&t.norm) && !is_preposition(&t.norm, None) && !is_known_verb(&t.norm)
            })
            .any(|t| cat_of(t) == Some(Cat::Scene))
}

/// `-ing` words that are nouns, never actions.
const NOUNS_IN_ING: &[&str] = &[
    "evening",
    "morning",
    "clothing",
    "ceiling",
    "lighting",
    "something",
    "nothing",
    "everything",
    "anything",
    "wedding",
    "earring",
    "stocking",
    "railing",
    "spring",
    "string",
    "during",
    "setting",
    "landing",
    "offspring",
    "darling",
    "sibling",
    "pudding",
    "awning",
    "siding",
    "ending",
    "beginning",
    "feeling",
    "meaning",
    "opening",
    "rising",
    "saying",
];

/// Prepositions that only place the person in the scene; with no other cue they mean background.
fn is_locative(prep: &str, next: Option<&str>) -> bool {
    matches!(
        prep,
        "behind"
            | "along"
            | "across"
            | "outside"
            | "inside"
            | "near"
            | "beside"
            | "amid"
            | "amidst"
            | "among"
            | "beneath"
            | "underneath"
            | "beyond"
            | "against"
            | "next"
    ) || (prep == "in" && next == Some("front"))
}

/// Weighted cue vote over a noun phrase; ties go to the class of the last cue word.
fn score(toks: &[Tok], in_pp: bool) -> Option<Part> {
    let mut total = [0u32; 3];
    let mut last = [0usize; 3];
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        let (cue, width) = match toks.get(i + 1).and_then(|n| bigram(&t.norm, &n.norm)) {
            Some(c) => (Some(c), 2),
            None => (if t.possessive { None } else { lookup(&t.norm) }, 1),
        };
        let vote = match cue {
            Some(c) => part_of(c.cat, in_pp).map(|p| (p, c.weight)),
            None if in_pp && t.capitalised && !t.sentence_initial && !is_function(&t.norm) => {
                Some((Part::Background, 1))
            }
            None => None,
        };
        if let Some((p, w)) = vote {
            total[p.index()] += u32::from(w);
            last[p.index()] = i + 1;
        }
        i += width;
    }
    [Part::General, Part::Background, Part::Body]
        .into_iter()
        .filter(|p| total[p.index()] > 0)
        .max_by_key(|p| (total[p.index()], last[p.index()]))
}

/// Cues inside a prepositional phrase ignore body parts and people: they only say where.
fn part_of(cat: Cat, in_pp: bool) -> Option<Part> {
    match cat {
        Cat::Person | Cat::BodyPart if in_pp => None,
        Cat::Person | Cat::Face | Cat::FaceWorn | Cat::Style | Cat::Age | Cat::GeneralVerb => {
            Some(Part::General)
        }
        Cat::BodyPart | Cat::Worn | Cat::BodyVerb => Some(Part::Body),
        Cat::Scene => Some(Part::Background),
    }
}

fn cat_of(t: &Tok) -> Option<Cat> {
    if t.possessive {
        None
    } else {
        lookup(&t.norm).map(|c| c.cat)
    }
}

/// Gives uncued chunks a class: previous chunk in the segment, next cued chunk in the segment,
/// previous chunk in the sentence, next cued chunk in the sentence, else general.
fn resolve(chunks: &mut [Chunk]) {
    for i in 0..chunks.len() {
        let seg = chunks[i].segment;
        let in_segment = || chunks.iter().filter(|c| c.segment == seg);
        let segment_fallback = if in_segment().all(|c| c.cue.is_none()) {
            in_segment().find_map(|c| c.fallback)
        } else {
            None
        };
        let part = match chunks[i].cue.or(segment_fallback) {
            Some(p) => p,
            None => {
                let prev_in_seg =
                    (i > 0 && chunks[i - 1].segment == seg).then(|| chunks[i - 1].part);
                let next_in_seg = chunks[i + 1..]
                    .iter()
                    .take_while(|c| c.segment == seg)
                    .find_map(|c| c.cue);
                let prev_in_sentence = (i > 0).then(|| chunks[i - 1].part);
                let next_in_sentence = chunks[i + 1..].iter().find_map(|c| c.cue);
                prev_in_seg
                    .or(next_in_seg)
                    .or(prev_in_sentence)
                    .or(next_in_sentence)
                    .unwrap_or(Part::General)
            }
        };
        chunks[i].part = part;
    }
}

fn assemble(text: &str, toks: &[Tok], chunks: &[Chunk], part: Part) -> String {
    let mut out = String::new();
    let mut prev: Option<usize> = None;
    for (i, c) in chunks.iter().enumerate().filter(|(_, c)| c.part == part) {
        let adjacent = i > 0 && prev == Some(i - 1) && chunks[i - 1].sentence == c.sentence;
        let mut first = c.first;
        if adjacent {
            out.push_str(if chunks[i - 1].segment == c.segment {
                " "
            } else {
                ", "
            });
        } else {
            if DROPPABLE_JOINERS.contains(&toks[first].norm.as_str()) && first < c.last {
                first += 1;
            }
            if !out.is_empty() {
                out.push_str(", ");
            }
        }
        out.push_str(&text[toks[first].start..toks[c.last].end]);
        prev = Some(i);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Word classes

fn is_joiner(w: &str) -> bool {
    matches!(w, "and" | "while" | "whilst")
}

fn is_aux(w: &str) -> bool {
    matches!(w, "is" | "are" | "was" | "were" | "being")
}

fn is_pronoun(w: &str) -> bool {
    matches!(
        w,
        "he" | "she"
            | "they"
            | "it"
            | "i"
            | "we"
            | "you"
            | "him"
            | "them"
            | "who"
            | "which"
            | "that"
    )
}

fn is_determiner(w: &str) -> bool {
    matches!(
        w,
        "a" | "an"
            | "the"
            | "his"
            | "her"
            | "their"
            | "its"
            | "my"
            | "your"
            | "our"
            | "this"
            | "these"
            | "those"
            | "some"
            | "one"
            | "two"
            | "three"
            | "both"
            | "each"
            | "every"
            | "another"
            | "several"
            | "many"
    )
}

/// Words that carry no content on their own; a chunk of only these joins its neighbour.
fn is_function(w: &str) -> bool {
    is_joiner(w)
        || is_aux(w)
        || is_pronoun(w)
        || matches!(
            w,
            "" | "has" | "have" | "also" | "there" | "then" | "currently" | "just" | "be"
        )
}

fn starts_phrase(w: &str) -> bool {
    is_determiner(w) || is_pronoun(w) || is_aux(w) || is_known_verb(w) || is_preposition(w, None)
}

fn is_known_verb(w: &str) -> bool {
    GENERAL_VERBS.contains(&w) || WEAR_VERBS.contains(&w) || BODY_VERBS.contains(&w)
}

/// Prepositions that open a phrase; `out` only as `out of`, `next` only as `next to`.
fn is_preposition(w: &str, next: Option<&str>) -> bool {
    match w {
        "out" => next.is_none_or(|n| n == "of"),
        "next" => next.is_none_or(|n| n == "to"),
        _ => matches!(
            w,
            "in" | "inside"
                | "at"
                | "on"
                | "onto"
                | "upon"
                | "under"
                | "underneath"
                | "beneath"
                | "below"
                | "above"
                | "behind"
                | "beside"
                | "near"
                | "against"
                | "by"
                | "outside"
                | "among"
                | "amid"
                | "amidst"
                | "along"
                | "across"
                | "through"
                | "down"
                | "over"
                | "from"
                | "into"
                | "around"
                | "toward"
                | "towards"
                | "with"
                | "within"
                | "beyond"
        ),
    }
}

/// `-ing` words that are part of a noun, not a new action.
fn is_compound(w: &str, next: &str) -> bool {
    matches!(
        (w, next),
        ("reading", "glasses" | "lamp" | "nook")
            | ("walking", "stick" | "cane" | "boots" | "shoes")
            | ("running", "shoes" | "track" | "gear")
            | ("swimming", "pool" | "trunks" | "cap" | "costume")
            | ("fishing", "rod" | "boat" | "hat" | "net")
            | ("sitting", "room")
            | ("riding", "boots" | "helmet" | "jacket")
            | ("climbing", "wall" | "gear" | "rope")
            | ("cooking", "pot" | "class")
            | ("standing", "desk" | "ovation")
            | ("dancing", "shoes")
            | ("hiking", "boots" | "trail" | "gear")
            | ("skating", "rink")
            | ("working", "desk")
    )
}

const GENERAL_VERBS: &[&str] = &[
    "smiling",
    "smiles",
    "laughing",
    "laughs",
    "grinning",
    "grins",
    "beaming",
    "looking",
    "looks",
    "gazing",
    "gazes",
    "staring",
    "stares",
    "glancing",
    "glances",
    "frowning",
    "frowns",
    "squinting",
    "squints",
    "smirking",
    "smirks",
    "winking",
    "winks",
    "crying",
    "pouting",
    "blinking",
    "yawning",
    "glaring",
    "peering",
    "scowling",
    "weeping",
];

const WEAR_VERBS: &[&str] = &[
    "wearing",
    "wears",
    "wore",
    "dressed",
    "clad",
    "sporting",
    "donning",
    "outfitted",
];

const BODY_VERBS: &[&str] = &[
    "holding",
    "holds",
    "carrying",
    "carries",
    "sitting",
    "sits",
    "seated",
    "standing",
    "stands",
    "leaning",
    "leans",
    "walking",
    "walks",
    "running",
    "runs",
    "jogging",
    "lying",
    "laying",
    "kneeling",
    "kneels",
    "crouching",
    "squatting",
    "posing",
    "poses",
    "reclining",
    "resting",
    "lounging",
    "sprawled",
    "perched",
    "hugging",
    "hugs",
    "embracing",
    "clutching",
    "gripping",
    "grasping",
    "pointing",
    "points",
    "waving",
    "raising",
    "raises",
    "reaching",
    "stretching",
    "dancing",
    "dances",
    "jumping",
    "jumps",
    "leaping",
    "climbing",
    "hiking",
    "skateboarding",
    "skating",
    "surfing",
    "swimming",
    "cycling",
    "biking",
    "riding",
    "rides",
    "driving",
    "playing",
    "plays",
    "kicking",
    "throwing",
    "catching",
    "lifting",
    "lifts",
    "pushing",
    "pulling",
    "dragging",
    "reading",
    "reads",
    "writing",
    "writes",
    "typing",
    "texting",
    "talking",
    "speaking",
    "singing",
    "sings",
    "eating",
    "eats",
    "drinking",
    "drinks",
    "sipping",
    "cooking",
    "chopping",
    "baking",
    "knitting",
    "sewing",
    "painting",
    "drawing",
    "fishing",
    "gardening",
    "working",
    "studying",
    "using",
    "making",
    "doing",
    "performing",
    "practicing",
    "practising",
    "exercising",
    "clapping",
    "shrugging",
    "gesturing",
    "adjusting",
    "tying",
    "fixing",
    "brushing",
    "combing",
    "crossing",
    "exploring",
    "strolling",
    "wandering",
    "entering",
    "leaving",
    "shopping",
    "smoking",
    "twirling",
    "twirls",
    "spinning",
    "taking",
    "feeding",
    "petting",
    "cradling",
    "balancing",
    "bending",
    "marching",
    "skiing",
    "snowboarding",
    "rowing",
    "paddling",
    "boxing",
    "hanging",
    "squeezing",
    "waiting",
    "curled",
    "hunched",
    "slumped",
    "propped",
    "huddled",
    "crouched",
    "saluting",
];

/// Motion verbs whose direct object can be the place itself (`crossing a street`).
const MOTION_VERBS: &[&str] = &[
    "crossing",
    "exploring",
    "entering",
    "leaving",
    "climbing",
    "hiking",
    "roaming",
    "wandering",
    "strolling",
    "walking",
    "touring",
    "visiting",
    "navigating",
    "running",
];

// ---------------------------------------------------------------------------------------------
// Cue lexicon

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cat {
    /// Person nouns (general outside a prepositional phrase).
    Person,
    /// Face, hair, expression.
    Face,
    /// Things worn on the face: glasses, earrings, makeup.
    FaceWorn,
    /// Framing and photo style.
    Style,
    /// Age.
    Age,
    /// Body parts below the head (body outside a prepositional phrase).
    BodyPart,
    /// Garments, headwear, worn accessories, tattoos.
    Worn,
    /// Places, scenery, scene objects, weather, time, scene light.
    Scene,
    /// A general verb used inside a noun phrase (`a smiling nurse`).
    GeneralVerb,
    /// A body verb used inside a noun phrase.
    BodyVerb,
}

#[derive(Debug, Clone, Copy)]
struct Cue {
    cat: Cat,
    weight: u8,
}

const fn noun(cat: Cat) -> Cue {
    Cue { cat, weight: 2 }
}

const fn adj(cat: Cat) -> Cue {
    Cue { cat, weight: 1 }
}

fn bigram(a: &str, b: &str) -> Option<Cue> {
    let cat = match (a, b) {
        ("upper" | "full" | "half" | "whole", "body") | ("body", "shot" | "portrait") => Cat::Style,
        ("depth", "of") | ("film", "grain") => Cat::Style,
        ("nose" | "lip" | "eyebrow" | "septum", "ring" | "piercing" | "stud")
        | ("face", "paint" | "mask" | "glitter") => Cat::FaceWorn,
        ("living" | "dining" | "waiting" | "class" | "locker" | "hotel", "room")
        | ("golden" | "blue", "hour")
        | ("city", "lights")
        | ("street", "lights") => Cat::Scene,
        ("bow", "tie") | ("tank" | "crop", "top") | ("baseball", "cap") => Cat::Worn,
        _ => return None,
    };
    Some(noun(cat))
}

/// Cue of a normalised word: the word, then its hyphen parts (last first), then singular forms.
fn lookup(w: &str) -> Option<Cue> {
    if w.is_empty() {
        return None;
    }
    if let Some(c) = lexeme(w) {
        return Some(c);
    }
    if w.contains('-') {
        return w
            .rsplit('-')
            .find_map(|p| lexeme(p).or_else(|| singular(p)));
    }
    singular(w).or_else(|| compound_head(w))
}

/// A closed compound whose head is a garment or a place: `sundress`, `cornfield`,
/// `sweatpants`. At least 4 letters after 3 or more; short body and face words are left out
/// (`appears` is not about ears), and so are tails that mostly end unrelated words
/// (`childhood`, `harvest`, `lawsuit`, `thousand`, `chemist`, `electricity`).
fn compound_head(w: &str) -> Option<Cue> {
    w.char_indices()
        .map(|(i, _)| i)
        .filter(|&i| i >= 3 && w.len() - i >= 4)
        .find_map(|i| {
            let tail = &w[i..];
            if matches!(
                tail,
                "hood" | "hoods" | "vest" | "suit" | "suits" | "sand" | "mist" | "city"
            ) {
                return None;
            }
            lexeme(tail)
                .or_else(|| singular(tail))
                .filter(|c| matches!(c.cat, Cat::Worn | Cat::Scene))
        })
}

fn singular(w: &str) -> Option<Cue> {
    let mut candidates = Vec::new();
    if let Some(s) = w.strip_suffix("ies") {
        candidates.push(format!("{s}y"));
    }
    if let Some(s) = w.strip_suffix("ves") {
        candidates.push(format!("{s}f"));
        candidates.push(format!("{s}fe"));
    }
    if let Some(s) = w.strip_suffix("es") {
        candidates.push(s.to_string());
    }
    if let Some(s) = w.strip_suffix('s')
        && !w.ends_with("ss")
    {
        candidates.push(s.to_string());
    }
    candidates.iter().find_map(|c| lexeme(c))
}

fn lexeme(w: &str) -> Option<Cue> {
    use Cat::*;
    Some(match w {
        // People. Class words and common person nouns: the subject of the caption.
        "man" | "woman" | "boy" | "girl" | "person" | "child" | "kid" | "lady" | "gentleman"
        | "guy" | "baby" | "toddler" | "infant" | "teenager" | "teen" | "adult" | "human"
        | "individual" | "businessman" | "businesswoman" | "chef" | "cook" | "nurse" | "doctor"
        | "firefighter" | "soldier" | "bride" | "groom" | "mother" | "father" | "mom" | "dad"
        | "grandmother" | "grandfather" | "grandma" | "grandpa" | "surfer" | "hiker"
        | "athlete" | "student" | "worker" | "model" | "actor" | "actress" | "singer"
        | "dancer" | "musician" | "farmer" | "officer" | "runner" | "cyclist" | "skater"
        | "player" | "senior" | "youth" | "girlfriend" | "boyfriend" | "wife" | "husband"
        | "son" | "daughter" | "teacher" | "artist" | "scientist" | "pilot" | "policeman"
        | "policewoman" | "fisherman" | "mechanic" | "boxer" | "swimmer" | "climber" | "skier"
        | "gamer" | "blogger" | "entrepreneur" | "executive" | "priest" | "monk" | "nun"
        | "cowboy" | "knight" | "king" | "queen" | "prince" | "princess" | "youngster"
        | "newborn" | "schoolgirl" | "schoolboy" | "grandson" | "granddaughter" | "friend"
        | "family" | "colleague" | "partner" | "sister" | "brother" | "parent" | "stranger" => {
            noun(Person)
        }

        // Face, head and hair.
        "face" | "facial" | "head" | "hair" | "hairstyle" | "haircut" | "hairline" | "bangs"
        | "fringe" | "bun" | "ponytail" | "pigtail" | "braid" | "curl" | "dreadlocks" | "locks"
        | "afro" | "mohawk" | "pixie" | "updo" | "beard" | "mustache" | "moustache" | "goatee"
        | "stubble" | "sideburns" | "eye" | "eyebrow" | "brow" | "lash" | "eyelash" | "iris"
        | "nose" | "nostril" | "lip" | "mouth" | "teeth" | "tooth" | "smile" | "grin" | "cheek"
        | "chin" | "jaw" | "jawline" | "forehead" | "wrinkle" | "freckle" | "dimple" | "skin"
        | "complexion" | "tongue" | "ear" | "expression" | "gaze" | "scar" | "mole" | "haired"
        | "eyed" | "laugh" | "frown" | "smirk" | "pout" | "wink" | "tear" | "shoulder-length"
        | "chin-length" | "waist-length" => noun(Face),
        "bald" | "bearded" | "freckled" | "blond" | "blonde" | "brunette" | "redhead" | "curly"
        | "wavy" | "braided" | "unshaven" | "clean-shaven" | "toothy" | "toothless"
        | "wrinkled" | "pale" | "tanned" | "sunburned" | "sunburnt" => adj(Face),

        // Worn on the face.
        "glasses" | "eyeglasses" | "spectacles" | "sunglasses" | "shades" | "goggles"
        | "monocle" | "earring" | "makeup" | "make-up" | "lipstick" | "eyeliner" | "mascara"
        | "eyeshadow" | "blush" | "piercing" | "lip-gloss" | "veil" | "eyepatch" => noun(FaceWorn),

        // Framing and photo style.
        "portrait" | "photo" | "photograph" | "picture" | "image" | "close-up" | "closeup"
        | "headshot" | "selfie" | "shot" | "view" | "profile" | "mugshot" | "snapshot"
        | "polaroid" | "full-length" | "half-length" | "waist-up" | "lighting" | "light"
        | "photography" | "monochrome" | "sepia" | "grain" | "film" | "depth" | "angle"
        | "composition" | "exposure" | "cinematic" | "black-and-white" | "b&w" | "35mm"
        | "85mm" | "macro" | "lens" | "dslr" => noun(Style),

        // Age.
        "twenties" | "thirties" | "forties" | "fifties" | "sixties" | "seventies" | "eighties"
        | "nineties" | "20s" | "30s" | "40s" | "50s" | "60s" | "70s" | "80s" | "90s" | "teens"
        | "age" => noun(Age),
        "young" | "old" | "elderly" | "aged" | "middle-aged" | "teenage" | "adolescent"
        | "year-old" | "aging" | "ageing" => adj(Age),

        // Body parts below the head.
        "arm" | "hand" | "shoulder" | "back" | "chest" | "torso" | "body" | "leg" | "foot"
        | "feet" | "knee" | "hip" | "waist" | "neck" | "finger" | "fist" | "palm" | "wrist"
        | "elbow" | "lap" | "belly" | "stomach" | "abs" | "muscle" | "physique" | "posture"
        | "thumb" | "thigh" | "ankle" | "toe" | "bicep" | "biceps" => noun(BodyPart),
        "muscular" | "slim" | "slender" | "athletic" | "barefoot" | "shirtless" | "topless"
        | "bare" => adj(BodyPart),

        // Garments, headwear, worn accessories, tattoos.
        "shirt" | "t-shirt" | "tshirt" | "tee" | "blouse" | "top" | "tank" | "jacket" | "coat"
        | "blazer" | "suit" | "dress" | "gown" | "skirt" | "jeans" | "pants" | "trousers"
        | "shorts" | "leggings" | "sweater" | "jumper" | "cardigan" | "hoodie" | "sweatshirt"
        | "vest" | "uniform" | "scrubs" | "apron" | "overalls" | "robe" | "kimono" | "sari"
        | "saree" | "lehenga" | "hijab" | "headscarf" | "scarf" | "shawl" | "tie" | "bowtie"
        | "collar" | "sleeve" | "hat" | "cap" | "beanie" | "beret" | "helmet" | "hood"
        | "turban" | "bandana" | "headband" | "crown" | "tiara" | "headphones" | "earbuds"
        | "headset" | "necklace" | "pendant" | "chain" | "bracelet" | "watch" | "wristwatch"
        | "glove" | "mitten" | "boot" | "shoe" | "sneaker" | "sandal" | "heels" | "sock"
        | "belt" | "bag" | "backpack" | "purse" | "handbag" | "satchel" | "stethoscope"
        | "badge" | "lanyard" | "jewelry" | "jewellery" | "outfit" | "clothes" | "clothing"
        | "attire" | "costume" | "gear" | "armor" | "armour" | "raincoat" | "parka" | "poncho"
        | "onesie" | "pajamas" | "pyjamas" | "jersey" | "bikini" | "swimsuit" | "bra"
        | "lingerie" | "underwear" | "tuxedo" | "tux" | "waistcoat" | "tattoo" | "henna"
        | "bodysuit" | "sportswear" | "flannel" | "polo" | "turtleneck" | "dungarees" | "kilt"
        | "cloak" | "cape" | "wetsuit" | "trench" | "windbreaker" | "fleece" | "tracksuit"
        | "denim" | "sleeveless" | "corset" | "leotard" | "garment" | "wristband"
        | "suspenders" | "mask" | "jumpsuit" | "romper" | "camisole" | "pullover" | "anorak"
        | "toga" | "sash" | "brooch" | "cufflinks" | "fedora" | "sombrero" | "visor" | "bonnet"
        | "earmuffs" => noun(Worn),

        // Places, scenery, scene objects, weather, time of day, scene light.
        "background" | "backdrop" | "scenery" | "scene" | "landscape" | "setting"
        | "surroundings" | "environment" | "outdoors" | "indoors" | "outside" | "interior"
        | "exterior" | "beach" | "sea" | "ocean" | "lake" | "river" | "pond" | "wave" | "water"
        | "shore" | "coast" | "sand" | "street" | "road" | "path" | "sidewalk" | "pavement"
        | "alley" | "intersection" | "crosswalk" | "highway" | "bridge" | "city" | "town"
        | "village" | "skyline" | "downtown" | "building" | "skyscraper" | "house" | "home"
        | "room" | "bedroom" | "kitchen" | "bathroom" | "office" | "cafe" | "café"
        | "coffeeshop" | "restaurant" | "bar" | "pub" | "shop" | "store" | "market" | "mall"
        | "library" | "classroom" | "school" | "hospital" | "corridor" | "hallway" | "gym"
        | "studio" | "stage" | "concert" | "festival" | "carnival" | "fair" | "party" | "hall"
        | "church" | "temple" | "museum" | "airport" | "station" | "train" | "subway" | "bus"
        | "car" | "boat" | "ship" | "park" | "garden" | "forest" | "woods" | "jungle" | "tree"
        | "field" | "meadow" | "farm" | "desert" | "mountain" | "hill" | "valley" | "canyon"
        | "cliff" | "rock" | "snow" | "rain" | "fog" | "mist" | "sky" | "cloud" | "sunset"
        | "sunrise" | "dawn" | "dusk" | "night" | "evening" | "morning" | "afternoon"
        | "daytime" | "nighttime" | "sunlight" | "sunshine" | "moonlight" | "candlelight"
        | "daylight" | "sun" | "moon" | "neon" | "lights" | "lamp" | "candle" | "fireplace"
        | "window" | "windowsill" | "wall" | "graffiti" | "door" | "doorway" | "floor"
        | "ground" | "carpet" | "rug" | "mat" | "bed" | "couch" | "sofa" | "chair" | "armchair"
        | "bench" | "table" | "desk" | "counter" | "shelf" | "bookshelf" | "bookcase"
        | "curtain" | "balcony" | "rooftop" | "roof" | "terrace" | "porch" | "patio" | "yard"
        | "backyard" | "pool" | "stadium" | "court" | "pitch" | "track" | "playground"
        | "crowd" | "people" | "pigeon" | "bird" | "traffic" | "plant" | "flower" | "leaves"
        | "leaf" | "grass" | "autumn" | "fall" | "winter" | "summer" | "spring" | "weather"
        | "blanket" | "pillow" | "bokeh" | "horizon" | "lawn" | "cityscape" | "seaside"
        | "waterfront" | "harbor" | "harbour" | "pier" | "dock" | "island" | "countryside"
        | "vineyard" | "orchard" | "wheat" | "trail" | "tunnel" | "square" | "plaza"
        | "fountain" | "statue" | "monument" | "castle" | "palace" | "ruins" | "cave"
        | "waterfall" | "glacier" | "volcano" | "stands" | "sunbeam" | "storm" | "lightning"
        | "rainbow" | "stars" | "galaxy" | "space" | "universe" | "cafeteria" | "bakery"
        | "warehouse" | "factory" | "garage" | "barn" | "cabin" | "tent" | "campfire"
        | "bonfire" | "lobby" | "elevator" | "staircase" | "stairs" | "steps" | "fence"
        | "gate" | "railing" | "hedge" | "bush" | "greenery" | "foliage" | "lab" | "laboratory"
        | "theater" | "theatre" | "cinema" | "arena" | "canal" | "mirror" | "swing" | "slide"
        | "seesaw" | "hammock" | "platform" | "locker" | "motorcycle" | "bicycle" | "bike"
        | "scooter" | "truck" | "van" | "jeep" | "taxi" | "tractor" | "apartment" | "loft"
        | "attic" | "basement" | "cellar" => noun(Scene),
        "blurred" | "blurry" | "out-of-focus" | "defocused" => noun(Scene),
        "sunny" | "rainy" | "snowy" | "misty" | "foggy" | "cloudy" | "overcast" | "stormy"
        | "crowded" | "outdoor" | "indoor" | "urban" | "rural" | "sunlit" | "moonlit"
        | "candlelit" | "scenic" | "wooded" | "tropical" | "autumnal" | "wintry"
        | "overlooking" => adj(Scene),
        // Verbs inside a noun phrase (`a smiling nurse`) are weak cues; nouns spelled like
        // verbs (`the stands`, `waves`) were matched above.
        _ if GENERAL_VERBS.contains(&w) => adj(GeneralVerb),
        _ if BODY_VERBS.contains(&w) || WEAR_VERBS.contains(&w) => adj(BodyVerb),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(caption: &str) -> (String, String, String) {
        let s = split(caption);
        (s.general, s.background, s.body)
    }

    fn check(caption: &str, general: &str, background: &str, body: &str) {
        assert_eq!(
            parts(caption),
            (
                general.to_string(),
                background.to_string(),
                body.to_string()
            ),
            "caption: {caption}"
        );
    }

    #[test]
    fn subject_stays_general_and_clothes_go_to_body() {
        check(
            "a man with short brown hair wearing a blue shirt",
            "a man with short brown hair",
            "",
            "wearing a blue shirt",
        );
    }

    #[test]
    fn verb_and_place_phrase_are_split() {
        check(
            "a woman standing in a park",
            "a woman",
            "in a park",
            "standing",
        );
        check(
            "He is standing in a kitchen.",
            "",
            "in a kitchen",
            "He is standing",
        );
    }

    #[test]
    fn in_plus_garment_is_body_in_plus_place_is_background_in_plus_age_is_general() {
        check("a woman in a red dress", "a woman", "", "in a red dress");
        check("a woman in a library", "a woman", "in a library", "");
        check("a man in his 30s", "a man in his 30s", "", "");
    }

    #[test]
    fn colour_and_hair_idioms_are_not_boundaries() {
        check(
            "black and white photo of a man",
            "black and white photo of a man",
            "",
            "",
        );
        check(
            "a man with salt and pepper hair",
            "a man with salt and pepper hair",
            "",
            "",
        );
        check(
            "wearing a white shirt and blue jeans",
            "",
            "",
            "wearing a white shirt and blue jeans",
        );
    }

    #[test]
    fn joiner_is_dropped_only_when_its_neighbour_went_elsewhere() {
        check(
            "a man with a beard and a denim jacket",
            "a man with a beard",
            "",
            "a denim jacket",
        );
        check(
            "a woman with short hair and a warm smile",
            "a woman with short hair and a warm smile",
            "",
            "",
        );
        check(
            "a girl reading while sitting on a sofa",
            "a girl",
            "on a sofa",
            "reading while sitting",
        );
        check(
            "a boy smiling while sitting on a sofa",
            "a boy smiling",
            "on a sofa",
            "sitting",
        );
    }

    #[test]
    fn gerund_after_an_article_is_a_noun() {
        check(
            "an old man holding a walking cane",
            "an old man",
            "",
            "holding a walking cane",
        );
        check(
            "a woman wearing reading glasses",
            "a woman wearing reading glasses",
            "",
            "",
        );
    }

    #[test]
    fn face_accessories_are_general_headwear_is_body() {
        check(
            "a man wearing sunglasses",
            "a man wearing sunglasses",
            "",
            "",
        );
        check(
            "a woman with gold earrings",
            "a woman with gold earrings",
            "",
            "",
        );
        check(
            "a man wearing a baseball cap",
            "a man",
            "",
            "wearing a baseball cap",
        );
        check(
            "a girl in a knitted beanie",
            "a girl",
            "",
            "in a knitted beanie",
        );
        check(
            "a man wearing glasses and a hat",
            "a man wearing glasses",
            "",
            "a hat",
        );
    }

    #[test]
    fn body_parts_in_a_phrase_follow_their_verb() {
        check(
            "a girl holding a kitten in her arms",
            "a girl",
            "",
            "holding a kitten in her arms",
        );
        check(
            "a woman, hands clasped in front of her chest",
            "a woman",
            "",
            "hands clasped in front of her chest",
        );
        check(
            "a man in front of a brick wall",
            "a man",
            "in front of a brick wall",
            "",
        );
    }

    #[test]
    fn pronoun_sentences_keep_their_subject() {
        check(
            "She is wearing a coat. Behind her is a lake.",
            "",
            "Behind her is a lake",
            "She is wearing a coat",
        );
    }

    #[test]
    fn framing_with_body_word_is_general() {
        check(
            "upper body shot of a man",
            "upper body shot of a man",
            "",
            "",
        );
        check(
            "full body portrait of a woman",
            "full body portrait of a woman",
            "",
            "",
        );
    }

    #[test]
    fn evening_gown_is_a_garment() {
        check(
            "a woman in an evening gown",
            "a woman",
            "",
            "in an evening gown",
        );
        check(
            "a woman at a party in the evening",
            "a woman",
            "at a party in the evening",
            "",
        );
    }

    #[test]
    fn place_names_in_phrases_are_background() {
        check(
            "a man walking along the Thames in London",
            "a man",
            "along the Thames in London",
            "walking",
        );
    }

    #[test]
    fn motion_verb_with_place_object() {
        check(
            "a woman crossing a busy street",
            "a woman",
            "a busy street",
            "crossing",
        );
        check("a man walking a dog", "a man", "", "walking a dog");
        check("a boy walking to school", "a boy", "", "walking to school");
    }

    #[test]
    fn unknown_gerunds_are_actions_unless_they_describe_the_scene() {
        check(
            "a boy splashing in a pool",
            "a boy",
            "in a pool",
            "splashing",
        );
        check(
            "a kid, blowing bubbles in a garden",
            "a kid",
            "in a garden",
            "blowing bubbles",
        );
        check(
            "a girl, building a snowman",
            "a girl",
            "",
            "building a snowman",
        );
        check(
            "a man, cheering crowd behind him",
            "a man",
            "cheering crowd behind him",
            "",
        );
        check(
            "a woman, rolling green hills",
            "a woman",
            "rolling green hills",
            "",
        );
        check(
            "a woman on a balcony overlooking the sea",
            "a woman",
            "on a balcony overlooking the sea",
            "",
        );
        check(
            "a woman with her long hair blowing in the wind",
            "a woman with her long hair blowing in the wind",
            "",
            "",
        );
    }

    #[test]
    fn and_between_different_kinds_of_thing() {
        check(
            "a man with a goatee and tattoos",
            "a man with a goatee",
            "",
            "tattoos",
        );
        check(
            "a man with messy hair and stubble",
            "a man with messy hair and stubble",
            "",
            "",
        );
        check(
            "a man with thinning hair and reading glasses",
            "a man with thinning hair and reading glasses",
            "",
            "",
        );
    }

    #[test]
    fn closed_compounds_and_false_friends() {
        check("a woman in a sundress", "a woman", "", "in a sundress");
        check("a man in a cornfield", "a man", "in a cornfield", "");
        check(
            "He appears to be in an office",
            "",
            "He appears to be in an office",
            "",
        );
        check(
            "a man in his childhood home",
            "a man",
            "in his childhood home",
            "",
        );
    }

    #[test]
    fn spatial_prepositions_and_possessed_objects() {
        check(
            "a man leaning against a lamppost",
            "a man",
            "against a lamppost",
            "leaning",
        );
        check("a girl along the canal", "a girl", "along the canal", "");
        check(
            "a boy looking down at his phone",
            "a boy looking down",
            "",
            "at his phone",
        );
        check(
            "a man with his arms behind his back",
            "a man",
            "",
            "with his arms behind his back",
        );
        check(
            "a man, flour on his hands",
            "a man",
            "",
            "flour on his hands",
        );
        check("a girl, with her mother", "a girl, with her mother", "", "");
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(split(""), SplitPrompt::default());
        assert_eq!(split("  ,, ; . "), SplitPrompt::default());
        check("portrait", "portrait", "", "");
        check("and", "and", "", "");
        check("a man, ", "a man", "", "");
        check("Ein Mann mit Brille", "Ein Mann mit Brille", "", "");
        check(
            "a 30-year-old man — smiling",
            "a 30-year-old man — smiling",
            "",
            "",
        );
        check(
            "a man counted 1,000 times",
            "a man counted 1,000 times",
            "",
            "",
        );
    }

    #[test]
    fn trailing_punctuation_is_not_duplicated() {
        check(
            "A man smiling. He wears a red coat!",
            "A man smiling",
            "",
            "He wears a red coat",
        );
        check("a man; in a park.", "a man", "in a park", "");
    }

    #[test]
    fn deterministic() {
        let c = "a woman with a nose ring, wearing a jacket, standing on a bridge at night";
        assert_eq!(split(c), split(c));
    }

    #[test]
    fn serde_round_trip() {
        let s = split("a man in a park wearing a hat");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SplitPrompt>(&json).unwrap(), s);
    }
}
