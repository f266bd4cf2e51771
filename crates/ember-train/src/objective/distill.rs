//! [`Distill`]: knowledge distillation from a teacher's logits (Hinton et al. 2015).

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use ember_nn::{ForwardOptions, FusedBackend, Transformer};

use super::{CausalLm, Objective, ObjectiveBatch, ObjectiveOutput};

/// `α · T² · KL(softmax(t / T) ‖ softmax(s / T)) + (1 − α) · L` per covered target, with
/// `t` the teacher's logits (computed without gradients), `s` the student's, and `L` the
/// student's own loss as `train.loss` sets it ([`CausalLm`], its MoE terms included).
/// `T²` keeps the soft term's gradients on the scale of the hard one's. The KL term is
/// logged as `objective.kd_loss` (already times `T²`); `train_loss` stays the student's
/// own loss (its cross-entropy unless `train.loss` says otherwise), comparable with a run
/// without a teacher.
pub struct Distill<B: AutodiffBackend> {
    teacher: Transformer<B::InnerBackend>,
    student: CausalLm,
    alpha: f64,
    temperature: f64,
}

impl<B: AutodiffBackend> Distill<B> {
    /// `teacher` must share the student's tokenizer (the caller checks it): its vocabulary
    /// is the student's.
    pub fn new(
        teacher: Transformer<B::InnerBackend>,
        student: CausalLm,
        alpha: f64,
        temperature: f64,
    ) -> Self {
        Self {
            teacher,
            student,
            alpha,
            temperature,
        }
    }
}

/// The mean over the rows of `T² · KL(softmax(t / T) ‖ softmax(s / T))`.
///
/// - `student`, `teacher`: `[n, vocab]`
/// - returns `[1]`
pub fn kd_loss<B: burn::tensor::backend::Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    let n = student.dims()[0];
    let log_student = burn::tensor::activation::log_softmax(student.div_scalar(temperature), 1);
    let log_teacher = burn::tensor::activation::log_softmax(teacher.div_scalar(temperature), 1);
    let p_teacher = log_teacher.clone().exp();
    (p_teacher * (log_teacher - log_student))
        .sum()
        .mul_scalar(temperature * temperature / n.max(1) as f64)
}

impl<B> Objective<B> for Distill<B>
where
    B: AutodiffBackend + FusedBackend,
    B::InnerBackend: FusedBackend,
{
    fn loss(&self, model: &Transformer<B>, batch: ObjectiveBatch<'_, B>) -> ObjectiveOutput<B> {
        let (mask, positions) = crate::trainer::packing_of(batch.batch);
        let teacher_logits = self.teacher.forward(
            batch.inputs.clone().inner(),
            ForwardOptions {
                documents: mask.as_ref(),
                positions,
                ..Default::default()
            },
        );
        let targets = &batch.batch.targets;
        let device = batch.device.clone();
        let (out, logits) = self.student.run(model, batch);
        let [b, s, vocab] = logits.dims();
        // Only the covered targets (packed rows skip their boundaries).
        let kept: Vec<i64> = (0..targets.len() as i64)
            .filter(|&i| targets[i as usize] != ember_data::sft::IGNORE)
            .collect();
        let n = kept.len();
        if n == 0 {
            return out;
        }
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(kept, [n]), &device);
        let student = logits.reshape([b * s, vocab]).select(0, rows.clone());
        let teacher = Tensor::<B, 2>::from_inner(
            teacher_logits
                .reshape([b * s, vocab])
                .select(0, rows.inner()),
        );
        let kd = kd_loss(student, teacher, self.temperature);
        let loss = kd.clone().mul_scalar(self.alpha) + out.loss.mul_scalar(1.0 - self.alpha);
        let mut metrics = out.metrics;
        metrics.push(("kd_loss".to_string(), kd));
        ObjectiveOutput {
            loss,
            train_loss: out.train_loss,
            moe: out.moe,
            metrics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// The definition written out over host numbers.
    fn naive(student: &[f64], teacher: &[f64], vocab: usize, t: f64) -> f64 {
        let rows = student.len() / vocab;
        let log_softmax = |x: &[f64]| -> Vec<f64> {
            let max = x.iter().fold(f64::MIN, |m, v| m.max(v / t));
            let lse = max + x.iter().map(|v| (v / t - max).exp()).sum::<f64>().ln();
            x.iter().map(|v| v / t - lse).collect()
        };
        let mut total = 0.0;
        for r in 0..rows {
            let ls = log_softmax(&student[r * vocab..(r + 1) * vocab]);
            let lt = log_softmax(&teacher[r * vocab..(r + 1) * vocab]);
            total += lt
                .iter()
                .zip(&ls)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>();
        }
        t * t * total / rows as f64
    }

    #[test]
    fn kd_loss_is_the_scaled_kl_of_the_softened_distributions() {
        let (rows, vocab) = (3, 5);
        let s: Vec<f64> = (0..rows * vocab)
            .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.7)
            .collect();
        let t: Vec<f64> = (0..rows * vocab)
            .map(|i| ((i * 5 % 13) as f64 - 6.0) * 0.5)
            .collect();
        let tensor = |v: &[f64]| {
            Tensor::<Flex, 2>::from_data(
                TensorData::new(
                    v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                    [rows, vocab],
                ),
                &Default::default(),
            )
        };
        for temperature in [1.0, 2.0, 4.0] {
            let got = kd_loss(tensor(&s), tensor(&t), temperature).into_scalar() as f64;
            let want = naive(&s, &t, vocab, temperature);
            assert!(
                (got - want).abs() < 1e-5 * want.max(1.0),
                "T = {temperature}: {got} vs {want}"
            );
        }
        // Identical distributions: no divergence.
        let same = kd_loss(tensor(&s), tensor(&s), 2.0).into_scalar();
        assert!(same.abs() < 1e-6);
    }
}
