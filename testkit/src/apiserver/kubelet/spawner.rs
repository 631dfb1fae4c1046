//! Starts the kubelet's processes so that they die with this process.
//!
//! Every process the kubelet starts (containers, exec probes, `preStop` exec hooks) goes
//! through [`spawn`], which hands the `Command` to one dedicated thread of this process. That
//! thread forks, and the child asks the kernel (`prctl(PR_SET_PDEATHSIG, SIGKILL)`) to be
//! SIGKILLed when its parent dies. So when the process owning the kubelet is killed outright
//! (SIGKILL, a default-action SIGTERM such as a test runner's timeout), its containers go with
//! it, where [`super::Procs::kill_all`] never gets to run.
//!
//! Why one dedicated thread: Linux sends the parent-death signal when the *thread* that forked
//! the child exits, not the process. Forking on a tokio worker (the kubelet's task) would
//! kill the containers when that runtime ends (a `#[tokio::test]`'s runtime ends with the
//! test, while a server may outlive it), and a blocking-pool thread ends after 10 s idle. The
//! spawner thread is started once per process and never returns (its channel's sender lives
//! in a `static`), so its children die exactly when the process does.
//!
//! Limits: only the direct child gets the signal (the setting is not inherited over `fork`).
//! A program that `exec`s (a JVM, `spark-submit`'s scripts, `kshuffled`) is covered; what a
//! shell script forks off (`sleep 600 &`) outlives it. Needs Linux's (or FreeBSD's) parent-death
//! signal: rustix offers it nowhere else.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, sync_channel};

/// A command to start and where to send the result.
type Request = (Command, SyncSender<io::Result<Child>>);

/// How many spawn requests may wait for the spawner thread.
const QUEUE_LEN: usize = 64;

/// Starts `cmd` on the spawner thread, the child set to die with this process.
///
/// Blocks for as long as a `fork`/`exec` takes (as `Command::spawn` itself does).
///
/// # Errors
///
/// What `Command::spawn` returns, or an error if the spawner thread cannot be started.
pub(super) fn spawn(cmd: Command) -> io::Result<Child> {
    let requests = spawner()?;
    let (reply, result) = sync_channel(1);
    requests
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the kubelet's spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the kubelet's spawner thread dropped a request"))?
}

/// The spawner thread's queue, starting the thread on first use.
fn spawner() -> io::Result<&'static SyncSender<Request>> {
    static SPAWNER: OnceLock<SyncSender<Request>> = OnceLock::new();
    if let Some(s) = SPAWNER.get() {
        return Ok(s);
    }
    let (tx, rx) = sync_channel::<Request>(QUEUE_LEN);
    // Two first callers may race here: the loser's thread sees its sender dropped and ends
    // at once, before it ever forked.
    std::thread::Builder::new()
        .name("kubelet-spawner".into())
        .spawn(move || {
            for (mut cmd, reply) in rx {
                die_with_parent(&mut cmd);
                let _ = reply.send(cmd.spawn());
            }
        })?;
    Ok(SPAWNER.get_or_init(|| tx))
}

/// Makes the child of `cmd` get SIGKILL when the thread spawning it (or, if that is the
/// spawner thread, this process) ends, and exit at once if that happened before it could ask.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the child between `fork` and `exec`, where only
    // async-signal-safe calls are allowed. It makes two raw syscalls, `prctl` and `getppid`
    // (rustix's linux_raw backend: no libc, no locks), and allocates nothing: the error it
    // may return is an `io::Error` built from a raw errno (no heap), upon which std writes
    // the errno to its CLOEXEC pipe and `_exit`s the child. It touches no memory shared with
    // the parent except the copied `Pid`.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The parent died between fork and prctl: the signal will never come, and the
            // child was re-parented (to init or a subreaper). Give up before `exec`.
            if rustix::process::getppid() != Some(parent) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn sleeper() -> Command {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        cmd
    }

    /// The pitfall this module exists for, and that the spawner thread avoids: a child set to
    /// die with its parent, forked on a thread that then ends, is killed; one started through
    /// `spawn` from such a thread lives on.
    #[test]
    fn children_die_with_the_forking_thread_so_spawns_go_through_the_long_lived_one() {
        let mut kept = std::thread::spawn(|| spawn(sleeper()).unwrap())
            .join()
            .unwrap();
        let mut lost = std::thread::spawn(|| {
            let mut cmd = sleeper();
            die_with_parent(&mut cmd);
            cmd.spawn().unwrap()
        })
        .join()
        .unwrap();
        // Blocks until the kernel's SIGKILL arrives (the test would hang, not pass, without it).
        let status = lost.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        let sigkill = rustix::process::Signal::KILL.as_raw();
        assert_eq!(status.signal(), Some(sigkill), "{status:?}");
        // Both threads had ended before the signal above was sent.
        assert!(
            kept.try_wait().unwrap().is_none(),
            "the spawner's child was killed"
        );
        kept.kill().unwrap();
        kept.wait().unwrap();
    }
}
