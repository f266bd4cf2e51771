//! `{"anchor", "positive"}` pairs for a contrastive objective: tokenized, split into
//! training and held-out pairs, and drawn as batches of in-batch negatives.

use crate::batch::{Batch, row_groups};
use crate::corpus::Corpus;
use crate::error::DataError;
use crate::rng::SplitMix64;
use crate::tokenizer::Tokenizer;

/// One pair's token ids, each cut to the model's block size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub anchor: Vec<u32>,
    pub positive: Vec<u32>,
}

/// A paired corpus split into training pairs (the first `1 − val_fraction`) and held-out
/// pairs (the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSet {
    pub train: Vec<Pair>,
    pub val: Vec<Pair>,
    /// Texts longer than `block` tokens, cut to their first `block`.
    pub truncated: usize,
}

impl PairSet {
    /// Tokenizes `corpus`'s pairs ([`Corpus::paired`]) with `tokenizer`, cutting each text
    /// to `block` tokens, and holds out the last `val_fraction` of them (at least 2, so
    /// that retrieval has a choice); at least `batch` pairs must remain for training.
    pub fn new(
        corpus: &Corpus,
        tokenizer: &Tokenizer,
        val_fraction: f64,
        block: usize,
        batch: usize,
    ) -> Result<Self, DataError> {
        if !corpus.paired {
            return Err(DataError::NotPairs);
        }
        let mut truncated = 0;
        let mut encode = |text: &str| -> Result<Vec<u32>, DataError> {
            let mut ids = tokenizer.encode(text)?;
            if ids.len() > block {
                ids.truncate(block);
                truncated += 1;
            }
            Ok(ids)
        };
        let mut pairs = Vec::with_capacity(corpus.documents.len() / 2);
        for texts in corpus.documents.chunks_exact(2) {
            pairs.push(Pair {
                anchor: encode(&texts[0])?,
                positive: encode(&texts[1])?,
            });
        }
        let n = pairs.len();
        let n_val = ((n as f64 * val_fraction).ceil() as usize).max(2);
        let train_needed = batch.max(2);
        if n < n_val + train_needed {
            return Err(DataError::TooFewPairs {
                pairs: n,
                train: train_needed,
                val: n_val,
            });
        }
        let val = pairs.split_off(n - n_val);
        Ok(Self {
            train: pairs,
            val,
            truncated,
        })
    }

    /// `batch` distinct training pairs drawn with `rng` (no pair twice in a batch, so no
    /// positive is also a negative), as [`pair_batch`] rows.
    pub fn sample(&self, rng: &mut SplitMix64, batch: usize) -> Batch {
        let batch = batch.min(self.train.len());
        let mut chosen: Vec<usize> = Vec::with_capacity(batch);
        while chosen.len() < batch {
            let i = rng.below(self.train.len() as u64) as usize;
            if !chosen.contains(&i) {
                chosen.push(i);
            }
        }
        pair_batch(chosen.iter().map(|&i| &self.train[i]))
    }

    /// The held-out pairs in order, in groups of about `batch` (at least `batch` each, or
    /// all of them when fewer) whose sizes differ by at most one, so that no group is a
    /// lone pair.
    pub fn val_batches(&self, batch: usize) -> Vec<Batch> {
        let groups = (self.val.len() / batch.max(2)).max(1);
        row_groups(self.val.len(), groups)
            .into_iter()
            .map(|rows| pair_batch(self.val[rows].iter()))
            .collect()
    }
}

/// Rows for `pairs`: the anchors, then the positives in the same order, each padded
/// with id 0 to the longest text (`Batch::block`); `lengths` holds each row's real
/// length and every target is [`crate::sft::IGNORE`] (a contrastive batch predicts no
/// token).
pub fn pair_batch<'a>(pairs: impl Iterator<Item = &'a Pair> + Clone) -> Batch {
    let rows: Vec<&Vec<u32>> = pairs
        .clone()
        .map(|p| &p.anchor)
        .chain(pairs.map(|p| &p.positive))
        .collect();
    let block = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let mut inputs = Vec::with_capacity(rows.len() * block);
    for row in &rows {
        inputs.extend(row.iter().map(|&t| i64::from(t)));
        inputs.extend(std::iter::repeat_n(0, block - row.len()));
    }
    Batch {
        targets: vec![crate::sft::IGNORE; inputs.len()],
        inputs,
        batch: rows.len(),
        block,
        documents: None,
        positions: None,
        lengths: Some(rows.iter().map(|r| r.len() as u32).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::CharTokenizer;

    fn paired_corpus(n: usize) -> (Corpus, Tokenizer) {
        let documents: Vec<String> = (0..n)
            .flat_map(|i| [format!("a{i}"), format!("positive {i}")])
            .collect();
        let tokenizer = Tokenizer::Char(CharTokenizer::from_text(&documents.join("\n")));
        let corpus = Corpus {
            documents,
            paired: true,
            fingerprint: String::new(),
        };
        (corpus, tokenizer)
    }

    #[test]
    fn pairs_split_sample_and_pad() {
        let (corpus, tokenizer) = paired_corpus(20);
        let set = PairSet::new(&corpus, &tokenizer, 0.1, 8, 4).unwrap();
        assert_eq!((set.train.len(), set.val.len()), (18, 2));
        // "positive 10" and longer are cut to 8 tokens.
        assert_eq!(set.truncated, 20);
        assert_eq!(set.val[1].anchor, tokenizer.encode("a19").unwrap());

        let mut rng = SplitMix64::new(7);
        let batch = set.sample(&mut rng, 4);
        assert_eq!((batch.batch, batch.block), (8, 8));
        let lengths = batch.lengths.clone().unwrap();
        for r in 0..4 {
            let anchor = &batch.inputs[r * 8..r * 8 + lengths[r] as usize];
            let pair = set
                .train
                .iter()
                .find(|p| {
                    p.anchor
                        .iter()
                        .map(|&t| i64::from(t))
                        .eq(anchor.iter().copied())
                })
                .expect("each anchor row is a training anchor");
            let row = 4 + r;
            let positive = &batch.inputs[row * 8..row * 8 + lengths[row] as usize];
            assert!(
                pair.positive
                    .iter()
                    .map(|&t| i64::from(t))
                    .eq(positive.iter().copied())
            );
            assert!(
                batch.inputs[r * 8 + lengths[r] as usize..(r + 1) * 8]
                    .iter()
                    .all(|&t| t == 0)
            );
        }
        // Distinct pairs within a batch.
        let mut anchors: Vec<&[i64]> = (0..4).map(|r| &batch.inputs[r * 8..r * 8 + 8]).collect();
        anchors.sort();
        anchors.dedup();
        assert_eq!(anchors.len(), 4);

        let val = set.val_batches(4);
        assert_eq!(val.len(), 1);
        assert_eq!(val[0].batch, 4);
        // 3 held-out pairs in groups of 2: one group of 3, not 2 + a lone pair.
        let (corpus, tokenizer) = paired_corpus(13);
        let set = PairSet::new(&corpus, &tokenizer, 0.2, 8, 2).unwrap();
        assert_eq!(set.val.len(), 3);
        let val = set.val_batches(2);
        assert_eq!(val.len(), 1);
        assert_eq!(val[0].batch, 6);
    }

    #[test]
    fn too_few_pairs_and_unpaired_corpora_are_refused() {
        let (corpus, tokenizer) = paired_corpus(5);
        let err = PairSet::new(&corpus, &tokenizer, 0.1, 8, 4).unwrap_err();
        assert!(err.to_string().contains("5 pairs"), "{err}");
        let unpaired = Corpus {
            paired: false,
            ..corpus
        };
        let err = PairSet::new(&unpaired, &tokenizer, 0.1, 8, 2).unwrap_err();
        assert!(err.to_string().contains("anchor"), "{err}");
    }
}
