//! Instants in a snapshot: a machine's deadlines written as absolute
//! `CLOCK_MONOTONIC` nanoseconds, which mean the same thing in every image
//! of the process (an exec keeps the clock) and in any process on the host.
//!
//! The machines never read a clock: the driver that snapshots or restores
//! one gives the anchor (an `Instant` and the monotonic reading taken with
//! it) for the length of the call, and the `serde` helpers here convert
//! through it.

use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    static ANCHOR: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// Runs `f` with `anchor` (`(instant, its CLOCK_MONOTONIC nanoseconds)`)
/// as the conversion for the instants `f` serializes or deserializes.
pub fn with_anchor<T>(anchor: (Instant, u64), f: impl FnOnce() -> T) -> T {
    let previous = ANCHOR.with(|cell| cell.replace(Some(anchor)));
    let result = f();
    ANCHOR.with(|cell| cell.set(previous));
    result
}

fn anchor<E: serde::de::Error>() -> Result<(Instant, u64), E> {
    ANCHOR
        .with(Cell::get)
        .ok_or_else(|| E::custom("an instant outside with_anchor"))
}

fn to_nanos(instant: Instant) -> Result<u64, String> {
    let (at, nanos) = ANCHOR
        .with(Cell::get)
        .ok_or_else(|| "an instant outside with_anchor".to_owned())?;
    let shift = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Ok(if instant >= at {
        nanos.saturating_add(shift(instant - at))
    } else {
        nanos.saturating_sub(shift(at - instant))
    })
}

fn from_nanos(at: Instant, nanos_at: u64, nanos: u64) -> Instant {
    if nanos >= nanos_at {
        at + Duration::from_nanos(nanos - nanos_at)
    } else {
        at.checked_sub(Duration::from_nanos(nanos_at - nanos))
            .unwrap_or(at)
    }
}

/// `#[serde(with = "mono")]` for an `Instant`.
pub fn serialize<S: serde::Serializer>(instant: &Instant, s: S) -> Result<S::Ok, S::Error> {
    let nanos = to_nanos(*instant).map_err(serde::ser::Error::custom)?;
    s.serialize_u64(nanos)
}

/// `#[serde(with = "mono")]` for an `Instant`.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
    let nanos: u64 = serde::Deserialize::deserialize(d)?;
    let (at, nanos_at) = anchor()?;
    Ok(from_nanos(at, nanos_at, nanos))
}

/// `#[serde(with = "mono::option")]` for an `Option<Instant>`.
pub mod option {
    use std::time::Instant;

    /// Serializes `None` as `null`.
    pub fn serialize<S: serde::Serializer>(
        instant: &Option<Instant>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match instant {
            Some(instant) => {
                let nanos = super::to_nanos(*instant).map_err(serde::ser::Error::custom)?;
                s.serialize_some(&nanos)
            }
            None => s.serialize_none(),
        }
    }

    /// Reads `null` as `None`.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Instant>, D::Error> {
        let nanos: Option<u64> = serde::Deserialize::deserialize(d)?;
        match nanos {
            None => Ok(None),
            Some(nanos) => {
                let (at, nanos_at) = super::anchor()?;
                Ok(Some(super::from_nanos(at, nanos_at, nanos)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Deadlines {
        #[serde(with = "super")]
        at: Instant,
        #[serde(with = "super::option")]
        maybe: Option<Instant>,
    }

    #[test]
    fn instants_survive_a_change_of_anchor() {
        let now = Instant::now();
        let deadlines = Deadlines {
            at: now + Duration::from_secs(5),
            maybe: Some(now - Duration::from_millis(300)),
        };
        let json = with_anchor((now, 1_000_000_000_000), || {
            serde_json::to_string(&deadlines).expect("serialize")
        });
        assert_eq!(json, r#"{"at":1005000000000,"maybe":999700000000}"#);
        // Read back 2 s of monotonic time later, in another "image": the
        // same absolute deadlines, 2 s closer.
        let later = now + Duration::from_secs(2);
        let back: Deadlines = with_anchor((later, 1_002_000_000_000), || {
            serde_json::from_str(&json).expect("deserialize")
        });
        assert_eq!(back.at, now + Duration::from_secs(5));
        assert_eq!(back.maybe, Some(now - Duration::from_millis(300)));
        assert!(
            serde_json::to_string(&deadlines).is_err(),
            "no anchor, no instant"
        );
    }
}
