//! Beam search with the semantics of `transformers`' `generate(num_beams=N)`: every step
//! scores `N · vocab` continuations by their summed log-probabilities, keeps the best
//! `2N`, moves candidates ending in an end-of-sequence token (ranked below `N`) to the
//! finished hypotheses and the best `N` others on as beams; hypotheses are ranked by
//! `sum / new_tokens^length_penalty`, and `early_stopping` decides when no beam can
//! still beat the finished ones.
//!
//! The beams live in a [`PagedKv`]: each step forks the tables of the beams that survive
//! (full blocks shared, the partial one copied) and runs every beam's next token in one
//! batched pass of the host decoder.

use crate::host::{HostDecoder, PagedChunk};
use crate::paged_kv::{BlockTable, PagedKv};
use crate::sampling::log_softmax;

/// When beam search may stop before `max_new_tokens` (transformers' `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    /// As soon as `num_beams` hypotheses are finished.
    True,
    /// When the best live beam, scored at the current length, cannot beat the worst
    /// finished hypothesis (a heuristic: with a positive length penalty it might later).
    False,
    /// Only when no beam can win at any length up to the maximum (the exact rule).
    Never,
}

/// How to search.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamSearchConfig {
    pub num_beams: usize,
    /// Exponent of the new-token count that divides a hypothesis' summed log-probability
    /// (> 0 favours longer ones).
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
    pub max_new_tokens: usize,
    pub eos_token_ids: Vec<u32>,
    /// Hypotheses returned, best first (at most `num_beams`).
    pub num_return_sequences: usize,
}

/// A returned continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// The new tokens, ending with the end-of-sequence token when it finished.
    pub tokens: Vec<u32>,
    /// `sum of log-probabilities / new_tokens^length_penalty` (transformers'
    /// `sequences_scores`).
    pub score: f64,
    pub finished: bool,
}

/// The `num_beams` best finished hypotheses (transformers' `BeamHypotheses`).
struct Finished {
    keep: usize,
    length_penalty: f64,
    hyps: Vec<(f64, Vec<u32>, bool)>,
    worst: f64,
}

impl Finished {
    fn add(&mut self, tokens: Vec<u32>, sum: f64, new_tokens: usize, finished: bool) {
        let score = sum / (new_tokens as f64).powf(self.length_penalty);
        if self.hyps.len() < self.keep || score > self.worst {
            self.hyps.push((score, tokens, finished));
            if self.hyps.len() > self.keep {
                let mut order: Vec<usize> = (0..self.hyps.len()).collect();
                order.sort_by(|&a, &b| self.hyps[a].0.total_cmp(&self.hyps[b].0));
                self.worst = self.hyps[order[1]].0;
                self.hyps.remove(order[0]);
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    /// Whether no live beam can improve on the hypotheses: `best` is the step's best
    /// summed score, `new_tokens` the length it has, `max_new` the most it can reach.
    fn is_done(&self, best: f64, new_tokens: usize, max_new: usize, rule: EarlyStopping) -> bool {
        if self.hyps.len() < self.keep {
            return false;
        }
        let lp = self.length_penalty;
        match rule {
            EarlyStopping::True => true,
            EarlyStopping::Never if lp > 0.0 => self.worst >= best / (max_new as f64).powf(lp),
            EarlyStopping::False | EarlyStopping::Never => {
                self.worst >= best / (new_tokens as f64).powf(lp)
            }
        }
    }
}

/// A live beam: its table, new tokens and summed log-probability.
struct Beam {
    table: BlockTable,
    tokens: Vec<u32>,
    score: f64,
}

/// Beam search after `prompt` on the host decoder. `Err` names what is wrong with the
/// request (no beams, an empty prompt, a prompt plus `max_new_tokens` past the context).
pub fn beam_search(
    host: &HostDecoder,
    prompt: &[u32],
    config: &BeamSearchConfig,
) -> Result<Vec<Hypothesis>, String> {
    let c = host.config();
    let n = config.num_beams;
    if n == 0 || config.max_new_tokens == 0 {
        return Err("num_beams and max_new_tokens must be at least 1".into());
    }
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    if prompt.len() + config.max_new_tokens > c.max_seq_len {
        return Err(format!(
            "{} prompt tokens + {} new tokens exceed the context of {}",
            prompt.len(),
            config.max_new_tokens,
            c.max_seq_len
        ));
    }
    if let Some(id) = prompt.iter().find(|&&id| id as usize >= c.vocab_size) {
        return Err(format!(
            "token id {id} is outside the vocabulary of {}",
            c.vocab_size
        ));
    }
    let vocab = c.vocab_size;
    let block_size = 16;
    let per_beam = (prompt.len() + config.max_new_tokens).div_ceil(block_size) + 1;
    let mut kv = PagedKv::new(c, block_size, 2 * n * per_beam + 1);
    let mut first = BlockTable::default();
    kv.reserve(&mut first, prompt.len())
        .map_err(|_| "the beam cache is too small".to_string())?;
    let prompt_logits = host.forward_paged(
        &mut kv,
        &mut [PagedChunk {
            table: &mut first,
            tokens: prompt,
        }],
    );
    // Beam 0 holds the prompt; the others start at -1e9 so the first step draws from
    // beam 0 alone, as transformers starts them.
    let mut beams: Vec<Beam> = vec![Beam {
        table: first,
        tokens: Vec::new(),
        score: 0.0,
    }];
    let mut logits = prompt_logits;
    let mut finished = Finished {
        keep: n,
        length_penalty: config.length_penalty,
        hyps: Vec::new(),
        worst: 1e9,
    };
    let keep = (1 + config.eos_token_ids.len()).max(2) * n;
    let mut done = false;
    for step in 0..config.max_new_tokens {
        // Candidates `(summed score, beam, token)`, best first.
        let mut candidates: Vec<(f64, usize, u32)> = Vec::with_capacity(beams.len() * vocab);
        for (b, beam) in beams.iter().enumerate() {
            let logprobs = log_softmax(&logits[b * vocab..(b + 1) * vocab]);
            for (t, lp) in logprobs.iter().enumerate() {
                candidates.push((beam.score + *lp as f64, b, t as u32));
            }
        }
        // The phantom beams of the first step (score -1e9) rank below every real one.
        let cmp = |a: &(f64, usize, u32), b: &(f64, usize, u32)| {
            b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
        };
        let top = keep.min(candidates.len());
        if top < candidates.len() {
            candidates.select_nth_unstable_by(top, cmp);
            candidates.truncate(top);
        }
        candidates.sort_by(cmp);
        let new_tokens = step + 1;
        let mut next: Vec<(usize, u32, f64)> = Vec::with_capacity(n);
        for (rank, &(score, b, token)) in candidates.iter().enumerate() {
            if config.eos_token_ids.contains(&token) {
                if rank >= n {
                    continue;
                }
                let mut tokens = beams[b].tokens.clone();
                tokens.push(token);
                finished.add(tokens, score, new_tokens, true);
            } else {
                next.push((b, token, score));
            }
            if next.len() == n {
                break;
            }
        }
        let best = candidates[0].0;
        done = finished.is_done(
            best,
            new_tokens,
            config.max_new_tokens,
            config.early_stopping,
        );
        // The surviving beams: forks of their parents' tables, then the new token.
        let mut survivors = Vec::with_capacity(next.len());
        for &(b, token, score) in &next {
            let mut table = kv
                .fork(&beams[b].table)
                .map_err(|_| "the beam cache is too small".to_string())?;
            let len = table.len;
            kv.reserve(&mut table, len + 1)
                .map_err(|_| "the beam cache is too small".to_string())?;
            let mut tokens = beams[b].tokens.clone();
            tokens.push(token);
            survivors.push(Beam {
                table,
                tokens,
                score,
            });
        }
        for beam in &mut beams {
            kv.release(&mut beam.table);
        }
        beams = survivors;
        if done || new_tokens == config.max_new_tokens {
            break;
        }
        let last: Vec<u32> = beams
            .iter()
            .map(|b| *b.tokens.last().expect("a token"))
            .collect();
        let mut chunks: Vec<PagedChunk> = beams
            .iter_mut()
            .zip(&last)
            .map(|(beam, token)| PagedChunk {
                table: &mut beam.table,
                tokens: std::slice::from_ref(token),
            })
            .collect();
        logits = host.forward_paged(&mut kv, &mut chunks);
    }
    if !done {
        for beam in &beams {
            finished.add(beam.tokens.clone(), beam.score, beam.tokens.len(), false);
        }
    }
    // Ascending by score (stable), best taken from the end: on a tie the later one wins.
    let mut hyps = finished.hyps;
    hyps.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = config.num_return_sequences.clamp(1, n).min(hyps.len());
    Ok(hyps
        .into_iter()
        .rev()
        .take(count)
        .map(|(score, tokens, finished)| Hypothesis {
            tokens,
            score,
            finished,
        })
        .collect())
}
