//! How a flat buffer is cut into rows: padded `[B, T]` or packed with offsets.

use crate::error::{KernelError, Result};

#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// `rows` rows of `cols` elements each, row-major; a mask says which take part.
    Padded { rows: usize, cols: usize },
    /// Row `b` is `offsets[b]..offsets[b + 1]`; every element in it takes part.
    Packed { offsets: &'a [i64] },
}

impl Rows<'_> {
    pub fn num_rows(&self) -> usize {
        match *self {
            Rows::Padded { rows, .. } => rows,
            Rows::Packed { offsets } => offsets.len().saturating_sub(1),
        }
    }

    /// The element range of every row, in order.
    pub fn ranges(&self) -> Vec<(usize, usize)> {
        match *self {
            Rows::Padded { rows, cols } => (0..rows).map(|b| (b * cols, (b + 1) * cols)).collect(),
            Rows::Packed { offsets } => {
                offsets.windows(2).map(|w| (w[0] as usize, w[1] as usize)).collect()
            }
        }
    }

    /// Checks that the layout fits a buffer of `len` elements.
    pub fn validate(&self, len: usize) -> Result<()> {
        match *self {
            Rows::Padded { rows, cols } => {
                if rows.checked_mul(cols) != Some(len) {
                    return Err(KernelError::invalid(format!(
                        "a [{rows}, {cols}] layout needs {} elements, the buffer holds {len}",
                        rows.saturating_mul(cols)
                    )));
                }
                Ok(())
            }
            Rows::Packed { offsets } => validate_offsets(offsets, len, "cu_seqlens"),
        }
    }
}

/// Offsets must start at >= 0, never decrease and end at <= `len`.
pub fn validate_offsets(offsets: &[i64], len: usize, name: &str) -> Result<()> {
    if offsets.len() < 2 {
        return Err(KernelError::invalid(format!(
            "{name} must hold at least 2 offsets (one row), got {}",
            offsets.len()
        )));
    }
    if offsets[0] < 0 {
        return Err(KernelError::invalid(format!("{name}[0] must be >= 0, got {}", offsets[0])));
    }
    for (i, w) in offsets.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(KernelError::invalid(format!(
                "{name} must be non-decreasing, but {name}[{}] = {} < {name}[{i}] = {}",
                i + 1,
                w[1],
                w[0]
            )));
        }
    }
    let last = offsets[offsets.len() - 1];
    if last as u64 > len as u64 {
        return Err(KernelError::invalid(format!(
            "{name}[-1] = {last} points past the end of the data ({len} elements)"
        )));
    }
    Ok(())
}

/// Splits `buf` into one mutable slice per range (ranges sorted, disjoint) and
/// returns the uncovered gaps too, so a kernel can zero them.
pub fn split_rows_mut<'b, T>(
    mut buf: &'b mut [T],
    ranges: &[(usize, usize)],
) -> (Vec<&'b mut [T]>, Vec<&'b mut [T]>) {
    let mut rows = Vec::with_capacity(ranges.len());
    let mut gaps = Vec::new();
    let mut pos = 0;
    for &(start, end) in ranges {
        let (gap, rest) = buf.split_at_mut(start - pos);
        if !gap.is_empty() {
            gaps.push(gap);
        }
        let (row, rest) = rest.split_at_mut(end - start);
        rows.push(row);
        buf = rest;
        pos = end;
    }
    if !buf.is_empty() {
        gaps.push(buf);
    }
    (rows, gaps)
}

/// Formats a flat index as `[b, t]` for padded layouts or `[i]` for packed ones.
pub fn describe_index(rows: &Rows<'_>, flat: usize) -> String {
    match *rows {
        Rows::Padded { cols, .. } if cols > 0 => format!("[{}, {}]", flat / cols, flat % cols),
        _ => format!("[{flat}]"),
    }
}
