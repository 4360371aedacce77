//! A camera's ground for one frame, and placing detections on it: the pipeline's "place" step.
//!
//! A static camera's ground is its calibration (a fitted or given homography); a drone's is
//! made for each frame from the frame's pose (`geo::pose`), expressed as a homography too, so
//! both take the same path from here: each object's foot (the bottom centre of its box) to
//! ground metres with an error radius, to WGS84, and into the zones it stands in. A position
//! less certain than the camera's `max_ground_error_m` is reported and flagged, and does not
//! count in zones.
//!
//! Ground coordinates are metres east and north of the camera's `origin` when it has one
//! (static cameras: of their calibration's ground frame, which the origin anchors; drones: of
//! the configured origin, so that positions and tracks stay put while the drone moves), and of
//! the point below the drone otherwise.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::{CameraConfig, Config, ConfigError, Invalid};
use crate::contract::{
    BBox, GeoPosition, GroundPosition, ImageSize, NoGround, ObjectReport, Pose, PoseError,
    ZoneReport,
};
use crate::detect::{Detection, ModelInfo};
use crate::geo::pose::{self, CameraPose, Uncertainty};
use crate::geo::{GeoOrigin, GroundPoint, Homography, Polygon};
use crate::risk::RiskPolicy;
use crate::vision::Letterbox;

/// Defaults for every camera's ground uncertainty (`[scene]`); a camera may set its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SceneConfig {
    /// One-sigma error of an object's foot in the image (pixels): where the box's bottom edge
    /// falls on a real foot or wheel.
    pub pixel_error_px: f64,
    /// Positions less certain than this (one-sigma metres) are flagged `uncertain` and not
    /// counted in zones.
    pub max_ground_error_m: f64,
    /// One-sigma pose uncertainties of drones whose frames do not say their own.
    pub pose_error: PoseError,
}

impl Default for SceneConfig {
    fn default() -> Self {
        Self {
            pixel_error_px: 2.0,
            max_ground_error_m: 5.0,
            // A consumer drone: GNSS about 1.5 m, barometric height about 1 m, compass 2°,
            // gimbal angles 1°.
            pose_error: PoseError {
                position_m: 1.5,
                alt_m: 1.0,
                heading_deg: 2.0,
                pitch_deg: 1.0,
                roll_deg: 1.0,
            },
        }
    }
}

impl SceneConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let e = &self.pose_error;
        let values = [
            ("pixel_error_px", self.pixel_error_px),
            ("max_ground_error_m", self.max_ground_error_m),
            ("pose_error.position_m", e.position_m),
            ("pose_error.alt_m", e.alt_m),
            ("pose_error.heading_deg", e.heading_deg),
            ("pose_error.pitch_deg", e.pitch_deg),
            ("pose_error.roll_deg", e.roll_deg),
        ];
        for (key, value) in values {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Invalid::new(key, "must be a finite number ≥ 0"));
            }
        }
        Ok(())
    }
}

/// A zone, in ground metres of its camera (static) or in WGS84 (drones, or any camera with an
/// origin).
#[derive(Debug, Clone)]
struct Zone {
    id: String,
    name: String,
    kind: String,
    ground: Option<Polygon>,
    /// (lat, lon) corners.
    geo: Option<Vec<[f64; 2]>>,
}

/// What vigil knows of one camera.
#[derive(Debug, Clone)]
pub struct Camera {
    pub name: String,
    homography: Option<Homography>,
    origin: Option<GeoOrigin>,
    zones: Vec<Zone>,
    pixel_error_px: f64,
    max_error_m: f64,
    pose_error: PoseError,
}

/// Every configured camera, by (site, id).
#[derive(Debug, Clone, Default)]
pub struct Cameras {
    cameras: HashMap<(String, String), Camera>,
    defaults: SceneConfig,
}

impl Cameras {
    /// From a validated configuration.
    pub fn from_config(config: &Config) -> Result<Cameras, ConfigError> {
        let mut cameras = HashMap::new();
        for (i, c) in config.cameras.iter().enumerate() {
            cameras.insert(
                (c.site.clone(), c.id.clone()),
                camera(c, &config.scene).map_err(|e| e.within(&format!("cameras[{i}]")))?,
            );
        }
        Ok(Cameras {
            cameras,
            defaults: config.scene.clone(),
        })
    }

    pub fn get(&self, site: &str, camera: &str) -> Option<&Camera> {
        self.cameras.get(&(site.to_string(), camera.to_string()))
    }

    /// The ground of one frame: the camera's calibration, or the frame's pose (which wins:
    /// a camera that sends a pose moves).
    pub fn frame(
        &self,
        camera: Option<&Camera>,
        pose: Option<&Pose>,
        size: ImageSize,
    ) -> FrameGround {
        let pixel_px = camera.map_or(self.defaults.pixel_error_px, |c| c.pixel_error_px);
        let max_error_m = camera.map_or(self.defaults.max_ground_error_m, |c| c.max_error_m);
        let origin = camera.and_then(|c| c.origin);
        let model = match (pose, camera.and_then(|c| c.homography.clone())) {
            (Some(p), _) => {
                let projection = CameraPose {
                    alt_m: p.alt_m,
                    heading_deg: p.heading_deg,
                    pitch_deg: p.pitch_deg,
                    roll_deg: p.roll_deg,
                    hfov_deg: p.hfov_deg,
                    width: size.width,
                    height: size.height,
                };
                let e = p
                    .error
                    .unwrap_or(camera.map_or(self.defaults.pose_error, |c| c.pose_error));
                let sigma = Uncertainty {
                    pixel_px,
                    position_m: e.position_m,
                    alt_m: e.alt_m,
                    heading_deg: e.heading_deg,
                    pitch_deg: e.pitch_deg,
                    roll_deg: e.roll_deg,
                };
                let below = GeoOrigin {
                    lat: p.lat,
                    lon: p.lon,
                };
                // Ground metres of the configured origin when there is one: the drone's own
                // position is then an offset within it.
                let (frame_origin, offset) = match origin {
                    Some(o) => (o, o.from_wgs84(p.lat, p.lon)),
                    None => (below, GroundPoint { x_m: 0.0, y_m: 0.0 }),
                };
                Model::Pose {
                    projection,
                    sigma,
                    offset,
                    origin: frame_origin,
                }
            }
            (None, Some(h)) => Model::Static { h, origin },
            (None, None) => Model::None,
        };
        let frame_origin = match &model {
            Model::Pose { origin, .. } => Some(*origin),
            Model::Static { origin, .. } => *origin,
            Model::None => None,
        };
        let zones = camera
            .map(|c| {
                c.zones
                    .iter()
                    .filter_map(|z| {
                        let polygon = match (&z.geo, frame_origin, &z.ground) {
                            (Some(corners), Some(o), _) => Polygon::new(
                                corners
                                    .iter()
                                    .map(|[lat, lon]| {
                                        let g = o.from_wgs84(*lat, *lon);
                                        [g.x_m, g.y_m]
                                    })
                                    .collect(),
                            )
                            .ok()?,
                            (None, _, Some(p)) => p.clone(),
                            _ => return None,
                        };
                        Some(FrameZone {
                            id: z.id.clone(),
                            name: z.name.clone(),
                            kind: z.kind.clone(),
                            polygon,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        FrameGround {
            model,
            zones,
            max_error_m,
            pixel_error_px: pixel_px,
        }
    }
}

fn camera(c: &CameraConfig, defaults: &SceneConfig) -> Result<Camera, Invalid> {
    let homography = c.ground_model()?;
    let origin = c.origin;
    let zones = c
        .zones
        .iter()
        .map(|z| {
            let ground = match z.polygon.is_empty() {
                true => None,
                false => Some(
                    Polygon::new(z.polygon.clone())
                        .map_err(|e| Invalid::new("zones", e.to_string()))?,
                ),
            };
            Ok(Zone {
                id: z.id.clone(),
                name: z.name.clone(),
                kind: z.kind.clone(),
                ground,
                geo: (!z.polygon_geo.is_empty()).then(|| z.polygon_geo.clone()),
            })
        })
        .collect::<Result<Vec<_>, Invalid>>()?;
    Ok(Camera {
        name: c.display_name().to_string(),
        homography,
        origin,
        zones,
        pixel_error_px: c.pixel_error_px.unwrap_or(defaults.pixel_error_px),
        max_error_m: c.max_ground_error_m.unwrap_or(defaults.max_ground_error_m),
        pose_error: c.pose_error.unwrap_or(defaults.pose_error),
    })
}

/// How a frame's pixels reach the ground.
#[derive(Debug, Clone)]
enum Model {
    None,
    Static {
        h: Homography,
        origin: Option<GeoOrigin>,
    },
    Pose {
        projection: CameraPose,
        sigma: Uncertainty,
        /// Where the point below the drone is in the frame's ground metres.
        offset: GroundPoint,
        origin: GeoOrigin,
    },
}

#[derive(Debug, Clone)]
struct FrameZone {
    id: String,
    name: String,
    kind: String,
    polygon: Polygon,
}

/// One frame's ground: how to place objects on it, and its zones there.
#[derive(Debug, Clone)]
pub struct FrameGround {
    model: Model,
    zones: Vec<FrameZone>,
    max_error_m: f64,
    pixel_error_px: f64,
}

/// Where one image point lands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub ground: Option<GroundPosition>,
    pub geo: Option<GeoPosition>,
    pub no_ground: Option<NoGround>,
    pub uncertain: bool,
}

impl FrameGround {
    /// The frame's image → ground homography (static calibration, or from the pose).
    pub fn homography(&self) -> Option<Homography> {
        match &self.model {
            Model::None => None,
            Model::Static { h, .. } => Some(h.clone()),
            Model::Pose { projection, .. } => projection.homography(),
        }
    }

    /// Each zone's outline in image pixels (for drawing on the frame): the corners the
    /// camera sees, in front of it; a zone with fewer than two such corners is left out.
    pub fn zone_outlines_in_image(&self) -> Vec<Vec<(f32, f32)>> {
        let Some(h) = self.homography() else {
            return Vec::new();
        };
        let m = h.matrix();
        let forward = nalgebra::Matrix3::from_fn(|r, c| m[r][c]);
        let Some(inverse) = forward.try_inverse() else {
            return Vec::new();
        };
        self.zone_corners()
            .into_iter()
            .map(|corners| {
                corners
                    .iter()
                    .filter_map(|g| {
                        let q = inverse * nalgebra::Vector3::new(g.x_m, g.y_m, 1.0);
                        let back = forward * q;
                        (q.z.abs() > 1e-12 && back.z * q.z.signum() > 0.0)
                            .then(|| ((q.x / q.z) as f32, (q.y / q.z) as f32))
                    })
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .collect::<Vec<_>>()
            })
            .filter(|outline| outline.len() >= 2)
            .collect()
    }

    /// Each zone's corners on this frame's ground (for drawing).
    pub fn zone_corners(&self) -> Vec<Vec<GroundPoint>> {
        self.zones
            .iter()
            .map(|z| {
                z.polygon
                    .points()
                    .iter()
                    .map(|[x_m, y_m]| GroundPoint {
                        x_m: *x_m,
                        y_m: *y_m,
                    })
                    .collect()
            })
            .collect()
    }

    /// Places the image point (u, v) (an object's foot) on the ground, with its error.
    pub fn place(&self, u: f64, v: f64) -> Placement {
        let found = match &self.model {
            Model::None => Err(NoGround::NoGroundModel),
            Model::Static { h, origin } => match h.image_to_ground(u, v) {
                Some(g) => Ok((
                    g,
                    pose::homography_error(h, u, v, self.pixel_error_px),
                    *origin,
                )),
                None => Err(NoGround::AboveHorizon),
            },
            Model::Pose {
                projection,
                sigma,
                offset,
                origin,
            } => match projection.ground_with_error(u, v, sigma) {
                Ok((g, e)) => Ok((
                    GroundPoint {
                        x_m: g.x_m + offset.x_m,
                        y_m: g.y_m + offset.y_m,
                    },
                    Some(e),
                    Some(*origin),
                )),
                Err(pose::NoGround::AboveHorizon) => Err(NoGround::AboveHorizon),
            },
        };
        match found {
            Err(reason) => Placement {
                ground: None,
                geo: None,
                no_ground: Some(reason),
                uncertain: false,
            },
            Ok((g, error, origin)) => {
                let error_m = error.map(|e| (e * 100.0).round() / 100.0);
                // An unbounded (infinite or NaN) error is uncertain too.
                let uncertain = error.is_some_and(|e| e.is_nan() || e > self.max_error_m);
                let geo = origin.map(|o| {
                    let (lat, lon) = o.to_wgs84(g);
                    GeoPosition { lat, lon, error_m }
                });
                Placement {
                    ground: Some(GroundPosition {
                        x_m: g.x_m,
                        y_m: g.y_m,
                        error_m,
                    }),
                    geo,
                    no_ground: None,
                    uncertain,
                }
            }
        }
    }

    /// The zones a certain ground point is in.
    fn zones_at(&self, p: &Placement) -> Vec<String> {
        match (p.ground, p.uncertain) {
            (Some(g), false) => self
                .zones
                .iter()
                .filter(|z| {
                    z.polygon.contains(GroundPoint {
                        x_m: g.x_m,
                        y_m: g.y_m,
                    })
                })
                .map(|z| z.id.clone())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Objects (source-pixel boxes, ground and WGS84 positions with errors, zones) and zone
/// reports (occupancy, density) for a frame's detections.
pub fn place(
    ground: &FrameGround,
    detections: &[Detection],
    letterbox: &Letterbox,
    info: &ModelInfo,
    policy: &RiskPolicy,
    confidence: f32,
) -> (Vec<ObjectReport>, Vec<ZoneReport>) {
    let objects: Vec<ObjectReport> = detections
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (x1, y1) = letterbox.to_source(d.x1, d.y1);
            let (x2, y2) = letterbox.to_source(d.x2, d.y2);
            let at = ground.place(f64::from(x1 + x2) / 2.0, f64::from(y2));
            ObjectReport {
                id: i as u32,
                class_id: d.class_id,
                label: info.label(d.class_id),
                confidence: d.score,
                bbox: BBox { x1, y1, x2, y2 },
                ground: at.ground,
                geo: at.geo,
                zones: ground.zones_at(&at),
                no_ground: at.no_ground,
                uncertain: at.uncertain,
                low_score: d.score < confidence,
            }
        })
        .collect();
    let zones = ground
        .zones
        .iter()
        .map(|z| {
            let occupancy = objects
                .iter()
                .filter(|o| {
                    !o.low_score
                        && o.zones.contains(&z.id)
                        && policy.counts_in_zone(&o.label, &z.kind)
                })
                .count() as u32;
            ZoneReport {
                id: z.id.clone(),
                name: z.name.clone(),
                kind: z.kind.clone(),
                occupancy,
                density_per_m2: f64::from(occupancy) / z.polygon.area_m2(),
                area_m2: z.polygon.area_m2(),
            }
        })
        .collect();
    (objects, zones)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml(&format!(
            r#"
[[cameras]]
site = "s"
id = "static"
homography = [[0.05, 0.0, -20.0], [0.0, -0.1, 60.0], [0.0, 0.002, 1.0]]
origin = {{ lat = 37.5, lon = 127.0 }}
zones = [
  {{ id = "m", name = "Metres", kind = "restricted", polygon = [[-50, -50], [50, -50], [50, 50], [-50, 50]] }},
  {{ id = "g", name = "Geo", kind = "restricted", polygon_geo = [[37.4995, 126.9995], [37.4995, 127.0005], [37.5005, 127.0005], [37.5005, 126.9995]] }},
]
{extra}
"#
        ))
        .unwrap()
    }

    fn size() -> ImageSize {
        ImageSize {
            width: 800,
            height: 600,
        }
    }

    #[test]
    fn a_static_camera_places_with_an_error_radius_in_metre_and_lat_lon_zones() {
        let config = config("");
        let cameras = Cameras::from_config(&config).unwrap();
        let ground = cameras.frame(cameras.get("s", "static"), None, size());
        let p = ground.place(400.0, 500.0);
        let g = p.ground.unwrap();
        assert!(g.error_m.is_some_and(|e| e > 0.0 && e < 1.0), "{g:?}");
        assert!(p.geo.is_some() && !p.uncertain);
        let mut zones = ground.zones_at(&p);
        zones.sort();
        assert_eq!(zones, vec!["g".to_string(), "m".to_string()]);
        // Far up the image each pixel spans more ground: the error grows.
        let far = ground.place(400.0, 5.0).ground.unwrap();
        assert!(far.error_m.unwrap() > g.error_m.unwrap());
    }

    #[test]
    fn a_position_beyond_the_allowed_error_is_flagged_and_not_in_zones() {
        let config = config("max_ground_error_m = 0.01");
        let cameras = Cameras::from_config(&config).unwrap();
        let ground = cameras.frame(cameras.get("s", "static"), None, size());
        let p = ground.place(400.0, 500.0);
        assert!(p.uncertain && p.ground.is_some());
        assert!(ground.zones_at(&p).is_empty());
    }

    #[test]
    fn a_pose_wins_over_the_calibration_and_the_horizon_has_no_ground() {
        let config = config("");
        let cameras = Cameras::from_config(&config).unwrap();
        let pose = Pose {
            lat: 37.5,
            lon: 127.0,
            alt_m: 10.0,
            heading_deg: 0.0,
            pitch_deg: -10.0,
            roll_deg: 0.0,
            hfov_deg: 90.0,
            error: None,
        };
        let ground = cameras.frame(cameras.get("s", "static"), Some(&pose), size());
        assert_eq!(
            ground.place(400.0, 0.0).no_ground,
            Some(NoGround::AboveHorizon)
        );
        let near = ground.place(400.0, 599.0);
        let g = near.ground.unwrap();
        // The camera's origin is where the drone is: its ground metres start below it.
        assert!(g.y_m > 0.0 && g.x_m.abs() < 0.01, "{g:?}");
        let unknown = cameras.frame(None, None, size());
        assert_eq!(
            unknown.place(1.0, 1.0).no_ground,
            Some(NoGround::NoGroundModel)
        );
    }
}
