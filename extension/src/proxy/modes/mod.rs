//! How a request is served, by its form: `CONNECT` → [`tunnel`], absolute-form →
//! [`forward`], origin-form → the status page ([`status`]) or route mode ([`route`]).

pub(crate) mod forward;
pub(crate) mod relay;
pub(crate) mod route;
pub(crate) mod status;
pub(crate) mod tunnel;

use crate::proxy::body::ProxyBody;
use crate::proxy::client::slots::ConnSlot;
use crate::proxy::request::headers::has_looped;
use crate::proxy::request::outcome::Refusal;
use crate::proxy::request::record::{Kind, RequestRecord};
use crate::proxy::shared::Proxy;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;

pub(crate) const STATUS_PATH: &str = "/_warden/status";

pub(crate) async fn dispatch(
    proxy: Arc<Proxy>,
    slot: Arc<ConnSlot>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    slot.phase.busy();
    let is_connect = req.method() == Method::CONNECT;
    let mut res = if is_connect {
        tunnel::handle(&proxy, req, slot.clone()).await
    } else if req.uri().scheme().is_some() && !proxy.is_self(req.uri()) {
        if has_looped(req.headers()) {
            let mut record = RequestRecord::new(Kind::Forward, req.method());
            let refusal = Refusal::new(
                StatusCode::FORBIDDEN,
                "loop",
                "this request already went through egress-warden (its Via header says so)",
            )
            .with_hint(
                "an upstream sent it back to the proxy: check that upstream's proxy settings",
            )
            .denial();
            proxy.refuse(&mut record, refusal)
        } else {
            forward::handle(&proxy, req).await
        }
    } else {
        origin(&proxy, req).await
    };
    if is_connect && res.status() == StatusCode::OK {
        slot.phase.tunnel();
    } else {
        // Draining at shutdown: this is the connection's last answer, and the client is told.
        if proxy.shutdown.has_begun() {
            res.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        let phase = slot.phase.clone();
        res.body_mut().on_done(Box::new(move |_| phase.idle()));
    }
    Ok(res)
}

/// Requests addressed to the proxy itself: the status page, or a route.
async fn origin(proxy: &Arc<Proxy>, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_owned();
    if path == STATUS_PATH && matches!(*req.method(), Method::GET | Method::HEAD) {
        return status::response(proxy).await;
    }
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let (name, rest) = split_route(path_and_query);
    if name.is_empty() {
        let mut record = RequestRecord::new(Kind::Rejected, req.method());
        let refusal = Refusal::new(
            StatusCode::NOT_FOUND,
            "unknown_route",
            "no route named in the path",
        )
        .with_hint("send proxy requests, /<route>/<path> (routes from EGRESS_WARDEN_ROUTES) or GET /_warden/status");
        return proxy.refuse(&mut record, refusal);
    }
    let (name, rest) = (name.to_owned(), rest.to_owned());
    route::handle(proxy, req, &name, &rest).await
}

/// `/<route>/<rest>` → (`route`, `/<rest>`); the query stays with the rest. An empty name
/// means no route was named.
pub(crate) fn split_route(path_and_query: &str) -> (&str, &str) {
    let after_slash = path_and_query.strip_prefix('/').unwrap_or(path_and_query);
    let split = after_slash.find(['/', '?']).unwrap_or(after_slash.len());
    after_slash.split_at(split)
}
