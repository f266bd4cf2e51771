//! Differentiable ops of your own, PyTorch's `torch.autograd.Function` in Ember: write the
//! forward pass and the backward pass (the input's gradient from the output's) on any
//! backend, and [`apply`] makes it one node of burn's autodiff graph. The forward pass
//! runs once, and the backward pass receives the saved input, so nothing is recomputed
//! or traced op by op.
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::tensor::{Tensor, backend::Backend};
//! use ember_ops::custom_op::{CustomOp, apply};
//!
//! /// `y = x³`, `dx = 3x² · dy`.
//! #[derive(Debug, Clone)]
//! struct Cube;
//!
//! impl<B: Backend> CustomOp<B, 1> for Cube {
//!     fn forward(&self, x: Tensor<B, 1>) -> Tensor<B, 1> {
//!         x.powi_scalar(3)
//!     }
//!     fn backward(&self, x: Tensor<B, 1>, dy: Tensor<B, 1>) -> Tensor<B, 1> {
//!         x.powi_scalar(2).mul_scalar(3.0) * dy
//!     }
//! }
//!
//! let x = Tensor::<Autodiff<Flex>, 1>::from_floats([1.0, -2.0], &Default::default())
//!     .require_grad();
//! let grads = apply(Cube, x.clone()).sum().backward();
//! let dx: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
//! assert_eq!(dx, [3.0, 12.0]);
//! ```

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};

/// An elementwise-or-not op of one `D`-dimensional input, with its gradient.
pub trait CustomOp<B: Backend, const D: usize>:
    Clone + Send + Sync + std::fmt::Debug + 'static
{
    /// `y = f(x)`.
    fn forward(&self, x: Tensor<B, D>) -> Tensor<B, D>;

    /// `∂L/∂x` from the saved input `x` and `dy = ∂L/∂y` (same shape as `y`).
    fn backward(&self, x: Tensor<B, D>, dy: Tensor<B, D>) -> Tensor<B, D>;
}

#[derive(Debug)]
struct CustomBackward<Op, const D: usize>(Op);

impl<B: Backend, Op: CustomOp<B, D>, const D: usize> Backward<B, 1> for CustomBackward<Op, D> {
    /// The input.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(ops.state));
        let op = self.0;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            let dy = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(dy));
            op.backward(x, dy).into_primitive().tensor()
        });
    }
}

/// `op` applied to `x` as one node of the autodiff graph: its forward pass on the inner
/// backend, its [`CustomOp::backward`] in the backward pass.
pub fn apply<B, C, Op, const D: usize>(
    op: Op,
    x: Tensor<Autodiff<B, C>, D>,
) -> Tensor<Autodiff<B, C>, D>
where
    B: Backend,
    C: CheckpointStrategy,
    Op: CustomOp<B, D>,
{
    let x = x.into_primitive().tensor();
    let forward = |input: FloatTensor<B>| {
        op.forward(Tensor::<B, D>::from_primitive(TensorPrimitive::Float(
            input,
        )))
        .into_primitive()
        .tensor()
    };
    let out = match CustomBackward(op.clone())
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = forward(x.primitive.clone());
            prep.finish(x.primitive, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
