//! 3D volumes in Tessera's canonical orientation.
//!
//! Canonical means the radiological display convention: the column index x increases
//! towards the patient's left, the row index y towards posterior (anterior at the top),
//! and the slice index z towards superior — DICOM's LPS axes. Data are stored
//! slice-major: index (z · ny + y) · nx + x. Spacing is in millimetres, (z, y, x).

/// A volume of voxels of type `T`.
#[derive(Clone, Debug, PartialEq)]
pub struct Volume<T> {
    /// (nz, ny, nx)
    pub shape: [usize; 3],
    /// (z, y, x) in mm
    pub spacing: [f32; 3],
    pub data: Vec<T>,
}

impl<T: Copy + Default> Volume<T> {
    pub fn filled(shape: [usize; 3], spacing: [f32; 3], value: T) -> Self {
        Self {
            shape,
            spacing,
            data: vec![value; shape[0] * shape[1] * shape[2]],
        }
    }

    pub fn index(&self, z: usize, y: usize, x: usize) -> usize {
        (z * self.shape[1] + y) * self.shape[2] + x
    }

    pub fn get(&self, z: usize, y: usize, x: usize) -> T {
        self.data[self.index(z, y, x)]
    }

    /// One axial slice, row-major (ny × nx).
    pub fn slice(&self, z: usize) -> &[T] {
        let n = self.shape[1] * self.shape[2];
        &self.data[z * n..(z + 1) * n]
    }

    pub fn slice_len(&self) -> usize {
        self.shape[1] * self.shape[2]
    }
}

/// A CT scan with its masks, all on the same grid, in Hounsfield units.
#[derive(Clone, Debug, PartialEq)]
pub struct Scan {
    pub id: String,
    pub ct: Volume<f32>,
    pub lesion: Volume<bool>,
    pub lung: Volume<bool>,
    /// Whether the lung mask came with the data or was estimated.
    pub lung_mask_estimated: bool,
}
