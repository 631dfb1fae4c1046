//! Opening files strictly inside a registered local dir.
//!
//! Registered dirs are canonicalized at registration, so a correct path from them contains no
//! symlink at all. Files are opened with `openat2(RESOLVE_NO_SYMLINKS)`: a symlink planted
//! anywhere on the way (a sub-dir replaced by a link to another app's dir, a block file
//! linked to `/etc/shadow`) makes the open fail instead of being followed. On kernels without
//! `openat2` (before 5.6) the path is canonicalized and compared, then opened with
//! `O_NOFOLLOW`, which closes the same hole up to a race with a concurrent rename.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};

static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// Opens `path` read-only, refusing to follow any symlink on the way.
///
/// # Errors
/// `NotFound` when the file does not exist; `ELOOP`/`EXDEV`/`PermissionDenied`-style errors
/// when the path involves a symlink; any other I/O error of the open.
pub fn open_no_symlinks(path: &Path) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY;
    if !OPENAT2_MISSING.load(Ordering::Relaxed) {
        let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(rustix::fs::CWD, path, flags, Mode::empty(), resolve) {
            Ok(fd) => return Ok(File::from(fd)),
            Err(rustix::io::Errno::NOSYS) => OPENAT2_MISSING.store(true, Ordering::Relaxed),
            Err(e) => return Err(e.into()),
        }
    }
    let canonical = std::fs::canonicalize(path)?;
    if canonical != path {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "path resolves through a symlink",
        ));
    }
    let fd = rustix::fs::open(path, flags | OFlags::NOFOLLOW, Mode::empty())?;
    Ok(File::from(fd))
}

/// Whether an open error means "no such file" rather than a refused or failed open.
pub fn is_not_found(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn opens_plain_files_and_refuses_symlinks_anywhere() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::write(root.join("real/f"), b"ok").unwrap();
        std::fs::write(root.join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("linkdir")).unwrap();
        std::os::unix::fs::symlink(root.join("secret"), root.join("real/g")).unwrap();

        let mut s = String::new();
        open_no_symlinks(&root.join("real/f"))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "ok");
        assert!(
            open_no_symlinks(&root.join("linkdir/f")).is_err(),
            "symlinked dir followed"
        );
        assert!(
            open_no_symlinks(&root.join("real/g")).is_err(),
            "symlinked file followed"
        );
        let missing = open_no_symlinks(&root.join("real/none")).unwrap_err();
        assert!(is_not_found(&missing));
    }
}
