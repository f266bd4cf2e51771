//! Attaching adapters to the target projections of a model, and freezing the rest.

use ember_nn::{
    Adapter, FusedBackend, Projection, Transformer, assign_stable_ids, freeze_matching, param_infos,
};

use crate::targets::{PeftError, Targets};

/// What attaching a method did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeftReport {
    /// The adapted projections' paths, in model order.
    pub adapted: Vec<String>,
    /// Parameters that train (as `peft`'s `print_trainable_parameters` counts them).
    pub trainable: usize,
    /// Every parameter of the adapted model.
    pub total: usize,
}

/// The paths of `model`'s projections that `targets` selects (`key` names the setting in
/// errors).
pub(crate) fn target_paths<B: FusedBackend>(
    model: &mut Transformer<B>,
    targets: &Targets,
    key: &str,
) -> Result<Vec<String>, PeftError> {
    let paths: Vec<String> = model
        .projections_mut()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    targets.select(&paths, key)
}

/// Puts `make(path, projection)` in the adapter slot of every projection in `adapted`;
/// `Err` names a projection that already carries one.
pub(crate) fn attach<B: FusedBackend>(
    model: &mut Transformer<B>,
    adapted: &[String],
    mut make: impl FnMut(&str, &Projection<B>) -> Adapter<B>,
) -> Result<(), PeftError> {
    for (path, projection) in model.projections_mut() {
        if !adapted.contains(&path) {
            continue;
        }
        if projection.adapter.is_some() {
            return Err(PeftError(format!("{path}: already carries an adapter")));
        }
        projection.adapter = Some(make(&path, projection));
    }
    Ok(())
}

/// Gives the adapter parameters path-derived ids (so optimizer state survives a
/// restart), freezes every parameter but those and the ones `also_trains` names (burn
/// then computes no gradient for them), and counts them.
pub(crate) fn freeze_all_but<B: FusedBackend>(
    model: Transformer<B>,
    adapted: Vec<String>,
    also_trains: impl Fn(&str) -> bool,
) -> (Transformer<B>, PeftReport) {
    let model = assign_stable_ids(model);
    let trains = |path: &str| path.contains(".adapter.") || also_trains(path);
    let infos = param_infos::<B, _>(&model);
    let total = infos
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum();
    let trainable = infos
        .iter()
        .filter(|p| trains(&p.path))
        .map(|p| p.shape.iter().product::<usize>())
        .sum();
    let frozen: Vec<&str> = infos
        .iter()
        .filter(|p| !trains(&p.path))
        .map(|p| p.path.as_str())
        .collect();
    let (model, _) = freeze_matching(model, &frozen);
    (
        model,
        PeftReport {
            adapted,
            trainable,
            total,
        },
    )
}
