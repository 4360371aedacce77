//! Ground geometry.
//!
//! Image pixels (x right, y down) map to a local metric ground plane (x_m east, y_m north,
//! metres) through a planar homography: fitted from calibration point pairs for a static
//! camera ([`Homography::fit`], [`ransac`] with outliers), or made for each frame from a
//! drone's pose ([`pose`]). Zones are polygons on that plane, and a [`GeoOrigin`] turns
//! ground points into WGS84 lat/lon and back (map_3d, on the WGS84 ellipsoid).

pub mod pose;
pub mod ransac;

use std::f64::consts::SQRT_2;
use std::fmt;

use nalgebra::{DMatrix, Matrix3, Vector3};
use serde::{Deserialize, Serialize};

/// Two calibration points closer than this fraction of their set's extent are the same point.
const REPEAT_EPS: f64 = 1e-9;
/// A point nearer a line than this fraction of the points' extent lies on it.
const COLLINEAR_EPS: f64 = 1e-6;
/// The DLT solution is unique only if the second-smallest singular value is clearly non-zero.
const NULLITY_EPS: f64 = 1e-8;
/// Smallest/largest singular value of the normalised homography below which it is degenerate.
const FIT_COND_EPS: f64 = 1e-9;
/// Same, for a matrix given in pixel units (whose entries legitimately span many decades).
const MATRIX_COND_EPS: f64 = 1e-13;
/// |w| below this fraction of its terms' magnitude means the point is on the horizon.
const HORIZON_EPS: f64 = 1e-12;
/// Polygons with less area than this (m²) are rejected.
const MIN_AREA_M2: f64 = 1e-9;

/// One calibration correspondence: image pixel ↔ ground metres.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointPair {
    pub image: [f64; 2],
    pub ground: [f64; 2],
}

/// A point on the local ground plane: metres east and north of the origin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundPoint {
    pub x_m: f64,
    pub y_m: f64,
}

/// WGS84 position (degrees) of ground point (0, 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoOrigin {
    pub lat: f64,
    pub lon: f64,
}

/// Which of the two point sets of a calibration an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Image,
    Ground,
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Space::Image => "image",
            Space::Ground => "ground",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GeoError {
    #[error("a homography needs at least 4 point pairs, got {got}")]
    TooFewPoints { got: usize },
    #[error("point pairs {first} and {second} repeat the same {space} point")]
    RepeatedPoint {
        first: usize,
        second: usize,
        space: Space,
    },
    #[error("the {space} points are collinear (or nearly so): a homography cannot be fitted")]
    Collinear { space: Space },
    #[error("the point pairs do not determine a unique homography")]
    Degenerate,
    #[error("the matrix is singular or not finite")]
    SingularMatrix,
    #[error("a coordinate is not a finite number")]
    NotFinite,
    #[error("a zone polygon needs at least 3 points, got {got}")]
    TooFewVertices { got: usize },
    #[error("the zone polygon has no area")]
    ZeroArea,
    #[error("latitude/longitude out of range: {lat}, {lon}")]
    BadOrigin { lat: f64, lon: f64 },
}

impl GeoOrigin {
    pub fn validate(&self) -> Result<(), GeoError> {
        // `contains` is false for NaN, so non-finite values are rejected too.
        if (-90.0..=90.0).contains(&self.lat) && (-180.0..=180.0).contains(&self.lon) {
            Ok(())
        } else {
            Err(GeoError::BadOrigin {
                lat: self.lat,
                lon: self.lon,
            })
        }
    }

    /// (lat, lon) in degrees of a ground point: the point on the local east/north/up tangent
    /// plane at the origin, converted through ECEF on the WGS84 ellipsoid (map_3d).
    pub fn to_wgs84(&self, p: GroundPoint) -> (f64, f64) {
        let (lat, lon, _) = map_3d::enu2geodetic(
            p.x_m,
            p.y_m,
            0.0,
            self.lat.to_radians(),
            self.lon.to_radians(),
            0.0,
            map_3d::Ellipsoid::WGS84,
        );
        (
            lat.to_degrees(),
            (lon.to_degrees() + 180.0).rem_euclid(360.0) - 180.0,
        )
    }

    /// The ground point (metres east and north of the origin) of a WGS84 position.
    pub fn from_wgs84(&self, lat: f64, lon: f64) -> GroundPoint {
        let (x_m, y_m, _) = map_3d::geodetic2enu(
            lat.to_radians(),
            lon.to_radians(),
            0.0,
            self.lat.to_radians(),
            self.lon.to_radians(),
            0.0,
            map_3d::Ellipsoid::WGS84,
        );
        GroundPoint { x_m, y_m }
    }
}

/// Planar homography from image pixels to ground metres.
#[derive(Debug, Clone, PartialEq)]
pub struct Homography {
    /// Scaled so that h33 == 1 unless h33 is (nearly) zero.
    h: Matrix3<f64>,
    /// Sign (±1) of w = h₃·(x, y, 1) for points in front of the camera.
    w_sign: f64,
}

/// Per-pair forward-mapping error, in ground metres.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reprojection {
    pub rms_m: f64,
    pub max_m: f64,
}

impl Homography {
    /// Normalised DLT (Hartley: translate centroid to origin, scale mean distance to sqrt(2),
    /// both point sets), exact for 4 pairs, least squares beyond four.
    pub fn fit(pairs: &[PointPair]) -> Result<Self, GeoError> {
        if pairs.len() < 4 {
            return Err(GeoError::TooFewPoints { got: pairs.len() });
        }
        let mut coords = pairs
            .iter()
            .flat_map(|p| p.image.into_iter().chain(p.ground));
        if coords.any(|v| !v.is_finite()) {
            return Err(GeoError::NotFinite);
        }
        let image: Vec<[f64; 2]> = pairs.iter().map(|p| p.image).collect();
        let ground: Vec<[f64; 2]> = pairs.iter().map(|p| p.ground).collect();
        let sets = [(&image, Space::Image), (&ground, Space::Ground)];
        for (pts, space) in sets {
            check_repeats(pts, space)?;
        }
        for (pts, space) in sets {
            check_collinear(pts, space)?;
        }
        let (image_n, t_image, _) = hartley(&image);
        let (ground_n, _, t_ground_inv) = hartley(&ground);
        let h = t_ground_inv * solve_dlt(&image_n, &ground_n)? * t_image;
        // A valid camera sees every calibration point in front of it, i.e. with one sign of w.
        let w = |&[x, y]: &[f64; 2]| (h * Vector3::new(x, y, 1.0)).z;
        let w_sign = w(&image[0]).signum();
        if image.iter().any(|p| w(p) * w_sign <= 0.0) {
            return Err(GeoError::Degenerate);
        }
        Ok(Self::normalised(h, w_sign))
    }

    /// From a given 3×3 row-major matrix mapping image (x, y, 1) to ground; positive w is taken
    /// as in front of the camera, as in [`Homography::matrix`].
    pub fn from_matrix(rows: [[f64; 3]; 3]) -> Result<Self, GeoError> {
        let h = Matrix3::from_fn(|r, c| rows[r][c]);
        if h.iter().any(|v| !v.is_finite()) {
            return Err(GeoError::SingularMatrix);
        }
        let sv = h.singular_values();
        if sv.min() <= MATRIX_COND_EPS * sv.max() {
            return Err(GeoError::SingularMatrix);
        }
        Ok(Self::normalised(h, 1.0))
    }

    fn normalised(h: Matrix3<f64>, w_sign: f64) -> Self {
        let h33 = h[(2, 2)];
        let scale = if h33.abs() > 1e-12 * h.norm() {
            h33
        } else {
            h.norm()
        };
        // Dividing by a negative scale flips w, so the in-front sign flips with it.
        Self {
            h: h / scale,
            w_sign: w_sign * scale.signum(),
        }
    }

    /// Image pixel → ground. None when the point maps to infinity or beyond the horizon.
    pub fn image_to_ground(&self, x: f64, y: f64) -> Option<GroundPoint> {
        let q = self.h * Vector3::new(x, y, 1.0);
        let h = &self.h;
        let terms = (h[(2, 0)] * x).abs() + (h[(2, 1)] * y).abs() + h[(2, 2)].abs();
        // Written so that NaN also yields None.
        let in_front = q.z * self.w_sign > HORIZON_EPS * terms;
        if !in_front {
            return None;
        }
        let (x_m, y_m) = (q.x / q.z, q.y / q.z);
        (x_m.is_finite() && y_m.is_finite()).then_some(GroundPoint { x_m, y_m })
    }

    /// Row-major, h33 = ±1 when possible, signed so that w > 0 in front of the camera: this is
    /// what `from_matrix` assumes, so the two round-trip (a camera whose horizon is in view
    /// may see pixel (0, 0) beyond it, and then h33 = -1).
    pub fn matrix(&self) -> [[f64; 3]; 3] {
        std::array::from_fn(|r| std::array::from_fn(|c| self.w_sign * self.h[(r, c)]))
    }

    /// Errors of the forward mapping at the given pairs, in ground metres. A pair whose image
    /// point lies beyond the horizon counts as an infinite error; no pairs give zero.
    pub fn reprojection_error(&self, pairs: &[PointPair]) -> Reprojection {
        let errs: Vec<f64> = pairs
            .iter()
            .map(|p| match self.image_to_ground(p.image[0], p.image[1]) {
                Some(g) => (g.x_m - p.ground[0]).hypot(g.y_m - p.ground[1]),
                None => f64::INFINITY,
            })
            .collect();
        let mean_sq = errs.iter().map(|e| e * e).sum::<f64>() / errs.len().max(1) as f64;
        let max_m = errs.iter().copied().fold(0.0, f64::max);
        Reprojection {
            rms_m: mean_sq.sqrt(),
            max_m,
        }
    }
}

fn check_repeats(pts: &[[f64; 2]], space: Space) -> Result<(), GeoError> {
    let extent = |k: usize| {
        let (lo, hi) = pts
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p[k]), hi.max(p[k]))
            });
        hi - lo
    };
    let tol = REPEAT_EPS * extent(0).max(extent(1));
    for (first, a) in pts.iter().enumerate() {
        for (second, b) in pts.iter().enumerate().skip(first + 1) {
            if (a[0] - b[0]).hypot(a[1] - b[1]) <= tol {
                return Err(GeoError::RepeatedPoint {
                    first,
                    second,
                    space,
                });
            }
        }
    }
    Ok(())
}

fn check_collinear(pts: &[[f64; 2]], space: Space) -> Result<(), GeoError> {
    // With exactly four pairs every point is needed, so any three on a line leave H
    // underdetermined; with more, partial collinearity is the SVD check's business.
    let collinear = if pts.len() == 4 {
        (0..4).any(|skip| {
            let three: Vec<[f64; 2]> = (0..4).filter(|&i| i != skip).map(|i| pts[i]).collect();
            all_on_one_line(&three)
        })
    } else {
        all_on_one_line(pts)
    };
    if collinear {
        Err(GeoError::Collinear { space })
    } else {
        Ok(())
    }
}

/// Scale-invariant: distances from the line are compared with the points' extent.
fn all_on_one_line(pts: &[[f64; 2]]) -> bool {
    // If the points lie on a line, their farthest pair spans it.
    let dist2 = |a: [f64; 2], b: [f64; 2]| (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2);
    let mut best = (pts[0], pts[0], 0.0);
    for (i, &a) in pts.iter().enumerate() {
        for &b in &pts[i + 1..] {
            if dist2(a, b) > best.2 {
                best = (a, b, dist2(a, b));
            }
        }
    }
    let (a, b, len2) = best;
    let d = [b[0] - a[0], b[1] - a[1]];
    pts.iter().all(|c| {
        let cross = d[0] * (c[1] - a[1]) - d[1] * (c[0] - a[0]);
        cross.abs() <= COLLINEAR_EPS * len2
    })
}

/// Hartley normalisation: the points moved and scaled, the transform T, and T⁻¹.
fn hartley(pts: &[[f64; 2]]) -> (Vec<[f64; 2]>, Matrix3<f64>, Matrix3<f64>) {
    let n = pts.len() as f64;
    let cx = pts.iter().map(|p| p[0]).sum::<f64>() / n;
    let cy = pts.iter().map(|p| p[1]).sum::<f64>() / n;
    // The mean distance is non-zero: callers have already rejected repeated points.
    let dists: f64 = pts.iter().map(|p| (p[0] - cx).hypot(p[1] - cy)).sum();
    let s = SQRT_2 * n / dists;
    let t = Matrix3::new(s, 0.0, -s * cx, 0.0, s, -s * cy, 0.0, 0.0, 1.0);
    let t_inv = Matrix3::new(1.0 / s, 0.0, cx, 0.0, 1.0 / s, cy, 0.0, 0.0, 1.0);
    let moved = pts.iter().map(|p| [s * (p[0] - cx), s * (p[1] - cy)]);
    (moved.collect(), t, t_inv)
}

/// The h minimising |A h| with |h| = 1, for normalised correspondences image → ground.
fn solve_dlt(image: &[[f64; 2]], ground: &[[f64; 2]]) -> Result<Matrix3<f64>, GeoError> {
    // nalgebra's SVD is thin: with fewer rows than columns the null vector would be dropped.
    let mut a = DMatrix::<f64>::zeros((2 * image.len()).max(9), 9);
    for (k, (&[x, y], &[u, v])) in image.iter().zip(ground).enumerate() {
        let rows = [
            [-x, -y, -1.0, 0.0, 0.0, 0.0, u * x, u * y, u],
            [0.0, 0.0, 0.0, -x, -y, -1.0, v * x, v * y, v],
        ];
        for (r, row) in rows.iter().enumerate() {
            for (c, &val) in row.iter().enumerate() {
                a[(2 * k + r, c)] = val;
            }
        }
    }
    let svd = a.svd(false, true);
    let v_t = svd.v_t.ok_or(GeoError::Degenerate)?;
    let sv = svd.singular_values;
    // nalgebra does not sort singular values.
    let mut order: Vec<usize> = (0..sv.len()).collect();
    order.sort_by(|&i, &j| sv[i].total_cmp(&sv[j]));
    if sv[order[1]] <= NULLITY_EPS * sv[order[8]] {
        return Err(GeoError::Degenerate);
    }
    let hn = Matrix3::from_fn(|r, c| v_t[(order[0], 3 * r + c)]);
    let hsv = hn.singular_values();
    if hsv.min() <= FIT_COND_EPS * hsv.max() {
        return Err(GeoError::Degenerate);
    }
    Ok(hn)
}

/// A polygon on the ground plane, in metres.
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    points: Vec<[f64; 2]>,
}

impl Polygon {
    /// The corners, in order (metres east, north).
    pub fn points(&self) -> &[[f64; 2]] {
        &self.points
    }

    /// Consecutive repeated vertices (including a closing copy of the first) are dropped.
    pub fn new(mut points: Vec<[f64; 2]>) -> Result<Self, GeoError> {
        if points.len() < 3 {
            return Err(GeoError::TooFewVertices { got: points.len() });
        }
        if points.iter().flatten().any(|v| !v.is_finite()) {
            return Err(GeoError::NotFinite);
        }
        points.dedup();
        if points.len() > 1 && points.first() == points.last() {
            points.pop();
        }
        let polygon = Self { points };
        if polygon.points.len() < 3 || polygon.area_m2() <= MIN_AREA_M2 {
            return Err(GeoError::ZeroArea);
        }
        Ok(polygon)
    }

    fn edges(&self) -> impl Iterator<Item = (&[f64; 2], &[f64; 2])> {
        self.points
            .iter()
            .zip(self.points.iter().skip(1).chain(self.points.first()))
    }

    /// Even-odd ray casting; points exactly on an edge may go either way.
    pub fn contains(&self, p: GroundPoint) -> bool {
        let mut inside = false;
        for (a, b) in self.edges() {
            if (a[1] > p.y_m) != (b[1] > p.y_m) {
                let x_cross = a[0] + (p.y_m - a[1]) * (b[0] - a[0]) / (b[1] - a[1]);
                if p.x_m < x_cross {
                    inside = !inside;
                }
            }
        }
        inside
    }

    /// Shoelace formula, absolute value.
    pub fn area_m2(&self) -> f64 {
        let twice: f64 = self.edges().map(|(a, b)| a[0] * b[1] - b[0] * a[1]).sum();
        twice.abs() / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gp(x_m: f64, y_m: f64) -> GroundPoint {
        GroundPoint { x_m, y_m }
    }

    fn apply(h: &Matrix3<f64>, [x, y]: [f64; 2]) -> [f64; 2] {
        let q = h * Vector3::new(x, y, 1.0);
        [q.x / q.z, q.y / q.z]
    }

    fn pairs(image: &[[f64; 2]], ground: &[[f64; 2]]) -> Vec<PointPair> {
        let pair = |(&image, &ground)| PointPair { image, ground };
        image.iter().zip(ground).map(pair).collect()
    }

    fn pairs_through(h: &Matrix3<f64>, image: &[[f64; 2]]) -> Vec<PointPair> {
        let ground: Vec<[f64; 2]> = image.iter().map(|&p| apply(h, p)).collect();
        pairs(image, &ground)
    }

    fn known_h() -> Matrix3<f64> {
        Matrix3::new(0.05, 0.01, -3.0, 0.002, -0.08, 40.0, 0.0001, 0.0009, 1.0)
    }

    fn assert_close(want: [f64; 2], got: Option<GroundPoint>, tol: f64) {
        let g = got.unwrap_or_else(|| panic!("expected {want:?}, got None"));
        let err = (want[0] - g.x_m).hypot(want[1] - g.y_m);
        assert!(err <= tol, "expected {want:?}, got {g:?} (error {err})");
    }

    #[test]
    fn exact_fit_recovers_known_homography() {
        let h = known_h();
        let four = [[10.0, 20.0], [700.0, 30.0], [650.0, 500.0], [40.0, 560.0]];
        let more = [
            [300.0, 300.0],
            [100.0, 250.0],
            [500.0, 120.0],
            [380.0, 540.0],
        ];
        let eight = [four, more].concat();
        for image in [&four[..], &eight[..]] {
            let fit = Homography::fit(&pairs_through(&h, image)).unwrap();
            let m = Matrix3::from_fn(|r, c| fit.matrix()[r][c]);
            assert!((m - h).norm() < 1e-9 * h.norm(), "fitted {m}");
            for &[x, y] in eight.iter().chain(&[[384.0, 288.0]]) {
                assert_close(apply(&h, [x, y]), fit.image_to_ground(x, y), 1e-9);
            }
            assert!(fit.reprojection_error(&pairs_through(&h, &eight)).max_m < 1e-9);
        }
    }

    #[test]
    fn noisy_fit_is_least_squares() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 11) as f64 / (1u64 << 53) as f64 // uniform in [0, 1)
        };
        let h = known_h();
        let image: Vec<[f64; 2]> = (0..20).map(|_| [next() * 768.0, next() * 576.0]).collect();
        let mut noisy = pairs_through(&h, &image);
        for p in &mut noisy {
            // Uniform on ±1.7 cm has a standard deviation of ~1 cm.
            p.ground[0] += (next() - 0.5) * 0.034;
            p.ground[1] += (next() - 0.5) * 0.034;
        }
        let fit = Homography::fit(&noisy).unwrap();
        for &[x, y] in &image {
            assert_close(apply(&h, [x, y]), fit.image_to_ground(x, y), 0.03);
        }
        let rep = fit.reprojection_error(&noisy);
        assert!(rep.rms_m > 0.005 && rep.rms_m < 0.02, "{rep:?}");
        assert!(rep.max_m >= rep.rms_m && rep.max_m < 0.05, "{rep:?}");
    }

    /// Image → ground for a camera 10 m up, looking north and 10° down, f = 800 px on a
    /// 768×576 image: the horizon is the row y = 288 - 800 tan 10° ≈ 147.
    fn elevated_camera() -> Matrix3<f64> {
        let (s, c) = 10f64.to_radians().sin_cos();
        let k = Matrix3::new(800.0, 0.0, 384.0, 0.0, 800.0, 288.0, 0.0, 0.0, 1.0);
        let mut rt = Matrix3::new(1.0, 0.0, 0.0, 0.0, -s, -c, 0.0, c, -s);
        let t = -rt * Vector3::new(0.0, 0.0, 10.0);
        rt.set_column(2, &t); // the ground has z = 0, so R's third column drops out
        (k * rt).try_inverse().unwrap()
    }

    #[test]
    fn elevated_camera_rejects_points_above_horizon() {
        let g = elevated_camera();
        let ground = [
            [-5.0, 25.0],
            [5.0, 25.0],
            [-20.0, 80.0],
            [20.0, 80.0],
            [0.0, 40.0],
        ];
        let ginv = g.try_inverse().unwrap();
        let image: Vec<[f64; 2]> = ground.iter().map(|&p| apply(&ginv, p)).collect();
        assert!(image.iter().all(|p| (147.0..576.0).contains(&p[1])));
        let fit = Homography::fit(&pairs(&image, &ground)).unwrap();
        assert!(fit.reprojection_error(&pairs(&image, &ground)).max_m < 1e-6);
        for (x, y) in [(0.0, 0.0), (384.0, 100.0), (700.0, 140.0), (384.0, 146.0)] {
            assert_eq!(fit.image_to_ground(x, y), None, "({x}, {y})");
        }
        for (x, y) in [(384.0, 150.0), (100.0, 400.0), (767.0, 575.0)] {
            assert_close(apply(&g, [x, y]), fit.image_to_ground(x, y), 1e-6);
        }
        assert!(fit.image_to_ground(384.0, 150.0).unwrap().y_m > 500.0);
        // Pixel (0, 0) is beyond the horizon: matrix() has h33 = -1 and must read back as is.
        assert_eq!(fit.matrix()[2][2], -1.0);
        assert_eq!(Homography::from_matrix(fit.matrix()), Ok(fit));
    }

    const SQUARE: [[f64; 2]; 4] = [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]];

    #[test]
    fn fit_rejects_bad_input_precisely() {
        use GeoError::*;
        use Space::{Ground, Image};
        let img = [[0.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0]];
        let on_line = [[0.0, 0.0], [100.0, 50.0], [200.0, 100.0], [0.0, 100.0]];
        let fit = |i: &[[f64; 2]], g: &[[f64; 2]]| Homography::fit(&pairs(i, g)).unwrap_err();
        assert_eq!(fit(&img[..3], &SQUARE[..3]), TooFewPoints { got: 3 });
        assert_eq!(fit(&on_line, &SQUARE), Collinear { space: Image });
        let tiny: Vec<[f64; 2]> = on_line.iter().map(|p| [p[0] * 1e-6, p[1] * 1e-6]).collect();
        assert_eq!(fit(&tiny, &SQUARE), Collinear { space: Image });
        let ground_line: Vec<[f64; 2]> = (0..6).map(|i| [i as f64, 2.0 * i as f64]).collect();
        let six = [&img[..], &[[50.0, 20.0], [30.0, 70.0]]].concat();
        assert_eq!(fit(&six, &ground_line), Collinear { space: Ground });
        let repeated = [SQUARE[0], SQUARE[1], SQUARE[0], SQUARE[3]];
        let want = RepeatedPoint {
            first: 0,
            second: 2,
            space: Ground,
        };
        assert_eq!(fit(&img, &repeated), want);
        let mut nan = img;
        nan[2][1] = f64::NAN;
        assert_eq!(fit(&nan, &SQUARE), NotFinite);
        // Four of five image points on a line but not in ground: no homography relates them.
        let five_img = [
            [0.0, 0.0],
            [10.0, 0.0],
            [20.0, 0.0],
            [30.0, 0.0],
            [0.0, 50.0],
        ];
        let five_gnd = [[0.0, 0.0], [1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [0.0, 5.0]];
        assert_eq!(fit(&five_img, &five_gnd), Degenerate);
        // Consistent this time, but four points on a line pin down too little.
        let five_scaled: Vec<[f64; 2]> = five_img
            .iter()
            .map(|p| [p[0] / 10.0, p[1] / 10.0])
            .collect();
        assert_eq!(fit(&five_img, &five_scaled), Degenerate);
    }

    #[test]
    fn from_matrix_checks_singularity() {
        let singular = [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 0.0, 1.0]];
        let err = Err(GeoError::SingularMatrix);
        assert_eq!(Homography::from_matrix(singular), err);
        let nan = [[f64::NAN, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        assert_eq!(Homography::from_matrix(nan), err);
        // The identity scaled by -2 is the same mapping, but with w < 0 "behind".
        let eye = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let h = Homography::from_matrix(eye.map(|row| row.map(|v| -2.0 * v))).unwrap();
        assert_eq!(h.matrix(), eye.map(|row| row.map(|v| -v)));
        assert_eq!(h.image_to_ground(3.0, 4.0), None);
        let rows = std::array::from_fn(|r| std::array::from_fn(|c| known_h()[(r, c)]));
        let h = Homography::from_matrix(rows).unwrap();
        assert_close([-3.0, 40.0], h.image_to_ground(0.0, 0.0), 1e-12);
    }

    #[test]
    fn polygons() {
        let square = Polygon::new(SQUARE.to_vec()).unwrap();
        assert_eq!(square.area_m2(), 100.0);
        assert!(square.contains(gp(5.0, 5.0)));
        let stutter = [&SQUARE[..1], &SQUARE[..], &SQUARE[..1]].concat();
        assert_eq!(Polygon::new(stutter), Ok(square.clone()));
        assert!(!square.contains(gp(15.0, 5.0)) && !square.contains(gp(5.0, -0.1)));
        let l = [
            [0.0, 0.0],
            [4.0, 0.0],
            [4.0, 1.0],
            [1.0, 1.0],
            [1.0, 3.0],
            [0.0, 3.0],
        ];
        let l_closed = Polygon::new([&l[..], &[[0.0, 0.0]]].concat()).unwrap();
        assert_eq!(l_closed, Polygon::new(l.to_vec()).unwrap());
        assert!((l_closed.area_m2() - 6.0).abs() < 1e-12);
        assert!(l_closed.contains(gp(0.5, 2.5)) && l_closed.contains(gp(3.5, 0.5)));
        assert!(!l_closed.contains(gp(2.0, 2.0)), "in the notch");
        assert!(!l_closed.contains(gp(-0.5, 0.5)) && !l_closed.contains(gp(f64::NAN, 0.5)));
        let poly = |pts: &[[f64; 2]]| Polygon::new(pts.to_vec()).unwrap_err();
        let (o, a, b, bad) = ([0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [1.0, f64::NAN]);
        assert_eq!(poly(&[o, a]), GeoError::TooFewVertices { got: 2 });
        assert_eq!(poly(&[o, a, b]), GeoError::ZeroArea);
        assert_eq!(poly(&[o, a, o]), GeoError::ZeroArea);
        // A symmetric bow tie: the signed areas of its two lobes cancel.
        assert_eq!(poly(&[o, a, [1.0, 0.0], [0.0, 1.0]]), GeoError::ZeroArea);
        assert_eq!(poly(&[o, bad, b]), GeoError::NotFinite);
    }

    #[test]
    fn wgs84_round_trips_and_agrees_with_local_radii_within_5_km() {
        let seoul = GeoOrigin {
            lat: 37.5665,
            lon: 126.978,
        };
        // Against the local radii of curvature at the origin (meridian M, prime vertical N): a
        // point 5 km away on the tangent plane is 5 km away on the ellipsoid to well under
        // 0.1 m (the plane's "east" bends south of the parallel by x²·tan(lat)/2N, 1.5 m at 5
        // km here: that is the tangent plane, not an error). The conversion round-trips to a
        // centimetre (the tangent plane rises above the ellipsoid: 2 m at 5 km).
        let (a, f) = (6_378_137.0f64, 1.0 / 298.257_223_563);
        let e2 = f * (2.0 - f);
        let (sin, cos) = seoul.lat.to_radians().sin_cos();
        let w = 1.0 - e2 * sin * sin;
        let m = a * (1.0 - e2) / (w * w.sqrt());
        let n = a / w.sqrt();
        for (x, y) in [(5000.0, 0.0), (0.0, 5000.0), (-3000.0, 4000.0), (1.0, -2.0)] {
            let (lat, lon) = seoul.to_wgs84(gp(x, y));
            let dy = (lat - seoul.lat).to_radians() * m;
            let dx = (lon - seoul.lon).to_radians() * n * cos;
            let (far, got) = (x.hypot(y), dx.hypot(dy));
            if x == 0.0 || y == 0.0 {
                assert!((far - got).abs() < 0.1, "{x},{y}: {dx},{dy}");
            }
            if x == 0.0 {
                assert!(
                    (dy - y).abs() < 0.1 && dx.abs() < 1e-6,
                    "due north stays due north"
                );
            }
            let back = seoul.from_wgs84(lat, lon);
            assert!((back.x_m - x).hypot(back.y_m - y) < 0.01, "{back:?}");
        }
        let (lat, lon) = seoul.to_wgs84(gp(0.0, 0.0));
        assert!((lat - seoul.lat).abs() < 1e-12 && (lon - seoul.lon).abs() < 1e-12);
        assert_eq!(seoul.validate(), Ok(()));
        for (lat, lon) in [
            (90.5, 0.0),
            (0.0, -180.5),
            (f64::NAN, 0.0),
            (0.0, f64::INFINITY),
        ] {
            let err = GeoOrigin { lat, lon }.validate().unwrap_err();
            assert!(matches!(err, GeoError::BadOrigin { .. }), "{err}");
        }
    }

    #[test]
    fn serde_and_messages() {
        let p: PointPair = serde_json::from_str(r#"{"image":[1,2],"ground":[3,4]}"#).unwrap();
        assert_eq!(p, pairs(&[[1.0, 2.0]], &[[3.0, 4.0]])[0]);
        let extra = r#"{"image":[1,2],"ground":[3,4],"z":1}"#;
        assert!(serde_json::from_str::<PointPair>(extra).is_err());
        assert!(serde_json::from_str::<GeoOrigin>(r#"{"lat":1,"lon":2,"alt":3}"#).is_err());
        let e = GeoError::RepeatedPoint {
            first: 1,
            second: 3,
            space: Space::Image,
        };
        let msg = "point pairs 1 and 3 repeat the same image point";
        assert_eq!(e.to_string(), msg);
    }
}
