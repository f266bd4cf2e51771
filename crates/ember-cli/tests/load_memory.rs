//! Loading a Hugging Face checkpoint holds one copy of the weights: the peak resident
//! memory of `ember logits` on a ~100 MB f32 model stays under 1.5× the weights' size.
//! (Its own test binary: `getrusage(RUSAGE_CHILDREN)` reports the largest child of this
//! process, so no other test may spawn one here; the weights are streamed to disk so this
//! process stays small, as a child counts its parent's pages until it executes.)

use std::process::Command;

use std::io::Write;
use std::path::Path;

#[test]
fn loading_holds_one_copy_of_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (vocab, d, ff, layers) = (16_000usize, 512usize, 1024usize, 2usize);
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": vocab, "hidden_size": d,
        "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": 8,
        "num_key_value_heads": 8, "max_position_embeddings": 64, "tie_word_embeddings": false,
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, d]),
        ("lm_head.weight".into(), vec![vocab, d]),
        ("model.norm.weight".into(), vec![d]),
    ];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            shapes.push((format!("{p}.{norm}.weight"), vec![d]));
        }
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            shapes.push((format!("{p}.self_attn.{proj}.weight"), vec![d, d]));
        }
        for (proj, shape) in [
            ("gate_proj", [ff, d]),
            ("up_proj", [ff, d]),
            ("down_proj", [d, ff]),
        ] {
            shapes.push((format!("{p}.mlp.{proj}.weight"), shape.to_vec()));
        }
    }
    let weights = dir.path().join("model.safetensors");
    write_streaming(&weights, &shapes);
    let size = std::fs::metadata(&weights).unwrap().len() as f64;

    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "logits",
            "--model",
            dir.path().to_str().unwrap(),
            "--ids",
            "1,2,3",
        ])
        .args([
            "--out",
            dir.path().join("logits.safetensors").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: getrusage fills the struct it is given.
    let peak = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage), 0);
        usage.ru_maxrss as f64 * 1024.0
    };
    let ratio = peak / size;
    println!(
        "weights {:.1} MB, peak RSS {:.1} MB, ratio {ratio:.2}",
        size / 1e6,
        peak / 1e6
    );
    assert!(ratio <= 1.5, "peak RSS is {ratio:.2}x the weights");
}

/// Writes a safetensors file of pseudo-random f32 tensors without holding them in memory.
fn write_streaming(path: &Path, shapes: &[(String, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in shapes {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::Value::Object(header).to_string();
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    file.write_all(&(header.len() as u64).to_le_bytes())
        .unwrap();
    file.write_all(header.as_bytes()).unwrap();
    let mut seed = 1u64;
    for (_, shape) in shapes {
        for _ in 0..shape.iter().product::<usize>() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
            file.write_all(&v.to_le_bytes()).unwrap();
        }
    }
    file.flush().unwrap();
}
