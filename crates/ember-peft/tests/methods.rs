//! Every method on a small Llama-shaped model: targets, freezing and counts, gradients against
//! central finite differences, the base receiving none, and merge / unmerge against the
//! adapted forward pass.

use burn::backend::Flex;
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, ElementConversion, Tensor, TensorData};
use ember_nn::{ForwardOptions, Transformer};
use ember_peft::{
    Ia3Config, LoraBias, LoraConfig, LoraInit, Targets, apply_ia3, apply_lora, merged, unmerged,
};

type B = Flex;

mod common;
use common::{
    AD, INPUT, base, config, exclusive, ids, logits, loss, nudged_loss, perturb_up as perturb,
};

fn lora(targets: Targets) -> LoraConfig {
    LoraConfig {
        r: 3,
        alpha: 6.0,
        targets,
        ..Default::default()
    }
}

#[test]
fn targets_are_adapted_the_rest_frozen_and_counted_as_peft_does() {
    let _draws = exclusive();
    let device = Default::default();
    let before = logits(&base::<B>(1));
    let (model, report) = apply_lora(
        base::<B>(1),
        &lora(Targets::Names(vec!["q_proj".into(), "v_proj".into()])),
        &device,
    )
    .unwrap();
    assert_eq!(
        report.adapted,
        [
            "layers.0.attn.q_proj",
            "layers.0.attn.v_proj",
            "layers.1.attn.q_proj",
            "layers.1.attn.v_proj"
        ]
    );
    // q: 16 → 16, v: 16 → 8 (2 kv heads of 4): r·(d_in + d_out) each.
    assert_eq!(report.trainable, 2 * (3 * (16 + 16) + 3 * (16 + 8)));
    assert_eq!(report.total, config().num_params() + report.trainable);
    // `B` starts at zero: the adapted model is the base model.
    assert_eq!(logits(&model), before);

    let (_, all) = apply_lora(base::<B>(1), &lora(Targets::AllLinear), &device).unwrap();
    assert_eq!(
        all.adapted.len(),
        2 * 7,
        "q, k, v, o, gate, up, down per layer; not lm_head"
    );
    let (_, glob) = apply_lora(
        base::<B>(1),
        &lora(Targets::Glob("layers.1.mlp.*".into())),
        &device,
    )
    .unwrap();
    assert_eq!(
        glob.adapted,
        [
            "layers.1.mlp.gate_proj",
            "layers.1.mlp.up_proj",
            "layers.1.mlp.down_proj"
        ]
    );

    let mut with_bias = lora(Targets::Names(vec!["q_proj".into()]));
    with_bias.bias = LoraBias::All;
    let (_, counted) = apply_lora(base::<B>(1), &with_bias, &device).unwrap();
    // This Llama has no biases: `bias = all` adds nothing.
    assert_eq!(counted.trainable, 2 * 3 * (16 + 16));
}

#[test]
fn bad_settings_name_their_key() {
    let _draws = exclusive();
    let device = Default::default();
    let err = apply_lora(
        base::<B>(1),
        &lora(Targets::Names(vec!["c_attn".into()])),
        &device,
    )
    .unwrap_err();
    assert!(
        err.0.contains("peft.target_modules") && err.0.contains("c_attn"),
        "{err}"
    );
    let mut zero = lora(Targets::AllLinear);
    zero.r = 0;
    assert!(
        apply_lora(base::<B>(1), &zero, &device)
            .unwrap_err()
            .0
            .contains("peft.r")
    );
    let mut drop = lora(Targets::AllLinear);
    drop.dropout = 1.0;
    assert!(
        apply_lora(base::<B>(1), &drop, &device)
            .unwrap_err()
            .0
            .contains("peft.lora_dropout")
    );
    let glob = lora(Targets::Glob("layers.9.*".into()));
    assert!(
        apply_lora(base::<B>(1), &glob, &device)
            .unwrap_err()
            .0
            .contains("matches no projection")
    );
}

#[test]
fn initialisations_and_scaling_follow_peft() {
    let _draws = exclusive();
    let device = Default::default();
    let mut c = lora(Targets::AllLinear);
    c.r = 4;
    c.alpha = 8.0;
    assert_eq!(c.scaling(), 2.0);
    c.use_rslora = true;
    assert_eq!(c.scaling(), 4.0);
    for init in [LoraInit::Kaiming, LoraInit::Gaussian] {
        c.init = init;
        let (mut model, _) = apply_lora(base::<B>(2), &c, &device).unwrap();
        for (path, p) in model.projections_mut() {
            let Some(a) = &p.adapter else { continue };
            let (d_in, _) = p.dims();
            let down: Vec<f32> = a.down.as_ref().unwrap().val().into_data().to_vec().unwrap();
            let up: Vec<f32> = a.up.as_ref().unwrap().val().into_data().to_vec().unwrap();
            assert!(up.iter().all(|&x| x == 0.0), "{path}: B starts at zero");
            assert_eq!(a.scaling, 4.0);
            let max = down.iter().fold(0f32, |m, x| m.max(x.abs()));
            match init {
                // Uniform in ±1/√d_in.
                LoraInit::Kaiming => {
                    let bound = 1.0 / (d_in as f32).sqrt();
                    assert!(
                        max <= bound && max > 0.5 * bound,
                        "{path}: max {max}, bound {bound}"
                    );
                }
                // Normal with std 1/r = 0.25: values spread past the Kaiming bound.
                LoraInit::Gaussian => {
                    let var = down.iter().map(|x| x * x).sum::<f32>() / down.len() as f32;
                    assert!(
                        (var.sqrt() - 0.25).abs() < 0.1,
                        "{path}: std {}",
                        var.sqrt()
                    );
                }
            }
        }
    }
}

#[test]
fn adapter_gradients_match_finite_differences_and_the_base_gets_none() {
    let _draws = exclusive();
    let device = Default::default();
    let (model, _) = apply_lora(base::<AD>(3), &lora(Targets::AllLinear), &device).unwrap();
    let model = perturb(model, 4);
    let grads = loss(&model).backward();
    let mut probe = model.clone();
    let mut checked = 0;
    for (path, p) in probe.projections_mut() {
        assert!(
            p.weight.val().grad(&grads).is_none(),
            "{path}: the frozen weight got a gradient"
        );
        let Some(adapter) = &p.adapter else { continue };
        for (part, param) in [
            ("down", adapter.down.as_ref().unwrap()),
            ("up", adapter.up.as_ref().unwrap()),
        ] {
            let grad: Vec<f32> = param
                .val()
                .grad(&grads)
                .expect("an adapter gradient")
                .into_data()
                .to_vec()
                .unwrap();
            let numel = grad.len();
            for index in [0, numel / 2, numel - 1] {
                let h = 1e-2f32;
                let at = |delta: f32| nudged_loss(&model, &path, part, index, delta);
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
    assert_eq!(checked, 2 * 7 * 2 * 3);
}

#[test]
fn merging_keeps_the_outputs_and_unmerging_restores_the_weight() {
    let _draws = exclusive();
    let device = Default::default();
    let (model, _) = apply_lora(base::<B>(5), &lora(Targets::AllLinear), &device).unwrap();
    let model = perturb(model, 6);
    let adapted = logits(&model);
    let mut folded = model.clone();
    for (_, p) in folded.projections_mut() {
        *p = merged(p);
        assert!(p.adapter.is_none());
    }
    let merged_logits = logits(&folded);
    let scale = adapted.iter().fold(1f32, |m, x| m.max(x.abs()));
    for (a, m) in adapted.iter().zip(&merged_logits) {
        assert!((a - m).abs() <= 1e-5 * scale, "merged {m} vs adapted {a}");
    }
    let mut original = model.clone();
    let originals: Vec<_> = original
        .projections_mut()
        .into_iter()
        .map(|(_, p)| p.clone())
        .collect();
    for ((_, p), orig) in folded.projections_mut().into_iter().zip(originals) {
        let Some(adapter) = orig.adapter.clone() else {
            continue; // the LM head: not a target
        };
        let back = unmerged(p, adapter).unwrap();
        let (w, w0): (Vec<f32>, Vec<f32>) = (
            back.weight.val().into_data().to_vec().unwrap(),
            orig.weight.val().into_data().to_vec().unwrap(),
        );
        for (x, y) in w.iter().zip(&w0) {
            assert!((x - y).abs() <= 1e-6, "unmerged {x} vs original {y}");
        }
        *p = back;
    }
    // Unmerged, the adapters are back on their original weights: the adapted outputs.
    for (a, u) in adapted.iter().zip(&logits(&folded)) {
        assert!((a - u).abs() <= 1e-5 * scale, "unmerged {u} vs adapted {a}");
    }
}

/// Every vector of `part` moved away from its start (ones, or the weight norms).
fn perturb_vectors<Bk: Backend + ember_nn::FusedBackend>(
    mut model: Transformer<Bk>,
    seed: u64,
) -> Transformer<Bk> {
    let device = Default::default();
    Bk::seed(&device, seed);
    for (_, p) in model.projections_mut() {
        let Some(a) = p.adapter.as_mut() else {
            continue;
        };
        for slot in [&mut a.magnitude, &mut a.input_scale, &mut a.output_scale] {
            if let Some(v) = slot.take() {
                let noise = Tensor::random(v.dims(), Distribution::Normal(0.0, 0.3), &device);
                let moved = (v.val() * (noise + 1.0)).detach().set_require_grad(true);
                *slot = Some(Param::initialized(v.id, moved));
            }
        }
    }
    model
}

/// DoRA starts at the base model (magnitudes = the weight's column norms); its magnitude
/// gradients match finite differences (the norm is held constant in the backward pass,
/// as in `peft`, so `down`/`up` gradients are not those of the full function and are
/// checked against `peft` through the fixtures instead); merging keeps the outputs.
#[test]
fn dora_starts_at_the_base_its_magnitudes_train_and_it_merges() {
    let _draws = exclusive();
    let device = Default::default();
    let mut config = lora(Targets::Names(vec!["q_proj".into(), "up_proj".into()]));
    config.use_dora = true;
    let before = logits(&base::<B>(7));
    let (model, report) = apply_lora(base::<B>(7), &config, &device).unwrap();
    let diff = logits(&model)
        .iter()
        .zip(&before)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-5, "DoRA at init changes the logits by {diff}");
    // Per adapted projection: r·(d_in + d_out) + d_out.
    assert_eq!(
        report.trainable,
        2 * (3 * (16 + 16) + 16 + 3 * (16 + 24) + 24)
    );

    let (model, _) = apply_lora(base::<AD>(7), &config, &device).unwrap();
    let model = perturb_vectors(perturb(model, 8), 9);
    let grads = loss(&model).backward();
    let mut probe = model.clone();
    for (path, p) in probe.projections_mut() {
        assert!(
            p.weight.val().grad(&grads).is_none(),
            "{path}: frozen weight has a gradient"
        );
        let Some(m) = p.adapter.as_ref().and_then(|a| a.magnitude.as_ref()) else {
            continue;
        };
        let grad: Vec<f32> = m.val().grad(&grads).unwrap().into_data().to_vec().unwrap();
        for index in [0, grad.len() / 2, grad.len() - 1] {
            let h = 1e-2;
            let numeric = (nudged_loss(&model, &path, "magnitude", index, h)
                - nudged_loss(&model, &path, "magnitude", index, -h))
                / (2.0 * h);
            assert!(
                (numeric - grad[index]).abs() <= 2e-2 + 2e-2 * numeric.abs(),
                "{path}.magnitude[{index}]: autodiff {} vs finite difference {numeric}",
                grad[index]
            );
        }
    }

    let (model, _) = apply_lora(base::<B>(7), &config, &device).unwrap();
    let model = perturb_vectors(perturb(model, 10), 11);
    let adapted = logits(&model);
    let mut folded = model.clone();
    for (_, p) in folded.projections_mut() {
        assert!(
            p.adapter
                .as_ref()
                .is_none_or(|a| unmerged(&merged(p), a.clone()).is_none())
        );
        *p = merged(p);
    }
    let scale = adapted.iter().fold(1f32, |m, x| m.max(x.abs()));
    for (a, m) in adapted.iter().zip(&logits(&folded)) {
        assert!((a - m).abs() <= 1e-5 * scale, "merged {m} vs adapted {a}");
    }
}

/// IA³: vectors of ones at first (the base model), on the output side of keys and values
/// and the input side of `down_proj`; gradients against finite differences; merging
/// keeps the outputs; a feed-forward module outside the targets is refused.
#[test]
fn ia3_scales_outputs_or_inputs_trains_and_merges() {
    let _draws = exclusive();
    let device = Default::default();
    let names = |n: &[&str]| Targets::Names(n.iter().map(|s| s.to_string()).collect());
    let config = Ia3Config {
        targets: names(&["k_proj", "v_proj", "down_proj"]),
        feedforward: names(&["down_proj"]),
    };
    let before = logits(&base::<B>(12));
    let (model, report) = apply_ia3(base::<B>(12), &config, &device).unwrap();
    assert_eq!(logits(&model), before);
    // k, v: d_out 8 each; down_proj: d_in 24.
    assert_eq!(report.trainable, 2 * (8 + 8 + 24));

    let (model, _) = apply_ia3(base::<AD>(12), &config, &device).unwrap();
    let model = perturb_vectors(model, 13);
    let grads = loss(&model).backward();
    let mut probe = model.clone();
    let mut checked = 0;
    for (path, p) in probe.projections_mut() {
        assert!(
            p.weight.val().grad(&grads).is_none(),
            "{path}: frozen weight has a gradient"
        );
        let Some(a) = &p.adapter else { continue };
        let (part, v) = match (&a.input_scale, &a.output_scale) {
            (Some(v), None) => ("input_scale", v),
            (None, Some(v)) => ("output_scale", v),
            _ => panic!("{path}: one side only"),
        };
        assert_eq!(part == "input_scale", path.ends_with("down_proj"), "{path}");
        let grad: Vec<f32> = v.val().grad(&grads).unwrap().into_data().to_vec().unwrap();
        for index in [0, grad.len() - 1] {
            let h = 1e-2;
            let numeric = (nudged_loss(&model, &path, part, index, h)
                - nudged_loss(&model, &path, part, index, -h))
                / (2.0 * h);
            assert!(
                (numeric - grad[index]).abs() <= 2e-2 + 2e-2 * numeric.abs(),
                "{path}.{part}[{index}]: autodiff {} vs finite difference {numeric}",
                grad[index]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * 3 * 2);

    let (model, _) = apply_ia3(base::<B>(12), &config, &device).unwrap();
    let model = perturb_vectors(model, 14);
    let adapted = logits(&model);
    let mut folded = model.clone();
    for (_, p) in folded.projections_mut() {
        *p = merged(p);
    }
    let scale = adapted.iter().fold(1f32, |m, x| m.max(x.abs()));
    for (a, m) in adapted.iter().zip(&logits(&folded)) {
        assert!((a - m).abs() <= 1e-5 * scale, "merged {m} vs adapted {a}");
    }

    let stray = Ia3Config {
        targets: names(&["k_proj"]),
        feedforward: names(&["down_proj"]),
    };
    let err = apply_ia3(base::<B>(12), &stray, &device).unwrap_err();
    assert!(
        err.0.contains("peft.feedforward_modules") && err.0.contains("down_proj"),
        "{err}"
    );
}

/// Prefix tuning with a KV cache (and a sliding window shorter than prefix + sequence):
/// decoding token by token after the prefixes gives the logits of one full pass; the
/// prefix gradients match finite differences.
#[test]
fn prefix_tuning_decodes_with_a_cache_and_its_prefixes_train() {
    let _draws = exclusive();
    use ember_nn::{ContiguousKvCache, KvCache};
    use ember_peft::PrefixTuning;
    let device = Default::default();
    let mut windowed = config();
    windowed.sliding_window = Some(5);
    for (name, config) in [("gqa", config()), ("sliding-window", windowed)] {
        B::seed(&device, 20);
        let model = Transformer::<B>::new(&config, &device).unwrap();
        let prefix = PrefixTuning::<B>::new(&config, 3, &device);
        let full: Vec<f32> = prefix
            .forward(&model, ids(&INPUT))
            .into_data()
            .to_vec()
            .unwrap();
        let vocab = config.vocab_size;
        let prefixes = prefix.prefixes(1);
        let mut cache = ContiguousKvCache::<B>::new(config.n_layers);
        for (t, &token) in INPUT.iter().enumerate() {
            let options = ForwardOptions {
                cache: Some(&mut cache as &mut dyn KvCache<B>),
                prefixes: Some(&prefixes),
                position_offset: prefix.n_virtual(),
                ..Default::default()
            };
            let step: Vec<f32> = model
                .forward(ids(&[token]), options)
                .into_data()
                .to_vec()
                .unwrap();
            let want = &full[t * vocab..(t + 1) * vocab];
            for (g, w) in step.iter().zip(want) {
                assert!((g - w).abs() < 1e-4, "{name} token {t}: {g} vs {w}");
            }
        }
    }

    AD::seed(&device, 21);
    let model = base::<AD>(22);
    let prefix = PrefixTuning::<AD>::new(&config(), 2, &device);
    let weights: Vec<f32> = (0..INPUT.len() * 19)
        .map(|i| ((i * 13 % 7) as f32 - 3.0) / 3.0)
        .collect();
    let objective = |p: &PrefixTuning<AD>| {
        let out = p.forward(&model, ids(&INPUT));
        (out * Tensor::<AD, 3>::from_data(
            TensorData::new(weights.clone(), [1, INPUT.len(), 19]),
            &device,
        ))
        .sum()
    };
    let grads = objective(&prefix).backward();
    let grad: Vec<f32> = prefix
        .embeddings
        .val()
        .grad(&grads)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let values: Vec<f32> = prefix.embeddings.val().into_data().to_vec().unwrap();
    let shape = prefix.embeddings.dims();
    check_central_differences("prefix", &values, &grad, |v| {
        let moved = PrefixTuning::<AD>::from_embeddings(
            &config(),
            Tensor::from_data(TensorData::new(v, shape), &device),
        )
        .unwrap();
        objective(&moved).into_scalar().elem()
    });
}

/// Central differences of `loss` at three entries of `values` (step 1e-2) against the
/// autodiff gradient `grad`.
fn check_central_differences(
    what: &str,
    values: &[f32],
    grad: &[f32],
    loss: impl Fn(Vec<f32>) -> f32,
) {
    for index in [0, grad.len() / 2, grad.len() - 1] {
        let at = |delta: f32| {
            let mut v = values.to_vec();
            v[index] += delta;
            loss(v)
        };
        let h = 1e-2;
        let numeric = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (numeric - grad[index]).abs() <= 2e-2 + 2e-2 * numeric.abs(),
            "{what}[{index}]: autodiff {} vs finite difference {numeric}",
            grad[index]
        );
    }
}

/// Prompt tuning: the soft prompt's gradients match finite differences; with a prompt
/// equal to some tokens' embeddings, the real tokens' logits are those of the plain model
/// on those tokens followed by the sequence.
#[test]
fn prompt_tuning_is_a_prefix_of_embeddings_and_trains() {
    let _draws = exclusive();
    use ember_peft::PromptTuning;
    let device = Default::default();
    let model = base::<B>(23);
    let virtual_ids = [3i64, 7, 1];
    let table = model.tok_embeddings.weight.val();
    let rows: Vec<Tensor<B, 2>> = virtual_ids
        .iter()
        .map(|&i| table.clone().narrow(0, i as usize, 1))
        .collect();
    let prompt = PromptTuning::<B>::from_embeddings(model.config(), Tensor::cat(rows, 0)).unwrap();
    let got: Vec<f32> = prompt
        .forward(&model, ids(&INPUT))
        .into_data()
        .to_vec()
        .unwrap();
    let joined: Vec<i64> = virtual_ids.iter().chain(INPUT.iter()).copied().collect();
    let plain: Vec<f32> = model
        .forward(ids(&joined), ForwardOptions::default())
        .into_data()
        .to_vec()
        .unwrap();
    let vocab = 19;
    let want = &plain[virtual_ids.len() * vocab..];
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }

    let model = base::<AD>(24);
    AD::seed(&device, 25);
    let prompt = PromptTuning::<AD>::new(model.config(), 2, &device);
    let objective = |p: &PromptTuning<AD>| {
        let out = p.forward(&model, ids(&INPUT));
        let n: usize = out.dims().iter().product();
        let w: Vec<f32> = (0..n).map(|i| ((i * 5 % 9) as f32 - 4.0) / 4.0).collect();
        (out * Tensor::<AD, 3>::from_data(TensorData::new(w, [1, INPUT.len(), vocab]), &device))
            .sum()
    };
    let grads = objective(&prompt).backward();
    let grad: Vec<f32> = prompt
        .embeddings
        .val()
        .grad(&grads)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let values: Vec<f32> = prompt.embeddings.val().into_data().to_vec().unwrap();
    let shape = prompt.embeddings.dims();
    check_central_differences("prompt", &values, &grad, |v| {
        let moved = PromptTuning::<AD>::from_embeddings(
            model.config(),
            Tensor::from_data(TensorData::new(v, shape), &device),
        )
        .unwrap();
        objective(&moved).into_scalar().elem()
    });
}
