//! Structured attention-head pruning: choosing the heads to keep from their importance
//! (GQA-aware) and removing the others for real, so the projections shrink and the
//! model stays a valid MHA/GQA/MQA model.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::config::PositionKind;
use crate::{FusedBackend, Projection, Transformer};

/// The heads of one layer that stay, as indices into the layer's current heads
/// (ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptHeads {
    /// Query heads.
    pub query: Vec<usize>,
    /// Key/value heads.
    pub key_value: Vec<usize>,
}

/// The heads of a layer to keep when `remove` query heads go, least important first
/// (`importance[h]` for each of its `n_heads` query heads; ties go to the lower index):
/// - multi-head attention (`n_kv_heads = n_heads`): a removed query head takes its key
///   and value head with it;
/// - grouped-query attention: every key/value group loses `remove / n_kv_heads` of its
///   query heads, so the groups stay the same size and every key/value head stays
///   (`remove` must be a multiple of `n_kv_heads`).
pub fn kept_heads(
    importance: &[f64],
    n_kv_heads: usize,
    remove: usize,
) -> Result<KeptHeads, String> {
    let n_heads = importance.len();
    if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(format!(
            "{n_heads} query heads do not split into {n_kv_heads} key/value groups"
        ));
    }
    if remove >= n_heads {
        return Err(format!(
            "removing {remove} of {n_heads} heads would leave none"
        ));
    }
    let group = n_heads / n_kv_heads;
    // Least important first; the lower index first among equals.
    let order = |heads: &mut Vec<usize>| {
        heads.sort_by(|&a, &b| importance[a].total_cmp(&importance[b]).then(a.cmp(&b)));
    };
    if group == 1 {
        let mut heads: Vec<usize> = (0..n_heads).collect();
        order(&mut heads);
        let mut kept = heads.split_off(remove);
        kept.sort_unstable();
        return Ok(KeptHeads {
            query: kept.clone(),
            key_value: kept,
        });
    }
    if !remove.is_multiple_of(n_kv_heads) {
        return Err(format!(
            "with {n_kv_heads} key/value heads, remove a multiple of {n_kv_heads} query heads, so that every group keeps the same number"
        ));
    }
    let per_group = remove / n_kv_heads;
    let mut query = Vec::with_capacity(n_heads - remove);
    for g in 0..n_kv_heads {
        let mut heads: Vec<usize> = (g * group..(g + 1) * group).collect();
        order(&mut heads);
        let mut kept = heads.split_off(per_group);
        kept.sort_unstable();
        query.extend(kept);
    }
    Ok(KeptHeads {
        query,
        key_value: (0..n_kv_heads).collect(),
    })
}

impl<B: FusedBackend> Transformer<B> {
    /// The model with only the heads `kept[layer]` names: the query projection's output
    /// columns, the key/value projections' columns and the output projection's input
    /// rows of the other heads are gone (biases too), and the configuration says the new
    /// head counts (with an explicit `head_dim` once `n_heads · head_dim ≠ d_model`).
    /// The result computes exactly what this model computes with the removed heads'
    /// outputs set to zero.
    ///
    /// Every layer must keep the same numbers of heads (one configuration describes
    /// them all), each kept query head must keep its key/value head, and the groups must
    /// stay equal. Models with ALiBi (slopes follow the head count) or with adapters or
    /// quantized attention weights are refused.
    pub fn remove_heads(mut self, kept: &[KeptHeads]) -> Result<Self, String> {
        let config = self.config().clone();
        if kept.len() != config.n_layers {
            return Err(format!(
                "{} layers of kept heads for a model of {} layers",
                kept.len(),
                config.n_layers
            ));
        }
        if config.position == PositionKind::Alibi {
            return Err(
                "ALiBi's slopes follow the number of heads; pruning its heads is not supported"
                    .into(),
            );
        }
        let (n_q, n_kv) = (kept[0].query.len(), kept[0].key_value.len());
        if n_q == 0 || n_kv == 0 || !n_q.is_multiple_of(n_kv) {
            return Err(format!(
                "{n_q} query heads cannot share {n_kv} key/value heads in equal groups"
            ));
        }
        let (group_before, group_after) = (config.n_heads / config.n_kv_heads, n_q / n_kv);
        let head_dim = config.head_dim();
        for (layer, heads) in kept.iter().enumerate() {
            if (heads.query.len(), heads.key_value.len()) != (n_q, n_kv) {
                return Err(format!(
                    "layer {layer} keeps {} query and {} key/value heads, layer 0 {n_q} and {n_kv}: every layer must keep as many",
                    heads.query.len(),
                    heads.key_value.len()
                ));
            }
            let ascending = |v: &[usize], n: usize| {
                v.windows(2).all(|w| w[0] < w[1]) && v.last().is_some_and(|&h| h < n)
            };
            if !ascending(&heads.query, config.n_heads)
                || !ascending(&heads.key_value, config.n_kv_heads)
            {
                return Err(format!(
                    "layer {layer}: kept heads must be ascending indices of existing heads"
                ));
            }
            for (i, &q) in heads.query.iter().enumerate() {
                if heads.key_value[i / group_after] != q / group_before {
                    return Err(format!(
                        "layer {layer}: query head {q} would lose its key/value head"
                    ));
                }
            }
        }
        for (block, heads) in self.layers.iter_mut().zip(kept) {
            let attn = &mut block.attn;
            keep_heads(&mut attn.q_proj, &heads.query, head_dim, Side::Output)?;
            keep_heads(&mut attn.k_proj, &heads.key_value, head_dim, Side::Output)?;
            keep_heads(&mut attn.v_proj, &heads.key_value, head_dim, Side::Output)?;
            keep_heads(&mut attn.o_proj, &heads.query, head_dim, Side::Input)?;
            attn.n_heads = n_q;
            attn.n_kv_heads = n_kv;
        }
        let mut config = config;
        config.n_heads = n_q;
        config.n_kv_heads = n_kv;
        config.head_dim = (n_q * head_dim != config.d_model).then_some(head_dim);
        self.set_config(config);
        Ok(self)
    }
}

/// The indices of the features of `heads`, each `head_dim` wide, `[heads · head_dim]`.
fn feature_indices<B: Backend>(
    heads: &[usize],
    head_dim: usize,
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    let idx: Vec<i64> = heads
        .iter()
        .flat_map(|&h| (h * head_dim..(h + 1) * head_dim).map(|i| i as i64))
        .collect();
    let n = idx.len();
    Tensor::from_data(TensorData::new(idx, [n]), device)
}

/// Which side of a projection's weight `[d_in, d_out]` holds the heads.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// Output columns (q/k/v): the bias is per head too.
    Output,
    /// Input rows (`o_proj`): the bias is per output and stays whole.
    Input,
}

/// `projection` with only the features of `heads` on `side`.
fn keep_heads<B: Backend>(
    projection: &mut Projection<B>,
    heads: &[usize],
    head_dim: usize,
    side: Side,
) -> Result<(), String> {
    check_plain(projection)?;
    let weight = projection.weight.val();
    let idx = feature_indices::<B>(heads, head_dim, &weight.device());
    let dim = match side {
        Side::Output => 1,
        Side::Input => 0,
    };
    projection.weight = Param::from_tensor(weight.select(dim, idx.clone()));
    if let (Side::Output, Some(bias)) = (side, &projection.bias) {
        projection.bias = Some(Param::from_tensor(bias.val().select(0, idx)));
    }
    Ok(())
}

fn check_plain<B: Backend>(projection: &Projection<B>) -> Result<(), String> {
    if projection.adapter.is_some() || projection.quantized.is_some() {
        return Err(
            "attention projections with adapters or quantized weights cannot lose heads; merge or dequantize first"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_head_attention_drops_the_least_important_heads_with_their_keys() {
        let kept = kept_heads(&[0.5, 0.1, 0.9, 0.1], 4, 2).unwrap();
        assert_eq!(kept.query, vec![0, 2]);
        assert_eq!(kept.key_value, vec![0, 2]);
    }

    #[test]
    fn grouped_query_attention_keeps_every_group_the_same_size() {
        // Two groups of three: the least important head of each goes.
        let kept = kept_heads(&[0.3, 0.2, 0.9, 0.0, 5.0, 4.0], 2, 2).unwrap();
        assert_eq!(kept.query, vec![0, 2, 4, 5]);
        assert_eq!(kept.key_value, vec![0, 1]);
        let err = kept_heads(&[0.3, 0.2, 0.9, 0.0, 5.0, 4.0], 2, 1).unwrap_err();
        assert!(err.contains("multiple of 2"), "{err}");
        assert!(kept_heads(&[1.0, 2.0], 1, 2).is_err());
    }
}
