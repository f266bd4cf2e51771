//! Penalties on tokens already seen, applied to the logits before sampling, with the
//! semantics OpenAI and vLLM give them:
//!
//! - `presence_penalty` p and `frequency_penalty` f, over the generated tokens only:
//!   `logit[t] -= f · count[t] + p · [count[t] > 0]`;
//! - `repetition_penalty` r (the CTRL paper's, as in transformers and vLLM), over the
//!   prompt and the generated tokens: a positive logit is divided by r, a negative one
//!   multiplied by r.

use std::collections::HashMap;

/// The three penalties; zeros (and a repetition penalty of 1) change nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalties {
    pub presence: f32,
    pub frequency: f32,
    pub repetition: f32,
}

impl Default for Penalties {
    fn default() -> Self {
        Self {
            presence: 0.0,
            frequency: 0.0,
            repetition: 1.0,
        }
    }
}

impl Penalties {
    /// Whether applying them changes nothing.
    pub fn is_neutral(&self) -> bool {
        *self == Self::default()
    }

    /// Applies the penalties to `logits` `[vocab]` in place, given the prompt's tokens and
    /// those generated so far.
    pub fn apply(&self, logits: &mut [f32], prompt: &[u32], generated: &[u32]) {
        if self.repetition != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in prompt.iter().chain(generated) {
                let t = t as usize;
                if t < logits.len() && !seen[t] {
                    seen[t] = true;
                    let l = &mut logits[t];
                    *l = if *l > 0.0 {
                        *l / self.repetition
                    } else {
                        *l * self.repetition
                    };
                }
            }
        }
        if self.presence != 0.0 || self.frequency != 0.0 {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in generated {
                *counts.entry(t).or_default() += 1;
            }
            for (t, n) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= self.frequency * n as f32 + self.presence;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_penalty_moves_exactly_the_logits_it_names() {
        let logits = [2.0f32, -1.0, 0.5, 3.0];
        let mut got = logits;
        Penalties {
            presence: 0.5,
            frequency: 0.25,
            repetition: 1.0,
        }
        .apply(&mut got, &[3], &[0, 0, 2]);
        // Token 0 twice, token 2 once; token 3 only in the prompt.
        assert_eq!(got, [2.0 - 0.5 - 0.5, -1.0, 0.5 - 0.25 - 0.5, 3.0]);
        let mut got = logits;
        Penalties {
            repetition: 2.0,
            ..Default::default()
        }
        .apply(&mut got, &[3, 1], &[1]);
        assert_eq!(got, [2.0, -2.0, 0.5, 1.5]);
        let mut got = logits;
        Penalties::default().apply(&mut got, &[0, 1, 2], &[3]);
        assert_eq!(got, logits);
    }
}
