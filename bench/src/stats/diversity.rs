//! Diversity of a method's outputs for one (identity, prompt) item across seeds.

/// Face diversity: the mean pairwise cosine distance `1 − cos(e_i, e_j)` over all pairs
/// `i < j` of face embeddings (the generated faces of one (identity, prompt) across seeds). A
/// method that pastes the reference face scores near 0 however its prompts vary; `None` for
/// fewer than 2 embeddings, where no pair exists.
///
/// In f64. A zero embedding has cosine 0 with everything (distance 1), as
/// `torch.nn.functional.cosine_similarity` with its epsilon gives.
///
/// # Panics
/// If the embeddings differ in length (they come from one face network).
pub fn face_div(embeddings: &[Vec<f32>]) -> Option<f64> {
    if embeddings.len() < 2 {
        return None;
    }
    let dim = embeddings[0].len();
    assert!(
        embeddings.iter().all(|e| e.len() == dim),
        "face embeddings of different lengths"
    );
    let norms: Vec<f64> = embeddings
        .iter()
        .map(|e| e.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt())
        .collect();
    let mut total = 0.0;
    let mut pairs = 0usize;
    for i in 0..embeddings.len() {
        for j in i + 1..embeddings.len() {
            let dot: f64 = embeddings[i]
                .iter()
                .zip(&embeddings[j])
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let denom = norms[i] * norms[j];
            let cos = if denom > 0.0 { dot / denom } else { 0.0 };
            total += 1.0 - cos;
            pairs += 1;
        }
    }
    Some(total / pairs as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_faces_have_no_diversity_and_orthogonal_ones_have_one() {
        assert_eq!(
            face_div(&vec![vec![1.0, 2.0]; 3]).map(|d| d.abs() < 1e-12),
            Some(true)
        );
        let d = face_div(&[vec![1.0, 0.0], vec![0.0, 3.0]]).unwrap();
        assert!((d - 1.0).abs() < 1e-12);
        // Opposite: 2; mean over the three pairs of {e1, −e1, e2}: (2 + 1 + 1) / 3.
        let d = face_div(&[vec![1.0, 0.0], vec![-1.0, 0.0], vec![0.0, 1.0]]).unwrap();
        assert!((d - 4.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn fewer_than_two_faces_give_none() {
        assert_eq!(face_div(&[]), None);
        assert_eq!(face_div(&[vec![1.0]]), None);
        assert_eq!(face_div(&[vec![0.0, 0.0], vec![1.0, 0.0]]), Some(1.0));
    }
}
