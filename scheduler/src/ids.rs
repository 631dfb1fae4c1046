//! Identifier newtypes. Executor ids are Spark's: positive integers, counted from 1 per
//! application (`ExecutorPodsAllocator.EXECUTOR_ID_COUNTER`), carried in the
//! `spark-exec-id` label and the pod name `<prefix>-exec-<id>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A Spark executor id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExecutorId(pub u64);

impl fmt::Display for ExecutorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ExecutorId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u32);
    };
}

id!(
    /// A stage (attempt) id.
    StageId
);
id!(
    /// A job id.
    JobId
);
id!(
    /// A shuffle id.
    ShuffleId
);
id!(
    /// An RDD id.
    RddId
);
