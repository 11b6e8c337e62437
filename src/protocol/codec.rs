//! The rank-to-rank wire format (version [`WIRE_VERSION`]).
//!
//! One MPI message carries one packet: a version byte, then a bincode 2 (standard config)
//! encoding of `Vec<Msg>`. Several messages to the same rank are batched into one packet.
//! Packets only ever come from ranks of the same runtime, so a packet that does not decode is a
//! runtime bug (or mixed versions in one job) and is reported as such, never ignored.

use super::message::Msg;
use thiserror::Error;

/// Version of the rank-to-rank packet format. Bump on any change to [`Msg`].
pub const WIRE_VERSION: u8 = 1;

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("empty packet")]
    Empty,
    #[error("packet of wire version {got}, this binary speaks {WIRE_VERSION}: all ranks must run the same bqrt build")]
    Version { got: u8 },
    #[error("packet does not decode ({0}): all ranks must run the same bqrt build")]
    Decode(String),
    #[error("{0} trailing bytes after the packet")]
    Trailing(usize),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encode a packet.
pub fn encode(msgs: &[Msg]) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    // Encoding owned in-memory values into a Vec cannot fail.
    match bincode::serde::encode_into_std_write(msgs, &mut out, config()) {
        Ok(_) => out,
        Err(e) => panic!("bqrt bug: encoding a packet failed: {e}"),
    }
}

/// Decode a packet.
pub fn decode(bytes: &[u8]) -> Result<Vec<Msg>, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != WIRE_VERSION {
        return Err(CodecError::Version { got: version });
    }
    let (msgs, used): (Vec<Msg>, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(msgs)
}
