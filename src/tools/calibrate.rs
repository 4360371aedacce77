//! `vigil calibrate POINTS.csv`: a static camera's homography from surveyed points.
//!
//! The CSV has a header and one point per line: image pixel `u,v` and its ground position,
//! either in metres (`x_m,y_m`, east and north of any fixed point) or in WGS84 (`lat,lon`;
//! the origin is then `--origin`, or the points' centroid). Lines starting with `#` are
//! comments. The fit is RANSAC over sets of four (mistyped or misclicked points are found and
//! left out) and least squares on the rest; the report gives the matrix, each point's residual
//! with outliers marked, and the `[[cameras]]` entry for config/vigil.toml.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::ToolError;
use crate::geo::ransac;
use crate::geo::{GeoOrigin, PointPair};

/// What `vigil calibrate` was asked.
pub struct CalibrateOptions {
    pub points: PathBuf,
    /// A point whose ground position is further than this from where the fit puts it is an
    /// outlier (metres).
    pub threshold_m: f64,
    pub site: String,
    pub camera: String,
    /// For lat/lon points: the ground origin (default: their centroid).
    pub origin: Option<GeoOrigin>,
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the header must name u,v and either x_m,y_m or lat,lon (got {header:?})")]
    Header { path: PathBuf, header: String },
    #[error("{path} line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("the fit failed: {0}")]
    Fit(#[from] crate::geo::GeoError),
}

impl From<CalibrateError> for ToolError {
    fn from(e: CalibrateError) -> Self {
        ToolError::Calibrate(Box::new(e))
    }
}

/// The points of a calibration file, in ground metres, and the origin when they came as
/// lat/lon.
pub fn read_points(
    path: &Path,
    origin: Option<GeoOrigin>,
) -> Result<(Vec<PointPair>, Option<GeoOrigin>), CalibrateError> {
    let text = std::fs::read_to_string(path).map_err(|source| CalibrateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let header: Vec<String> = lines
        .next()
        .map(|(_, l)| {
            l.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    let column = |name: &str| header.iter().position(|c| c == name);
    let geo = column("lat").is_some();
    let (a, b) = if geo { ("lat", "lon") } else { ("x_m", "y_m") };
    let (Some(u), Some(v), Some(ga), Some(gb)) = (column("u"), column("v"), column(a), column(b))
    else {
        return Err(CalibrateError::Header {
            path: path.to_path_buf(),
            header: header.join(","),
        });
    };
    let mut rows = Vec::new();
    for (n, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let value = |i: usize| -> Result<f64, CalibrateError> {
            cells
                .get(i)
                .and_then(|c| c.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .ok_or_else(|| CalibrateError::Line {
                    path: path.to_path_buf(),
                    line: n + 1,
                    message: format!("column {} is not a number", i + 1),
                })
        };
        rows.push([value(u)?, value(v)?, value(ga)?, value(gb)?]);
    }
    if !geo {
        let pairs = rows
            .iter()
            .map(|r| PointPair {
                image: [r[0], r[1]],
                ground: [r[2], r[3]],
            })
            .collect();
        return Ok((pairs, origin));
    }
    let n = rows.len().max(1) as f64;
    let origin = origin.unwrap_or(GeoOrigin {
        lat: rows.iter().map(|r| r[2]).sum::<f64>() / n,
        lon: rows.iter().map(|r| r[3]).sum::<f64>() / n,
    });
    let pairs = rows
        .iter()
        .map(|r| {
            let g = origin.from_wgs84(r[2], r[3]);
            PointPair {
                image: [r[0], r[1]],
                ground: [g.x_m, g.y_m],
            }
        })
        .collect();
    Ok((pairs, Some(origin)))
}

/// Runs `vigil calibrate`: the report, as text.
pub fn run(options: &CalibrateOptions) -> Result<String, CalibrateError> {
    let (pairs, origin) = read_points(&options.points, options.origin)?;
    let fit = ransac::fit(&pairs, options.threshold_m, 2000)?;
    let mut out = String::new();
    let m = fit.homography.matrix();
    let _ = writeln!(out, "# image → ground homography (row-major)");
    for row in m {
        let _ = writeln!(
            out,
            "#   {:>14.8} {:>14.8} {:>14.8}",
            row[0], row[1], row[2]
        );
    }
    let _ = writeln!(
        out,
        "#\n# {:>3}  {:>9} {:>9}  {:>10} {:>10}  {:>9}",
        "#", "u", "v", "x_m", "y_m", "error m"
    );
    for (i, (p, (e, inlier))) in pairs
        .iter()
        .zip(fit.residuals_m.iter().zip(&fit.inliers))
        .enumerate()
    {
        let _ = writeln!(
            out,
            "# {:>3}  {:>9.1} {:>9.1}  {:>10.3} {:>10.3}  {:>9.3}{}",
            i + 1,
            p.image[0],
            p.image[1],
            p.ground[0],
            p.ground[1],
            e,
            if *inlier { "" } else { "  OUTLIER (left out)" }
        );
    }
    let kept: Vec<&PointPair> = pairs
        .iter()
        .zip(&fit.inliers)
        .filter(|(_, k)| **k)
        .map(|(p, _)| p)
        .collect();
    let rms = (fit
        .residuals_m
        .iter()
        .zip(&fit.inliers)
        .filter(|(_, k)| **k)
        .map(|(e, _)| e * e)
        .sum::<f64>()
        / kept.len().max(1) as f64)
        .sqrt();
    let _ = writeln!(
        out,
        "#\n# {} points, {} outliers; inliers' error rms {rms:.3} m (threshold {} m)\n",
        pairs.len(),
        fit.outliers(),
        options.threshold_m
    );
    let _ = writeln!(out, "[[cameras]]");
    let _ = writeln!(out, "site = {:?}", options.site);
    let _ = writeln!(out, "id = {:?}", options.camera);
    if let Some(o) = origin {
        let _ = writeln!(out, "origin = {{ lat = {:.7}, lon = {:.7} }}", o.lat, o.lon);
    }
    let _ = writeln!(out, "calibration = [");
    for p in kept {
        let _ = writeln!(
            out,
            "  {{ image = [{}, {}], ground = [{:.3}, {:.3}] }},",
            p.image[0], p.image[1], p.ground[0], p.ground[1]
        );
    }
    let _ = writeln!(out, "]");
    Ok(out)
}
