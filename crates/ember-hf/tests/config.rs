//! `config.json` mapping: both transformers generations' RoPE spellings, the options each
//! architecture allows, and clear errors (naming the key) for what Ember cannot run.

use std::path::Path;

use ember_hf::{HfArch, export_arch, parse_config};
use ember_nn::{MlpKind, PositionKind, TransformerConfig};
use ember_ops::RopeScaling;
use serde_json::{Value, json};

fn llama() -> Value {
    json!({
        "model_type": "llama", "vocab_size": 100, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
        "eos_token_id": [2, 7], "bos_token_id": 1
    })
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn parse(value: &Value) -> Result<ember_hf::HfConfig, String> {
    parse_config(value, Path::new("dir/config.json")).map_err(|e| e.to_string())
}

#[test]
fn transformers_4_and_5_rope_spellings_agree() {
    let v4 = with(
        llama(),
        json!({"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 4.0}}),
    );
    let v4_rope_type = with(
        llama(),
        json!({"rope_theta": 500000.0, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    );
    let v5 = with(
        llama(),
        json!({"rope_parameters": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0}}),
    );
    let a = parse(&v4).unwrap();
    assert_eq!(a.model.rope_theta, 500000.0);
    assert_eq!(
        a.model.rope_scaling,
        Some(RopeScaling::Linear { factor: 4.0 })
    );
    assert_eq!(a, parse(&v4_rope_type).unwrap());
    assert_eq!(a, parse(&v5).unwrap());
    assert_eq!(a.eos_token_ids, vec![2, 7]);
    assert_eq!(a.bos_token_id, Some(1));
}

#[test]
fn scaling_types_map_to_ember() {
    let dynamic = parse(&with(
        llama(),
        json!({"rope_scaling": {"type": "dynamic", "factor": 2.0}}),
    ))
    .unwrap();
    assert_eq!(
        dynamic.model.rope_scaling,
        Some(RopeScaling::DynamicNtk {
            factor: 2.0,
            original_max_seq: 256
        })
    );
    assert_eq!(
        dynamic.model.max_seq_len, 512,
        "dynamic NTK extends the context"
    );
    let llama3 = parse(&with(
        llama(),
        json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    ))
    .unwrap();
    assert_eq!(
        llama3.model.rope_scaling,
        Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_seq: 64
        })
    );
    let default = parse(&with(llama(), json!({"rope_scaling": null}))).unwrap();
    assert_eq!(default.model.rope_scaling, None);
    assert_eq!(default.model.rope_theta, 10_000.0);
}

#[test]
fn architecture_options() {
    let qwen = parse(&with(
        llama(),
        json!({"model_type": "qwen2", "use_sliding_window": false, "sliding_window": 4096}),
    ))
    .unwrap();
    assert_eq!(qwen.arch, HfArch::Qwen2);
    assert!(qwen.model.qkv_bias());
    assert_eq!(
        qwen.model.sliding_window, None,
        "use_sliding_window = false"
    );
    let mistral = parse(&with(
        llama(),
        json!({"model_type": "mistral", "sliding_window": 32}),
    ))
    .unwrap();
    assert_eq!(mistral.model.sliding_window, Some(32));
    let v5_full = parse(&with(
        llama(),
        json!({"model_type": "mistral", "sliding_window": 32, "layer_types": ["full_attention", "full_attention"]}),
    ))
    .unwrap();
    assert_eq!(v5_full.model.sliding_window, None, "layer_types win");
    let mixtral = parse(&with(
        llama(),
        json!({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}),
    ))
    .unwrap();
    let moe = mixtral.model.moe.unwrap();
    assert_eq!((moe.n_experts, moe.top_k, moe.renormalize), (8, 2, true));
    let gpt2 = parse(&json!({
        "model_type": "gpt2", "vocab_size": 50, "n_embd": 32, "n_layer": 2, "n_head": 4,
        "n_positions": 64
    }))
    .unwrap();
    assert_eq!(gpt2.model.mlp, MlpKind::GeluTanh, "gelu_new is the default");
    assert_eq!(gpt2.model.d_ff, 128);
    assert_eq!(gpt2.model.position, PositionKind::Learned);
    assert!(gpt2.model.tie_embeddings);
}

#[test]
fn unsupported_settings_name_their_key() {
    let cases = [
        (json!({"model_type": "bert"}), "`model_type` is `bert`"),
        (json!({"hidden_size": null}), "`hidden_size` is missing"),
        (json!({"head_dim": 0}), "model.head_dim"),
        (json!({"hidden_act": "gelu"}), "`hidden_act` is `gelu`"),
        (json!({"attention_bias": true}), "`attention_bias`"),
        (
            json!({"rope_scaling": {"type": "yarn", "factor": 4.0}}),
            "`rope_scaling.rope_type` is `yarn`",
        ),
        (
            json!({"rope_scaling": {"type": "linear"}}),
            "`rope_scaling.factor` is missing",
        ),
        (json!({"num_attention_heads": 3}), "model.d_model"),
        (json!({"num_key_value_heads": 3}), "model.n_kv_heads"),
        (
            json!({"model_type": "mistral", "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]}),
            "mixes sliding and full",
        ),
        (
            json!({"vocab_size": "many"}),
            "`vocab_size` must be a non-negative integer",
        ),
    ];
    for (extra, needle) in cases {
        let err = parse(&with(llama(), extra.clone())).unwrap_err();
        assert!(err.starts_with("dir/config.json: "), "{err}");
        assert!(err.contains(needle), "{extra}: `{needle}` not in {err}");
    }
}

#[test]
fn export_architecture_follows_the_model() {
    let llama = TransformerConfig::llama(10, 16, 1, 2, 1, 32, 8);
    assert_eq!(export_arch(&llama), Ok(HfArch::Llama));
    assert_eq!(
        export_arch(&TransformerConfig::mistral(10, 16, 1, 2, 1, 32, 8, 4)),
        Ok(HfArch::Mistral)
    );
    assert_eq!(
        export_arch(&TransformerConfig::mixtral(10, 16, 1, 2, 1, 32, 8, 2, 1)),
        Ok(HfArch::Mixtral)
    );
    let qwen = TransformerConfig {
        qkv_bias: Some(true),
        ..llama.clone()
    };
    assert_eq!(export_arch(&qwen), Ok(HfArch::Qwen2));
    let mut bias_free_gpt2 = TransformerConfig::gpt2(10, 16, 1, 2, 8);
    bias_free_gpt2.bias = false;
    assert_eq!(
        export_arch(&bias_free_gpt2),
        Ok(HfArch::Gpt2),
        "zero biases are written"
    );
    for (config, needle) in [
        (
            TransformerConfig {
                position: PositionKind::Alibi,
                ..llama.clone()
            },
            "model.position",
        ),
        (
            TransformerConfig {
                qk_norm: true,
                ..llama.clone()
            },
            "model.qk_norm",
        ),
        (
            TransformerConfig {
                parallel_residual: true,
                ..llama.clone()
            },
            "model.parallel_residual",
        ),
        (
            TransformerConfig {
                mlp: MlpKind::GeGlu,
                ..llama.clone()
            },
            "model.mlp",
        ),
    ] {
        let err = export_arch(&config).unwrap_err();
        assert!(err.contains(needle), "{err}");
    }
}
