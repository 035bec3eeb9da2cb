//! `vae-oid.npz` (the segmentation mask VQ-VAE, spec §4.2) → one f32 safetensors file with the
//! same tensor names. The arrays are already in PyTorch layout, so this is a copy; the decoder is
//! checked layer by layer so that a wrong file fails here, naming the tensor, rather than at
//! decode time.

use std::path::{Path, PathBuf};

use super::npz::NpzArchive;
use super::transform::OutputDtype;
use super::writer::{PlannedTensor, SafetensorsFile};
use crate::error::{Error, Result};

/// What [`convert_vae`](super::convert_vae) wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaeReport {
    pub path: PathBuf,
    pub tensors: usize,
    pub bytes: u64,
    /// `[codebook entries, embedding dim E]`.
    pub codebook: [usize; 2],
}

pub(crate) const CODEBOOK: &str = "_vq_vae._embedding";
/// Seg tokens `<seg000>`…`<seg127>` index the codebook.
const CODEBOOK_ENTRIES: usize = 128;

pub(crate) fn convert(npz: &Path, out: &Path) -> Result<VaeReport> {
    let mut archive = NpzArchive::open(npz)?;
    let mut names: Vec<(String, Vec<usize>)> = archive.arrays().map(|a| (a.name.clone(), a.shape.clone())).collect();
    names.sort();
    let shape_of = |name: &str| names.iter().find(|(n, _)| n == name).map(|(_, s)| s.as_slice());
    let codebook = check_decoder(&shape_of)?;
    let planned: Vec<PlannedTensor> =
        names.iter().map(|(name, shape)| PlannedTensor { name: name.clone(), shape: shape.clone(), dtype: OutputDtype::F32 }).collect();
    let bytes = planned.iter().map(PlannedTensor::nbytes).sum();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut file = SafetensorsFile::create(out, planned)?;
    for (name, _) in &names {
        let values = archive.read_f32(name)?;
        file.begin(name)?;
        let mut bytes = Vec::with_capacity(values.len() * 4);
        OutputDtype::F32.encode_into(values.into_iter(), &mut bytes);
        file.write(&bytes)?;
    }
    let path = file.finish()?;
    Ok(VaeReport { path, tensors: names.len(), bytes, codebook })
}

/// Walks the decoder of spec §4.2 from the codebook width to one output channel.
fn check_decoder<'a>(shape_of: &impl Fn(&str) -> Option<&'a [usize]>) -> Result<[usize; 2]> {
    let get = |name: &str| shape_of(name).ok_or_else(|| Error::Convert(format!("VAE tensor `{name}` is missing")));
    let codebook = get(CODEBOOK)?;
    let embed_dim = match codebook {
        &[CODEBOOK_ENTRIES, e] if e > 0 => e,
        other => {
            return Err(Error::Convert(format!(
                "VAE tensor `{CODEBOOK}` has shape {other:?}, expected [{CODEBOOK_ENTRIES}, E]"
            )))
        }
    };
    let conv = |prefix: &str, channels: usize, kernel: usize, transposed: bool| -> Result<usize> {
        let (weight, bias) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        let w = get(&weight)?;
        let (c_in, c_out) = match w {
            &[a, b, kh, kw] if kh == kernel && kw == kernel => if transposed { (a, b) } else { (b, a) },
            other => {
                let layout = if transposed { "[in, out, k, k]" } else { "[out, in, k, k]" };
                return Err(Error::Convert(format!("VAE tensor `{weight}` has shape {other:?}, expected {layout} with k = {kernel}")));
            }
        };
        if c_in != channels {
            return Err(Error::Convert(format!("VAE tensor `{weight}` has shape {w:?}: takes {c_in} channels, the previous layer gives {channels}")));
        }
        let b = get(&bias)?;
        if b != [c_out] {
            return Err(Error::Convert(format!("VAE tensor `{bias}` has shape {b:?}, expected [{c_out}]")));
        }
        Ok(c_out)
    };
    let mut c = conv("decoder.0", embed_dim, 1, false)?;
    for block in ["decoder.2", "decoder.3"] {
        let mid = conv(&format!("{block}.net.0"), c, 3, false)?;
        let mid = conv(&format!("{block}.net.2"), mid, 3, false)?;
        let back = conv(&format!("{block}.net.4"), mid, 1, false)?;
        if back != c {
            return Err(Error::Convert(format!("VAE residual block `{block}` maps {c} channels to {back}")));
        }
    }
    for layer in ["decoder.4", "decoder.6", "decoder.8", "decoder.10"] {
        c = conv(layer, c, 4, true)?;
    }
    if conv("decoder.12", c, 1, false)? != 1 {
        return Err(Error::Convert("VAE tensor `decoder.12.weight` must produce one mask channel".into()));
    }
    Ok([CODEBOOK_ENTRIES, embed_dim])
}
