//! A uid of its own for every running instance, like systemd's DynamicUser or Slurm's per-job users:
//! two jobs never share a uid, so neither can read the other's `/proc/PID/environ`, enter its
//! `/proc/PID/root`, signal it or open its files; and when an instance ends, every process of its uid
//! is killed, whether it left the process group or not (a cgroup does the same where there is one).
//!
//! The uids come from a range no local user has (default: systemd's dynamic range 61184–65519) and
//! are taken with a lock file each (`flock`) in a directory shared by every agent on the host, so two
//! agents on one host (simulated hosts, or two clusters) never hand out the same uid at once. A lock
//! dies with its agent; the next agent to take that uid first kills whatever the dead one left
//! running under it. Each instance's gid is its uid (a group of its own); the execution role's group,
//! when it names one, is added as a supplementary group (to read group-readable data on the host).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::warn;

/// systemd's range for dynamic users: no distribution allocates from it.
pub const DEFAULT_RANGE: &str = "61184-65519";

/// An inclusive range of uids, none of them root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

impl UidRange {
    /// `FIRST-LAST`, both above 0 and below 2^31 (uids beyond do not survive every tool), FIRST ≤ LAST.
    pub fn parse(raw: &str) -> Result<UidRange, String> {
        let (first, last) = raw.split_once('-').ok_or_else(|| format!("instance uids '{raw}' is not FIRST-LAST"))?;
        let number =
            |s: &str| s.trim().parse::<u32>().map_err(|_| format!("instance uids '{raw}': '{s}' is not a number"));
        let (first, last) = (number(first)?, number(last)?);
        if first == 0 {
            return Err(format!("instance uids '{raw}': uid 0 is root, and training never runs as root"));
        }
        if first > last {
            return Err(format!("instance uids '{raw}': {first} is above {last}"));
        }
        if last >= 1 << 31 {
            return Err(format!("instance uids '{raw}': {last} is not below 2147483648"));
        }
        Ok(UidRange { first, last })
    }

    pub fn len(&self) -> u32 {
        self.last - self.first + 1
    }

    /// Every uid of the range once, starting at `start` and wrapping around: handed out round-robin,
    /// a uid is reused as late as possible.
    pub fn from(&self, start: u32) -> impl Iterator<Item = u32> + use<> {
        let (first, len) = (self.first, self.len());
        let offset = start.saturating_sub(first) % len;
        (0..len).map(move |i| first + (offset + i) % len)
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// How long the user database's answer for a uid is trusted: a user added since takes at most
/// this long to be seen (an instance that started before keeps its uid until it ends).
const USER_DATABASE_ANSWER_KEPT: Duration = Duration::from_secs(60);

/// The uids this agent hands out.
pub struct UidPool {
    range: UidRange,
    locks: PathBuf,
    next: Mutex<u32>,
    /// Asks the system's user database whether a uid is someone's (NSS: on an LDAP or SSSD host, a
    /// lookup that may cross the network), its answers kept for [`USER_DATABASE_ANSWER_KEPT`]:
    /// without them every instance's start asked it again.
    users: UserDatabase,
}

/// Whether a uid is a user's, as the user database said at a recent time.
struct UserDatabase {
    lookup: fn(u32) -> bool,
    answers: Mutex<std::collections::HashMap<u32, (bool, std::time::Instant)>>,
}

impl UserDatabase {
    fn has(&self, uid: u32) -> bool {
        self.has_at(uid, std::time::Instant::now())
    }

    fn has_at(&self, uid: u32, now: std::time::Instant) -> bool {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((has, at)) = answers.get(&uid)
            && now.duration_since(*at) < USER_DATABASE_ANSWER_KEPT
        {
            return *has;
        }
        let has = (self.lookup)(uid);
        answers.insert(uid, (has, now));
        has
    }
}

/// A uid held by one instance. Dropped: kills every process left under the uid (unless it is known
/// to have none: [`UidLease::settle`]), marks it clean, and frees it.
#[derive(Debug)]
pub struct UidLease {
    pub uid: u32,
    lock: File,
    settled: AtomicBool,
}

impl UidPool {
    /// `locks`: the host-wide directory of lock files (root's, 0700).
    pub fn new(range: UidRange, locks: &Path) -> Result<UidPool, String> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(locks).map_err(|e| format!("creating {}: {e}", locks.display()))?;
        std::fs::set_permissions(locks, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("making {} private: {e}", locks.display()))?;
        Ok(UidPool {
            range,
            locks: locks.to_path_buf(),
            next: Mutex::new(range.first),
            users: UserDatabase { lookup: user_exists, answers: Mutex::default() },
        })
    }

    /// A uid no other instance on this host holds and no local user has.
    pub fn lease(&self) -> Result<UidLease, String> {
        let start = *self.next.lock().unwrap_or_else(|e| e.into_inner());
        for uid in self.range.from(start) {
            if self.users.has(uid) {
                continue;
            }
            let Some(mut lock) = self.try_lock(uid)? else { continue };
            *self.next.lock().unwrap_or_else(|e| e.into_inner()) = uid.saturating_add(1);
            // A lock file is emptied when its uid is given back clean. One that is not was held by
            // an agent that died: whatever it left running under the uid is killed first.
            if lock.metadata().map(|m| m.len() > 0).unwrap_or(true) && any_process_of(uid) {
                warn!(uid, "processes left under a free instance uid by an earlier agent: killing them");
                kill_every_process_of(uid);
            }
            use std::io::Write;
            lock.write_all(format!("{}\n", std::process::id()).as_bytes())
                .map_err(|e| format!("marking the uid lock {uid} in use: {e}"))?;
            return Ok(UidLease { uid, lock, settled: AtomicBool::new(false) });
        }
        Err(format!(
            "every instance uid ({}, {} of them) is in use on this host: wait for instances to end, or widen --instance-uids",
            self.range,
            self.range.len()
        ))
    }

    fn try_lock(&self, uid: u32) -> Result<Option<File>, String> {
        let path = self.locks.join(uid.to_string());
        let file =
            crate::lock_files::open(&path).map_err(|e| format!("opening the uid lock {}: {e}", path.display()))?;
        Ok(file.try_lock().is_ok().then_some(file))
    }
}

impl UidLease {
    /// Says that nothing runs under the uid any more (the instance's cgroup, which held everything
    /// it started, is empty): giving it back then needs no search of /proc.
    pub fn settle(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::Relaxed) {
            kill_every_process_of(self.uid);
        }
        if let Err(e) = self.lock.set_len(0) {
            warn!(uid = self.uid, error = %e, "could not mark an instance uid clean: its next holder searches /proc");
        }
    }
}

/// Whether the system's user database has this uid (then it is someone's, never handed out).
fn user_exists(uid: u32) -> bool {
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value to be overwritten by getpwuid_r.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call.
    let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    rc == 0 && !found.is_null()
}

/// Live (not zombie) processes whose real, effective or saved uid is `uid`.
fn processes_of(uid: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        if status_has_uid(&status, uid) {
            pids.push(pid);
        }
    }
    pids
}

fn any_process_of(uid: u32) -> bool {
    !processes_of(uid).is_empty()
}

/// From `/proc/PID/status`: not a zombie, and `uid` among its real, effective and saved uids.
fn status_has_uid(status: &str, uid: u32) -> bool {
    let mut zombie = false;
    let mut has = false;
    for line in status.lines() {
        if let Some(state) = line.strip_prefix("State:") {
            zombie = state.trim_start().starts_with('Z') || state.trim_start().starts_with('X');
        } else if let Some(uids) = line.strip_prefix("Uid:") {
            has = uids.split_whitespace().take(3).any(|u| u.parse::<u32>() == Ok(uid));
        }
    }
    has && !zombie
}

/// Kills every process of `uid`, repeated until /proc shows none.
pub fn kill_every_process_of(uid: u32) {
    for round in 0..50 {
        if !any_process_of(uid) {
            return;
        }
        signal_every_process_of(uid, libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(if round < 5 { 10 } else { 100 }));
    }
    warn!(uid, pids = ?processes_of(uid), "processes of an instance uid survived SIGKILL");
}

/// Sends `signal` to every process of `uid` the way Slurm does: a child that becomes the uid and
/// signals -1 reaches every process of the uid at once (forks in flight included, which a /proc
/// scan followed by kill would miss), and nothing else.
pub fn signal_every_process_of(uid: u32, signal: i32) {
    // SAFETY: the child calls only async-signal-safe functions (raw syscalls and _exit) before it
    // exits; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            // Raw syscalls: only this (the child's only) thread changes credentials.
            if libc::syscall(libc::SYS_setgid, uid as libc::c_long) == 0
                && libc::syscall(libc::SYS_setuid, uid as libc::c_long) == 0
            {
                libc::kill(-1, signal);
            }
            libc::_exit(0);
        }
        if pid > 0 {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        } else {
            warn!(uid, error = %std::io::Error::last_os_error(), "could not fork to signal an instance uid's processes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_with_the_limit_named() {
        assert_eq!(UidRange::parse(DEFAULT_RANGE), Ok(UidRange { first: 61184, last: 65519 }));
        assert_eq!(UidRange::parse("70000-70000").map(|r| r.len()), Ok(1));
        assert!(UidRange::parse("0-10").unwrap_err().contains("root"));
        assert!(UidRange::parse("10-5").unwrap_err().contains("above"));
        assert!(UidRange::parse("5").unwrap_err().contains("FIRST-LAST"));
        assert!(UidRange::parse("a-5").unwrap_err().contains("'a' is not a number"));
        assert!(UidRange::parse("1-4294967295").unwrap_err().contains("below 2147483648"));
    }

    #[test]
    fn uids_are_handed_out_round_robin_and_each_once() {
        let range = UidRange { first: 100, last: 104 };
        assert_eq!(range.from(100).collect::<Vec<_>>(), vec![100, 101, 102, 103, 104]);
        assert_eq!(range.from(103).collect::<Vec<_>>(), vec![103, 104, 100, 101, 102]);
        assert_eq!(range.from(105).collect::<Vec<_>>(), vec![100, 101, 102, 103, 104], "past the end wraps");
        assert_eq!(range.from(7).collect::<Vec<_>>(), vec![100, 101, 102, 103, 104], "below the start too");
    }

    #[test]
    fn the_user_database_is_asked_about_a_uid_once_a_minute_and_its_users_are_skipped() {
        use std::sync::atomic::AtomicUsize;
        static ASKED: AtomicUsize = AtomicUsize::new(0);
        fn lookup(uid: u32) -> bool {
            ASKED.fetch_add(1, Ordering::Relaxed);
            uid == 64_981
        }
        let locks = tempfile::tempdir().expect("dir");
        let mut pool = UidPool::new(UidRange { first: 64_980, last: 64_982 }, locks.path()).expect("pool");
        pool.users.lookup = lookup;
        let first = pool.lease().expect("a uid");
        assert_eq!(first.uid, 64_980);
        let second = pool.lease().expect("a uid");
        assert_eq!(second.uid, 64_982, "64981 is a user's");
        drop((first, second));
        let asked = ASKED.load(Ordering::Relaxed);
        assert_eq!(asked, 3);
        // Round robin goes on from 64982 to 64980: every answer is still fresh.
        for _ in 0..4 {
            assert_ne!(pool.lease().expect("a uid").uid, 64_981);
        }
        assert_eq!(ASKED.load(Ordering::Relaxed), asked, "not asked again within the minute");
        // A minute on, it is asked again.
        let later = std::time::Instant::now() + USER_DATABASE_ANSWER_KEPT + Duration::from_secs(1);
        assert!(pool.users.has_at(64_981, later));
        assert_eq!(ASKED.load(Ordering::Relaxed), asked + 1);
    }

    #[test]
    fn a_uid_left_by_a_dead_holder_is_cleaned_before_it_is_handed_out_again() {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (CI runs as root)");
            return;
        }
        let locks = tempfile::tempdir().expect("dir");
        let range = UidRange { first: 64990, last: 64990 };
        let pool = UidPool::new(range, locks.path()).expect("pool");
        // An agent that died while an instance ran: its lock file says so, its process runs on.
        std::fs::write(locks.path().join("64990"), "4242\n").expect("write");
        let mut orphan = std::process::Command::new("sleep").arg("60").uid(64990).gid(64990).spawn().expect("sleep");
        let lease = pool.lease().expect("the uid is free: nobody holds its lock");
        assert_eq!(lease.uid, 64990);
        let status = orphan.wait().expect("wait");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "killed before reuse");
        assert!(pool.lease().unwrap_err().contains("every instance uid (64990-64990, 1 of them) is in use"));
        drop(lease);
        assert_eq!(std::fs::read(locks.path().join("64990")).expect("read").len(), 0, "given back clean");
        // A fork elsewhere in this process (other tests spawn programs) holds a copy of the lock's
        // descriptor until its exec: the lock is free again within moments.
        let free = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            pool.lease().is_ok()
        });
        assert!(free, "the uid is handed out again");
    }

    #[test]
    fn a_process_counts_by_its_real_effective_or_saved_uid_unless_it_is_a_zombie() {
        let status = |state: &str, uids: &str| format!("Name:\tx\nState:\t{state}\nUid:\t{uids}\nGid:\t0\t0\t0\t0\n");
        assert!(status_has_uid(&status("S (sleeping)", "61184\t61184\t61184\t61184"), 61184));
        assert!(status_has_uid(&status("R (running)", "61184\t0\t0\t0"), 61184), "real uid");
        assert!(status_has_uid(&status("R (running)", "0\t0\t61184\t0"), 61184), "saved uid");
        assert!(!status_has_uid(&status("R (running)", "0\t0\t0\t61184"), 61184), "file-system uid alone");
        assert!(!status_has_uid(&status("Z (zombie)", "61184\t61184\t61184\t61184"), 61184));
        assert!(!status_has_uid(&status("S (sleeping)", "611840\t611840\t611840\t611840"), 61184));
    }
}
