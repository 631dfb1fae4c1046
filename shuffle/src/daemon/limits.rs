//! Process limits the daemon adjusts at start.
//!
//! Each connection is a file descriptor, and so is each block file being sent; the usual soft
//! limit of open files (1024) would make `accept` fail long before `--max-connections` (4096
//! by default). Java's shuffle service inherits the JVM's limit, which the JVM raises to the
//! hard limit at start (`-XX:+MaxFDLimit`, on by default); the daemon does the same.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The open-files limit before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// Soft limit found at start (`None`: unlimited).
    pub before: Option<u64>,
    /// Soft limit now.
    pub now: Option<u64>,
    /// Hard limit.
    pub hard: Option<u64>,
}

/// Raises the soft limit of open files to the hard limit.
///
/// # Errors
/// When `setrlimit(2)` refuses (the limits are then unchanged).
pub fn raise_open_files_limit() -> Result<OpenFiles, rustix::io::Errno> {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok(OpenFiles {
        before,
        now: now.current,
        hard: now.maximum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_reaches_the_hard_limit() {
        let limits = raise_open_files_limit().expect("raising the soft limit to the hard one");
        assert_eq!(limits.now, limits.hard);
        assert_eq!(getrlimit(Resource::Nofile).current, limits.hard);
        // Idempotent.
        assert_eq!(raise_open_files_limit().map(|l| l.now), Ok(limits.now));
    }
}
