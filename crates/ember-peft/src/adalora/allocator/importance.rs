//! The importance scores: `peft`'s `update_ipt` (sensitivity and uncertainty) and the
//! ranking in `mask_to_budget`.

use std::collections::BTreeMap;

use super::{Module, RankAllocator};
use crate::targets::PeftError;

/// `down`, `rank_scale`, `up` of one adapter, host-side, in Ember's layout.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Triplet {
    pub(super) down: Vec<f32>,
    pub(super) e: Vec<f32>,
    pub(super) up: Vec<f32>,
}

impl Triplet {
    pub(super) fn zeros(m: &Module) -> Self {
        Self {
            down: vec![0.0; m.d_in * m.rank],
            e: vec![0.0; m.rank],
            up: vec![0.0; m.rank * m.d_out],
        }
    }

    pub(super) fn parts(&self) -> [&Vec<f32>; 3] {
        [&self.down, &self.e, &self.up]
    }

    pub(super) fn parts_mut(&mut self) -> [&mut Vec<f32>; 3] {
        [&mut self.down, &mut self.e, &mut self.up]
    }
}

/// The smoothed sensitivity `Ī` and uncertainty `Ū` of every entry of one adapter.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Scores {
    pub(super) ipt: Triplet,
    pub(super) unc: Triplet,
}

impl RankAllocator {
    /// `peft`'s `update_ipt`, in f32 as `peft` computes it.
    pub(super) fn update_scores(
        &mut self,
        params: &BTreeMap<String, Triplet>,
        grads: &BTreeMap<String, Triplet>,
    ) -> Result<(), PeftError> {
        let (b1, c1) = (self.beta1 as f32, (1.0 - self.beta1) as f32);
        let (b2, c2) = (self.beta2 as f32, (1.0 - self.beta2) as f32);
        for m in &self.modules {
            let (p, g) = (&params[&m.path], grads.get(&m.path));
            let g = g
                .filter(|g| g.parts().map(Vec::len) == p.parts().map(Vec::len))
                .ok_or_else(|| PeftError(format!("{}: gradients of another shape", m.path)))?;
            let s = self.scores.entry(m.path.clone()).or_insert_with(|| Scores {
                ipt: Triplet::zeros(m),
                unc: Triplet::zeros(m),
            });
            let Scores { ipt, unc } = s;
            for (((p, g), avg), unc) in p
                .parts()
                .into_iter()
                .zip(g.parts())
                .zip(ipt.parts_mut())
                .zip(unc.parts_mut())
            {
                for i in 0..p.len() {
                    let now = (p[i] * g[i]).abs();
                    avg[i] = b1 * avg[i] + c1 * now;
                    unc[i] = b2 * unc[i] + c2 * (now - avg[i]).abs();
                }
            }
        }
        Ok(())
    }

    /// `peft`'s `mask_to_budget` without the masking: which ranks survive `budget`.
    pub(super) fn pattern_for_budget(
        &self,
        budget: usize,
    ) -> Result<BTreeMap<String, Vec<bool>>, PeftError> {
        let mut triplets = Vec::with_capacity(self.modules.len());
        for m in &self.modules {
            let s = self
                .scores
                .get(&m.path)
                .ok_or_else(|| PeftError(format!("{}: no importance scores", m.path)))?;
            let score = |part: usize, i: usize| {
                let (avg, unc) = (s.ipt.parts()[part], s.unc.parts()[part]);
                avg[i] * unc[i]
            };
            let r = m.rank;
            let scores: Vec<f32> = (0..r)
                .map(|k| {
                    // A `[r, d_in]`: mean over its row k (Ember's column k of `down`);
                    // B `[d_out, r]`: mean over its column k (Ember's row k of `up`).
                    let a = (0..m.d_in).map(|i| score(0, i * r + k)).sum::<f32>() / m.d_in as f32;
                    let b = (0..m.d_out).map(|j| score(2, k * m.d_out + j)).sum::<f32>()
                        / m.d_out as f32;
                    score(1, k) + (a + b)
                })
                .collect();
            triplets.push((m.path.clone(), scores));
        }
        // The (init − budget)-th smallest score; everything at or below it is masked
        // (`peft` fails where that count is 0: nothing is masked then).
        let k = self.init_budget.saturating_sub(budget);
        let threshold = if k == 0 {
            f32::NEG_INFINITY
        } else {
            let mut all: Vec<f32> = triplets
                .iter()
                .flat_map(|(_, s)| s.iter().copied())
                .collect();
            all.sort_by(f32::total_cmp);
            all[k - 1]
        };
        Ok(triplets
            .into_iter()
            .map(|(path, s)| {
                (
                    path,
                    s.iter().map(|&x| x > threshold || x.is_nan()).collect(),
                )
            })
            .collect())
    }
}
