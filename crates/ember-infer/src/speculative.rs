//! Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model
//! proposes `k` tokens one at a time, the target scores all of them in one pass, and
//! each drafted token `d` is kept with probability `min(1, p(d) / q(d))`; the first one
//! refused is replaced by a draw from `max(0, p − q)` normalised, and when every draft is
//! kept the target's next distribution gives one more token. The tokens then follow the
//! target's distribution exactly (after temperature, top-k, top-p and min-p, applied to
//! both models), and greedy decoding keeps a draft only when it is the target's argmax,
//! so its output is the target's own.
//!
//! Both models run on the host decoder: the draft one token at a time on its batch-1
//! state, the target over a paged cache in one batched pass per round; rejected
//! positions are cut off ([`PagedKv::truncate`], [`DecodeState::truncate`]).

use crate::host::{DecodeState, HostDecoder, PagedChunk};
use crate::paged_kv::{BlockTable, PagedKv};
use crate::sampling::{Sampler, argmax};

/// How often drafts were kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpeculativeStats {
    /// Tokens the draft proposed.
    pub drafted: usize,
    /// Drafted tokens the target kept.
    pub accepted: usize,
    /// Passes of the target model.
    pub target_passes: usize,
}

impl SpeculativeStats {
    /// The fraction of drafted tokens kept.
    pub fn acceptance_rate(&self) -> f64 {
        self.accepted as f64 / self.drafted.max(1) as f64
    }
}

/// The target and its paged cache over a single sequence: it scores a token and every
/// draft in one batched pass.
struct Lane<'a> {
    model: &'a HostDecoder,
    kv: PagedKv,
    table: BlockTable,
}

impl<'a> Lane<'a> {
    fn new(model: &'a HostDecoder) -> Self {
        let c = model.config();
        let block_size = 16;
        let kv = PagedKv::new(c, block_size, c.max_seq_len.div_ceil(block_size) + 1);
        Self {
            model,
            kv,
            table: BlockTable::default(),
        }
    }

    /// Runs `tokens` after the cache; the logits after each (`all`) or after the last.
    fn run(&mut self, tokens: &[u32], all: bool) -> Vec<f32> {
        let len = self.table.len + tokens.len();
        self.kv
            .reserve(&mut self.table, len)
            .expect("the lane holds a whole context");
        let mut chunk = [PagedChunk {
            table: &mut self.table,
            tokens,
        }];
        if all {
            self.model.forward_paged_all(&mut self.kv, &mut chunk)
        } else {
            self.model.forward_paged(&mut self.kv, &mut chunk)
        }
    }

    fn truncate(&mut self, len: usize) {
        self.kv.truncate(&mut self.table, len);
    }
}

/// The draft with its batch-1 state: one token at a time, no allocation per token.
struct DraftLane<'a> {
    model: &'a HostDecoder,
    state: DecodeState,
}

impl DraftLane<'_> {
    /// Runs `tokens` (at least one) after the cache; the logits after the last.
    fn run(&mut self, tokens: &[u32]) -> Vec<f32> {
        let mut logits = Vec::new();
        for &t in tokens {
            logits = self.model.step(&mut self.state, t).to_vec();
        }
        logits
    }
}

/// Where the decoders disagree about the request.
fn check(
    target: &HostDecoder,
    draft: &HostDecoder,
    prompt: &[u32],
    max_new: usize,
) -> Result<(), String> {
    let (t, d) = (target.config(), draft.config());
    if t.vocab_size != d.vocab_size {
        return Err(format!(
            "the draft model's vocabulary ({}) differs from the target's ({})",
            d.vocab_size, t.vocab_size
        ));
    }
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    if let Some(id) = prompt.iter().find(|&&id| id as usize >= t.vocab_size) {
        return Err(format!(
            "token id {id} is outside the vocabulary of {}",
            t.vocab_size
        ));
    }
    let context = t.max_seq_len.min(d.max_seq_len);
    if prompt.len() + max_new > context {
        return Err(format!(
            "{} prompt tokens + {max_new} new tokens exceed the context of {context} (the smaller of the two models')",
            prompt.len()
        ));
    }
    Ok(())
}

/// How much to generate and draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeculativeConfig {
    pub max_new_tokens: usize,
    /// Tokens the draft proposes per target pass.
    pub num_speculative_tokens: usize,
    /// Generation ends after any of these.
    pub stop_tokens: Vec<u32>,
}

/// Generates up to `max_new_tokens` after `prompt`, `draft` proposing tokens for
/// `target` to check; `on_token` sees each token as it is kept.
pub fn speculative_generate(
    target: &HostDecoder,
    draft: &HostDecoder,
    prompt: &[u32],
    config: &SpeculativeConfig,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32),
) -> Result<(Vec<u32>, SpeculativeStats), String> {
    let (max_new, k, stop) = (
        config.max_new_tokens,
        config.num_speculative_tokens,
        &config.stop_tokens,
    );
    check(target, draft, prompt, max_new)?;
    let vocab = target.config().vocab_size;
    let context = target.config().max_seq_len.min(draft.config().max_seq_len);
    let mut stats = SpeculativeStats::default();
    let mut t = Lane::new(target);
    let mut d = DraftLane {
        model: draft,
        state: draft.new_state(),
    };
    // Invariant at each round: the target has cached every token but the last; the
    // draft has cached a prefix of them.
    let mut tokens = prompt.to_vec();
    if tokens.len() > 1 {
        t.run(&tokens[..tokens.len() - 1], false);
    }
    let mut out = Vec::new();
    while out.len() < max_new {
        let n = tokens.len();
        // Drafts, leaving room for the extra token and the context.
        let k = k.min(max_new - out.len() - 1).min(context - n - 1);
        let mut drafts = Vec::with_capacity(k);
        let mut q_dists = Vec::with_capacity(k);
        if k > 0 {
            let pending = tokens[d.state.len()..].to_vec();
            let mut q = d.run(&pending);
            for i in 0..k {
                let dist = sampler.distribution(&q);
                let token = match &dist {
                    None => argmax(&q),
                    Some(probs) => sampler.sample_from(probs),
                };
                drafts.push(token);
                q_dists.push(dist);
                if i + 1 < k {
                    q = d.run(&[token]);
                }
            }
            stats.drafted += k;
        }
        // The target scores the last token and every draft in one pass.
        let mut chunk = Vec::with_capacity(k + 1);
        chunk.push(tokens[n - 1]);
        chunk.extend(&drafts);
        let p = t.run(&chunk, true);
        stats.target_passes += 1;
        let mut kept = Vec::with_capacity(k + 1);
        let mut replacement = None;
        for (i, &token) in drafts.iter().enumerate() {
            let logits = &p[i * vocab..(i + 1) * vocab];
            match (sampler.distribution(logits), &q_dists[i]) {
                (None, _) => {
                    let best = argmax(logits);
                    if best == token {
                        kept.push(token);
                    } else {
                        replacement = Some(best);
                        break;
                    }
                }
                (Some(p_dist), Some(q_dist)) => {
                    let (pt, qt) = (p_dist[token as usize], q_dist[token as usize]);
                    if qt > 0.0 && sampler.uniform() < (pt / qt).min(1.0) {
                        kept.push(token);
                    } else {
                        let mut residual: Vec<f64> = p_dist
                            .iter()
                            .zip(q_dist)
                            .map(|(p, q)| (p - q).max(0.0))
                            .collect();
                        let total: f64 = residual.iter().sum();
                        let from = if total > 0.0 {
                            residual.iter_mut().for_each(|r| *r /= total);
                            residual
                        } else {
                            p_dist
                        };
                        replacement = Some(sampler.sample_from(&from));
                        break;
                    }
                }
                (Some(_), None) => unreachable!("both models sample with one sampler"),
            }
        }
        stats.accepted += kept.len();
        let next = match replacement {
            Some(token) => token,
            None => {
                let logits = &p[k * vocab..(k + 1) * vocab];
                match sampler.distribution(logits) {
                    None => argmax(logits),
                    Some(probs) => sampler.sample_from(&probs),
                }
            }
        };
        kept.push(next);
        // Cut both caches back to the kept tokens (the target keeps all but the last).
        let m = kept.len() - 1;
        t.truncate(n + m);
        d.state.truncate(n + m);
        for token in kept {
            tokens.push(token);
            out.push(token);
            on_token(token);
            if stop.contains(&token) || out.len() == max_new {
                return Ok((out, stats));
            }
        }
    }
    Ok((out, stats))
}
