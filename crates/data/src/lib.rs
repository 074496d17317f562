//! # tessera-data: cohorts for the reproduction
//!
//! The study's hospital CT scans are not public, so Tessera ships synthetic cohorts
//! shaped like the study: three Hong Kong training sites and four external cohorts,
//! each with its own scanner (spacing, slice thickness, noise, reconstruction kernel, HU
//! calibration, field of view) and its own disease (lesion burden, share of patients
//! without lesions), so that a model trained at one site meets a real domain shift at
//! the others. Real data load through the same path: NIfTI volumes with lesion masks
//! (and optionally lung masks), in any orientation, named by `datasets.toml`.
//!
//! - [`Registry`]: `datasets.toml`, validated with every problem naming its key.
//! - [`synthesize`]: writes the synthetic cohorts as `.nii.gz` (atomically, resumable).
//! - [`locate`] / [`load_scan`]: a cohort's files and splits; a checked scan in canonical
//!   (LPS) orientation, with an estimated lung mask when the data have none.
//! - [`slices`]: model inputs — windowed, resampled to the model's in-plane resolution,
//!   three adjacent slices as channels, with lesion boxes from connected components.
//! - [`check`]: everything `tessera data check` reports.

mod anatomy;
mod cohort;
mod error;
mod nifti_io;
mod prep;
mod recon;
mod registry;
mod series;
mod synth;
mod volume;

pub use cohort::{
    CohortFiles, CohortManifest, PatientFiles, SeriesScan, SynthReport, check, cohort_dir,
    load_scan, locate, synthesize,
};
pub use error::DataError;
pub use nifti_io::{canonical_origin, read_mask, read_volume, write_ct, write_mask};
pub use prep::{
    LUNG_THRESHOLD_HU, SliceSample, SliceSpec, Window, component_boxes, estimate_lung_mask, slices,
};
pub use registry::{
    Acquisition, CohortSpec, Longitudinal, Population, Registry, Role, SeriesPatterns, Source,
};
pub use series::locate_series;
pub use synth::{Patient, Resolution, longitudinal_scale};
pub use volume::{Scan, Volume};
