//! Parameters by dotted path: listing them, giving them stable ids, and freezing them.
//!
//! Finding parameters by dotted path (`layers.0.attn.q_proj.weight`) and freezing them by
//! glob pattern (`layers.*.attn.*`, `tok_embeddings.*`).
//!
//! Paths follow the module's field names; enum variants (such as `Norm::LayerNorm`) are
//! left out, so a norm's scale is `layers.0.attn_norm.gamma` whichever kind it is.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// One float parameter of a module.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// Dotted path, e.g. `layers.0.mlp.up_proj.weight`.
    pub path: String,
    pub shape: Vec<usize>,
    pub id: ParamId,
}

/// Tracks the dotted path while a visitor or mapper walks a module.
#[derive(Default)]
struct PathStack {
    names: Vec<String>,
    /// Whether each entered level contributed a name (enum variants do not).
    named: Vec<bool>,
}

impl PathStack {
    fn enter(&mut self, name: &str, container_type: &str) {
        let is_variant = container_type.starts_with("Enum:");
        if !is_variant {
            self.names.push(name.to_string());
        }
        self.named.push(!is_variant);
    }

    fn exit(&mut self) {
        if self.named.pop() == Some(true) {
            self.names.pop();
        }
    }

    fn path(&self) -> String {
        self.names.join(".")
    }
}

struct Lister {
    stack: PathStack,
    params: Vec<ParamInfo>,
}

impl<B: Backend> ModuleVisitor<B> for Lister {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.params.push(ParamInfo {
            path: self.stack.path(),
            shape: param.shape().dims::<D>().to_vec(),
            id: param.id,
        });
    }
}

/// Every float parameter of `module`, in declaration order.
pub fn param_infos<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut lister = Lister {
        stack: PathStack::default(),
        params: Vec::new(),
    };
    module.visit(&mut lister);
    lister.params
}

/// `true` when `path` matches `pattern`, where `*` matches any run of characters
/// (dots included) and everything else matches itself.
pub fn matches_pattern(pattern: &str, path: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), path.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut star_si) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            star_si = si;
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            star_si += 1;
            si = star_si;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

struct Freezer<'a> {
    stack: PathStack,
    patterns: &'a [&'a str],
    frozen: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Freezer<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.stack.path();
        if self.patterns.iter().any(|p| matches_pattern(p, &path)) {
            self.frozen.push(path);
            param.set_require_grad(false)
        } else {
            param
        }
    }
}

/// Stops gradients for every float parameter whose path matches one of `patterns`.
/// Returns the module and the paths that were frozen.
pub fn freeze_matching<B: Backend, M: Module<B>>(module: M, patterns: &[&str]) -> (M, Vec<String>) {
    let mut freezer = Freezer {
        stack: PathStack::default(),
        patterns,
        frozen: Vec::new(),
    };
    let module = module.map(&mut freezer);
    (module, freezer.frozen)
}

/// FNV-1a hash of a parameter path: the same path gives the same id in every process.
pub fn stable_param_id(path: &str) -> ParamId {
    let hash = path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    ParamId::from(hash)
}

struct StableIds {
    stack: PathStack,
}

impl<B: Backend> ModuleMapper<B> for StableIds {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        Param::from_mapped_value(stable_param_id(&self.stack.path()), tensor, mapper)
    }
}

/// Replaces every float parameter's random id with [`stable_param_id`] of its path, so
/// that optimizer state keyed by id survives a save/load cycle in another process.
pub fn assign_stable_ids<B: Backend, M: Module<B>>(module: M) -> M {
    module.map(&mut StableIds {
        stack: PathStack::default(),
    })
}

/// Supplies the new value of one parameter: given its dotted path and shape, the data
/// (same shape, any float type) or an error message.
pub type ParamSource<'a> = dyn FnMut(&str, &[usize]) -> Result<TensorData, String> + 'a;

struct Replacer<'a, 'b> {
    stack: PathStack,
    source: &'a mut ParamSource<'b>,
    /// Only the parameters whose path this accepts are replaced.
    only: &'a dyn Fn(&str) -> bool,
    error: Option<String>,
}

impl<B: Backend> ModuleMapper<B> for Replacer<'_, '_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.error.is_some() {
            return param;
        }
        let path = self.stack.path();
        if !(self.only)(&path) {
            return param;
        }
        let shape = param.shape().dims::<D>();
        let (id, device) = (param.id, param.lazy_device());
        let trains = param.is_require_grad();
        // The old value is released before the new one is built, so replacing every
        // parameter never holds two copies of the model.
        drop(param);
        match (self.source)(&path, &shape) {
            Ok(data) if data.shape.as_slice() == shape.as_slice() => Param::initialized(
                id,
                Tensor::from_data(data.convert::<f32>(), &device).set_require_grad(trains),
            ),
            result => {
                self.error = Some(match result {
                    Ok(data) => format!(
                        "{path}: got shape {:?}, the model needs {shape:?}",
                        data.shape.as_slice()
                    ),
                    Err(message) => message,
                });
                Param::initialized(id, Tensor::zeros(shape, &device))
            }
        }
    }
}

/// Replaces every float parameter of `module` with the value `source` gives for its path,
/// keeping ids. Stops at the first error.
pub fn replace_params<B: Backend, M: Module<B>>(
    module: M,
    source: &mut ParamSource<'_>,
) -> Result<M, String> {
    replace_params_where(module, &|_| true, source)
}

/// [`replace_params`] for the parameters whose path `only` accepts; the others are left
/// as they are. A replaced parameter keeps its id and whether it requires a gradient.
pub fn replace_params_where<B: Backend, M: Module<B>>(
    module: M,
    only: &dyn Fn(&str) -> bool,
    source: &mut ParamSource<'_>,
) -> Result<M, String> {
    let mut replacer = Replacer {
        stack: PathStack::default(),
        source,
        only,
        error: None,
    };
    let module = module.map(&mut replacer);
    match replacer.error {
        Some(error) => Err(error),
        None => Ok(module),
    }
}

struct Collector {
    stack: PathStack,
    values: Vec<(String, TensorData)>,
    /// Only parameters that require a gradient.
    trainable_only: bool,
}

impl<B: Backend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.trainable_only && !param.is_require_grad() {
            return;
        }
        self.values
            .push((self.stack.path(), param.val().into_data()));
    }
}

/// Every float parameter's path and value, in declaration order.
pub fn param_values<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, TensorData)> {
    let mut collector = Collector {
        stack: PathStack::default(),
        values: Vec::new(),
        trainable_only: false,
    };
    module.visit(&mut collector);
    collector.values
}

/// The path and value of every float parameter that requires a gradient (on an autodiff
/// backend: the ones that train), in declaration order; frozen ones are not copied.
pub fn trainable_values<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, TensorData)> {
    let mut collector = Collector {
        stack: PathStack::default(),
        values: Vec::new(),
        trainable_only: true,
    };
    module.visit(&mut collector);
    collector.values
}

/// Every float parameter as `(shape, values converted to f32)`, by path.
pub fn param_values_f32<B: Backend, M: Module<B>>(
    module: &M,
) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    param_values(module)
        .into_iter()
        .map(|(path, data)| {
            let shape = data.shape.to_vec();
            let values = data
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("float parameters convert to f32");
            (path, (shape, values))
        })
        .collect()
}

struct Trainable<F> {
    stack: PathStack,
    trainable: F,
}

impl<B: Backend, F: FnMut(&str) -> bool> ModuleMapper<B> for Trainable<F> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.stack.path();
        param.set_require_grad((self.trainable)(&path))
    }
}

/// Sets every float parameter trainable or frozen as `trainable(path)` says (a frozen
/// parameter gets no gradient, hence no optimizer state).
pub fn set_trainable<B: Backend, M: Module<B>>(
    module: M,
    trainable: impl FnMut(&str) -> bool,
) -> M {
    module.map(&mut Trainable {
        stack: PathStack::default(),
        trainable,
    })
}

/// Collects every float parameter flattened, with its shape, in visiting order.
struct Flattener<B: Backend> {
    values: Vec<(Vec<usize>, Tensor<B, 1>)>,
}

impl<B: Backend> ModuleVisitor<B> for Flattener<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let shape = param.shape().dims::<D>().to_vec();
        self.values.push((shape, param.val().flatten(0, D - 1)));
    }
}

struct Blender<B: Backend> {
    /// `source`'s parameters, in visiting order (consumed from the front).
    source: std::vec::IntoIter<(Vec<usize>, Tensor<B, 1>)>,
    t: f64,
    mismatch: bool,
}

impl<B: Backend> ModuleMapper<B> for Blender<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some((source_shape, source)) = self.source.next() else {
            self.mismatch = true;
            return param;
        };
        let shape = param.shape();
        if source_shape.as_slice() != shape.dims::<D>().as_slice() {
            self.mismatch = true;
            return param;
        }
        let (id, trains) = (param.id, param.is_require_grad());
        let value = param.val();
        drop(param);
        let value = value.detach();
        let blended = value.clone() + (source.reshape(shape) - value).mul_scalar(self.t);
        Param::initialized(id, blended.set_require_grad(trains))
    }
}

/// `target ← target + t · (source − target)` for every float parameter (EMA updates and
/// weight averages): both modules must have the same structure and shapes, else `Err`.
/// Ids and trainability of `target` are kept.
pub fn blend_params<B: Backend, M: Module<B>>(target: M, source: &M, t: f64) -> Result<M, String> {
    let mut flat = Flattener { values: Vec::new() };
    source.visit(&mut flat);
    let count = flat.values.len();
    let mut blender = Blender {
        source: flat.values.into_iter(),
        t,
        mismatch: false,
    };
    let target = target.map(&mut blender);
    if blender.mismatch || blender.source.next().is_some() {
        return Err(format!(
            "the models differ in their parameters (the source has {count} tensors)"
        ));
    }
    Ok(target)
}

#[cfg(test)]
mod blend_tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::{Linear, LinearConfig};

    #[test]
    fn blending_moves_each_weight_the_given_share_of_the_way() {
        let device = Default::default();
        let a: Linear<Flex> = LinearConfig::new(3, 2).init(&device);
        let b: Linear<Flex> = LinearConfig::new(3, 2).init(&device);
        let values = |m: &Linear<Flex>| -> Vec<f32> {
            param_values(m)
                .into_iter()
                .flat_map(|(_, d)| d.to_vec::<f32>().unwrap())
                .collect()
        };
        let (va, vb) = (values(&a), values(&b));
        let blended = blend_params(a.clone(), &b, 0.25).unwrap();
        for ((x, y), z) in va.iter().zip(&vb).zip(values(&blended)) {
            assert!((z - (x + 0.25 * (y - x))).abs() < 1e-6);
        }
        // Different shapes are refused.
        let c: Linear<Flex> = LinearConfig::new(4, 2).init(&device);
        assert!(blend_params(a, &c, 0.5).is_err());
    }
}
