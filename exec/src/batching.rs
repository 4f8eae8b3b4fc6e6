//! Grouping inputs of similar length into passes, so little of each pass is padding.

use std::ops::Range;

/// Runs `run` over chunks of at most `batch` item indices, ordered by `len(item)`, and returns
/// the results in input order. `run` gets the chunk's indices and returns one result per index.
pub(crate) fn in_length_order<T: Default + Clone, E>(
    count: usize,
    batch: usize,
    len: impl Fn(usize) -> usize,
    run: impl FnMut(&[usize]) -> Result<Vec<T>, E>,
) -> Result<Vec<T>, E> {
    let batch = batch.max(1);
    let passes = (0..count).step_by(batch).map(|start| start..(start + batch).min(count));
    run_passes(&length_order(count, len), passes, run)
}

/// Like [`in_length_order`] with passes of `rows.start` items, but a pass grows on up to
/// `rows.end` items while its items × longest `len` stays within `budget`: for work whose
/// memory grows with the padded size, such as a generation batch's key/value cache, while its
/// cost per item falls with the items.
pub(crate) fn in_length_order_within<T: Default + Clone, E>(
    count: usize,
    rows: Range<usize>,
    budget: usize,
    len: impl Fn(usize) -> usize,
    run: impl FnMut(&[usize]) -> Result<Vec<T>, E>,
) -> Result<Vec<T>, E> {
    let order = length_order(count, &len);
    let (least, most) = (rows.start.max(1), rows.end.max(rows.start).max(1));
    let mut passes = Vec::new();
    let mut start = 0;
    while start < count {
        let mut end = start + 1;
        while end < count
            && end - start < most
            && (end - start < least || (end + 1 - start) * len(order[end]) <= budget)
        {
            end += 1;
        }
        passes.push(start..end);
        start = end;
    }
    run_passes(&order, passes.into_iter(), run)
}

/// Like [`in_length_order`], but where a length-ordered run of rows is cut into passes is chosen
/// to minimise padded tokens plus `pass_overhead` tokens per pass (at most `batch` rows each).
///
/// Fixed cuts every `batch` rows pad a pass to its longest row: 16 random UCI sentences (5 to 60
/// tokens) take about twice their tokens. Cutting where lengths jump trades that padding for
/// more passes, each of which costs about `pass_overhead` tokens of work (the weights streamed
/// and packed once per product). Passes are contiguous in length order, so a dynamic programme
/// over cut points finds the cheapest split: `O(count · batch)`.
pub(crate) fn in_padded_length_order<T: Default + Clone, E>(
    count: usize,
    batch: usize,
    pass_overhead: usize,
    len: impl Fn(usize) -> usize,
    run: impl FnMut(&[usize]) -> Result<Vec<T>, E>,
) -> Result<Vec<T>, E> {
    let order = length_order(count, &len);
    let batch = batch.max(1);
    // cost[j]: cheapest split of the first j rows; cut[j]: where its last pass starts.
    let mut cost = vec![usize::MAX; count + 1];
    let mut cut = vec![0; count + 1];
    cost[0] = 0;
    for j in 1..=count {
        let longest = len(order[j - 1]);
        for i in j.saturating_sub(batch)..j {
            let total = cost[i].saturating_add(pass_overhead + (j - i) * longest);
            if total < cost[j] {
                cost[j] = total;
                cut[j] = i;
            }
        }
    }
    let mut passes = Vec::new();
    let mut j = count;
    while j > 0 {
        passes.push(cut[j]..j);
        j = cut[j];
    }
    run_passes(&order, passes.into_iter().rev(), run)
}

/// Item indices sorted by length.
fn length_order(count: usize, len: impl Fn(usize) -> usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_by_key(|&i| len(i));
    order
}

/// Runs `run` on each pass (a range of `order`) and puts its results back in input order.
fn run_passes<T: Default + Clone, E>(
    order: &[usize],
    passes: impl Iterator<Item = Range<usize>>,
    mut run: impl FnMut(&[usize]) -> Result<Vec<T>, E>,
) -> Result<Vec<T>, E> {
    let mut out = vec![T::default(); order.len()];
    for pass in passes {
        let chunk = &order[pass];
        for (&i, result) in chunk.iter().zip(run(chunk)?) {
            out[i] = result;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_are_cut_where_lengths_jump() {
        // Eight short rows and two long ones: fixed cuts of 5 pad three short rows to 60.
        let lens = [5, 60, 6, 5, 7, 58, 6, 5, 6, 7];
        let mut passes = Vec::new();
        let out = in_padded_length_order(
            lens.len(),
            5,
            20,
            |i| lens[i],
            |chunk| {
                passes.push(chunk.iter().map(|&i| lens[i]).collect::<Vec<_>>());
                Ok::<_, ()>(chunk.iter().map(|&i| lens[i] * 10).collect())
            },
        )
        .unwrap();
        assert_eq!(out, lens.map(|l| l * 10));
        assert!(passes.iter().all(|p| p.len() <= 5));
        assert_eq!(passes.last().unwrap(), &vec![58, 60], "{passes:?}");
        // With a huge overhead per pass, the fewest passes win: two of five.
        let mut few = 0;
        in_padded_length_order(
            lens.len(),
            5,
            10_000,
            |i| lens[i],
            |c| {
                few += 1;
                Ok::<_, ()>(vec![0; c.len()])
            },
        )
        .unwrap();
        assert_eq!(few, 2);
    }

    #[test]
    fn passes_grow_past_the_least_rows_within_the_padded_budget() {
        let lens = [10, 40, 10, 10, 30, 10, 200, 300, 250];
        let mut passes = Vec::new();
        let out = in_length_order_within(
            lens.len(),
            2..3,
            90,
            |i| lens[i],
            |chunk| {
                passes.push(chunk.iter().map(|&i| lens[i]).collect::<Vec<_>>());
                Ok::<_, ()>(chunk.iter().map(|&i| lens[i] + 1).collect())
            },
        )
        .unwrap();
        assert_eq!(out, lens.map(|l| l + 1));
        // Three rows of 10 hit the most rows; 10 and 30 fit in 90 but a third row of 40 would
        // not; past the budget, passes keep the least rows.
        assert_eq!(passes, [vec![10, 10, 10], vec![10, 30], vec![40, 200], vec![250, 300]]);
    }

    #[test]
    fn results_come_back_in_input_order() {
        let words = ["ccc", "a", "bb", "dddd", ""];
        let mut passes = Vec::new();
        let out = in_length_order(
            words.len(),
            2,
            |i| words[i].len(),
            |chunk| {
                passes.push(chunk.to_vec());
                Ok::<_, ()>(chunk.iter().map(|&i| words[i].to_uppercase()).collect())
            },
        )
        .unwrap();
        assert_eq!(out, ["CCC", "A", "BB", "DDDD", ""]);
        assert_eq!(passes, [vec![4, 1], vec![2, 0], vec![3]]);
    }
}
