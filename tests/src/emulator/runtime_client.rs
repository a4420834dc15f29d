//! An in-process client of the Runtime API (and a raw client for any emulator endpoint), over
//! real HTTP with keep-alive, as a custom runtime would use it.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::api::{H_ARN, H_DEADLINE, H_REQUEST_ID, H_RT_ERROR_TYPE, H_TRACE};

/// One event handed out by `/runtime/invocation/next`.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub request_id: String,
    pub deadline_ms: u64,
    pub invoked_function_arn: String,
    pub trace_id: String,
    pub payload: Bytes,
}

/// A status, headers and body.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
pub struct RuntimeClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl RuntimeClient {
    pub fn new(addr: SocketAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        RuntimeClient {
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Any request to the emulator: `path` like `/2020-01-01/extension/register`.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<RawResponse, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// `GET /runtime/invocation/next`: blocks until there is an invoke.
    pub async fn next(&self) -> Result<Invocation, String> {
        let r = self
            .request(
                Method::GET,
                "/2018-06-01/runtime/invocation/next",
                &[],
                Bytes::new(),
            )
            .await?;
        if r.status != StatusCode::OK {
            return Err(format!(
                "next: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        let h = |n: &str| r.header(n).unwrap_or_default().to_string();
        Ok(Invocation {
            request_id: h(H_REQUEST_ID),
            deadline_ms: h(H_DEADLINE).parse().unwrap_or(0),
            invoked_function_arn: h(H_ARN),
            trace_id: h(H_TRACE),
            payload: r.body,
        })
    }

    /// `POST /runtime/invocation/{id}/response`.
    pub async fn respond(
        &self,
        request_id: &str,
        body: impl Into<Bytes>,
    ) -> Result<StatusCode, String> {
        let path = format!("/2018-06-01/runtime/invocation/{request_id}/response");
        Ok(self.request(Method::POST, &path, &[], body).await?.status)
    }

    /// `POST /runtime/invocation/{id}/error`.
    pub async fn error(
        &self,
        request_id: &str,
        error_type: &str,
        message: &str,
    ) -> Result<StatusCode, String> {
        let path = format!("/2018-06-01/runtime/invocation/{request_id}/error");
        let body = serde_json::json!({"errorMessage": message, "errorType": error_type});
        Ok(self
            .request(
                Method::POST,
                &path,
                &[(H_RT_ERROR_TYPE, error_type)],
                body.to_string(),
            )
            .await?
            .status)
    }

    /// `POST /runtime/init/error`.
    pub async fn init_error(&self, error_type: &str, message: &str) -> Result<StatusCode, String> {
        let body = serde_json::json!({"errorMessage": message, "errorType": error_type});
        Ok(self
            .request(
                Method::POST,
                "/2018-06-01/runtime/init/error",
                &[(H_RT_ERROR_TYPE, error_type)],
                body.to_string(),
            )
            .await?
            .status)
    }
}
