//! `ember train --nproc N` and `mpirun -np N ember train` over loopback: the same run as
//! one process, and the faults (a killed rank, a stopped one, ranks given different
//! runs, no launcher) ending the job with a clear message and the checkpoint intact.
//! Built with the `mpi` feature and run where `mpirun` is installed (CI installs
//! OpenMPI); without the feature, `--nproc` must say how to get it.

// Without the `mpi` feature only the build-hint test runs; the helpers wait for MPI.
#![cfg_attr(not(feature = "mpi"), allow(dead_code))]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{corpus, ember};

/// A run small enough for several processes on two cores, without dropout, one shard per
/// rank.
fn args<'a>(data: &'a Path, out: &'a Path, steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        steps,
        "--set",
        "model.d_model=32",
        "--set",
        "model.n_layers=2",
        "--set",
        "model.d_ff=64",
        "--set",
        "model.max_seq_len=16",
        "--set",
        "model.dropout=0.0",
        "--set",
        "train.batch_shards=1",
        "--set",
        "train.eval_every=3",
        "--set",
        "train.eval_batches=1",
        "--set",
        "train.log_every=1",
    ];
    args.extend_from_slice(extra);
    args
}

/// `mpirun` with what a root user on a two-core machine needs (OpenMPI).
fn mpirun(np: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--oversubscribe",
        "--bind-to",
        "none",
        "--allow-run-as-root",
        "-np",
    ])
    .arg(np.to_string())
    .env("RAYON_NUM_THREADS", "1");
    cmd
}

fn metrics(dir: &Path) -> Vec<ember_train::StepMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let ckpt = ember_train::Checkpoint::open(&dir.join("checkpoint")).unwrap();
    let model = ckpt
        .load_model::<burn::backend::Flex>(&Default::default())
        .unwrap();
    let mut out: Vec<(String, Vec<f32>)> = ember_nn::param_values(&model)
        .into_iter()
        .map(|(path, data)| (path, data.to_vec::<f32>().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every step's loss and gradient norm, the validation losses and the final weights
/// agree to `tol`.
fn assert_same_run(a: &Path, b: &Path, tol: f64) {
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x.step, y.step);
        assert!(
            (x.train_loss - y.train_loss).abs() <= tol,
            "step {}: {} vs {}",
            x.step,
            x.train_loss,
            y.train_loss
        );
        assert!(
            (x.grad_norm - y.grad_norm).abs() <= tol,
            "step {}: {} vs {}",
            x.step,
            x.grad_norm,
            y.grad_norm
        );
        match (x.val_loss, y.val_loss) {
            (Some(p), Some(q)) => assert!((p - q).abs() <= tol, "step {}: val {p} vs {q}", x.step),
            (p, q) => assert_eq!(p.is_some(), q.is_some(), "step {}", x.step),
        }
    }
    let (wa, wb) = (weights(a), weights(b));
    assert!(!wa.is_empty());
    assert_eq!(
        wa.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        wb.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for ((name, wa), (_, wb)) in wa.iter().zip(&wb) {
        for (p, q) in wa.iter().zip(wb) {
            assert!(f64::from((p - q).abs()) <= tol, "{name}: {p} vs {q}");
        }
    }
}

fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(feature = "mpi")]
#[test]
fn two_ranks_launched_by_nproc_train_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let (single, ddp) = (tmp.path().join("single"), tmp.path().join("ddp"));
    let extra = ["--set", "train.batch_size=4", "--set", "train.grad_accum=2"];
    succeeded(&ember(&args(&data, &single, "train.steps=6", &extra)));
    let mut nproc = args(&data, &ddp, "train.steps=6", &extra);
    nproc.extend(["--nproc", "2"]);
    let out = ember(&nproc);
    succeeded(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Rank 0 alone speaks.
    assert_eq!(
        stdout.matches("data-parallel over 2 ranks").count(),
        1,
        "{stdout}"
    );
    assert_eq!(stdout.matches("done: step 6").count(), 1, "{stdout}");
    assert_same_run(&single, &ddp, 1e-5);
}

#[cfg(feature = "mpi")]
#[test]
fn three_ranks_under_mpirun_with_uneven_shares_train_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let (single, ddp) = (tmp.path().join("single"), tmp.path().join("ddp"));
    // 5 rows: shares of 2, 2 and 1.
    let extra = ["--set", "train.batch_size=5", "--quiet"];
    succeeded(&ember(&args(&data, &single, "train.steps=4", &extra)));
    let out = mpirun(3)
        .arg(env!("CARGO_BIN_EXE_ember"))
        .args(args(&data, &ddp, "train.steps=4", &extra))
        .output()
        .unwrap();
    succeeded(&out);
    assert_same_run(&single, &ddp, 1e-5);
}

#[cfg(feature = "mpi")]
#[test]
fn ranks_given_different_runs_or_the_wrong_count_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let out_dir = tmp.path().join("out");
    let exe = env!("CARGO_BIN_EXE_ember");
    // MPMD: one rank each with its own learning rate.
    let mut cmd = mpirun(1);
    cmd.arg(exe)
        .args(args(
            &data,
            &out_dir,
            "train.steps=2",
            &["--set", "optim.lr=0.001"],
        ))
        .args([":", "-np", "1", exe])
        .args(args(
            &data,
            &out_dir,
            "train.steps=2",
            &["--set", "optim.lr=0.002"],
        ));
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A configuration error: exit 2 (through MPI_Abort's status).
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rank 1: optim.lr = 0.002 (rank 0: 0.001)"),
        "{stderr}"
    );
    assert!(!out_dir.join("checkpoint").exists());
    // --nproc 3 inside a job of 2.
    let out = mpirun(2)
        .arg(exe)
        .args(args(&data, &out_dir, "train.steps=2", &["--nproc", "3"]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A configuration error: exit 2 (through MPI_Abort's status).
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--nproc 3, but the job has 2 ranks"),
        "{stderr}"
    );
}

#[test]
fn nproc_without_an_mpi_launcher_or_build_says_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let out_dir = tmp.path().join("out");
    let mut nproc = args(&data, &out_dir, "train.steps=2", &[]);
    nproc.extend(["--nproc", "2"]);
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(&nproc)
        .env("PATH", tmp.path())
        .env_remove("EMBER_MPIRUN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let needle = if cfg!(feature = "mpi") {
        "--nproc 2: no MPI launcher on PATH (mpirun or mpiexec)"
    } else {
        "--nproc 2: this ember was built without MPI"
    };
    assert!(stderr.contains(needle), "{stderr}");
    let mut zero = args(&data, &out_dir, "train.steps=2", &[]);
    zero.extend(["--nproc", "0"]);
    let out = ember(&zero);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nproc: must be at least 1"));
}

/// The pid of rank `rank` of the job writing to `out` (found through /proc: its command
/// line names `out`, its environment its rank).
fn rank_pid(out: &Path, rank: usize) -> Option<i32> {
    let needle = out.to_str().unwrap();
    let rank_var = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()? {
        let entry = entry.ok()?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let has = |bytes: &[u8], s: &str| bytes.split(|&b| b == 0).any(|part| part == s.as_bytes());
        if has(&cmdline, needle)
            && has(&environ, &rank_var)
            && !has(&cmdline, "--allow-run-as-root")
        {
            return Some(pid);
        }
    }
    None
}

/// Kills its processes when dropped, whatever the test's outcome: the launcher's process
/// group (mpirun and the ranks) and any pid added.
struct Reaper(Vec<String>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for target in &self.0 {
            let _ = Command::new("kill").args(["-KILL", "--", target]).status();
        }
    }
}

/// Waits (up to `limit`) for `child` to end; kills its group and fails past that.
fn wait_bounded(mut child: Child, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the job did not end within {limit:?}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a long two-rank run checkpointing every 2 steps and waits for its first
/// checkpoint.
fn start_long_run(data: &Path, out: &Path, extra: &[&str]) -> (Child, Reaper) {
    let mut a = args(
        data,
        out,
        "train.steps=100000",
        &[
            "--set",
            "train.checkpoint_every=2",
            "--quiet",
            "--nproc",
            "2",
        ],
    );
    a.extend_from_slice(extra);
    // Its own process group, so that a failing test can kill mpirun and the ranks.
    let child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(&a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let reaper = Reaper(vec![format!("-{}", child.id())]);
    let start = Instant::now();
    while !out.join("checkpoint/train_state.json").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, reaper)
}

fn signal(pid: i32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[cfg(feature = "mpi")]
#[test]
fn a_killed_rank_ends_the_job_quickly_and_the_run_resumes_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let out = tmp.path().join("killed");
    let (child, _reaper) = start_long_run(&data, &out, &[]);
    let pid = rank_pid(&out, 1).expect("rank 1 is running");
    signal(pid, "-KILL");
    let (output, took) = wait_bounded(child, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rank 1"), "{stderr}");
    assert!(stderr.contains("data-parallel job ended"), "{stderr}");
    assert!(took < Duration::from_secs(60));
    // The checkpoint is whole: it loads, and the run continues from it.
    let step = ember_train::Checkpoint::open(&out.join("checkpoint"))
        .unwrap()
        .state
        .step;
    let target = format!("train.steps={}", step + 2);
    let mut resume = args(&data, &out, &target, &["--quiet", "--nproc", "2"]);
    let out_str = out.to_str().unwrap().to_string();
    resume.extend(["--resume", &out_str]);
    succeeded(&ember(&resume));
    let resumed = ember_train::Checkpoint::open(&out.join("checkpoint")).unwrap();
    assert_eq!(resumed.state.step, step + 2);
}

#[cfg(feature = "mpi")]
#[test]
fn a_stopped_rank_is_named_when_the_collective_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let out = tmp.path().join("stopped");
    let (child, mut reaper) = start_long_run(&data, &out, &["--collective-timeout", "5"]);
    let pid = rank_pid(&out, 1).expect("rank 1 is running");
    // Whatever happens, the stopped rank must not outlive the test.
    reaper.0.push(pid.to_string());
    signal(pid, "-STOP");
    let (output, took) = wait_bounded(child, Duration::from_secs(60));
    // Whatever happened, the stopped rank must not outlive the test.
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rank 0 of 2:") && stderr.contains("rank 1 did not answer"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(ember_train::Checkpoint::open(&out.join("checkpoint")).is_ok());
}

#[cfg(feature = "mpi")]
#[test]
fn a_lora_finetune_over_two_ranks_trains_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    let text: String = (0..40)
        .map(|i| {
            let (a, b) = (i * 7 % 31, i * 13 % 17);
            format!(
                "{{\"prompt\": \"{a} plus {b} is\", \"completion\": \" {}\"}}\n",
                a + b
            )
        })
        .collect();
    std::fs::write(&data, text).unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-hf/tests/fixtures/mistral-sliding-window");
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "finetune",
            "--model",
            base.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--method",
            "lora",
            "--quiet",
        ];
        for set in [
            "peft.r=4",
            "peft.lora_dropout=0.0",
            "data.seq_len=24",
            "train.steps=3",
            "train.batch_size=4",
            "train.batch_shards=1",
            "train.eval_every=3",
            "train.log_every=1",
            "optim.lr=1e-2",
        ] {
            args.extend(["--set", set]);
        }
        args.extend_from_slice(extra);
        ember(&args)
    };
    let (single, ddp) = (tmp.path().join("single"), tmp.path().join("ddp"));
    succeeded(&run(&single, &[]));
    let out = run(&ddp, &["--nproc", "2"]);
    succeeded(&out);
    // The two processes drew their LoRA initializations alike (same seed) and rank 0's
    // was broadcast: the runs agree from the first step.
    let (a, b) = (metrics(&single), metrics(&ddp));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x.train_loss - y.train_loss).abs() <= 1e-5,
            "step {}: {} vs {}",
            x.step,
            x.train_loss,
            y.train_loss
        );
        assert!(
            (x.grad_norm - y.grad_norm).abs() <= 1e-5,
            "step {}: {} vs {}",
            x.step,
            x.grad_norm,
            y.grad_norm
        );
    }
}
