//! Response bodies and JSON responses, shared by the simulated servers'
//! HTTP layer (`server`) and OAuth endpoints (`oauth`).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::Value;

/// A response body: whole, streamed or cut short by a fault.
pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub(super) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(super) fn json_value(status: StatusCode, v: &Value) -> Response<Body> {
    json_response(status, v.to_string().into_bytes())
}
