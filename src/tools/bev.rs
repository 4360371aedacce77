//! `vigil bev`: a frame seen from above. The image is warped onto the ground plane through the
//! camera's calibration (or, with `--pose`, a drone frame's pose), and the zones, the detected
//! objects (each with its error circle), a 5 m grid, a 10 m scale bar and a north arrow are
//! drawn on it: the quickest way for a person to check a calibration or a pose.

use std::path::PathBuf;

use image::{Rgb, RgbImage};
use imageproc::drawing::{
    draw_filled_circle_mut, draw_hollow_circle_mut, draw_hollow_polygon_mut, draw_line_segment_mut,
    draw_polygon_mut,
};
use imageproc::geometric_transformations::{warp_into_with, Interpolation};
use imageproc::point::Point;
use nalgebra::{Matrix3, Vector3};

use super::ToolError;
use crate::config::Config;
use crate::contract::{ImageSize, ObjectReport, Pose};
use crate::geo::{GroundPoint, Homography};
use crate::scene::Cameras;

pub struct BevOptions {
    pub image: PathBuf,
    pub out: PathBuf,
    pub site: String,
    pub camera: String,
    pub pose: Option<Pose>,
    /// Ground metres shown around the view at most, from the camera's nearest point.
    pub max_range_m: f64,
    /// Output pixels per metre (0: fit about 1000 pixels).
    pub pixels_per_m: f64,
    /// Run the detector on the image and draw what it finds.
    pub detect: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BevError {
    #[error("camera {0} has no ground calibration and no --pose was given")]
    NoGround(String),
    #[error("nothing of the image reaches the ground (is the camera looking above the horizon?)")]
    NoFootprint,
}

const BACKGROUND: Rgb<u8> = Rgb([24, 24, 28]);
const GRID: Rgb<u8> = Rgb([90, 90, 96]);
const ZONE: Rgb<u8> = Rgb([255, 60, 60]);
const OBJECT: Rgb<u8> = Rgb([255, 200, 0]);
const NORTH: Rgb<u8> = Rgb([255, 255, 255]);

/// Writes the bird's-eye view; returns its size and ground extent for the caller's message.
pub async fn run(config: &Config, options: &BevOptions) -> Result<String, ToolError> {
    let bytes = std::fs::read(&options.image).map_err(|source| ToolError::Read {
        path: options.image.clone(),
        source,
    })?;
    let frame = crate::vision::decode(&bytes, &config.vision).map_err(ToolError::AnnotateDecode)?;
    let size = ImageSize {
        width: frame.width(),
        height: frame.height(),
    };
    let cameras = Cameras::from_config(config).map_err(|e| ToolError::Config(Box::new(e)))?;
    let camera = cameras.get(&options.site, &options.camera);
    let ground = cameras.frame(camera, options.pose.as_ref(), size);
    let h = ground.homography().ok_or_else(|| {
        ToolError::Bev(BevError::NoGround(format!(
            "{}/{}",
            options.site, options.camera
        )))
    })?;
    let objects = if options.detect {
        detect(config, &options.site, &options.camera, &bytes, options.pose).await?
    } else {
        Vec::new()
    };
    let view = View::fit(&h, size, options, &ground.zone_corners())?;
    let mut out = RgbImage::from_pixel(view.width, view.height, BACKGROUND);
    let to_image = view.ground_to_image(&h);
    warp_into_with(
        &frame,
        to_image,
        Interpolation::Bilinear,
        BACKGROUND,
        &mut out,
    );
    view.grid(&mut out);
    for corners in ground.zone_corners() {
        let poly: Vec<Point<f32>> = corners
            .iter()
            .map(|g| {
                let (x, y) = view.pixel(*g);
                Point::new(x, y)
            })
            .collect();
        if poly.len() >= 3 && poly.first() != poly.last() {
            draw_hollow_polygon_mut(&mut out, &poly, ZONE);
        }
    }
    for o in &objects {
        let Some(g) = o.ground else { continue };
        let (x, y) = view.pixel(GroundPoint {
            x_m: g.x_m,
            y_m: g.y_m,
        });
        let r = g
            .error_m
            .map_or(4.0, |e| (e * view.scale) as f32)
            .clamp(3.0, 200.0);
        draw_hollow_circle_mut(&mut out, (x as i32, y as i32), r as i32, OBJECT);
        draw_filled_circle_mut(&mut out, (x as i32, y as i32), 3, OBJECT);
    }
    view.north_and_scale(&mut out);
    out.save(&options.out).map_err(ToolError::AnnotateWrite)?;
    Ok(format!(
        "bird's-eye view written to {}: {}×{} px, {:.1} px/m, ground x {:.1}…{:.1} m, y {:.1}…{:.1} m, {} objects",
        options.out.display(),
        view.width,
        view.height,
        view.scale,
        view.x0,
        view.x0 + f64::from(view.width) / view.scale,
        view.y1 - f64::from(view.height) / view.scale,
        view.y1,
        objects.len()
    ))
}

async fn detect(
    config: &Config,
    site: &str,
    camera: &str,
    bytes: &[u8],
    pose: Option<Pose>,
) -> Result<Vec<ObjectReport>, ToolError> {
    let detector = crate::detect::Detector::load(&config.detector)
        .map_err(|e| ToolError::Detect(Box::new(e)))?;
    let pipeline = crate::pipeline::Pipeline::new(config, detector)
        .map_err(|e| ToolError::Config(Box::new(e)))?;
    let frame = crate::contract::Frame {
        frame_id: "bev".into(),
        captured_at: chrono::Utc::now(),
        image: bytes::Bytes::copy_from_slice(bytes),
        site: Some(site.into()),
        camera_id: Some(camera.into()),
        pose,
        meta: Default::default(),
    };
    let origin = crate::pipeline::Origin {
        site,
        camera,
        queued: Default::default(),
        patience: None,
    };
    let event = pipeline
        .process(frame, origin)
        .await
        .map_err(|e| ToolError::Analysis(Box::new(e)))?;
    pipeline.detector().close();
    Ok(event.objects.into_iter().filter(|o| !o.low_score).collect())
}

/// The ground window drawn, and its pixel scale: x east to the right, north up.
struct View {
    x0: f64,
    y1: f64,
    scale: f64,
    width: u32,
    height: u32,
}

impl View {
    /// Fits the image's footprint on the ground (up to `max_range_m` deep) and the zones.
    fn fit(
        h: &Homography,
        size: ImageSize,
        options: &BevOptions,
        zones: &[Vec<GroundPoint>],
    ) -> Result<View, ToolError> {
        let (w, hgt) = (f64::from(size.width), f64::from(size.height));
        // Sample the image's edges; keep what reaches the ground.
        let mut points: Vec<GroundPoint> = Vec::new();
        for i in 0..=40 {
            let t = f64::from(i) / 40.0;
            for (u, v) in [(t * w, hgt), (t * w, 0.0), (0.0, t * hgt), (w, t * hgt)] {
                if let Some(g) = h.image_to_ground(u, v) {
                    points.push(g);
                }
            }
        }
        if points.is_empty() {
            return Err(ToolError::Bev(BevError::NoFootprint));
        }
        // The nearest visible ground is where the image bottom lands; cut the far side at
        // max_range_m from it so a view reaching the horizon stays drawable.
        let near = h.image_to_ground(w / 2.0, hgt).unwrap_or(points[0]);
        points.retain(|p| (p.x_m - near.x_m).hypot(p.y_m - near.y_m) <= options.max_range_m);
        points.extend(zones.iter().flatten().copied());
        if points.is_empty() {
            points.push(near);
        }
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in &points {
            x0 = x0.min(p.x_m);
            x1 = x1.max(p.x_m);
            y0 = y0.min(p.y_m);
            y1 = y1.max(p.y_m);
        }
        let margin = 0.05 * (x1 - x0).max(y1 - y0).max(10.0);
        let (x0, x1, y0, y1) = (x0 - margin, x1 + margin, y0 - margin, y1 + margin);
        let scale = if options.pixels_per_m > 0.0 {
            options.pixels_per_m
        } else {
            1000.0 / (x1 - x0).max(y1 - y0)
        };
        Ok(View {
            x0,
            y1,
            scale,
            width: ((x1 - x0) * scale).ceil().clamp(16.0, 4000.0) as u32,
            height: ((y1 - y0) * scale).ceil().clamp(16.0, 4000.0) as u32,
        })
    }

    fn pixel(&self, g: GroundPoint) -> (f32, f32) {
        (
            ((g.x_m - self.x0) * self.scale) as f32,
            ((self.y1 - g.y_m) * self.scale) as f32,
        )
    }

    /// Output pixel → image pixel through the inverse homography; ground the camera cannot
    /// see (behind it) maps outside the image, so it stays background.
    fn ground_to_image(&self, h: &Homography) -> impl Fn(f32, f32) -> (f32, f32) + Send + Sync {
        let m = h.matrix();
        let forward = Matrix3::from_fn(|r, c| m[r][c]);
        let inverse = forward.try_inverse().unwrap_or_else(Matrix3::zeros);
        let (x0, y1, scale) = (self.x0, self.y1, self.scale);
        move |px, py| {
            let g = Vector3::new(x0 + f64::from(px) / scale, y1 - f64::from(py) / scale, 1.0);
            let q = inverse * g;
            // The image point must map forward with w > 0 (in front of the camera).
            let back = forward * q;
            if q.z.abs() < 1e-12 || back.z * q.z.signum() <= 0.0 {
                return (-1.0, -1.0);
            }
            ((q.x / q.z) as f32, (q.y / q.z) as f32)
        }
    }

    /// Grid lines every 5 m.
    fn grid(&self, out: &mut RgbImage) {
        let step = 5.0;
        let (w, h) = (f64::from(self.width), f64::from(self.height));
        let mut x = (self.x0 / step).ceil() * step;
        while (x - self.x0) * self.scale < w {
            let px = ((x - self.x0) * self.scale) as f32;
            draw_line_segment_mut(out, (px, 0.0), (px, h as f32), GRID);
            x += step;
        }
        let y0 = self.y1 - h / self.scale;
        let mut y = (y0 / step).ceil() * step;
        while y < self.y1 {
            let py = ((self.y1 - y) * self.scale) as f32;
            draw_line_segment_mut(out, (0.0, py), (w as f32, py), GRID);
            y += step;
        }
    }

    /// A north arrow (north is up) in the top right corner and a 10 m scale bar below it.
    fn north_and_scale(&self, out: &mut RgbImage) {
        let (x, y) = (self.width as i32 - 30, 14);
        let arrow = [
            Point::new(x, y),
            Point::new(x - 9, y + 26),
            Point::new(x + 9, y + 26),
        ];
        draw_polygon_mut(out, &arrow, NORTH);
        let bar = (10.0 * self.scale) as f32;
        let (bx, by) = (self.width as f32 - 20.0 - bar, 56.0);
        for dy in 0..3 {
            draw_line_segment_mut(out, (bx, by + dy as f32), (bx + bar, by + dy as f32), NORTH);
        }
    }
}
