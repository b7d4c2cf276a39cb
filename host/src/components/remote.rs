//! What a call between components on two hosts carries ([`Message`] out,
//! [`Answer`] back), and how the callee's host serves one ([`answer`]).
//!
//! Values travel in WAVE, the component model's own text encoding of
//! values (`wasm-wave`, built into wasmtime): each parameter and result is
//! written from, and read back against, the function's type, so a value
//! that does not fit the type is refused where it is read. The caller's
//! host and the callee's each hold the payload to the callee's
//! `max_call_bytes` as one host does, and the encoded message to
//! [`wire_limit`] of it, checked before a byte is decoded.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime::component::types::ComponentFunc;
use wasmtime::component::wasm_wave;
use wasmtime::component::{Type, Val};

use super::peers::{self, Chain, Export};
use super::snapshot::Entry;

/// How many bytes of text a call's payload may take between hosts, per
/// byte of `max_call_bytes`: WAVE spells a byte of a `list<u8>` in up to
/// five characters and a control character of a string in six.
const WIRE_BYTES_PER_BYTE: usize = 8;
/// What a message carries besides its values.
const WIRE_OVERHEAD_BYTES: usize = 16 * 1024;

/// The most bytes a message or an answer for a component whose
/// `max_call_bytes` is `max_call_bytes` may take between hosts.
pub fn wire_limit(max_call_bytes: usize) -> usize {
    max_call_bytes
        .saturating_mul(WIRE_BYTES_PER_BYTE)
        .saturating_add(WIRE_OVERHEAD_BYTES)
}

/// A call, as sent to the host that owns the callee.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub caller: String,
    pub interface: String,
    pub func: String,
    /// Each parameter in WAVE.
    pub params: Vec<String>,
    pub depth: u32,
    /// What the caller has left of its time.
    pub within_ms: u64,
    pub request_id: String,
}

/// The results of a call that completed, each in WAVE.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub results: Vec<String>,
}

impl Message {
    /// `params` of a call of `func` in `interface`, written for the wire.
    pub fn new(caller: &str, interface: &str, func: &str, params: &[Val], chain: &Chain) -> Result<Message, String> {
        Ok(Message {
            caller: caller.to_string(),
            interface: interface.to_string(),
            func: func.to_string(),
            params: encode(params)?,
            depth: chain.depth,
            within_ms: chain.within.as_millis().try_into().unwrap_or(u64::MAX),
            request_id: chain.request_id.to_string(),
        })
    }
}

/// The values of `answer`, read against the results of `ty`.
pub fn read_answer(answer: &Answer, ty: &ComponentFunc) -> Result<Vec<Val>, String> {
    decode(ty.results(), &answer.results)
}

/// Serves `message`, a call from another host, to `entry` on this one: as
/// a call between components on one host is served, its depth checked
/// first, its parameters read against the type of the function the version
/// picked for it exports.
pub async fn answer(entry: &Entry, message: Message) -> Result<Answer, String> {
    peers::check_depth(message.depth)?;
    let export = Export::find(entry, &message.interface, &message.func)?;
    let params = decode(export.ty.params().map(|(_, ty)| ty), &message.params)?;
    let mut results = vec![Val::Bool(false); export.ty.results().len()];
    let chain = Chain {
        depth: message.depth,
        request_id: Arc::from(message.request_id.as_str()),
        within: Duration::from_millis(message.within_ms),
    };
    peers::serve_export(entry, &export, chain, &params, &mut results).await?;
    Ok(Answer {
        results: encode(&results)?,
    })
}

fn encode(values: &[Val]) -> Result<Vec<String>, String> {
    values
        .iter()
        .map(|value| wasm_wave::to_string(value).map_err(|e| format!("a value cannot be sent to another host: {e}")))
        .collect()
}

fn decode(types: impl ExactSizeIterator<Item = Type>, texts: &[String]) -> Result<Vec<Val>, String> {
    if types.len() != texts.len() {
        return Err(format!(
            "{} values where the function takes {}",
            texts.len(),
            types.len()
        ));
    }
    types
        .zip(texts)
        .map(|(ty, text)| {
            wasm_wave::from_str::<Val>(&ty, text).map_err(|e| format!("a value does not fit its type: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_written_against_their_type() {
        let text = "a quote \", a newline\n, a control \u{1}, an é";
        let wire = encode(&[Val::String(text.into()), Val::U32(7)]).unwrap();
        let read = decode([Type::String, Type::U32].into_iter(), &wire).unwrap();
        assert_eq!(read, vec![Val::String(text.into()), Val::U32(7)]);
        assert!(decode([Type::U8].into_iter(), &["300".into()]).is_err(), "out of range");
        assert!(
            decode([Type::U32].into_iter(), &wire[..1]).is_err(),
            "a string is no u32"
        );
        assert!(decode([Type::U8].into_iter(), &[]).is_err(), "one value short");
    }

    #[test]
    fn the_wire_holds_the_longest_spelling_of_a_full_payload() {
        let limit = 100_000;
        let chain = Chain {
            depth: 1,
            request_id: "r".into(),
            within: Duration::from_secs(1),
        };
        for value in [
            Val::List(vec![Val::U8(255); limit - 8]),
            Val::String("\u{1}".repeat(limit - 8)),
            Val::String("\"".repeat(limit - 8)),
        ] {
            assert!(peers::payload_bytes(std::slice::from_ref(&value)) <= limit);
            let message = Message::new("caller", "a:b/c", "f", &[value], &chain).unwrap();
            let bytes = serde_json::to_vec(&message).unwrap().len();
            assert!(bytes <= wire_limit(limit), "{bytes}");
        }
    }
}
