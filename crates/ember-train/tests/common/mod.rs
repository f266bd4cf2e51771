//! Helpers the training test binaries share (a folder, so cargo builds no binary of it).
// Each binary uses some of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn_store::ModuleSnapshot;
use ember_train::{Checkpoint, TrainOptions};

/// Options for a silent run on the CPU.
pub fn quiet_options(out_dir: PathBuf, data: &[PathBuf], resume: Option<PathBuf>) -> TrainOptions {
    TrainOptions {
        out_dir,
        data: data.to_vec(),
        resume,
        force: false,
        verbose: false,
        cpu_backend: true,
    }
}

/// Every parameter of the checkpoint in `dir`, by path, as raw f32 bits.
pub fn weights(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let model = Checkpoint::open(dir)
        .unwrap()
        .load_model::<Flex>(&Default::default())
        .unwrap();
    let mut out: Vec<(String, Vec<u32>)> = model
        .collect(None, None, false)
        .into_iter()
        .map(|snapshot| {
            let values: Vec<f32> = snapshot.to_data().unwrap().to_vec().unwrap();
            (
                snapshot.full_path(),
                values.iter().map(|v| v.to_bits()).collect(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Training seeds the device's one generator: tests that train take turns, so one run's
/// draws never interleave with another's (the resume tests compare bits).
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static DRAWS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    DRAWS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
