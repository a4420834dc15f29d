//! Policy end to end: built-in denials and their IPv6 / numeric spellings, the user's lists
//! in enforce and observe mode, and host-name normalisation against the known bypasses.

use super::upstream;
use super::{connect, count, raw, start};
use crate::metrics::Counter;
use std::sync::atomic::Ordering;

#[tokio::test]
async fn builtin_ranges_are_denied_without_an_allow_range() {
    let up = upstream::http("up").await;
    let proxy = start(&[("EGRESS_WARDEN_ALLOW", "<unset>")]).await;
    let port = up.addr.port();
    let cases = [
        (format!("127.0.0.1:{port}"), "loopback"),
        (format!("localhost:{port}"), "loopback"),
        (format!("LOCALHOST.:{port}"), "loopback"),
        (format!("0x7f.1:{port}"), "loopback"),
        (format!("2130706433:{port}"), "loopback"),
        (format!("[::1]:{port}"), "loopback"),
        (format!("[::ffff:127.0.0.1]:{port}"), "loopback"),
        ("169.254.169.254:80".to_owned(), "link_local"),
        ("[::ffff:169.254.169.254]:80".to_owned(), "link_local"),
        ("[64:ff9b::a9fe:a9fe]:80".to_owned(), "link_local"),
        ("[2002:a9fe:a9fe::1]:80".to_owned(), "link_local"),
        ("[fd00:ec2::254]:80".to_owned(), "metadata"),
    ];
    for (target, reason) in &cases {
        let (reply, _) = connect(proxy.addr, target).await;
        assert_eq!(reply.status, 403, "{target}");
        assert_eq!(reply.error(), Some(*reason), "{target}");
    }
    // Absolute-form is checked the same way.
    let req = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n");
    let reply = raw(proxy.addr, req.as_bytes()).await.expect("reply");
    assert_eq!(reply.status, 403);
    assert_eq!(
        up.connections.load(Ordering::Relaxed),
        0,
        "nothing may reach the upstream"
    );
    let snap = proxy.take();
    let n = cases.len() as u64 + 1;
    assert_eq!(count(&snap, Counter::Requests), n);
    assert_eq!(count(&snap, Counter::PolicyDenied), n);
    assert_eq!(count(&snap, Counter::Errors), 0);
}

#[tokio::test]
async fn deny_rules_match_whatever_the_spelling_in_enforce_mode() {
    let up = upstream::http("up").await;
    let proxy = start(&[
        ("EGRESS_WARDEN_POLICY", "enforce"),
        ("EGRESS_WARDEN_DENY", "localhost"),
    ])
    .await;
    let port = up.addr.port();
    for host in [
        "localhost",
        "LOCALHOST",
        "localhost.",
        "LocalHost.",
        "[localhost]",
    ] {
        let (reply, _) = connect(proxy.addr, &format!("{host}:{port}")).await;
        assert_eq!(reply.status, 403, "{host}");
        assert_eq!(reply.error(), Some("deny_rule"), "{host}");
    }
    // A raw Unicode look-alike never gets that far: HTTP/1.1 request lines are ASCII (hyper
    // answers 400); its IDNA mapping is covered in `host.rs`.
    let (reply, _) = connect(proxy.addr, &format!("ｌｏｃａｌｈｏｓｔ:{port}")).await;
    assert_eq!(reply.status, 400);
    let req = format!("GET http://LOCALHOST.:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        raw(proxy.addr, req.as_bytes()).await.expect("reply").status,
        403
    );
    // The same address by IP is not covered by a host rule.
    let (reply, _) = connect(proxy.addr, &format!("127.0.0.1:{port}")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(up.connections.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn observe_mode_counts_but_lets_through() {
    let up = upstream::http("up").await;
    let proxy = start(&[
        ("EGRESS_WARDEN_POLICY", "observe"),
        ("EGRESS_WARDEN_DENY", "127.0.0.1/32"),
    ])
    .await;
    let req = format!(
        "GET http://{}/watched HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        up.addr
    );
    let reply = raw(proxy.addr, req.as_bytes()).await.expect("reply");
    assert_eq!(reply.status, 200, "{reply:?}");
    let (reply, _) = connect(proxy.addr, &up.addr.to_string()).await;
    assert_eq!(reply.status, 200);
    let snap = proxy.take();
    assert_eq!(count(&snap, Counter::Requests), 2);
    assert_eq!(count(&snap, Counter::PolicyDenied), 2);
}

#[tokio::test]
async fn enforce_mode_denies_an_address_rule() {
    let up = upstream::http("up").await;
    let proxy = start(&[
        ("EGRESS_WARDEN_POLICY", "enforce"),
        ("EGRESS_WARDEN_DENY", "127.0.0.1/32"),
    ])
    .await;
    let (reply, _) = connect(proxy.addr, &up.addr.to_string()).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.error(), Some("deny_rule"));
    assert_eq!(up.connections.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn the_proxys_own_ports_stay_denied_even_when_everything_is_allowed() {
    let proxy = start(&[("EGRESS_WARDEN_ALLOW", "0.0.0.0/0,::/0")]).await;
    let own = proxy.port();
    for target in [
        format!("127.0.0.1:{own}"),
        format!("localhost:{own}"),
        format!("[::1]:{own}"),
        format!("0.0.0.0:{own}"),
        "127.0.0.1:1053".to_owned(),
    ] {
        let (reply, _) = connect(proxy.addr, &target).await;
        assert_eq!(reply.status, 403, "{target}");
        assert_eq!(reply.error(), Some("loop"), "{target}");
    }
}

#[tokio::test]
async fn malformed_targets_are_400() {
    let proxy = start(&[]).await;
    for target in [
        "no-port-here",
        "exa%6dple.com:443",
        "a..b:443",
        "1.2.3.4.5:80",
    ] {
        let (reply, _) = connect(proxy.addr, target).await;
        assert_eq!(reply.status, 400, "{target}");
    }
}

/// A refused CONNECT is an answer, not a dropped connection: status line, header and body
/// say who refused, by which rule, and what would allow it.
#[tokio::test]
async fn a_denial_tells_the_client_the_rule_and_the_variable() {
    let proxy = start(&[("EGRESS_WARDEN_ALLOW", "<unset>")]).await;
    let (reply, _) = connect(proxy.addr, "169.254.169.254:80").await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.error(), Some("link_local"));
    assert_eq!(reply.reason, "Forbidden (egress-warden: link_local)");
    assert!(
        reply.body.starts_with(
            "egress-warden: denied by policy: 169.254.169.254 is link-local (instance metadata and Lambda's own endpoints), a built-in protection; to allow it set EGRESS_WARDEN_ALLOW=169.254.169.254/32"
        ),
        "{}",
        reply.body
    );
    let req = "GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\n\r\n";
    let reply = raw(proxy.addr, req.as_bytes()).await.expect("reply");
    assert_eq!((reply.status, reply.error()), (403, Some("loopback")));
    assert!(
        reply.body.contains("127.0.0.1 is a loopback address")
            && reply.body.contains("EGRESS_WARDEN_ALLOW=127.0.0.1/32"),
        "{}",
        reply.body
    );
}
