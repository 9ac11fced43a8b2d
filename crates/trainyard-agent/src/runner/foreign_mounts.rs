//! The host's mounts that name other instances, detached from a host program's mount namespace so
//! that its `/proc/self/mountinfo` lists none of them: network namespaces bound to files (the
//! agent's `/run/netns/ty-<agent>-<slot>`, other runtimes' alike; where `ip netns` keeps them on a
//! mount of its own, that mount goes whole) and containerd's containers' root filesystems, whose
//! mount points carry each container's id (`<job>.algo-<n>.<attempt>`).
//!
//! The table is read in the child, once its mount namespace has stopped receiving the host's new
//! mounts (it is made private first): a table read by the agent before the fork would miss a
//! container started in between. A child of a threaded process must not allocate, so the room
//! for the table is taken before the fork and the table is parsed in place.

use std::ffi::CStr;

/// The most of a mount table read in the child (a line is ~150 bytes: some 28,000 mounts). Only
/// what the child reads is touched; a larger table fails the launch (E2BIG) rather than leave
/// part of it unread.
const ROOM: usize = 4 << 20;

/// Where containerd's runtime mounts each container's root filesystem: `<state
/// dir>/io.containerd.runtime.v2.task/<namespace>/<container id>/rootfs`.
const CONTAINERD_TASKS: &[u8] = b"/io.containerd.runtime.v2.task/";

pub(super) struct ForeignMounts {
    table: Vec<u8>,
    /// Where `ip netns` binds named network namespaces to files (the agent's among them), on a
    /// mount of its own that holds nothing else.
    namespace_files: std::ffi::CString,
}

impl ForeignMounts {
    /// Before the fork: the room the child reads its mount table into (reserved, not touched).
    pub(super) fn new() -> ForeignMounts {
        ForeignMounts {
            table: Vec::with_capacity(ROOM),
            namespace_files: super::process::c_string(crate::network::NETNS_DIR),
        }
    }

    /// In the child, after its mount namespace was made private (else the detaches would
    /// propagate to the host): reads its mount table and detaches every foreign mount. Only
    /// syscalls; no allocation.
    pub(super) fn detach_in_child(&mut self) -> std::io::Result<()> {
        // First the dir `ip netns` binds onto itself to hold the namespace files, whole: one
        // detach instead of one per instance on the host, each of which waits for an expedited
        // RCU grace period, every CPU interrupted (35 µs on this machine idle, 0.2-0.5 ms during
        // the agents bench). The table read below no longer lists what it held. Where it is no
        // mount of its own (EINVAL) or absent (ENOENT), its files are detached one by one below.
        // SAFETY: umount2 of a NUL-terminated path.
        unsafe { libc::umount2(self.namespace_files.as_ptr(), libc::MNT_DETACH) };
        let path = c"/proc/self/mountinfo";
        // SAFETY: open/read/close into the reserved capacity, whose length is set to what was read.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut len = 0;
            loop {
                let room = self.table.capacity() - len;
                if room == 0 {
                    libc::close(fd);
                    // (A message would allocate.)
                    return Err(std::io::Error::from_raw_os_error(libc::E2BIG));
                }
                let read = libc::read(fd, self.table.as_mut_ptr().add(len).cast(), room);
                if read < 0 {
                    let error = std::io::Error::last_os_error();
                    libc::close(fd);
                    return Err(error);
                }
                if read == 0 {
                    break;
                }
                len += read as usize;
            }
            libc::close(fd);
            self.table.set_len(len);
        }
        for_each_foreign(&mut self.table, |point| {
            // One under a mount detached before it is gone with it (EINVAL): nothing to do.
            // SAFETY: umount2 of a NUL-terminated path.
            unsafe { libc::umount2(point.as_ptr(), libc::MNT_DETACH) };
        });
        Ok(())
    }
}

/// Calls `detach` with the mount point of each foreign mount in `table` (the text of a
/// `mountinfo`), decoded and NUL-terminated in place.
fn for_each_foreign(table: &mut [u8], mut detach: impl FnMut(&CStr)) {
    for line in table.split_mut(|b| *b == b'\n') {
        // ID PARENT MAJOR:MINOR ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS
        let Some((start, end)) = field(line, 4) else { continue };
        let fstype = line.split(|b| *b == b' ').skip_while(|f| *f != b"-").nth(1);
        let point = &line[start..end];
        let foreign =
            fstype == Some(b"nsfs".as_slice()) || point.windows(CONTAINERD_TASKS.len()).any(|w| w == CONTAINERD_TASKS);
        // The mount point is followed by its options: there is room for the NUL.
        if !foreign || end >= line.len() {
            continue;
        }
        let decoded = unescape(&mut line[start..end]);
        line[start + decoded] = 0;
        if let Ok(point) = CStr::from_bytes_with_nul(&line[start..=start + decoded]) {
            detach(point);
        }
    }
}

/// The bounds of field `index` (space-separated) of `line`.
fn field(line: &[u8], index: usize) -> Option<(usize, usize)> {
    let mut start = 0;
    for _ in 0..index {
        start += line[start..].iter().position(|b| *b == b' ')? + 1;
    }
    let end = line[start..].iter().position(|b| *b == b' ').map_or(line.len(), |p| start + p);
    Some((start, end))
}

/// Decodes the kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`) in place;
/// returns the decoded length.
fn unescape(text: &mut [u8]) -> usize {
    let (mut read, mut written) = (0, 0);
    while read < text.len() {
        let octal = |b: u8| (b'0'..=b'7').contains(&b);
        if text[read] == b'\\' && read + 3 < text.len() && text[read + 1..=read + 3].iter().all(|b| octal(*b)) {
            text[written] = (text[read + 1] - b'0') * 64 + (text[read + 2] - b'0') * 8 + (text[read + 3] - b'0');
            read += 4;
        } else {
            text[written] = text[read];
            read += 1;
        }
        written += 1;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn foreign(table: &str) -> Vec<String> {
        let mut bytes = table.as_bytes().to_vec();
        let mut found = Vec::new();
        for_each_foreign(&mut bytes, |point| found.push(point.to_string_lossy().into_owned()));
        found
    }

    #[test]
    fn namespace_files_and_containers_root_filesystems_are_foreign_and_nothing_else() {
        let table = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
45 22 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
46 45 0:4 net:[4026532174] /run/netns/ty-agent-1 rw shared:2 - nsfs nsfs rw
47 22 0:4 net:[4026532242] /var/run/docker/netns/1a2b rw - nsfs nsfs rw
48 22 0:40 / /run/containerd/io.containerd.runtime.v2.task/trainyard/secret-job.algo-1.1/rootfs rw,relatime - overlay overlay rw,lowerdir=/x
49 22 0:41 / /srv/data rw,relatime shared:7 - xfs /dev/vdb rw
50 22 0:42 / /run/user/1000 rw,nosuid shared:8 - tmpfs tmpfs rw
51 22 0:4 net:[4026532300] /run/netns/with\\040space rw - nsfs nsfs rw
";
        assert_eq!(
            foreign(table),
            [
                "/run/netns/ty-agent-1",
                "/var/run/docker/netns/1a2b",
                "/run/containerd/io.containerd.runtime.v2.task/trainyard/secret-job.algo-1.1/rootfs",
                "/run/netns/with space",
            ]
        );
    }

    #[test]
    fn a_damaged_line_is_skipped() {
        assert!(foreign("46 45 0:4\n\n- nsfs\n46 45 0:4 net:[1] /run/netns/x").is_empty(), "no field after the point");
        assert_eq!(foreign("46 45 0:4 net:[1] /run/netns/x rw - nsfs nsfs rw"), ["/run/netns/x"]);
    }

    #[test]
    fn escapes_decode_in_place() {
        let mut text = *b"a\\040b\\134c\\04";
        let n = unescape(&mut text);
        assert_eq!(&text[..n], b"a b\\c\\04");
    }
}
