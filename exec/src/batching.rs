//! Grouping inputs of similar length into passes, so little of each pass is padding.

/// Runs `run` over chunks of at most `batch` item indices, ordered by `len(item)`, and returns
/// the results in input order. `run` gets the chunk's indices and returns one result per index.
pub(crate) fn in_length_order<T: Default + Clone, E>(
    count: usize,
    batch: usize,
    len: impl Fn(usize) -> usize,
    mut run: impl FnMut(&[usize]) -> Result<Vec<T>, E>,
) -> Result<Vec<T>, E> {
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_by_key(|&i| len(i));
    let mut out = vec![T::default(); count];
    for chunk in order.chunks(batch.max(1)) {
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
