//! Exponential moving averages of modules: the target branch of MSN, the teacher of DINO.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// Moves `target` toward `source`: `target <- momentum * target + (1 - momentum) * source`,
/// parameter by parameter in visiting order (the two modules must have the same structure).
/// BatchNorm running statistics are left alone: each copy keeps its own, as in MSN and
/// DINO. `momentum = 0` copies the source. Target parameters keep their ids and stay
/// without gradient.
///
/// # Panics
/// When the two modules' parameter lists differ.
pub fn blend<M: Module>(target: &mut M, source: &M, momentum: f64) {
    let mut collected = Collect::default();
    source.visit(&mut collected);
    let mut mapper = Ema {
        sources: collected.tensors.into_iter(),
        momentum,
        path: FieldPath::default(),
    };
    let current = target.clone();
    *target = current.map(&mut mapper);
    assert!(
        mapper.sources.next().is_none(),
        "source and target modules have different parameter lists"
    );
}

/// The field path a visitor or mapper is at.
#[derive(Default)]
struct FieldPath(Vec<String>);

impl FieldPath {
    /// BatchNorm running statistics are visited like parameters but are buffers: the EMA
    /// leaves them alone (each branch keeps its own, as in MSN).
    fn at_running_statistic(&self) -> bool {
        matches!(
            self.0.last().map(String::as_str),
            Some("running_mean" | "running_var")
        )
    }
}

/// Collects float parameters in visiting order, flattened.
#[derive(Default)]
struct Collect {
    tensors: Vec<Tensor<1>>,
    path: FieldPath,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.0.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.0.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.path.at_running_statistic() {
            return;
        }
        let value = param.val().detach();
        let n = value.shape().num_elements();
        self.tensors.push(value.reshape([n]));
    }
}

/// Blends each float parameter with the next collected source tensor.
struct Ema {
    sources: std::vec::IntoIter<Tensor<1>>,
    momentum: f64,
    path: FieldPath,
}

impl ModuleMapper for Ema {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.0.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.0.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.path.at_running_statistic() {
            return param;
        }
        let source = self
            .sources
            .next()
            .expect("source and target modules have different parameter lists");
        let momentum = self.momentum;
        param
            .map(move |target| {
                let shape = target.shape();
                assert_eq!(
                    shape.num_elements(),
                    source.shape().num_elements(),
                    "source and target parameter shapes differ"
                );
                let source = source.reshape(shape);
                let blended = if momentum == 0.0 {
                    source
                } else {
                    target
                        .detach()
                        .mul_scalar(momentum)
                        .add(source.mul_scalar(1.0 - momentum))
                };
                blended.detach()
            })
            .set_require_grad(false)
    }
}
