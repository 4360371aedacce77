//! Fitting a camera's homography from surveyed points some of which are wrong (a mistyped
//! coordinate, a point clicked on the wrong corner): RANSAC over minimal sets of four, then
//! least squares on the inliers of the best set. Deterministic: the sets are drawn from a
//! fixed-seed generator, so the same points always give the same fit.

use super::{GeoError, Homography, PointPair};

/// The outcome: the homography, and for each pair its error (metres) and whether it was used.
#[derive(Debug, Clone)]
pub struct Fit {
    pub homography: Homography,
    pub residuals_m: Vec<f64>,
    pub inliers: Vec<bool>,
}

impl Fit {
    pub fn outliers(&self) -> usize {
        self.inliers.iter().filter(|i| !**i).count()
    }
}

/// RANSAC with `threshold_m` (a pair whose ground point the candidate maps more than this far
/// off is an outlier) and `iterations` minimal sets, then a least-squares fit on the best
/// set's inliers. With four pairs, or no outliers, it is the plain least-squares fit.
pub fn fit(pairs: &[PointPair], threshold_m: f64, iterations: usize) -> Result<Fit, GeoError> {
    let all = Homography::fit(pairs);
    if pairs.len() <= 4 {
        return all.map(|h| finish(h, pairs, threshold_m));
    }
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut best: Option<(usize, f64, Vec<bool>)> = None;
    for _ in 0..iterations {
        let sample = rng.sample4(pairs.len());
        let subset: Vec<PointPair> = sample.iter().map(|&i| pairs[i]).collect();
        let Ok(h) = Homography::fit(&subset) else {
            continue;
        };
        let errors = residuals(&h, pairs);
        let inliers: Vec<bool> = errors.iter().map(|e| *e <= threshold_m).collect();
        let count = inliers.iter().filter(|i| **i).count();
        let spread: f64 = errors.iter().filter(|e| **e <= threshold_m).sum();
        let better = match &best {
            None => true,
            Some((c, s, _)) => count > *c || (count == *c && spread < *s),
        };
        if better {
            best = Some((count, spread, inliers));
        }
    }
    let Some((count, _, inliers)) = best else {
        return all.map(|h| finish(h, pairs, threshold_m));
    };
    if count < 4 {
        return all.map(|h| finish(h, pairs, threshold_m));
    }
    let kept: Vec<PointPair> = pairs
        .iter()
        .zip(&inliers)
        .filter(|(_, keep)| **keep)
        .map(|(p, _)| *p)
        .collect();
    let h = Homography::fit(&kept)?;
    Ok(finish(h, pairs, threshold_m))
}

fn finish(homography: Homography, pairs: &[PointPair], threshold_m: f64) -> Fit {
    let residuals_m = residuals(&homography, pairs);
    let inliers = residuals_m.iter().map(|e| *e <= threshold_m).collect();
    Fit {
        homography,
        residuals_m,
        inliers,
    }
}

fn residuals(h: &Homography, pairs: &[PointPair]) -> Vec<f64> {
    pairs
        .iter()
        .map(|p| match h.image_to_ground(p.image[0], p.image[1]) {
            Some(g) => (g.x_m - p.ground[0]).hypot(g.y_m - p.ground[1]),
            None => f64::INFINITY,
        })
        .collect()
}

/// A small fixed-seed generator: reproducible samples without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Four distinct indices below `n` (n ≥ 4).
    fn sample4(&mut self, n: usize) -> [usize; 4] {
        let mut out = [usize::MAX; 4];
        let mut k = 0;
        while k < 4 {
            let i = (self.next() % n as u64) as usize;
            if !out[..k].contains(&i) {
                out[k] = i;
                k += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::{Matrix3, Vector3};

    #[test]
    fn recovers_a_known_homography_from_noisy_points_with_outliers() {
        // An elevated camera's image → ground mapping.
        let truth = Matrix3::new(0.05, 0.01, -20.0, 0.002, -0.1, 60.0, 0.0001, 0.004, 1.0);
        let apply = |x: f64, y: f64| {
            let q = truth * Vector3::new(x, y, 1.0);
            [q.x / q.z, q.y / q.z]
        };
        let mut noise = XorShift(42);
        let mut pairs = Vec::new();
        for i in 0..30 {
            let (x, y) = (
                30.0 + 23.0 * f64::from(i % 6) * 5.0,
                250.0 + 55.0 * f64::from(i / 6),
            );
            let mut g = apply(x, y);
            // ±0.05 m of survey noise.
            g[0] += (noise.next() % 1000) as f64 / 10_000.0 - 0.05;
            g[1] += (noise.next() % 1000) as f64 / 10_000.0 - 0.05;
            pairs.push(PointPair {
                image: [x, y],
                ground: g,
            });
        }
        // Five gross mistakes.
        for i in [3, 8, 14, 21, 27] {
            pairs[i].ground[0] += 12.0 + i as f64;
        }
        let plain = Homography::fit(&pairs);
        let robust = fit(&pairs, 0.5, 500).unwrap();
        assert_eq!(robust.outliers(), 5);
        for i in [3, 8, 14, 21, 27] {
            assert!(!robust.inliers[i], "pair {i} is an outlier");
        }
        // Everywhere in the view the robust fit is within centimetres of the truth; the plain
        // least squares is pulled metres away by the mistakes.
        let worst = |h: &Homography| {
            (0..10)
                .flat_map(|i| {
                    (0..10).map(move |j| (60.0 + 60.0 * f64::from(i), 260.0 + 25.0 * f64::from(j)))
                })
                .map(|(x, y)| {
                    let t = apply(x, y);
                    let g = h.image_to_ground(x, y).unwrap();
                    (g.x_m - t[0]).hypot(g.y_m - t[1])
                })
                .fold(0.0, f64::max)
        };
        assert!(
            worst(&robust.homography) < 0.1,
            "{}",
            worst(&robust.homography)
        );
        // Plain least squares over every pair either fails outright or is metres off.
        if let Ok(plain) = plain {
            assert!(worst(&plain) > 1.0, "{}", worst(&plain));
        }
    }

    #[test]
    fn four_points_are_fitted_exactly() {
        let pairs: Vec<PointPair> = [[0.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0]]
            .iter()
            .zip([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
            .map(|(i, g)| PointPair {
                image: *i,
                ground: g,
            })
            .collect();
        let f = fit(&pairs, 0.1, 100).unwrap();
        assert!(f.residuals_m.iter().all(|e| *e < 1e-9) && f.outliers() == 0);
    }
}
