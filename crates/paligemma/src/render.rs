//! Drawing detections and segmentation masks onto an image: translucent mask overlays, box
//! outlines and labels in a built-in bitmap font.
//!
//! Output is meant for people (a README figure, a debugging glance), so the style adapts to the
//! image size: lines and letters grow by one pixel per 256 pixels of the shorter side. There is
//! no font or drawing dependency; the glyphs are the const table at the end of this file.

use crate::error::{Error, Result};
use crate::image::RgbImage;

/// One object to draw. The box is in pixels of the image, `x2`/`y2` exclusive; it may extend
/// past the image (it is clipped).
#[derive(Debug, Clone, Copy)]
pub struct Annotation<'a> {
    /// Drawn above the box; characters outside printable ASCII show as `?`. Empty: no label.
    pub label: &'a str,
    pub x1: i64,
    pub y1: i64,
    pub x2: i64,
    pub y2: i64,
    /// A mask the size of the image (`width · height` bytes, row-major, non-zero = object),
    /// overlaid in the object's colour.
    pub mask: Option<&'a [u8]>,
}

/// Colours of successive objects (distinct hues, readable on photos).
pub const PALETTE: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [255, 225, 25],
    [0, 128, 128],
];

/// Mask opacity, out of 256.
const MASK_ALPHA: u32 = 115;

/// Keeps every coordinate far from `i64` overflow while staying outside any real image, so the
/// drawing arithmetic below never wraps, whatever a caller passes.
const COORD_LIMIT: i64 = 1 << 40;

/// Draws `items` onto `img`: first every mask, then every box, then every label, so that no
/// overlay hides a box and no box crosses a label. Objects with the same label share a colour;
/// the `k`-th distinct label gets `PALETTE[k % 10]`.
///
/// Fails (without drawing anything) when a mask does not have `width · height` bytes.
pub fn annotate(img: &mut RgbImage, items: &[Annotation]) -> Result<()> {
    let pixels = img.width as usize * img.height as usize;
    if img.data.len() != pixels * 3 {
        return Err(Error::invalid(
            "image",
            format!("{} bytes for a {}×{} RGB image", img.data.len(), img.width, img.height),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        if let Some(mask) = item.mask {
            if mask.len() != pixels {
                return Err(Error::invalid(
                    "mask",
                    format!(
                        "object {i}: the mask has {} bytes, but the image is {}×{} = {pixels} pixels",
                        mask.len(),
                        img.width,
                        img.height
                    ),
                ));
            }
        }
    }
    let scale = style_scale(img.width, img.height);
    let colours = label_colours(items);
    for (item, &rgb) in items.iter().zip(&colours) {
        if let Some(mask) = item.mask {
            blend_mask(img, mask, rgb);
        }
    }
    for (item, &rgb) in items.iter().zip(&colours) {
        let (x1, y1, x2, y2) = clamp_box(item);
        stroke_rect(img, x1, y1, x2, y2, scale, rgb);
    }
    for (item, &rgb) in items.iter().zip(&colours) {
        let (x1, y1, _, _) = clamp_box(item);
        draw_label(img, item.label, x1, y1, scale, rgb);
    }
    Ok(())
}

/// One colour per distinct label, in order of first appearance.
fn label_colours(items: &[Annotation]) -> Vec<[u8; 3]> {
    let mut seen: Vec<&str> = Vec::new();
    items
        .iter()
        .map(|item| {
            let k = seen.iter().position(|&l| l == item.label).unwrap_or_else(|| {
                seen.push(item.label);
                seen.len() - 1
            });
            PALETTE[k % PALETTE.len()]
        })
        .collect()
}

/// Line width and font magnification: 1 up to 256 px on the shorter side, then +1 per 256 px.
fn style_scale(width: u32, height: u32) -> i64 {
    i64::from(width.min(height).div_ceil(256).clamp(1, 8))
}

fn clamp_box(a: &Annotation) -> (i64, i64, i64, i64) {
    let c = |v: i64| v.clamp(-COORD_LIMIT, COORD_LIMIT);
    (c(a.x1), c(a.y1), c(a.x2), c(a.y2))
}

/// Fills `[x1, x2) × [y1, y2)`, clipped to the image.
fn fill_rect(img: &mut RgbImage, x1: i64, y1: i64, x2: i64, y2: i64, rgb: [u8; 3]) {
    let (w, h) = (i64::from(img.width), i64::from(img.height));
    let (x1, x2) = (x1.clamp(0, w), x2.clamp(0, w));
    let (y1, y2) = (y1.clamp(0, h), y2.clamp(0, h));
    for y in y1..y2 {
        let row = (y * w) as usize * 3;
        for x in x1..x2 {
            let at = row + x as usize * 3;
            img.data[at..at + 3].copy_from_slice(&rgb);
        }
    }
}

/// A `t`-pixel outline just inside `[x1, x2) × [y1, y2)`; nothing for an empty box.
fn stroke_rect(img: &mut RgbImage, x1: i64, y1: i64, x2: i64, y2: i64, t: i64, rgb: [u8; 3]) {
    if x2 <= x1 || y2 <= y1 {
        return;
    }
    fill_rect(img, x1, y1, x2, (y1 + t).min(y2), rgb);
    fill_rect(img, x1, (y2 - t).max(y1), x2, y2, rgb);
    fill_rect(img, x1, y1, (x1 + t).min(x2), y2, rgb);
    fill_rect(img, (x2 - t).max(x1), y1, x2, y2, rgb);
}

fn blend_mask(img: &mut RgbImage, mask: &[u8], rgb: [u8; 3]) {
    for (px, &m) in img.data.chunks_exact_mut(3).zip(mask) {
        if m != 0 {
            for (v, &c) in px.iter_mut().zip(&rgb) {
                *v = ((u32::from(*v) * (256 - MASK_ALPHA) + u32::from(c) * MASK_ALPHA) >> 8) as u8;
            }
        }
    }
}

/// Glyph cell: 5×9 pixels (capitals in rows 0–6, descenders in 7–8) plus one column of spacing.
const GLYPH_W: i64 = 5;
const GLYPH_H: i64 = 9;
const ADVANCE: i64 = GLYPH_W + 1;

/// The label on a filled tag in the box's colour, just above the box's top-left corner (inside
/// the box when there is no room above), shifted left if it would leave the image.
fn draw_label(img: &mut RgbImage, label: &str, x1: i64, y1: i64, s: i64, rgb: [u8; 3]) {
    let chars = label.chars().count() as i64;
    if chars == 0 {
        return;
    }
    let pad = s;
    let tag_w = (chars * ADVANCE - 1) * s + 2 * pad;
    let tag_h = GLYPH_H * s + 2 * pad;
    let (w, h) = (i64::from(img.width), i64::from(img.height));
    let x = x1.min(w - tag_w).max(0);
    let y = if y1 - tag_h >= 0 { y1 - tag_h } else { y1.clamp(0, (h - tag_h).max(0)) };
    fill_rect(img, x, y, x + tag_w, y + tag_h, rgb);
    // Dark text on light colours, light text on dark ones (Rec. 601 luma).
    let luma = 299 * u32::from(rgb[0]) + 587 * u32::from(rgb[1]) + 114 * u32::from(rgb[2]);
    let ink = if luma > 150_000 { [0, 0, 0] } else { [255, 255, 255] };
    let mut pen = x + pad;
    for ch in label.chars() {
        if pen >= w {
            break;
        }
        draw_glyph(img, glyph(ch), pen, y + pad, s, ink);
        pen += ADVANCE * s;
    }
}

fn draw_glyph(img: &mut RgbImage, bits: u64, x: i64, y: i64, s: i64, ink: [u8; 3]) {
    for row in 0..GLYPH_H {
        for col in 0..GLYPH_W {
            if bits >> (row * GLYPH_W + col) & 1 == 1 {
                fill_rect(img, x + col * s, y + row * s, x + (col + 1) * s, y + (row + 1) * s, ink);
            }
        }
    }
}

/// The bitmap of a character: printable ASCII from the table, anything else as `?`.
fn glyph(ch: char) -> u64 {
    let code = ch as u32;
    let index = if (0x20..0x7f).contains(&code) { code - 0x20 } else { u32::from(b'?') - 0x20 };
    FONT[index as usize]
}

/// Printable ASCII (0x20–0x7E), one `u64` per character: bit `row · 5 + col` is the pixel at
/// (`col`, `row`) of the 5×9 cell. Drawn for this project.
const FONT: [u64; 95] = [
    0x000000000000, 0x000100421084, 0x00000000294a, 0x000295f57d4a, 0x00011f4717c4, 0x000632222263,
    0x000593511526, 0x000000001084, 0x000208210888, 0x000088842082, 0x000009575480, 0x0000084f9080,
    0x00110c000000, 0x0000000f8000, 0x00018c000000, 0x000002222200, 0x0003a33ae62e, 0x0003884210c4,
    0x0007c444422e, 0x0003a304111f, 0x000211f4a988, 0x0003a3083c3f, 0x0003a317844c, 0x00008422221f,
    0x0003a317462e, 0x0001910f462e, 0x00000c6018c0, 0x0000886018c0, 0x000208208888, 0x000001f07c00,
    0x000088882082, 0x00010044422e, 0x0003ab5b422e, 0x0004631fc62e, 0x0003e317c62f, 0x0003a210862e,
    0x0001d318c527, 0x0007c217843f, 0x00004217843f, 0x0007a31e862e, 0x0004631fc631, 0x00038842108e,
    0x00019284211c, 0x000452519531, 0x0007c2108421, 0x0004631ad771, 0x0004639ace31, 0x0003a318c62e,
    0x00004217c62f, 0x00059358c62e, 0x00045257c62f, 0x0003e107043e, 0x00010842109f, 0x0003a318c631,
    0x00011518c631, 0x0002ab5ac631, 0x000462a22a31, 0x000108454631, 0x0007c222221f, 0x00038421084e,
    0x000020820820, 0x00039084210e, 0x000000004544, 0x00f800000000, 0x000000002082, 0x0007a3e83800,
    0x0003e319b421, 0x0003a210b800, 0x0007a31cda10, 0x000383f8b800, 0x000084238a4c, 0x0e87a318f800,
    0x00046319b421, 0x000388421804, 0x064a10843008, 0x00024a32a421, 0x000388421086, 0x00056b5aac00,
    0x00046319b400, 0x0003a318b800, 0x010be318bc00, 0x1087a318f800, 0x00004219b400, 0x0003e0e0f800,
    0x000324211c42, 0x0005b318c400, 0x00011518c400, 0x0002ab58c400, 0x000454454400, 0x0e87a318c400,
    0x0007c4447c00, 0x000608411098, 0x000108421084, 0x0000c8441083, 0x0000008a8800,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(width: u32, height: u32) -> RgbImage {
        RgbImage { width, height, data: vec![128; width as usize * height as usize * 3] }
    }

    fn px(img: &RgbImage, x: u32, y: u32) -> [u8; 3] {
        let at = (y * img.width + x) as usize * 3;
        [img.data[at], img.data[at + 1], img.data[at + 2]]
    }

    fn item(label: &str, x1: i64, y1: i64, x2: i64, y2: i64) -> Annotation<'_> {
        Annotation { label, x1, y1, x2, y2, mask: None }
    }

    #[test]
    fn every_glyph_fits_its_cell_and_only_space_is_blank() {
        for (i, &bits) in FONT.iter().enumerate() {
            assert_eq!(bits >> (GLYPH_W * GLYPH_H), 0, "glyph {:?} spills out of the cell", (i as u8 + 0x20) as char);
            assert_eq!(bits == 0, i == 0, "glyph {:?}", (i as u8 + 0x20) as char);
        }
        assert_eq!(glyph('é'), glyph('?'));
        // 'T': a full top row, then the middle column.
        assert_eq!(glyph('T') & 0x1f, 0x1f);
        assert_eq!(glyph('T') >> 5 & 0x1f, 0b00100);
    }

    #[test]
    fn boxes_are_outlined_and_the_inside_is_untouched() {
        let mut img = grey(64, 48);
        annotate(&mut img, &[item("", 10, 20, 30, 40)]).unwrap();
        let red = PALETTE[0];
        assert_eq!(px(&img, 10, 20), red);
        assert_eq!(px(&img, 29, 39), red);
        assert_eq!(px(&img, 20, 20), red);
        assert_eq!(px(&img, 20, 30), [128; 3], "inside");
        assert_eq!(px(&img, 30, 30), [128; 3], "x2 is exclusive");
        assert_eq!(px(&img, 9, 30), [128; 3], "outside");
    }

    #[test]
    fn a_label_sits_above_the_box_or_inside_at_the_top() {
        let mut img = grey(100, 100);
        annotate(&mut img, &[item("cat", 20, 50, 80, 90)]).unwrap();
        // Tag: 3·6−1 = 17 px of text + 2 px padding = 19 wide, 9 + 2 = 11 high, ending at y 50.
        assert_eq!(px(&img, 20, 39), PALETTE[0], "tag background");
        assert_eq!(px(&img, 38, 45), PALETTE[0]);
        assert_eq!(px(&img, 39, 45), [128; 3], "right of the tag");
        assert_eq!(px(&img, 20, 38), [128; 3], "above the tag");
        let ink = (40..50).flat_map(|y| (21..38).map(move |x| (x, y))).filter(|&(x, y)| px(&img, x, y) == [255; 3]).count();
        assert!(ink > 10, "white text on red: {ink} pixels");

        let mut top = grey(100, 100);
        annotate(&mut top, &[item("cat", 0, 0, 50, 50)]).unwrap();
        assert_eq!(px(&top, 18, 5), PALETTE[0], "the tag moves inside the box");
    }

    #[test]
    fn masks_are_blended_and_checked() {
        let mut img = grey(4, 2);
        let mask = [255, 0, 0, 0, 0, 0, 0, 1];
        let m = Annotation { label: "", x1: 0, y1: 0, x2: 0, y2: 0, mask: Some(&mask) };
        annotate(&mut img, &[m]).unwrap();
        let blended = px(&img, 0, 0);
        assert!(blended[0] > 128 && blended[1] < 128, "{blended:?}");
        assert_eq!(px(&img, 3, 1), blended);
        assert_eq!(px(&img, 1, 0), [128; 3]);

        let short = [0u8; 7];
        let bad = Annotation { mask: Some(&short), ..m };
        let before = img.clone();
        assert!(matches!(annotate(&mut img, &[bad]), Err(Error::InvalidArgument { .. })));
        assert_eq!(img, before, "nothing is drawn when an argument is wrong");
    }

    #[test]
    fn hostile_coordinates_and_labels_do_not_panic() {
        let mut img = grey(16, 16);
        let long = "long label ".repeat(50);
        let items = [
            item("x", i64::MIN, i64::MIN, i64::MAX, i64::MAX),
            item("inverted", 12, 12, 4, 4),
            item(&long, -5, -5, 3, 3),
            item("ünïcødé ☃", 100, 100, 200, 200),
        ];
        annotate(&mut img, &items).unwrap();
        let mut tiny = grey(1, 1);
        annotate(&mut tiny, &items).unwrap();
    }

    #[test]
    fn equal_labels_share_a_colour() {
        let items = [item("eye", 0, 0, 1, 1), item("nose", 0, 0, 1, 1), item("eye", 0, 0, 1, 1)];
        assert_eq!(label_colours(&items), vec![PALETTE[0], PALETTE[1], PALETTE[0]]);
    }

    #[test]
    fn style_grows_with_the_image() {
        assert_eq!(style_scale(32, 32), 1);
        assert_eq!(style_scale(451, 300), 2);
        assert_eq!(style_scale(4000, 3000), 8);
    }
}
