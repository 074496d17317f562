//! NIfTI-1 reading (any orientation, reoriented to canonical) and atomic writing.

use ndarray::{Array3, Ix3};
use nifti::{
    IntoNdArray, NiftiHeader, NiftiObject, NiftiType, ReaderOptions, writer::WriterOptions,
};
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::volume::Volume;

/// Direction of each canonical (LPS) axis in NIfTI's RAS world: L = −x, P = −y, S = +z.
const LPS_FROM_RAS: [f32; 3] = [-1.0, -1.0, 1.0];

/// The voxel-to-world (RAS, mm) 3×3 matrix: sform if set, else qform, else pixdim.
fn orientation(h: &NiftiHeader) -> [[f32; 3]; 3] {
    if h.sform_code > 0 {
        let r = [h.srow_x, h.srow_y, h.srow_z];
        return [
            [r[0][0], r[0][1], r[0][2]],
            [r[1][0], r[1][1], r[1][2]],
            [r[2][0], r[2][1], r[2][2]],
        ];
    }
    let (dx, dy, dz) = (h.pixdim[1], h.pixdim[2], h.pixdim[3]);
    if h.qform_code > 0 {
        let (b, c, d) = (h.quatern_b, h.quatern_c, h.quatern_d);
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let s = [dx, dy, dz * qfac];
        return std::array::from_fn(|row| std::array::from_fn(|col| r[row][col] * s[col]));
    }
    [[dx, 0.0, 0.0], [0.0, dy, 0.0], [0.0, 0.0, dz]]
}

/// For each voxel axis: the canonical axis it becomes (0 = x, 1 = y, 2 = z), whether
/// it runs backwards, and its spacing.
fn axis_map(m: &[[f32; 3]; 3], path: &Path) -> Result<[(usize, bool, f32); 3], DataError> {
    let mut out = [(0usize, false, 0f32); 3];
    let mut used = [false; 3];
    for (a, slot) in out.iter_mut().enumerate() {
        let col = [m[0][a], m[1][a], m[2][a]];
        let norm = (col[0] * col[0] + col[1] * col[1] + col[2] * col[2]).sqrt();
        let w = (0..3)
            .max_by(|&p, &q| col[p].abs().total_cmp(&col[q].abs()))
            .unwrap_or(0);
        if !(norm.is_finite() && norm > 0.0) || used[w] {
            return Err(DataError::BadOrientation {
                path: path.to_owned(),
            });
        }
        used[w] = true;
        *slot = (w, col[w] * LPS_FROM_RAS[w] < 0.0, norm);
    }
    Ok(out)
}

/// Decompresses a `.gz` file's whole stream once, so that a corrupt file — a wrong
/// CRC-32 or length in the gzip trailer, or a truncated stream — is refused: the NIfTI
/// reader stops after the voxels it needs and never reads the trailer.
fn check_gzip(path: &Path) -> Result<(), DataError> {
    if path.extension().is_none_or(|e| e != "gz") {
        return Ok(());
    }
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut stream = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
    std::io::copy(&mut stream, &mut std::io::sink()).map_err(|e| DataError::Nifti {
        path: path.to_owned(),
        message: format!("corrupt gzip stream ({e}); the file is damaged, copy it again"),
    })?;
    Ok(())
}

fn read_raw(path: &Path) -> Result<(NiftiHeader, Array3<f32>), DataError> {
    if !path.exists() {
        return Err(DataError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        ));
    }
    let nifti_err = |e: nifti::NiftiError| DataError::Nifti {
        path: path.to_owned(),
        message: e.to_string(),
    };
    check_gzip(path)?;
    let obj = ReaderOptions::new().read_file(path).map_err(nifti_err)?;
    let header = obj.header().clone();
    let data_type = header.data_type().map_err(nifti_err)?;
    match data_type {
        NiftiType::Uint8
        | NiftiType::Int8
        | NiftiType::Int16
        | NiftiType::Uint16
        | NiftiType::Int32
        | NiftiType::Uint32
        | NiftiType::Float32
        | NiftiType::Float64 => {}
        other => {
            return Err(DataError::UnsupportedType {
                path: path.to_owned(),
                data_type: format!("{other:?}"),
            });
        }
    }
    let dims = header.dim().map_err(nifti_err)?.to_vec();
    let three_d = dims.len() == 3 || (dims.len() == 4 && dims[3] == 1);
    if !three_d {
        return Err(DataError::NotThreeD {
            path: path.to_owned(),
            dims,
        });
    }
    let arr = obj.into_volume().into_ndarray::<f32>().map_err(nifti_err)?;
    let arr = match arr.ndim() {
        4 => arr.index_axis_move(ndarray::Axis(3), 0),
        _ => arr,
    };
    let arr = arr
        .into_dimensionality::<Ix3>()
        .map_err(|e| DataError::Nifti {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    Ok((header, arr))
}

/// Reads a volume and reorients it to canonical (LPS) order, scaling applied.
pub fn read_volume(path: &Path) -> Result<Volume<f32>, DataError> {
    let (header, arr) = read_raw(path)?;
    let map = axis_map(&orientation(&header), path)?;
    let src_shape = arr.shape().to_vec();
    // canonical shape (x, y, z) from the voxel axes that map to them
    let mut canon_len = [0usize; 3];
    let mut spacing_xyz = [0f32; 3];
    for (a, (w, _, s)) in map.iter().enumerate() {
        canon_len[*w] = src_shape[a];
        spacing_xyz[*w] = *s;
    }
    let spacing = [spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]];
    if spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(DataError::BadSpacing {
            path: path.to_owned(),
            spacing,
        });
    }
    let shape = [canon_len[2], canon_len[1], canon_len[0]];
    let mut vol = Volume::filled(shape, spacing, 0f32);
    let mut bad = 0usize;
    for z in 0..shape[0] {
        for y in 0..shape[1] {
            for x in 0..shape[2] {
                let canon = [x, y, z];
                let mut src = [0usize; 3];
                for (a, (w, flip, _)) in map.iter().enumerate() {
                    src[a] = if *flip {
                        src_shape[a] - 1 - canon[*w]
                    } else {
                        canon[*w]
                    };
                }
                let v = arr[[src[0], src[1], src[2]]];
                bad += usize::from(!v.is_finite());
                let i = vol.index(z, y, x);
                vol.data[i] = v;
            }
        }
    }
    if bad > 0 {
        return Err(DataError::NonFinite {
            path: path.to_owned(),
            count: bad,
        });
    }
    Ok(vol)
}

/// Where the first voxel of the canonical (reoriented) volume lies in the world (RAS,
/// mm), from the header alone: a mask and its CT must agree on it, or the mask marks
/// the wrong anatomy even when shape and spacing match.
pub fn canonical_origin(path: &Path) -> Result<[f32; 3], DataError> {
    let h = NiftiHeader::from_file(path).map_err(|e| DataError::Nifti {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let m = orientation(&h);
    let map = axis_map(&m, path)?;
    let offset = if h.sform_code > 0 {
        [h.srow_x[3], h.srow_y[3], h.srow_z[3]]
    } else if h.qform_code > 0 {
        [h.quatern_x, h.quatern_y, h.quatern_z]
    } else {
        [0.0; 3]
    };
    let dims = [h.dim[1], h.dim[2], h.dim[3]].map(|d| f32::from(d.max(1)));
    let first: [f32; 3] = std::array::from_fn(|a| if map[a].1 { dims[a] - 1.0 } else { 0.0 });
    Ok(std::array::from_fn(|row| {
        offset[row] + (0..3).map(|a| m[row][a] * first[a]).sum::<f32>()
    }))
}

/// Reads a mask: a voxel is set at 0.5 or above (label masks, and float masks written
/// by resampling tools whose background holds tiny non-zero values).
pub fn read_mask(path: &Path) -> Result<Volume<bool>, DataError> {
    let v = read_volume(path)?;
    Ok(Volume {
        shape: v.shape,
        spacing: v.spacing,
        data: v.data.iter().map(|x| *x >= 0.5).collect(),
    })
}

fn header_for(spacing: [f32; 3]) -> NiftiHeader {
    let (sz, sy, sx) = (spacing[0], spacing[1], spacing[2]);
    NiftiHeader {
        pixdim: [1.0, sx, sy, sz, 1.0, 1.0, 1.0, 1.0],
        sform_code: 1,
        qform_code: 0,
        // canonical x → −x_RAS, y → −y_RAS, z → +z_RAS
        srow_x: [-sx, 0.0, 0.0, 0.0],
        srow_y: [0.0, -sy, 0.0, 0.0],
        srow_z: [0.0, 0.0, sz, 0.0],
        xyzt_units: 2, // millimetres
        ..NiftiHeader::default()
    }
}

/// `dir/.partial-<pid>-<name>`: same directory (so rename is atomic), same extension.
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".partial-{}-{name}", std::process::id()))
}

fn write_atomic<T: nifti::DataElement + bytemuck::Pod + Default>(
    path: &Path,
    vol: &Volume<T>,
) -> Result<(), DataError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let [nz, ny, nx] = vol.shape;
    // NIfTI order: (i, j, k) = (x, y, z).
    let arr = Array3::from_shape_fn((nx, ny, nz), |(x, y, z)| vol.get(z, y, x));
    let header = header_for(vol.spacing);
    let tmp = partial_path(path);
    WriterOptions::new(&tmp)
        .reference_header(&header)
        .write_nifti(&arr)
        .map_err(|e| DataError::Nifti {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    // The writer closes its file unsynced: make the bytes durable before the rename.
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))?;
    tessera_core::atomic::sync_dir(path).map_err(|e| DataError::io(path, e))
}

/// Writes a CT volume as 16-bit Hounsfield units.
pub fn write_ct(path: &Path, vol: &Volume<f32>) -> Result<(), DataError> {
    let hu = Volume {
        shape: vol.shape,
        spacing: vol.spacing,
        data: vol
            .data
            .iter()
            .map(|v| v.round().clamp(-32768.0, 32767.0) as i16)
            .collect(),
    };
    write_atomic(path, &hu)
}

/// Writes a mask as 8-bit 0/1.
pub fn write_mask(path: &Path, vol: &Volume<bool>) -> Result<(), DataError> {
    let m = Volume {
        shape: vol.shape,
        spacing: vol.spacing,
        data: vol.data.iter().map(|b| u8::from(*b)).collect(),
    };
    write_atomic(path, &m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flipped byte in the gzip trailer (CRC-32) of a written volume is refused,
    /// naming the file; before the check the volume read back silently.
    fn corrupt_gzip_is_refused(dir: &std::path::Path) {
        let path = dir.join("ct.nii.gz");
        let mut bytes = std::fs::read(&path).unwrap();
        let crc = bytes.len() - 8;
        bytes[crc] ^= 0xff;
        let bad = dir.join("bad-crc.nii.gz");
        std::fs::write(&bad, &bytes).unwrap();
        let e = read_volume(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad-crc.nii.gz") && e.contains("corrupt gzip"),
            "{e}"
        );
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tessera-nifti-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn ramp() -> Volume<f32> {
        let shape = [3, 4, 5];
        let mut v = Volume::filled(shape, [2.5, 0.7, 0.8], 0f32);
        for z in 0..3 {
            for y in 0..4 {
                for x in 0..5 {
                    let i = v.index(z, y, x);
                    v.data[i] = (100 * z + 10 * y + x) as f32 - 500.0;
                }
            }
        }
        v
    }

    #[test]
    fn ct_and_masks_roundtrip_exactly() {
        let dir = tmpdir("roundtrip");
        let v = ramp();
        write_ct(&dir.join("ct.nii.gz"), &v).unwrap();
        let back = read_volume(&dir.join("ct.nii.gz")).unwrap();
        assert_eq!(back, v);
        let m = Volume {
            shape: v.shape,
            spacing: v.spacing,
            data: v.data.iter().map(|x| *x > -400.0).collect(),
        };
        write_mask(&dir.join("m.nii.gz"), &m).unwrap();
        corrupt_gzip_is_refused(&dir);
        assert_eq!(read_mask(&dir.join("m.nii.gz")).unwrap(), m);
        // nothing half-written is left behind
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".partial"))
            .collect();
        assert!(leftovers.is_empty());
    }

    /// A file stored in RAS order (x towards the right, y anterior) and with axes
    /// permuted reads back in canonical order.
    #[test]
    fn other_orientations_are_reoriented() {
        let dir = tmpdir("orient");
        let v = ramp();
        let [nz, ny, nx] = v.shape;
        // Store as (i, j, k) = (z, x, y) with x flipped to RAS (+x right) and y flipped (+y anterior).
        let arr = Array3::from_shape_fn((nz, nx, ny), |(z, i, j)| {
            v.get(z, ny - 1 - j, nx - 1 - i) as i16
        });
        let header = NiftiHeader {
            pixdim: [
                1.0,
                v.spacing[0],
                v.spacing[2],
                v.spacing[1],
                1.0,
                1.0,
                1.0,
                1.0,
            ],
            sform_code: 1,
            srow_x: [0.0, v.spacing[2], 0.0, 0.0],
            srow_y: [0.0, 0.0, v.spacing[1], 0.0],
            srow_z: [v.spacing[0], 0.0, 0.0, 0.0],
            ..NiftiHeader::default()
        };
        let path = dir.join("ras.nii.gz");
        WriterOptions::new(&path)
            .reference_header(&header)
            .write_nifti(&arr)
            .unwrap();
        assert_eq!(read_volume(&path).unwrap(), v);
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tmpdir("bad");
        let missing = dir.join("nope.nii.gz");
        assert!(
            read_volume(&missing)
                .unwrap_err()
                .to_string()
                .contains("nope.nii.gz")
        );
        let junk = dir.join("junk.nii.gz");
        std::fs::write(&junk, b"not a nifti file").unwrap();
        let err = read_volume(&junk).unwrap_err();
        assert!(
            matches!(err, DataError::Nifti { .. }) && err.to_string().contains("junk.nii.gz"),
            "{err}"
        );
        // NaN voxels
        let mut v = ramp();
        v.data[7] = f32::NAN;
        let arr = Array3::from_shape_fn((5, 4, 3), |(x, y, z)| v.get(z, y, x));
        let nan = dir.join("nan.nii.gz");
        WriterOptions::new(&nan)
            .reference_header(&header_for(v.spacing))
            .write_nifti(&arr)
            .unwrap();
        assert!(matches!(
            read_volume(&nan).unwrap_err(),
            DataError::NonFinite { count: 1, .. }
        ));
        // complex data
        let c = Array3::from_shape_fn((2, 2, 2), |_| 0u64);
        let cplx = dir.join("complex.nii.gz");
        WriterOptions::new(&cplx)
            .write_nifti_with_type(&c, NiftiType::Complex64)
            .unwrap();
        assert!(matches!(
            read_volume(&cplx).unwrap_err(),
            DataError::UnsupportedType { .. }
        ));
    }
}
