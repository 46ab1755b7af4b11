//! Identity verification (filter 4), identity discovery and duplicate faces (filter 5): pure
//! functions over embeddings, so that the rules can be read and tested apart from the models.
//!
//! What is compared, exactly. Embeddings are L2-normalised, similarity is their dot product
//! (cosine). In a group of `n` images:
//! 1. In an image with several candidate faces, each face gets its *consistency*: the mean over
//!    the group's other images of its best cosine to any candidate of that image. The face with
//!    the highest consistency is the image's face; the others are `other_face_in_image`.
//! 2. Each chosen face `i` gets `id_score_i = (1 / (n − 1)) Σ_{j≠i} cos(e_i, e_j)` over the
//!    other chosen faces: PhotoMaker's sum of pairwise similarities, divided by `n − 1` so that
//!    it reads on the cosine scale whatever the group size.
//! 3. Relative rule (n ≥ 3): with `M` the median of the group's `id_score`s and
//!    `σ̂ = max(1.4826 · MAD, sigma_floor)` their robust standard deviation, a face with
//!    `id_score < M − k·σ̂` is an `id_outlier`. A robust σ̂ because a plain one is inflated by
//!    the very outlier it should expose: with the outlier inside the sample its z-score can
//!    never exceed (n − 1)/√n, so k = 8 could not fire in a group under 66 images.
//! 4. Absolute rule: a face (not already an outlier) with `id_score < floor` is `below_id_floor`.
//! 5. One pass: scores are not recomputed after removals, so every number in the table is the
//!    one the decision was made on.

use std::collections::{BTreeSet, HashMap};

/// One candidate face of a group: the image it is in and its unit-length embedding.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The image (its `row_id`); faces of one image compete for it.
    pub image: u64,
    /// L2-normalised embedding.
    pub embedding: &'a [f32],
}

/// What verification decided for one candidate.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Passed both rules.
    Kept,
    /// Another face of its image was more consistent with the group.
    OtherFaceInImage {
        /// This face's consistency.
        consistency: f32,
        /// The chosen face's consistency.
        chosen: f32,
    },
    /// Failed the relative rule.
    Outlier,
    /// Failed the absolute floor.
    BelowFloor,
}

/// The outcome for one candidate, aligned with the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The decision.
    pub decision: Decision,
    /// Mean cosine to the other chosen faces (absent for unchosen faces and one-image groups).
    pub id_score: Option<f32>,
    /// `(id_score − median) / σ̂` (absent below three images).
    pub id_z: Option<f32>,
}

/// The group-level figures the decisions were made with (shown on the report).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupFigures {
    /// Images in the group.
    pub images: usize,
    /// Median `id_score` (n ≥ 2).
    pub median: Option<f32>,
    /// Robust σ̂ (n ≥ 3).
    pub sigma: Option<f32>,
    /// `median − k·σ̂` (n ≥ 3).
    pub relative_cut: Option<f32>,
    /// The absolute floor.
    pub floor: f32,
}

/// The verification rules' parameters.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Relative rule: k robust standard deviations.
    pub k: f32,
    /// Lower bound of σ̂.
    pub sigma_floor: f32,
    /// Absolute floor on `id_score`.
    pub floor: f32,
}

/// Cosine of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn l2_normalized(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter().map(|x| x / n).collect()
    } else {
        v.to_vec()
    }
}

fn median(sorted: &[f32]) -> f32 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// Runs steps 1–4 of the module doc on one group.
pub fn verify_group(candidates: &[Candidate<'_>], rules: Rules) -> (Vec<Verified>, GroupFigures) {
    let mut images: Vec<u64> = candidates.iter().map(|c| c.image).collect();
    images.sort_unstable();
    images.dedup();
    let n = images.len();
    let mut out: Vec<Verified> = candidates
        .iter()
        .map(|_| Verified {
            decision: Decision::Kept,
            id_score: None,
            id_z: None,
        })
        .collect();
    let mut figures = GroupFigures {
        images: n,
        median: None,
        sigma: None,
        relative_cut: None,
        floor: rules.floor,
    };
    // Step 1: one face per image, by consistency with the other images.
    let consistency: Vec<f32> = candidates
        .iter()
        .map(|c| {
            if n < 2 {
                return 0.0;
            }
            let mut best: HashMap<u64, f32> = HashMap::new();
            for o in candidates.iter().filter(|o| o.image != c.image) {
                let s = cosine(c.embedding, o.embedding);
                let e = best.entry(o.image).or_insert(f32::NEG_INFINITY);
                *e = e.max(s);
            }
            best.values().sum::<f32>() / best.len() as f32
        })
        .collect();
    let mut chosen: Vec<usize> = Vec::with_capacity(n);
    for &image in &images {
        let faces: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].image == image)
            .collect();
        // Ties (and one-image groups, where every consistency is 0) go to the first face,
        // which is the detector's most confident one.
        let best = *faces
            .iter()
            .max_by(|&&a, &&b| consistency[a].total_cmp(&consistency[b]).then(b.cmp(&a)))
            .expect("an image has at least one candidate");
        for &i in &faces {
            if i != best {
                out[i].decision = Decision::OtherFaceInImage {
                    consistency: consistency[i],
                    chosen: consistency[best],
                };
            }
        }
        chosen.push(best);
    }
    if n < 2 {
        return (out, figures);
    }
    // Step 2: id_score over the chosen faces.
    let scores: Vec<f32> = chosen
        .iter()
        .map(|&i| {
            let sum: f32 = chosen
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| cosine(candidates[i].embedding, candidates[j].embedding))
                .sum();
            sum / (n - 1) as f32
        })
        .collect();
    let mut sorted = scores.clone();
    sorted.sort_by(f32::total_cmp);
    let med = median(&sorted);
    figures.median = Some(med);
    // Step 3: the relative rule, from three images up.
    let (sigma, cut) = if n >= 3 {
        let mut dev: Vec<f32> = scores.iter().map(|s| (s - med).abs()).collect();
        dev.sort_by(f32::total_cmp);
        let sigma = (1.4826 * median(&dev)).max(rules.sigma_floor);
        (Some(sigma), Some(med - rules.k * sigma))
    } else {
        (None, None)
    };
    figures.sigma = sigma;
    figures.relative_cut = cut;
    for (&i, &s) in chosen.iter().zip(&scores) {
        out[i].id_score = Some(s);
        out[i].id_z = sigma.map(|sg| (s - med) / sg);
        out[i].decision = match cut {
            Some(c) if s < c => Decision::Outlier,
            _ if s < rules.floor => Decision::BelowFloor,
            _ => Decision::Kept,
        };
    }
    (out, figures)
}

/// Identity discovery: average-linkage agglomerative clustering of unit embeddings, merging
/// while the best pair of clusters is at least `threshold` similar. Two faces of one image are
/// never put together (they are two people), and that constraint is inherited by every merge.
///
/// Returns a cluster index per face; clusters are numbered by size (largest first), then by
/// their first face. Quadratic memory in the number of faces.
pub fn discover(faces: &[Candidate<'_>], threshold: f32) -> Vec<usize> {
    let n = faces.len();
    // sim[a][b] between live clusters; NEG_INFINITY for cannot-link.
    let mut sim = vec![vec![f32::NEG_INFINITY; n]; n];
    for a in 0..n {
        for b in (a + 1)..n {
            if faces[a].image != faces[b].image {
                let s = cosine(faces[a].embedding, faces[b].embedding);
                sim[a][b] = s;
                sim[b][a] = s;
            }
        }
    }
    let mut size = vec![1usize; n];
    let mut alive: BTreeSet<usize> = (0..n).collect();
    let mut members: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    loop {
        let mut best: Option<(f32, usize, usize)> = None;
        for &a in &alive {
            for &b in alive.range((a + 1)..) {
                let s = sim[a][b];
                if s >= threshold && best.is_none_or(|(bs, _, _)| s > bs) {
                    best = Some((s, a, b));
                }
            }
        }
        let Some((_, a, b)) = best else { break };
        // Lance–Williams update for average linkage; NEG_INFINITY (cannot-link) propagates.
        let (na, nb) = (size[a] as f32, size[b] as f32);
        for &c in &alive {
            if c == a || c == b {
                continue;
            }
            let s = if sim[a][c] == f32::NEG_INFINITY || sim[b][c] == f32::NEG_INFINITY {
                f32::NEG_INFINITY
            } else {
                (na * sim[a][c] + nb * sim[b][c]) / (na + nb)
            };
            sim[a][c] = s;
            sim[c][a] = s;
        }
        size[a] += size[b];
        let moved = std::mem::take(&mut members[b]);
        members[a].extend(moved);
        alive.remove(&b);
    }
    let mut clusters: Vec<Vec<usize>> = alive
        .into_iter()
        .map(|a| {
            let mut m = std::mem::take(&mut members[a]);
            m.sort_unstable();
            m
        })
        .collect();
    clusters.sort_by(|x, y| y.len().cmp(&x.len()).then(x[0].cmp(&y[0])));
    let mut label = vec![0; n];
    for (ci, m) in clusters.iter().enumerate() {
        for &f in m {
            label[f] = ci;
        }
    }
    label
}

/// Filter 5: among the kept faces of one identity, in the given order, a face whose pHash is
/// within `threshold` bits of an earlier kept face is a duplicate of it. Returns, per face, the
/// index of the face it duplicates.
pub fn duplicates(phashes: &[u64], threshold: u32) -> Vec<Option<usize>> {
    let mut firsts: Vec<usize> = Vec::new();
    phashes
        .iter()
        .enumerate()
        .map(|(i, &h)| {
            let hit = firsts
                .iter()
                .copied()
                .find(|&j| (phashes[j] ^ h).count_ones() <= threshold);
            if hit.is_none() {
                firsts.push(i);
            }
            hit
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit vector at `angle` radians in the plane of the first two axes.
    fn unit(angle: f32) -> Vec<f32> {
        vec![angle.cos(), angle.sin(), 0.0]
    }

    /// One candidate per image, image `i` for embedding `i`.
    fn one_per_image(embs: &[Vec<f32>]) -> Vec<Candidate<'_>> {
        embs.iter()
            .enumerate()
            .map(|(i, e)| Candidate {
                image: i as u64,
                embedding: e,
            })
            .collect()
    }

    const RULES: Rules = Rules {
        k: 8.0,
        sigma_floor: 0.005,
        floor: 0.5,
    };

    #[test]
    fn an_impostor_is_an_outlier_and_the_rest_are_kept() {
        let embs: Vec<Vec<f32>> = [0.0, 0.05, -0.05, 0.1, -0.1, 0.02, 0.8]
            .iter()
            .map(|&a| unit(a))
            .collect();
        let cands = one_per_image(&embs);
        let (out, fig) = verify_group(&cands, RULES);
        assert_eq!(out[6].decision, Decision::Outlier, "{out:?} {fig:?}");
        assert!(
            out[..6].iter().all(|v| v.decision == Decision::Kept),
            "{out:?}"
        );
        // The documented quantity: the mean cosine to the other six.
        let want: f32 = (0..6).map(|j| cosine(&embs[6], &embs[j])).sum::<f32>() / 6.0;
        assert!((out[6].id_score.unwrap() - want).abs() < 1e-6);
        assert!(fig.relative_cut.unwrap() > out[6].id_score.unwrap());
        // A plain σ would have hidden it: its z-score with the mean and σ of all seven.
        let s: Vec<f32> = out.iter().map(|v| v.id_score.unwrap()).collect();
        let mean = s.iter().sum::<f32>() / 7.0;
        let sd = (s.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 7.0).sqrt();
        assert!((s[6] - mean) / sd > -8.0);
    }

    #[test]
    fn the_floor_rejects_a_group_that_is_consistent_but_far_apart() {
        let embs: Vec<Vec<f32>> = [0.0, 1.2].iter().map(|&a| unit(a)).collect();
        let cands = one_per_image(&embs);
        let (out, fig) = verify_group(&cands, RULES);
        assert!(out.iter().all(|v| v.decision == Decision::BelowFloor));
        assert_eq!(fig.sigma, None, "no relative rule below three images");
    }

    #[test]
    fn in_a_group_photo_the_face_consistent_with_the_other_images_is_chosen() {
        let (a, a2, b, a3) = (unit(0.0), unit(0.05), unit(1.0), unit(-0.05));
        let cands = [
            Candidate {
                image: 1,
                embedding: &a,
            },
            Candidate {
                image: 2,
                embedding: &b,
            },
            Candidate {
                image: 2,
                embedding: &a2,
            },
            Candidate {
                image: 3,
                embedding: &a3,
            },
        ];
        let (out, _) = verify_group(&cands, RULES);
        assert!(
            matches!(out[1].decision, Decision::OtherFaceInImage { .. }),
            "{out:?}"
        );
        assert_eq!(out[2].decision, Decision::Kept);
        assert_eq!(out[1].id_score, None);
    }

    #[test]
    fn discovery_never_joins_two_faces_of_one_image_and_joins_the_same_person() {
        // Two people, each seen in three images; every image shows both.
        let p = [unit(0.0), unit(0.02), unit(-0.02)];
        let q = [unit(0.5), unit(0.52), unit(0.48)];
        let mut cands = Vec::new();
        for i in 0..3 {
            cands.push(Candidate {
                image: i,
                embedding: &p[i as usize],
            });
            cands.push(Candidate {
                image: i,
                embedding: &q[i as usize],
            });
        }
        let label = discover(&cands, 0.99);
        assert_eq!(label, vec![0, 1, 0, 1, 0, 1]);
        // With a threshold that would merge everything, the constraint still separates them.
        let label = discover(&cands, -1.0);
        assert_ne!(label[0], label[1]);
        assert_eq!(label.iter().collect::<BTreeSet<_>>().len(), 2);
    }

    #[test]
    fn duplicates_point_at_the_first_face_they_repeat() {
        let d = duplicates(&[0b0000, 0b0001, 0xFF00, 0b0111, 0xFF01], 1);
        assert_eq!(d, vec![None, Some(0), None, None, Some(2)]);
    }
}
