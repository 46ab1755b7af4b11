//! Unit tests of the adapters' seam on a random tiny UNet: layer numbering and lookup, every
//! hooked `Linear`, hook composition, per-step conditioning.

use std::cell::RefCell;
use std::collections::BTreeSet;

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};

use crate::UNetConfig;
use crate::attention::{AttentionHook, AttentionLayer, Hooks, LinearSite, NoHook};
use crate::pipeline::{Conditioning, StepInputs, SwitchAt, denoise_with};
use crate::schedulers::{EulerDiscrete, ScheduleConfig};
use crate::unet::{LayerKey, UNet, UNetInput};

type B = Flex;

fn tiny_unet(linear_projection: bool) -> UNet<B> {
    let config = UNetConfig::from_json(&format!(
        r#"{{"block_out_channels": [8, 16], "layers_per_block": 1, "cross_attention_dim": 8,
            "attention_head_dim": 2, "norm_num_groups": 4, "sample_size": 8,
            "use_linear_projection": {linear_projection},
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}}"#
    ))
    .unwrap();
    UNet::random(&config, &Default::default())
}

fn input(batch: usize) -> UNetInput<B> {
    let d = Default::default();
    UNetInput {
        sample: Tensor::random([batch, 4, 8, 8], Distribution::Normal(0.0, 1.0), &d),
        timesteps: Tensor::from_floats([500.0], &d),
        context: Tensor::random([batch, 5, 8], Distribution::Normal(0.0, 1.0), &d),
        added: None,
    }
}

fn max_abs(t: Tensor<B, 4>) -> f32 {
    t.abs().max().into_scalar()
}

/// Records every site it is called on; adds `value` to the output of the site named `target`.
struct Recorder {
    seen: RefCell<BTreeSet<String>>,
    target: String,
    value: f32,
}

impl AttentionHook<B> for Recorder {
    fn linear(
        &self,
        site: &LinearSite<'_>,
        _input: &Tensor<B, 3>,
        output: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        assert_eq!(output.dims()[2], site.out_features, "{}", site.name());
        self.seen.borrow_mut().insert(site.name());
        if site.is(&self.target) {
            output + self.value
        } else {
            output
        }
    }
}

/// Adds a constant before `to_out` of one layer.
struct Extra {
    index: usize,
    value: f32,
}

impl AttentionHook<B> for Extra {
    fn extra_attention(
        &self,
        layer: &AttentionLayer,
        query: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 3>> {
        (layer.index == self.index).then(|| {
            let [b, h, n, d] = query.dims();
            Tensor::zeros([b, n, h * d], &query.device()) + self.value
        })
    }
}

#[test]
fn layers_are_numbered_in_attn_processors_order_and_found_by_name_or_index() {
    let unet = tiny_unet(false);
    let layers = unet.attention_layers();
    // One transformer per resnet with attention: down 2·1, up 2·2, mid 1; two layers each.
    assert_eq!(layers.len(), 2 * (2 + 4 + 1));
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l.index, i);
        assert_eq!(l.is_cross(), i % 2 == 1, "{}", l.name);
    }
    assert!(layers[0].name.starts_with("down_blocks.0."));
    assert!(layers.last().unwrap().name.starts_with("mid_block."));
    let by_name = unet
        .attention_layer(LayerKey::Name(
            "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
        ))
        .unwrap();
    assert_eq!(
        unet.attention_layer(LayerKey::Index(by_name.index))
            .unwrap(),
        by_name
    );
    assert!(
        unet.attention_layer(LayerKey::Name("up_blocks.9.attn2"))
            .is_none()
    );
}

#[test]
fn the_hook_reaches_every_linear_of_every_transformer() {
    for linear_projection in [false, true] {
        let unet = tiny_unet(linear_projection);
        let recorder = Recorder {
            seen: RefCell::new(BTreeSet::new()),
            target: String::new(),
            value: 0.0,
        };
        let x = input(1);
        // A hook that adds nothing leaves the prediction exactly as the base model's (the
        // token view of a 1×1-convolution projection is the same computation).
        let with_noop = unet.forward_with(&x, &recorder);
        assert!(max_abs(unet.forward_with(&x, &NoHook) - with_noop) < 1e-6);
        let seen = recorder.seen.into_inner();
        let layers = unet.attention_layers();
        for l in &layers {
            for p in ["to_q", "to_k", "to_v", "to_out.0"] {
                assert!(seen.contains(&format!("{}.{p}", l.name)), "{}.{p}", l.name);
            }
        }
        for l in layers.iter().filter(|l| l.is_cross()) {
            let block = l.name.strip_suffix(".attn2").unwrap();
            assert!(seen.contains(&format!("{block}.ff.net.0.proj")));
            assert!(seen.contains(&format!("{block}.ff.net.2")));
            let transformer = block.split(".transformer_blocks").next().unwrap();
            assert!(seen.contains(&format!("{transformer}.proj_in")));
            assert!(seen.contains(&format!("{transformer}.proj_out")));
        }
        // 4 projections per layer, 2 ff per block, proj_in/out per transformer.
        assert_eq!(seen.len(), layers.len() * 4 + layers.len() + layers.len());
    }
}

#[test]
fn a_hook_on_a_named_linear_changes_the_output_and_hooks_compose() {
    let unet = tiny_unet(false);
    let x = input(2);
    let base = unet.forward(&x);
    let proj_out = "down_blocks.0.attentions.0.proj_out";
    let a = Recorder {
        seen: RefCell::default(),
        target: proj_out.into(),
        value: 0.25,
    };
    let b = Extra {
        index: 1,
        value: -0.5,
    };
    let with_a = unet.forward_with(&x, &a);
    assert!(max_abs(with_a.clone() - base.clone()) > 1e-3);
    let with_b = unet.forward_with(&x, &b);
    assert!(max_abs(with_b.clone() - base.clone()) > 1e-3);
    // Composed in either order: both terms, the same result.
    let ab = unet.forward_with(&x, &Hooks(vec![&a, &b]));
    let ba = unet.forward_with(&x, &Hooks(vec![&b, &a]));
    assert!(max_abs(ab.clone() - ba) < 1e-6);
    assert!(max_abs(ab.clone() - with_a) > 1e-3 && max_abs(ab - with_b) > 1e-3);
    // Two extra-attention hooks add up: +0.25 twice is +0.5 once.
    let half = Extra {
        index: 3,
        value: 0.25,
    };
    let whole = Extra {
        index: 3,
        value: 0.5,
    };
    let twice = unet.forward_with(&x, &Hooks(vec![&half, &half]));
    assert!(max_abs(twice - unet.forward_with(&x, &whole)) < 1e-5);
}

/// Counts the steps on which its extra attention was asked for.
struct StepCounter {
    calls: RefCell<usize>,
}

impl AttentionHook<B> for StepCounter {
    fn extra_attention(
        &self,
        layer: &AttentionLayer,
        _query: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 3>> {
        if layer.index == 1 {
            *self.calls.borrow_mut() += 1;
        }
        None
    }
}

#[test]
fn per_step_conditioning_starts_the_adapter_at_step_k() {
    let unet = tiny_unet(false);
    let d = Default::default();
    let schedule = ScheduleConfig::default();
    let cond = Conditioning::<B> {
        context: Tensor::random([1, 5, 8], Distribution::Normal(0.0, 1.0), &d),
        pooled: None,
    };
    let other = Conditioning::<B> {
        context: Tensor::random([1, 5, 8], Distribution::Normal(0.0, 1.0), &d),
        pooled: None,
    };
    let noise = Tensor::<B, 4>::random([1, 4, 8, 8], Distribution::Normal(0.0, 1.0), &d);
    let counter = StepCounter {
        calls: RefCell::new(0),
    };
    let steps = 5;
    let plan = SwitchAt {
        before: StepInputs {
            cond: &cond,
            uncond: None,
            hook: &NoHook,
        },
        after: StepInputs {
            cond: &other,
            uncond: None,
            hook: &counter,
        },
        start: 2,
    };
    let sampler = EulerDiscrete::new(&schedule, steps).unwrap();
    let switched = denoise_with(
        &unet,
        &sampler,
        noise.clone(),
        1.0,
        None,
        &plan,
        &mut |_, _| {},
    );
    assert_eq!(*counter.calls.borrow(), steps - 2);
    // Starting at step 0 is the same as conditioning on `other` throughout.
    let from_zero = SwitchAt { start: 0, ..plan };
    let all_other = StepInputs {
        cond: &other,
        uncond: None,
        hook: &NoHook,
    };
    let a = denoise_with(
        &unet,
        &sampler,
        noise.clone(),
        1.0,
        None,
        &from_zero,
        &mut |_, _| {},
    );
    let b = denoise_with(
        &unet,
        &sampler,
        noise,
        1.0,
        None,
        &all_other,
        &mut |_, _| {},
    );
    assert!(max_abs(a - b.clone()) < 1e-6);
    assert!(max_abs(switched - b) > 1e-4);
}
