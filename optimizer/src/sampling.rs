//! Seeded uniform samples of a plan's rows, shared by the rules that sample (`choose_model`,
//! `order_predicates`), so both draw the same rows from the same input: a row one rule scored
//! is a cache hit for the other.
//!
//! A sample is the `size` rows of least *priority*, a seeded hash of all the row's values
//! ([`PrioritySample`], bottom-k sampling). A reservoir over the stream would depend on the order
//! the input's partitions deliver their rows in, which varies from run to run: the same query on
//! the same data could then sample other rows and choose another plan. Sorted by priority, every
//! prefix of a sample is itself such a sample, so a rule that wants fewer rows takes a prefix and
//! still shares its rows with a rule that took more. [`Reservoir`] remains for sampling row
//! numbers, which arrive in one order.

use std::collections::BinaryHeap;

use datafusion::arrow::array::ArrayRef;
use datafusion::common::Result;
use datafusion::common::hash_utils::{QualityRandomState, create_hashes};

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

/// Each row's sampling priority: a seeded hash of all of its values (`columns` of one batch).
pub(crate) fn row_priorities(columns: &[ArrayRef]) -> Result<Vec<u64>> {
    let rows = columns.first().map_or(0, |c| c.len());
    let mut hashes = vec![0; rows];
    create_hashes(columns, &QualityRandomState::with_seed(SAMPLE_SEED), &mut hashes)?;
    Ok(hashes)
}

/// An item and its priority, ordered by the priority alone.
struct Ranked<T> {
    priority: u64,
    item: T,
}

impl<T> PartialEq for Ranked<T> {
    fn eq(&self, other: &Self) -> bool {
        self.priority == other.priority
    }
}

impl<T> Eq for Ranked<T> {}

impl<T> PartialOrd for Ranked<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Ranked<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.priority.cmp(&other.priority)
    }
}

/// The `size` offered items of least priority (see the module doc), whatever order they come in.
pub(crate) struct PrioritySample<T> {
    size: usize,
    /// A max-heap: the item to drop next is on top.
    kept: BinaryHeap<Ranked<T>>,
    seen: u64,
}

impl<T> PrioritySample<T> {
    pub(crate) fn new(size: usize) -> Self {
        Self { size, kept: BinaryHeap::with_capacity(size + 1), seen: 0 }
    }

    /// Offers the next row of the input, of `priority`; `item` is built only when it is kept.
    pub(crate) fn offer(&mut self, priority: u64, item: impl FnOnce() -> T) {
        self.seen += 1;
        if self.kept.len() < self.size {
            self.kept.push(Ranked { priority, item: item() });
        } else if self.kept.peek().is_some_and(|top| priority < top.priority) {
            self.kept.pop();
            self.kept.push(Ranked { priority, item: item() });
        }
    }

    /// Rows offered so far.
    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }

    /// Items kept so far.
    pub(crate) fn len(&self) -> usize {
        self.kept.len()
    }

    /// The kept items, least priority first (every prefix is a sample of its own).
    pub(crate) fn into_sorted(self) -> Vec<T> {
        self.kept.into_sorted_vec().into_iter().map(|r| r.item).collect()
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
        assert_eq!(items.len(), 10);
        // Uniform over 1000: not all from the first rows.
        assert!(items.iter().any(|&i| i >= 100));
    }

    fn sample_of(values: &[i64], size: usize) -> Vec<i64> {
        let column: ArrayRef =
            std::sync::Arc::new(datafusion::arrow::array::Int64Array::from(values.to_vec()));
        let priorities = row_priorities(&[column]).unwrap();
        let mut sample = PrioritySample::new(size);
        for (&v, &p) in values.iter().zip(&priorities) {
            sample.offer(p, || v);
        }
        assert_eq!(sample.seen(), values.len() as u64);
        sample.into_sorted()
    }

    #[test]
    fn a_priority_sample_is_the_same_whatever_the_order_of_its_input() {
        let rows: Vec<i64> = (0..1000).collect();
        let mut shuffled = rows.clone();
        let mut rng = SplitMix64(3);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let sample = sample_of(&rows, 20);
        assert_eq!(sample, sample_of(&shuffled, 20));
        assert_eq!(sample.len(), 20);
        // Drawn from the whole input, and every prefix is the smaller sample.
        assert!(sample.iter().any(|&v| v >= 500) && sample.iter().any(|&v| v < 500));
        assert_eq!(sample_of(&rows, 5), sample[..5]);
    }
}
