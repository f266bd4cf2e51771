//! The autodiff graph of a quantized product keeps the packed codes, not a dequantized
//! f32 copy of the weight: measured as the bytes still allocated between the forward pass
//! and the backward pass, with a counting allocator (this file is its own test binary and
//! holds one test, so nothing else allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use ember_ops::quant::{self, QuantFormat, QuantSpec, quantize_host};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

type AD = Autodiff<Flex>;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[test]
fn the_graph_between_forward_and_backward_holds_no_dequantized_weight() {
    let (d_in, d_out, rows) = (512, 512, 4);
    let weight_bytes = (4 * d_in * d_out) as isize;
    let spec = QuantSpec::new(QuantFormat::Nf4, 64, d_in, d_out).unwrap();
    let w: Vec<f32> = (0..d_in * d_out)
        .map(|i| ((i * 7919 % 2003) as f32 / 1001.0 - 1.0) * 0.1)
        .collect();
    let (codes, scales) = quantize_host(&w, &spec);
    let device = Default::default();
    let codes =
        Tensor::<AD, 2, Int>::from_data(TensorData::new(codes, [spec.words(), d_out]), &device);
    let scales =
        Tensor::<AD, 2>::from_data(TensorData::new(scales, [spec.n_blocks(), d_out]), &device);
    let x_data: Vec<f32> = (0..rows * d_in).map(|i| (i % 13) as f32 / 13.0).collect();
    let x = || Tensor::<AD, 2>::from_data(TensorData::new(x_data.clone(), [rows, d_in]), &device);

    // `f` runs a forward pass; returns the bytes it left allocated until its backward pass.
    let retained = |f: &dyn Fn(Tensor<AD, 2>) -> Tensor<AD, 2>| {
        let input = x().require_grad();
        let before = live();
        let y = f(input.clone());
        let held = live() - before;
        let grads = y.sum().backward();
        assert!(input.grad(&grads).is_some());
        held
    };
    let quantized = |x| quant::quantized_matmul(x, codes.clone(), scales.clone(), spec);
    let plain = |x: Tensor<AD, 2>| x.matmul(quant::dequantize(codes.clone(), scales.clone(), spec));
    // Warm-up: thread pools and lazily built state.
    retained(&quantized);
    retained(&plain);

    let held_quantized = retained(&quantized);
    let held_plain = retained(&plain);
    // The plain product's node keeps its right-hand side: the whole f32 weight (1 MiB),
    // which shows the measurement sees a retained weight.
    assert!(
        held_plain >= weight_bytes,
        "plain product: {held_plain} bytes held, expected at least the weight's {weight_bytes}"
    );
    // The quantized node keeps shared handles on the codes: the output (8 KiB) and the
    // graph's bookkeeping, far below even the codes' 128 KiB.
    assert!(
        held_quantized < weight_bytes / 16,
        "quantized product: {held_quantized} bytes held between forward and backward"
    );
}
