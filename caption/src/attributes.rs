//! The `attributes` captioner: a `P_general` without any server, from face-api's age / gender
//! and expression networks (run as face-api runs them, on the landmark-aligned box of the
//! source image) plus the head direction and framing measured from the face's landmarks and
//! box. Background and body are not described: they stay null, which the table distinguishes
//! from empty.
//!
//! The template is versioned ([`TEMPLATE_VERSION`]); the networks' numbers are kept in the `raw`
//! column as JSON, so captions can be re-templated without running the networks again.

use std::path::Path;

use burn::tensor::backend::Backend;
use serde_json::json;

use idforge_core::image_io::{DEFAULT_MAX_PIXELS, decode};
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_api::{EXPRESSION_LABELS, FaceAttributeNets, FaceAttributes, Gender};

use crate::captioner::{Failure, Outcome, Parts};
use crate::error::CaptionError;
use crate::stage::{Item, OfflineCaptioner};

/// Version of the template below; part of the `prompt_version` column.
pub const TEMPLATE_VERSION: &str = "attributes-v1";
/// Gender probability under which the class word is gender-neutral.
pub const MIN_GENDER_PROBABILITY: f32 = 0.7;
/// Expression probability under which no expression is named.
pub const MIN_EXPRESSION_PROBABILITY: f32 = 0.5;

/// face-api's attribute networks behind the [`OfflineCaptioner`] interface.
pub struct AttributesCaptioner<B: Backend> {
    nets: FaceAttributeNets<B>,
}

impl<B: Backend> AttributesCaptioner<B> {
    /// Loads the networks from face-api's `model/` folder.
    pub fn load(model_dir: &Path, device: &B::Device) -> Result<Self, CaptionError> {
        let nets = FaceAttributeNets::load(model_dir, device)
            .map_err(|e| CaptionError::Model(format!("{} ({e})", model_dir.display())))?;
        Ok(AttributesCaptioner { nets })
    }
}

/// What the template is made from, measured on one face.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The networks' outputs.
    pub attributes: FaceAttributes,
    /// Nose tip offset from the eyes' midpoint, in inter-ocular distances (negative: towards
    /// the image's left).
    pub yaw: f64,
    /// Face box area over image area.
    pub face_share: f64,
}

/// The class word the template uses for these attributes.
pub fn class_word(a: &FaceAttributes) -> &'static str {
    let child = a.age < 13.0;
    match (
        a.gender_probability >= MIN_GENDER_PROBABILITY,
        a.gender,
        child,
    ) {
        (true, Gender::Male, true) => "boy",
        (true, Gender::Male, false) => "man",
        (true, Gender::Female, true) => "girl",
        (true, Gender::Female, false) => "woman",
        (false, _, true) => "child",
        (false, _, false) => "person",
    }
}

/// `P_general` from the observations: subject with age, expression, head direction, framing.
pub fn template(o: &Observed) -> String {
    let a = &o.attributes;
    let word = class_word(a);
    let confident = a.gender_probability >= MIN_GENDER_PROBABILITY;
    let pronoun = match (confident, a.gender) {
        (true, Gender::Male) => "his",
        (true, Gender::Female) => "her",
        _ => "their",
    };
    let subject = if a.age < 13.0 {
        format!("a {word}")
    } else if a.age < 20.0 {
        match word {
            "person" => "a teenager".to_string(),
            w => format!("a teenage {w}"),
        }
    } else if a.age < 70.0 {
        let decade = ["twenties", "thirties", "forties", "fifties", "sixties"]
            [((a.age as usize) / 10).clamp(2, 6) - 2];
        format!("a {word} in {pronoun} {decade}")
    } else {
        format!("an elderly {word}")
    };
    let mut parts = vec![subject];
    let (label, p) = a.dominant_expression();
    if p >= MIN_EXPRESSION_PROBABILITY {
        parts.push(
            match label {
                "neutral" => "with a neutral expression",
                "happy" => "smiling",
                "sad" => "looking sad",
                "angry" => "looking angry",
                "fearful" => "looking fearful",
                "disgusted" => "looking disgusted",
                _ => "looking surprised",
            }
            .to_string(),
        );
    }
    parts.push(
        if o.yaw.abs() < 0.12 {
            "facing the camera"
        } else if o.yaw < 0.0 {
            "head turned towards the left of the frame"
        } else {
            "head turned towards the right of the frame"
        }
        .to_string(),
    );
    parts.push(
        if o.face_share >= 0.20 {
            "close-up photo"
        } else if o.face_share >= 0.05 {
            "head-and-shoulders portrait"
        } else if o.face_share >= 0.01 {
            "half-length shot"
        } else {
            "wide shot"
        }
        .to_string(),
    );
    parts.join(", ")
}

/// Head direction from the 68 points: nose tip (30) against the outer eye corners (36, 45).
pub fn yaw_of(points: &[(f64, f64)]) -> f64 {
    let (l, r, nose) = (points[36], points[45], points[30]);
    let mid = (l.0 + r.0) / 2.0;
    let dist = ((r.0 - l.0).powi(2) + (r.1 - l.1).powi(2)).sqrt().max(1e-6);
    (nose.0 - mid) / dist
}

impl<B: Backend> OfflineCaptioner for AttributesCaptioner<B>
where
    FaceAttributeNets<B>: Send + Sync,
{
    fn name(&self) -> &str {
        "attributes"
    }

    fn model(&self) -> String {
        "face-api-1.7.15".into()
    }

    fn version(&self) -> String {
        TEMPLATE_VERSION.into()
    }

    fn caption(&self, item: &Item, _crop: &[u8]) -> Result<Outcome, Failure> {
        let fail = |error: String| Failure {
            error,
            raw: vec![],
            attempts: 0,
        };
        let (Some(path), Some(lm), Some(bbox)) = (&item.source_path, &item.landmarks, item.bbox)
        else {
            return Err(fail(
                "the attributes captioner needs the source image, the face's landmarks and box \
                 (the faces table has no landmarks for this face, or the images table no store path)"
                    .into(),
            ));
        };
        let bytes = std::fs::read(path)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        let decoded = decode(&bytes, DEFAULT_MAX_PIXELS)
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let rgb = decoded.image.into_rgb8();
        let img = RgbView {
            width: rgb.width() as usize,
            height: rgb.height() as usize,
            data: rgb.as_raw(),
        };
        let points: Vec<(f64, f64)> = lm
            .chunks_exact(2)
            .map(|p| (p[0] as f64, p[1] as f64))
            .collect();
        if points.len() != 68 {
            return Err(fail(format!(
                "{} landmarks where 68 are expected",
                points.len()
            )));
        }
        let attributes = self
            .nets
            .attributes(img, &points)
            .ok_or_else(|| fail("the face's aligned box is empty inside the image".into()))?;
        let area = ((bbox[2] - bbox[0]) * (bbox[3] - bbox[1])) as f64;
        let observed = Observed {
            yaw: yaw_of(&points),
            face_share: area / (img.width * img.height).max(1) as f64,
            attributes,
        };
        let general = template(&observed);
        let a = &observed.attributes;
        let raw = json!({
            "age": a.age,
            "gender": a.gender.as_str(),
            "gender_probability": a.gender_probability,
            "expressions": EXPRESSION_LABELS.iter().zip(a.expressions).map(|(l, p)| (l.to_string(), json!(p))).collect::<serde_json::Map<_, _>>(),
            "yaw": observed.yaw,
            "face_share": observed.face_share,
        });
        Ok(Outcome {
            caption: Some(general.clone()),
            parts: Some(Parts {
                general,
                background: None,
                body: None,
            }),
            raw: vec![raw.to_string()],
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idforge_models::face_api::PixelRect;

    /// Expressions in face-api's order: neutral, happy, sad, angry, fearful, disgusted, surprised.
    fn attrs(age: f32, gender: Gender, p: f32, expressions: [f32; 7]) -> FaceAttributes {
        FaceAttributes {
            age,
            gender,
            gender_probability: p,
            expressions,
            crop: PixelRect {
                x: 0,
                y: 0,
                width: 1,
                height: 1,
            },
        }
    }

    #[test]
    fn the_template_names_age_gender_expression_pose_and_framing() {
        let o = Observed {
            attributes: attrs(
                34.2,
                Gender::Female,
                0.93,
                [0.2, 0.8, 0.0, 0.0, 0.0, 0.0, 0.0],
            ),
            yaw: 0.05,
            face_share: 0.3,
        };
        assert_eq!(
            template(&o),
            "a woman in her thirties, smiling, facing the camera, close-up photo"
        );
        let o = Observed {
            attributes: attrs(8.0, Gender::Male, 0.6, [0.7, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]),
            yaw: -0.4,
            face_share: 0.02,
        };
        assert_eq!(
            template(&o),
            "a child, with a neutral expression, head turned towards the left of the frame, half-length shot"
        );
        let o = Observed {
            // No expression above one half: none is named.
            attributes: attrs(
                75.0,
                Gender::Male,
                0.99,
                [0.3, 0.45, 0.25, 0.0, 0.0, 0.0, 0.0],
            ),
            yaw: 0.3,
            face_share: 0.001,
        };
        assert_eq!(
            template(&o),
            "an elderly man, head turned towards the right of the frame, wide shot"
        );
    }
}
