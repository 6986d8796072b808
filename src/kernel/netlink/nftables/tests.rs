use super::*;

mod nft_bytes;

fn bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
        .collect()
}

/// The attributes of one of nft's messages (its nfgenmsg left out).
fn nft_attributes(hex: &str) -> Vec<u8> {
    bytes(hex)[NFGENMSG..].to_vec()
}

/// A message's attribute `kind`, as bytes.
fn attribute(attributes_bytes: &[u8], kind: u16) -> Vec<u8> {
    attributes(attributes_bytes)
        .find(|(found, _)| *found == kind)
        .map(|(_, value)| value.to_vec())
        .unwrap_or_else(|| panic!("no attribute {kind}"))
}

/// The rule a dumped (or nft's) `NEWRULE` body holds.
fn rule_of_message(body: &[u8]) -> (String, Rule) {
    parse_rule(body).expect("a rule of table kudonet")
}

/// `rule` through the encoder and back through the decoder, as bytes.
fn round_trip(rule: &Rule) -> Rule {
    let mut body = vec![NFPROTO_INET, 0, 0, 0];
    body.extend(rule_attributes("chain", rule));
    rule_of_message(&body).1
}

fn rule(matches: Vec<Match>, verdict: Verdict) -> Rule {
    Rule { matches, verdict }
}

fn cidr(text: &str) -> IpCidr {
    text.parse().unwrap()
}

#[test]
fn every_match_and_verdict_reads_back_as_written() {
    let matches = vec![
        Match::Nfproto(Family::Ipv4),
        Match::Nfproto(Family::Ipv6),
        Match::IifnameIn("bridges".into()),
        Match::OifnameIn("bridges".into()),
        Match::Oifname("eth0".into()),
        Match::OifnameNot("kudo0".into()),
        Match::Oifname("fifteen-chars-x".into()),
        Match::Saddr(cidr("10.75.0.0/24")),
        Match::Saddr(cidr("10.75.16.0/20")),
        Match::Saddr(cidr("10.75.0.7/32")),
        Match::Saddr(cidr("0.0.0.0/0")),
        Match::Saddr(cidr("fd75:0:0:1::/64")),
        Match::Saddr(cidr("fd75::/57")),
        Match::Saddr(cidr("::/0")),
        Match::Daddr(cidr("10.0.0.0/8")),
        Match::Daddr(cidr("10.0.0.0/9")),
        Match::Daddr(cidr("fd75::/48")),
        Match::Daddr(cidr("fd75::1/128")),
        Match::DaddrNot("::1".parse().unwrap()),
        Match::DaddrNot("127.0.0.1".parse().unwrap()),
        Match::FibDaddrLocal,
        Match::FibSaddrLocal,
        Match::CtStatusDnat,
        Match::CtStateEstablishedRelated,
    ];
    let verdicts = vec![
        Verdict::Accept,
        Verdict::Return,
        Verdict::Jump("ports".into()),
        Verdict::Masquerade,
    ]
    .into_iter()
    .chain(Family::ALL.into_iter().flat_map(|family| {
        [true, false].map(|by_destination| Verdict::DnatMap {
            family,
            map: "ports".into(),
            by_destination,
        })
    }))
    .collect::<Vec<_>>();
    for condition in &matches {
        for verdict in &verdicts {
            let written = rule(vec![condition.clone()], verdict.clone());
            assert_eq!(round_trip(&written), written, "{written}");
        }
    }
    // All of them in one rule, each after each other.
    let all = rule(matches.clone(), Verdict::Accept);
    assert_eq!(round_trip(&all), all);
    let reversed = rule(matches.into_iter().rev().collect(), Verdict::Masquerade);
    assert_eq!(round_trip(&reversed), reversed);
    // The planner's explicit family before a port map.
    let ports = rule(
        vec![Match::Nfproto(Family::Ipv6)],
        Verdict::DnatMap {
            family: Family::Ipv6,
            map: "ports6_host".into(),
            by_destination: true,
        },
    );
    assert_eq!(round_trip(&ports), ports);
    // No condition at all.
    assert_eq!(
        round_trip(&rule(vec![], Verdict::Accept)),
        rule(vec![], Verdict::Accept)
    );
}

#[test]
fn every_set_type_reads_back_as_written() {
    let cases: Vec<(Vec<Type>, Vec<Value>)> = vec![
        (vec![Type::Ifname], vec![Value::Ifname("kudo0".into())]),
        (
            vec![Type::InetProto, Type::InetService],
            vec![Value::Proto(Protocol::Udp), Value::Port(5353)],
        ),
        (
            vec![Type::Ipv4Addr, Type::InetProto, Type::InetService],
            vec![
                Value::Address("192.0.2.10".parse().unwrap()),
                Value::Proto(Protocol::Tcp),
                Value::Port(65535),
            ],
        ),
        (
            vec![Type::Ipv6Addr, Type::InetService],
            vec![Value::Address("fd75::2".parse().unwrap()), Value::Port(80)],
        ),
        (vec![Type::InetService], vec![Value::Port(1)]),
        (
            vec![Type::Ipv4Addr],
            vec![Value::Address("10.0.0.1".parse().unwrap())],
        ),
    ];
    for (types, values) in cases {
        assert_eq!(types_of_concat(concat_type(&types)), Some(types.clone()));
        let encoded = encode_values(&values);
        assert_eq!(encoded.len(), concat_length(&types));
        assert_eq!(decode_values(&types, &encoded), Some(values));
    }
    // A protocol kudonet does not publish is not one of its values.
    assert_eq!(
        decode_values(
            &[Type::InetProto, Type::InetService],
            &[1, 0, 0, 0, 0, 80, 0, 0]
        ),
        None
    );
    // Nor is one with anything but zeros in a concatenation's padding.
    let types = [Type::InetProto, Type::InetService];
    let good = [6, 0, 0, 0, 0, 80, 0, 0];
    assert!(decode_values(&types, &good).is_some());
    for at in [1, 2, 3, 6, 7] {
        let mut padded = good;
        padded[at] = 1;
        assert_eq!(decode_values(&types, &padded), None, "padding byte {at}");
    }
}

/// A map and a set, in replace messages, read back through the dump parsers.
#[test]
fn sets_and_elements_read_back_as_written() {
    let map = Set {
        key: vec![Type::Ipv4Addr, Type::InetProto, Type::InetService],
        data: vec![Type::Ipv4Addr, Type::InetService],
        elements: BTreeMap::from([(
            vec![
                Value::Address("192.0.2.10".parse().unwrap()),
                Value::Proto(Protocol::Tcp),
                Value::Port(8443),
            ],
            Element {
                data: vec![
                    Value::Address("10.75.0.2".parse().unwrap()),
                    Value::Port(443),
                ],
                comment: Some("web".into()),
            },
        )]),
    };
    let bridges = Set {
        key: vec![Type::Ifname],
        data: vec![],
        elements: BTreeMap::from([
            (vec![Value::Ifname("kudo0".into())], Element::default()),
            (vec![Value::Ifname("kudo0s1".into())], Element::default()),
        ]),
    };
    let ruleset = Ruleset {
        sets: BTreeMap::from([("bridges".into(), bridges), ("ports4_host".into(), map)]),
        chains: BTreeMap::new(),
    };
    let mut read = BTreeMap::new();
    let messages = replace_batch(&ruleset, false);
    for message in &messages {
        let mut body = vec![NFPROTO_INET, 0, 0, 0];
        body.extend(&message.attributes);
        match message.kind {
            NEWSET => {
                let (name, set, ours) = parse_set(&body).unwrap();
                assert!(ours, "{name}");
                read.insert(name, set);
            }
            NEWSETELEM => {
                let name = string(&attribute(&message.attributes, SET_ELEM_LIST_SET));
                let set = read.get_mut(&name).unwrap();
                let elements = parse_elements(&body, &set.key, &set.data).unwrap();
                set.elements.extend(elements);
            }
            _ => {}
        }
    }
    assert_eq!(read, ruleset.sets);
}

#[test]
fn rules_are_encoded_byte_for_byte_as_nft_encodes_them() {
    // prerouting: fib daddr type local jump ports
    let prerouting = rule(vec![Match::FibDaddrLocal], Verdict::Jump("ports".into()));
    assert_eq!(
        rule_attributes("prerouting", &prerouting),
        nft_attributes(nft_bytes::SEQ_20)
    );
    // output: meta nfproto ipv4 fib daddr type local jump ports
    let output4 = rule(
        vec![Match::Nfproto(Family::Ipv4), Match::FibDaddrLocal],
        Verdict::Jump("ports".into()),
    );
    assert_eq!(
        rule_attributes("output", &output4),
        nft_attributes(nft_bytes::SEQ_21)
    );
    // output: ip6 daddr != ::1 fib daddr type local jump ports (its meta nfproto included)
    let output6 = rule(
        vec![
            Match::DaddrNot("::1".parse().unwrap()),
            Match::FibDaddrLocal,
        ],
        Verdict::Jump("ports".into()),
    );
    assert_eq!(
        rule_attributes("output", &output6),
        nft_attributes(nft_bytes::SEQ_22)
    );
    // postrouting: ip saddr 10.75.0.0/24 oifname "eth0" masquerade (a 3-byte compare)
    let masquerade = rule(
        vec![
            Match::Saddr(cidr("10.75.0.0/24")),
            Match::Oifname("eth0".into()),
        ],
        Verdict::Masquerade,
    );
    assert_eq!(
        rule_attributes("postrouting", &masquerade),
        nft_attributes(nft_bytes::SEQ_31)
    );
}

#[test]
fn nfts_own_rules_read_as_kudonets() {
    let dnat = |family, map: &str, by_destination| Verdict::DnatMap {
        family,
        map: map.into(),
        by_destination,
    };
    let bridges = || Match::OifnameIn("bridges".into());
    let expected = [
        (
            nft_bytes::SEQ_20,
            "prerouting",
            rule(vec![Match::FibDaddrLocal], Verdict::Jump("ports".into())),
        ),
        (
            nft_bytes::SEQ_23,
            "ports",
            rule(
                vec![Match::Nfproto(Family::Ipv4)],
                dnat(Family::Ipv4, "ports4_host", true),
            ),
        ),
        (
            nft_bytes::SEQ_24,
            "ports",
            rule(vec![], dnat(Family::Ipv4, "ports4", false)),
        ),
        (
            nft_bytes::SEQ_26,
            "ports",
            rule(vec![], dnat(Family::Ipv6, "ports6", false)),
        ),
        (
            nft_bytes::SEQ_27,
            "postrouting",
            rule(
                vec![
                    bridges(),
                    Match::Saddr(cidr("10.75.0.0/24")),
                    Match::CtStatusDnat,
                ],
                Verdict::Masquerade,
            ),
        ),
        (
            nft_bytes::SEQ_28,
            "postrouting",
            rule(
                vec![
                    bridges(),
                    Match::Saddr(cidr("fd75:0:0:1::/64")),
                    Match::CtStatusDnat,
                ],
                Verdict::Masquerade,
            ),
        ),
        (
            nft_bytes::SEQ_29,
            "postrouting",
            rule(
                vec![bridges(), Match::FibSaddrLocal, Match::CtStatusDnat],
                Verdict::Masquerade,
            ),
        ),
        (
            nft_bytes::SEQ_34,
            "forward",
            rule(vec![Match::IifnameIn("bridges".into())], Verdict::Accept),
        ),
        (
            nft_bytes::SEQ_35,
            "forward",
            rule(
                vec![bridges(), Match::CtStateEstablishedRelated],
                Verdict::Accept,
            ),
        ),
    ];
    for (hex, chain, wanted) in expected {
        assert_eq!(rule_of_message(&bytes(hex)), (chain.to_string(), wanted));
    }
}

#[test]
fn elements_are_encoded_as_nft_encodes_them() {
    // ports4 { tcp . 8080 : 10.75.0.2 . 80, udp . 5353 : 10.75.0.3 . 53 }, no comments.
    let element = |protocol, port, host: u8, to| {
        (
            vec![Value::Proto(protocol), Value::Port(port)],
            Element {
                data: vec![
                    Value::Address(IpAddr::V4(Ipv4Addr::new(10, 75, 0, host))),
                    Value::Port(to),
                ],
                comment: None,
            },
        )
    };
    let elements = [
        element(Protocol::Tcp, 8080, 2, 80),
        element(Protocol::Udp, 5353, 3, 53),
    ];
    let messages = element_messages(
        NEWSETELEM,
        "ports4",
        elements
            .iter()
            .map(|(key, element)| (key.as_slice(), Some(element))),
    );
    assert_eq!(messages.len(), 1);
    assert_eq!(
        attribute(&messages[0].attributes, SET_ELEM_LIST_ELEMENTS),
        attribute(&nft_attributes(nft_bytes::SEQ_8), SET_ELEM_LIST_ELEMENTS)
    );
}

#[test]
fn what_kudonet_does_not_write_reads_as_unknown() {
    // nft's `ip daddr @cluster4` (a lookup of the destination): not in kudonet's vocabulary.
    let (_, read) = rule_of_message(&bytes(nft_bytes::SEQ_30));
    assert!(matches!(read.verdict, Verdict::Unknown(_)), "{read:?}");
    // An expression kudonet never writes.
    let mut expressions = Vec::new();
    Expr::Verdict {
        code: 0, // drop
        chain: None,
    }
    .encode(&mut expressions);
    let mut body = vec![NFPROTO_INET, 0, 0, 0];
    put_string(&mut body, RULE_TABLE, TABLE_NAME);
    put_string(&mut body, RULE_CHAIN, "forward");
    put_nested(&mut body, RULE_EXPRESSIONS, &expressions);
    let (_, read) = rule_of_message(&body);
    assert_eq!(
        read,
        unknown_rule("immediate verdict 0"),
        "a drop is not kudonet's"
    );
    // A base chain dropping by policy equals no chain kudonet wants.
    let mut chain = vec![NFPROTO_INET, 0, 0, 0];
    let mut attributes_bytes = chain_message(
        "forward",
        &Chain {
            hook: Some(Hook {
                kind: ChainKind::Filter,
                point: HookPoint::Forward,
                priority: 0,
            }),
            rules: vec![],
        },
    )
    .attributes;
    let policy = attributes_bytes
        .windows(8)
        .position(|window| window == [8, 0, 5, 0, 0, 0, 0, 1])
        .unwrap();
    attributes_bytes[policy + 7] = 0;
    chain.extend(attributes_bytes);
    let (_, read) = parse_chain(&chain).unwrap();
    assert_eq!(read.rules.len(), 1);
    assert!(matches!(read.rules[0].verdict, Verdict::Unknown(_)));
}

#[test]
fn a_created_table_read_without_its_comment_means_the_kernel_drops_comments() {
    // The table as kudonet asks for it, and as a kernel before Linux 5.10 keeps it: the
    // userdata dropped.
    let dumped = |attributes_bytes: Vec<u8>| {
        let mut body = vec![NFPROTO_INET, 0, 0, 0];
        body.extend(attributes_bytes);
        parse_table(&body)
    };
    let kept = dumped(table_attributes(true));
    assert_eq!(
        kept,
        Some((TABLE_NAME.into(), Some(TABLE_COMMENT.into()), 0))
    );
    assert!(comment_kept(kept.as_ref()));
    let dropped = dumped(table_attributes(false));
    assert!(!comment_kept(dropped.as_ref()));
    // Gone meanwhile: nothing to say about the kernel.
    assert!(comment_kept(None));
    let error = comments_not_kept(None);
    assert_eq!(
        error.to_string(),
        "nftables: this kernel does not keep table comments (Linux 5.10 or later is needed), \
         so kudonet cannot tell its table inet kudonet from someone else's; the table it \
         created was deleted again: Operation not supported (os error 95)"
    );
    assert!(!error.can_retry());
}

#[test]
fn a_table_read_absent_is_created_exclusively_and_only_then() {
    let ruleset = Ruleset::default();
    let created = replace_batch(&ruleset, true);
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].kind, NEWTABLE);
    assert_eq!(created[0].flags, NLM_F_CREATE | NLM_F_EXCL);
    let replaced = replace_batch(&ruleset, false);
    let kinds: Vec<_> = replaced
        .iter()
        .map(|message| (message.kind, message.flags))
        .collect();
    assert_eq!(
        kinds,
        [
            (NEWTABLE, NLM_F_CREATE),
            (DELTABLE, 0),
            (NEWTABLE, NLM_F_CREATE)
        ]
    );
}

/// An `NLMSG_ERROR` acknowledgement of sequence `sequence` with `flags`, `errno` and
/// what follows the errno (the acknowledged message, the extended-ack attributes).
fn ack_bytes(sequence: u32, flags: u16, errno: i32, rest: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    header(&mut bytes, NLMSG_ERROR, flags, sequence, 4 + rest.len());
    bytes.extend((-errno).to_ne_bytes());
    bytes.extend(rest);
    bytes
}

#[test]
fn an_acknowledgement_gives_its_errno_and_the_kernels_message() {
    // The acknowledged message's header (capped), then NLMSGERR_ATTR_MSG.
    let mut acknowledged = Vec::new();
    header(&mut acknowledged, NEWRULE, NLM_F_REQUEST, 7, 100);
    let mut rest = acknowledged.clone();
    put_string(&mut rest, NLMSGERR_ATTR_MSG, "no such set");
    let reply = ack_bytes(7, NLM_F_CAPPED | NLM_F_ACK_TLVS, 2, &rest);
    let ack = Ack::parse(&reply).unwrap();
    assert_eq!(
        ack,
        Ack {
            sequence: 7,
            errno: 2,
            message: Some("no such set".into())
        }
    );
    let messages = replace_batch(&Ruleset::default(), true);
    assert_eq!(
        ack.error(6, &messages, 41).to_string(),
        "nftables: add table inet kudonet (the kernel says: no such set): No such file or \
         directory (os error 2)"
    );
    // Uncapped: the whole acknowledged message (its header and 100 bytes) comes before the
    // attributes.
    let mut whole = acknowledged;
    whole.resize(HEADER + 100, 0);
    put_string(&mut whole, NLMSGERR_ATTR_MSG, "whole");
    let reply = ack_bytes(7, NLM_F_ACK_TLVS, 2, &whole);
    assert_eq!(
        Ack::parse(&reply).unwrap().message.as_deref(),
        Some("whole")
    );
    // A success, and a message that is no acknowledgement.
    let mut success = Vec::new();
    header(&mut success, NEWRULE, NLM_F_REQUEST, 8, 0);
    let reply = ack_bytes(8, NLM_F_CAPPED, 0, &success);
    assert_eq!(Ack::parse(&reply).unwrap().errno, 0);
    assert_eq!(Ack::parse(&success), None);
    // A stale generation: the batch's own acknowledgement, ERESTART.
    let stale = Ack::parse(&ack_bytes(5, NLM_F_CAPPED, ERESTART, &success)).unwrap();
    let error = stale.error(5, &messages, 41);
    assert!(
        error
            .to_string()
            .starts_with("nftables: the ruleset changed meanwhile (it is past generation 41")
    );
    assert!(error.can_retry());
}

#[test]
fn fewer_acknowledgements_than_messages_is_an_error() {
    assert!(acks_complete(3, 3).is_ok());
    let error = acks_complete(2, 3).unwrap_err();
    assert_eq!(
        error.to_string(),
        "nftables: the kernel acknowledged 2 of the transaction's 3 messages: \
         acknowledgements missing"
    );
    assert!(error.can_retry());
}
