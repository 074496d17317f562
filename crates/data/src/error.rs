use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong with data, each naming the file or key at fault.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Registry { path: PathBuf, message: String },
    #[error("{path}: not a readable NIfTI file: {message}")]
    Nifti { path: PathBuf, message: String },
    #[error(
        "{path}: unsupported NIfTI data type {data_type}; use 8/16/32-bit integers or 32/64-bit floats"
    )]
    UnsupportedType { path: PathBuf, data_type: String },
    #[error("{path}: expected a 3D volume, found dimensions {dims:?}")]
    NotThreeD { path: PathBuf, dims: Vec<u16> },
    #[error("{path}: the orientation matrix is degenerate or maps two voxel axes to one body axis")]
    BadOrientation { path: PathBuf },
    #[error("{path}: voxel spacing {spacing:?} mm is not positive and finite")]
    BadSpacing { path: PathBuf, spacing: [f32; 3] },
    #[error("{path}: {count} voxels are NaN or infinite")]
    NonFinite { path: PathBuf, count: usize },
    #[error(
        "{mask}: mask shape {mask_shape:?} differs from the volume's {volume_shape:?} ({volume})"
    )]
    ShapeMismatch {
        mask: PathBuf,
        mask_shape: [usize; 3],
        volume: PathBuf,
        volume_shape: [usize; 3],
    },
    #[error(
        "{mask}: mask spacing {mask_spacing:?} mm differs from the volume's {volume_spacing:?} mm ({volume})"
    )]
    SpacingMismatch {
        mask: PathBuf,
        mask_spacing: [f32; 3],
        volume: PathBuf,
        volume_spacing: [f32; 3],
    },
    #[error(
        "{mask}: lies {distance_mm:.1} mm from its CT {volume} in the world (first voxel at {mask_origin:?} vs {volume_origin:?} mm, RAS): the mask's affine does not match the CT's; resample or fix its header"
    )]
    AffineMismatch {
        mask: PathBuf,
        mask_origin: [f32; 3],
        volume: PathBuf,
        volume_origin: [f32; 3],
        distance_mm: f32,
    },
    #[error("{path}: missing (expected by cohort `{cohort}`, key `{key}`)")]
    Missing {
        path: PathBuf,
        cohort: String,
        key: &'static str,
    },
    #[error(
        "cohort `{cohort}`: found {found} patients under {pattern}, but `{key}` asks for {expected}"
    )]
    PatientCount {
        cohort: String,
        pattern: String,
        found: usize,
        expected: usize,
        key: &'static str,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
