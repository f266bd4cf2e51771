//! Backends that run the default (composed) bodies of every fused op. `Flex` has its own
//! kernels in [`crate::kernels::flex`]; `Autodiff<B>` is in [`super::autodiff`].

#[cfg(feature = "wgpu")]
impl super::FusedBackend for burn::backend::Wgpu {}

#[cfg(feature = "cuda")]
impl super::FusedBackend for burn::backend::Cuda {}
