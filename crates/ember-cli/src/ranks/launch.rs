//! `--nproc N` outside an MPI job: start `N` local ranks of this same command through the
//! system's MPI launcher and wait for them.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use crate::error::CliError;

/// Set in the ranks' environment: they never launch again, whatever the launcher tells
/// them.
pub const CHILD: &str = "EMBER_DDP_RANK";

/// Runs this command again as `nproc` ranks under `mpirun`/`mpiexec` (or `$EMBER_MPIRUN`)
/// and returns their outcome: 0 when every rank succeeded, 2 for a usage or
/// configuration error, 1 for anything else.
pub fn launch(nproc: usize) -> Result<ExitCode, CliError> {
    if !cfg!(feature = "mpi") {
        return Err(CliError::Usage(format!(
            "--nproc {nproc}: this ember was built without MPI; build it with `cargo build --release -p ember-cli --features mpi` (needs OpenMPI or MPICH and libclang)"
        )));
    }
    let launcher = find_launcher().ok_or_else(|| {
        CliError::Usage(format!(
            "--nproc {nproc}: no MPI launcher on PATH (mpirun or mpiexec); install OpenMPI or MPICH (Debian: apt install openmpi-bin), or name one in EMBER_MPIRUN"
        ))
    })?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Runtime(format!("--nproc: cannot find this program: {e}")))?;
    let mut cmd = Command::new(&launcher);
    cmd.arg("-np").arg(nproc.to_string()).env(CHILD, "1");
    // Each rank's share of the cores for its thread pool, unless the user chose.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        cmd.env("RAYON_NUM_THREADS", (cores / nproc).max(1).to_string());
    }
    if is_open_mpi(&launcher) {
        // Local ranks may outnumber the cores; ranks use several threads each; the
        // thread count reaches ranks on other hosts too.
        cmd.args([
            "--oversubscribe",
            "--bind-to",
            "none",
            "-x",
            "RAYON_NUM_THREADS",
            "-x",
            CHILD,
        ]);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.arg("--allow-run-as-root");
        }
    }
    cmd.arg(exe).args(std::env::args_os().skip(1));
    let status = cmd.status().map_err(|e| {
        CliError::Runtime(format!("--nproc: cannot run {}: {e}", launcher.display()))
    })?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(2) => ExitCode::from(2),
        code => {
            let how = code.map_or("a signal".to_string(), |c| format!("status {c}"));
            eprintln!(
                "error: the data-parallel job ended with {how} (the failing rank's message is above); a run's last checkpoint stays usable with --resume"
            );
            ExitCode::from(1)
        }
    })
}

/// `$EMBER_MPIRUN`, else `mpirun` or `mpiexec` on `PATH`.
fn find_launcher() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("EMBER_MPIRUN") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    ["mpirun", "mpiexec"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Whether `launcher` is OpenMPI's (whose flags differ from MPICH's).
fn is_open_mpi(launcher: &std::path::Path) -> bool {
    Command::new(launcher)
        .arg("--version")
        .output()
        .map(|out| {
            let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            text.contains("Open MPI") || text.contains("OpenRTE")
        })
        .unwrap_or(false)
}
