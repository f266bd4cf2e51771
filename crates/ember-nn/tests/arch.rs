//! Architecture components against independent references: the MoE layer against a dense
//! mixture (every expert on every token), GroupNorm against burn's, init schemes against
//! their target statistics, document masking through a whole model, parameter counts,
//! and the config errors.

use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::nn::GroupNormConfig;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, ElementConversion, Int, Tensor, TensorData};
use ember_nn::moe::route;
use ember_nn::{
    ForwardOptions, InitScheme, MlpKind, Moe, MoeConfig, Norm, NormKind, PositionKind, Transformer,
    TransformerConfig,
};
use ember_ops::MaskMod;

type B = Flex;
type AD = Autodiff<Flex>;

fn moe_config(top_k: usize, capacity_factor: Option<f64>) -> MoeConfig {
    MoeConfig {
        n_experts: 4,
        top_k,
        renormalize: true,
        capacity_factor,
        aux_loss_coef: 0.01,
        z_loss_coef: 0.001,
    }
}

fn new_moe<Bk: ember_nn::FusedBackend>(config: &MoeConfig) -> Moe<Bk> {
    let mut model = TransformerConfig::llama(8, 16, 1, 2, 2, 24, 8);
    model.init_std = 0.5;
    let init = ember_nn::init::Init::new(&model);
    Bk::seed(&Default::default(), 3);
    Moe::new(config, 16, 24, false, &init, &Default::default())
}

/// The top-k experts of each row by repeated argmax (ties to the lower index).
fn top_k_by_argmax(probs: &[f32], n_experts: usize, k: usize) -> Vec<Vec<usize>> {
    probs
        .chunks(n_experts)
        .map(|row| {
            let mut taken = vec![false; n_experts];
            (0..k)
                .map(|_| {
                    let best = (0..n_experts)
                        .filter(|&e| !taken[e])
                        .fold(None, |best: Option<usize>, e| match best {
                            Some(b) if row[b] >= row[e] => Some(b),
                            _ => Some(e),
                        })
                        .unwrap();
                    taken[best] = true;
                    best
                })
                .collect()
        })
        .collect()
}

/// Every expert on every token, weighted by the renormalised top-k router probabilities;
/// `drop` zeroes chosen `(token, expert)` pairs after renormalisation.
fn dense_moe<Bk: ember_nn::FusedBackend>(
    moe: &Moe<Bk>,
    x: Tensor<Bk, 2>,
    drop: &[(usize, usize)],
) -> Tensor<Bk, 2> {
    let device = x.device();
    let [tokens, _] = x.dims();
    let n = moe.experts.len();
    let probs = softmax(x.clone().matmul(moe.router.weight.val()), 1);
    let host: Vec<f32> = probs.clone().into_data().to_vec().unwrap();
    let chosen = top_k_by_argmax(&host, n, moe.top_k);
    let mut keep = vec![0f32; tokens * n];
    for (t, experts) in chosen.iter().enumerate() {
        for &e in experts {
            keep[t * n + e] = 1.0;
        }
    }
    let keep_t = Tensor::<Bk, 2>::from_data(TensorData::new(keep.clone(), [tokens, n]), &device);
    let weights = probs * keep_t;
    let weights = weights.clone() / weights.sum_dim(1);
    let mut served = keep;
    for &(t, e) in drop {
        served[t * n + e] = 0.0;
    }
    let weights =
        weights * Tensor::<Bk, 2>::from_data(TensorData::new(served, [tokens, n]), &device);
    let mut out = Tensor::<Bk, 2>::zeros(x.dims(), &device);
    for (e, expert) in moe.experts.iter().enumerate() {
        out = out + expert.forward_rows(x.clone()) * weights.clone().narrow(1, e, 1);
    }
    out
}

fn max_diff<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
    (a - b).abs().max().into_scalar().elem()
}

#[test]
fn moe_matches_the_dense_mixture_in_values_and_gradients() {
    for top_k in [1, 2, 3] {
        let moe = new_moe::<AD>(&moe_config(top_k, None));
        let x = Tensor::<AD, 2>::random(
            [13, 16],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        )
        .require_grad();
        let (out, aux) = moe.forward_rows(x.clone());
        assert_eq!(aux.dropped, 0);
        assert_eq!(aux.load.iter().sum::<usize>(), 13 * top_k);
        let want = dense_moe(&moe, x.clone(), &[]);
        assert!(
            max_diff(out.clone(), want.clone()) < 1e-5,
            "top-{top_k} values"
        );
        let w = Tensor::<AD, 2>::random(
            [13, 16],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        );
        let g_got = (out * w.clone()).sum().backward();
        let g_want = (want * w).sum().backward();
        let pairs = [
            ("x", x.grad(&g_got).unwrap(), x.grad(&g_want).unwrap()),
            (
                "router",
                moe.router.weight.val().grad(&g_got).unwrap(),
                moe.router.weight.val().grad(&g_want).unwrap(),
            ),
        ];
        for (name, got, want) in pairs {
            let d = max_diff(got, want);
            assert!(d < 1e-5, "top-{top_k} d{name} differs by {d}");
        }
        for (e, expert) in moe.experts.iter().enumerate() {
            let w = expert.down_proj.weight.val();
            match (w.grad(&g_got), w.grad(&g_want)) {
                (Some(a), Some(b)) => {
                    // f32 rounding relative to the gradient's size (the test binary's other
                    // tests draw from the same generator, so the weights vary run to run).
                    let scale: f32 = b.clone().abs().max().into_scalar().elem();
                    let d = max_diff(a, b);
                    assert!(
                        d < 1e-5 * scale.max(1.0),
                        "top-{top_k} expert {e} down_proj differs by {d} (largest {scale})"
                    );
                }
                // An expert no token chose is never run: its dense gradient must be zero.
                (None, Some(b)) => {
                    let m: f32 = b.abs().max().into_scalar().elem();
                    assert_eq!(m, 0.0, "top-{top_k} expert {e} was skipped but matters");
                }
                (None, None) => {}
                (Some(_), None) => panic!("expert {e}: a gradient the dense mixture lacks"),
            }
        }
    }
}

#[test]
fn capacity_drops_later_assignments_first_choices_first() {
    // 10 tokens, top-2 of 4 experts, capacity ceil(0.5 · 20 / 4) = 3 per expert.
    let moe = new_moe::<B>(&moe_config(2, Some(0.5)));
    assert_eq!(moe.capacity(10), Some(3));
    let x = Tensor::<B, 2>::random(
        [10, 16],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let (out, aux) = moe.forward_rows(x.clone());
    // The dropped assignments, worked out independently: walk first choices in token
    // order, then second choices, counting per expert.
    let probs: Vec<f32> = softmax(x.clone().matmul(moe.router.weight.val()), 1)
        .into_data()
        .to_vec()
        .unwrap();
    let chosen = top_k_by_argmax(&probs, 4, 2);
    let mut used = [0usize; 4];
    let mut dropped = Vec::new();
    for slot in 0..2 {
        for (t, experts) in chosen.iter().enumerate() {
            let e = experts[slot];
            if used[e] < 3 {
                used[e] += 1;
            } else {
                dropped.push((t, e));
            }
        }
    }
    assert!(!dropped.is_empty(), "the draw should overflow some expert");
    assert_eq!(aux.dropped, dropped.len());
    assert_eq!(aux.load.iter().sum::<usize>(), 20);
    let want = dense_moe(&moe, x, &dropped);
    assert!(max_diff(out, want) < 1e-5);
}

#[test]
fn routing_groups_by_expert_with_ties_to_the_lower_index() {
    let probs = [
        0.4, 0.4, 0.1, 0.1, 0.1, 0.2, 0.3, 0.4, 0.25, 0.25, 0.25, 0.25,
    ];
    let r = route(&probs, 4, 2, None);
    assert_eq!(r.experts, vec![0, 1, 3, 2, 0, 1]);
    // Grouped by expert; within a group first choices (slot 0) precede second choices.
    assert_eq!(r.order, vec![0, 4, 1, 5, 3, 2]);
    assert_eq!(r.served, vec![2, 2, 1, 1]);
    let capped = route(&probs, 4, 2, Some(1));
    assert_eq!(capped.order, vec![0, 1, 3, 2]);
    assert_eq!(capped.load, vec![2, 2, 1, 1]);
}

#[test]
fn balance_and_z_losses_have_their_closed_form_for_a_uniform_router() {
    let mut moe = new_moe::<B>(&moe_config(2, None));
    moe.router.weight = moe.router.weight.map(|w| w.zeros_like());
    let x = Tensor::<B, 2>::random([6, 16], Distribution::Normal(0.0, 1.0), &Default::default());
    let (_, aux) = moe.forward_rows(x);
    // Uniform probabilities: ties send every token to experts 0 and 1, so f = (½, ½, 0, 0),
    // P = ¼ each, and the loss is 4 · (½·¼ + ½·¼) = 1; z = ln(4)².
    assert_eq!(aux.load, vec![6, 6, 0, 0]);
    let balance: f32 = aux.balance_loss.into_scalar();
    assert!((balance - 1.0).abs() < 1e-6, "{balance}");
    let z: f32 = aux.z_loss.into_scalar();
    assert!((z - 4f32.ln().powi(2)).abs() < 1e-5, "{z}");
}

#[test]
fn group_norm_per_token_equals_burns_group_norm_on_single_positions() {
    let device = Default::default();
    let (batch, seq, channels, groups) = (2, 5, 12, 3);
    let norm = Norm::<B>::new(NormKind::GroupNorm, channels, 1e-5, true, groups, &device);
    let Norm::GroupNorm(ours) = &norm else {
        panic!("a GroupNorm")
    };
    let gamma = Tensor::<B, 1>::random([channels], Distribution::Normal(1.0, 0.3), &device);
    let beta = Tensor::<B, 1>::random([channels], Distribution::Normal(0.0, 0.3), &device);
    let mut ours = ours.clone();
    ours.gamma = ours.gamma.map(|_| gamma.clone());
    ours.beta = ours.beta.map(|b| b.map(|_| beta.clone()));
    let norm = Norm::GroupNorm(ours);
    let mut burns = GroupNormConfig::new(groups, channels).init::<B>(&device);
    burns.gamma = burns.gamma.map(|g| g.map(|_| gamma.clone()));
    burns.beta = burns.beta.map(|b| b.map(|_| beta.clone()));
    let x = Tensor::<B, 3>::random(
        [batch, seq, channels],
        Distribution::Normal(0.5, 2.0),
        &device,
    );
    let got = norm.forward(x.clone());
    // burn's GroupNorm normalises [N, C, L] over (C/G, L); with L = 1 that is per token.
    let want = burns
        .forward(x.reshape([batch * seq, channels, 1]))
        .reshape([batch, seq, channels]);
    assert!(max_diff(got, want) < 1e-5);
}

#[test]
fn init_schemes_reach_their_target_statistics() {
    let device = Default::default();
    let mut config = TransformerConfig::llama(8, 256, 8, 4, 4, 512, 8);
    config.init_std = 0.02;
    let std_of = |t: Tensor<B, 2>| {
        let v: Vec<f32> = t.into_data().to_vec().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (
            var.sqrt(),
            v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64,
        )
    };
    let layer = |config: &TransformerConfig| {
        let model = Transformer::<B>::new(config, &device).unwrap();
        let block = &model.layers[0];
        let up = block.mlp.as_ref().unwrap().up_proj.weight.val();
        (
            block.attn.q_proj.weight.val(),
            up,
            block.attn.o_proj.weight.val(),
        )
    };
    let close = |got: f64, want: f64, what: &str| {
        assert!(
            (got / want - 1.0).abs() < 0.03,
            "{what}: std {got}, want {want}"
        );
    };
    config.init = InitScheme::Normal;
    let (q, _, o) = layer(&config);
    close(std_of(q).0, 0.02, "normal q_proj");
    close(std_of(o).0, 0.02, "normal o_proj");
    config.init = InitScheme::Gpt2;
    let (_, _, o) = layer(&config);
    close(std_of(o).0, 0.02 / 16f64.sqrt(), "gpt2 o_proj");
    config.init = InitScheme::Xavier;
    let (q, up, _) = layer(&config);
    // U(±a), a = sqrt(6 / (fan_in + fan_out)): std a / sqrt(3), nothing beyond a.
    let a = (6.0f64 / 512.0).sqrt();
    let (s, m) = std_of(q);
    close(s, a / 3f64.sqrt(), "xavier q_proj");
    assert!(m <= a + 1e-6);
    let a = (6.0f64 / 768.0).sqrt();
    close(std_of(up).0, a / 3f64.sqrt(), "xavier up_proj");
    config.init = InitScheme::Kaiming;
    let (q, _, _) = layer(&config);
    close(std_of(q).0, (2.0f64 / 256.0).sqrt(), "kaiming q_proj");
    config.zero_init_output = true;
    let (_, _, o) = layer(&config);
    assert_eq!(std_of(o), (0.0, 0.0));
}

/// Packing: a row holding several documents, with their document mask and positions that
/// restart at each document, gives every document the logits it has alone.
#[test]
fn a_packed_rows_documents_have_the_logits_they_have_alone() {
    let device = Default::default();
    for (name, position, window) in [
        ("rope", PositionKind::Rope, None),
        ("alibi+window", PositionKind::Alibi, Some(3)),
        ("learned", PositionKind::Learned, None),
        ("sinusoidal", PositionKind::Sinusoidal, None),
    ] {
        let mut config = TransformerConfig::llama(11, 16, 2, 4, 2, 24, 16);
        config.position = position;
        config.sliding_window = window;
        config.init_std = 0.3;
        let model = Transformer::<B>::new(&config, &device).unwrap();
        let documents: [&[i64]; 3] = [&[1, 2, 3, 4], &[5, 6, 7, 8, 9, 10], &[2, 4, 6]];
        let alone = |ids: &[i64]| {
            let n = ids.len();
            let tokens =
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids.to_vec(), [1, n]), &device);
            model.forward(tokens, ForwardOptions::default())
        };
        let packed_ids: Vec<i64> = documents.concat();
        let n = packed_ids.len();
        let doc_ids: Vec<u32> = documents
            .iter()
            .enumerate()
            .flat_map(|(d, ids)| std::iter::repeat_n(d as u32, ids.len()))
            .collect();
        let positions: Vec<usize> = documents.iter().flat_map(|ids| 0..ids.len()).collect();
        let mask = MaskMod::document(vec![doc_ids]);
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(packed_ids, [1, n]), &device);
        let packed = model.forward(
            tokens,
            ForwardOptions {
                documents: Some(&mask),
                positions: Some(ember_nn::Positions::PerToken(vec![positions])),
                ..Default::default()
            },
        );
        let mut start = 0;
        for ids in documents {
            let part = packed.clone().narrow(1, start, ids.len());
            let diff = max_diff(part, alone(ids));
            assert!(diff < 1e-5, "{name}: document at {start} differs by {diff}");
            start += ids.len();
        }
        // Without restarting the positions, the later documents differ for absolute
        // positions (RoPE and ALiBi depend on distances only, which packing keeps).
        if matches!(position, PositionKind::Learned | PositionKind::Sinusoidal) {
            let tokens = Tensor::<B, 2, Int>::from_data(
                TensorData::new(documents.concat(), [1, n]),
                &device,
            );
            let shifted = model.forward(
                tokens,
                ForwardOptions {
                    documents: Some(&mask),
                    ..Default::default()
                },
            );
            let diff = max_diff(shifted.narrow(1, 4, 6), alone(documents[1]));
            assert!(diff > 1e-3, "{name}: positions had no effect ({diff})");
        }
    }
}

#[test]
fn document_mask_isolates_packed_sequences() {
    let device = Default::default();
    for position in [
        PositionKind::Rope,
        PositionKind::Alibi,
        PositionKind::Learned,
    ] {
        let mut config = TransformerConfig::llama(11, 16, 2, 4, 2, 24, 16);
        config.position = position;
        config.init_std = 0.3;
        let model = Transformer::<B>::new(&config, &device).unwrap();
        // Positions 0..4 are document 0, 4..9 document 1.
        let docs = MaskMod::document(vec![vec![0, 0, 0, 0, 1, 1, 1, 1, 1]]);
        let run = |ids: Vec<i64>| {
            let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, 9]), &device);
            let options = ForwardOptions {
                documents: Some(&docs),
                ..Default::default()
            };
            model.forward(tokens, options)
        };
        let a = run(vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let b = run(vec![10, 0, 7, 3, 5, 6, 7, 8, 9]);
        // Document 1's logits ignore document 0's tokens; document 0's do not.
        let tail = |t: Tensor<B, 3>| t.narrow(1, 4, 5);
        assert!(
            max_diff(tail(a.clone()), tail(b.clone())) < 1e-5,
            "{position:?}"
        );
        assert!(max_diff(a.narrow(1, 0, 4), b.narrow(1, 0, 4)) > 1e-3);
    }
}

#[test]
fn parameter_counts_match_the_built_models() {
    let mut configs = vec![
        TransformerConfig::gpt2(11, 16, 2, 4, 16),
        TransformerConfig::llama(11, 16, 2, 4, 2, 24, 16),
        TransformerConfig::mistral(11, 16, 2, 4, 2, 24, 16, 4),
        TransformerConfig::mixtral(11, 16, 2, 4, 2, 24, 16, 4, 2),
    ];
    let mut c = TransformerConfig::llama(11, 16, 2, 4, 2, 24, 16);
    c.qk_norm = true;
    c.qkv_bias = Some(true);
    c.mlp = MlpKind::GeGlu;
    c.norm = NormKind::GroupNorm;
    c.norm_groups = 2;
    c.bias = true;
    c.norm_placement = ember_nn::NormPlacement::Sandwich;
    configs.push(c.clone());
    c.norm_placement = ember_nn::NormPlacement::Post;
    c.parallel_residual = true;
    configs.push(c);
    // Heads wider than d_model / n_heads (Qwen 3, pruned heads).
    let mut wide_heads = TransformerConfig::llama(11, 16, 2, 4, 2, 24, 16);
    wide_heads.head_dim = Some(6);
    wide_heads.qkv_bias = Some(true);
    configs.push(wide_heads);
    for config in configs {
        let model = Transformer::<B>::new(&config, &Default::default()).unwrap();
        assert_eq!(model.num_params(), config.num_params(), "{config:?}");
    }
}

#[test]
fn bad_architecture_values_name_the_key() {
    let base = || TransformerConfig::mixtral(11, 16, 2, 4, 2, 24, 16, 4, 2);
    let field = |c: TransformerConfig| c.validate().unwrap_err();
    let mut c = base();
    c.moe.as_mut().unwrap().top_k = 5;
    let e = field(c);
    assert_eq!(e.field, "moe.top_k");
    assert!(
        e.to_string().contains("between 1 and n_experts = 4, got 5"),
        "{e}"
    );
    let mut c = base();
    c.moe.as_mut().unwrap().n_experts = 0;
    assert_eq!(field(c).field, "moe.n_experts");
    let mut c = base();
    c.moe.as_mut().unwrap().capacity_factor = Some(0.0);
    assert_eq!(field(c).field, "moe.capacity_factor");
    let mut c = base();
    c.sliding_window = Some(0);
    assert_eq!(
        field(c).to_string(),
        "model.sliding_window: must be at least 1"
    );
    let mut c = base();
    c.partial_rotary_factor = 1.5;
    assert_eq!(field(c).field, "partial_rotary_factor");
    let mut c = base();
    c.position = PositionKind::Alibi;
    c.rope_scaling = Some(ember_ops::RopeScaling::Linear { factor: 2.0 });
    assert!(field(c).to_string().contains("does not use RoPE"));
    let mut c = base();
    c.rope_scaling = Some(ember_ops::RopeScaling::Linear { factor: -1.0 });
    assert_eq!(
        field(c).to_string(),
        "model.rope_scaling: factor must be positive, got -1"
    );
    let mut c = base();
    c.norm = NormKind::GroupNorm;
    c.norm_groups = 3;
    assert_eq!(field(c).field, "norm_groups");
    let mut c = base();
    c.attn_softcap = Some(-1.0);
    assert_eq!(field(c).field, "attn_softcap");
}

/// `Transformer::remove_heads` against an independent reference: the same model with
/// the removed heads' input rows of every `o_proj` set to zero (which silences exactly
/// those heads) gives the same logits; the pruned model's parameter count is its
/// configuration's. MHA with biases (a removed head takes its key and value head with
/// it) and GQA with q/k/v biases (every group loses one query head).
#[test]
fn removing_heads_computes_what_zeroing_their_outputs_computes() {
    use ember_nn::prune_heads::kept_heads;
    let gpt2 = TransformerConfig::gpt2(11, 16, 2, 4, 16);
    let mut llama = TransformerConfig::llama(11, 16, 2, 4, 2, 24, 16);
    llama.qkv_bias = Some(true);
    let importance = [vec![0.3, 0.1, 0.9, 0.2], vec![0.5, 0.6, 0.05, 0.7]];
    for (config, remove, expect_kv) in [(gpt2, 2, 2), (llama, 2, 2)] {
        let device = Default::default();
        B::seed(&device, 3);
        let mut config = config.clone();
        config.init_std = 0.2;
        let model = Transformer::<B>::new(&config, &device).unwrap();
        let kept: Vec<_> = importance
            .iter()
            .map(|scores| kept_heads(scores, config.n_kv_heads, remove).unwrap())
            .collect();
        let head_dim = config.head_dim();
        let mut values: std::collections::HashMap<String, TensorData> =
            ember_nn::param_values(&model).into_iter().collect();
        let reference = ember_nn::replace_params(model.clone(), &mut |path, _| {
            let mut data = values.remove(path).unwrap();
            for (layer, heads) in kept.iter().enumerate() {
                if path == format!("layers.{layer}.attn.o_proj.weight") {
                    let d_model = data.shape[1];
                    let mut w: Vec<f32> = data.to_vec().unwrap();
                    for h in (0..config.n_heads).filter(|h| !heads.query.contains(h)) {
                        w[h * head_dim * d_model..(h + 1) * head_dim * d_model].fill(0.0);
                    }
                    data = TensorData::new(w, data.shape.clone());
                }
            }
            Ok(data)
        })
        .unwrap();
        let pruned = model.remove_heads(&kept).unwrap();
        assert_eq!(pruned.config().n_heads, config.n_heads - remove);
        assert_eq!(pruned.config().n_kv_heads, expect_kv);
        assert_eq!(pruned.config().head_dim(), head_dim);
        assert_eq!(pruned.num_params(), pruned.config().num_params());
        assert!(pruned.num_params() < config.num_params());
        let tokens = || {
            Tensor::<B, 2, Int>::from_data(
                TensorData::new(vec![1i64, 5, 9, 2, 7, 3, 10, 4], [1, 8]),
                &device,
            )
        };
        let want = reference.forward(tokens(), ForwardOptions::default());
        let got = pruned.forward(tokens(), ForwardOptions::default());
        let diff = (want.clone() - got).abs().max().into_scalar().elem::<f32>();
        let scale = want.abs().max().into_scalar().elem::<f32>();
        assert!(diff <= 1e-5 * scale.max(1.0), "{:?}: Δ {diff}", config.mlp);
    }
    // Layers that disagree, heads that would lose their key/value head, ALiBi: refused.
    let config = TransformerConfig::llama(11, 16, 2, 4, 2, 24, 16);
    let model = Transformer::<B>::new(&config, &Default::default()).unwrap();
    let uneven = vec![
        ember_nn::KeptHeads {
            query: vec![0, 2],
            key_value: vec![0, 1],
        },
        ember_nn::KeptHeads {
            query: vec![0, 1, 2],
            key_value: vec![0, 1],
        },
    ];
    assert!(
        model
            .clone()
            .remove_heads(&uneven)
            .unwrap_err()
            .contains("layer 1")
    );
    let orphan = vec![
        ember_nn::KeptHeads {
            query: vec![0, 1],
            key_value: vec![0, 1]
        };
        2
    ];
    assert!(
        model
            .remove_heads(&orphan)
            .unwrap_err()
            .contains("key/value head")
    );
    let mut alibi = TransformerConfig::llama(11, 16, 2, 4, 4, 24, 16);
    alibi.position = PositionKind::Alibi;
    let model = Transformer::<B>::new(&alibi, &Default::default()).unwrap();
    let kept = vec![kept_heads(&[1.0, 2.0, 3.0, 4.0], 4, 1).unwrap(); 2];
    assert!(model.remove_heads(&kept).unwrap_err().contains("ALiBi"));
}
