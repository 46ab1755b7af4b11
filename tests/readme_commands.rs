//! Every `idforge` command the README shows is parsed by the real command line, so that the
//! README cannot drift from the CLI again (it once told users `clip score --model <checkpoint>`
//! while the checkpoint flag is `--weights`).
//!
//! Taken from README.md: the lines of its shell code blocks that start with `idforge` (with
//! their `\` continuations, without `#` comments), and its inline code spans that start with
//! `idforge`. Placeholders (`<name>`, `<checkpoint or folder>`) become a fixture word and
//! `a|b` alternatives become one command each. A command is checked with `IDFORGE_CHECK_ARGS`
//! set: the binary parses it exactly as for a real run — unknown subcommands or flags, missing
//! required flags, bad values — and exits without running it, so no file needs to exist. A
//! span that names only a subcommand (`idforge generate`), and the lines of the command list,
//! are checked to name a real subcommand.

mod common;

use common::{idforge, text};

/// What the README shows and how much of it can be checked.
#[derive(Debug, Clone, PartialEq)]
struct Example {
    /// 1-based line of README.md where it starts.
    line: usize,
    /// The arguments after `idforge`.
    args: Vec<String>,
    /// A whole command line; otherwise only its first word (the subcommand) is checked.
    full: bool,
}

/// The word that stands for a placeholder's file, name or value.
const FIXTURE: &str = "fixture";

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is readable")
}

/// Splits a command line as a POSIX shell would for these examples: whitespace, single and
/// double quotes, backslash escapes; a word starting with `#` begins a comment and a lone `|`
/// a pipe, where the command ends.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        q => word.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    match words.iter().position(|w| w == "|") {
        Some(pipe) => words[..pipe].to_vec(),
        None => words,
    }
}

/// Replaces every `<placeholder>` (which may hold spaces) with [`FIXTURE`], and a trailing
/// `...` (one or more) with nothing.
fn fill_placeholders(command: &str) -> String {
    let mut out = String::new();
    let mut rest = command;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(FIXTURE);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out.replace("...", "").replace('…', "")
}

/// One command per alternative of the first argument written `a|b` (outside quotes, as the
/// README writes a choice of values).
fn expand_alternatives(args: Vec<String>) -> Vec<Vec<String>> {
    match args.iter().position(|a| a.contains('|')) {
        None => vec![args],
        Some(i) => args[i]
            .split('|')
            .flat_map(|alt| {
                let mut one = args.clone();
                one[i] = alt.to_string();
                expand_alternatives(one)
            })
            .collect(),
    }
}

/// The examples of a README's text (see the module docs).
fn examples(readme: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut push = |line: usize, command: &str, full: bool| {
        let words = shell_words(&fill_placeholders(command));
        if words.first().map(String::as_str) != Some("idforge") {
            return;
        }
        let args: Vec<String> = words[1..].to_vec();
        let Some(sub) = args.first() else {
            return;
        };
        if sub.starts_with(FIXTURE) {
            // `idforge <command> --help`: the subcommand itself is the placeholder.
            return;
        }
        let full = full && args.len() > 1;
        for args in expand_alternatives(args) {
            out.push(Example { line, args, full });
        }
    };
    let mut fence: Option<String> = None;
    let mut prose = String::new();
    let mut prose_lines = Vec::new();
    let lines: Vec<&str> = readme.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(info.trim().to_string()),
            };
            prose.push('\n');
            prose_lines.push(i + 1);
            i += 1;
            continue;
        }
        match fence.as_deref() {
            Some("sh" | "bash" | "shell" | "console") => {
                let start = i + 1;
                let mut command = trimmed.trim_start_matches("$ ").to_string();
                while command.trim_end().ends_with('\\') && i + 1 < lines.len() {
                    let cut = command.trim_end().len() - 1;
                    command.truncate(cut);
                    i += 1;
                    command.push(' ');
                    command.push_str(lines[i].trim());
                }
                push(start, &command, true);
            }
            Some("") => push(i + 1, trimmed, false),
            Some(_) => {}
            None => {
                // Inline spans may wrap onto the next line: keep the prose as one text, each
                // character's line remembered.
                for _ in line.chars() {
                    prose_lines.push(i + 1);
                }
                prose.push_str(line);
                prose.push('\n');
                prose_lines.push(i + 1);
            }
        }
        i += 1;
    }
    let chars: Vec<char> = prose.chars().collect();
    let mut k = 0;
    while k < chars.len() {
        if chars[k] == '`' {
            let Some(len) = chars[k + 1..].iter().position(|&c| c == '`') else {
                break;
            };
            let span: String = chars[k + 1..k + 1 + len].iter().collect();
            push(prose_lines[k], &span.replace('\n', " "), true);
            k += len + 2;
        } else {
            k += 1;
        }
    }
    out
}

/// Why `example` does not parse, or `None` when it does.
fn check(example: &Example) -> Option<String> {
    let out = if example.full {
        idforge()
            .env("IDFORGE_CHECK_ARGS", "1")
            .args(&example.args)
            .output()
    } else {
        idforge()
            .args([example.args[0].as_str(), "--help"])
            .output()
    }
    .expect("the idforge binary starts");
    (!out.status.success()).then(|| {
        format!(
            "README.md:{}: `idforge {}`{}\n{}",
            example.line,
            example.args.join(" "),
            if example.full {
                ""
            } else {
                " (subcommand only)"
            },
            text(&out)
        )
    })
}

#[test]
fn every_readme_command_parses() {
    let examples = examples(&readme());
    let full = examples.iter().filter(|e| e.full).count();
    assert!(
        full >= 20,
        "only {full} whole commands found in README.md: is the extraction broken? {examples:#?}"
    );
    let failures: Vec<String> = examples.iter().filter_map(check).collect();
    assert!(
        failures.is_empty(),
        "{} of {} README commands do not parse:\n\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n")
    );
}

#[test]
fn extraction_finds_blocks_continuations_spans_and_alternatives() {
    let md = "Intro `idforge show runs/<name> --rows 2` and `idforge generate`.\n\
              ```sh\n\
              idforge bench score runs/b --clip clip/ \\\n    --dino \"my dino/\"   # comment\n\
              make demo\n\
              ```\n\
              ```\n\
              idforge device   show the backend\n\
              ```\n\
              Then `idforge bench baseline a|b` and `idforge <command> --help`, `idforge: noai`.\n";
    let got = examples(md);
    let args = |e: &Example| e.args.join(" ");
    assert_eq!(
        got.iter()
            .map(|e| (e.line, args(e), e.full))
            .collect::<Vec<_>>(),
        [
            (
                3,
                "bench score runs/b --clip clip/ --dino my dino/".to_string(),
                true
            ),
            (8, "device show the backend".to_string(), false),
            (1, "show runs/fixture --rows 2".to_string(), true),
            (1, "generate".to_string(), false),
            (10, "bench baseline a".to_string(), true),
            (10, "bench baseline b".to_string(), true),
        ]
    );
}

#[test]
fn a_flag_the_cli_does_not_have_is_reported() {
    // The drift this test exists for: `--model` is the shape preset, the checkpoint is
    // `--weights` (required), so the old README line must not parse.
    let old = "`idforge clip score --model <checkpoint.safetensors or HF folder> --image a.jpg \
               --text \"a man\nimg in a park\"`";
    let found = examples(old);
    assert_eq!(found.len(), 1, "{found:?}");
    let why = check(&found[0]).expect("the old README line is refused");
    assert!(why.contains("--weights"), "{why}");
    let unknown = Example {
        line: 1,
        args: ["show", "runs/x", "--no-such-flag"]
            .map(String::from)
            .to_vec(),
        full: true,
    };
    let why = check(&unknown).expect("an unknown flag is refused");
    assert!(why.contains("--no-such-flag"), "{why}");
    let fixed = examples(&old.replace("--model", "--weights"));
    assert_eq!(check(&fixed[0]), None);
}
