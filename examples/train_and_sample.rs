//! Builds a small Llama-shaped model with the library crates directly, trains it for a
//! few steps on an in-memory corpus, and samples from it with the KV cache.
//!
//! `cargo run --release -p ember-examples --example train_and_sample`

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ember_data::{BatchSampler, CharTokenizer};
use ember_infer::{Generator, Sampler, SamplingConfig};
use ember_nn::{ForwardOptions, Transformer, TransformerConfig, param_infos};
use ember_optim::{
    AdamWGroups, AdamWSettings, LrSchedule, WarmupCosine, clip_global_norm, decay_matrices,
};
use ember_train::{CrossEntropy, LmLoss};

type B = Autodiff<Flex>;

fn main() {
    let device = Default::default();
    let text = "to be or not to be, that is the question. ".repeat(50);
    let tokenizer = CharTokenizer::from_text(&text);
    let tokens = tokenizer
        .encode(&text)
        .expect("every character is in the vocabulary");

    let config = TransformerConfig::llama(tokenizer.vocab_size(), 64, 2, 4, 2, 128, 32);
    let mut model = Transformer::<B>::new(&config, &device).expect("a valid config");
    let params = param_infos::<B, _>(&model)
        .into_iter()
        .map(|p| (p.id, p.path, p.shape));
    let settings = AdamWSettings {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut optim = AdamWGroups::new(&settings, params, decay_matrices);
    let schedule = WarmupCosine::new(3e-3, 3e-4, 10, 100);
    let loss_fn = CrossEntropy::<B>::new(None, &device);
    let mut sampler = BatchSampler::new(0);

    for step in 0..100 {
        let batch = sampler.sample(&tokens, 8, 32);
        let inputs =
            Tensor::<B, 2, Int>::from_data(TensorData::new(batch.inputs, [8, 32]), &device);
        let targets =
            Tensor::<B, 2, Int>::from_data(TensorData::new(batch.targets, [8, 32]), &device);
        let loss = loss_fn.loss(model.forward(inputs, ForwardOptions::default()), targets);
        let value: f64 = loss.clone().into_scalar().elem();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        clip_global_norm(&model, &mut grads, 1.0);
        model = optim.step(schedule.lr_at(step), model, grads);
        if step % 20 == 0 {
            println!("step {step:3}  loss {value:.4}");
        }
    }

    let model = model.valid();
    let prompt = tokenizer.encode("to be").unwrap();
    let mut sampler = Sampler::new(SamplingConfig::greedy());
    let out = Generator::new(&model, &device, true)
        .generate(&prompt, 40, &mut sampler, |_| {})
        .expect("a valid prompt");
    println!("to be{}", tokenizer.decode(&out).unwrap());
}
