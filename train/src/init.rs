//! Starting an adapter from scratch as the reference trainers do: IP-Adapter's scripts copy
//! each cross-attention layer's `to_k` / `to_v` weights into its `to_k_ip` / `to_v_ip`
//! (`tutorial_train*.py`: `weights = {"to_k_ip.weight": unet_sd[name + ".to_k.weight"], …}`),
//! so that the image branch starts as a second text branch instead of noise.

use burn::module::Param;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use idforge_diffusion::UNet;
use idforge_diffusion::adapters::ip_adapter::IpAdapter;
use idforge_diffusion::attention::Attention;

use crate::error::TrainError;

/// `adapter` with every `to_k_ip` / `to_v_ip` set to a copy of its UNet layer's `to_k` / `to_v`
/// (new trainable parameters; the UNet's stay as they are).
pub fn ip_layers_from_unet<B: Backend>(
    mut adapter: IpAdapter<B>,
    unet: &UNet<B>,
) -> Result<IpAdapter<B>, TrainError> {
    let blocks = unet.down_blocks.iter().chain(&unet.up_blocks);
    let transformers = blocks
        .flat_map(|b| b.attentions.iter())
        .chain(unet.mid_block.iter().flat_map(|m| m.attentions.iter()));
    let attentions: Vec<&Attention<B>> = transformers
        .flat_map(|t| t.blocks.iter())
        .flat_map(|b| [&b.attn1, &b.attn2])
        .collect();
    let indices = adapter.layer_indices().to_vec();
    for (ip, index) in adapter.layers.iter_mut().zip(indices) {
        let attn = attentions
            .iter()
            .find(|a| a.layer().index == index)
            .ok_or_else(|| {
                TrainError::Setting(format!(
                    "the adapter's layer {index} is not an attention layer of this UNet"
                ))
            })?;
        let copy = |w: &Param<Tensor<B, 2>>, into: &Param<Tensor<B, 2>>| {
            let w = w.val();
            if w.dims() != into.dims() {
                return Err(TrainError::Setting(format!(
                    "layer {index}: the UNet's projection is {:?}, the adapter's {:?}",
                    w.dims(),
                    into.dims()
                )));
            }
            Ok(Param::from_tensor(Tensor::from_data(
                w.to_data(),
                &w.device(),
            )))
        };
        ip.to_k_ip.weight = copy(&attn.to_k.weight, &ip.to_k_ip.weight)?;
        ip.to_v_ip.weight = copy(&attn.to_v.weight, &ip.to_v_ip.weight)?;
    }
    Ok(adapter)
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use idforge_diffusion::adapters::ip_adapter::ProjectionSpec;
    use idforge_diffusion::nn::Init;

    use super::*;

    #[test]
    fn ip_layers_start_as_copies_of_the_text_projections() {
        type A = Autodiff<Flex>;
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../diffusion/tests/fixtures/ip-adapter/plain.safetensors");
        let device = Default::default();
        let unet_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../diffusion/tests/fixtures/tiny-sd/unet");
        let unet = UNet::<A>::load(&unet_dir, &device).unwrap();
        let store = idforge_models::WeightStore::open(&file).unwrap();
        let spec = ProjectionSpec::detect(&store, "image_proj.").unwrap();
        let adapter = IpAdapter::new(&Init::Random, spec, &unet, &device).unwrap();
        let adapter = ip_layers_from_unet(adapter, &unet).unwrap();
        let mid = &unet.mid_block.as_ref().unwrap().attentions[0].blocks[0].attn2;
        let i = adapter
            .layer_indices()
            .iter()
            .position(|&i| i == mid.layer().index)
            .unwrap();
        let k = &adapter.layers[i].to_k_ip.weight;
        assert_eq!(k.val().to_data(), mid.to_k.weight.val().to_data());
        assert!(k.val().is_require_grad());
        assert_ne!(k.id, mid.to_k.weight.id);
        assert_eq!(
            adapter.layers[i].to_v_ip.weight.val().to_data(),
            mid.to_v.weight.val().to_data()
        );
    }
}
