//! A `VarStore` as a flat parameter vector, in the layout's fixed order (variables
//! sorted by name). Batch-norm layers (variables under a `bn` path component) are
//! marked as normalisation: their weight and bias as affine parameters, their running
//! mean and variance as statistics, so strategies can keep them local (FedBN) or
//! average them like the rest (FedAvg, FedProx, FedAvgM).

use tch::{Kind, Tensor, nn::VarStore};
use tessera_core::{LayoutError, ParamKind, ParamLayout};

fn kind_of(name: &str) -> ParamKind {
    let in_norm = name
        .split('.')
        .any(|part| part == "bn" || part.starts_with("bn_") || part.ends_with("_bn"));
    if name.ends_with("running_mean") || name.ends_with("running_var") {
        ParamKind::NormStatistic
    } else if in_norm {
        ParamKind::NormAffine
    } else {
        ParamKind::Weight
    }
}

/// The layout of every variable of `vs` (trainable or not).
pub fn layout_of(vs: &VarStore) -> Result<ParamLayout, LayoutError> {
    let tensors = vs.variables().into_iter().map(|(name, t)| {
        let kind = kind_of(&name);
        (name, t.size(), kind)
    });
    ParamLayout::new(tensors.collect())
}

/// All variables, flattened in layout order.
pub fn flatten(vs: &VarStore, layout: &ParamLayout) -> Vec<f32> {
    let vars = vs.variables();
    let mut out = Vec::with_capacity(layout.len());
    for e in layout.entries() {
        let t = vars[&e.name].to_kind(Kind::Float).flatten(0, -1);
        out.extend(Vec::<f32>::try_from(&t).unwrap_or_default());
    }
    out
}

/// Writes `values` (layout order) into the variables of `vs`.
pub fn unflatten(
    vs: &mut VarStore,
    layout: &ParamLayout,
    values: &[f32],
) -> Result<(), LayoutError> {
    layout.check(values)?;
    let mut vars = vs.variables();
    tch::no_grad(|| {
        for e in layout.entries() {
            if let Some(var) = vars.get_mut(&e.name) {
                let src = Tensor::from_slice(&values[e.offset..e.offset + e.len])
                    .view(e.shape.as_slice())
                    .to_kind(var.kind())
                    .to_device(var.device());
                var.copy_(&src);
            }
        }
    });
    Ok(())
}
