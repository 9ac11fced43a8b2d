//! The pure half of instance networking: addresses and nftables rulesets as data, tested as data.
//! The other half (`super`) only applies them.
//!
//! * Every instance runs in its own network namespace, joined to the agent's host by a veth pair
//!   whose two ends get a /30 of [`INSTANCE_NETWORK`] chosen by the instance's slot.
//! * Inside the namespace `algo-N` resolves to [`peer_address`]`(N)`, in [`PEER_NETWORK`]. The
//!   instance's own one sits on its loopback; a connection to any other is redirected by nftables
//!   to the agent's forwarder listening inside the namespace, which carries it to the peer's agent.
//!   So peer traffic never leaves the namespace except through the agent, whatever the flags.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use nftables::expr::{CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Match, NAT, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// Veth pairs between the host and its instances: a /30 per slot.
pub const INSTANCE_NETWORK: Net = Net { address: Ipv4Addr::new(10, 253, 0, 0), prefix: 16 };
/// Where `algo-N` points inside every instance namespace; private to each namespace.
pub const PEER_NETWORK: Net = Net { address: Ipv4Addr::new(10, 254, 0, 0), prefix: 16 };
/// Slots per host: the /30s that fit in [`INSTANCE_NETWORK`].
pub const SLOTS: u32 = 1 << (32 - 16 - 2);
/// The nftables table the agent owns, in the host namespace and in each instance namespace.
pub const TABLE: &str = "trainyard";
/// Where the agent's forwarder listens inside every instance namespace (on its loopback). Fixed, so
/// that an idle namespace's rules fit its next instance unchanged; privileged, so that no job's
/// process could listen there (and the forwarder holds it for the whole of an instance's life).
pub const FORWARDER_PORT: u16 = 1000;
/// Host-side veth names start with this; the slot follows.
pub const VETH_PREFIX: &str = "tyv";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl Net {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
        u32::from(ip) & mask == u32::from(self.address) & mask
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl std::str::FromStr for Net {
    type Err = String;
    /// `A.B.C.D/N`, or a bare address (a /32).
    fn from_str(s: &str) -> Result<Self, String> {
        let (address, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let address: Ipv4Addr = address.trim().parse().map_err(|_| format!("'{s}' is not an IPv4 address or CIDR"))?;
        let prefix: u8 = prefix.trim().parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("'{s}': bad prefix"))?;
        Ok(Net { address, prefix })
    }
}

/// The two ends of slot `slot`'s veth pair: (host side, namespace side).
pub fn slot_addresses(slot: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(INSTANCE_NETWORK.address) + (slot % SLOTS) * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

pub fn veth_name(slot: u32) -> String {
    format!("{VETH_PREFIX}{slot}")
}

/// `algo-N`'s address inside every namespace of its job.
pub fn peer_address(instance: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(PEER_NETWORK.address) + instance)
}

/// The instance a redirected connection was meant for, from its original destination.
pub fn instance_of(address: Ipv4Addr) -> Option<u32> {
    if !PEER_NETWORK.contains(address) {
        return None;
    }
    Some(u32::from(address) - u32::from(PEER_NETWORK.address)).filter(|n| *n > 0)
}

/// `/etc/hosts` inside an instance: every `algo-N` of the job.
pub fn hosts_file(base: &str, instance_count: u32) -> String {
    let mut text = base.trim_end().to_string();
    text.push('\n');
    // v4-mapped too: reverse lookups of `::ffff:10.254.0.N` (a dual-stack listener's view of a
    // peer) are answered here, not by a nameserver an isolated instance cannot reach.
    for n in 1..=instance_count {
        text.push_str(&format!("{} algo-{n}\n", peer_address(n)));
    }
    for n in 1..=instance_count {
        text.push_str(&format!("::ffff:{} algo-{n}\n", peer_address(n)));
    }
    text
}

/// What an instance may reach besides its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    /// Anything the host reaches (no VpcConfig, no isolation).
    Open,
    /// EnableNetworkIsolation: loopback and peers, nothing else.
    Isolated,
    /// VpcConfig: the networks its subnets and security groups map to on this agent.
    Only(Vec<Net>),
}

/// The ruleset loaded into an instance's namespace.
pub fn instance_ruleset(own: u32, egress: &Egress) -> Nftables<'static> {
    // Add, delete, add: in one transaction, whatever an earlier instance of a recycled namespace
    // loaded is replaced (adding an existing table is a no-op; deleting a missing one fails).
    let mut objects = vec![
        table(),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(Table {
            family: NfFamily::IP,
            name: TABLE.into(),
            handle: None,
        }))),
        table(),
        base_chain("peers", NfChainType::NAT, NfHook::Output, -100, None),
    ];
    // Connections to another instance go to the agent's forwarder inside this namespace.
    objects.push(rule(
        "peers",
        vec![
            matches(ip_field("daddr"), prefix(PEER_NETWORK), Operator::EQ),
            matches(ip_field("daddr"), string(peer_address(own).to_string()), Operator::NEQ),
            matches(meta(MetaKey::L4proto), string("tcp"), Operator::EQ),
            Statement::Redirect(Some(NAT {
                addr: None,
                family: None,
                port: Some(Expression::Number(FORWARDER_PORT.into())),
                flags: None,
            })),
        ],
    ));
    if *egress != Egress::Open {
        let policy = Some(NfChainPolicy::Drop);
        objects.push(base_chain("egress", NfChainType::Filter, NfHook::Output, 0, policy));
        objects.push(base_chain("ingress", NfChainType::Filter, NfHook::Input, 0, policy));
        // Loopback carries the peer traffic (to the forwarder, and from it to the instance).
        objects.push(rule("egress", vec![matches(meta(MetaKey::Oifname), string("lo"), Operator::EQ), accept()]));
        // A redirected connection still carries the interface of its first route here (output
        // hooks see the device chosen before NAT), so it is let through by its new destination.
        objects.push(rule(
            "egress",
            vec![
                matches(ip_field("daddr"), string("127.0.0.1"), Operator::EQ),
                matches(tcp_field("dport"), Expression::Number(FORWARDER_PORT.into()), Operator::EQ),
                accept(),
            ],
        ));
        objects.push(rule("ingress", vec![matches(meta(MetaKey::Iifname), string("lo"), Operator::EQ), accept()]));
        if let Egress::Only(allowed) = egress {
            let established = Expression::List(vec![string("established"), string("related")]);
            for chain in ["egress", "ingress"] {
                objects.push(rule(chain, vec![matches(ct_state(), established.clone(), Operator::IN), accept()]));
            }
            if !allowed.is_empty() {
                let set = allowed.iter().map(|n| SetItem::Element(prefix(*n))).collect();
                objects.push(rule(
                    "egress",
                    vec![
                        matches(ip_field("daddr"), Expression::Named(NamedExpression::Set(set)), Operator::EQ),
                        accept(),
                    ],
                ));
            }
        }
    }
    add_all(objects)
}

/// The host's part, shared by every agent on the host: instances without isolation reach what the
/// host reaches, their source rewritten to the host's address, but nothing of the host itself
/// (its services on any of its addresses, the agents' among them) and no other instance. Replaced
/// as a whole, atomically.
pub fn host_ruleset() -> Nftables<'static> {
    let flush = |chain| NfObject::CmdObject(NfCmd::Flush(nftables::schema::FlushObject::Chain(chain_named(chain))));
    let from_instances = || matches(ip_field("saddr"), prefix(INSTANCE_NETWORK), Operator::EQ);
    // Refused, not dropped: a job that tries is told at once instead of waiting for a timeout.
    let refuse = || Statement::Reject(None);
    let mut objects = vec![
        table(),
        base_chain("outbound", NfChainType::NAT, NfHook::Postrouting, 100, None),
        flush("outbound"),
        base_chain("to-the-host", NfChainType::Filter, NfHook::Input, 0, None),
        flush("to-the-host"),
        base_chain("between-instances", NfChainType::Filter, NfHook::Forward, 0, None),
        flush("between-instances"),
    ];
    objects.push(rule(
        "outbound",
        vec![
            from_instances(),
            matches(ip_field("daddr"), prefix(INSTANCE_NETWORK), Operator::NEQ),
            Statement::Masquerade(None),
        ],
    ));
    // To the host: replies to what the host opened, and name resolution (a resolver on the host's
    // own address is the instances' too: their resolv.conf is the host's, see `resolver`);
    // nothing else.
    let established = Expression::List(vec![string("established"), string("related")]);
    objects.push(rule("to-the-host", vec![from_instances(), matches(ct_state(), established, Operator::IN), accept()]));
    for protocol in ["udp", "tcp"] {
        objects.push(rule(
            "to-the-host",
            vec![
                from_instances(),
                matches(meta(MetaKey::L4proto), string(protocol), Operator::EQ),
                matches(transport_field(protocol, "dport"), Expression::Number(53), Operator::EQ),
                accept(),
            ],
        ));
    }
    objects.push(rule("to-the-host", vec![from_instances(), refuse()]));
    // Instances reach each other only through their agents' forwarders (the peer path), which
    // check the job: never straight from veth to veth, which would let any job reach another's ports.
    objects.push(rule(
        "between-instances",
        vec![from_instances(), matches(ip_field("daddr"), prefix(INSTANCE_NETWORK), Operator::EQ), refuse()],
    ));
    add_all(objects)
}

/// What the last agent on a host to stop runs: the host's part goes with it.
pub fn host_ruleset_removal() -> Nftables<'static> {
    Nftables { objects: Cow::Owned(vec![NfObject::CmdObject(NfCmd::Delete(the_table()))]) }
}

fn add_all(objects: Vec<NfObject<'static>>) -> Nftables<'static> {
    let objects = objects
        .into_iter()
        .map(|o| match o {
            NfObject::ListObject(l) => NfObject::CmdObject(NfCmd::Add(l)),
            other => other,
        })
        .collect::<Vec<_>>();
    Nftables { objects: Cow::Owned(objects) }
}

fn table() -> NfObject<'static> {
    NfObject::ListObject(the_table())
}

fn the_table() -> NfListObject<'static> {
    NfListObject::Table(Table { family: NfFamily::IP, name: TABLE.into(), handle: None })
}

fn chain_named(name: &'static str) -> Chain<'static> {
    Chain { family: NfFamily::IP, table: TABLE.into(), name: name.into(), ..Default::default() }
}

fn base_chain(
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
    policy: Option<NfChainPolicy>,
) -> NfObject<'static> {
    NfObject::ListObject(NfListObject::Chain(Chain {
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy,
        ..chain_named(name)
    }))
}

fn rule(chain: &'static str, statements: Vec<Statement<'static>>) -> NfObject<'static> {
    NfObject::ListObject(NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(statements),
        ..Default::default()
    }))
}

fn matches(left: Expression<'static>, right: Expression<'static>, op: Operator) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn ip_field(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: "ip".into(),
        field: field.into(),
    })))
}

fn tcp_field(field: &'static str) -> Expression<'static> {
    transport_field("tcp", field)
}

fn transport_field(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: protocol.into(),
        field: field.into(),
    })))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct_state() -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT { key: "state".into(), family: None, dir: None }))
}

fn prefix(net: Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(string(net.address.to_string())),
        len: net.prefix.into(),
    }))
}

fn string(s: impl Into<Cow<'static, str>>) -> Expression<'static> {
    Expression::String(s.into())
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

/// Chains of a ruleset with their policies, and each rule rendered compactly, for tests.
#[cfg(test)]
pub fn describe(ruleset: &Nftables<'_>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut lines = Vec::new();
    for object in ruleset.objects.iter() {
        let text = match object {
            NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(c))) => {
                format!("chain {} {:?} policy {:?}", c.name, c.hook, c.policy)
            }
            NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(r))) => {
                format!("rule {} {}", r.chain, serde_json::to_string(&r.expr).unwrap_or_default())
            }
            _ => continue,
        };
        if seen.insert(text.clone()) {
            lines.push(text);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_get_disjoint_veth_addresses() {
        let (h0, n0) = slot_addresses(0);
        let (h1, n1) = slot_addresses(1);
        assert_eq!((h0, n0), (Ipv4Addr::new(10, 253, 0, 1), Ipv4Addr::new(10, 253, 0, 2)));
        assert_eq!((h1, n1), (Ipv4Addr::new(10, 253, 0, 5), Ipv4Addr::new(10, 253, 0, 6)));
        let (last_host, last_ns) = slot_addresses(SLOTS - 1);
        assert!(INSTANCE_NETWORK.contains(last_host) && INSTANCE_NETWORK.contains(last_ns));
        assert!(veth_name(SLOTS - 1).len() <= 15, "interface names are at most 15 bytes");
    }

    #[test]
    fn peer_addresses_round_trip() {
        for n in [1, 2, 255, 256, 1000] {
            assert_eq!(instance_of(peer_address(n)), Some(n));
        }
        assert_eq!(instance_of(Ipv4Addr::new(10, 254, 0, 0)), None);
        assert_eq!(instance_of(Ipv4Addr::new(127, 0, 0, 1)), None);
        assert_eq!(instance_of(Ipv4Addr::new(10, 253, 0, 2)), None);
    }

    #[test]
    fn hosts_file_names_every_instance() {
        let text = hosts_file("127.0.0.1 localhost\n", 3);
        assert!(text.starts_with("127.0.0.1 localhost\n"));
        assert!(text.contains("10.254.0.1 algo-1\n") && text.contains("10.254.0.3 algo-3\n"));
        assert!(text.contains("::ffff:10.254.0.2 algo-2\n"), "v4-mapped, for reverse lookups: {text}");
        assert!(!text.contains("algo-4"));
    }

    #[test]
    fn cidrs_parse_with_clear_errors() {
        assert_eq!("10.1.0.0/16".parse::<Net>(), Ok(Net { address: Ipv4Addr::new(10, 1, 0, 0), prefix: 16 }));
        assert_eq!("192.0.2.7".parse::<Net>().map(|n| n.prefix), Ok(32));
        assert!("10.1.0.0/33".parse::<Net>().unwrap_err().contains("prefix"));
        assert!("example.com".parse::<Net>().unwrap_err().contains("not an IPv4"));
    }

    #[test]
    fn an_instance_ruleset_replaces_the_previous_one_in_one_transaction() {
        let ruleset = instance_ruleset(1, &Egress::Open);
        let kinds: Vec<&str> = ruleset
            .objects
            .iter()
            .take(3)
            .map(|o| match o {
                NfObject::CmdObject(NfCmd::Add(NfListObject::Table(_))) => "add table",
                NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(_))) => "delete table",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["add table", "delete table", "add table"]);
    }

    #[test]
    fn open_instances_only_redirect_peer_traffic() {
        let rules = describe(&instance_ruleset(2, &Egress::Open));
        assert_eq!(rules.iter().filter(|r| r.starts_with("chain")).count(), 1, "{rules:#?}");
        let redirect = rules.iter().find(|r| r.contains("redirect")).expect("a redirect rule");
        assert!(redirect.contains("10.254.0.0") && redirect.contains("10.254.0.2") && redirect.contains("1000"));
        assert!(!rules.iter().any(|r| r.contains("Drop")));
    }

    #[test]
    fn isolated_instances_reach_loopback_only() {
        let rules = describe(&instance_ruleset(1, &Egress::Isolated));
        assert!(rules.contains(&"chain egress Some(Output) policy Some(Drop)".to_string()), "{rules:#?}");
        assert!(rules.contains(&"chain ingress Some(Input) policy Some(Drop)".to_string()), "{rules:#?}");
        let accepts: Vec<&String> = rules.iter().filter(|r| r.contains("accept")).collect();
        assert_eq!(accepts.len(), 3, "{accepts:#?}");
        // Loopback both ways, and the forwarder's port (where redirected peer connections go).
        assert_eq!(accepts.iter().filter(|r| r.contains("\"lo\"")).count(), 2);
        let forwarder = accepts.iter().find(|r| !r.contains("\"lo\"")).expect("the forwarder rule");
        assert!(forwarder.contains("127.0.0.1") && forwarder.contains("1000") && forwarder.contains("dport"));
    }

    #[test]
    fn vpc_instances_reach_their_allow_list() {
        let allowed = vec!["203.0.113.0/24".parse().expect("cidr")];
        let rules = describe(&instance_ruleset(1, &Egress::Only(allowed)));
        let allow = rules.iter().find(|r| r.contains("203.0.113.0")).expect("an allow rule");
        assert!(allow.starts_with("rule egress") && allow.contains("accept"));
        assert!(rules.iter().any(|r| r.contains("established")));
    }

    #[test]
    fn the_host_masquerades_instance_traffic_leaving_the_host() {
        let rules = describe(&host_ruleset());
        let rule = rules.iter().find(|r| r.contains("masquerade")).expect("masquerade");
        assert!(rule.contains("saddr") && rule.contains("10.253.0.0"));
    }

    #[test]
    fn instances_reach_neither_the_host_nor_each_other_but_for_name_resolution() {
        let rules = describe(&host_ruleset());
        let chain =
            |name: &str| -> Vec<&String> { rules.iter().filter(|r| r.starts_with(&format!("rule {name} "))).collect() };
        assert!(rules.iter().any(|r| r == "chain to-the-host Some(Input) policy None"), "{rules:#?}");
        assert!(rules.iter().any(|r| r == "chain between-instances Some(Forward) policy None"), "{rules:#?}");
        // To the host: replies first, then DNS over UDP and TCP, then everything else refused.
        let to_host = chain("to-the-host");
        assert_eq!(to_host.len(), 4, "{to_host:#?}");
        assert!(to_host.iter().all(|r| r.contains("10.253.0.0")), "{to_host:#?}");
        assert!(to_host[0].contains("established") && to_host[0].contains("accept"));
        for (rule, protocol) in to_host[1..3].iter().zip(["udp", "tcp"]) {
            assert!(
                rule.contains(protocol) && rule.contains("dport") && rule.contains("53") && rule.contains("accept")
            );
        }
        assert!(to_host[3].contains("reject") && !to_host[3].contains("dport"), "{}", to_host[3]);
        // Between instances: everything refused.
        let between = chain("between-instances");
        assert_eq!(between.len(), 1);
        assert!(between[0].contains("saddr") && between[0].contains("daddr") && between[0].contains("reject"));
    }

    #[test]
    fn the_hosts_part_is_removed_as_one_table() {
        let removal = host_ruleset_removal();
        assert_eq!(removal.objects.len(), 1);
        let NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table))) = &removal.objects[0] else {
            panic!("not a table deletion: {removal:?}");
        };
        assert_eq!((table.family, table.name.as_ref()), (NfFamily::IP, TABLE));
    }
}
