//! This process as one rank of an MPI job: joining it, the rank's label in messages, and
//! ending every rank when this one fails.

use std::sync::Mutex;

use ember_train::ddp::{DataParallel, SharedCollective};

use crate::error::CliError;

/// The job this process joined (until [`finish`]).
struct Job {
    collective: SharedCollective,
    rank: usize,
    world: usize,
    /// Answers the other ranks' liveness probes between collectives.
    keep_alive: ember_train::ddp::KeepAlive,
}

static JOB: Mutex<Option<Job>> = Mutex::new(None);

/// The world size an MPI launcher announced in the environment, before MPI starts.
fn announced_world() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|var| std::env::var(var).ok()?.parse().ok())
}

/// Refuses `--nproc 0` and a collective timeout that is not a positive number of seconds.
pub fn check_flags(nproc: Option<usize>, timeout_s: f64) -> Result<(), CliError> {
    if nproc == Some(0) {
        return Err(CliError::Usage("--nproc: must be at least 1".into()));
    }
    if !(timeout_s > 0.0 && timeout_s.is_finite()) {
        return Err(CliError::Usage(format!(
            "--collective-timeout: must be a positive number of seconds, got {timeout_s}"
        )));
    }
    Ok(())
}

/// Joins the MPI job this process was started in, if any: the data-parallel setting of
/// the run. `nproc`: the world size the user asked for; `timeout_s`: how long a
/// collective may wait.
pub fn join(nproc: Option<usize>, timeout_s: f64) -> Result<Option<DataParallel>, CliError> {
    if !ember_train::ddp::launched_by_mpi() {
        return Ok(None);
    }
    #[cfg(feature = "mpi")]
    {
        let timeout = std::time::Duration::from_secs_f64(timeout_s);
        let collective = ember_train::ddp::MpiCollective::init(timeout)
            .map_err(|e| CliError::Runtime(format!("MPI: {e}")))?;
        use ember_train::ddp::Collective;
        let (rank, world) = (collective.rank(), collective.world());
        let shared: SharedCollective = std::sync::Arc::new(Mutex::new(collective));
        *JOB.lock().unwrap_or_else(|p| p.into_inner()) = Some(Job {
            collective: shared.clone(),
            rank,
            world,
            keep_alive: ember_train::ddp::spawn_keep_alive(shared.clone()),
        });
        let mut data_parallel = DataParallel::new(shared);
        data_parallel.expected_world = nproc;
        Ok(Some(data_parallel))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = timeout_s;
        // Only a launcher that says it started this process alone is harmless here.
        match announced_world() {
            Some(1) if nproc.is_none_or(|n| n == 1) => Ok(None),
            world => Err(CliError::Usage(format!(
                "started by an MPI launcher{}, but this ember was built without MPI: build it with `cargo build --release -p ember-cli --features mpi`",
                world.map_or(String::new(), |n| format!(" as one of {n} ranks"))
            ))),
        }
    }
}

/// Whether this process is a rank other than 0 (which prints and writes nothing).
pub fn is_follower() -> bool {
    JOB.lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|job| job.rank != 0)
}

/// `"rank R of N: "` inside a job of several ranks, else empty.
pub fn rank_label() -> String {
    let job = JOB.lock().unwrap_or_else(|p| p.into_inner());
    match job.as_ref() {
        Some(job) if job.world > 1 => format!("rank {} of {}: ", job.rank, job.world),
        _ => match (announced_world(), std::env::var("OMPI_COMM_WORLD_RANK")) {
            (Some(world), Ok(rank)) if world > 1 => format!("rank {rank} of {world}: "),
            _ => String::new(),
        },
    }
}

/// After this rank failed (its message printed): ends every rank of the job, with
/// `code` as the job's status. Without a job, returns.
pub fn stop_job(code: u8) {
    let job = JOB.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(job) = job
        && job.world > 1
    {
        let mut c = job.collective.lock().unwrap_or_else(|p| p.into_inner());
        c.abort(i32::from(code));
    }
}

/// Leaves the job after success: the keep-alive thread stops, then MPI is finalized (the
/// trainer has let go of it).
pub fn finish() {
    let job = JOB.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(Job {
        collective,
        keep_alive,
        ..
    }) = job
    {
        drop(keep_alive);
        drop(collective);
    }
}
