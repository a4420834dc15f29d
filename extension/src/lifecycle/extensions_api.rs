//! The Extensions API beyond registration: our own `/event/next` loop and the error
//! endpoints.
//!
//! Registration goes through the `lambda-extension` crate. Its run loop is not used: it
//! posts `/init/error` for a failed INVOKE and returns on the first transient error, and
//! either would take the function down with us. Here a failed `/event/next` is retried,
//! and an event we cannot parse is logged and skipped.

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use lambda_extension::NextEvent;
use lambda_runtime_api_client::{body::Body, build_request, PooledClient};
use std::time::Duration;

const EXTENSION_ID_HEADER: &str = "Lambda-Extension-Identifier";
const ERROR_TYPE_HEADER: &str = "Lambda-Extension-Function-Error-Type";

pub enum Event {
    Invoke {
        deadline_ms: u64,
        request_id: String,
    },
    Shutdown {
        deadline_ms: u64,
        reason: String,
    },
}

pub struct ExtensionsApi {
    client: PooledClient,
    extension_id: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ExtensionsApi {
    pub fn new(runtime_api: &str, extension_id: String) -> Result<Self, BoxError> {
        // Lambda gives `host:port`; other hosts of the API (cargo lambda watch) give a full
        // URL with a base path, which the client keeps.
        let base: http::Uri = if runtime_api.contains("://") {
            runtime_api.parse()?
        } else {
            format!("http://{runtime_api}").parse()?
        };
        Ok(ExtensionsApi {
            client: PooledClient::builder().with_endpoint(base).build(),
            extension_id,
        })
    }

    /// Waits for the next event. Transient failures are retried with a capped backoff;
    /// Lambda kills the environment anyway if we never come back, and exiting early would
    /// only fail the function sooner.
    pub async fn next_event(&self) -> Event {
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.try_next().await {
                Ok(Some(event)) => return event,
                Ok(None) => backoff = Duration::from_millis(10),
                Err(err) => {
                    tracing::warn!(
                        "calling /extension/event/next failed, retrying in {backoff:?}: {err}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn try_next(&self) -> Result<Option<Event>, BoxError> {
        let req = build_request()
            .method(Method::GET)
            .uri("/2020-01-01/extension/event/next")
            .header(EXTENSION_ID_HEADER, &self.extension_id)
            .body(Body::empty())?;
        let res = self.client.call(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)).into());
        }
        // Parsed with the crate's event types; anything else is logged and skipped.
        match serde_json::from_slice::<NextEvent>(&body) {
            Ok(NextEvent::Invoke(e)) => Ok(Some(Event::Invoke {
                deadline_ms: e.deadline_ms,
                request_id: e.request_id,
            })),
            Ok(NextEvent::Shutdown(e)) => Ok(Some(Event::Shutdown {
                deadline_ms: e.deadline_ms,
                reason: e.shutdown_reason,
            })),
            Err(err) => {
                tracing::warn!(
                    "skipping an event that could not be parsed ({err}): {}",
                    String::from_utf8_lossy(&body)
                );
                Ok(None)
            }
        }
    }

    /// Reports an INIT failure (`Extension.<Reason>`); Lambda then fails INIT.
    pub async fn init_error(&self, error_type: &str, message: &str) -> Result<(), BoxError> {
        self.post_error("init", error_type, message).await
    }

    async fn post_error(
        &self,
        phase: &str,
        error_type: &str,
        message: &str,
    ) -> Result<(), BoxError> {
        let body = serde_json::json!({
            "errorMessage": message,
            "errorType": error_type,
            "stackTrace": [],
        });
        let req = build_request()
            .method(Method::POST)
            .uri(format!("/2020-01-01/extension/{phase}/error"))
            .header(EXTENSION_ID_HEADER, &self.extension_id)
            .header(ERROR_TYPE_HEADER, error_type)
            .header("Content-Type", "application/json")
            .body(Body::from(body.to_string()))?;
        let res = self.client.call(req).await?;
        if !res.status().is_success() {
            return Err(format!("/{phase}/error answered {}", res.status()).into());
        }
        Ok(())
    }
}
