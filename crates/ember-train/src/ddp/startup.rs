//! What the ranks of a data-parallel run agree on before the first step: the checkpoint
//! they resume from (rank 0's, sent to the others, so the hosts need no shared file
//! system) and a check that they were given the same run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::collective::{Collective, CollectiveError};

/// What must be the same on every rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankIdentity {
    /// The resolved configuration, as TOML.
    pub config: String,
    /// A hash of the token streams the batches are drawn from.
    pub data: u64,
    /// Parameters of the model, and how many of them train.
    pub params: usize,
    pub trainable: usize,
    /// The world size this rank was told to expect (`--nproc`), if any.
    pub expected_world: Option<usize>,
    /// A fine-tune's base model fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// FNV-1a over `tokens` (train, then validation), seeded by their lengths: the data
/// fingerprint of [`RankIdentity`].
pub fn data_fingerprint(parts: &[&[u32]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |word: u64| {
        for byte in word.to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for part in parts {
        eat(part.len() as u64);
        for &t in *part {
            eat(u64::from(t));
        }
    }
    hash
}

/// Refuses, on every rank alike, ranks whose identity differs from rank 0's, naming
/// each difference (configuration keys one by one).
pub fn check_identity(
    collective: &mut dyn Collective,
    mine: &RankIdentity,
) -> Result<(), CollectiveError> {
    let world = collective.world();
    let bytes = serde_json::to_vec(mine).expect("an identity serializes");
    let all = collective.all_gather_bytes(&bytes, "the start-up check of the ranks")?;
    let mut problems = Vec::new();
    let identities: Vec<Option<RankIdentity>> =
        all.iter().map(|b| serde_json::from_slice(b).ok()).collect();
    let Some(Some(first)) = identities.first() else {
        return Err(CollectiveError::Mismatch(
            "rank 0 sent an unreadable start-up identity (different Ember versions?)".into(),
        ));
    };
    for (rank, identity) in identities.iter().enumerate() {
        if let Some(expected) = identity.as_ref().and_then(|i| i.expected_world)
            && expected != world
        {
            problems.push(format!(
                "rank {rank} was started with --nproc {expected}, but the job has {world} ranks"
            ));
        }
        if rank == 0 {
            continue;
        }
        let Some(other) = identity else {
            problems.push(format!(
                "rank {rank} sent an unreadable start-up identity (different Ember versions?)"
            ));
            continue;
        };
        for key in config_differences(&first.config, &other.config) {
            problems.push(format!("rank {rank}: {key}"));
        }
        if other.data != first.data {
            problems.push(format!(
                "rank {rank}: its data differ from rank 0's (token fingerprint {:016x}, rank 0 {:016x}); give every rank the same --data",
                other.data, first.data
            ));
        }
        if other.base != first.base {
            problems.push(format!(
                "rank {rank}: its base model differs from rank 0's (fingerprint {}, rank 0 {}); give every rank the same --model",
                other.base.as_deref().unwrap_or("-"),
                first.base.as_deref().unwrap_or("-")
            ));
        }
        if (other.params, other.trainable) != (first.params, first.trainable) {
            problems.push(format!(
                "rank {rank}: {} parameters ({} trainable), rank 0 {} ({} trainable)",
                other.params, other.trainable, first.params, first.trainable
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    problems.dedup();
    Err(CollectiveError::Mismatch(format!(
        "the ranks were not given the same run: {}",
        problems.join("; ")
    )))
}

/// Each configuration key whose value differs between rank 0's `first` and `other`, as
/// `key = other's (rank 0: first's)`.
fn config_differences(first: &str, other: &str) -> Vec<String> {
    let flat = |text: &str| {
        let mut out = std::collections::BTreeMap::new();
        if let Ok(table) = text.parse::<toml::Table>() {
            flatten("", &toml::Value::Table(table), &mut out);
        }
        out
    };
    let (a, b) = (flat(first), flat(other));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "unset".into());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k} = {} (rank 0: {})", show(b.get(k)), show(a.get(k))))
        .collect()
}

fn flatten(
    prefix: &str,
    value: &toml::Value,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table {
                let path = match prefix {
                    "" => key.clone(),
                    _ => format!("{prefix}.{key}"),
                };
                flatten(&path, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Rank 0's checkpoint directory `dir` (when it resumes) copied to every other rank
/// under `into`; returns the directory each rank resumes from (`None`: a fresh start).
pub fn share_checkpoint(
    collective: &mut dyn Collective,
    dir: Option<&Path>,
    into: &Path,
) -> Result<Option<PathBuf>, String> {
    let mut packed = Vec::new();
    if collective.rank() == 0 {
        if let Some(dir) = dir {
            packed.push(1u8);
            pack_dir(dir, dir, &mut packed).map_err(|e| {
                format!(
                    "{}: cannot read the checkpoint to share: {e}",
                    dir.display()
                )
            })?;
        } else {
            packed.push(0u8);
        }
    }
    collective
        .broadcast_bytes(&mut packed, "sending rank 0's checkpoint")
        .map_err(|e| e.to_string())?;
    if collective.rank() == 0 {
        return Ok(dir.map(Path::to_path_buf));
    }
    match packed.first() {
        Some(1) => {
            let target = into.join("checkpoint");
            unpack_dir(&packed[1..], &target).map_err(|e| {
                format!(
                    "{}: cannot write rank 0's checkpoint: {e}",
                    target.display()
                )
            })?;
            Ok(Some(target))
        }
        Some(0) => Ok(None),
        _ => Err("rank 0 sent an unreadable checkpoint".into()),
    }
}

/// Appends every regular file under `dir` as (path relative to `root`, bytes).
fn pack_dir(root: &Path, dir: &Path, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            pack_dir(root, &path, out)?;
        } else if kind.is_file() {
            let rel = path.strip_prefix(root).expect("under the root");
            let name = rel.to_string_lossy();
            let bytes = std::fs::read(&path)?;
            out.extend((name.len() as u64).to_le_bytes());
            out.extend(name.as_bytes());
            out.extend((bytes.len() as u64).to_le_bytes());
            out.extend(bytes);
        }
    }
    Ok(())
}

fn unpack_dir(mut packed: &[u8], into: &Path) -> std::io::Result<()> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "a truncated packing");
    let take = |n: usize, packed: &mut &[u8]| -> std::io::Result<Vec<u8>> {
        if packed.len() < n {
            return Err(bad());
        }
        let (head, rest) = packed.split_at(n);
        *packed = rest;
        Ok(head.to_vec())
    };
    std::fs::create_dir_all(into)?;
    while !packed.is_empty() {
        let len = u64::from_le_bytes(take(8, &mut packed)?.try_into().unwrap()) as usize;
        let name = String::from_utf8(take(len, &mut packed)?).map_err(|_| bad())?;
        if name.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(bad());
        }
        let len = u64::from_le_bytes(take(8, &mut packed)?.try_into().unwrap()) as usize;
        let bytes = take(len, &mut packed)?;
        let path = into.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddp::LocalGroup;
    use std::time::Duration;

    fn identity(config: &str, data: u64) -> RankIdentity {
        RankIdentity {
            config: config.into(),
            data,
            params: 10,
            trainable: 10,
            expected_world: None,
            base: None,
        }
    }

    fn check_on_threads(identities: Vec<RankIdentity>) -> Vec<Result<(), CollectiveError>> {
        let ranks = LocalGroup::new(identities.len(), Duration::from_secs(10));
        std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .into_iter()
                .zip(&identities)
                .map(|(mut g, id)| s.spawn(move || check_identity(&mut g, id)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn the_same_run_passes_and_differences_are_named_on_every_rank() {
        let config = "[train]\nlr = 0.001\nsteps = 10\n";
        assert!(
            check_on_threads(vec![identity(config, 7); 3])
                .iter()
                .all(Result::is_ok)
        );
        let other = "[train]\nlr = 0.002\nsteps = 10\n";
        let results = check_on_threads(vec![
            identity(config, 7),
            identity(config, 7),
            identity(other, 8),
        ]);
        for result in results {
            let message = result.unwrap_err().to_string();
            assert!(
                message.contains("rank 2: train.lr = 0.002 (rank 0: 0.001)"),
                "{message}"
            );
            assert!(message.contains("rank 2: its data differ"), "{message}");
            assert!(!message.contains("rank 1"), "{message}");
        }
        let mut told = identity(config, 7);
        told.expected_world = Some(3);
        let results = check_on_threads(vec![told.clone(), told]);
        for result in results {
            let message = result.unwrap_err().to_string();
            assert!(
                message.contains("--nproc 3, but the job has 2 ranks"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_checkpoint_directory_arrives_whole_on_the_other_ranks() {
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("a.json"), b"{}").unwrap();
        std::fs::create_dir(source.path().join("hooks")).unwrap();
        std::fs::write(source.path().join("hooks/ema.safetensors"), vec![7u8; 1000]).unwrap();
        let targets: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let ranks = LocalGroup::new(3, Duration::from_secs(10));
        let got: Vec<Option<PathBuf>> = std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .into_iter()
                .zip(&targets)
                .map(|(mut g, t)| {
                    let src = source.path();
                    s.spawn(move || share_checkpoint(&mut g, Some(src), t.path()).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got[0].as_deref(), Some(source.path()));
        for (dir, target) in got[1..].iter().zip(&targets[1..]) {
            let dir = dir.as_ref().unwrap();
            assert_eq!(dir, &target.path().join("checkpoint"));
            assert_eq!(std::fs::read(dir.join("a.json")).unwrap(), b"{}");
            assert_eq!(
                std::fs::read(dir.join("hooks/ema.safetensors")).unwrap(),
                vec![7u8; 1000]
            );
        }
    }

    #[test]
    fn the_fingerprint_sees_order_and_boundaries() {
        let a = data_fingerprint(&[&[1, 2, 3], &[4]]);
        assert_eq!(a, data_fingerprint(&[&[1, 2, 3], &[4]]));
        assert_ne!(a, data_fingerprint(&[&[1, 2], &[3, 4]]));
        assert_ne!(a, data_fingerprint(&[&[2, 1, 3], &[4]]));
    }
}
