//! The rank-to-rank wire format (version [`WIRE_VERSION`]).
//!
//! One MPI message carries one packet: a version byte, then a bincode 2 (standard config)
//! encoding of `Vec<Msg>`. Several messages to the same rank are batched into one packet.
//! Packets only ever come from ranks of the same runtime, so a packet that does not decode is a
//! runtime bug (or mixed versions in one job) and is reported as such, never ignored.

use super::message::Msg;
use thiserror::Error;

/// Version of the rank-to-rank packet format. Bump on any change to [`Msg`].
pub const WIRE_VERSION: u8 = 7;

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

/// Largest packet a rank accepts: a corrupted length prefix can never make it allocate more.
pub const MAX_PACKET: usize = 1 << 30;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn decode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_PACKET>,
> {
    bincode::config::standard().with_limit::<MAX_PACKET>()
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
    let (msgs, used): (Vec<Msg>, usize) = bincode::serde::decode_from_slice(body, decode_config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(msgs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::BatchSeq;
    use crate::protocol::{
        Address, Down, Format, JobId, LogSpec, MailboxAddr, MailboxId, Peer, Rank, TaskMsg, Up,
    };

    fn sample() -> Vec<Msg> {
        let addr = Address {
            rank: Rank(3),
            mailbox: MailboxId(7),
            slot: 2,
        };
        let task = TaskMsg {
            addr,
            job: JobId(4),
            function: "fib".into(),
            label: Some("x".into()),
            args: vec![1, 2, 3],
            format: Format::Json,
            breadcrumbs: crate::protocol::Breadcrumbs::from_addresses(&[addr, addr]),
            log: LogSpec {
                level: 3,
                max_depth: Some(2),
            },
            context: vec![("k".into(), "v".into())],
            needs: 5,
        };
        vec![
            Msg::Down(Down::Assign {
                seq: BatchSeq(9),
                tasks: vec![task.clone()],
                overflow: false,
                all_occupied: true,
            }),
            Msg::Up(Up::Waiting {
                idle: 3,
                receipt: BatchSeq(8),
            }),
            Msg::Up(Up::Submit {
                tasks: vec![task],
                queued: 4,
                receipt: BatchSeq(7),
            }),
            Msg::Peer(Peer::Result {
                addr,
                value: vec![0; 100],
                tasks: crate::protocol::Subtree {
                    spawned: 5,
                    finished: 4,
                },
            }),
            Msg::Peer(Peer::Cancel {
                mailbox: MailboxAddr {
                    rank: Rank(1),
                    mailbox: MailboxId(2),
                },
            }),
        ]
    }

    #[test]
    fn round_trip() {
        let msgs = sample();
        assert_eq!(decode(&encode(&msgs)).unwrap(), msgs);
    }

    #[test]
    fn wrong_version_and_trailing_bytes_are_errors() {
        let mut b = encode(&sample());
        b[0] = 99;
        assert!(matches!(decode(&b), Err(CodecError::Version { got: 99 })));
        let mut b = encode(&sample());
        b.push(0);
        assert!(matches!(decode(&b), Err(CodecError::Trailing(1))));
        assert!(matches!(decode(&[]), Err(CodecError::Empty)));
    }

    /// Truncated, mutated and random packets decode to an error or to some messages, never a
    /// panic or a runaway allocation.
    #[test]
    fn mutated_packets_never_panic() {
        let good = encode(&sample());
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for cut in 0..good.len() {
            let _ = decode(&good[..cut]);
        }
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..1 + rnd() % 4 {
                let i = (rnd() as usize) % b.len();
                b[i] = rnd() as u8;
            }
            let _ = decode(&b);
            let n = (rnd() % 64) as usize;
            let mut r: Vec<u8> = (0..n).map(|_| rnd() as u8).collect();
            if !r.is_empty() {
                r[0] = WIRE_VERSION;
            }
            let _ = decode(&r);
        }
    }
}
