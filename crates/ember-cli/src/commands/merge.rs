//! `ember merge`: a base model with a `peft` adapter merged into its weights, written as
//! a Hugging Face directory (`ember export --adapter` under the name `peft` users know).

use std::path::PathBuf;

use clap::Args;

use crate::commands::export::{DTypeArg, ExportArgs};

#[derive(Args)]
pub struct MergeArgs {
    /// The base: an Ember checkpoint (or run directory) or a Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The `peft` adapter directory (LoRA, rsLoRA, DoRA or IA3).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output directory: new, empty, or an earlier export (replaced atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out even when it is a file or a directory of something else.
    #[arg(long)]
    pub force: bool,
    /// Element type of the written weights.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
}

impl From<MergeArgs> for ExportArgs {
    fn from(args: MergeArgs) -> Self {
        ExportArgs {
            model: args.model,
            out: args.out,
            force: args.force,
            dtype: args.dtype,
            adapter: Some(args.adapter),
        }
    }
}
