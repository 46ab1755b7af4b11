//! Validated numbers: one type per kind of number the CLI and the recipes take.
//!
//! A timeout of `-5`, a rate of `nan` or `1e-300`, a thread count of `100000` are not settings
//! but typos, and each used to end in a panic deep inside a library (`Duration::from_secs_f64`),
//! a silent fallback (a negative rate meant "unlimited") or a hang. Every number that crosses
//! the command line or a recipe is one of these types instead, so the check happens once, at
//! the edge, with a message giving the accepted range:
//!
//! - as a clap argument (through [`FromStr`]): `error: invalid value '-5' for '--timeout
//!   <TIMEOUT>': expected seconds, a finite number above 0 and at most 86400`;
//! - as a recipe key (through serde): the same message, with the key (`in fetch.timeout_s`).
//!
//! Code that holds one of these values may use it without checking again: a [`Seconds`] is
//! always a valid [`Duration`], a [`Rate`] always gives a finite interval.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number outside the range its kind accepts; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LimitError {
    message: String,
}

impl LimitError {
    fn new(message: String) -> Self {
        LimitError { message }
    }
}

/// Defines a validated float type: the range, and the words that describe it.
macro_rules! float_kind {
    (
        $(#[$doc:meta])*
        $name:ident, what = $what:literal, range = $range:literal,
        check = |$v:ident| $check:expr
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
        pub struct $name(f64);

        impl $name {
            /// What this kind accepts, for messages.
            pub const ACCEPTS: &'static str = concat!($what, ", ", $range);

            /// The value, if it is in range.
            pub fn new(value: f64) -> Result<Self, LimitError> {
                if Self::ok(value) {
                    Ok($name(value))
                } else {
                    Err(LimitError::new(format!(
                        // Debug prints 1e-300 as such, not as 300 digits.
                        "{value:?} is out of range: expected {}",
                        Self::ACCEPTS
                    )))
                }
            }

            /// A value known to be in range (a default written in the code); a constant out of
            /// range fails to compile when used in a `const`, and panics otherwise.
            pub const fn lit(value: f64) -> Self {
                assert!(Self::ok(value), concat!("constant out of range for ", stringify!($name)));
                $name(value)
            }

            const fn ok($v: f64) -> bool {
                $v.is_finite() && $check
            }

            /// The number.
            pub const fn get(self) -> f64 {
                self.0
            }

            /// The number as `f32` (the networks' precision).
            pub const fn f32(self) -> f32 {
                self.0 as f32
            }
        }

        impl FromStr for $name {
            type Err = LimitError;
            fn from_str(s: &str) -> Result<Self, LimitError> {
                let v: f64 = s.trim().parse().map_err(|_| {
                    LimitError::new(format!("`{s}` is not a number: expected {}", Self::ACCEPTS))
                })?;
                Self::new(v)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_f64(self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // TOML integers (`timeout_s = 5`) are accepted as well as floats.
                let v = f64::deserialize(d)?;
                $name::new(v).map_err(serde::de::Error::custom)
            }
        }

        impl From<$name> for f64 {
            fn from(v: $name) -> f64 {
                v.0
            }
        }
    };
}

float_kind! {
    /// A time limit in seconds (a timeout, a lifetime): above zero, at most a day. Always a
    /// valid [`Duration`].
    Seconds, what = "seconds", range = "a finite number above 0 and at most 86400",
    check = |v| v > 0.0 && v <= 86_400.0
}

float_kind! {
    /// A wait in seconds that may be zero (a backoff, the longest `Retry-After` honoured): from
    /// 0 to a day.
    Delay, what = "seconds", range = "a finite number from 0 to 86400",
    check = |v| v >= 0.0 && v <= 86_400.0
}

float_kind! {
    /// Events per second (requests to one host): 0 means unlimited; otherwise from one per
    /// 1000 s to 10 000 per second, so the interval between events is always a valid duration.
    Rate, what = "events per second", range = "0 (unlimited) or a finite number from 0.001 to 10000",
    check = |v| v == 0.0 || (v >= 0.001 && v <= 10_000.0)
}

float_kind! {
    /// A probability, share or score: from 0 to 1.
    Fraction, what = "a fraction", range = "a finite number from 0 to 1",
    check = |v| v >= 0.0 && v <= 1.0
}

float_kind! {
    /// A cosine-similarity threshold: from -1 to 1.
    Similarity, what = "a cosine similarity", range = "a finite number from -1 to 1",
    check = |v| v >= -1.0 && v <= 1.0
}

float_kind! {
    /// A non-negative multiplier or scale (standard deviations, margins, guidance): from 0 to
    /// 1000.
    Factor, what = "a factor", range = "a finite number from 0 to 1000",
    check = |v| v >= 0.0 && v <= 1000.0
}

float_kind! {
    /// A length in pixels given as a threshold (a face's smallest side): from 0 to 65536.
    Pixels, what = "pixels", range = "a finite number from 0 to 65536",
    check = |v| v >= 0.0 && v <= 65_536.0
}

impl Seconds {
    /// As a duration; never panics, the range guarantees it.
    pub fn duration(self) -> Duration {
        Duration::from_secs_f64(self.0)
    }
}

impl Delay {
    /// As a duration; never panics, the range guarantees it.
    pub fn duration(self) -> Duration {
        Duration::from_secs_f64(self.0)
    }
}

impl Rate {
    /// The time between two events, or `None` for unlimited.
    pub fn interval(self) -> Option<Duration> {
        (self.0 > 0.0).then(|| Duration::from_secs_f64(1.0 / self.0))
    }
}

/// A whole number from `MIN` to `MAX` inclusive: counts, sizes, limits. Aliases name the kinds
/// ([`Threads`], [`Shards`], [`Concurrency`], …) so that each kind has one range everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Count<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> Count<MIN, MAX> {
    /// The value, if it is in range.
    pub fn new(value: u64) -> Result<Self, LimitError> {
        if (MIN..=MAX).contains(&value) {
            Ok(Count(value))
        } else {
            Err(Self::out_of_range(value))
        }
    }

    /// A value known to be in range (a default written in the code).
    pub const fn lit(value: u64) -> Self {
        assert!(value >= MIN && value <= MAX, "constant out of range");
        Count(value)
    }

    fn out_of_range(value: impl fmt::Display) -> LimitError {
        LimitError::new(format!(
            "{value} is out of range: expected {}",
            Self::accepts()
        ))
    }

    /// What this kind accepts, for messages.
    pub fn accepts() -> String {
        format!("a whole number from {MIN} to {MAX}")
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The number as `usize` (the ranges used fit in 32 bits where it matters).
    pub const fn usize(self) -> usize {
        self.0 as usize
    }

    /// The number as `u32`, saturating.
    pub const fn u32(self) -> u32 {
        if self.0 > u32::MAX as u64 {
            u32::MAX
        } else {
            self.0 as u32
        }
    }
}

impl<const MIN: u64, const MAX: u64> FromStr for Count<MIN, MAX> {
    type Err = LimitError;
    fn from_str(s: &str) -> Result<Self, LimitError> {
        let t = s.trim();
        match t.parse::<u64>() {
            Ok(v) => Self::new(v),
            // A negative or huge integer is out of range; anything else is not a whole number.
            Err(_) if t.parse::<i128>().is_ok() => Err(Self::out_of_range(t)),
            Err(_) => Err(LimitError::new(format!(
                "`{s}` is not a whole number: expected {}",
                Self::accepts()
            ))),
        }
    }
}

impl<const MIN: u64, const MAX: u64> fmt::Display for Count<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<const MIN: u64, const MAX: u64> Serialize for Count<MIN, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Count<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Read as i64 (TOML's integers) so that a negative value gets the range message.
        let v = i64::deserialize(d)?;
        u64::try_from(v)
            .map_err(|_| Self::out_of_range(v))
            .and_then(Self::new)
            .map_err(serde::de::Error::custom)
    }
}

impl<const MIN: u64, const MAX: u64> From<Count<MIN, MAX>> for u64 {
    fn from(v: Count<MIN, MAX>) -> u64 {
        v.0
    }
}

/// Worker threads; 0 means one per core. More than 1024 is a typo, not a machine.
pub type Threads = Count<0, 1024>;
/// Shards a stage's rows are split into.
pub type Shards = Count<1, 100_000>;
/// Requests or tasks in flight at once.
pub type Concurrency = Count<1, 4096>;
/// Retries after a first attempt.
pub type Retries = Count<0, 100>;
/// Redirects followed.
pub type Redirects = Count<0, 100>;
/// A size limit in bytes: from 1 byte to 1 TiB.
pub type ByteLimit = Count<1, { 1 << 40 }>;
/// A size limit in pixels (width × height): from 1 to 10¹².
pub type PixelLimit = Count<1, 1_000_000_000_000>;
/// A side in pixels (an image's or a crop's): up to 65536.
pub type Side = Count<0, 65_536>;
/// A Hamming distance between 64-bit hashes.
pub type Hamming = Count<0, 64>;
/// How many items of something (faces per image, images per identity, votes, raters): at
/// least 1, at most ten million.
pub type Amount = Count<1, 10_000_000>;
/// Resamples or repetitions that may be zero (0 turns the bootstrap off): at most a million.
pub type Resamples = Count<0, 1_000_000>;

/// Resolves a [`Threads`] value: 0 becomes the number of cores.
pub fn threads_or_cores(t: Threads) -> usize {
    match t.usize() {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_refuse_nan_infinities_negatives_and_absurd_sizes() {
        for bad in ["nan", "NaN", "inf", "-inf", "-5", "0", "1e30", "abc", ""] {
            let e = bad.parse::<Seconds>().unwrap_err().to_string();
            assert!(e.contains("above 0 and at most 86400"), "{bad}: {e}");
        }
        assert_eq!(
            "1.5".parse::<Seconds>().unwrap().duration(),
            Duration::from_millis(1500)
        );
        for bad in ["nan", "-2", "1e-300", "1e9"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!("0".parse::<Rate>().unwrap().interval(), None);
        assert_eq!(
            "4".parse::<Rate>().unwrap().interval(),
            Some(Duration::from_millis(250))
        );
        assert!("0".parse::<Delay>().is_ok());
        assert!("1.01".parse::<Fraction>().is_err());
        assert!("-1".parse::<Similarity>().is_ok());
        assert!("nan".parse::<Factor>().is_err());
    }

    #[test]
    fn counts_name_their_range() {
        let e = "100000".parse::<Threads>().unwrap_err().to_string();
        assert!(e.contains("from 0 to 1024"), "{e}");
        let e = "-1".parse::<Shards>().unwrap_err().to_string();
        assert!(
            e.contains("-1 is out of range") && e.contains("from 1 to"),
            "{e}"
        );
        let e = "2.5".parse::<Shards>().unwrap_err().to_string();
        assert!(e.contains("not a whole number"), "{e}");
        assert!("0".parse::<Shards>().is_err());
        assert_eq!("8".parse::<Concurrency>().unwrap().usize(), 8);
        assert!("99999999999999999999999".parse::<Amount>().is_err());
    }

    #[test]
    fn recipe_keys_get_the_same_checks_with_the_key_named() {
        #[derive(Debug, Deserialize, Serialize)]
        struct T {
            timeout_s: Seconds,
            threads: Threads,
        }
        let ok: T = toml::from_str("timeout_s = 5\nthreads = 4").unwrap();
        assert_eq!((ok.timeout_s.get(), ok.threads.get()), (5.0, 4));
        let e = toml::from_str::<T>("timeout_s = nan\nthreads = 4")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("timeout_s") && e.contains("at most 86400"),
            "{e}"
        );
        let e = toml::from_str::<T>("timeout_s = 1\nthreads = -3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("threads") && e.contains("from 0 to 1024"), "{e}");
        let v: toml::Value = toml::from_str("timeout_s = -1.0\nthreads = 1").unwrap();
        let e = v.try_into::<T>().unwrap_err().to_string();
        assert!(e.contains("timeout_s"), "{e}");
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"timeout_s":5.0,"threads":4}"#
        );
    }
}
