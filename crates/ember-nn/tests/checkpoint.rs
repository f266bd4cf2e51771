//! Activation checkpointing: the gradients of a pass whose blocks run again in the backward
//! pass equal those of the plain pass, for every architecture option.

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use ember_nn::{
    ActivationCheckpointing, BlockCheckpoints, ForwardOptions, FusedBackend, MlpKind, MoeLosses,
    NormKind, NormPlacement, PositionKind, Transformer, TransformerConfig,
};

type B = Autodiff<Flex>;

/// The backend's generator is global: draws are serialised across the binary's tests.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn configs() -> Vec<(&'static str, TransformerConfig)> {
    let base = || {
        let mut c = TransformerConfig::llama(13, 16, 4, 4, 2, 24, 12);
        c.init_std = 0.2;
        c
    };
    let mut gpt = TransformerConfig::gpt2(13, 16, 4, 4, 12);
    gpt.init_std = 0.2;
    let mut gpt_dropout = gpt.clone();
    gpt_dropout.dropout = 0.2;
    let mut alibi = base();
    alibi.position = PositionKind::Alibi;
    alibi.sliding_window = Some(4);
    alibi.attn_softcap = Some(0.5);
    alibi.qk_norm = true;
    let mut sandwich = base();
    sandwich.mlp = MlpKind::GeGlu;
    sandwich.norm = NormKind::GroupNorm;
    sandwich.norm_groups = 2;
    sandwich.bias = true;
    sandwich.norm_placement = NormPlacement::Sandwich;
    let mut post = TransformerConfig::gpt2(13, 16, 4, 4, 12);
    post.init_std = 0.2;
    post.norm_placement = NormPlacement::Post;
    post.parallel_residual = true;
    post.position = PositionKind::Sinusoidal;
    let mut moe = TransformerConfig::mixtral(13, 16, 4, 4, 2, 24, 12, 4, 2);
    moe.init_std = 0.2;
    vec![
        ("gpt2-tied", gpt),
        ("gpt2-dropout", gpt_dropout),
        ("llama-gqa", base()),
        ("alibi+window+softcap+qk-norm", alibi),
        ("geglu+groupnorm+sandwich", sandwich),
        ("post-norm+parallel+sinusoidal", post),
        ("mixtral", moe),
    ]
}

/// Every parameter's gradient, by parameter id, as `f32` vectors in model order.
fn gradients<A: AutodiffBackend<InnerBackend = Flex>>(
    model: &Transformer<A>,
    grads: &GradientsParams,
) -> Vec<(String, Vec<f32>)> {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        out: Vec<(String, Vec<f32>)>,
    }
    impl<A: AutodiffBackend<InnerBackend = Flex>> ModuleVisitor<A> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
            let grad = self
                .grads
                .get::<Flex, D>(param.id)
                .map(|g| g.into_data().convert::<f32>().to_vec().unwrap())
                .unwrap_or_default();
            self.out.push((param.id.to_string(), grad));
        }
    }
    let mut collect = Collect {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut collect);
    collect.out
}

/// The loss a test differentiates: logits against fixed random weights, plus the MoE
/// auxiliary losses.
fn gradients_with<A: AutodiffBackend<InnerBackend = Flex> + FusedBackend>(
    model: &Transformer<A>,
    tokens: &Tensor<A, 2, Int>,
    weights: &Tensor<A, 3>,
    policy: ActivationCheckpointing,
    dropout_seed: u64,
) -> Vec<(String, Vec<f32>)> {
    let n_layers = model.layers.len();
    let device = Default::default();
    A::seed(&device, 99); // the embedding dropout, drawn before the blocks
    let mut checkpoints = BlockCheckpoints::new(policy).with_dropout_seed(dropout_seed);
    let mut moe = MoeLosses::default();
    let logits = model.forward(
        tokens.clone(),
        ForwardOptions {
            moe: Some(&mut moe),
            checkpoints: Some(&mut checkpoints),
            ..Default::default()
        },
    );
    let mut loss = (logits * weights.clone()).sum();
    if let (Some(balance), Some(z)) = (moe.balance_loss, moe.z_loss) {
        loss = loss + balance.mul_scalar(0.3) + z.mul_scalar(0.05);
    }
    // Never the last block.
    let chosen = (0..n_layers - 1)
        .filter(|&l| policy.recomputes_block(l))
        .count();
    assert_eq!(checkpoints.recorded(), chosen, "{policy}");
    let grads = checkpoints.backward(loss, model);
    gradients(model, &grads)
}

#[test]
fn checkpointed_gradients_equal_the_plain_ones() {
    let device = Default::default();
    for (name, config) in configs() {
        let _draw = RNG.lock().unwrap_or_else(|p| p.into_inner());
        B::seed(&device, 5);
        let model = Transformer::<B>::new(&config, &device).unwrap();
        let ids: Vec<i64> = (0..2 * 10).map(|i| (i * 7 + 3) % 13).collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 10]), &device);
        let weights = Tensor::<B, 3>::random([2, 10, 13], Distribution::Normal(0.0, 1.0), &device);
        let plain = gradients_with(&model, &tokens, &weights, ActivationCheckpointing::None, 7);
        for policy in [
            ActivationCheckpointing::Blocks,
            ActivationCheckpointing::Every(2),
            ActivationCheckpointing::Every(3),
        ] {
            let checkpointed = gradients_with(&model, &tokens, &weights, policy, 7);
            assert_eq!(plain.len(), checkpointed.len());
            for ((id, a), (_, b)) in plain.iter().zip(&checkpointed) {
                assert_eq!(a.len(), b.len(), "{name} {policy}: parameter {id}");
                assert!(!a.is_empty(), "{name}: parameter {id} has no gradient");
                let norm = a.iter().map(|v| v * v).sum::<f32>().sqrt();
                let diff = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y) * (x - y))
                    .sum::<f32>()
                    .sqrt();
                assert!(
                    diff <= 1e-6 * norm.max(1e-12),
                    "{name} {policy}: parameter {id}: |Δ| = {diff:e}, |g| = {norm:e}"
                );
            }
        }
        if name == "gpt2-dropout" {
            // The masks depend on the seed: another seed gives other gradients.
            let other = gradients_with(&model, &tokens, &weights, ActivationCheckpointing::None, 8);
            assert_ne!(plain, other, "dropout draws from the per-block seeds");
        }
    }
}

/// `selective`: burn's balanced strategy runs the fused norms and GELU (and burn's
/// memory-bound ops) again in the backward pass; the gradients do not change.
#[test]
fn selective_recomputation_gives_the_plain_gradients() {
    type Selective = Autodiff<Flex, BalancedCheckpointing>;
    assert!(Selective::recomputes_memory_bound_ops() && !B::recomputes_memory_bound_ops());
    let device = Default::default();
    for (name, config) in configs() {
        let _draw = RNG.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<i64> = (0..2 * 10).map(|i| (i * 5 + 1) % 13).collect();
        let data = TensorData::new(ids, [2, 10]);
        let plain = {
            B::seed(&device, 5);
            let model = Transformer::<B>::new(&config, &device).unwrap();
            let weights =
                Tensor::<B, 3>::random([2, 10, 13], Distribution::Normal(0.0, 1.0), &device);
            let tokens = Tensor::from_data(data.clone(), &device);
            gradients_with(&model, &tokens, &weights, ActivationCheckpointing::None, 3)
        };
        let selective = {
            Selective::seed(&device, 5);
            let model = Transformer::<Selective>::new(&config, &device).unwrap();
            let weights = Tensor::<Selective, 3>::random(
                [2, 10, 13],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let tokens = Tensor::from_data(data.clone(), &device);
            gradients_with(
                &model,
                &tokens,
                &weights,
                ActivationCheckpointing::Selective,
                3,
            )
        };
        assert_eq!(plain.len(), selective.len());
        for ((id, a), (_, b)) in plain.iter().zip(&selective) {
            assert!(!a.is_empty(), "{name}: parameter {id} has no gradient");
            assert_eq!(a, b, "{name}: parameter {id}");
        }
    }
}

#[test]
fn settings_parse_and_print() {
    for text in ["none", "blocks", "every:1", "every:4", "selective"] {
        let policy: ActivationCheckpointing = text.parse().unwrap();
        assert_eq!(policy.to_string(), text);
    }
    for bad in ["every:0", "every:", "every:x", "block", ""] {
        let err = bad.parse::<ActivationCheckpointing>().unwrap_err();
        assert!(err.contains("expected \"none\""), "{bad}: {err}");
    }
    let every = ActivationCheckpointing::Every(3);
    let chosen: Vec<usize> = (0..7).filter(|&l| every.recomputes_block(l)).collect();
    assert_eq!(chosen, [0, 3, 6]);
    assert!(!ActivationCheckpointing::Selective.recomputes_block(0));
}
