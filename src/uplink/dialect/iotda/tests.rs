use super::*;

const T0: u64 = 1_559_823_132_000; // 2019-06-06T12:12:12Z

fn topics() -> Topics {
    Topics::new("gw_1")
}

#[test]
fn password_matches_the_documented_vector() {
    assert_eq!(
        password("12345678", "2025041401"),
        "c75150e6cb841417396819e4d2ee4358a416344a03a083e3a8567074ddec820a"
    );
}

#[test]
fn client_id_and_stamps() {
    assert_eq!(hour_stamp(T0), "2019060612");
    assert_eq!(
        client_id("gw_1", false, "2019060612"),
        "gw_1_0_0_2019060612"
    );
    assert_eq!(client_id("gw_1", true, "2019060612"), "gw_1_0_1_2019060612");
    assert_eq!(event_time(T0), "20190606T121212Z");
    assert_eq!(event_time_ms(T0 + 7), "2019-06-06T12:12:12.007Z");
}

#[test]
fn report_batch_matches_the_documented_shape() {
    let r = Report {
        child: "node1".into(),
        service: "analog".into(),
        properties: fieldgate_driver::Properties::from([(
            "PhV_phsA".into(),
            Value::Text("1".into()),
        )]),
        ts_ms: T0,
    };
    let mut b = ReportBatch::default();
    assert!(b.push("prod_node1", &r, 100_000));
    assert_eq!(
        String::from_utf8(b.encode()).unwrap_or_default(),
        r#"{"devices":[{"device_id":"prod_node1","services":[{"event_time":"2019-06-06T12:12:12.000Z","properties":{"PhV_phsA":"1"},"service_id":"analog"}]}]}"#
    );
}

#[test]
fn report_batch_limits() {
    let r = |c: &str| Report {
        child: c.into(),
        service: "s".into(),
        properties: fieldgate_driver::Properties::from([("v".into(), Value::Int(1))]),
        ts_ms: T0,
    };
    let mut b = ReportBatch::default();
    for i in 0..MAX_REPORT_DEVICES {
        assert!(b.push(&format!("d{i}"), &r("x"), usize::MAX));
    }
    assert!(
        !b.push("d-extra", &r("x"), usize::MAX),
        "101st device must go to the next message"
    );
    assert!(
        b.push("d0", &r("x"), usize::MAX),
        "another sample of a device already in the batch fits"
    );
    let mut b = ReportBatch::default();
    for _ in 0..MAX_SERVICES_PER_DEVICE {
        assert!(b.push("d", &r("x"), usize::MAX));
    }
    assert!(!b.push("d", &r("x"), usize::MAX));
    // byte limit: the first entry always fits, the second not when the limit is tiny
    let mut b = ReportBatch::default();
    assert!(b.push("a", &r("x"), 10));
    assert!(!b.push("b", &r("x"), 10));
}

#[test]
fn status_and_add_events() {
    assert_eq!(
        String::from_utf8(encode_statuses(
            &[("prod_a".into(), true), ("prod_b".into(), false)],
            T0
        ))
        .unwrap_or_default(),
        r#"{"services":[{"event_time":"20190606T121212Z","event_type":"sub_device_update_status","paras":{"device_statuses":[{"device_id":"prod_a","status":"ONLINE"},{"device_id":"prod_b","status":"OFFLINE"}]},"service_id":"$sub_device_manager"}]}"#
    );
    let add = encode_add(
        &[NewChild {
            node_id: "a",
            product_id: "p",
            name: "A",
        }],
        "e1",
        T0,
    );
    assert_eq!(
        String::from_utf8(add).unwrap_or_default(),
        r#"{"services":[{"event_id":"e1","event_time":"20190606T121212Z","event_type":"add_sub_device_request","paras":{"devices":[{"name":"A","node_id":"a","product_id":"p"}]},"service_id":"$sub_device_manager"}]}"#
    );
    assert!(String::from_utf8(encode_sync(7, T0))
        .unwrap_or_default()
        .contains(r#""paras":{"version":7}"#));
}

#[test]
fn parses_add_response_with_failures() {
    let p = br#"{"object_device_id":"gw_1","services":[{"service_id":"$sub_device_manager","event_type":"add_sub_device_response","event_time":"20190606T121212Z","event_id":"e1","paras":{"successful_devices":[{"node_id":"a","device_id":"p_a","product_id":"p","status":"INACTIVE"}],"failed_devices":[{"node_id":"b","product_id":"p","error_code":"IOTDA.014016","error_msg":"product not found"}]}}]}"#;
    let got = parse(&topics(), "$oc/devices/gw_1/sys/events/down", p);
    assert_eq!(
        got,
        Ok(Inbound::Added {
            devices: vec![("a".into(), "p_a".into())],
            failed: vec![Failed {
                id: "b".into(),
                error_code: "IOTDA.014016".into(),
                error_msg: "product not found".into()
            }],
            version: None
        })
    );
}

#[test]
fn parses_notifies_and_commands() {
    let t = topics();
    let p = br#"{"services":[{"service_id":"$sub_device_manager","event_type":"add_sub_device_notify","paras":{"devices":[{"node_id":"a","device_id":"p_a"}],"version":3}}]}"#;
    assert!(matches!(
        parse(&t, "$oc/devices/gw_1/sys/events/down", p),
        Ok(Inbound::Added {
            version: Some(3),
            ..
        })
    ));
    let p = br#"{"services":[{"service_id":"$sub_device_manager","event_type":"delete_sub_device_notify","paras":{"devices":[{"node_id":"a","device_id":"p_a"}],"version":4}}]}"#;
    assert_eq!(
        parse(&t, "$oc/devices/gw_1/sys/events/down", p),
        Ok(Inbound::Deleted {
            device_ids: vec!["p_a".into()],
            version: Some(4)
        })
    );
    let p = br#"{"object_device_id":"p_a","service_id":"WaterMeter","command_name":"ON_OFF","paras":{"value":"1"}}"#;
    match parse(&t, "$oc/devices/gw_1/sys/commands/request_id=42", p) {
        Ok(Inbound::Command {
            request_id,
            object_device_id,
            command_name,
            ..
        }) => {
            assert_eq!(
                (
                    request_id.as_str(),
                    object_device_id.as_deref(),
                    command_name.as_str()
                ),
                ("42", Some("p_a"), "ON_OFF")
            );
        }
        other => panic!("{other:?}"),
    }
    let p = br#"{"object_device_id":"p_a","services":[{"service_id":"s","properties":{"k":1}}]}"#;
    assert!(matches!(
        parse(&t, "$oc/devices/gw_1/sys/properties/set/request_id=7", p),
        Ok(Inbound::PropertySet { .. })
    ));
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let t = topics();
    let down = "$oc/devices/gw_1/sys/events/down";
    let cases: &[(&str, &[u8])] = &[
        (down, b"not json"),
        (down, b"[]"),
        (down, b"{}"),
        (down, br#"{"services":[]}"#),
        (down, br#"{"services":[{"event_type":"add_sub_device_response","paras":{"successful_devices":"x"}}]}"#),
        (down, br#"{"services":[{"event_type":"add_sub_device_response","paras":{"successful_devices":[{"node_id":1}]}}]}"#),
        ("$oc/devices/gw_1/sys/commands/request_id=1", br#"{"paras":{}}"#),
        ("$oc/devices/other/sys/events/down", b"{}"),
        ("$oc/devices/gw_1/sys/properties/set/request_id=1", br#"{"services":[{"service_id":"s"}]}"#),
    ];
    for (topic, payload) in cases {
        assert!(
            parse(&t, topic, payload).is_err(),
            "{topic} {:?}",
            String::from_utf8_lossy(payload)
        );
    }
    let huge = vec![b' '; MAX_INBOUND + 1];
    assert_eq!(
        parse(&t, down, &huge),
        Err(InboundError::TooLarge(MAX_INBOUND + 1))
    );
    assert_eq!(
        request_id("$oc/devices/gw_1/sys/commands/request_id=abc"),
        Some("abc")
    );
    assert_eq!(
        request_id("$oc/devices/gw_1/sys/commands/request_id="),
        None
    );
}

#[test]
fn responses() {
    let done = CommandOutcome::Done(BTreeMap::from([(
        "s".into(),
        BTreeMap::from([("k".into(), Value::Int(5))]),
    )]));
    assert_eq!(
        String::from_utf8(command_response(&done)).unwrap_or_default(),
        r#"{"paras":{"k":5},"response_name":"COMMAND_RESPONSE","result_code":0}"#
    );
    let failed = CommandOutcome::Failed {
        code: ErrorCode::NotWritable,
        message: "read-only".into(),
    };
    assert_eq!(
        String::from_utf8(set_response(&failed)).unwrap_or_default(),
        r#"{"result_code":3,"result_desc":"not_writable: read-only"}"#
    );
}

#[test]
fn our_own_echoed_responses_are_ignored_and_never_answered() {
    let t = topics();
    for topic in [
        "$oc/devices/gw_1/sys/commands/response/request_id=bad1",
        "$oc/devices/gw_1/sys/properties/set/response/request_id=9",
        "$oc/devices/gw_1/sys/properties/get/response/request_id=9",
    ] {
        assert!(
            matches!(parse(&t, topic, b"{not json"), Ok(Inbound::Ignored(_))),
            "{topic}"
        );
        assert_eq!(request_id(topic), None, "{topic}");
    }
}

#[test]
fn delete_request_and_response() {
    let d = encode_delete(&["p_a".into(), "p_b".into()], "e9", T0);
    assert_eq!(
        String::from_utf8(d).unwrap_or_default(),
        r#"{"services":[{"event_id":"e9","event_time":"20190606T121212Z","event_type":"delete_sub_device_request","paras":{"devices":["p_a","p_b"]},"service_id":"$sub_device_manager"}]}"#
    );
    let p = br#"{"services":[{"service_id":"$sub_device_manager","event_type":"delete_sub_device_response","paras":{"successful_devices":["p_a"],"failed_devices":[{"device_id":"p_b","error_code":"IOTDA.014000","error_msg":"busy"}]}}]}"#;
    assert_eq!(
        parse(&topics(), "$oc/devices/gw_1/sys/events/down", p),
        Ok(Inbound::DeleteResult {
            deleted: vec!["p_a".into()],
            failed: vec![Failed {
                id: "p_b".into(),
                error_code: "IOTDA.014000".into(),
                error_msg: "busy".into()
            }]
        })
    );
}

#[test]
fn own_properties() {
    let props = BTreeMap::from([
        ("version".into(), Value::Text("0.1.0".into())),
        ("children_online".into(), Value::UInt(2)),
    ]);
    assert_eq!(
        String::from_utf8(encode_own_properties(&props, T0)).unwrap_or_default(),
        r#"{"services":[{"event_time":"20190606T121212Z","properties":{"children_online":2,"version":"0.1.0"},"service_id":"gateway"}]}"#
    );
}

#[test]
fn report_batch_is_valid_json_with_awkward_ids_and_values() {
    let r = Report {
        child: "c".into(),
        service: "s\"vc".into(),
        properties: fieldgate_driver::Properties::from([(
            "k\n".into(),
            Value::Text("a\\b\"".into()),
        )]),
        ts_ms: T0,
    };
    let mut b = ReportBatch::default();
    assert!(b.push("dev\"1", &r, usize::MAX));
    assert!(b.push("dev\"1", &r, usize::MAX));
    assert!(b.push("dev2", &r, usize::MAX));
    let j: Json = serde_json::from_slice(&b.encode()).unwrap_or(Json::Null);
    assert_eq!(j["devices"][0]["device_id"], "dev\"1");
    assert_eq!(
        j["devices"][0]["services"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        j["devices"][1]["services"][0]["properties"]["k\n"],
        "a\\b\""
    );
    assert_eq!(j["devices"][1]["services"][0]["service_id"], "s\"vc");
}
