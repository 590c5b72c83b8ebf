//! First-fit allocation of ranges in the shared `MAGLEV` slot array.

/// A range of slots: `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Range {
    pub start: u32,
    pub len: u32,
}

impl Range {
    /// Whether the two share a slot.
    pub fn overlaps(&self, other: &Range) -> bool {
        let end = |r: &Range| u64::from(r.start) + u64::from(r.len);
        u64::from(self.start) < end(other) && u64::from(other.start) < end(self)
    }
}

/// Which ranges of a fixed-size array are in use.
#[derive(Debug)]
pub struct SlotAllocator {
    capacity: u32,
    /// Allocated ranges, sorted by start.
    used: Vec<Range>,
}

impl SlotAllocator {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            used: Vec::new(),
        }
    }

    /// Reserves `len` consecutive slots, or `None` if no gap is that large.
    pub fn allocate(&mut self, len: u32) -> Option<Range> {
        let mut start = 0u32;
        let mut index = 0;
        for range in &self.used {
            if range.start - start >= len {
                break;
            }
            start = range.start + range.len;
            index += 1;
        }
        if self.capacity.checked_sub(start)? < len {
            return None;
        }
        let range = Range { start, len };
        self.used.insert(index, range);
        Some(range)
    }

    /// Marks `range` as in use (one recorded by an earlier process).
    pub fn reserve(&mut self, range: Range) {
        let index = self.used.partition_point(|r| r.start < range.start);
        self.used.insert(index, range);
    }

    /// Whether `range` lies within the array and overlaps no range in use.
    pub fn is_free(&self, range: Range) -> bool {
        range
            .start
            .checked_add(range.len)
            .is_some_and(|end| end <= self.capacity)
            && !self.used.iter().any(|r| r.overlaps(&range))
    }

    /// Returns `range` (from [`allocate`](Self::allocate)) to the pool.
    pub fn free(&mut self, range: Range) {
        self.used.retain(|r| *r != range);
    }

    /// Slots in use.
    pub fn used(&self) -> u32 {
        self.used.iter().map(|r| r.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_reuses_gaps_and_refuses_overflow() {
        let mut slots = SlotAllocator::new(100);
        let a = slots.allocate(40).unwrap();
        let b = slots.allocate(40).unwrap();
        assert_eq!((a.start, b.start), (0, 40));
        assert_eq!(slots.allocate(21), None);
        slots.free(a);
        assert_eq!(slots.allocate(30).unwrap().start, 0);
        assert_eq!(slots.allocate(10).unwrap().start, 30);
        assert_eq!(slots.allocate(20).unwrap().start, 80);
        assert_eq!(slots.used(), 100);
        assert_eq!(slots.allocate(1), None);
    }

    #[test]
    fn is_free_sees_overlaps_and_the_end() {
        let mut slots = SlotAllocator::new(100);
        slots.reserve(Range { start: 10, len: 10 });
        assert!(slots.is_free(Range { start: 0, len: 10 }));
        assert!(slots.is_free(Range { start: 20, len: 80 }));
        assert!(!slots.is_free(Range { start: 19, len: 2 }));
        assert!(!slots.is_free(Range { start: 5, len: 30 }));
        assert!(!slots.is_free(Range { start: 90, len: 11 }));
        assert!(!slots.is_free(Range {
            start: u32::MAX,
            len: 2
        }));
    }
}
