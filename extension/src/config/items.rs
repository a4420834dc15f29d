//! Parsers for one value or one list item: hosts, policy rules, DNS upstreams, route
//! upstreams, routes and warm-up targets. Each returns why an item is bad; the reader turns
//! that into a problem.

use super::{
    Drill, DrillWindow, LogLevel, PolicyRule, RateLimit, Route, RouteOptions, RouteRegions,
    Upstream, WarmTarget,
};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Normalises a host name the way both policy rules and requests are compared: brackets
/// and one trailing dot removed, IP literals in canonical form, names lower-cased and
/// IDNA-encoded. Equal hosts always normalise to equal strings, so `EXAMPLE.com.` cannot
/// slip past a rule for `example.com`.
pub fn normalize_host(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(trimmed);
    if let Ok(ip) = IpAddr::from_str(unbracketed) {
        return Ok(ip.to_string());
    }
    let name = unbracketed.strip_suffix('.').unwrap_or(unbracketed);
    if name.is_empty() {
        return Err("an empty host name".into());
    }
    let ascii =
        idna::domain_to_ascii(name).map_err(|_| format!("{raw:?} is not a valid host name"))?;
    // RFC 1035 §2.3.4: labels of 1 to 63 octets, 253 in all (without the root's dot).
    let labels_ok = ascii
        .split('.')
        .all(|label| (1..=63).contains(&label.len()));
    if !labels_ok || ascii.len() > 253 {
        return Err(format!("{raw:?} is not a valid host name"));
    }
    Ok(ascii)
}

/// `trace`…`error`, any case; `warning` and `fatal` as other loggers spell them.
pub(super) fn parse_level(value: &str) -> Option<LogLevel> {
    match value.trim().to_ascii_lowercase().as_str() {
        "trace" => Some(LogLevel::Trace),
        "debug" => Some(LogLevel::Debug),
        "info" => Some(LogLevel::Info),
        "warn" | "warning" => Some(LogLevel::Warn),
        "error" | "fatal" => Some(LogLevel::Error),
        _ => None,
    }
}

/// `ip` or `ip:port` (`[v6]:port`); the port defaults to 53.
pub(super) fn parse_dns_upstream(item: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = SocketAddr::from_str(item) {
        return Ok(addr);
    }
    let ip = item
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(item);
    IpAddr::from_str(ip)
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| "not an IP address".into())
}

/// Splits `host[:port]`, accepting `[v6]:port` and bare IPv6 literals.
fn split_host_port(item: &str) -> Result<(&str, Option<u16>), String> {
    let bad_port = || format!("bad port in {item:?}");
    if let Some(rest) = item.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {item:?}"))?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port.parse().map_err(|_| bad_port())?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("unexpected {after:?} after ']'")),
        };
    }
    if item.matches(':').count() > 1 {
        return Ok((item, None));
    }
    match item.split_once(':') {
        Some((host, port)) => Ok((host, Some(port.parse().map_err(|_| bad_port())?))),
        None => Ok((item, None)),
    }
}

/// A CIDR range, kept as written (ALLOW/DENY ranges are truncated to their network instead).
pub(super) fn parse_cidr(item: &str) -> Result<IpNet, String> {
    IpNet::from_str(item).map_err(|_| "not a CIDR range".into())
}

/// An ALLOW/DENY entry: a CIDR range, or a host glob (`*.` only as the leading label) with
/// an optional port.
pub(super) fn parse_rule(item: &str) -> Result<PolicyRule, String> {
    if item.contains('/') {
        return IpNet::from_str(item)
            .map(|net| PolicyRule::Cidr(net.trunc()))
            .map_err(|_| "not a CIDR range".into());
    }
    let (host, port) = split_host_port(item)?;
    let pattern = match host.strip_prefix("*.") {
        Some(rest) => format!("*.{}", normalize_host(rest)?),
        None if host == "*" => "*".to_owned(),
        None => {
            if host.contains('*') {
                return Err("'*' is only allowed as a leading '*.' label".into());
            }
            normalize_host(host)?
        }
    };
    Ok(PolicyRule::Host { pattern, port })
}

/// An `EGRESS_WARDEN_RATE_LIMITS` entry: `hostglob=RATE/s[:BURST]` (burst 1 unless given:
/// requests evenly spaced, so no window of a vendor's per-second limit sees more).
pub(super) fn parse_rate_limit(item: &str) -> Result<RateLimit, String> {
    let (host, limit) = item
        .split_once('=')
        .ok_or("hostglob=RATE/s[:BURST], like api.vendor.com=50/s")?;
    let pattern = match parse_rule(host.trim())? {
        PolicyRule::Host {
            pattern,
            port: None,
        } => pattern,
        _ => return Err("the limit is for a host glob, without a port or range".into()),
    };
    let (rate, burst) = match limit.split_once(':') {
        Some((rate, burst)) => (rate, Some(burst)),
        None => (limit, None),
    };
    let per_second: f64 = rate
        .trim()
        .strip_suffix("/s")
        .and_then(|n| n.trim().parse().ok())
        .filter(|n: &f64| n.is_finite() && *n >= 0.001 && *n <= 1_000_000.0)
        .ok_or("the rate is a number of requests per second from 0.001 to 1000000, like 50/s")?;
    let burst = match burst {
        Some(b) => b
            .trim()
            .parse()
            .ok()
            .filter(|b| (1..=100_000).contains(b))
            .ok_or("the burst is a whole number from 1 to 100000")?,
        None => 1,
    };
    Ok(RateLimit {
        pattern,
        per_second,
        burst,
    })
}

/// An `https://` upstream with neither user info nor a query.
fn parse_upstream(raw: &str) -> Result<Upstream, String> {
    let uri: http::Uri = raw.parse().map_err(|_| format!("{raw:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{raw:?} must start with https://"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{raw:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{raw:?} must not carry credentials"));
    }
    let host = normalize_host(authority.host())?;
    let port = authority.port_u16().unwrap_or(443);
    if uri.query().is_some() {
        return Err(format!("{raw:?} must not have a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Upstream {
        host,
        port,
        base_path,
        uri: raw.to_owned(),
    })
}

/// Letters, digits, '-' and '_': what a route's name (the first path segment) may hold.
fn is_route_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `name=https://primary[|https://fallback][;option…]`.
pub(super) fn parse_route(item: &str) -> Result<Route, String> {
    let (item, options) = item.split_once(';').unwrap_or((item, ""));
    let (name, targets) = item.split_once('=').ok_or("missing '='")?;
    let name = name.trim();
    if !is_route_name(name) {
        return Err(format!(
            "route name {name:?} must be letters, digits, '-' or '_'"
        ));
    }
    if name.starts_with('_') {
        return Err("route names starting with '_' are reserved".into());
    }
    let mut parts = targets.split('|').map(str::trim);
    let primary = parse_upstream(parts.next().unwrap_or_default())?;
    let fallback = parts.next().map(parse_upstream).transpose()?;
    if parts.next().is_some() {
        return Err("at most one fallback".into());
    }
    let options = parse_route_options(options, fallback.is_some())?;
    Ok(Route {
        name: name.to_owned(),
        primary,
        fallback,
        options,
    })
}

/// `idempotency=auto`, `fallback=reads`, `regions=PRIMARY[/FALLBACK]`, separated by `;`.
fn parse_route_options(options: &str, has_fallback: bool) -> Result<RouteOptions, String> {
    let mut parsed = RouteOptions::default();
    for option in options.split(';').map(str::trim).filter(|o| !o.is_empty()) {
        match option.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("idempotency", "auto")) => parsed.idempotency_auto = true,
            Some(("fallback", "reads")) if has_fallback => parsed.fallback_reads_only = true,
            Some(("fallback", "reads")) => {
                return Err("fallback=reads needs a fallback (https://primary|https://fallback)".into())
            }
            Some(("regions", regions)) => parsed.regions = Some(parse_regions(regions, has_fallback)?),
            _ => {
                return Err(format!(
                    "unknown route option {option:?} (known: idempotency=auto, fallback=reads, regions=PRIMARY/FALLBACK)"
                ))
            }
        }
    }
    Ok(parsed)
}

fn parse_regions(value: &str, has_fallback: bool) -> Result<RouteRegions, String> {
    let region = |r: &str| {
        let ok = !r.is_empty()
            && r.len() <= 32
            && r.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        ok.then(|| r.to_owned())
            .ok_or_else(|| format!("{r:?} is not a region name (like us-east-1)"))
    };
    let (primary, fallback) = match value.split_once('/') {
        Some((p, f)) => (region(p.trim())?, Some(region(f.trim())?)),
        None => (region(value)?, None),
    };
    if fallback.is_some() && !has_fallback {
        return Err(
            "regions=PRIMARY/FALLBACK names a fallback region but the route has no fallback".into(),
        );
    }
    Ok(RouteRegions { primary, fallback })
}

/// `route[@START/DURATION]`: START in RFC 3339 (`2026-12-07T10:00:00Z`), DURATION like `10m`
/// or `1h30m`; the route must have a fallback to evacuate to.
pub(super) fn parse_drill(item: &str, routes: &[Route]) -> Result<Drill, String> {
    let (name, window) = match item.split_once('@') {
        Some((name, window)) => (name.trim(), Some(window.trim())),
        None => (item.trim(), None),
    };
    // Not echoed unless it reads as a route name: a pasted URL may hold credentials.
    if !is_route_name(name) {
        return Err(
            "the drill must name a route of EGRESS_WARDEN_ROUTES (letters, digits, '-', '_')"
                .into(),
        );
    }
    let route = routes
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| format!("no route {name:?} in EGRESS_WARDEN_ROUTES"))?;
    if route.fallback.is_none() {
        return Err(format!(
            "route {name:?} has no fallback to evacuate to (name=https://primary|https://fallback)"
        ));
    }
    let window = window.map(parse_drill_window).transpose()?;
    Ok(Drill {
        route: name.to_owned(),
        window,
    })
}

fn parse_drill_window(window: &str) -> Result<DrillWindow, String> {
    let (start, length) = window
        .split_once('/')
        .ok_or("expected START/DURATION, like 2026-12-07T10:00:00Z/10m")?;
    let start = chrono::DateTime::parse_from_rfc3339(start.trim())
        .map_err(|e| format!("{start:?} is not an RFC 3339 time ({e})"))?;
    let length = humantime::parse_duration(length.trim())
        .map_err(|e| format!("{length:?} is not a duration like 10m or 1h30m ({e})"))?;
    if length.is_zero() {
        return Err("the drill's duration must be more than zero".into());
    }
    Ok(DrillWindow {
        start: start.into(),
        length,
    })
}

/// `route[*n]` (a configured route's name) or `host:port[*n]`, n from 1 to 64.
pub(super) fn parse_warm(item: &str, routes: &[Route]) -> Result<WarmTarget, String> {
    let (target, count) = match item.rsplit_once('*') {
        Some((target, count)) => {
            let count: u32 = count
                .trim()
                .parse()
                .map_err(|_| "bad count after '*'".to_string())?;
            if !(1..=64).contains(&count) {
                return Err("the count must be 1 to 64".into());
            }
            (target.trim(), count)
        }
        None => (item, 1),
    };
    if routes.iter().any(|r| r.name == target) {
        return Ok(WarmTarget::Route {
            name: target.to_owned(),
            count,
        });
    }
    match split_host_port(target)? {
        (host, Some(port)) => Ok(WarmTarget::HostPort {
            host: normalize_host(host)?,
            port,
            count,
        }),
        (_, None) => Err(format!("{target:?} is neither host:port nor a route name")),
    }
}
