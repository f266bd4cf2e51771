//! QLoRA on a small Llama-shaped model: which weights are quantized and how the report
//! counts them, the forward pass against the base with its weights replaced by their
//! dequantized values, LoRA gradients against central finite differences with none
//! reaching the quantized base, and merging (LoRA, DoRA) against the adapted forward pass.

use burn::backend::Flex;
use burn::module::Param;
use ember_peft::{LoraConfig, QloraConfig, QuantFormat, Targets, apply_lora, apply_qlora, merged};

type B = Flex;

mod common;
use common::{
    AD, base, config, exclusive, logits, loss, max_diff, nudged_loss, perturb_up as perturb,
};

fn qlora(format: QuantFormat, block_size: usize) -> QloraConfig {
    QloraConfig {
        lora: LoraConfig {
            r: 3,
            alpha: 6.0,
            targets: Targets::AllLinear,
            ..Default::default()
        },
        format,
        block_size,
    }
}

#[test]
fn every_projection_but_the_head_is_quantized_and_the_rest_is_lora() {
    let _draws = exclusive();
    let device = Default::default();
    let original = logits(&base::<B>(1));
    for format in [QuantFormat::Nf4, QuantFormat::Int8] {
        let (mut model, report) = apply_qlora(base::<B>(1), &qlora(format, 8), &device).unwrap();
        let (_, lora) = apply_lora(base::<B>(1), &qlora(format, 8).lora, &device).unwrap();
        assert_eq!(report.adapted, lora.adapted);
        assert_eq!(report.trainable, lora.trainable);
        assert_eq!(report.total, config().num_params() + report.trainable);

        // The base with each quantized weight replaced by its dequantized value, in f32.
        let mut reference = base::<B>(1);
        let mut quantized = 0;
        for ((path, p), (_, r)) in model
            .projections_mut()
            .into_iter()
            .zip(reference.projections_mut())
        {
            let Some(q) = &p.quantized else {
                assert_eq!(path, "lm_head");
                continue;
            };
            assert_eq!(q.spec.format, format);
            assert_eq!(
                p.weight.dims(),
                [0, 0],
                "{path}: the f32 weight is not kept"
            );
            assert_eq!(p.dims(), r.dims());
            r.weight = Param::from_tensor(q.dequantize());
            quantized += 1;
        }
        assert_eq!(quantized, 2 * 7);
        // `B` starts at zero: the adapted model is the dequantized base…
        let got = logits(&model);
        let scale = got.iter().fold(1f32, |m, x| m.max(x.abs()));
        let diff = max_diff(&got, &logits(&reference));
        assert!(
            diff <= 1e-5 * scale,
            "{format:?}: {diff} from the dequantized base"
        );
        // …which quantization really moved away from the original.
        assert!(
            max_diff(&got, &original) > 1e-3,
            "{format:?}: nothing was quantized"
        );
    }

    let err = apply_qlora(base::<B>(1), &qlora(QuantFormat::Nf4, 12), &device).unwrap_err();
    assert!(err.0.contains("peft.block_size"), "{err}");
}

#[test]
fn lora_gradients_on_an_nf4_base_match_finite_differences() {
    let _draws = exclusive();
    let device = Default::default();
    let (model, _) = apply_qlora(base::<AD>(3), &qlora(QuantFormat::Nf4, 64), &device).unwrap();
    let model = perturb(model, 4);
    let grads = loss(&model).backward();
    let mut probe = model.clone();
    let mut checked = 0;
    for (path, p) in probe.projections_mut() {
        assert!(p.weight.val().grad(&grads).is_none(), "{path}: weight");
        if let Some(q) = &p.quantized {
            // The codes are an int tensor (no gradient exists for them); the scales are
            // frozen.
            assert!(!q.scales.is_require_grad(), "{path}: scales train");
            assert!(q.scales.val().grad(&grads).is_none(), "{path}: scales");
        }
        // Two projections of each kind of input: attention's and the MLP's.
        if !["layers.0.attn.q_proj", "layers.1.mlp.down_proj"].contains(&path.as_str()) {
            continue;
        }
        let adapter = p.adapter.as_ref().unwrap();
        for (part, param) in [
            ("down", adapter.down.as_ref().unwrap()),
            ("up", adapter.up.as_ref().unwrap()),
        ] {
            let grad: Vec<f32> = param
                .val()
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec()
                .unwrap();
            let numel = grad.len();
            for index in [0, numel / 2, numel - 1] {
                let at = |delta: f32| nudged_loss(&model, &path, part, index, delta);
                let h = 1e-2f32;
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (numeric - grad[index]).abs() <= 2e-2 + 2e-2 * numeric.abs(),
                    "{path}.{part}[{index}]: autodiff {} vs finite difference {numeric}",
                    grad[index]
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 2 * 3);
}

#[test]
fn merging_a_quantized_projection_gives_the_adapted_outputs_in_f32() {
    let _draws = exclusive();
    let device = Default::default();
    for (format, dora) in [
        (QuantFormat::Nf4, false),
        (QuantFormat::Int8, false),
        (QuantFormat::Nf4, true),
    ] {
        let mut config = qlora(format, 8);
        config.lora.use_dora = dora;
        let (model, _) = apply_qlora(base::<B>(5), &config, &device).unwrap();
        let model = perturb(model, 6);
        let adapted = logits(&model);
        let mut folded = model.clone();
        for (path, p) in folded.projections_mut() {
            let (d_in, d_out) = p.dims();
            *p = merged(p);
            assert!(p.adapter.is_none() && p.quantized.is_none(), "{path}");
            assert_eq!(p.weight.dims(), [d_in, d_out], "{path}");
        }
        let scale = adapted.iter().fold(1f32, |m, x| m.max(x.abs()));
        let diff = max_diff(&adapted, &logits(&folded));
        assert!(
            diff <= 1e-5 * scale,
            "{format:?} dora={dora}: merged differs by {diff}"
        );
    }
}
