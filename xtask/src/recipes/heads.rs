//! The recipes bench's structured head pruning: a quarter of every layer's heads of the
//! base run removed by gradient importance, perplexity before and after, and after a
//! short recovery run of the smaller model.

use anyhow::{Context, Result};

use super::{Bench, number_after};

pub(super) fn rows(
    b: &Bench,
    base_dir: &str,
    heldout: &str,
    row: &mut dyn FnMut(&str, Option<f64>),
) -> Result<()> {
    let pruned = b.path("heads-pruned");
    let report = b.ember(&[
        "prune",
        "--method",
        "heads",
        "--model",
        base_dir,
        "--sparsity",
        "0.25",
        "--data",
        heldout,
        "--out",
        &pruned,
        "--force",
    ])?;
    println!("xtask: recipes heads:\n{}", report.trim_end());
    let heads_line = report
        .lines()
        .find(|l| l.starts_with("heads:"))
        .context("ember prune printed its head counts")?;
    let counts: Vec<f64> = heads_line
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter_map(|s| s.parse().ok())
        .collect();
    // "heads: Q query / KV key-value per layer, now Q' / KV' (head_dim H); parameters: P, now P' …"
    let (n_heads, n_kv, head_dim) = (counts[2], counts[3], counts[4]);
    row("heads_per_layer_before", Some(counts[0]));
    row("heads_per_layer_after", Some(n_heads));
    row("heads_params_before", Some(counts[5]));
    row("heads_params_after", Some(counts[6]));
    let perplexity = report
        .lines()
        .find(|l| l.starts_with("perplexity:"))
        .context("ember prune printed perplexity")?;
    row("heads_before_loss", number_after(perplexity, "(mean nll"));
    row(
        "heads_after_loss",
        number_after(
            &perplexity[perplexity.find("after").unwrap_or(0)..],
            "(mean nll",
        ),
    );
    let shape = [
        format!("model.n_heads={n_heads}"),
        format!("model.n_kv_heads={n_kv}"),
        format!("model.head_dim={head_dim}"),
    ];
    let recovered = b.recover("heads-recovered", &pruned, &shape, heldout)?;
    row("heads_recovered_loss", recovered);
    Ok(())
}
