//! Entry points for the fuzz targets (`extension/fuzz/`, built with the `fuzzing` feature):
//! what the proxy makes of a client's request head, and of a host name. The head is read by
//! httparse, the parser hyper runs on the listener; everything after it is the proxy's own
//! code, and each step asserts what a policy check downstream relies on.
#![allow(
    clippy::expect_used,
    reason = "a fuzz target's assertion: the panic is the finding"
)]

use super::body::UpstreamBody;
use super::modes::forward::{forward_target, rewrite_head};
use super::modes::route::build_request;
use super::modes::split_route;
use super::policy::host::Target;
use super::policy::{Policy, Verdict};
use super::request::headers::has_looped;
use crate::config::{PolicyMode, PolicyRule, PolicySettings, Upstream};
use http::header::{CONNECTION, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{Method, Request};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const METADATA: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));
const PROXY_PORT: u16 = 9080;

/// A request head as a client sends it; each form is taken down the path the listener
/// would send it (CONNECT → tunnel, absolute form → forward, origin form → route).
pub fn request_head(data: &[u8]) {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(_)) = head.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (head.method, head.path) else {
        return;
    };
    let mut builder = Request::builder().method(method).uri(path);
    for field in head.headers.iter() {
        builder = builder.header(field.name, field.value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    if parts.method == Method::CONNECT {
        if let Some(Ok(target)) = parts
            .uri
            .authority()
            .map(|a| Target::from_authority(a, None))
        {
            check_target(&target);
        }
    } else if parts.uri.scheme().is_some() {
        let _ = has_looped(&parts.headers);
        if let Ok((target, scheme)) = forward_target(&parts) {
            check_target(&target);
            if rewrite_head(&mut parts, &target, scheme).is_err() {
                return;
            }
            // The rewritten URL names the same destination, and no hop-by-hop field is left.
            let authority = parts.uri.authority().expect("a rewritten URL has a host");
            let again = Target::from_authority(authority, Some(target.port));
            assert_eq!(again.as_ref(), Ok(&target));
            for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
                assert!(!parts.headers.contains_key(name));
            }
            assert!(parts.headers.contains_key(HOST));
        }
    } else {
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let (name, rest) = split_route(path_and_query);
        if !name.is_empty() {
            let upstream = Upstream {
                host: "api.example.com".into(),
                port: 8443,
                base_path: "/v1".into(),
                uri: "https://api.example.com:8443/v1".into(),
            };
            if let Ok(upstream_req) = build_request(&parts, &upstream, rest, UpstreamBody::empty())
            {
                // Whatever the path holds, the request goes to the route's upstream.
                assert_eq!(upstream_req.uri().host(), Some("api.example.com"));
                assert_eq!(upstream_req.uri().port_u16(), Some(8443));
            }
        }
    }
}

/// A host name as it comes in a request line or Host header.
pub fn host(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::config::normalize_host(raw);
    if let Ok(target) = Target::new(raw, 443) {
        check_target(&target);
    }
}

/// Normalisation is idempotent (so every later look at the name sees the same one), and
/// the policy's fixed points hold for any spelling.
fn check_target(target: &Target) {
    let again = Target::new(&target.uri_host(), target.port);
    assert_eq!(
        again.as_ref(),
        Ok(target),
        "normalising twice changed the target"
    );
    let policy = Policy::new(
        PolicySettings {
            allow: Vec::new(),
            deny: vec![PolicyRule::Host {
                pattern: "*.evil.example".into(),
                port: None,
            }],
            mode: PolicyMode::Enforce,
        },
        vec![PROXY_PORT],
    );
    if target.host.ends_with(".evil.example") {
        assert!(matches!(policy.check_host(target), Verdict::Deny(_)));
    }
    if let Some(ip) = target.ip {
        let verdict = policy.check_addr(target, SocketAddr::new(ip, target.port));
        if ip == METADATA || ip.is_loopback() {
            assert!(
                matches!(verdict, Verdict::Deny(_)),
                "{target} got {verdict:?}"
            );
        }
    }
}
