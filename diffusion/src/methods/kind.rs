//! What an adapter file is, from its keys alone, and which files form one method.

use std::path::{Path, PathBuf};

use idforge_models::WeightStore;

use super::error::{MethodError, ResultExt, invalid};
use crate::adapters::ip_adapter::ProjectionSpec;
use crate::adapters::photomaker::Version;
use crate::adapters::split_prompt;

/// What an adapter file is, from its keys alone (headers only, before anything loads).
#[derive(Debug, Clone)]
pub enum AdapterKind {
    /// An IP-Adapter-family file and its projection's shape.
    IpAdapter(ProjectionSpec),
    /// A PhotoMaker file.
    PhotoMaker(Version),
    /// The split-prompt adapter.
    SplitPrompt,
}

impl AdapterKind {
    /// Reads the kind of `path` from its tensor names.
    pub fn detect(path: &Path) -> Result<Self, MethodError> {
        let store =
            WeightStore::open(path).ctx(|| format!("reading --adapter {}", path.display()))?;
        let has = |prefix: &str| store.names().any(|n| n.starts_with(prefix));
        if has("image_proj.") {
            let spec = ProjectionSpec::detect(&store, "image_proj.")
                .ctx(|| format!("--adapter {}", path.display()))?;
            Ok(Self::IpAdapter(spec))
        } else if has("id_encoder.") {
            Ok(Self::PhotoMaker(if has("id_encoder.qformer_perceiver.") {
                Version::V2
            } else {
                Version::V1
            }))
        } else if has(split_prompt::PREFIX) || has(split_prompt::PERSONGEN_PREFIX) {
            Ok(Self::SplitPrompt)
        } else {
            let sample: Vec<&str> = store.names().take(3).collect();
            invalid!(
                "--adapter {}: not an adapter idforge knows (IP-Adapter files hold \
                 `image_proj.*`, PhotoMaker files `id_encoder.*`, the split-prompt adapter \
                 `split_prompt.*` or persongen's `adapter_modules.*`; this one holds {})",
                path.display(),
                if sample.is_empty() {
                    "no tensors".to_string()
                } else {
                    sample.join(", ")
                }
            )
        }
    }

    /// The kind's name as printed and recorded (`ip-adapter-faceid`, `photomaker-v2`, …).
    pub fn name(&self) -> String {
        match self {
            Self::IpAdapter(spec) => spec.kind().to_string(),
            Self::PhotoMaker(v) => format!("photomaker-{}", v.name()),
            Self::SplitPrompt => "split-prompt".to_string(),
        }
    }
}

/// The kinds of `adapters`, checked to form one method: none (text only), one file, or a
/// PhotoMaker file and a split-prompt file together (persongen's `ipmakerbgbody`).
pub fn adapter_kinds(adapters: &[PathBuf]) -> Result<Vec<(PathBuf, AdapterKind)>, MethodError> {
    let mut kinds = Vec::new();
    for path in adapters {
        kinds.push((path.clone(), AdapterKind::detect(path)?));
    }
    let count = |f: fn(&AdapterKind) -> bool| kinds.iter().filter(|(_, k)| f(k)).count();
    let ip = count(|k| matches!(k, AdapterKind::IpAdapter(_)));
    let pm = count(|k| matches!(k, AdapterKind::PhotoMaker(_)));
    let split = count(|k| matches!(k, AdapterKind::SplitPrompt));
    if ip > 1 || pm > 1 || split > 1 || (ip == 1 && pm == 1) {
        let names: Vec<String> = kinds.iter().map(|(_, k)| k.name()).collect();
        invalid!(
            "--adapter given {} times ({}): give one adapter, or a PhotoMaker file and a \
             split-prompt file together (persongen's ipmakerbgbody)",
            kinds.len(),
            names.join(", ")
        );
    }
    Ok(kinds)
}
