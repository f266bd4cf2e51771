//! A run's data: the corpus tokenized once into `out_dir/data` (reused while unchanged),
//! its train/validation split, and for a contrastive run its pairs.

use ember_data::{Corpus, PairSet, TokenCache, TokenSplits, Tokenizer};

use super::error::TrainError;
use super::options::TrainOptions;
use crate::config::{ConfigError, TrainConfig};

/// What a run's batches and evaluations draw from.
pub(super) struct RunData {
    pub(super) cache: TokenCache,
    /// A contrastive run's token stream only built the tokenizer: every token is in
    /// `train` and `val` is empty (the pairs are split instead).
    pub(super) splits: TokenSplits,
    /// `train.objective = "contrastive"`: the pairs its batches and validation use.
    pub(super) pairs: Option<PairSet>,
}

impl RunData {
    /// Tokenizes (or reuses) `options.data`, sets `config.model.vocab_size` from the
    /// tokenizer, and checks it against the models of `same_tokenizer_as` and the
    /// settings sized by the vocabulary; `own_objective`: the caller trains an objective
    /// of its own (which a contrastive configuration cannot be).
    pub(super) fn load(
        config: &mut TrainConfig,
        options: &TrainOptions,
        same_tokenizer_as: &[(String, Tokenizer)],
        own_objective: bool,
    ) -> Result<Self, TrainError> {
        let kind = config.tokenizer_kind()?;
        let cache = TokenCache::load_or_build(&options.out_dir.join("data"), &options.data, kind)?;
        let vocab = cache.tokenizer.vocab_size();
        if config.model.vocab_size != 0 && config.model.vocab_size != vocab {
            return Err(ConfigError(format!(
                "model.vocab_size: {} does not match the tokenizer's {vocab}",
                config.model.vocab_size
            ))
            .into());
        }
        config.model.vocab_size = vocab;
        for (flag, other) in same_tokenizer_as {
            if !other.same_vocabulary(&cache.tokenizer) {
                return Err(ConfigError(format!(
                "{flag}: its tokenizer ({} entries) is not the one this run's data and data.tokenizer make ({vocab} entries); the models must share one tokenizer",
                other.vocab_size()
            ))
            .into());
            }
        }
        let alpha = config.train.focal_alpha.len();
        if alpha > 0 && alpha != vocab {
            return Err(ConfigError(format!(
            "train.focal_alpha: {alpha} weights, but the vocabulary has {vocab} entries (one weight per entry)"
        ))
        .into());
        }
        if options.cpu_backend {
            // Activations live in host memory only on CPU backends.
            crate::footprint::check(config)?;
        }
        let block = config.model.max_seq_len;
        let contrastive = config.train.objective == crate::objective::ObjectiveKind::Contrastive;
        if contrastive && own_objective {
            return Err(ConfigError(
            "train.objective = \"contrastive\": this command trains its own objective on token windows; leave train.objective unset".into(),
        )
        .into());
        }
        let pairs = match contrastive {
            true => Some(PairSet::new(
                &Corpus::read(&options.data)?,
                &cache.tokenizer,
                config.data.val_fraction,
                block,
                config.train.batch_size,
            )?),
            false => None,
        };
        let splits = if contrastive {
            // Pairs are their own split; the token stream only built the tokenizer.
            TokenSplits {
                train: cache.tokens.clone(),
                val: Vec::new(),
                train_documents: vec![0],
                val_documents: vec![0],
            }
        } else if config.data.packing {
            TokenSplits::with_documents(
                &cache.tokens,
                &cache.documents,
                config.data.val_fraction,
                block,
            )?
        } else {
            TokenSplits::new(&cache.tokens, config.data.val_fraction, block)?
        };
        Ok(Self {
            cache,
            splits,
            pairs,
        })
    }
}
