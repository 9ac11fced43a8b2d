//! The local user an execution role runs as: names resolved through the system's user database
//! (`getpwnam_r`/`getgrnam_r`, so NSS sources such as LDAP work too), never uid or gid 0.

use std::ffi::{CStr, CString};
use std::path::Path;

/// A resolved user, ready to switch to in the child before `exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub home: String,
}

/// Resolves `user` (and `group`, default: the user's primary group). Root is refused.
pub fn resolve(user: &str, group: Option<&str>) -> Result<LocalUser, String> {
    let name = CString::new(user).map_err(|_| format!("user name '{user}' contains a NUL byte"))?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value to be overwritten by getpwnam_r.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer outlives the reads of `entry` below.
    let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return Err(format!("the execution role's user '{user}' does not exist on this host"));
    }
    // SAFETY: getpwnam_r succeeded, so pw_dir points into `buffer` (or is null).
    let home = if entry.pw_dir.is_null() {
        String::from("/")
    } else {
        unsafe { CStr::from_ptr(entry.pw_dir) }.to_string_lossy().into_owned()
    };
    let gid = match group {
        Some(group) if !group.is_empty() => group_id(group)?,
        _ => entry.pw_gid,
    };
    if entry.pw_uid == 0 || gid == 0 {
        return Err(format!(
            "the execution role resolves to uid {} gid {gid}: training never runs as root",
            entry.pw_uid
        ));
    }
    Ok(LocalUser { name: user.to_string(), uid: entry.pw_uid, gid, home })
}

fn group_id(group: &str) -> Result<libc::gid_t, String> {
    let name = CString::new(group).map_err(|_| format!("group name '{group}' contains a NUL byte"))?;
    let mut buffer = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: as in `resolve`.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call.
    let rc = unsafe { libc::getgrnam_r(name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return Err(format!("the execution role's group '{group}' does not exist on this host"));
    }
    Ok(entry.gr_gid)
}

/// Gives `dir` and everything in it to `user` (the agent staged it as root). Symbolic links are
/// changed themselves, never followed.
pub fn give_tree(dir: &Path, user: &LocalUser) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(user.uid), Some(user.gid))?;
    if std::fs::symlink_metadata(dir)?.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            give_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}

/// In the child, after every privileged step: drop to `user` for good. The parent-death signal is
/// set again because changing credentials clears it.
///
/// # Safety
/// Only async-signal-safe calls: meant for `pre_exec`.
pub unsafe fn switch_to(uid: libc::uid_t, gid: libc::gid_t) -> std::io::Result<()> {
    let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: plain syscalls on values copied into the child.
    unsafe {
        check(libc::setgroups(1, &gid))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_resolves_and_root_is_refused() {
        let nobody = resolve("nobody", None).expect("nobody exists on Linux");
        assert_ne!(nobody.uid, 0);
        assert!(resolve("root", None).unwrap_err().contains("never runs as root"));
        assert!(resolve("nobody", Some("root")).unwrap_err().contains("never runs as root"));
        assert!(resolve("no-such-user-here", None).unwrap_err().contains("does not exist on this host"));
        assert!(resolve("nobody", Some("no-such-group-here")).unwrap_err().contains("group"));
    }
}
