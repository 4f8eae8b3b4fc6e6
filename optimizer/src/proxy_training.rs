//! Training a proxy model (see `murakkab_catalog::ProxyModel`): multinomial logistic
//! regression on standardized embeddings, fitted by gradient descent with L2 regularisation.
//!
//! Its quality is estimated out of fold (each sampled row is predicted by a proxy trained
//! without it), so the cascade threshold is not tuned on answers the proxy has memorised.

use murakkab_catalog::ProxyModel;

/// Gradient steps: enough for the loss to settle on a few hundred rows.
const STEPS: usize = 300;
/// Step size on standardized features.
const LEARNING_RATE: f32 = 0.5;
/// L2 strength: a sample of tens to hundreds of rows in 384 dimensions needs a strong prior.
const L2: f32 = 0.05;

/// Fits a proxy to `embeddings` labelled `labels` (each below `n_labels`).
pub fn train(
    encoder: &str,
    embeddings: &[Vec<f32>],
    labels: &[usize],
    n_labels: usize,
) -> ProxyModel {
    let dim = embeddings.first().map_or(0, Vec::len);
    let n = embeddings.len().max(1) as f32;
    let mut mean = vec![0.0f32; dim];
    for x in embeddings {
        for (m, v) in mean.iter_mut().zip(x) {
            *m += v / n;
        }
    }
    let mut scale = vec![0.0f32; dim];
    for x in embeddings {
        for ((s, v), m) in scale.iter_mut().zip(x).zip(&mean) {
            *s += (v - m) * (v - m) / n;
        }
    }
    for s in &mut scale {
        *s = s.sqrt().max(1e-4);
    }
    let mut proxy = ProxyModel {
        encoder: encoder.to_string(),
        mean,
        scale,
        weights: vec![vec![0.0; dim]; n_labels],
        bias: vec![0.0; n_labels],
    };
    let xs: Vec<Vec<f32>> = embeddings.iter().map(|x| proxy.standardize(x)).collect();
    for _ in 0..STEPS {
        let mut grad_w = vec![vec![0.0f32; dim]; n_labels];
        let mut grad_b = vec![0.0f32; n_labels];
        for (x, &y) in xs.iter().zip(labels) {
            let p = proxy.probabilities(x);
            for k in 0..n_labels {
                let err = p[k] - f32::from(u8::from(k == y));
                grad_b[k] += err / n;
                for (g, v) in grad_w[k].iter_mut().zip(x) {
                    *g += err * v / n;
                }
            }
        }
        for k in 0..n_labels {
            proxy.bias[k] -= LEARNING_RATE * grad_b[k];
            for (w, g) in proxy.weights[k].iter_mut().zip(&grad_w[k]) {
                *w -= LEARNING_RATE * (g + L2 * *w);
            }
        }
    }
    proxy
}

/// Each row's label probabilities from a proxy trained on the other folds (`folds` >= 2).
pub fn out_of_fold(
    embeddings: &[Vec<f32>],
    labels: &[usize],
    n_labels: usize,
    folds: usize,
) -> Vec<Vec<f32>> {
    let mut out = vec![Vec::new(); embeddings.len()];
    for fold in 0..folds {
        let (mut train_x, mut train_y) = (Vec::new(), Vec::new());
        for (i, (x, &y)) in embeddings.iter().zip(labels).enumerate() {
            if i % folds != fold {
                train_x.push(x.clone());
                train_y.push(y);
            }
        }
        let proxy = train("", &train_x, &train_y, n_labels);
        for (i, x) in embeddings.iter().enumerate() {
            if i % folds == fold {
                out[i] = proxy.predict(x).unwrap_or_else(|| vec![0.0; n_labels]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clusters in 8 dimensions, told apart by the first coordinate.
    fn clusters(n: usize) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for i in 0..n {
            let y = i % 2;
            let mut x: Vec<f32> = (0..8).map(|d| ((i * 7 + d * 13) % 11) as f32 / 11.0).collect();
            x[0] = if y == 0 { 1.0 } else { -1.0 } + x[1] * 0.2;
            xs.push(x);
            ys.push(y);
        }
        (xs, ys)
    }

    #[test]
    fn a_separable_sample_is_learned_and_predicted_out_of_fold() {
        let (xs, ys) = clusters(60);
        let proxy = train("enc", &xs, &ys, 2);
        let right = xs.iter().zip(&ys).filter(|(x, y)| {
            let p = proxy.predict(x).unwrap();
            usize::from(p[1] > p[0]) == **y
        });
        assert_eq!(right.count(), 60);
        let oof = out_of_fold(&xs, &ys, 2, 5);
        let right = oof.iter().zip(&ys).filter(|(p, y)| usize::from(p[1] > p[0]) == **y).count();
        assert!(right >= 57, "{right} of 60 out of fold");
    }
}
