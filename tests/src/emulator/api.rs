//! The HTTP side: Runtime API (2018-06-01), Extensions API (2020-01-01) and Telemetry API
//! (2022-07-01), with the status codes and `errorType`s Lambda's own implementation answers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::config::InitType;
use super::state::{ExtSlot, ExtState, Phase, Shared, State};
use super::telemetry;
use super::types::{InitFailure, InvokeResult, ProtocolEvent};

type Resp = Response<Full<Bytes>>;

/// Largest response / error body a runtime may post (Lambda: 6 MB).
pub(crate) const MAX_PAYLOAD: usize = 6 * 1024 * 1024;
const MAX_SMALL_BODY: usize = 1024 * 1024;
const MAX_EXTENSIONS: usize = 10;

pub(crate) const H_REQUEST_ID: &str = "Lambda-Runtime-Aws-Request-Id";
pub(crate) const H_DEADLINE: &str = "Lambda-Runtime-Deadline-Ms";
pub(crate) const H_ARN: &str = "Lambda-Runtime-Invoked-Function-Arn";
pub(crate) const H_TRACE: &str = "Lambda-Runtime-Trace-Id";
pub(crate) const H_RT_ERROR_TYPE: &str = "Lambda-Runtime-Function-Error-Type";
pub(crate) const H_EXT_NAME: &str = "Lambda-Extension-Name";
pub(crate) const H_EXT_ID: &str = "Lambda-Extension-Identifier";
pub(crate) const H_EXT_EVENT_ID: &str = "Lambda-Extension-Event-Identifier";
pub(crate) const H_EXT_ERROR_TYPE: &str = "Lambda-Extension-Function-Error-Type";
pub(crate) const H_EXT_FEATURE: &str = "Lambda-Extension-Accept-Feature";

/// A refused request: status, `errorType`, `errorMessage`.
struct ApiError(StatusCode, &'static str, String);

fn forbidden(error_type: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, error_type, msg.into())
}

fn json_resp(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn accepted() -> Resp {
    json_resp(StatusCode::ACCEPTED, &json!({"status": "OK"}))
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Accepts connections until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match route(&shared, req).await {
        Ok(r) => r,
        Err(ApiError(status, error_type, msg)) => {
            if status.is_client_error() {
                let mut st = shared.lock();
                shared.log(
                    &mut st,
                    ProtocolEvent::Rejected {
                        method: method.to_string(),
                        path,
                        status: status.as_u16(),
                        error_type: error_type.to_string(),
                    },
                );
                drop(st);
                shared.bump();
            }
            json_resp(
                status,
                &json!({"errorMessage": msg, "errorType": error_type}),
            )
        }
    }
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    const INVOCATION: &str = "/2018-06-01/runtime/invocation/";
    match (method.clone(), path.as_str()) {
        (Method::GET, "/2018-06-01/runtime/invocation/next") => runtime_next(shared).await,
        (Method::POST, "/2018-06-01/runtime/init/error") => runtime_init_error(shared, req).await,
        (Method::POST, p) if p.starts_with(INVOCATION) && p.ends_with("/response") => {
            let id = p[INVOCATION.len()..p.len() - "/response".len()].to_string();
            runtime_result(shared, &id, req, false).await
        }
        (Method::POST, p) if p.starts_with(INVOCATION) && p.ends_with("/error") => {
            let id = p[INVOCATION.len()..p.len() - "/error".len()].to_string();
            runtime_result(shared, &id, req, true).await
        }
        (Method::POST, "/2020-01-01/extension/register") => register(shared, req).await,
        (Method::GET, "/2020-01-01/extension/event/next") => extension_next(shared, req).await,
        (Method::POST, "/2020-01-01/extension/init/error") => {
            extension_error(shared, req, true).await
        }
        (Method::POST, "/2020-01-01/extension/exit/error") => {
            extension_error(shared, req, false).await
        }
        (Method::PUT, "/2022-07-01/telemetry") => telemetry_subscribe(shared, req).await,
        (
            _,
            "/2018-06-01/runtime/invocation/next"
            | "/2018-06-01/runtime/init/error"
            | "/2020-01-01/extension/register"
            | "/2020-01-01/extension/event/next"
            | "/2020-01-01/extension/init/error"
            | "/2020-01-01/extension/exit/error"
            | "/2022-07-01/telemetry",
        ) => Err(ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} not allowed on {path}"),
        )),
        _ => Err(ApiError(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no such API: {path}"),
        )),
    }
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(_) => Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("Exceeded maximum allowed payload size ({limit} bytes)."),
        )),
    }
}

/// Waits for `take` to yield, re-checking whenever the caller's [`Notify`] is nudged (every
/// event queued for it nudges it). Answers 500 once the environment is gone.
async fn wait_for<T>(
    shared: &Arc<Shared>,
    notify: Arc<tokio::sync::Notify>,
    mut take: impl FnMut(&mut State) -> Option<T>,
) -> Result<T, ApiError> {
    let mut closing = shared.subscribe_closing();
    loop {
        {
            let mut st = shared.lock();
            if let Some(v) = take(&mut st) {
                return Ok(v);
            }
            if st.phase == Phase::Done {
                return Err(ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    "the execution environment has shut down".to_string(),
                ));
            }
        }
        if *closing.borrow_and_update() {
            return Err(ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "the execution environment has shut down".to_string(),
            ));
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = closing.changed() => {}
        }
    }
}

// ---------------------------------------------------------------- Runtime API

async fn runtime_next(shared: &Arc<Shared>) -> Result<Resp, ApiError> {
    let notify = {
        let mut st = shared.lock();
        let concurrent = shared.cfg.init_type == InitType::ManagedInstances;
        if let Some(cur) = st.current.as_ref().filter(|_| !concurrent) {
            if cur.delivered_to_runtime.is_some() && cur.result.is_none() {
                return Err(forbidden(
                    "InvalidStateTransition",
                    "State transition from RuntimeInvocationStarted to RuntimeReady failed for runtime. Error: the current invocation has no response yet",
                ));
            }
        }
        if st.runtime.first_next_at.is_none() {
            st.runtime.first_next_at = Some(Instant::now());
            shared.telemetry.platform(
                "platform.initRuntimeDone",
                json!({"initializationType": shared.cfg.init_type.as_str(), "phase": "init", "status": "success", "spans": []}),
            );
        }
        shared.log(&mut st, ProtocolEvent::RuntimeNext);
        st.runtime.notify.clone()
    };
    shared.bump();
    let msg = wait_for(shared, notify, |st| {
        if matches!(st.phase, Phase::ShuttingDown) {
            // The runtime gets SIGTERM, never another event.
            return None;
        }
        let msg = match st.runtime.pending.take() {
            Some(msg) => msg,
            None => st.runtime.queue.pop_front()?,
        };
        let now = Instant::now();
        if let Some(cur) = st.current.as_mut() {
            if cur.msg.request_id == msg.request_id {
                cur.delivered_to_runtime = Some(now);
            }
        }
        if let Some(inv) = st.concurrent.get_mut(&msg.request_id) {
            inv.delivered_to_runtime = Some(now);
        }
        shared.log(
            st,
            ProtocolEvent::RuntimeInvokeDelivered {
                request_id: msg.request_id.clone(),
            },
        );
        Some(msg)
    })
    .await?;
    shared.bump();
    let mut r = Response::new(Full::new(msg.payload.clone()));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(H_REQUEST_ID, header_value(&msg.request_id));
    h.insert(H_DEADLINE, header_value(&msg.deadline_ms.to_string()));
    h.insert(H_ARN, header_value(&msg.arn));
    h.insert(H_TRACE, header_value(&msg.trace_id));
    Ok(r)
}

async fn runtime_result(
    shared: &Arc<Shared>,
    id: &str,
    req: Request<Incoming>,
    is_error: bool,
) -> Result<Resp, ApiError> {
    let error_type = header(req.headers(), H_RT_ERROR_TYPE).map(str::to_string);
    let body = read_body(req, MAX_PAYLOAD).await?;
    let mut guard = shared.lock();
    let st = &mut *guard;
    let now = Instant::now();
    let produced = body.len();
    let result = if is_error {
        InvokeResult::Error {
            error_type: error_type.clone(),
            body,
        }
    } else {
        InvokeResult::Response(body)
    };
    // The invocation it answers: one of several at once (Managed Instances), or the current.
    let waiting = |delivered: Option<Instant>, result: &Option<(InvokeResult, Instant)>| {
        delivered.is_some() && result.is_none()
    };
    if let Some(inv) = st
        .concurrent
        .get_mut(id)
        .filter(|i| waiting(i.delivered_to_runtime, &i.result))
    {
        inv.result = Some((result, now));
    } else if let Some(cur) = st
        .current
        .as_mut()
        .filter(|c| c.msg.request_id == id && waiting(c.delivered_to_runtime, &c.result))
    {
        cur.produced_bytes = produced;
        cur.result = Some((result, now));
    } else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            "Invalid request ID".to_string(),
        ));
    }
    let event = if is_error {
        ProtocolEvent::RuntimeError {
            request_id: id.to_string(),
            error_type,
        }
    } else {
        ProtocolEvent::RuntimeResponse {
            request_id: id.to_string(),
            bytes: produced,
        }
    };
    shared.log(st, event);
    drop(guard);
    shared.bump();
    Ok(accepted())
}

async fn runtime_init_error(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    let error_type = header(req.headers(), H_RT_ERROR_TYPE).map(str::to_string);
    let body = read_body(req, MAX_SMALL_BODY).await?;
    let body = (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned());
    let mut st = shared.lock();
    if st.phase != Phase::Init || st.runtime.first_next_at.is_some() {
        return Err(forbidden(
            "InvalidStateTransition",
            "State transition from RuntimeReady to RuntimeInitError failed for runtime. Error: INIT is over",
        ));
    }
    st.runtime.init_error = Some((error_type.clone(), body.clone()));
    if st.init_failure.is_none() {
        st.init_failure = Some(InitFailure::RuntimeInitError {
            error_type: error_type.clone(),
            body,
        });
    }
    shared.telemetry.platform(
        "platform.initRuntimeDone",
        json!({"initializationType": shared.cfg.init_type.as_str(), "phase": "init", "status": "error",
               "errorType": error_type.clone().unwrap_or_default(), "spans": []}),
    );
    shared.log(&mut st, ProtocolEvent::RuntimeInitError { error_type });
    drop(st);
    shared.bump();
    Ok(accepted())
}

// ---------------------------------------------------------------- Extensions API

async fn register(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let name = header(req.headers(), H_EXT_NAME)
        .map(str::to_string)
        .ok_or_else(|| forbidden("Extension.InvalidExtensionName", "Empty extension name"))?;
    let accept_account_id = header(req.headers(), H_EXT_FEATURE)
        .is_some_and(|v| v.split(',').any(|f| f.trim() == "accountId"));
    let body = read_body(req, MAX_SMALL_BODY).await?;
    let parsed: Value = serde_json::from_slice(&body)
        .map_err(|e| forbidden("InvalidRequestFormat", e.to_string()))?;
    if parsed
        .get("configurationKeys")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(forbidden(
            "InvalidRequestFormat",
            "configurationKeys are deprecated; use environment variables instead",
        ));
    }
    let events: Vec<String> = match parsed.get("events") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| e.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| forbidden("InvalidRequestFormat", "events must be strings"))?,
        Some(_) => return Err(forbidden("InvalidRequestFormat", "events must be an array")),
    };

    let mut st = shared.lock();
    let external_idx = st
        .extensions
        .iter()
        .position(|e| e.external && e.name == name);
    let idx = match external_idx {
        Some(i) => {
            for e in &events {
                if e != "INVOKE" && e != "SHUTDOWN" {
                    return Err(forbidden(
                        "Extension.InvalidEventType",
                        format!("{e}: invalid event type"),
                    ));
                }
                let refused = shared.cfg.init_type == InitType::ManagedInstances
                    || shared.cfg.refuse_invoke_registration;
                if e == "INVOKE" && refused {
                    return Err(forbidden(
                        "Extension.InvalidEventType",
                        "INVOKE: extensions on Lambda Managed Instances can register for SHUTDOWN only",
                    ));
                }
            }
            if st.extensions[i].state != ExtState::Launched {
                return Err(forbidden(
                    "Extension.InvalidExtensionState",
                    format!("State transition from Registered to Registered failed for extension {name}. Error: already registered"),
                ));
            }
            if st.phase != Phase::Init {
                return Err(forbidden(
                    "Extension.RegistrationClosed",
                    "Extension registration closed already",
                ));
            }
            i
        }
        None => {
            // Not a launched executable: an internal extension (inside the runtime process).
            for e in &events {
                if e != "INVOKE" {
                    return Err(forbidden(
                        "Extension.InvalidEventType",
                        format!("{e}: internal extensions can only register for INVOKE"),
                    ));
                }
            }
            if st.phase != Phase::Init || st.runtime.first_next_at.is_some() {
                return Err(forbidden(
                    "Extension.RegistrationClosed",
                    "Extension registration closed already",
                ));
            }
            if st.extensions.iter().any(|e| e.name == name) {
                return Err(forbidden(
                    "Extension.InvalidExtensionState",
                    "Extension with this name already registered",
                ));
            }
            if st.extensions.len() >= MAX_EXTENSIONS {
                return Err(forbidden(
                    "Extension.TooManyExtensions",
                    format!("Extension limit ({MAX_EXTENSIONS}) reached"),
                ));
            }
            st.extensions.push(ExtSlot::new(name.clone(), false));
            st.extensions.len() - 1
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
    let external = {
        let slot = &mut st.extensions[idx];
        slot.id = Some(id.clone());
        slot.events = events.clone();
        slot.state = ExtState::Registered;
        slot.registered_at = Some(Instant::now());
        slot.external
    };
    shared.log(
        &mut st,
        ProtocolEvent::Register {
            name: name.clone(),
            id: id.clone(),
            events: events.clone(),
            external,
            accept_account_id,
        },
    );
    drop(st);
    shared.telemetry.platform(
        "platform.extension",
        json!({"name": name, "state": "Ready", "events": events}),
    );
    shared.bump();

    let cfg = &shared.cfg;
    let mut body = json!({
        "functionName": cfg.function_name,
        "functionVersion": cfg.function_version,
        "handler": cfg.handler,
    });
    if accept_account_id {
        body["accountId"] = Value::String(cfg.account_id.clone());
    }
    let mut r = json_resp(StatusCode::OK, &body);
    r.headers_mut().insert(H_EXT_ID, header_value(&id));
    Ok(r)
}

/// The registered extension a request comes from (middleware of the real API).
fn extension_index(st: &State, headers: &HeaderMap) -> Result<usize, ApiError> {
    let id = header(headers, H_EXT_ID).ok_or_else(|| {
        forbidden(
            "Extension.MissingExtensionIdentifier",
            "Missing Lambda-Extension-Identifier header",
        )
    })?;
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(forbidden(
            "Extension.InvalidExtensionIdentifier",
            "Invalid Lambda-Extension-Identifier",
        ));
    }
    Shared::ext_index_by_id(st, id).ok_or_else(|| {
        forbidden(
            "Extension.UnknownExtensionIdentifier",
            format!("Unknown extension {id}"),
        )
    })
}

async fn extension_next(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let (idx, notify) = {
        let mut st = shared.lock();
        let idx = extension_index(&st, req.headers())?;
        let now = Instant::now();
        let slot = &mut st.extensions[idx];
        match slot.state {
            ExtState::InitError | ExtState::ExitError => {
                let from = if slot.state == ExtState::InitError {
                    "InitError"
                } else {
                    "ExitError"
                };
                return Err(forbidden(
                    "Extension.InvalidExtensionState",
                    format!(
                        "State transition from {from} to Ready failed for extension {}",
                        slot.id.as_deref().unwrap_or("")
                    ),
                ));
            }
            ExtState::Registered | ExtState::Launched => {
                slot.first_next_at = Some(now);
                slot.state = ExtState::Ready;
            }
            ExtState::Processing => {
                if let Some((rid, _)) = &slot.delivered {
                    if slot.acked.as_ref().map(|(a, _)| a) != Some(rid) {
                        slot.acked = Some((rid.clone(), now));
                    }
                }
                slot.state = ExtState::Ready;
            }
            ExtState::Ready => {}
        }
        let name = slot.name.clone();
        let notify = slot.notify.clone();
        shared.log(&mut st, ProtocolEvent::ExtensionNext { name });
        (idx, notify)
    };
    shared.bump();
    let ev = wait_for(shared, notify, |st| {
        let now = Instant::now();
        let slot = &mut st.extensions[idx];
        let ev = slot.pending.pop_front()?;
        slot.state = ExtState::Processing;
        match ev.event_type {
            "INVOKE" => {
                if let Some(rid) = &ev.request_id {
                    slot.delivered = Some((rid.clone(), now));
                }
            }
            _ => slot.shutdown_delivered_at = Some(now),
        }
        let name = slot.name.clone();
        shared.log(
            st,
            ProtocolEvent::EventDelivered {
                name,
                event_type: ev.event_type.to_string(),
                request_id: ev.request_id.clone(),
            },
        );
        Some(ev)
    })
    .await?;
    shared.bump();
    let mut r = Response::new(Full::new(ev.body));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        H_EXT_EVENT_ID,
        header_value(&uuid::Uuid::new_v4().to_string()),
    );
    Ok(r)
}

async fn extension_error(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    init: bool,
) -> Result<Resp, ApiError> {
    {
        // Identify before reading the body, as the real middleware does.
        let st = shared.lock();
        extension_index(&st, req.headers())?;
    }
    let error_type = header(req.headers(), H_EXT_ERROR_TYPE)
        .map(str::to_string)
        .ok_or_else(|| {
            forbidden(
                "Extension.MissingHeader",
                format!("{H_EXT_ERROR_TYPE} not found"),
            )
        })?;
    let headers = req.headers().clone();
    let body = read_body(req, MAX_SMALL_BODY).await?;
    let body = (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned());
    let mut st = shared.lock();
    let idx = extension_index(&st, &headers)?;
    let phase = st.phase;
    let slot = &mut st.extensions[idx];
    let name = slot.name.clone();
    let allowed = if init {
        slot.state == ExtState::Registered
            || (slot.state == ExtState::Ready && phase == Phase::Init)
    } else {
        matches!(
            slot.state,
            ExtState::Registered | ExtState::Ready | ExtState::Processing
        )
    };
    if !allowed {
        let target = if init { "InitError" } else { "ExitError" };
        return Err(forbidden(
            "Extension.InvalidExtensionState",
            format!(
                "State transition from {:?} to {target} failed for extension {}",
                slot.state,
                slot.id.as_deref().unwrap_or("")
            ),
        ));
    }
    if init {
        slot.state = ExtState::InitError;
        slot.init_error = Some(error_type.clone());
        if st.init_failure.is_none() {
            st.init_failure = Some(InitFailure::ExtensionInitError {
                name: name.clone(),
                error_type: error_type.clone(),
                body: body.clone(),
            });
        }
        shared.log(
            &mut st,
            ProtocolEvent::ExtensionInitError {
                name,
                error_type,
                body,
            },
        );
    } else {
        slot.state = ExtState::ExitError;
        slot.exit_error = Some(error_type.clone());
        if phase == Phase::Init && st.init_failure.is_none() {
            st.init_failure = Some(InitFailure::ExtensionExitError {
                name: name.clone(),
                error_type: error_type.clone(),
            });
        }
        shared.log(
            &mut st,
            ProtocolEvent::ExtensionExitError {
                name,
                error_type,
                body,
            },
        );
    }
    drop(st);
    shared.bump();
    Ok(accepted())
}

// ---------------------------------------------------------------- Telemetry API

async fn telemetry_subscribe(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    {
        let st = shared.lock();
        extension_index(&st, req.headers())?;
    }
    let headers = req.headers().clone();
    let body = read_body(req, MAX_SMALL_BODY).await?;
    let sub = telemetry::parse_subscription(&body)
        .map_err(|m| ApiError(StatusCode::BAD_REQUEST, "ValidationError", m))?;
    if shared.cfg.init_type == InitType::ManagedInstances && sub.schema != "2025-01-29" {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            format!(
                "schemaVersion {:?} is not supported on Lambda Managed Instances (2025-01-29)",
                sub.schema
            ),
        ));
    }
    let name = {
        let mut st = shared.lock();
        let idx = extension_index(&st, &headers)?;
        let name = st.extensions[idx].name.clone();
        shared.log(
            &mut st,
            ProtocolEvent::TelemetrySubscribe {
                name: name.clone(),
                types: sub.types.clone(),
                uri: sub.uri.clone(),
            },
        );
        name
    };
    let types = sub.types.clone();
    shared.telemetry.subscribe(name.clone(), sub);
    shared.telemetry.platform(
        "platform.telemetrySubscription",
        json!({"name": name, "state": "Subscribed", "types": types}),
    );
    shared.bump();
    let mut r = Response::new(Full::new(Bytes::from_static(b"OK")));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}
