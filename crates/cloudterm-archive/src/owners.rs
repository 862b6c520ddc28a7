//! [`OwnerMap`]: file owners of a user-namespaced tree, stored relative to the namespace's
//! host uid range so that the archive says "root" for the sandbox's root and a restore gives
//! the files back to whatever range the sandbox that receives them maps.

/// The uid/gid a host id outside the range is stored as (and a stored id past the range is
/// restored as): `nobody`, like the kernel shows unmapped ids inside a user namespace.
pub const OVERFLOW_ID: u32 = 65_534;

/// A contiguous host id range that stands for ids `0..count` inside a user namespace (the same
/// base for uids and gids, as the linux runtime maps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerMap {
    /// The host uid/gid of id 0 inside.
    pub host_base: u32,
    /// How many ids are mapped.
    pub count: u32,
}

impl OwnerMap {
    /// The id to store for a host id: its offset in the range, or [`OVERFLOW_ID`].
    pub fn to_archive(&self, host: u32) -> u32 {
        match host.checked_sub(self.host_base) {
            Some(inside) if inside < self.count => inside,
            _ => OVERFLOW_ID,
        }
    }

    /// The host id for a stored id. A stored id past the range (an archive written for a wider
    /// range) becomes [`OVERFLOW_ID`] inside (id 0 in a range too narrow to hold it), never an
    /// id outside the range: a restore can only ever hand files to ids the sandbox owns.
    pub fn to_host(&self, stored: u64) -> u32 {
        let inside = u32::try_from(stored).ok().filter(|id| *id < self.count).unwrap_or(OVERFLOW_ID);
        let inside = if inside < self.count { inside } else { 0 };
        self.host_base.saturating_add(inside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: OwnerMap = OwnerMap { host_base: 100_000, count: 65_536 };

    #[test]
    fn host_ids_become_offsets_and_back() {
        assert_eq!(MAP.to_archive(100_000), 0);
        assert_eq!(MAP.to_archive(101_000), 1000);
        assert_eq!(MAP.to_host(0), 100_000);
        assert_eq!(MAP.to_host(1000), 101_000);
    }

    #[test]
    fn ids_outside_the_range_are_nobody() {
        assert_eq!(MAP.to_archive(0), OVERFLOW_ID);
        assert_eq!(MAP.to_archive(99_999), OVERFLOW_ID);
        assert_eq!(MAP.to_archive(165_536), OVERFLOW_ID);
        assert_eq!(MAP.to_host(70_000), 100_000 + OVERFLOW_ID);
        assert_eq!(MAP.to_host(u64::MAX), 100_000 + OVERFLOW_ID);
    }

    #[test]
    fn a_narrow_range_never_maps_outside_itself() {
        let narrow = OwnerMap { host_base: 200_000, count: 1000 };
        assert_eq!(narrow.to_host(5000), 200_000);
        assert_eq!(narrow.to_host(999), 200_999);
    }
}
