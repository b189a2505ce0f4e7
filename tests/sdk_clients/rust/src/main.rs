//! Drives the unmodified AWS SDK for Rust (`aws-sdk-sagemakerruntime`) for bundleserve's tests: one operation per
//! process, `key=value` arguments in, one JSON object out (see tests/sdk_clients/README.md for the protocol).
//!
//! Ops: `invoke`, `invoke_async`, `invoke_stream`. Arguments: `url` (endpoint URL), `region`, `access_key` and
//! `secret_key` (absent: unsigned, which this SDK only does with `allow_no_auth()`; `allow_no_auth=false` leaves it
//! out), `endpoint`, `body`,
//! `content_type`, `accept`, `custom_attributes`, `inference_id`, `target_variant`, `input_location`. Typed errors are answered as
//! `{"error": <the SDK's error variant>, "code", "status", "message", "original_status_code"}`.

use std::collections::HashMap;
use std::fmt::Write as _;

use aws_credential_types::Credentials;
use aws_sdk_sagemakerruntime as sagemaker;
use sagemaker::config::retry::RetryConfig;
use sagemaker::config::{BehaviorVersion, Region};
use sagemaker::error::{ProvideErrorMetadata, SdkError};
use sagemaker::operation::invoke_endpoint::InvokeEndpointError;
use sagemaker::operation::invoke_endpoint_async::InvokeEndpointAsyncError;
use sagemaker::operation::invoke_endpoint_with_response_stream::InvokeEndpointWithResponseStreamError;
use sagemaker::primitives::Blob;
use sagemaker::types::error::ResponseStreamError;
use sagemaker::types::ResponseStream;

/// A JSON value, enough for the answers (strings, numbers, null, lists, objects).
enum Json {
    Null,
    Num(i64),
    Str(String),
    List(Vec<Json>),
    Obj(Vec<(&'static str, Json)>),
}

impl Json {
    fn opt(value: Option<&str>) -> Json {
        value.map_or(Json::Null, |v| Json::Str(v.to_string()))
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Num(n) => write!(out, "{n}").unwrap(),
            Json::Str(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            Json::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    Json::Str((*key).to_string()).write(out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// A service error as the SDK typed it: the variant's name, the code, status and message it parsed.
fn service_error<E: ProvideErrorMetadata>(variant: &str, error: &E, status: u16, original: Option<i32>) -> Json {
    Json::Obj(vec![
        ("error", Json::Str(variant.to_string())),
        ("code", Json::opt(error.code())),
        ("status", Json::Num(i64::from(status))),
        ("message", Json::opt(error.message())),
        ("original_status_code", original.map_or(Json::Null, |s| Json::Num(i64::from(s)))),
    ])
}

fn transport_error<E: std::fmt::Debug>(error: &E) -> Json {
    Json::Obj(vec![("error", Json::Str("SdkError".into())), ("message", Json::Str(format!("{error:?}")))])
}

fn invoke_error(error: SdkError<InvokeEndpointError>) -> Json {
    let SdkError::ServiceError(service) = &error else { return transport_error(&error) };
    let status = service.raw().status().as_u16();
    match service.err() {
        InvokeEndpointError::ValidationError(e) => service_error("ValidationError", e, status, None),
        InvokeEndpointError::ModelError(e) => service_error("ModelError", e, status, e.original_status_code()),
        InvokeEndpointError::ModelNotReadyException(e) => service_error("ModelNotReadyException", e, status, None),
        InvokeEndpointError::ServiceUnavailable(e) => service_error("ServiceUnavailable", e, status, None),
        InvokeEndpointError::InternalFailure(e) => service_error("InternalFailure", e, status, None),
        other => service_error("Unhandled", other, status, None),
    }
}

fn invoke_async_error(error: SdkError<InvokeEndpointAsyncError>) -> Json {
    let SdkError::ServiceError(service) = &error else { return transport_error(&error) };
    let status = service.raw().status().as_u16();
    match service.err() {
        InvokeEndpointAsyncError::ValidationError(e) => service_error("ValidationError", e, status, None),
        InvokeEndpointAsyncError::ServiceUnavailable(e) => service_error("ServiceUnavailable", e, status, None),
        InvokeEndpointAsyncError::InternalFailure(e) => service_error("InternalFailure", e, status, None),
        other => service_error("Unhandled", other, status, None),
    }
}

fn invoke_stream_error(error: SdkError<InvokeEndpointWithResponseStreamError>) -> Json {
    use InvokeEndpointWithResponseStreamError as E;
    let SdkError::ServiceError(service) = &error else { return transport_error(&error) };
    let status = service.raw().status().as_u16();
    match service.err() {
        E::ValidationError(e) => service_error("ValidationError", e, status, None),
        E::ModelError(e) => service_error("ModelError", e, status, e.original_status_code()),
        E::ModelStreamError(e) => service_error("ModelStreamError", e, status, None),
        E::ServiceUnavailable(e) => service_error("ServiceUnavailable", e, status, None),
        E::InternalFailure(e) => service_error("InternalFailure", e, status, None),
        other => service_error("Unhandled", other, status, None),
    }
}

fn client(args: &HashMap<String, String>) -> sagemaker::Client {
    let mut config = sagemaker::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(args["region"].clone()))
        .endpoint_url(args["url"].clone())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .retry_config(RetryConfig::disabled());
    match (args.get("access_key"), args.get("secret_key")) {
        (Some(key), Some(secret)) => {
            config = config.credentials_provider(Credentials::new(key, secret, None, None, "bundleserve-tests"));
        }
        // Without credentials the SDK refuses to send the request unless no-auth is allowed explicitly
        // (`allow_no_auth=false` leaves it out, to show exactly that).
        _ if args.get("allow_no_auth").map(String::as_str) == Some("false") => {}
        _ => config = config.allow_no_auth(),
    }
    sagemaker::Client::from_conf(config.build())
}

async fn run(op: &str, args: &HashMap<String, String>) -> Json {
    let client = client(args);
    let get = |name: &str| args.get(name).cloned();
    match op {
        "invoke" => {
            let call = client
                .invoke_endpoint()
                .endpoint_name(&args["endpoint"])
                .body(Blob::new(get("body").unwrap_or_default().into_bytes()))
                .set_content_type(get("content_type"))
                .set_accept(get("accept"))
                .set_custom_attributes(get("custom_attributes"))
                .set_inference_id(get("inference_id"))
                .set_target_variant(get("target_variant"));
            match call.send().await {
                Ok(reply) => Json::Obj(vec![
                    ("body", Json::Str(String::from_utf8_lossy(reply.body().map_or(&[][..], |b| b.as_ref())).into())),
                    ("content_type", Json::opt(reply.content_type())),
                    ("custom_attributes", Json::opt(reply.custom_attributes())),
                    ("invoked_variant", Json::opt(reply.invoked_production_variant())),
                ]),
                Err(error) => invoke_error(error),
            }
        }
        "invoke_async" => {
            let call = client
                .invoke_endpoint_async()
                .endpoint_name(&args["endpoint"])
                .set_input_location(get("input_location"))
                .set_content_type(get("content_type"))
                .set_custom_attributes(get("custom_attributes"))
                .set_inference_id(get("inference_id"));
            match call.send().await {
                Ok(reply) => Json::Obj(vec![
                    ("inference_id", Json::opt(reply.inference_id())),
                    ("output_location", Json::opt(reply.output_location())),
                    ("failure_location", Json::opt(reply.failure_location())),
                ]),
                Err(error) => invoke_async_error(error),
            }
        }
        "invoke_stream" => {
            let call = client
                .invoke_endpoint_with_response_stream()
                .endpoint_name(&args["endpoint"])
                .body(Blob::new(get("body").unwrap_or_default().into_bytes()))
                .set_content_type(get("content_type"))
                .set_custom_attributes(get("custom_attributes"))
                .set_inference_id(get("inference_id"))
                .set_target_variant(get("target_variant"));
            let mut reply = match call.send().await {
                Ok(reply) => reply,
                Err(error) => return invoke_stream_error(error),
            };
            let mut parts = Vec::new();
            loop {
                match reply.body.recv().await {
                    Ok(Some(ResponseStream::PayloadPart(part))) => {
                        let bytes = part.bytes().map_or(&[][..], |b| b.as_ref());
                        parts.push(Json::Str(String::from_utf8_lossy(bytes).into()));
                    }
                    Ok(Some(_)) => parts.push(Json::Str("<unknown event>".into())),
                    Ok(None) => return Json::Obj(vec![("parts", Json::List(parts))]),
                    Err(SdkError::ServiceError(service)) => {
                        let (variant, code, message) = match service.err() {
                            ResponseStreamError::ModelStreamError(e) => {
                                ("ModelStreamError", e.error_code().map(str::to_string), e.message().map(str::to_string))
                            }
                            ResponseStreamError::InternalStreamFailure(e) => {
                                ("InternalStreamFailure", None, e.message().map(str::to_string))
                            }
                            other => ("Unhandled", other.code().map(str::to_string), other.message().map(str::to_string)),
                        };
                        return Json::Obj(vec![
                            ("parts", Json::List(parts)),
                            ("error", Json::Str(variant.into())),
                            ("error_code", Json::opt(code.as_deref())),
                            ("message", Json::opt(message.as_deref())),
                        ]);
                    }
                    Err(error) => return transport_error(&error),
                }
            }
        }
        other => Json::Obj(vec![("error", Json::Str("UsageError".into())), ("message", Json::Str(format!("unknown op {other}")))]),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut argv = std::env::args().skip(1);
    let op = argv.next().unwrap_or_default();
    let args: HashMap<String, String> = argv
        .filter_map(|arg| arg.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let mut out = String::new();
    run(&op, &args).await.write(&mut out);
    println!("{out}");
}
