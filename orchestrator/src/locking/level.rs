//! `LockLevel` and `LockMode`: the lock hierarchy, whose declaration order is the acquisition order.

use std::fmt;
use std::str::FromStr;

/// A lock level. The derived `Ord` follows declaration order, which is Ganeti's `LEVELS`
/// order and the only order in which levels may be acquired: an owner may acquire a level only
/// while it holds nothing at that level or above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockLevel {
    /// `cluster`: the big Ganeti lock (`BGL`), held by every operation.
    Cluster,
    /// `instance`: locked by instance name.
    Instance,
    /// `nodegroup`.
    NodeGroup,
    /// `node`.
    Node,
    /// `node-res`: node resources.
    NodeRes,
    /// `network`.
    Network,
}

impl LockLevel {
    /// All levels in acquisition order.
    pub const ALL: [LockLevel; 6] = [
        Self::Cluster,
        Self::Instance,
        Self::NodeGroup,
        Self::Node,
        Self::NodeRes,
        Self::Network,
    ];

    /// Ganeti's name of the level, also the lock directory's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "cluster",
            Self::Instance => "instance",
            Self::NodeGroup => "nodegroup",
            Self::Node => "node",
            Self::NodeRes => "node-res",
            Self::Network => "network",
        }
    }
}

impl fmt::Display for LockLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("unknown lock level '{s}'"))
    }
}

/// Whether a lock is shared with other shared holders or held alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// Any number of shared holders, no exclusive one.
    Shared,
    /// One holder only.
    Exclusive,
}

impl LockMode {
    /// `shared` or `exclusive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Exclusive => "exclusive",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "shared" => Ok(Self::Shared),
            "exclusive" => Ok(Self::Exclusive),
            _ => Err(format!("unknown lock mode '{s}'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_ganetis_levels() {
        let mut sorted = LockLevel::ALL;
        sorted.sort();
        assert_eq!(sorted, LockLevel::ALL);
        assert!(LockLevel::Cluster < LockLevel::Instance);
        assert!(LockLevel::Instance < LockLevel::NodeGroup);
        assert!(LockLevel::NodeGroup < LockLevel::Node);
        assert!(LockLevel::Node < LockLevel::NodeRes);
        assert!(LockLevel::NodeRes < LockLevel::Network);
        for l in LockLevel::ALL {
            assert_eq!(l.as_str().parse::<LockLevel>().unwrap(), l);
        }
        assert!("bogus".parse::<LockLevel>().is_err());
    }
}
