//! Where a camera in the air looks: from a drone's pose to a per-frame homography onto flat
//! ground, and how uncertain the positions it gives are.
//!
//! Conventions (the frame's `pose`):
//! - `lat`, `lon`: the camera's WGS84 position (degrees); `alt_m`: its height above the ground
//!   it looks at (metres), which is taken as flat.
//! - `heading_deg`: the compass direction the camera looks along, clockwise from true north
//!   (0 north, 90 east).
//! - `pitch_deg`: up from the horizon; 0 looks at the horizon, -90 straight down (a gimbal's
//!   nadir), so drones fly with negative pitch.
//! - `roll_deg`: about the viewing axis, applied last (heading, then pitch, then roll, as an
//!   aircraft's yaw-pitch-roll), positive when the image's right side dips (clockwise as seen
//!   from behind the camera).
//! - `hfov_deg`: the horizontal field of view; pixels are square, the principal point is the
//!   image centre, lenses are taken as distortion-free.
//!
//! Ground coordinates are metres east and north of the point below the camera. The image
//! top points along the heading when looking straight down.

use nalgebra::{Matrix3, Vector3};

use super::{GroundPoint, Homography};

/// A camera's pose and image size: everything needed to project its pixels to the ground.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CameraPose {
    pub alt_m: f64,
    pub heading_deg: f64,
    pub pitch_deg: f64,
    pub roll_deg: f64,
    pub hfov_deg: f64,
    pub width: u32,
    pub height: u32,
}

/// One-sigma uncertainties of what goes into a ground position.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Uncertainty {
    /// Of the pixel where the object touches the ground (the box's bottom centre).
    pub pixel_px: f64,
    /// Of the camera's horizontal position (GNSS), metres.
    pub position_m: f64,
    pub alt_m: f64,
    pub heading_deg: f64,
    pub pitch_deg: f64,
    pub roll_deg: f64,
}

/// Why a pixel has no ground position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoGround {
    /// The ray through the pixel does not reach the ground in front of the camera.
    AboveHorizon,
}

impl CameraPose {
    /// Focal length in pixels, from the horizontal field of view.
    pub fn focal_px(&self) -> f64 {
        f64::from(self.width) / 2.0 / (self.hfov_deg.to_radians() / 2.0).tan()
    }

    /// The camera's axes in east/north/up: columns right, down (image y), forward.
    pub fn rotation(&self) -> Matrix3<f64> {
        let (sh, ch) = self.heading_deg.to_radians().sin_cos();
        let (sp, cp) = self.pitch_deg.to_radians().sin_cos();
        let (sr, cr) = self.roll_deg.to_radians().sin_cos();
        let forward0 = Vector3::new(sh, ch, 0.0);
        let right0 = Vector3::new(ch, -sh, 0.0);
        let up0 = Vector3::z();
        // Pitch turns forward and up about the right axis; roll turns right and up about
        // the (pitched) forward axis.
        let forward = forward0 * cp + up0 * sp;
        let up1 = up0 * cp - forward0 * sp;
        let right = right0 * cr - up1 * sr;
        let up = right0 * sr + up1 * cr;
        Matrix3::from_columns(&[right, -up, forward])
    }

    /// The ray through pixel (u, v) in east/north/up.
    fn ray(&self, u: f64, v: f64) -> Vector3<f64> {
        let f = self.focal_px();
        let (cx, cy) = (f64::from(self.width) / 2.0, f64::from(self.height) / 2.0);
        self.rotation() * Vector3::new((u - cx) / f, (v - cy) / f, 1.0)
    }

    /// Where the ray through pixel (u, v) meets the ground.
    pub fn ground(&self, u: f64, v: f64) -> Result<GroundPoint, NoGround> {
        let d = self.ray(u, v);
        // Rays that fall less than this per unit forward never meet the ground in any useful
        // distance (thousands of camera heights away).
        if d.z >= -1e-6 * d.xy().norm().max(1.0) {
            return Err(NoGround::AboveHorizon);
        }
        let t = -self.alt_m / d.z;
        Ok(GroundPoint {
            x_m: t * d.x,
            y_m: t * d.y,
        })
    }

    /// The same projection as a homography (image → ground metres), so drones and static
    /// cameras share one path: H = [h·r₁; h·r₂; −r₃] K⁻¹, with rᵢ the rows of the rotation.
    pub fn homography(&self) -> Option<Homography> {
        let r = self.rotation();
        let f = self.focal_px();
        let (cx, cy) = (f64::from(self.width) / 2.0, f64::from(self.height) / 2.0);
        let k_inv = Matrix3::new(1.0 / f, 0.0, -cx / f, 0.0, 1.0 / f, -cy / f, 0.0, 0.0, 1.0);
        let h = self.alt_m;
        let m = Matrix3::from_rows(&[r.row(0) * h, r.row(1) * h, -r.row(2)]);
        let rows = m * k_inv;
        Homography::from_matrix(std::array::from_fn(|i| {
            std::array::from_fn(|j| rows[(i, j)])
        }))
        .ok()
    }

    /// The ground point of pixel (u, v) and its one-sigma error radius (metres): the pixel
    /// and pose uncertainties carried through the projection (numerical derivatives), plus
    /// the camera's own position error. Far and grazing views come out less certain.
    pub fn ground_with_error(
        &self,
        u: f64,
        v: f64,
        sigma: &Uncertainty,
    ) -> Result<(GroundPoint, f64), NoGround> {
        let at = self.ground(u, v)?;
        let mut var_x = sigma.position_m.powi(2);
        let mut var_y = sigma.position_m.powi(2);
        let nudges: [(f64, &Moved<'_>); 6] = [
            (sigma.pixel_px, &|d| self.ground(u + d, v)),
            (sigma.pixel_px, &|d| self.ground(u, v + d)),
            (sigma.alt_m, &|d| {
                Self {
                    alt_m: self.alt_m + d,
                    ..*self
                }
                .ground(u, v)
            }),
            (sigma.heading_deg, &|d| {
                Self {
                    heading_deg: self.heading_deg + d,
                    ..*self
                }
                .ground(u, v)
            }),
            (sigma.pitch_deg, &|d| {
                Self {
                    pitch_deg: self.pitch_deg + d,
                    ..*self
                }
                .ground(u, v)
            }),
            (sigma.roll_deg, &|d| {
                Self {
                    roll_deg: self.roll_deg + d,
                    ..*self
                }
                .ground(u, v)
            }),
        ];
        for (s, moved) in nudges {
            if s <= 0.0 {
                continue;
            }
            // A one-sigma step each way: a central difference, and honest where the mapping
            // bends (near the horizon a step may not reach the ground at all: then the error
            // is unbounded).
            let (Ok(a), Ok(b)) = (moved(s), moved(-s)) else {
                return Ok((at, f64::INFINITY));
            };
            var_x += ((a.x_m - b.x_m) / 2.0).powi(2);
            var_y += ((a.y_m - b.y_m) / 2.0).powi(2);
        }
        Ok((at, (var_x + var_y).sqrt()))
    }
}

/// The ground point after nudging one input of the projection by the given amount.
type Moved<'a> = dyn Fn(f64) -> Result<GroundPoint, NoGround> + 'a;

/// The error radius (metres, one sigma) of a static camera's ground point at pixel (u, v)
/// for a pixel uncertainty of `pixel_px`.
pub fn homography_error(h: &Homography, u: f64, v: f64, pixel_px: f64) -> Option<f64> {
    h.image_to_ground(u, v)?;
    if pixel_px <= 0.0 {
        return Some(0.0);
    }
    let mut var = 0.0;
    for (du, dv) in [(pixel_px, 0.0), (0.0, pixel_px)] {
        let a = h.image_to_ground(u + du, v + dv)?;
        let b = h.image_to_ground(u - du, v - dv)?;
        var += ((a.x_m - b.x_m) / 2.0).powi(2) + ((a.y_m - b.y_m) / 2.0).powi(2);
    }
    Some(var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pose(alt: f64, heading: f64, pitch: f64, roll: f64, hfov: f64) -> CameraPose {
        CameraPose {
            alt_m: alt,
            heading_deg: heading,
            pitch_deg: pitch,
            roll_deg: roll,
            hfov_deg: hfov,
            width: 1000,
            height: 750,
        }
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn a_nadir_camera_covers_two_h_tan_half_fov_across() {
        let p = pose(100.0, 0.0, -90.0, 0.0, 84.0);
        let left = p.ground(0.0, 375.0).unwrap();
        let right = p.ground(1000.0, 375.0).unwrap();
        let across = right.x_m - left.x_m;
        assert!(
            close(across, 2.0 * 100.0 * 42f64.to_radians().tan(), 1e-6),
            "{across}"
        );
        let centre = p.ground(500.0, 375.0).unwrap();
        assert!(close(centre.x_m, 0.0, 1e-9) && close(centre.y_m, 0.0, 1e-9));
        // Looking straight down with heading north, the image top is north.
        assert!(p.ground(500.0, 0.0).unwrap().y_m > 0.0);
    }

    #[test]
    fn at_45_degrees_the_centre_is_as_far_as_the_camera_is_high() {
        let p = pose(50.0, 0.0, -45.0, 0.0, 60.0);
        let centre = p.ground(500.0, 375.0).unwrap();
        assert!(
            close(centre.y_m, 50.0, 1e-9) && close(centre.x_m, 0.0, 1e-9),
            "{centre:?}"
        );
        // Lower in the image is nearer.
        assert!(p.ground(500.0, 700.0).unwrap().y_m < 50.0);
        // The horizon and above: no ground.
        let up = pose(50.0, 0.0, 10.0, 0.0, 60.0);
        assert_eq!(up.ground(500.0, 375.0), Err(NoGround::AboveHorizon));
    }

    #[test]
    fn heading_rotates_east_and_north() {
        let north = pose(50.0, 0.0, -45.0, 0.0, 60.0)
            .ground(500.0, 375.0)
            .unwrap();
        let east = pose(50.0, 90.0, -45.0, 0.0, 60.0)
            .ground(500.0, 375.0)
            .unwrap();
        let south_west = pose(50.0, 225.0, -45.0, 0.0, 60.0)
            .ground(500.0, 375.0)
            .unwrap();
        assert!(close(north.y_m, 50.0, 1e-9));
        assert!(
            close(east.x_m, 50.0, 1e-9) && close(east.y_m, 0.0, 1e-9),
            "{east:?}"
        );
        let d = 50.0 / 2f64.sqrt();
        assert!(close(south_west.x_m, -d, 1e-9) && close(south_west.y_m, -d, 1e-9));
    }

    #[test]
    fn roll_turns_the_view_about_its_axis() {
        let level = pose(50.0, 0.0, -45.0, 0.0, 60.0);
        let rolled = pose(50.0, 0.0, -45.0, 10.0, 60.0);
        // The centre of the view stays where it was.
        let (a, b) = (
            level.ground(500.0, 375.0).unwrap(),
            rolled.ground(500.0, 375.0).unwrap(),
        );
        assert!(close(a.x_m, b.x_m, 1e-9) && close(a.y_m, b.y_m, 1e-9));
        // The image's right side dips: what its right edge sees is nearer, its left farther.
        let right = |p: &CameraPose| p.ground(1000.0, 375.0).unwrap().y_m;
        let left = |p: &CameraPose| p.ground(0.0, 375.0).unwrap().y_m;
        assert!(right(&rolled) < right(&level) && left(&rolled) > left(&level));
    }

    #[test]
    fn the_pose_homography_maps_like_the_pose() {
        let p = pose(80.0, 37.0, -60.0, 4.0, 72.0);
        let h = p.homography().unwrap();
        for (u, v) in [
            (0.0, 750.0),
            (500.0, 375.0),
            (1000.0, 600.0),
            (123.0, 456.0),
        ] {
            let a = p.ground(u, v).unwrap();
            let b = h.image_to_ground(u, v).unwrap();
            assert!(
                close(a.x_m, b.x_m, 1e-6) && close(a.y_m, b.y_m, 1e-6),
                "{a:?} {b:?}"
            );
        }
        // Beyond the horizon both say no.
        let level = pose(20.0, 0.0, -5.0, 0.0, 90.0);
        let h = level.homography().unwrap();
        assert!(level.ground(500.0, 0.0).is_err());
        assert!(h.image_to_ground(500.0, 0.0).is_none());
    }

    #[test]
    fn the_error_grows_with_distance_and_with_a_grazing_view() {
        let sigma = Uncertainty {
            pixel_px: 2.0,
            position_m: 0.0,
            alt_m: 0.5,
            heading_deg: 1.0,
            pitch_deg: 1.0,
            roll_deg: 1.0,
        };
        let p = pose(60.0, 0.0, -30.0, 0.0, 80.0);
        let (_, near) = p.ground_with_error(500.0, 740.0, &sigma).unwrap();
        let (_, mid) = p.ground_with_error(500.0, 375.0, &sigma).unwrap();
        let (_, far) = p.ground_with_error(500.0, 150.0, &sigma).unwrap();
        assert!(near < mid && mid < far, "{near} {mid} {far}");
        // Analytically, along the view a pitch error δ moves the point by h·δ/sin²(depression):
        // at the centre (30° down) about 4h·δ.
        let only_pitch = Uncertainty {
            pitch_deg: 1.0,
            ..Default::default()
        };
        let (_, e) = p.ground_with_error(500.0, 375.0, &only_pitch).unwrap();
        let analytic = 60.0 * 1f64.to_radians() / 30f64.to_radians().sin().powi(2);
        assert!(close(e, analytic, 0.01 * analytic), "{e} vs {analytic}");
        // Straight down, a pixel error is a ground-sample distance.
        let nadir = pose(100.0, 0.0, -90.0, 0.0, 90.0);
        let gsd = 2.0 * 100.0 / 1000.0;
        let only_pixel = Uncertainty {
            pixel_px: 1.0,
            ..Default::default()
        };
        let (_, e) = nadir.ground_with_error(500.0, 375.0, &only_pixel).unwrap();
        assert!(close(e, gsd * 2f64.sqrt(), 1e-6), "{e}");
    }
}
