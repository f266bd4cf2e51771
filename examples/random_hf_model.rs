//! Writes a random-weight model of a named shape as a Hugging Face directory, for the
//! decoding benchmarks (`cargo xtask bench --suite decode`).
//!
//! ```sh
//! cargo run --release -p ember-examples --example random_hf_model -- stories15m OUT_DIR
//! ```
//!
//! `llama110m` (the fine-tuning benchmark's): dim 768, 12 layers, 12 heads, hidden 2048,
//! vocabulary 32000, context 512, tied classifier.
//!
//! `stories15m` is llama2.c's stories15M shape: dim 288, 6 layers, 6 heads, hidden 768,
//! vocabulary 32000, context 256, classifier tied to the embedding (seeded normal(0, 0.02)
//! weights, unit norms).

use burn::tensor::backend::Backend;
use ember_hf::{GenerationConfig, WeightDType, export};
use ember_nn::{Transformer, TransformerConfig};

type B = burn_flex::Flex;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [shape, out] = args.as_slice() else {
        return Err("usage: random_hf_model stories15m|llama110m OUT_DIR".into());
    };
    let config = match shape.as_str() {
        "stories15m" => TransformerConfig {
            // llama2.c shares the classifier with the token embedding.
            tie_embeddings: true,
            ..TransformerConfig::llama(32000, 288, 6, 6, 6, 768, 256)
        },
        // The fine-tuning benchmark's model (`cargo xtask bench --suite finetune`): a
        // Llama of GPT-2 small's width and depth, 110M parameters with the tied classifier.
        "llama110m" => TransformerConfig {
            tie_embeddings: true,
            ..TransformerConfig::llama(32000, 768, 12, 12, 12, 2048, 512)
        },
        other => {
            return Err(format!(
                "unknown shape `{other}` (known: stories15m, llama110m)"
            ));
        }
    };
    let device = Default::default();
    B::seed(&device, 15);
    let model = Transformer::<B>::new(&config, &device).map_err(|e| e.to_string())?;
    let arch = export(
        &model,
        None,
        &GenerationConfig::default(),
        std::path::Path::new(out),
        WeightDType::F32,
    )
    .map_err(|e| e.to_string())?;
    println!(
        "wrote a random {shape} ({} parameters) as {} to {out}",
        config.num_params(),
        arch.model_type()
    );
    Ok(())
}
