//! Fuzzing the platform-facing parser: arbitrary bytes on arbitrary topics under the gateway's
//! prefix, and mutations of real IoTDA payloads, must never panic — each is parsed into a
//! request, refused with an error, or ignored — and anything that parses into a write request
//! survives the router's checks only as a well-formed value.

use fieldgate::uplink::dialect::iotda::{parse, request, request_id, Inbound, Topics};
use proptest::prelude::*;

const SUFFIXES: &[&str] = &[
    "events/down",
    "commands/request_id=1",
    "commands/response/request_id=1",
    "properties/set/request_id=x",
    "properties/get/request_id=y",
    "messages/down",
    "unknown/topic",
    "commands/request_id=",
];

const SEEDS: &[&str] = &[
    r#"{"services":[{"service_id":"$sub_device_manager","event_type":"add_sub_device_response","paras":{"successful_devices":[{"node_id":"a","device_id":"p_a"}],"failed_devices":[]}}]}"#,
    r#"{"services":[{"service_id":"$sub_device_manager","event_type":"delete_sub_device_notify","paras":{"devices":[{"device_id":"p_a"}],"version":3}}]}"#,
    r#"{"object_device_id":"p_a","service_id":"s","command_name":"c","paras":{"value":1}}"#,
    r#"{"object_device_id":"p_a","services":[{"service_id":"s","properties":{"k":1.5}}]}"#,
];

fn check(topic: &str, payload: &[u8]) {
    let t = Topics::new("gw");
    if let Ok(
        m @ (Inbound::Command { .. } | Inbound::PropertySet { .. } | Inbound::PropertyGet { .. }),
    ) = parse(&t, topic, payload)
    {
        let r = request(m.clone());
        assert!(r.is_some(), "a parsed request converts: {m:?}");
        assert!(
            request_id(topic).is_some(),
            "requests only on request topics: {topic}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(suffix in prop::sample::select(SUFFIXES), payload in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&format!("$oc/devices/gw/sys/{suffix}"), &payload);
    }

    #[test]
    fn mutated_real_payloads_never_panic(
        seed in prop::sample::select(SEEDS),
        suffix in prop::sample::select(SUFFIXES),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut b = seed.as_bytes().to_vec();
        for (at, byte, op) in edits {
            if b.is_empty() { break; }
            let i = at.index(b.len());
            match op {
                0 => b[i] = byte,
                1 => { b.remove(i); }
                _ => b.insert(i, byte),
            }
        }
        check(&format!("$oc/devices/gw/sys/{suffix}"), &b);
    }

    #[test]
    fn arbitrary_topics_never_panic(topic in "\\PC{0,80}", payload in prop::sample::select(SEEDS)) {
        check(&topic, payload.as_bytes());
    }
}
