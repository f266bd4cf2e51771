//! `cargo xtask bench --micro`: the criterion micro-benchmarks of `benches/micro.rs`,
//! summarised from criterion's estimates: each kernel's mean time and, where the
//! benchmark has one, its speed-up over the reference it replaces, measured in the same
//! run (`*_fused` against `*_composed`, the host matvec against Flex's).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::json;

use crate::{root, run, summary_line};

fn collect(dir: &Path, prefix: &str, out: &mut BTreeMap<String, f64>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "report" {
            continue;
        }
        let estimates = path.join("new/estimates.json");
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if estimates.exists() {
            let value: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&estimates)?)?;
            if let Some(ns) = value["mean"]["point_estimate"].as_f64() {
                out.insert(key, ns / 1e3);
            }
        } else {
            collect(&path, &key, out)?;
        }
    }
    Ok(())
}

pub fn bench(filter: Option<&str>) -> Result<()> {
    let root = root();
    let criterion = root.join("target/criterion");
    let _ = std::fs::remove_dir_all(&criterion);
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root).args([
        "bench",
        "-p",
        "ember-benches",
        "--bench",
        "micro",
        "--",
        "--noplot",
    ]);
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    run(&mut cmd)?;
    let mut times = BTreeMap::new();
    collect(&criterion, "", &mut times).context("reading criterion's estimates")?;
    let mut summary = json!({"bench": "micro"});
    println!("\n{:<55} {:>12}", "benchmark", "mean µs");
    for (name, us) in &times {
        println!("{name:<55} {us:>12.2}");
        summary[format!("{}_us", name.replace('/', "."))] = (*us).into();
    }
    // Speed-ups against the reference measured beside each kernel.
    let mut ratios = Vec::new();
    for (name, us) in &times {
        let reference = if name.contains("_fused/") {
            name.replace("_fused/", "_composed/")
        } else if name.contains("/fused/") {
            name.replace("/fused/", "/composed/")
        } else if name.starts_with("matmul/host_") {
            "matmul/flex/matvec_32000x288".to_string()
        } else {
            continue;
        };
        if let Some(r) = times.get(&reference) {
            ratios.push((name.clone(), r / us));
        }
    }
    println!("\n{:<55} {:>12}", "kernel", "× reference");
    for (name, ratio) in &ratios {
        println!("{name:<55} {ratio:>12.2}");
        summary[format!("{}_speedup", name.replace('/', "."))] = (*ratio).into();
    }
    println!("{}", summary_line(&summary));
    let path = root.join("target/bench/micro.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    println!("xtask: wrote {}", path.display());
    Ok(())
}
