//! The resolver configuration (`/etc/resolv.conf`) an instance in its own network namespace gets.
//! The host's names resolvers the namespace may not reach: a loopback one (systemd-resolved's
//! stub at 127.0.0.53, a local dnsmasq) is the namespace's own loopback there, and an IPv6 one is
//! out of reach of an instance, which has no IPv6. Those lines are left out; when no resolver is
//! left, systemd-resolved's list of its upstream servers is used instead (as Docker does). Pure:
//! the caller reads the files.

use std::net::IpAddr;

/// Where systemd-resolved writes the servers it forwards to.
pub const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";
/// The host's resolver configuration.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// A resolver configuration larger than this is not read (glibc reads a few lines of it).
pub const MAX_BYTES: u64 = 64 * 1024;

/// What an instance in its own namespace gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceResolver {
    pub contents: String,
    /// It names a resolver the instance can reach.
    pub reachable: bool,
}

/// From the host's configuration and, if there is one, systemd-resolved's upstream list.
pub fn for_instances(host: &str, resolved_upstream: Option<&str>) -> InstanceResolver {
    let from_host = reachable_only(host);
    if from_host.reachable {
        return from_host;
    }
    match resolved_upstream.map(reachable_only) {
        Some(upstream) if upstream.reachable => upstream,
        _ => from_host,
    }
}

/// `text` without the `nameserver` lines an instance cannot reach.
fn reachable_only(text: &str) -> InstanceResolver {
    let mut reachable = false;
    let mut contents = String::with_capacity(text.len());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            // An address with a zone (fe80::1%eth0) is IPv6: also out of reach.
            match words.next().and_then(|address| address.parse::<IpAddr>().ok()) {
                Some(IpAddr::V4(v4)) if !v4.is_loopback() && !v4.is_unspecified() => reachable = true,
                _ => continue,
            }
        }
        contents.push_str(line);
        contents.push('\n');
    }
    InstanceResolver { contents, reachable }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_resolver_an_instance_reaches_is_given_as_it_is() {
        let host = "# from DHCP\nsearch corp.example\nnameserver 10.0.0.2\noptions edns0\n";
        assert_eq!(for_instances(host, None), InstanceResolver { contents: host.into(), reachable: true });
    }

    #[test]
    fn loopback_and_ipv6_resolvers_are_left_out() {
        let host = "nameserver 127.0.0.53\nnameserver ::1\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\nnameserver 192.0.2.53\nsearch lan\n";
        let got = for_instances(host, None);
        assert_eq!(got.contents, "nameserver 192.0.2.53\nsearch lan\n");
        assert!(got.reachable);
    }

    #[test]
    fn behind_systemd_resolveds_stub_its_upstream_servers_are_given() {
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch corp.example\n";
        let upstream = "nameserver 10.1.2.3\nnameserver 2001:db8::1\nsearch corp.example\n";
        let got = for_instances(stub, Some(upstream));
        assert_eq!(got.contents, "nameserver 10.1.2.3\nsearch corp.example\n");
        assert!(got.reachable);
    }

    #[test]
    fn with_nothing_reachable_the_instance_is_told_no_resolver_and_it_is_said() {
        // glibc would try 127.0.0.1 for a file without resolvers: unreachable too.
        for host in ["nameserver 127.0.0.1\n", "", "nameserver not-an-address\n", "nameserver 0.0.0.0\n"] {
            let got = for_instances(host, Some("nameserver 127.0.0.53\n"));
            assert!(!got.reachable, "{host:?}");
            assert!(!got.contents.contains("nameserver"), "{host:?}: {}", got.contents);
        }
    }
}
