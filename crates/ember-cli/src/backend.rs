//! The backends compiled into this binary (cargo features `flex`, `wgpu`, `cuda`) and the dispatch from `--backend` to generic code.

use clap::ValueEnum;

use crate::commands::Runner;
use crate::error::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendName {
    Flex,
    Wgpu,
    Cuda,
}

impl BackendName {
    /// The first compiled-in backend, in the order flex, wgpu, cuda.
    pub fn default_name() -> Self {
        if cfg!(feature = "flex") {
            BackendName::Flex
        } else if cfg!(feature = "wgpu") {
            BackendName::Wgpu
        } else {
            BackendName::Cuda
        }
    }
}

/// Runs `f` with a [`Runner`] for the chosen backend.
pub fn dispatch(
    name: BackendName,
    f: impl FnOnce(&dyn Runner) -> Result<(), CliError>,
) -> Result<(), CliError> {
    match name {
        #[cfg(feature = "flex")]
        BackendName::Flex => f(&crate::commands::On::<burn::backend::Flex>::new(
            Default::default(),
            true,
        )),
        #[cfg(feature = "wgpu")]
        BackendName::Wgpu => f(&crate::commands::On::<burn::backend::Wgpu>::new(
            Default::default(),
            false,
        )),
        #[cfg(feature = "cuda")]
        BackendName::Cuda => {
            check_cuda_driver()?;
            f(&crate::commands::On::<burn::backend::Cuda>::new(
                Default::default(),
                false,
            ))
        }
        #[allow(unreachable_patterns)]
        other => Err(CliError::Usage(format!(
            "--backend {}: not compiled into this binary (rebuild with `--features {}`)",
            format!("{other:?}").to_lowercase(),
            format!("{other:?}").to_lowercase()
        ))),
    }
}

/// cudarc panics when the driver library is missing; check for it first.
#[cfg(feature = "cuda")]
fn check_cuda_driver() -> Result<(), CliError> {
    let name = c"libcuda.so.1";
    // SAFETY: dlopen with a valid C string; the handle is closed right away.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY) };
    if handle.is_null() {
        return Err(CliError::Runtime(
            "--backend cuda: the NVIDIA driver library libcuda.so.1 was not found (no CUDA GPU on this machine?)".into(),
        ));
    }
    // SAFETY: the handle came from dlopen above.
    unsafe { libc::dlclose(handle) };
    Ok(())
}
