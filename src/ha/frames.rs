//! Home Assistant's WebSocket messages as data: one text frame split into classified messages, and a
//! `result` message turned into a value or an error. Pure functions over untrusted text: whatever HA
//! sends, they return (the fuzz target `ha_decode` drives them).

use serde_json::{Map, Value};

use super::error::{HaError, clip};

/// One message from Home Assistant, classified. A text frame holds one message, or several in a JSON
/// array when message coalescing is on.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// An event for the subscription with this id; `event` is the message's `event` member.
    Event {
        id: u64,
        event: Value,
    },
    /// The result of the request with this id (the whole message; see [`parse_result`]).
    Result {
        id: u64,
        body: Map<String, Value>,
    },
    Pong {
        id: u64,
    },
    /// Nothing this client can use: not JSON, not an object, an unknown type or no id. The reason
    /// quotes (a clipped part of) the message.
    Ignored {
        reason: String,
    },
}

/// Splits one text frame into messages. Pure and total: whatever Home Assistant sends, this returns
/// (JSON nested deeper than serde_json's recursion limit is refused as invalid JSON, not followed).
pub fn decode_frame(text: &str) -> Vec<Incoming> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return vec![Incoming::Ignored {
                reason: format!("not valid JSON ({e}): {}", clip(text, 200)),
            }];
        }
    };
    match value {
        Value::Array(items) => items.into_iter().map(classify).collect(),
        other => vec![classify(other)],
    }
}

fn classify(msg: Value) -> Incoming {
    let Value::Object(mut obj) = msg else {
        return Incoming::Ignored {
            reason: format!("not a JSON object: {}", clip(&msg.to_string(), 200)),
        };
    };
    let id = obj.get("id").and_then(Value::as_u64);
    match (obj.get("type").and_then(Value::as_str), id) {
        (Some("event"), Some(id)) => Incoming::Event {
            id,
            event: obj.remove("event").unwrap_or(Value::Null),
        },
        (Some("result"), Some(id)) => Incoming::Result { id, body: obj },
        (Some("pong"), Some(id)) => Incoming::Pong { id },
        _ => Incoming::Ignored {
            reason: format!(
                "unknown type or no id: {}",
                clip(&Value::Object(obj).to_string(), 200)
            ),
        },
    }
}

/// The outcome of a `result` message for `command`: its `result` member on success, HA's error code
/// and message on failure, a protocol error when `success` is missing.
pub fn parse_result(command: &str, obj: Map<String, Value>) -> Result<Value, HaError> {
    match obj.get("success").and_then(Value::as_bool) {
        Some(true) => Ok(obj.get("result").cloned().unwrap_or(Value::Null)),
        Some(false) => {
            let error = obj.get("error");
            let field = |k: &str| {
                error
                    .and_then(|e| e.get(k))
                    .and_then(Value::as_str)
                    .map(|s| clip(s, 300))
                    .unwrap_or_default()
            };
            Err(HaError::Command {
                command: command.to_string(),
                code: field("code"),
                message: field("message"),
            })
        }
        None => Err(HaError::Protocol(format!(
            "result for {command} without a boolean `success`: {}",
            clip(&Value::Object(obj).to_string(), 200)
        ))),
    }
}
