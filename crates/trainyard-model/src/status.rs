//! Job states and the transitions between them, as SageMaker reports them.

use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                raw.parse().map_err(serde::de::Error::custom)
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $(stringify!($variant) => Ok($name::$variant),)+
                    _ => Err(UnknownValue { kind: stringify!($name), value: s.to_string() }),
                }
            }
        }
    };
}

/// A stored or received string that is not a member of the enum it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a {kind}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

string_enum!(
    /// `HyperParameterTuningJobStatus` (SageMaker also has `Deleting`/`DeleteFailed`, for the delete
    /// operation we do not serve).
    TuningJobStatus { InProgress, Completed, Failed, Stopping, Stopped }
);

string_enum!(
    /// `TrainingJobStatus`.
    TrainingJobStatus { InProgress, Completed, Failed, Stopping, Stopped }
);

string_enum!(
    /// `SecondaryStatus`: the detailed state within a primary status.
    SecondaryStatus {
        Starting, LaunchingMLInstances, PreparingTrainingStack, Downloading, DownloadingTrainingImage,
        Training, Uploading, Stopping, Stopped, MaxRuntimeExceeded, Completed, Failed, Interrupted,
        MaxWaitTimeExceeded, Updating, Restarting, Pending,
    }
);

impl TuningJobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Stopped)
    }

    /// The transitions a tuning job may make: `InProgress -> Completed | Failed | Stopping`,
    /// `Stopping -> Stopped` (a stop that races with completion may still end `Completed`/`Failed`).
    pub fn may_become(self, next: TuningJobStatus) -> bool {
        use TuningJobStatus::*;
        matches!((self, next), (InProgress, Completed | Failed | Stopping) | (Stopping, Stopped | Completed | Failed))
    }
}

impl TrainingJobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Stopped)
    }

    pub fn may_become(self, next: TrainingJobStatus) -> bool {
        use TrainingJobStatus::*;
        matches!(
            (self, next),
            (InProgress, Completed | Failed | Stopping | Stopped) | (Stopping, Stopped | Completed | Failed)
        )
    }
}

impl SecondaryStatus {
    /// The primary status each secondary status belongs to.
    pub fn primary(self) -> TrainingJobStatus {
        use SecondaryStatus::*;
        match self {
            Completed => TrainingJobStatus::Completed,
            Failed => TrainingJobStatus::Failed,
            Stopping => TrainingJobStatus::Stopping,
            Stopped | MaxRuntimeExceeded | MaxWaitTimeExceeded => TrainingJobStatus::Stopped,
            _ => TrainingJobStatus::InProgress,
        }
    }
}

string_enum!(
    /// `ObjectiveStatus` of a tuning job's trial: whether its objective metric was obtained.
    ObjectiveStatus { Succeeded, Pending, Failed }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in SecondaryStatus::ALL {
            assert_eq!(s.as_str().parse::<SecondaryStatus>(), Ok(*s));
        }
        assert!("Running".parse::<TrainingJobStatus>().is_err());
    }

    #[test]
    fn terminal_states_are_final() {
        for from in TrainingJobStatus::ALL.iter().filter(|s| s.is_terminal()) {
            for to in TrainingJobStatus::ALL {
                assert!(!from.may_become(*to), "{from} -> {to}");
            }
        }
        assert!(TuningJobStatus::InProgress.may_become(TuningJobStatus::Stopping));
        assert!(!TuningJobStatus::InProgress.may_become(TuningJobStatus::Stopped));
        assert_eq!(SecondaryStatus::MaxRuntimeExceeded.primary(), TrainingJobStatus::Stopped);
    }
}
