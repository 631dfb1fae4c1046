//! Deleting files, strictly inside the allowed roots and never through a symlink.
//!
//! Every deletion walks directories by file descriptor: a directory is opened with
//! `O_NOFOLLOW | O_DIRECTORY` relative to its already-open parent, its entries are inspected
//! with `fstatat(AT_SYMLINK_NOFOLLOW)` and removed with `unlinkat`. A symlink is only ever
//! unlinked itself; a directory swapped for a symlink mid-walk fails to open instead of
//! being followed. The top directory is re-checked at deletion time (canonical, a real
//! directory, strictly inside a root) before anything is touched.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

/// Deepest directory level walked below a top directory (Spark uses two: `blockmgr-*/xx/`).
const MAX_DEPTH: usize = 8;

/// What a deletion did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reclaimed {
    /// Files (and symlinks) deleted.
    pub files: u64,
    /// Directories deleted.
    pub dirs: u64,
    /// Bytes of the regular files deleted.
    pub bytes: u64,
}

impl Reclaimed {
    /// Adds another report to this one.
    pub fn add(&mut self, other: &Reclaimed) {
        self.files += other.files;
        self.dirs += other.dirs;
        self.bytes += other.bytes;
    }
}

fn open_dir_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens a canonical directory path without following any symlink.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = rustix::fs::ResolveFlags::NO_SYMLINKS | rustix::fs::ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(rustix::fs::CWD, path, flags, Mode::empty(), resolve) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::NOSYS) => {
            if std::fs::canonicalize(path)? != path {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "path has a symlink",
                ));
            }
            Ok(rustix::fs::open(path, flags, Mode::empty())?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes the entries under `dir` for which `doomed(name)` holds (recursively; directories
/// left empty by it are deleted too). Returns whether `dir` is empty afterwards.
pub fn prune(
    dir: BorrowedFd<'_>,
    doomed: &dyn Fn(&str) -> bool,
    reclaimed: &mut Reclaimed,
) -> io::Result<bool> {
    prune_at(dir, doomed, reclaimed, 0)
}

fn prune_at(
    dir: BorrowedFd<'_>,
    doomed: &dyn Fn(&str) -> bool,
    reclaimed: &mut Reclaimed,
    depth: usize,
) -> io::Result<bool> {
    let mut entries = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        entries.push(name.to_owned());
    }
    let mut kept = 0usize;
    for name in entries {
        let stat = match rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let text = name.to_string_lossy();
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            if depth >= MAX_DEPTH {
                kept += 1;
                continue;
            }
            let child = open_dir_at(dir, name.as_c_str())?;
            let empty = prune_at(child.as_fd(), doomed, reclaimed, depth + 1)?;
            if empty && doomed(&text) {
                rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::REMOVEDIR)?;
                reclaimed.dirs += 1;
            } else {
                kept += 1;
            }
        } else if doomed(&text) {
            match rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
            reclaimed.files += 1;
            if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile {
                reclaimed.bytes += stat.st_size.max(0) as u64;
            }
        } else {
            kept += 1;
        }
    }
    Ok(kept == 0)
}

/// Newest modification time of `dir`, its sub-directories and files (bounded depth, no
/// symlinks followed).
pub fn newest_mtime(dir: BorrowedFd<'_>) -> io::Result<SystemTime> {
    let stat = rustix::fs::fstat(dir)?;
    let mut newest = to_time(stat.st_mtime, stat.st_mtime_nsec);
    newest_at(dir, &mut newest, 0)?;
    Ok(newest)
}

fn to_time(secs: i64, nanos: u64) -> SystemTime {
    let base = std::time::UNIX_EPOCH;
    let secs = u64::try_from(secs).unwrap_or(0);
    base + std::time::Duration::new(secs, u32::try_from(nanos).unwrap_or(0))
}

fn newest_at(dir: BorrowedFd<'_>, newest: &mut SystemTime, depth: usize) -> io::Result<()> {
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        *newest = (*newest).max(to_time(stat.st_mtime, stat.st_mtime_nsec));
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory
            && depth < MAX_DEPTH
            && let Ok(child) = open_dir_at(dir, name)
        {
            newest_at(child.as_fd(), newest, depth + 1)?;
        }
    }
    Ok(())
}

/// Directories named `blockmgr-*` under `root`, down to `max_depth` levels, not following
/// symlinks. Paths are built from `root` (canonical), so they are canonical too.
pub fn find_block_manager_dirs(root: &Path, max_depth: usize) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let fd = open_dir(root)?;
    find_at(fd.as_fd(), root, max_depth, &mut found)?;
    Ok(found)
}

fn find_at(
    dir: BorrowedFd<'_>,
    path: &Path,
    depth_left: usize,
    found: &mut Vec<PathBuf>,
) -> io::Result<()> {
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if text == "." || text == ".." {
            continue;
        }
        let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            continue;
        }
        let child_path = path.join(&*text);
        if text.starts_with("blockmgr-") {
            found.push(child_path);
        } else if depth_left > 1
            && let Ok(child) = open_dir_at(dir, name)
        {
            find_at(child.as_fd(), &child_path, depth_left - 1, found)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_never_follows_symlinks_and_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let victim = base.join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("precious"), b"keep me").unwrap();
        let top = base.join("blockmgr-x");
        std::fs::create_dir_all(top.join("0a")).unwrap();
        std::fs::write(top.join("0a/shuffle_0_1_0.data"), b"12345").unwrap();
        std::fs::write(top.join("0a/temp_shuffle_abc"), b"123").unwrap();
        std::os::unix::fs::symlink(&victim, top.join("0b")).unwrap();
        std::os::unix::fs::symlink(victim.join("precious"), top.join("0a/link")).unwrap();

        let mut r = Reclaimed::default();
        let keep_shuffle = |name: &str| !name.ends_with(".data") && !name.ends_with(".index");
        let fd = open_dir(&top).unwrap();
        assert!(!prune(fd.as_fd(), &keep_shuffle, &mut r).unwrap());
        assert_eq!(
            r,
            Reclaimed {
                files: 3,
                dirs: 0,
                bytes: 3
            }
        );
        assert!(top.join("0a/shuffle_0_1_0.data").exists());
        assert!(!top.join("0b").exists(), "the symlink itself is removed");
        assert_eq!(std::fs::read(victim.join("precious")).unwrap(), b"keep me");

        let mut r = Reclaimed::default();
        assert!(prune(fd.as_fd(), &|_| true, &mut r).unwrap());
        assert_eq!(
            r,
            Reclaimed {
                files: 1,
                dirs: 1,
                bytes: 5
            }
        );
        assert_eq!(std::fs::read(victim.join("precious")).unwrap(), b"keep me");

        assert!(open_dir(&base.join("victim-link")).is_err());
        std::os::unix::fs::symlink(&victim, base.join("victim-link")).unwrap();
        assert!(
            open_dir(&base.join("victim-link")).is_err(),
            "top dir symlink refused"
        );
    }

    #[test]
    fn finds_block_manager_dirs_at_depth() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        for d in [
            "blockmgr-a",
            "spark-1/blockmgr-b",
            "w/app/executor-1/blockmgr-c",
            "x/y/z/q/blockmgr-deep",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::create_dir_all(root.join("elsewhere/blockmgr-hidden")).unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere"), root.join("link")).unwrap();
        let mut found = find_block_manager_dirs(&root, 4).unwrap();
        found.sort();
        let want: Vec<PathBuf> = [
            "blockmgr-a",
            "elsewhere/blockmgr-hidden",
            "spark-1/blockmgr-b",
            "w/app/executor-1/blockmgr-c",
        ]
        .iter()
        .map(|d| root.join(d))
        .collect();
        assert_eq!(found, want);
    }
}
