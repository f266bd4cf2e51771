//! A fine-tune's examples: read from `--data FILE.jsonl`, split, encoded with the base's
//! tokenizer and chat template, and laid into rows (see [`ember_data::sft`]).

use std::path::Path;

use ember_data::Tokenizer;
use ember_data::sft::{
    ChatTemplate, Encoded, Encoder, PackOptions, PackedRows, pack, read_jsonl, split_examples,
};
use ember_model::ModelDir;
use ember_model::checkpoint::format::FileDigest;

use super::config::FinetuneConfig;
use crate::config::ConfigError;
use crate::shards::Rows;
use crate::trainer::TrainError;

/// The rows a run trains and validates on, and what building them found.
pub struct SftData {
    pub train: PackedRows,
    /// Held-out rows (`data.val_fraction` of the examples), when any.
    pub val: Option<PackedRows>,
    pub train_examples: usize,
    pub val_examples: usize,
    /// Size and CRC-32 of the data file, recorded in checkpoints: a resume on other data
    /// is refused.
    pub digest: FileDigest,
    /// Where the chat template came from (`messages` examples only).
    pub template: String,
}

/// How the base model's tokenizer frames an example.
pub struct Framing {
    /// `None` for a model directory without one (then only `input_ids` examples work).
    pub tokenizer: Option<Tokenizer>,
    /// The model's vocabulary: `input_ids` must lie below it.
    pub vocab_size: usize,
    pub template: ChatTemplate,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: u32,
}

impl Framing {
    /// The tokenizer, chat template (`tokenizer_config.json`'s, else Ember's built-in
    /// ChatML) and markers of `model`: BOS when the tokenizer's post-processor adds one
    /// (as `transformers` does for Llama), EOS from `generation_config.json` or the
    /// vocabulary's `<|endoftext|>`.
    pub fn of(model: &ModelDir, flag: &str) -> Result<Self, TrainError> {
        let tokenizer = model.tokenizer().cloned();
        let template = match model {
            ModelDir::Hf(hf) if hf.dir.join("tokenizer_config.json").exists() => {
                ChatTemplate::from_tokenizer_config(&hf.dir.join("tokenizer_config.json"))
                    .map_err(|e| ConfigError(format!("{flag}: {e}")))?
            }
            _ => None,
        }
        .unwrap_or_else(ChatTemplate::builtin);
        let bos = tokenizer
            .as_ref()
            .and_then(|t| t.encode_with_special("").ok())
            .and_then(|ids| ids.first().copied());
        let eos = model.stop_tokens().first().copied().or(match &tokenizer {
            Some(Tokenizer::Bpe(t)) => t.end_of_text(),
            _ => None,
        });
        let pad = eos.or(bos).unwrap_or(0);
        Ok(Self {
            tokenizer,
            vocab_size: model.config().vocab_size,
            template,
            bos,
            eos,
            pad,
        })
    }
}

/// Reads, splits (seeded by `train.seed`), encodes and lays out the examples of `path`
/// into rows of `block` positions.
pub fn load(
    path: &Path,
    framing: &Framing,
    config: &FinetuneConfig,
    block: usize,
) -> Result<SftData, TrainError> {
    let digest = FileDigest::of(path)
        .map_err(|e| ConfigError(format!("--data {}: cannot read: {e}", path.display())))?;
    let examples = read_jsonl(path)?;
    for example in &examples {
        if let ember_data::sft::Example::Tokens(ids) = &example.example
            && let Some(id) = ids.iter().find(|&&id| id as usize >= framing.vocab_size)
        {
            return Err(example
                .error(format!(
                    "\"input_ids\" holds {id}, outside the model's vocabulary of {}",
                    framing.vocab_size
                ))
                .into());
        }
    }
    let seed = config.data.shuffle.then_some(config.train.seed);
    let (train, val) = split_examples(&examples, config.data.val_fraction, seed);
    let encoder = Encoder {
        tokenizer: framing.tokenizer.as_ref(),
        template: &framing.template,
        bos: framing.bos,
        eos: framing.eos,
    };
    let encode = |set: &[ember_data::sft::SourcedExample]| -> Result<Vec<Encoded>, TrainError> {
        set.iter()
            .map(|example| encoder.encode(example).map_err(TrainError::from))
            .collect()
    };
    let options = PackOptions {
        block,
        pack: config.data.pack,
        pad_id: framing.pad,
        truncate: config.data.truncate,
    };
    // The packer knows lines, not files: name the file and the settings.
    let pack_rows = |encoded: &[Encoded]| {
        pack(encoded, &options).map_err(|e| match e {
            ember_data::DataError::ExampleTooLong { line, tokens, block } => TrainError::from(
                ConfigError(format!(
                    "{}:{line}: the example has {tokens} tokens, more than a row of data.seq_len = {block} holds; raise data.seq_len or set data.truncate = true",
                    path.display()
                )),
            ),
            other => other.into(),
        })
    };
    let train_rows = pack_rows(&encode(&train)?)?;
    if train_rows.rows() == 0 {
        return Err(ConfigError(format!(
            "--data {}: no training example is left after truncation to {block} positions",
            path.display()
        ))
        .into());
    }
    let val_rows = if val.is_empty() {
        None
    } else {
        Some(pack_rows(&encode(&val)?)?).filter(|rows| rows.rows() > 0)
    };
    Ok(SftData {
        train: train_rows,
        val: val_rows,
        train_examples: train.len(),
        val_examples: val.len(),
        digest,
        template: framing.template.origin().to_string(),
    })
}

/// One micro-batch of rows: host data the shards split.
#[derive(Debug, Clone, PartialEq)]
pub struct SftBatch {
    /// `[rows · block]`
    pub inputs: Vec<u32>,
    /// `[rows · block]`, [`ember_data::sft::IGNORE`] where the loss does not apply.
    pub targets: Vec<i64>,
    /// `[rows · block]` document ids, for the mask between packed examples.
    pub documents: Vec<u32>,
    pub rows: usize,
    pub block: usize,
    /// Targets the loss covers.
    pub trained: usize,
}

impl SftBatch {
    /// Rows `ids` of `rows`.
    pub fn gather(rows: &PackedRows, ids: &[usize]) -> Self {
        let (inputs, targets, documents) = rows.gather(ids);
        Self {
            inputs,
            targets,
            documents,
            rows: ids.len(),
            block: rows.block,
            trained: rows.trained_in(ids),
        }
    }

    /// Whether any row holds more than one example (so a document mask is needed).
    pub fn packs_several(&self) -> bool {
        self.documents
            .chunks(self.block.max(1))
            .any(|row| row.iter().any(|&d| d != row[0]))
    }

    /// The document ids as `[rows][block]`.
    pub fn document_rows(&self) -> Vec<Vec<u32>> {
        self.documents
            .chunks(self.block.max(1))
            .map(<[u32]>::to_vec)
            .collect()
    }
}

impl Rows for SftBatch {
    fn split(&self, parts: usize) -> Vec<Self> {
        ember_data::row_groups(self.rows, parts)
            .into_iter()
            .map(|rows| {
                let span = rows.start * self.block..rows.end * self.block;
                let targets = self.targets[span.clone()].to_vec();
                let trained = targets
                    .iter()
                    .filter(|&&t| t != ember_data::sft::IGNORE)
                    .count();
                SftBatch {
                    inputs: self.inputs[span.clone()].to_vec(),
                    targets,
                    documents: self.documents[span].to_vec(),
                    rows: rows.len(),
                    block: self.block,
                    trained,
                }
            })
            .collect()
    }

    fn weight(&self) -> f64 {
        self.trained as f64
    }
}
