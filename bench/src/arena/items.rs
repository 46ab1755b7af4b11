//! The arena's items: every (set, identity, prompt, seed) of the protocol for which at least two
//! methods have an image, with what each question shows beside the pair (the reference image,
//! the prompt without trigger).

use std::collections::{BTreeMap, HashMap};

use crate::baselines::COPY_REFERENCE;
use crate::generations::find_generation;
use crate::layout::BenchDir;
use crate::plan::plan;
use crate::references::References;

use super::ArenaError;

/// One (set, identity, prompt, seed) and the images of the methods that generated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaItem {
    /// Reference set.
    pub set: String,
    /// Identity.
    pub identity: String,
    /// Protocol prompt id.
    pub prompt_id: String,
    /// Prompt category.
    pub category: String,
    /// Seed.
    pub seed: u64,
    /// The prompt as the adherence question shows it: filled in, without the trigger word,
    /// which means nothing to a person.
    pub prompt: String,
    /// The identity's reference images, relative to the bench folder (the fidelity question
    /// shows the first).
    pub references: Vec<String>,
    /// Method name → its image, relative to the bench folder; at least two entries.
    pub images: BTreeMap<String, String>,
}

impl ArenaItem {
    /// The key that names the item in the database and the votes table.
    pub fn key(&self) -> ItemKey {
        ItemKey {
            set: self.set.clone(),
            identity: self.identity.clone(),
            prompt_id: self.prompt_id.clone(),
            seed: self.seed,
        }
    }
}

/// An item's identity across restarts (indices change when a method is imported).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey {
    /// Reference set.
    pub set: String,
    /// Identity.
    pub identity: String,
    /// Protocol prompt id.
    pub prompt_id: String,
    /// Seed.
    pub seed: u64,
}

/// Every item of a bench folder, in protocol order.
#[derive(Debug, Clone)]
pub struct ArenaItems {
    /// The bench folder.
    pub bench: BenchDir,
    /// The contestants, sorted by name.
    pub methods: Vec<String>,
    /// The items.
    pub items: Vec<ArenaItem>,
    /// Jobs of the protocol left out because fewer than two methods had an image.
    pub skipped: usize,
    index: HashMap<ItemKey, usize>,
}

impl ArenaItems {
    /// Reads the protocol, references and imported generations of `bench`. `copy-reference`
    /// (the reference itself) is a contestant only with `include_copy_reference`.
    pub fn load(bench: &BenchDir, include_copy_reference: bool) -> Result<Self, ArenaError> {
        let protocol = bench.protocol()?;
        let refs = References::scan(bench, &protocol)?;
        let mut methods = bench.imported_methods()?;
        if include_copy_reference {
            methods.push(COPY_REFERENCE.to_string());
            methods.sort();
        }
        let need_two = || {
            crate::error::BenchError::invalid(
                bench.generations_dir(),
                format!(
                    "the arena compares two methods or more, and {} {} images here: import \
                     methods with `idforge bench import` (copy-reference is left out unless \
                     --include-copy-reference)",
                    methods.len(),
                    if methods.len() == 1 { "has" } else { "have" },
                ),
            )
        };
        if methods.len() < 2 {
            return Err(need_two().into());
        }
        let mut items = Vec::new();
        let mut skipped = 0;
        for job in plan(&protocol, &refs, None) {
            let mut images = BTreeMap::new();
            for m in &methods {
                let file = if m == COPY_REFERENCE {
                    job.references.first().map(|r| bench.root.join(r))
                } else {
                    find_generation(
                        &bench.method_dir(m),
                        &job.identity,
                        &job.prompt_id,
                        job.seed,
                    )
                };
                if let Some(f) = file {
                    images.insert(m.clone(), bench.relative(&f));
                }
            }
            if images.len() < 2 {
                skipped += 1;
                continue;
            }
            items.push(ArenaItem {
                set: job.set,
                identity: job.identity,
                prompt_id: job.prompt_id,
                category: job.category,
                seed: job.seed,
                prompt: job.prompt_clip,
                references: job.references,
                images,
            });
        }
        if items.is_empty() {
            return Err(need_two().into());
        }
        Ok(Self::new(bench.clone(), methods, items, skipped))
    }

    /// Items built elsewhere (tests, other layouts).
    pub fn new(
        bench: BenchDir,
        methods: Vec<String>,
        items: Vec<ArenaItem>,
        skipped: usize,
    ) -> Self {
        let index = items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.key(), i))
            .collect();
        ArenaItems {
            bench,
            methods,
            items,
            skipped,
            index,
        }
    }

    /// The index of the item named `key`, if the bench folder still has it.
    pub fn find(&self, key: &ItemKey) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// How many (item, method pair) comparisons exist per question.
    pub fn comparisons(&self) -> usize {
        self.items
            .iter()
            .map(|it| it.images.len() * (it.images.len() - 1) / 2)
            .sum()
    }
}
