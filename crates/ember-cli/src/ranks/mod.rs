//! `ember train --nproc N` and `mpirun -np N ember train …`: launching the ranks of a
//! data-parallel run, and this process's place among them.

mod job;
mod launch;

pub use job::{check_flags, finish, is_follower, join, rank_label, stop_job};
pub use launch::{CHILD, launch};
