//! The one atomic-write helper: a reader sees the old file or the new one, never a mix,
//! and after a crash the rename itself is durable (the directory is synced too).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through `<path>.partial`: write, fsync the file, rename,
/// fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(path, bytes, false)
}

/// [`write_atomic`] for secrets: the file is created readable by its owner only (0600)
/// before a byte is written.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(path, bytes, true)
}

fn write(path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    let tmp = partial_path(path);
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = secret;
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Syncs the directory holding `path`, so that a rename or a new file survives power loss.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// `<path>.partial` (appended, so `a.json` and `a.bin` never share a temporary file).
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("tessera-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!partial_path(&path).exists());
        assert_eq!(partial_path(&path), dir.join("a.json.partial"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
