//! The `[curate]` table of a recipe. Every field has a default (PhotoMaker's recipe where it
//! has one); CLI flags override them.

use std::path::PathBuf;

use idforge_core::limits::{Amount, Factor, Fraction, Pixels, Shards, Side, Similarity, Threads};
use serde::{Deserialize, Serialize};

/// Settings of the curate stage, one sub-table per filter, in the order the filters run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CurateSettings {
    /// Number of shards the `ok` images are split into (each resumable on its own).
    pub shards: Shards,
    /// Worker threads for images; 0 means one per core.
    pub threads: Threads,
    /// Folder with the face-api weights; the asset cache by default.
    pub weights: Option<PathBuf>,
    /// Filter 1.
    pub resolution: ResolutionSettings,
    /// Filters 2 and 3.
    pub faces: FaceSettings,
    /// How faces become identity embeddings.
    pub embedder: EmbedderSettings,
    /// Filter 4, and identity discovery for unlabeled images.
    pub identity: IdentitySettings,
    /// Filter 5.
    pub duplicates: DuplicateSettings,
    /// Training crops and reference crops.
    pub crop: CropSettings,
}

impl Default for CurateSettings {
    fn default() -> Self {
        CurateSettings {
            shards: Shards::lit(1),
            threads: Threads::lit(0),
            weights: None,
            resolution: Default::default(),
            faces: Default::default(),
            embedder: Default::default(),
            identity: Default::default(),
            duplicates: Default::default(),
            crop: Default::default(),
        }
    }
}

impl CurateSettings {
    /// Checks values a typo could make meaningless, naming the key to fix.
    pub fn validate(&self) -> Result<(), String> {
        let c = &self.crop;
        if c.face_share.get() <= 0.0 {
            return Err(format!(
                "[curate.crop] face_share = {} must be above 0",
                c.face_share
            ));
        }
        if !matches!(c.resolution, 64..=4096) {
            return Err(format!(
                "[curate.crop] resolution = {} must be between 64 and 4096",
                c.resolution
            ));
        }
        if !(1..=100).contains(&c.jpeg_quality) {
            return Err(format!(
                "[curate.crop] jpeg_quality = {} must be between 1 and 100",
                c.jpeg_quality
            ));
        }
        if self.identity.k.get() <= 0.0 {
            return Err("[curate.identity] k must be positive".into());
        }
        if self.faces.detector_floor > self.faces.min_score {
            return Err(format!(
                "[curate.faces] detector_floor = {} is above min_score = {}: faces between \
                 them would be neither recorded nor kept",
                self.faces.detector_floor, self.faces.min_score
            ));
        }
        if self.embedder.kind == EmbedderKind::Arcface && self.embedder.arcface_onnx.is_none() {
            return Err(
                "[curate.embedder] kind = \"arcface\" needs arcface_onnx = \"<path to the \
                        model's .onnx>\" (insightface's w600k_r50.onnx, glintr100.onnx, ...)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Filter 1: the image's resolution.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolutionSettings {
    /// Smallest short side in pixels (after EXIF orientation).
    pub min_short_side: Side,
}

impl Default for ResolutionSettings {
    fn default() -> Self {
        ResolutionSettings {
            min_short_side: Side::lit(512),
        }
    }
}

/// Which face-api detector finds the faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// SSD MobileNetV1: the accurate one.
    Ssd,
    /// Tiny Face Detector: faster, misses small and profile faces.
    Tiny,
}

/// Filters 2 and 3: the detector's score and the face's size.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaceSettings {
    /// The detector.
    pub detector: DetectorKind,
    /// Faces scoring at least this are kept.
    pub min_score: Fraction,
    /// Faces scoring between this and `min_score` are recorded as `low_score`, so that the
    /// report shows what a lower threshold would add; below it they are not recorded.
    pub detector_floor: Fraction,
    /// Most faces per image.
    pub max_faces: Amount,
    /// Smallest face box side in source pixels: both width and height must reach it.
    pub min_face_px: Pixels,
}

impl Default for FaceSettings {
    fn default() -> Self {
        FaceSettings {
            detector: DetectorKind::Ssd,
            min_score: Fraction::lit(0.5),
            detector_floor: Fraction::lit(0.3),
            max_faces: Amount::lit(100),
            min_face_px: Pixels::lit(256.0),
        }
    }
}

/// Which network turns a face into its identity embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedderKind {
    /// face-api's 128-d descriptor (dlib's ResNet-34): ships with the package, no download.
    FaceApi,
    /// An insightface ArcFace model (IResNet ONNX) on the 112×112 `norm_crop`: what
    /// PhotoMaker and the literature use; bring your own weights.
    Arcface,
}

/// The embedder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderSettings {
    /// `face_api` (default) or `arcface`.
    pub kind: EmbedderKind,
    /// The ArcFace ONNX file, for `kind = "arcface"`.
    pub arcface_onnx: Option<PathBuf>,
}

impl Default for EmbedderSettings {
    fn default() -> Self {
        EmbedderSettings {
            kind: EmbedderKind::FaceApi,
            arcface_onnx: None,
        }
    }
}

/// How images are grouped into identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityMode {
    /// Labeled images use their label; unlabeled ones are clustered.
    Auto,
    /// Only labels; unlabeled images each form their own group.
    Labels,
    /// Ignore labels and cluster every face.
    Discover,
}

/// Filter 4: identity verification, and identity discovery.
///
/// What is compared: each candidate face's `id_score`, the mean cosine similarity of its
/// L2-normalised embedding to the chosen faces of the group's other images (PhotoMaker's sum
/// of pairwise similarities divided by n − 1, so that it reads the same in any group size).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySettings {
    /// How groups are formed.
    pub mode: IdentityMode,
    /// The relative rule: a face is an outlier when its `id_score` is more than `k` robust
    /// standard deviations below the group's median.
    pub k: Factor,
    /// Lower bound of the robust σ̂, so that a group of near-identical photos does not make
    /// every small difference an outlier.
    pub sigma_floor: Fraction,
    /// The absolute rule: `id_score` below this is rejected. Default per embedder: 0.90 for
    /// face-api's compressed cosine scale, 0.30 for ArcFace.
    pub floor: Option<Similarity>,
    /// An identity that keeps fewer images than this is flagged as a whole (one image cannot
    /// be both the reference and the target of a training pair).
    pub min_images: Amount,
    /// Discovery: two clusters merge while their average-linkage cosine similarity is at least
    /// this. Default per embedder: 0.95 for face-api (on the package's sample photographs its
    /// descriptor puts different people up to 0.953 apart and mirrored copies of one face at
    /// 0.959 or more: a narrow gap, use ArcFace on real data), 0.45 for ArcFace.
    pub discover_threshold: Option<Similarity>,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        IdentitySettings {
            mode: IdentityMode::Auto,
            k: Factor::lit(8.0),
            sigma_floor: Fraction::lit(0.005),
            floor: None,
            min_images: Amount::lit(2),
            discover_threshold: None,
        }
    }
}

impl IdentitySettings {
    /// The absolute floor in force for `embedder`.
    pub fn floor_for(&self, embedder: EmbedderKind) -> f32 {
        self.floor.map(Similarity::f32).unwrap_or(match embedder {
            EmbedderKind::FaceApi => 0.90,
            EmbedderKind::Arcface => 0.30,
        })
    }

    /// The discovery threshold in force for `embedder`.
    pub fn discover_threshold_for(&self, embedder: EmbedderKind) -> f32 {
        self.discover_threshold
            .map(Similarity::f32)
            .unwrap_or(match embedder {
                EmbedderKind::FaceApi => 0.95,
                EmbedderKind::Arcface => 0.45,
            })
    }
}

/// Filter 5: near-identical faces left after ingest (crops of the same photograph).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DuplicateSettings {
    /// Hamming distance between the reference crops' pHashes at or below which two faces of
    /// one identity are the same photograph; negative turns the filter off.
    pub phash_threshold: i32,
}

impl Default for DuplicateSettings {
    fn default() -> Self {
        DuplicateSettings { phash_threshold: 6 }
    }
}

/// Training crops and reference crops.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CropSettings {
    /// Share of the square crop's area the face box covers (PhotoMaker: at least 10 %).
    pub face_share: Fraction,
    /// Side of the saved crop in pixels (512, or 1024 for SDXL-class models).
    pub resolution: u32,
    /// The reference crop is the face box enlarged by this fraction of its size (0.2 = 20 %).
    pub ref_margin: Factor,
    /// JPEG quality of the saved crops.
    pub jpeg_quality: u8,
}

impl Default for CropSettings {
    fn default() -> Self {
        CropSettings {
            face_share: Fraction::lit(0.10),
            resolution: 512,
            ref_margin: Factor::lit(0.2),
            jpeg_quality: 95,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idforge_core::recipe::Recipe;
    use std::path::Path;

    fn recipe(name: &str) -> Recipe {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../datasets/recipes")
            .join(name);
        Recipe::load(&path).unwrap()
    }

    #[test]
    fn the_example_recipe_lists_every_default() {
        let s: CurateSettings = recipe("example-urls.toml").stage("curate").unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::to_value(CurateSettings::default()).unwrap()
        );
        s.validate().unwrap();
    }

    #[test]
    fn the_demo_recipe_parses_and_validates() {
        let s: CurateSettings = recipe("demo.toml").stage("curate").unwrap();
        assert_eq!(s.faces.min_face_px.get(), 150.0);
        s.validate().unwrap();
    }

    #[test]
    fn meaningless_values_name_the_key_to_fix() {
        let mut s = CurateSettings::default();
        s.crop.face_share = Fraction::lit(0.0);
        assert!(s.validate().unwrap_err().contains("face_share"));
        let mut s = CurateSettings::default();
        s.embedder.kind = EmbedderKind::Arcface;
        assert!(s.validate().unwrap_err().contains("arcface_onnx"));
        let mut s = CurateSettings::default();
        s.faces.detector_floor = Fraction::lit(0.6);
        assert!(s.validate().unwrap_err().contains("detector_floor"));
    }
}
