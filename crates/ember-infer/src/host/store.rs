//! A [`HostDecoder`] on disk: one safetensors file holding its matrices as stored (f32,
//! int8 codes with block scales, or packed 4-bit codes with group scales), biases, norms
//! and embeddings, with the model's configuration in the file's metadata. What `ember
//! quantize` writes and `serve` / `generate` load without the f32 model.

use std::collections::HashMap;
use std::path::Path;

use ember_nn::{MlpKind, NormKind, PositionKind, TransformerConfig};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

use super::{HostDecoder, HostWeights, Layer, Linear, Matrix, Norm};

/// The `format` entry of the file's metadata.
pub const FORMAT: &str = "ember-host-decoder";

/// Tensors as `(dtype, shape, little-endian bytes)` by name.
type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn push_f32(out: &mut Tensors, name: String, shape: Vec<usize>, v: &[f32]) {
    out.push((name, Dtype::F32, shape, f32_bytes(v)));
}

fn push_matrix(out: &mut Tensors, name: &str, m: &Matrix) {
    match m {
        Matrix::F32 { rows, cols, data } => {
            push_f32(out, format!("{name}.weight"), vec![*rows, *cols], data)
        }
        Matrix::Q8 {
            rows,
            cols,
            q,
            scales,
        } => {
            let bytes = q.iter().map(|&v| v as u8).collect();
            out.push((format!("{name}.q8"), Dtype::I8, vec![*rows, *cols], bytes));
            let blocks = scales.len() / rows.max(&1);
            push_f32(out, format!("{name}.scales"), vec![*rows, blocks], scales);
        }
        Matrix::Q4 {
            rows,
            cols,
            q,
            scales,
        } => {
            let groups = cols.div_ceil(super::kernels::Q8_BLOCK);
            out.push((
                format!("{name}.q4"),
                Dtype::U8,
                vec![*rows, q.len() / rows.max(&1)],
                q.clone(),
            ));
            push_f32(out, format!("{name}.scales"), vec![*rows, groups], scales);
            // The column count is not in the packed shape (the last group is padded).
            out.push((
                format!("{name}.cols"),
                Dtype::I64,
                vec![1],
                (*cols as i64).to_le_bytes().to_vec(),
            ));
        }
    }
}

fn push_norm(out: &mut Tensors, name: &str, n: &Norm) {
    push_f32(out, format!("{name}.gamma"), vec![n.gamma.len()], &n.gamma);
    if let Some(beta) = &n.beta {
        push_f32(out, format!("{name}.beta"), vec![beta.len()], beta);
    }
}

impl HostDecoder {
    /// The weights' storage: `F32`, `Int8` or `Int4` (the LM head's).
    pub fn weights(&self) -> HostWeights {
        match self.lm_head {
            Matrix::F32 { .. } => HostWeights::F32,
            Matrix::Q8 { .. } => HostWeights::Int8,
            Matrix::Q4 { .. } => HostWeights::Int4,
        }
    }

    /// Writes the decoder to `path` (safetensors; the configuration in its metadata).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let mut out: Tensors = Vec::new();
        let d = self.config.d_model;
        push_f32(
            &mut out,
            "tok_embeddings".into(),
            vec![self.tok_embeddings.len() / d, d],
            &self.tok_embeddings,
        );
        if let Some(p) = &self.pos_embeddings {
            push_f32(&mut out, "pos_embeddings".into(), vec![p.len() / d, d], p);
        }
        for (i, l) in self.layers.iter().enumerate() {
            push_norm(&mut out, &format!("layers.{i}.attn_norm"), &l.attn_norm);
            push_norm(&mut out, &format!("layers.{i}.mlp_norm"), &l.mlp_norm);
            let linears = [
                ("attn.q_proj", Some(&l.q)),
                ("attn.k_proj", Some(&l.k)),
                ("attn.v_proj", Some(&l.v)),
                ("attn.o_proj", Some(&l.o)),
                ("mlp.gate_proj", l.gate.as_ref()),
                ("mlp.up_proj", Some(&l.up)),
                ("mlp.down_proj", Some(&l.down)),
            ];
            for (name, linear) in linears {
                let Some(linear) = linear else { continue };
                let name = format!("layers.{i}.{name}");
                push_matrix(&mut out, &name, &linear.weight);
                if let Some(b) = &linear.bias {
                    push_f32(&mut out, format!("{name}.bias"), vec![b.len()], b);
                }
            }
        }
        push_norm(&mut out, "final_norm", &self.final_norm);
        push_matrix(&mut out, "lm_head", &self.lm_head);
        let views: Vec<(String, TensorView)> = out
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                let view = TensorView::new(*dtype, shape.clone(), bytes)
                    .map_err(|e| format!("`{name}`: {e}"))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<_, String>>()?;
        let config = serde_json::to_string(&self.config).map_err(|e| e.to_string())?;
        let weights = format!("{:?}", self.weights()).to_lowercase();
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("config".to_string(), config),
            ("weights".to_string(), weights),
        ]);
        safetensors::serialize_to_file(views, Some(metadata), path)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads a decoder [`Self::save`] wrote; `Err` names the file and what is wrong.
    pub fn load(path: &Path) -> Result<Self, String> {
        let at = |m: String| format!("{}: {m}", path.display());
        let bytes = std::fs::read(path).map_err(|e| at(e.to_string()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| at(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(at(format!(
                "not a host-decoder file (metadata `format` is not `{FORMAT}`)"
            )));
        }
        let config: TransformerConfig = serde_json::from_str(
            meta.get("config")
                .ok_or_else(|| at("metadata has no `config`".into()))?,
        )
        .map_err(|e| at(format!("metadata `config`: {e}")))?;
        super::load::check(&config).map_err(at)?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| at(e.to_string()))?;
        let tensor = |name: &str, dtype: Dtype| -> Result<Option<&[u8]>, String> {
            match file.tensor(name) {
                Ok(t) if t.dtype() == dtype => Ok(Some(t.data())),
                Ok(t) => Err(at(format!(
                    "`{name}` is {:?}, expected {dtype:?}",
                    t.dtype()
                ))),
                Err(_) => Ok(None),
            }
        };
        let floats = |name: &str| -> Result<Option<Vec<f32>>, String> {
            Ok(tensor(name, Dtype::F32)?.map(|data| {
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            }))
        };
        let need = |name: &str| -> Result<Vec<f32>, String> {
            floats(name)?.ok_or_else(|| at(format!("missing tensor `{name}`")))
        };
        let sized = |name: &str, got: usize, want: usize| -> Result<(), String> {
            if got == want {
                Ok(())
            } else {
                Err(at(format!(
                    "`{name}` has {got} values, the config needs {want}"
                )))
            }
        };
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<Matrix, String> {
            if let Some(data) = floats(&format!("{name}.weight"))? {
                sized(&format!("{name}.weight"), data.len(), rows * cols)?;
                return Ok(Matrix::f32(rows, cols, data));
            }
            let scales = need(&format!("{name}.scales"))?;
            let blocks = cols.div_ceil(super::kernels::Q8_BLOCK);
            sized(&format!("{name}.scales"), scales.len(), rows * blocks)?;
            if let Some(q) = tensor(&format!("{name}.q8"), Dtype::I8)? {
                sized(&format!("{name}.q8"), q.len(), rows * cols)?;
                let q = q.iter().map(|&b| b as i8).collect();
                return Ok(Matrix::Q8 {
                    rows,
                    cols,
                    q,
                    scales,
                });
            }
            if let Some(q) = tensor(&format!("{name}.q4"), Dtype::U8)? {
                sized(&format!("{name}.q4"), q.len(), rows * blocks * 16)?;
                return Ok(Matrix::Q4 {
                    rows,
                    cols,
                    q: q.to_vec(),
                    scales,
                });
            }
            Err(at(format!("missing the weights of `{name}`")))
        };
        let linear = |name: String, rows: usize, cols: usize| -> Result<Linear, String> {
            let bias = floats(&format!("{name}.bias"))?;
            if let Some(b) = &bias {
                sized(&format!("{name}.bias"), b.len(), rows)?;
            }
            Ok(Linear {
                weight: matrix(&name, rows, cols)?,
                bias,
            })
        };
        let (rms, eps) = (config.norm == NormKind::RmsNorm, config.norm_eps as f32);
        let norm = |name: &str, width: usize| -> Result<Norm, String> {
            let gamma = need(&format!("{name}.gamma"))?;
            sized(&format!("{name}.gamma"), gamma.len(), width)?;
            Ok(Norm {
                gamma,
                beta: floats(&format!("{name}.beta"))?,
                rms,
                eps,
            })
        };
        let c = &config;
        let (d, hd) = (c.d_model, c.head_dim());
        let (q_width, kv_width) = (c.n_heads * hd, c.n_kv_heads * hd);
        let gated = matches!(c.mlp, MlpKind::SwiGlu | MlpKind::GeGlu);
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = format!("layers.{i}");
            layers.push(Layer {
                attn_norm: norm(&format!("{p}.attn_norm"), d)?,
                q: linear(format!("{p}.attn.q_proj"), q_width, d)?,
                k: linear(format!("{p}.attn.k_proj"), kv_width, d)?,
                v: linear(format!("{p}.attn.v_proj"), kv_width, d)?,
                o: linear(format!("{p}.attn.o_proj"), d, q_width)?,
                mlp_norm: norm(&format!("{p}.mlp_norm"), d)?,
                gate: if gated {
                    Some(linear(format!("{p}.mlp.gate_proj"), c.d_ff, d)?)
                } else {
                    None
                },
                up: linear(format!("{p}.mlp.up_proj"), c.d_ff, d)?,
                down: linear(format!("{p}.mlp.down_proj"), d, c.d_ff)?,
            });
        }
        let tok_embeddings = need("tok_embeddings")?;
        sized("tok_embeddings", tok_embeddings.len(), c.vocab_size * d)?;
        let pos_embeddings = floats("pos_embeddings")?;
        if let Some(p) = &pos_embeddings {
            sized("pos_embeddings", p.len(), c.max_seq_len * d)?;
        }
        let final_norm = norm("final_norm", d)?;
        let lm_head = matrix("lm_head", c.vocab_size, d)?;
        let rope = (c.position == PositionKind::Rope).then(|| c.rope_config());
        Ok(Self {
            inv_freq: rope.map_or((Vec::new(), 1.0), |r| r.inv_freq(c.max_seq_len)),
            rope,
            tok_embeddings,
            pos_embeddings,
            layers,
            final_norm,
            lm_head,
            config,
        })
    }
}
