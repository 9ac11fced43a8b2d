//! Who an instance's processes are: its own uid and gid (see `uids`), plus the execution role's
//! group when it names one, resolved through the system's group database (`getgrnam_r`, so NSS
//! sources such as LDAP work too); never uid or gid 0.

use std::ffi::CString;
use std::path::Path;

/// The gid of the execution role's group (added to an instance's own as a supplementary group).
/// Root's group is refused.
pub fn role_group(group: &str) -> Result<libc::gid_t, String> {
    let gid = group_id(group)?;
    if gid == 0 {
        return Err(format!("the execution role's group '{group}' is gid 0: training never runs with root's group"));
    }
    Ok(gid)
}

fn group_id(group: &str) -> Result<libc::gid_t, String> {
    let name = CString::new(group).map_err(|_| format!("group name '{group}' contains a NUL byte"))?;
    let mut buffer = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: an all-zero group is a valid value to be overwritten by getgrnam_r.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call.
    let rc = unsafe { libc::getgrnam_r(name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return Err(format!("the execution role's group '{group}' does not exist on this host"));
    }
    Ok(entry.gr_gid)
}

/// Gives `dir` and everything in it to `uid`:`gid` (the agent staged it as root). Symbolic links
/// are changed themselves, never followed; files with more than one link are the read-only input
/// cache's, shared with other instances, and stay root's.
pub fn give_tree(dir: &Path, uid: libc::uid_t, gid: libc::gid_t) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::symlink_metadata(dir)?;
    if metadata.is_file() && metadata.nlink() > 1 {
        return Ok(());
    }
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    if metadata.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            give_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// In the child, after every privileged step: drop to `uid`/`gid` (with `groups` as supplementary
/// groups) for good. The parent-death signal is set again because changing credentials clears it.
///
/// # Safety
/// Only async-signal-safe calls: meant for `pre_exec`.
pub unsafe fn switch_to(uid: libc::uid_t, gid: libc::gid_t, groups: &[libc::gid_t]) -> std::io::Result<()> {
    let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: plain syscalls on values copied into the child.
    unsafe {
        check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
        fresh_keyrings()?;
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
        // No set-user-ID program of the host (su, mount, ...) or file capability raises it again,
        // as containers run (`no_new_privileges`) and systemd's NoNewPrivileges= does.
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

/// As the instance's uid: a session keyring of its own, and the uid's user, user-session and
/// persistent keyrings emptied. The kernel keeps those after a uid's last process ends, and a
/// uid is lent: what the last holder put there would be the next one's. Inheriting the agent's
/// session keyring would give the job the agent's keys (a keyring's possessor may read it).
///
/// # Safety
/// Only async-signal-safe calls: meant for `pre_exec`.
unsafe fn fresh_keyrings() -> std::io::Result<()> {
    // From <linux/keyctl.h>.
    const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
    const KEY_SPEC_USER_KEYRING: libc::c_long = -4;
    const KEY_SPEC_USER_SESSION_KEYRING: libc::c_long = -5;
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    const KEYCTL_CLEAR: libc::c_long = 7;
    const KEYCTL_UNLINK: libc::c_long = 9;
    const KEYCTL_GET_PERSISTENT: libc::c_long = 22;
    let keyctl = |operation: libc::c_long, first: libc::c_long, second: libc::c_long| {
        // SAFETY: keyctl with integer arguments (a null name joins a new anonymous keyring).
        let rc = unsafe { libc::syscall(libc::SYS_keyctl, operation, first, second, 0, 0) };
        if rc >= 0 { Ok(rc) } else { Err(std::io::Error::last_os_error()) }
    };
    match keyctl(KEYCTL_JOIN_SESSION_KEYRING, 0, 0) {
        Ok(_) => {}
        // A kernel without keyrings: nothing to leak.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Ok(()),
        Err(e) => return Err(e),
    }
    keyctl(KEYCTL_CLEAR, KEY_SPEC_USER_KEYRING, 0)?;
    keyctl(KEYCTL_CLEAR, KEY_SPEC_USER_SESSION_KEYRING, 0)?;
    // Persistent keyrings exist only where the kernel has them (CONFIG_PERSISTENT_KEYRINGS).
    match keyctl(KEYCTL_GET_PERSISTENT, -1, KEY_SPEC_SESSION_KEYRING) {
        Ok(persistent) => {
            keyctl(KEYCTL_CLEAR, persistent, 0)?;
            keyctl(KEYCTL_UNLINK, persistent, KEY_SPEC_SESSION_KEYRING)?;
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_group_resolves_and_root_is_refused() {
        assert!(role_group("nogroup").is_ok_and(|gid| gid != 0), "nogroup exists on Debian");
        assert!(role_group("root").unwrap_err().contains("never runs with root's group"));
        assert!(role_group("no-such-group-here").unwrap_err().contains("does not exist on this host"));
    }
}
