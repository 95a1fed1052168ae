//! A bounded flow table: hash index from flow key to a slab slot, with an intrusive
//! least-recently-active list so the oldest idle flow is found (and evicted) in O(1).
//!
//! With many flows every packet's lookup is a cache miss (the index entry, then the flow
//! record); [`FlowTable::prefetch_index`] and [`FlowTable::prefetch_slot`] let a caller that
//! knows the next packets' keys start those loads early, so the misses of several packets
//! overlap instead of following one another.

use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use std::net::{IpAddr, SocketAddr};

const NIL: u32 = u32::MAX;

/// A fast, non-cryptographic hasher for flow keys (keys come from packets, but the table is
/// bounded, so a flood of colliding keys only costs time, never memory).
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        for &b in chunks.remainder() {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.hash = (self.hash.rotate_left(5) ^ i).wrapping_mul(SEED);
    }
    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        // Multiplying only carries entropy upwards and hash tables index by the low bits:
        // rotate the well-mixed high bits down.
        self.hash.rotate_left(26)
    }
}

/// An endpoint packed for hashing: IPv4 addresses as v4-mapped IPv6.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Ep {
    addr: [u8; 16],
    port: u16,
}

impl Ep {
    #[must_use]
    #[inline]
    pub fn new(ip: IpAddr, port: u16) -> Self {
        // Built as one 128-bit word (::ffff:a.b.c.d for IPv4), not byte by byte.
        let word = match ip {
            IpAddr::V4(a) => (0xffff_u128 << 32) | u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        Self {
            addr: word.to_be_bytes(),
            port,
        }
    }

    #[inline]
    fn word(&self) -> u128 {
        u128::from_be_bytes(self.addr)
    }
}

/// Address bytes, then port: the same order as comparing the fields in turn.
impl Ord for Ep {
    #[inline]
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.word(), self.port).cmp(&(o.word(), o.port))
    }
}

impl PartialOrd for Ep {
    #[inline]
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// A direction-free flow key: the two endpoints in sorted order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FlowKey {
    lo: Ep,
    hi: Ep,
}

impl FlowKey {
    /// Whether `ep` is the key's lower endpoint (the one a packet from it has as source
    /// when it sorts first).
    #[must_use]
    #[inline]
    pub fn is_lo(&self, ep: &Ep) -> bool {
        self.lo == *ep
    }

    /// The key of the flow a kernel record is for (see
    /// [`kernel_key`](crate::io::ebpf::kernel_key)).
    #[must_use]
    pub fn from_kernel_key(k: &[u32; 10]) -> Self {
        let ip = |w: &[u32]| -> IpAddr {
            if k[9] == 4 {
                IpAddr::V4(std::net::Ipv4Addr::from(w[0]))
            } else {
                let mut o = [0u8; 16];
                for (chunk, x) in o.chunks_exact_mut(4).zip(w) {
                    chunk.copy_from_slice(&x.to_be_bytes());
                }
                IpAddr::V6(std::net::Ipv6Addr::from(o))
            }
        };
        Self::new(
            Ep::new(ip(&k[0..4]), (k[8] >> 16) as u16),
            Ep::new(ip(&k[4..8]), k[8] as u16),
        )
    }

    /// The key for a packet between `a` and `b` (either direction gives the same key).
    #[must_use]
    pub fn new(a: Ep, b: Ep) -> Self {
        if a <= b {
            Self { lo: a, hi: b }
        } else {
            Self { lo: b, hi: a }
        }
    }
}

impl std::hash::Hash for FlowKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // Fold each address to one word: equal keys still hash equally, in 3 rounds.
        let fold = |a: &[u8; 16]| {
            let w = u128::from_ne_bytes(*a);
            (w as u64) ^ ((w >> 64) as u64).rotate_left(23)
        };
        h.write_u64(fold(&self.lo.addr));
        h.write_u64(fold(&self.hi.addr));
        h.write_u32(u32::from(self.lo.port) << 16 | u32::from(self.hi.port));
    }
}

/// The hash a key is filed under (for the `*_hashed` lookups and the prefetches).
#[must_use]
#[inline]
pub fn hash_key(k: &FlowKey) -> u64 {
    BuildHasherDefault::<FxHasher>::default().hash_one(k)
}

/// Ask the CPU to start loading the cache line at `p` (a hint: it never faults).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64; a prefetch reads nothing and never faults, whatever
    // the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Ask the kernel to back `v`'s buffer with huge pages where it can (a hint; Linux only).
/// With 100,000 flows the records span tens of MiB: on 4 KiB pages nearly every packet's
/// lookup also misses the TLB, and its page walk is more cache misses.
fn advise_huge<T>(v: &Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = v.as_ptr() as usize;
        let len = v.capacity() * std::mem::size_of::<T>();
        if len < 2 << 20 {
            return;
        }
        let aligned = start & !(PAGE - 1);
        // SAFETY: madvise with MADV_HUGEPAGE only changes how the kernel backs the pages
        // of this mapping (our own heap buffer, rounded down to its page); it never
        // changes their contents or validity, and a failure is harmless.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                len + (start - aligned),
                libc::MADV_HUGEPAGE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// The 32 bits of a hash the index keeps: they pick the home bucket too, so entries can be
/// moved (on removal, on growth) without their keys.
#[inline]
fn tag(hash: u64) -> u32 {
    (hash ^ (hash >> 32)) as u32
}

/// Open addressing with linear probing, at most half full. Each entry is `tag << 32 |
/// (slot + 1)`, 0 when empty; a key's home bucket is `tag & mask`. Removal shifts the entries
/// after the hole back (no tombstones), so probes stay short under churn.
struct Index {
    e: Vec<u64>,
    mask: usize,
    len: usize,
}

impl Index {
    fn new() -> Self {
        Self {
            e: vec![0; 64],
            mask: 63,
            len: 0,
        }
    }

    /// Position and slot of the first entry with `tag` whose slot satisfies `eq`.
    #[inline]
    fn find(&self, tag: u32, mut eq: impl FnMut(u32) -> bool) -> Option<(usize, u32)> {
        let mut i = tag as usize & self.mask;
        loop {
            let x = *self.e.get(i)?;
            if x == 0 {
                return None;
            }
            if (x >> 32) as u32 == tag {
                let slot = (x as u32).wrapping_sub(1);
                if eq(slot) {
                    return Some((i, slot));
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    fn insert(&mut self, tag: u32, slot: u32) {
        if (self.len + 1) * 2 > self.e.len() {
            self.grow();
        }
        self.put((u64::from(tag) << 32) | u64::from(slot.wrapping_add(1)));
        self.len += 1;
    }

    fn put(&mut self, x: u64) {
        let mut i = (x >> 32) as usize & self.mask;
        while self.e[i] != 0 {
            i = (i + 1) & self.mask;
        }
        self.e[i] = x;
    }

    fn grow(&mut self) {
        let bigger = vec![0; self.e.len() * 2];
        advise_huge(&bigger);
        let old = std::mem::replace(&mut self.e, bigger);
        self.mask = self.e.len() - 1;
        for x in old.into_iter().filter(|&x| x != 0) {
            self.put(x);
        }
    }

    /// Empty the entry at `hole`, moving later entries of the run back into it.
    fn remove_at(&mut self, mut hole: usize) {
        self.e[hole] = 0;
        self.len -= 1;
        let mut k = hole;
        loop {
            k = (k + 1) & self.mask;
            let x = self.e[k];
            if x == 0 {
                return;
            }
            let home = (x >> 32) as usize & self.mask;
            // It may fill the hole unless its home lies after the hole, up to it.
            if k.wrapping_sub(home) & self.mask >= k.wrapping_sub(hole) & self.mask {
                self.e[hole] = x;
                self.e[k] = 0;
                hole = k;
            }
        }
    }
}

fn key_at<V>(slots: &[Slot<V>], i: u32) -> Option<&FlowKey> {
    slots.get(i as usize).filter(|s| s.occupied).map(|s| &s.key)
}

/// Endpoint pair as socket addresses.
#[must_use]
pub fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// A key and its value, on their own cache lines: the key, whether the slot is in use and
/// the value's first bytes (what a lookup reads) start a line. A free slot keeps its stale
/// key and a default value; the index never points at it.
#[repr(C, align(64))]
struct Slot<V> {
    key: FlowKey,
    occupied: bool,
    value: V,
}

/// Where a value starts in its slot (after the key), for layout checks.
#[must_use]
pub const fn value_offset<V>() -> usize {
    std::mem::offset_of!(Slot<V>, value)
}

/// Bytes a slot of `V` takes in the table (a multiple of the 64-byte cache line).
#[must_use]
pub const fn slot_size<V>() -> usize {
    std::mem::size_of::<Slot<V>>()
}

/// Where a slot keeps whether it is in use (every lookup reads it), for layout checks.
#[must_use]
pub const fn occupied_offset<V>() -> usize {
    std::mem::offset_of!(Slot<V>, occupied)
}

/// LRU links, kept apart from the (large) values so list updates stay in cache.
#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

/// Bounded map from [`FlowKey`] to `V`, ordered by last activity.
pub struct FlowTable<V> {
    /// Slot indices by key hash; keys live only in the slots, so a lookup reads an 8-byte
    /// entry and then the slot it needs anyway.
    map: Index,
    slots: Vec<Slot<V>>,
    links: Vec<Link>,
    free: Vec<u32>,
    /// Most recently touched.
    head: u32,
    /// Least recently touched.
    tail: u32,
    cap: usize,
}

impl<V: Default> FlowTable<V> {
    /// A table holding at most `cap` flows (at least 1).
    #[must_use]
    pub fn new(cap: usize) -> Self {
        Self {
            map: Index::new(),
            slots: Vec::new(),
            links: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            cap: cap.clamp(1, (NIL - 1) as usize),
        }
    }

    /// Flows held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len
    }

    /// True when empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.len == 0
    }

    /// True when inserting a new key would evict.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.map.len >= self.cap
    }

    fn find(&self, key: &FlowKey) -> Option<u32> {
        self.find_hashed(key, hash_key(key))
    }

    #[inline]
    fn find_hashed(&self, key: &FlowKey, hash: u64) -> Option<u32> {
        let slots = &self.slots;
        self.map
            .find(tag(hash), |j| key_at(slots, j) == Some(key))
            .map(|(_, j)| j)
    }

    /// Start loading the index entry a key with `hash` would be found at.
    #[inline]
    pub fn prefetch_index(&self, hash: u64) {
        if let Some(x) = self.map.e.get(tag(hash) as usize & self.map.mask) {
            prefetch(x);
        }
    }

    /// Start loading the key and the first `hot` bytes of the value a key with `hash` most
    /// likely has (the first entry with its tag; best after [`Self::prefetch_index`] had
    /// time to bring the entry in).
    #[inline]
    pub fn prefetch_slot(&self, hash: u64, hot: usize) {
        if let Some((_, j)) = self.map.find(tag(hash), |_| true) {
            if let Some(s) = self.slots.get(j as usize) {
                let p = std::ptr::from_ref(s).cast::<u8>();
                let end = (std::mem::offset_of!(Slot<V>, value) + hot + 8)
                    .min(std::mem::size_of::<Slot<V>>());
                // Cache lines are 64 bytes; the slot need not start on one.
                let stop = p.wrapping_add(end);
                let mut line = p.wrapping_sub(p as usize & 63);
                while line < stop {
                    prefetch(line);
                    line = line.wrapping_add(64);
                }
            }
        }
    }

    fn slot(&self, i: u32) -> Option<&Slot<V>> {
        self.slots.get(i as usize).filter(|s| s.occupied)
    }

    fn slot_mut(&mut self, i: u32) -> Option<&mut Slot<V>> {
        self.slots.get_mut(i as usize).filter(|s| s.occupied)
    }

    fn link_mut(&mut self, i: u32) -> Option<&mut Link> {
        self.links.get_mut(i as usize)
    }

    fn unlink(&mut self, i: u32) {
        let Some(&Link { prev, next }) = self.links.get(i as usize) else {
            return;
        };
        if let Some(p) = self.link_mut(prev) {
            p.next = next;
        } else {
            self.head = next;
        }
        if let Some(n) = self.link_mut(next) {
            n.prev = prev;
        } else {
            self.tail = prev;
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        if let Some(s) = self.link_mut(i) {
            s.prev = NIL;
            s.next = old;
        }
        if let Some(h) = self.link_mut(old) {
            h.prev = i;
        } else {
            self.tail = i;
        }
        self.head = i;
    }

    /// Look up `key`, marking it most recently active.
    pub fn touch(&mut self, key: &FlowKey) -> Option<&mut V> {
        let i = self.touch_index(key)?;
        self.slot_mut(i).map(|s| &mut s.value)
    }

    /// Look up `key`, marking it most recently active; its slot index for [`Self::at`].
    pub fn touch_index(&mut self, key: &FlowKey) -> Option<u32> {
        self.lookup_touch(key, true)
    }

    /// Look up `key`; move it to the front of the activity order only when `promote`
    /// (callers skip it for flows already promoted within the last few seconds, which keeps
    /// the order right to those seconds at a fraction of the cost).
    pub fn lookup_touch(&mut self, key: &FlowKey, promote: bool) -> Option<u32> {
        self.lookup_touch_hashed(key, hash_key(key), promote)
    }

    /// [`Self::lookup_touch`] with the key's [`hash_key`] already computed.
    #[inline]
    pub fn lookup_touch_hashed(&mut self, key: &FlowKey, hash: u64, promote: bool) -> Option<u32> {
        let i = self.find_hashed(key, hash)?;
        if promote && self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        Some(i)
    }

    /// Move slot `i` to the front of the activity order.
    pub fn promote(&mut self, i: u32) {
        if self.head != i && self.slot(i).is_some() {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// The value in slot `i` (from [`Self::touch_index`] or [`Self::insert`]).
    pub fn at(&mut self, i: u32) -> Option<&mut V> {
        self.slot_mut(i).map(|s| &mut s.value)
    }

    /// Look up `key` without changing its position.
    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut V> {
        let i = self.find(key)?;
        self.slot_mut(i).map(|s| &mut s.value)
    }

    /// Insert a new key (caller checked it is absent) as most recent. When full, the least
    /// recently active flow is removed first and returned.
    pub fn insert(&mut self, key: FlowKey, value: V) -> (Option<(FlowKey, V)>, u32) {
        let evicted = if self.is_full() {
            self.pop_oldest()
        } else {
            None
        };
        let link = Link {
            prev: NIL,
            next: NIL,
        };
        let i = if let Some(i) = self.free.pop() {
            if let Some(s) = self.slots.get_mut(i as usize) {
                *s = Slot {
                    key,
                    occupied: true,
                    value,
                };
            }
            self.links[i as usize] = link;
            i
        } else {
            if self.slots.len() == self.slots.capacity() {
                // Grow by doubling, as push would, and ask for huge pages for the new buffer.
                self.slots.reserve(self.slots.len().max(16));
                self.links.reserve(self.slots.capacity() - self.links.len());
                advise_huge(&self.slots);
                advise_huge(&self.links);
            }
            // cap < NIL, so the index fits.
            self.slots.push(Slot {
                key,
                occupied: true,
                value,
            });
            self.links.push(link);
            (self.slots.len() - 1) as u32
        };
        self.map.insert(tag(hash_key(&key)), i);
        self.push_front(i);
        (evicted, i)
    }

    /// The least recently active flow, without removing it.
    #[must_use]
    pub fn oldest(&self) -> Option<(&FlowKey, &V)> {
        self.slot(self.tail).map(|s| (&s.key, &s.value))
    }

    /// Remove and return the least recently active flow.
    pub fn pop_oldest(&mut self) -> Option<(FlowKey, V)> {
        let t = self.tail;
        let key = self.slot(t)?.key;
        self.remove(&key).map(|v| (key, v))
    }

    /// Remove `key`.
    pub fn remove(&mut self, key: &FlowKey) -> Option<V> {
        let slots = &self.slots;
        let (at, i) = self
            .map
            .find(tag(hash_key(key)), |j| key_at(slots, j) == Some(key))?;
        self.map.remove_at(at);
        self.unlink(i);
        let s = self.slots.get_mut(i as usize).filter(|s| s.occupied)?;
        s.occupied = false;
        let value = std::mem::take(&mut s.value);
        self.free.push(i);
        Some(value)
    }

    /// All flows, most recent first.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &V)> {
        let mut i = self.head;
        std::iter::from_fn(move || {
            let s = self.slot(i)?;
            i = self.links.get(i as usize)?.next;
            Some((&s.key, &s.value))
        })
    }

    /// Remove every flow, oldest first.
    pub fn drain(&mut self) -> Vec<(FlowKey, V)> {
        let mut out = Vec::with_capacity(self.len());
        while let Some(kv) = self.pop_oldest() {
            out.push(kv);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u16) -> FlowKey {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        FlowKey::new(Ep::new(ip, n), Ep::new(ip, 80))
    }

    #[test]
    fn full_table_evicts_the_least_recently_active() {
        let mut t = FlowTable::new(3);
        for n in 1..=3 {
            let (ev, _) = t.insert(key(n), n);
            assert!(ev.is_none());
        }
        assert!(t.touch(&key(1)).is_some());
        let (ev, i) = t.insert(key(4), 4);
        assert_eq!(t.at(i).copied(), Some(4));
        assert_eq!(ev.map(|e| e.1), Some(2));
        assert_eq!(t.len(), 3);
        let order: Vec<u16> = t.iter().map(|(_, v)| *v).collect();
        assert_eq!(order, vec![4, 1, 3]);
        assert_eq!(t.remove(&key(1)), Some(1));
        assert_eq!(t.pop_oldest().map(|e| e.1), Some(3));
        assert_eq!(t.drain().len(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn endpoints_order_as_their_bytes_then_port() {
        let eps: Vec<(IpAddr, u16)> = vec![
            ("10.0.0.1".parse().unwrap(), 80),
            ("10.0.0.1".parse().unwrap(), 7),
            ("9.255.255.255".parse().unwrap(), 9),
            ("::1".parse().unwrap(), 1),
            ("fe80::1".parse().unwrap(), 1),
            ("::ffff:10.0.0.1".parse().unwrap(), 81),
        ];
        for &(a, pa) in &eps {
            for &(b, pb) in &eps {
                let bytes = |ip: IpAddr| match ip {
                    IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                    IpAddr::V6(v) => v.octets(),
                };
                assert_eq!(
                    Ep::new(a, pa).cmp(&Ep::new(b, pb)),
                    (bytes(a), pa).cmp(&(bytes(b), pb)),
                    "{a}:{pa} vs {b}:{pb}"
                );
            }
        }
    }

    #[test]
    fn the_index_survives_churn_with_colliding_homes() {
        // Many keys, inserted and removed in a scrambled order: every present key is found,
        // every removed one is not (removal shifts runs back; growth rehomes by tag).
        let mut t = FlowTable::new(100_000);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut present = std::collections::HashSet::new();
        for round in 0..40_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 3000) as u16;
            if present.contains(&n) && round % 3 != 0 {
                assert_eq!(t.remove(&key(n)), Some(u32::from(n)));
                present.remove(&n);
            } else if !present.contains(&n) {
                t.insert(key(n), u32::from(n));
                present.insert(n);
            }
        }
        assert_eq!(t.len(), present.len());
        for n in 0..3000u16 {
            assert_eq!(
                t.get_mut(&key(n)).copied(),
                present.contains(&n).then_some(u32::from(n)),
                "{n}"
            );
        }
    }

    #[test]
    fn key_is_direction_free() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "::1".parse().unwrap();
        assert_eq!(
            FlowKey::new(Ep::new(ip, 1), Ep::new(ip2, 2)),
            FlowKey::new(Ep::new(ip2, 2), Ep::new(ip, 1))
        );
    }
}
