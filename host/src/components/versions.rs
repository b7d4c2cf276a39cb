//! The versions a component serves, and how a change moves between them:
//! one state machine for a host's registry (over compiled versions), the
//! state it keeps on disk (over saved versions) and the cluster's desired
//! state (over digests).

use serde::{Deserialize, Serialize};

/// What a component serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Versions<V> {
    /// The version every request gets, but the canary's share.
    pub current: V,
    /// Where a rollback goes. (An absent `Option` reads as `None`.)
    pub previous: Option<V>,
    pub canary: Option<Canary<V>>,
}

/// A version serving a share of a component's requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Canary<V> {
    #[serde(alias = "digest")]
    pub version: V,
    /// Percent of requests, 1 to 99.
    pub percent: u8,
}

/// Why a change cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("there is no previous version to roll back to")]
    NoPrevious,
    #[error("there is no canary to promote")]
    NoCanary,
}

impl<V: Clone> Versions<V> {
    /// Serving `current` only.
    pub fn new(current: V) -> Self {
        Versions {
            current,
            previous: None,
            canary: None,
        }
    }

    /// `version` for every request, the current one kept for a rollback;
    /// or, with `canary`, `version` for that percent of them.
    pub fn swap(&self, version: V, canary: Option<u8>) -> Self {
        match canary {
            Some(percent) => Versions {
                canary: Some(Canary { version, percent }),
                ..self.clone()
            },
            None => Versions {
                current: version,
                previous: Some(self.current.clone()),
                canary: None,
            },
        }
    }

    /// Without the canary, if there is one; else back to the previous
    /// version, the current one becoming the previous.
    pub fn rollback(&self) -> Result<Self, Refused> {
        if self.canary.is_some() {
            return Ok(Versions {
                canary: None,
                ..self.clone()
            });
        }
        let previous = self.previous.clone().ok_or(Refused::NoPrevious)?;
        Ok(Versions {
            current: previous,
            previous: Some(self.current.clone()),
            canary: None,
        })
    }

    /// The canary for every request, the current version kept for a rollback.
    pub fn promote(&self) -> Result<Self, Refused> {
        let canary = self.canary.clone().ok_or(Refused::NoCanary)?;
        Ok(Versions {
            current: canary.version,
            previous: Some(self.current.clone()),
            canary: None,
        })
    }

    /// Serving `current` and `canary`, as decided elsewhere (the cluster):
    /// the current version becomes the previous one if it changes, as
    /// `same` tells versions apart.
    pub fn converge(&self, current: V, canary: Option<Canary<V>>, same: impl Fn(&V, &V) -> bool) -> Self {
        let previous = match same(&current, &self.current) {
            true => self.previous.clone(),
            false => Some(self.current.clone()),
        };
        Versions {
            current,
            previous,
            canary,
        }
    }

    /// The same change over another kind of version.
    pub fn map<W>(&self, f: impl Fn(&V) -> W) -> Versions<W> {
        Versions {
            current: f(&self.current),
            previous: self.previous.as_ref().map(&f),
            canary: self.canary.as_ref().map(|c| Canary {
                version: f(&c.version),
                percent: c.percent,
            }),
        }
    }

    /// Every version named: current, previous, canary.
    pub fn all(&self) -> impl Iterator<Item = &V> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .chain(self.canary.as_ref().map(|c| &c.version))
    }

    /// The version a request gets: the canary for its percent of the
    /// rolls, the current version otherwise.
    pub fn pick(&self, roll: u64) -> &V {
        match &self.canary {
            Some(canary) if roll % 100 < u64::from(canary.percent) => &canary.version,
            _ => &self.current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(version: &'static str, percent: u8) -> Option<Canary<&'static str>> {
        Some(Canary { version, percent })
    }

    #[test]
    fn a_swap_keeps_the_version_it_replaces_for_a_rollback() {
        let one = Versions::new("a");
        let two = one.swap("b", None);
        assert_eq!((two.current, two.previous, two.canary.clone()), ("b", Some("a"), None));
        let back = two.rollback().unwrap();
        assert_eq!((back.current, back.previous), ("a", Some("b")));
        assert_eq!(one.rollback(), Err(Refused::NoPrevious));
    }

    #[test]
    fn a_canary_is_dropped_by_a_rollback_and_made_current_by_a_promote() {
        let one = Versions::new("a").swap("b", None);
        let trying = one.swap("c", Some(10));
        assert_eq!((trying.current, trying.canary.clone()), ("b", canary("c", 10)));
        assert_eq!(trying.rollback().unwrap(), one, "the canary goes, nothing else");
        let promoted = trying.promote().unwrap();
        assert_eq!(
            (promoted.current, promoted.previous, promoted.canary),
            ("c", Some("b"), None)
        );
        assert_eq!(one.promote(), Err(Refused::NoCanary));
        // A swap while a canary is out replaces both.
        let swapped = trying.swap("d", None);
        assert_eq!(
            (swapped.current, swapped.previous, swapped.canary),
            ("d", Some("b"), None)
        );
    }

    #[test]
    fn converging_keeps_the_previous_version_unless_the_current_one_changes() {
        let one = Versions::new("a").swap("b", None);
        let same = one.converge("b", canary("c", 50), |a, b| a == b);
        assert_eq!((same.previous, same.canary), (Some("a"), canary("c", 50)));
        let moved = one.converge("c", None, |a, b| a == b);
        assert_eq!((moved.current, moved.previous), ("c", Some("b")));
    }

    #[test]
    fn a_request_gets_the_canary_for_its_share_of_rolls() {
        let versions = Versions::new("a").swap("b", Some(30));
        let to_canary = (0..100).filter(|roll| *versions.pick(*roll) == "b").count();
        assert_eq!(to_canary, 30);
        assert_eq!(versions.all().copied().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn the_desired_state_of_earlier_versions_still_reads() {
        let read: Versions<String> =
            serde_json::from_str(r#"{"current":"x","canary":{"digest":"y","percent":5}}"#).unwrap();
        assert_eq!(read.canary.unwrap().version, "y");
    }
}
