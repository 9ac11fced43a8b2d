//! Wall-clock instants as the API carries them. The model never reads the clock: callers pass `now`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch. SageMaker's JSON protocol writes timestamps as epoch seconds
/// (with a fraction), which is what serde produces here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// Whole seconds between `earlier` and `self`, never negative.
    pub fn seconds_since(self, earlier: Timestamp) -> i64 {
        ((self.0 - earlier.0) / 1000).max(0)
    }
}

/// RFC 3339 in UTC to the second (`2026-11-24T03:10:00Z`), for messages and listings.
impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.0.div_euclid(1000);
        let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, proleptic Gregorian).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(f, "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", of_day / 3600, (of_day / 60) % 60, of_day % 60)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 {
            serializer.serialize_i64(self.0 / 1000)
        } else {
            serializer.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seconds = f64::deserialize(deserializer)?;
        if !seconds.is_finite() {
            return Err(serde::de::Error::custom("timestamp must be a finite number of epoch seconds"));
        }
        Ok(Self((seconds * 1000.0).round() as i64))
    }
}

#[cfg(test)]
mod display_tests {
    use super::*;

    #[test]
    fn displays_as_rfc3339_utc() {
        assert_eq!(Timestamp::from_millis(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp::from_millis(951_782_400_999).to_string(), "2000-02-29T00:00:00Z");
        assert_eq!(Timestamp::from_millis(1_795_489_505_000).to_string(), "2026-11-24T03:05:05Z");
        assert_eq!(Timestamp::from_millis(-1_000).to_string(), "1969-12-31T23:59:59Z");
    }
}
