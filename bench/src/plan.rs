//! The generation jobs: every (identity, reference, prompt, seed) the protocol asks a method to
//! generate, with the prompt filled in and the file it must be saved as — what `idforge bench
//! plan` prints for external code to fill.

use serde::Serialize;

use crate::protocol::Protocol;
use crate::references::References;

/// One image a method must generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Reference set.
    pub set: String,
    /// Identity.
    pub identity: String,
    /// The identity's reference images, relative to the bench folder.
    pub references: Vec<String>,
    /// The class word in the prompt.
    pub class_word: String,
    /// Prompt id.
    pub prompt_id: String,
    /// Prompt category.
    pub category: String,
    /// The whole prompt as the method receives it (with the method's trigger, if any).
    pub prompt: String,
    /// `P_general` with the trigger.
    pub prompt_general: String,
    /// `P_bg`.
    pub prompt_background: String,
    /// `P_body`.
    pub prompt_body: String,
    /// The prompt without trigger (what CLIP-T compares with).
    pub prompt_clip: String,
    /// Seed.
    pub seed: u64,
    /// Where the image goes, relative to the method's folder:
    /// `<identity>/<prompt_id>/<seed>.png`.
    pub output: String,
}

/// The jobs in a stable order: set (protocol order), identity, prompt (file order), seed.
pub fn plan(protocol: &Protocol, refs: &References, trigger: Option<&str>) -> Vec<Job> {
    let mut jobs = Vec::new();
    for set in &protocol.sets {
        for identity in refs.of_set(&set.name) {
            for prompt in &protocol.prompts {
                let parts = prompt.parts(&identity.class_word, trigger);
                for &seed in &protocol.seeds {
                    jobs.push(Job {
                        set: set.name.clone(),
                        identity: identity.name.clone(),
                        references: identity.references.clone(),
                        class_word: identity.class_word.clone(),
                        prompt_id: prompt.id.clone(),
                        category: prompt.category.clone(),
                        prompt: parts.joined(),
                        prompt_general: parts.general.clone(),
                        prompt_background: parts.background.clone(),
                        prompt_body: parts.body.clone(),
                        prompt_clip: prompt.text_without_trigger(&identity.class_word),
                        seed,
                        output: output_path(&identity.name, &prompt.id, seed),
                    });
                }
            }
        }
    }
    jobs
}

/// `<identity>/<prompt_id>/<seed>.png`.
pub fn output_path(identity: &str, prompt_id: &str, seed: u64) -> String {
    format!("{identity}/{prompt_id}/{seed}.png")
}

/// Tab-separated, one header line: for scripts (`cut`, pandas `read_csv(sep="\t")`).
pub fn to_tsv(jobs: &[Job]) -> String {
    let mut out = String::from(
        "set\tidentity\treferences\tclass_word\tprompt_id\tcategory\tseed\toutput\tprompt\t\
         prompt_general\tprompt_background\tprompt_body\n",
    );
    for j in jobs {
        let clean = |s: &str| s.replace(['\t', '\n'], " ");
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            j.set,
            j.identity,
            j.references.join(","),
            clean(&j.class_word),
            j.prompt_id,
            j.category,
            j.seed,
            j.output,
            clean(&j.prompt),
            clean(&j.prompt_general),
            clean(&j.prompt_background),
            clean(&j.prompt_body),
        ));
    }
    out
}

/// An aligned text table for people, prompts cut to `width` characters.
pub fn to_table(jobs: &[Job], width: usize) -> String {
    let header = ["set", "identity", "prompt_id", "seed", "output", "prompt"];
    let rows: Vec<[String; 6]> = jobs
        .iter()
        .map(|j| {
            let prompt = if j.prompt.chars().count() > width {
                let cut: String = j.prompt.chars().take(width.saturating_sub(1)).collect();
                format!("{cut}…")
            } else {
                j.prompt.clone()
            };
            [
                j.set.clone(),
                j.identity.clone(),
                j.prompt_id.clone(),
                j.seed.to_string(),
                j.output.clone(),
                prompt,
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(String::from));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

/// The folder layout a method's code must write, for the plan's footer.
pub fn layout_help(protocol: &Protocol, jobs: &[Job]) -> String {
    let identities: std::collections::BTreeSet<&str> =
        jobs.iter().map(|j| j.identity.as_str()).collect();
    format!(
        "Layout of a method folder (then: idforge bench import <folder> --bench <bench>):\n\
         \n\
         <method>/method.toml                      name, base_model, link, trigger, [settings], [cost]\n\
         <method>/<identity>/<prompt_id>/<seed>.png\n\
         \n\
         {} images: {} identities × {} prompts × {} seeds, from up to {} reference image(s) \
         per identity.\n",
        jobs.len(),
        identities.len(),
        protocol.prompts.len(),
        protocol.seeds.len(),
        protocol.references_per_identity,
    )
}
