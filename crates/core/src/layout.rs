//! A model as one flat vector: which tensor each range of values is, its shape and its
//! kind ([`ParamKind`], which strategies such as FedBN read).

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What a parameter tensor is, which decides whether FedBN federates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParamKind {
    /// Convolution and linear weights and biases.
    Weight,
    /// Scale and shift of a normalisation layer.
    NormAffine,
    /// Running mean and variance of a batch-norm layer (not trained by gradient).
    NormStatistic,
}

impl ParamKind {
    pub fn is_normalisation(self) -> bool {
        matches!(self, ParamKind::NormAffine | ParamKind::NormStatistic)
    }
}

/// One named tensor inside the flat vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<i64>,
    pub kind: ParamKind,
    pub offset: usize,
    pub len: usize,
}

/// The order and meaning of a flat parameter vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamLayout {
    entries: Vec<ParamEntry>,
    len: usize,
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum LayoutError {
    #[error("parameter `{0}` appears twice")]
    Duplicate(String),
    #[error("parameter vector has {got} values, the layout {expected}")]
    Length { got: usize, expected: usize },
}

impl ParamLayout {
    /// Builds the layout with entries sorted by name (the documented fixed order).
    pub fn new(mut tensors: Vec<(String, Vec<i64>, ParamKind)>) -> Result<Self, LayoutError> {
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries = Vec::with_capacity(tensors.len());
        let mut offset = 0;
        for (i, (name, shape, kind)) in tensors.into_iter().enumerate() {
            if i > 0 && entries.last().is_some_and(|e: &ParamEntry| e.name == name) {
                return Err(LayoutError::Duplicate(name));
            }
            let len = shape.iter().product::<i64>().max(0) as usize;
            entries.push(ParamEntry {
                name,
                shape,
                kind,
                offset,
                len,
            });
            offset += len;
        }
        Ok(Self {
            entries,
            len: offset,
        })
    }

    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// Total number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn check(&self, values: &[f32]) -> Result<(), LayoutError> {
        if values.len() == self.len {
            Ok(())
        } else {
            Err(LayoutError::Length {
                got: values.len(),
                expected: self.len,
            })
        }
    }
}
