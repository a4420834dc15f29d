//! The Extensions API: registration, our own `/event/next` loop, the Telemetry API
//! subscription and the error endpoints.
//!
//! The `lambda-extension` crate's event types are used, not its client: its registration
//! hides why Lambda refused it (Managed Instances refuse `INVOKE`, and we register again
//! without it), and its run loop posts `/init/error` for a failed INVOKE and returns on the
//! first transient error, either of which would take the function down with us. Here a
//! failed `/event/next` is retried, and an event we cannot parse is logged and skipped.

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use lambda_extension::NextEvent;
use lambda_runtime_api_client::{body::Body, build_request, PooledClient};
use std::time::Duration;

const EXTENSION_NAME_HEADER: &str = "Lambda-Extension-Name";
const EXTENSION_ID_HEADER: &str = "Lambda-Extension-Identifier";
const ERROR_TYPE_HEADER: &str = "Lambda-Extension-Function-Error-Type";

pub(super) enum Event {
    Invoke {
        deadline_ms: u64,
        request_id: String,
    },
    Shutdown {
        deadline_ms: u64,
        reason: String,
    },
}

pub(super) struct ExtensionsApi {
    client: PooledClient,
    extension_id: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What Lambda said when we registered.
#[derive(Debug, Clone, Default)]
pub(super) struct Registered {
    pub function_name: String,
    pub function_version: String,
}

/// Why a registration did not succeed.
#[derive(Debug)]
pub(super) enum RegisterError {
    /// Lambda answered, and said no (`Extension.InvalidEventType` and the like).
    Refused { status: StatusCode, body: String },
    /// No usable answer: the address, the connection or the answer itself.
    Failed(BoxError),
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterError::Refused { status, body } => write!(f, "refused ({status}): {body}"),
            RegisterError::Failed(err) => write!(f, "{err}"),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterResponse {
    #[serde(default)]
    function_name: String,
    #[serde(default)]
    function_version: String,
}

impl ExtensionsApi {
    /// A client of the API at `runtime_api` (`AWS_LAMBDA_RUNTIME_API`), not yet registered.
    fn client(runtime_api: &str) -> Result<PooledClient, BoxError> {
        // Lambda gives `host:port`; other hosts of the API (cargo lambda watch) give a full
        // URL with a base path, which the client keeps.
        let base: http::Uri = if runtime_api.contains("://") {
            runtime_api.parse()?
        } else {
            format!("http://{runtime_api}").parse()?
        };
        Ok(PooledClient::builder().with_endpoint(base).build())
    }

    /// Registers as `name` for `events`.
    pub(super) async fn register(
        runtime_api: &str,
        name: &str,
        events: &[&str],
    ) -> Result<(ExtensionsApi, Registered), RegisterError> {
        let client = Self::client(runtime_api).map_err(RegisterError::Failed)?;
        let body = serde_json::json!({ "events": events }).to_string();
        let req = build_request()
            .method(Method::POST)
            .uri("/2020-01-01/extension/register")
            .header(EXTENSION_NAME_HEADER, name)
            .header("Content-Type", "application/json")
            .body(Body::from(body))
            .map_err(|e| RegisterError::Failed(e.into()))?;
        let res = client.call(req).await.map_err(RegisterError::Failed)?;
        let status = res.status();
        let extension_id = res
            .headers()
            .get(EXTENSION_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| RegisterError::Failed(e.into()))?
            .to_bytes();
        if !status.is_success() {
            let body = String::from_utf8_lossy(&body).into_owned();
            return Err(RegisterError::Refused { status, body });
        }
        let Some(extension_id) = extension_id else {
            return Err(RegisterError::Failed(
                format!("the answer has no {EXTENSION_ID_HEADER} header").into(),
            ));
        };
        // Only the identifier is needed to go on; the names are for the log.
        let registered = serde_json::from_slice::<RegisterResponse>(&body)
            .map(|r| Registered {
                function_name: r.function_name,
                function_version: r.function_version,
            })
            .unwrap_or_default();
        Ok((
            ExtensionsApi {
                client,
                extension_id,
            },
            registered,
        ))
    }

    /// Subscribes `uri` to the Telemetry API's `types` records.
    pub(super) async fn subscribe_telemetry(
        &self,
        schema_version: &str,
        types: &[&str],
        uri: &str,
        buffering_timeout_ms: u64,
    ) -> Result<(), BoxError> {
        let body = serde_json::json!({
            "schemaVersion": schema_version,
            "types": types,
            "buffering": {"maxItems": 1000, "maxBytes": 262_144, "timeoutMs": buffering_timeout_ms},
            "destination": {"protocol": "HTTP", "URI": uri},
        });
        let req = build_request()
            .method(Method::PUT)
            .uri("/2022-07-01/telemetry")
            .header(EXTENSION_ID_HEADER, &self.extension_id)
            .header("Content-Type", "application/json")
            .body(Body::from(body.to_string()))?;
        let res = self.client.call(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)).into());
        }
        Ok(())
    }

    /// Waits for the next event. Transient failures are retried with a capped backoff;
    /// Lambda kills the environment anyway if we never come back, and exiting early would
    /// only fail the function sooner.
    pub(super) async fn next_event(&self) -> Event {
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
    pub(super) async fn init_error(&self, error_type: &str, message: &str) -> Result<(), BoxError> {
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
