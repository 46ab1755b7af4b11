//! A set of feature vectors (Inception pool3 features, CLIP embeddings, classifier logits), the
//! one input type of the set-level metrics.

use nalgebra::DMatrix;

use crate::error::BenchError;

/// `n` feature vectors of `dim` values each, row-major in `data` (`n · dim` values).
///
/// One contiguous buffer rather than `Vec<Vec<f32>>`: the metrics turn it into one matrix, and
/// resampling ([`Features::select`]) copies rows without a per-row allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Number of vectors (rows).
    pub n: usize,
    /// Length of each vector.
    pub dim: usize,
    /// The vectors one after another: row `i` is `data[i · dim .. (i + 1) · dim]`.
    pub data: Vec<f32>,
}

impl Features {
    /// Checks that `data` holds `n · dim` finite values, so that a truncated buffer or a NaN
    /// from a broken extractor is an error here rather than a silently wrong metric later.
    ///
    /// # Errors
    /// [`BenchError::Metric`] on a length mismatch or a non-finite value.
    pub fn new(n: usize, dim: usize, data: Vec<f32>) -> Result<Self, BenchError> {
        if n.checked_mul(dim) != Some(data.len()) {
            return Err(BenchError::Metric(format!(
                "features: {} values for {n} rows of {dim}",
                data.len()
            )));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(BenchError::Metric(format!(
                "features: row {} holds a non-finite value ({})",
                i / dim.max(1),
                data[i]
            )));
        }
        Ok(Self { n, dim, data })
    }

    /// Packs per-image vectors (as extractors return them) into one buffer. No rows gives an
    /// empty set of dimension 0, which every metric then rejects for being too small.
    ///
    /// # Errors
    /// [`BenchError::Metric`] if rows differ in length or hold a non-finite value.
    pub fn from_rows(rows: &[Vec<f32>]) -> Result<Self, BenchError> {
        let dim = rows.first().map_or(0, Vec::len);
        if let Some(i) = rows.iter().position(|r| r.len() != dim) {
            return Err(BenchError::Metric(format!(
                "features: row {i} has {} values, row 0 has {dim}",
                rows[i].len()
            )));
        }
        Self::new(rows.len(), dim, rows.concat())
    }

    /// Row `i`, the features of one image.
    ///
    /// # Panics
    /// If `i >= n`.
    pub fn row(&self, i: usize) -> &[f32] {
        assert!(i < self.n, "row {i} of {} features", self.n);
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows one after another.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = &[f32]> + '_ {
        (0..self.n).map(|i| self.row(i))
    }

    /// The rows at `indices`, in that order and with repeats: a bootstrap resample of the set.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn select(&self, indices: &[usize]) -> Features {
        let mut data = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            data.extend_from_slice(self.row(i));
        }
        Features {
            n: indices.len(),
            dim: self.dim,
            data,
        }
    }

    /// The mean vector, accumulated in f64.
    pub fn mean(&self) -> Vec<f64> {
        let mut mu = vec![0f64; self.dim];
        for row in self.rows() {
            for (m, &v) in mu.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        let n = self.n.max(1) as f64;
        mu.iter_mut().for_each(|m| *m /= n);
        mu
    }

    /// The rows as an `n × dim` f64 matrix, where the metrics do their arithmetic.
    pub(crate) fn to_matrix(&self) -> DMatrix<f64> {
        DMatrix::from_fn(self.n, self.dim, |i, j| {
            f64::from(self.data[i * self.dim + j])
        })
    }
}

/// The error for sets that do not share a dimension.
pub(crate) fn same_dim(what: &str, a: &Features, b: &Features) -> Result<(), BenchError> {
    if a.dim != b.dim {
        return Err(BenchError::Metric(format!(
            "{what}: feature dimensions differ ({} and {})",
            a.dim, b.dim
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_rows_packs_rows_and_select_resamples_them() {
        let f = Features::from_rows(&[vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]]).unwrap();
        assert_eq!((f.n, f.dim), (3, 2));
        assert_eq!(f.row(1), &[3.0, 4.0]);
        let s = f.select(&[2, 0, 2]);
        assert_eq!(s.data, vec![5.0, 6.0, 1.0, 2.0, 5.0, 6.0]);
        assert_eq!(f.mean(), vec![3.0, 4.0]);
        let empty = Features::from_rows(&[]).unwrap();
        assert_eq!((empty.n, empty.dim, empty.rows().len()), (0, 0, 0));
    }

    #[test]
    fn ragged_or_non_finite_rows_are_errors() {
        assert!(Features::from_rows(&[vec![1.0, 2.0], vec![3.0]]).is_err());
        let err = Features::from_rows(&[vec![1.0], vec![f32::NAN]]).unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
        assert!(Features::new(2, 3, vec![0.0; 5]).is_err());
    }
}
