//! Reading a tensor back to the host as f32, whatever float type the backend computed in, so
//! that half-precision runs (f16 / bf16 on CUDA) return the same host vectors as f32 ones
//! instead of failing a dtype check.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// `to_f32_vec` on float tensors.
pub trait ReadBack {
    /// The values in row-major order as f32 (converted from f16, bf16 or f64 if needed).
    fn to_f32_vec(self) -> Vec<f32>;
}

impl<B: Backend, const D: usize> ReadBack for Tensor<B, D> {
    fn to_f32_vec(self) -> Vec<f32> {
        self.into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("a converted float tensor reads back as f32")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{DType, TensorData};

    #[test]
    fn half_precision_reads_back_as_f32() {
        let d = Default::default();
        let t = Tensor::<Flex, 1>::from_data(TensorData::new(vec![1.5f32, -2.0, 0.25], [3]), &d);
        assert_eq!(t.clone().to_f32_vec(), vec![1.5, -2.0, 0.25]);
        let h = t.cast(DType::F16);
        assert_eq!(h.to_f32_vec(), vec![1.5, -2.0, 0.25]);
    }
}
