//! TCP sequence numbers: 32-bit values compared with wrapping (RFC 1982 style) arithmetic.

use std::cmp::Ordering;
use std::fmt;

/// A TCP sequence or acknowledgement number. Ordering wraps: `a < b` when `b` is less than
/// 2^31 ahead of `a`, so comparisons stay right across the 2^32 wrap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNum(pub u32);

impl SeqNum {
    /// The number `n` bytes further on (wrapping).
    #[must_use]
    pub const fn add(self, n: u32) -> Self {
        Self(self.0.wrapping_add(n))
    }

    /// The number `n` bytes before (wrapping).
    #[must_use]
    pub const fn sub(self, n: u32) -> Self {
        Self(self.0.wrapping_sub(n))
    }

    /// Signed distance from `other` to `self` (positive when `self` is ahead).
    #[must_use]
    pub const fn diff(self, other: Self) -> i32 {
        // Reinterpreting the wrapped difference as i32 is the definition of TCP ordering.
        self.0.wrapping_sub(other.0) as i32
    }

    /// The later of two numbers in wrapping order.
    #[must_use]
    pub fn max(self, other: Self) -> Self {
        if self.diff(other) >= 0 {
            self
        } else {
            other
        }
    }
}

impl PartialOrd for SeqNum {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.diff(*other).cmp(&0))
    }
}

impl fmt::Debug for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeqNum({})", self.0)
    }
}

impl fmt::Display for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_wraps_around_zero() {
        let a = SeqNum(u32::MAX - 5);
        let b = a.add(10);
        assert_eq!(b.0, 4);
        assert!(a < b);
        assert!(b > a);
        assert_eq!(b.diff(a), 10);
        assert_eq!(a.diff(b), -10);
        assert_eq!(a.max(b), b);
        assert_eq!(b.sub(10), a);
    }

    #[test]
    fn equal_numbers_compare_equal() {
        assert_eq!(SeqNum(7).partial_cmp(&SeqNum(7)), Some(Ordering::Equal));
        assert_eq!(SeqNum(0).sub(1), SeqNum(u32::MAX));
    }
}
