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
