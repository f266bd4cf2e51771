//! Model tests, generic over the backend: they run on Flex, and on wgpu with
//! `--features test-wgpu` (lavapipe in CI).

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData, Tolerance};
use ember_nn::FusedBackend;
use ember_nn::{
    ContiguousKvCache, ForwardOptions, InitScheme, KvCache, LayerContext, MlpKind, NormKind,
    NormPlacement, PositionKind, Positions, Transformer, TransformerConfig, freeze_matching,
    matches_pattern, param_infos,
};
use ember_ops::reference::naive_attention;
use ember_ops::{RopeLayout, RopeScaling};

fn tokens<B: Backend>(ids: &[i64], batch: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    let seq = ids.len() / batch;
    Tensor::from_data(TensorData::new(ids.to_vec(), [batch, seq]), device)
}

/// The tests of one binary run on parallel threads, and a backend's random generator is
/// global to its device: every draw takes this lock, so a seeded draw is never
/// interleaved with another test's and its values do not depend on scheduling.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A model drawn from the backend's generator, seeded with `seed` when given.
fn new_model<B: FusedBackend>(
    config: &TransformerConfig,
    seed: Option<u64>,
    device: &B::Device,
) -> Transformer<B> {
    let _draw = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(seed) = seed {
        B::seed(device, seed);
    }
    Transformer::new(config, device).unwrap()
}

fn configs() -> Vec<(&'static str, TransformerConfig)> {
    let mut gpt = TransformerConfig::gpt2(11, 16, 2, 4, 16);
    gpt.init_std = 0.2;
    let mut llama_gqa = TransformerConfig::llama(11, 16, 2, 4, 2, 24, 16);
    llama_gqa.init_std = 0.2;
    let mut llama_mqa = TransformerConfig::llama(11, 16, 2, 4, 1, 24, 16);
    llama_mqa.init_std = 0.2;
    llama_mqa.tie_embeddings = true;
    let mut gelu_rope = TransformerConfig::llama(11, 16, 1, 2, 2, 24, 16);
    gelu_rope.mlp = MlpKind::Gelu;
    gelu_rope.bias = true;
    vec![
        ("gpt2", gpt),
        ("llama-gqa", llama_gqa),
        ("llama-mqa-tied", llama_mqa),
        ("gelu-rope-bias", gelu_rope),
    ]
}

/// Every architecture option in at least one small model (dense feed-forward only, so
/// finite differences see no routing switches).
fn variants() -> Vec<(&'static str, TransformerConfig)> {
    let base = || {
        let mut c = TransformerConfig::llama(11, 16, 2, 4, 2, 24, 16);
        c.init_std = 0.2;
        c
    };
    let mut sliding_alibi = base();
    sliding_alibi.position = PositionKind::Alibi;
    sliding_alibi.sliding_window = Some(3);
    let mut softcap = base();
    softcap.attn_softcap = Some(0.5);
    softcap.qk_norm = true;
    softcap.qkv_bias = Some(true);
    let mut sandwich = base();
    sandwich.mlp = MlpKind::GeGlu;
    sandwich.norm = NormKind::GroupNorm;
    // Groups of 8 channels: with groups of 4 a token's group variance can come close
    // to zero, where the norm's curvature defeats an f32 finite difference.
    sandwich.norm_groups = 2;
    sandwich.bias = true;
    sandwich.norm_placement = NormPlacement::Sandwich;
    let mut post = TransformerConfig::gpt2(11, 16, 2, 4, 16);
    post.init_std = 0.2;
    post.norm_placement = NormPlacement::Post;
    post.parallel_residual = true;
    post.position = PositionKind::Sinusoidal;
    let mut nope = base();
    nope.parallel_residual = true;
    nope.position = PositionKind::None;
    nope.init = InitScheme::Xavier;
    let mut yarn = base();
    yarn.rope_layout = RopeLayout::Interleaved;
    yarn.partial_rotary_factor = 0.5;
    yarn.rope_scaling = Some(RopeScaling::Yarn {
        factor: 2.0,
        original_max_seq: 8,
        beta_fast: 32.0,
        beta_slow: 1.0,
        attention_factor: None,
    });
    let mut llama3 = base();
    llama3.rope_scaling = Some(RopeScaling::Llama3 {
        factor: 4.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_seq: 8,
    });
    llama3.init = InitScheme::Kaiming;
    llama3.zero_init_output = true;
    vec![
        ("sliding-window+alibi", sliding_alibi),
        ("softcap+qk-norm+qkv-bias", softcap),
        ("geglu+groupnorm+sandwich", sandwich),
        ("post-norm+parallel+sinusoidal", post),
        ("parallel+nope+xavier", nope),
        ("interleaved-partial-yarn", yarn),
        ("llama3-scaling+kaiming+zero-out", llama3),
    ]
}

/// [`variants`] and a Mixtral-shaped MoE model.
fn all_variants() -> Vec<(&'static str, TransformerConfig)> {
    let mut moe = TransformerConfig::mixtral(11, 16, 2, 4, 2, 24, 16, 4, 2);
    moe.init_std = 0.2;
    let mut all = configs();
    all.extend(variants());
    all.push(("mixtral", moe));
    all
}

/// Attention of a real layer against the explicit reference built from its own projections.
fn attention_matches_naive<B: FusedBackend>(device: &B::Device) {
    for (_, config) in configs() {
        let model = new_model::<B>(&config, None, device);
        let attn = &model.layers[0].attn;
        let x: Tensor<B, 3> = {
            let _draw = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            Tensor::random(
                [2, 5, 16],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                device,
            )
        };
        let start = Positions::Uniform(0);
        let mut ctx = LayerContext::plain(0, &start, model.rope.as_ref());
        let got = attn.forward(x.clone(), &mut ctx);

        let (h, kv, d) = (attn.n_heads, attn.n_kv_heads, attn.head_dim);
        let split = |t: Tensor<B, 3>, n| t.reshape([2, 5, n, d]).swap_dims(1, 2);
        let mut q = split(attn.q_proj.forward(x.clone()), h);
        let mut k = split(attn.k_proj.forward(x.clone()), kv);
        let v = split(attn.v_proj.forward(x), kv);
        if let Some(rope) = &model.rope {
            q = rope.apply(q, 0);
            k = rope.apply(k, 0);
        }
        let ctx = naive_attention(q, k, v, true)
            .swap_dims(1, 2)
            .reshape([2, 5, h * d]);
        let want = attn.o_proj.forward(ctx);
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
    }
}

/// Feeding a sequence in chunks through the KV cache gives the logits of one full pass.
fn cached_forward_matches_full<B: FusedBackend>(device: &B::Device) {
    let ids: Vec<i64> = vec![1, 5, 2, 7, 3, 9, 4, 0, 6, 8, 10, 2, 3, 1];
    for (name, config) in all_variants() {
        let model = new_model::<B>(&config, None, device);
        let full = model.forward(tokens(&ids, 2, device), ForwardOptions::default());
        let mut cache = ContiguousKvCache::<B>::new(config.n_layers);
        let rows: Vec<Vec<i64>> = ids.chunks(7).map(|r| r.to_vec()).collect();
        let mut parts = Vec::new();
        for (from, to) in [(0, 3), (3, 4), (4, 7)] {
            let chunk: Vec<i64> = rows.iter().flat_map(|r| r[from..to].to_vec()).collect();
            let options = ForwardOptions {
                cache: Some(&mut cache),
                ..Default::default()
            };
            parts.push(model.forward(tokens(&chunk, 2, device), options));
        }
        assert_eq!(cache.len(), 7, "{name}");
        let cached = Tensor::cat(parts, 1);
        let diff = (cached - full).abs().max().into_scalar().elem::<f32>();
        assert!(
            diff < 1e-4,
            "{name}: cached and full forward differ by {diff}"
        );
    }
}

/// Adds `delta` to element `index` of the parameter `id`.
struct Nudge {
    id: ParamId,
    index: usize,
    delta: f32,
}

impl<B: Backend> ModuleMapper<B> for Nudge {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if param.id != self.id {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let device = tensor.device();
        let shape = tensor.shape();
        let mut values: Vec<f32> = tensor.into_data().convert::<f32>().to_vec().unwrap();
        values[self.index] += self.delta;
        let tensor = Tensor::from_data(TensorData::new(values, shape), &device);
        Param::from_mapped_value(id, tensor, mapper)
    }
}

fn mean_nll<B: FusedBackend>(
    model: &Transformer<B>,
    inputs: &[i64],
    targets: &[i64],
    device: &B::Device,
) -> Tensor<B, 1> {
    let logits = model.forward(tokens(inputs, 2, device), ForwardOptions::default());
    let [b, t, v] = logits.dims();
    let log_probs = burn::tensor::activation::log_softmax(logits.reshape([b * t, v]), 1);
    let targets: Tensor<B, 2, Int> =
        Tensor::from_data(TensorData::new(targets.to_vec(), [b * t, 1]), device);
    log_probs.gather(1, targets).mean().neg()
}

/// Autodiff gradients of the language-model loss against central finite differences.
fn gradients_match_finite_differences<B: AutodiffBackend + FusedBackend>(device: &B::Device) {
    let inputs: Vec<i64> = vec![1, 5, 2, 7, 3, 9, 4, 0, 6, 8, 10, 2];
    let targets: Vec<i64> = vec![5, 2, 7, 3, 9, 4, 6, 8, 10, 2, 1, 0];
    for (name, config) in configs().into_iter().chain(variants()) {
        // A fixed initialisation per model: f32 finite differences are only as good
        // as the draw, so the draw must not depend on what other tests ran before.
        let model = new_model::<B>(&config, Some(7), device);
        let grads = mean_nll(&model, &inputs, &targets, device).backward();
        let infos = param_infos::<B, _>(&model);
        let mut checked = 0;
        for info in &infos {
            // Sample a few elements of each parameter.
            let numel: usize = info.shape.iter().product();
            for index in [0, numel / 2, numel - 1] {
                let grad = grad_at::<B>(&model, &grads, info.id, index);
                // Small enough that curvature (a bias moves every token) stays below the
                // tolerance, large enough that f32 rounding of the loss does too.
                let h = 1e-3f32;
                let plus = model.clone().map(&mut Nudge {
                    id: info.id,
                    index,
                    delta: h,
                });
                let minus = model.clone().map(&mut Nudge {
                    id: info.id,
                    index,
                    delta: -h,
                });
                let lp: f32 = mean_nll(&plus, &inputs, &targets, device)
                    .into_scalar()
                    .elem();
                let lm: f32 = mean_nll(&minus, &inputs, &targets, device)
                    .into_scalar()
                    .elem();
                let numeric = (lp - lm) / (2.0 * h);
                assert!(
                    (numeric - grad).abs() <= 2e-3 + 2e-2 * numeric.abs(),
                    "{name}: {} [{index}]: autodiff {grad} vs finite difference {numeric}",
                    info.path
                );
                checked += 1;
            }
        }
        assert!(checked >= 30, "{name}: only {checked} elements checked");
    }
}

fn grad_at<B: AutodiffBackend>(
    model: &Transformer<B>,
    grads: &B::Gradients,
    id: ParamId,
    index: usize,
) -> f32 {
    struct Find<'a, B: AutodiffBackend> {
        id: ParamId,
        grads: &'a B::Gradients,
        out: Option<Vec<f32>>,
    }
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Find<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.id == self.id {
                let grad = param
                    .val()
                    .grad(self.grads)
                    .expect("parameter has a gradient");
                self.out = Some(grad.into_data().convert::<f32>().to_vec().unwrap());
            }
        }
    }
    let mut find = Find::<B> {
        id,
        grads,
        out: None,
    };
    model.visit(&mut find);
    find.out.expect("parameter found")[index]
}

fn parameter_paths_and_freezing<B: AutodiffBackend + FusedBackend>(device: &B::Device) {
    let config = TransformerConfig::llama(11, 16, 2, 4, 2, 24, 16);
    let model = new_model::<B>(&config, None, device);
    let paths: Vec<String> = param_infos::<B, _>(&model)
        .into_iter()
        .map(|p| p.path)
        .collect();
    for expected in [
        "tok_embeddings.weight",
        "layers.0.attn_norm.gamma",
        "layers.0.attn.q_proj.weight",
        "layers.1.attn.k_proj.weight",
        "layers.1.mlp.gate_proj.weight",
        "layers.1.mlp.down_proj.weight",
        "final_norm.gamma",
        "lm_head.weight",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "missing {expected} in {paths:?}"
        );
    }
    let total: usize = param_infos::<B, _>(&model)
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum();
    assert_eq!(total, config.num_params());
    assert_eq!(model.num_params(), config.num_params());

    let (model, frozen) = freeze_matching::<B, _>(model, &["layers.*.attn.*", "tok_embeddings.*"]);
    assert_eq!(frozen.len(), 2 * 4 + 1, "{frozen:?}");
    let loss = mean_nll(&model, &[1, 2, 3, 4], &[2, 3, 4, 5], device);
    let grads = loss.backward();
    assert!(
        model.layers[0]
            .attn
            .q_proj
            .weight
            .val()
            .grad(&grads)
            .is_none()
    );
    assert!(model.tok_embeddings.weight.val().grad(&grads).is_none());
    assert!(
        model.layers[0]
            .mlp
            .as_ref()
            .unwrap()
            .up_proj
            .weight
            .val()
            .grad(&grads)
            .is_some()
    );
}

#[test]
fn glob_patterns() {
    assert!(matches_pattern(
        "layers.*.attn.*",
        "layers.3.attn.q_proj.weight"
    ));
    assert!(matches_pattern("*.bias", "layers.0.mlp.up_proj.bias"));
    assert!(!matches_pattern(
        "layers.*.mlp.*",
        "layers.3.attn.q_proj.weight"
    ));
    assert!(matches_pattern("lm_head.weight", "lm_head.weight"));
    assert!(!matches_pattern("lm_head", "lm_head.weight"));
}

#[test]
fn config_errors_name_the_key() {
    let mut config = TransformerConfig::gpt2(10, 30, 1, 4, 8);
    assert_eq!(config.validate().unwrap_err().field, "d_model");
    config = TransformerConfig::llama(10, 32, 1, 4, 3, 64, 8);
    let err = config.validate().unwrap_err();
    assert_eq!(err.field, "n_kv_heads");
    assert!(err.to_string().contains("not divisible"), "{err}");
    config = TransformerConfig::llama(10, 12, 1, 4, 4, 64, 8);
    assert!(
        config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("even rotary dimension")
    );
    config = TransformerConfig::gpt2(0, 32, 1, 4, 8);
    assert_eq!(config.validate().unwrap_err().field, "vocab_size");
}

macro_rules! backend_tests {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;
            type B = $backend;
            type AD = burn::backend::Autodiff<$backend>;

            #[test]
            fn attention_matches_naive_reference() {
                attention_matches_naive::<B>(&Default::default());
            }
            #[test]
            fn cached_forward_matches_full_forward() {
                cached_forward_matches_full::<B>(&Default::default());
            }
            #[test]
            fn gradients_match_finite_differences() {
                super::gradients_match_finite_differences::<AD>(&Default::default());
            }
            #[test]
            fn parameter_paths_and_freezing() {
                super::parameter_paths_and_freezing::<AD>(&Default::default());
            }
        }
    };
}

backend_tests!(flex, burn::backend::Flex);
#[cfg(feature = "test-wgpu")]
backend_tests!(wgpu, burn::backend::Wgpu);
