//! Seeded uniform samples of a plan's rows, shared by the rules that sample (`choose_model`,
//! `order_predicates`), so both draw the same rows from the same input: a row one rule scored
//! is a cache hit for the other.
//!
//! The sample is a reservoir (Vitter's algorithm R) of `size` slots over the whole input,
//! shuffled at the end, so every prefix of it is a uniform sample too: a rule that wants fewer
//! rows takes a prefix and still shares its rows with a rule that took more.

/// Seed of every sample: the same input gives the same sample.
pub(crate) const SAMPLE_SEED: u64 = 0x6d75_726b_616b_6b61;

/// A small seeded generator (SplitMix64).
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Which slot of a reservoir each offered item goes to; the caller keeps the items.
pub(crate) struct Reservoir {
    size: usize,
    filled: usize,
    seen: u64,
    rng: SplitMix64,
}

impl Reservoir {
    /// A reservoir of `size` slots, seeded with [`SAMPLE_SEED`].
    pub(crate) fn new(size: usize) -> Self {
        Self { size, filled: 0, seen: 0, rng: SplitMix64(SAMPLE_SEED) }
    }

    /// Offers the next item of the input: the slot it replaces (or appends at, while the
    /// reservoir fills), or `None` when it is not kept.
    pub(crate) fn offer(&mut self) -> Option<usize> {
        self.seen += 1;
        if self.filled < self.size {
            self.filled += 1;
            return Some(self.filled - 1);
        }
        let slot = self.rng.below(self.seen);
        (slot < self.size as u64).then_some(slot as usize)
    }

    /// Items offered so far.
    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }

    /// Shuffles the kept `items` (one per filled slot), after which every prefix is uniform.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_seeded_and_in_range() {
        let mut a = SplitMix64(1);
        let mut b = SplitMix64(1);
        for n in 1..100 {
            let x = a.below(n);
            assert_eq!(x, b.below(n));
            assert!(x < n);
        }
    }

    #[test]
    fn the_reservoir_keeps_size_items_drawn_from_the_whole_input() {
        let mut reservoir = Reservoir::new(10);
        let mut items = Vec::new();
        for i in 0..1000 {
            match reservoir.offer() {
                Some(slot) if slot == items.len() => items.push(i),
                Some(slot) => items[slot] = i,
                None => {}
            }
        }
        assert_eq!(reservoir.seen(), 1000);
        assert_eq!(items.len(), 10);
        // Uniform over 1000: not all from the first rows.
        assert!(items.iter().any(|&i| i >= 100));
        let mut shuffled = items.clone();
        reservoir.shuffle(&mut shuffled);
        shuffled.sort();
        items.sort();
        assert_eq!(shuffled, items);
    }
}
